//! Schedule expressions and their fire times, shared by the gateway (validation and
//! preview) and the scheduler (firing).
//!
//! Grammar, as EventBridge (Scheduler) defines it, plus two extensions:
//! - `cron(min hour day-of-month month day-of-week year)` with `, - * / ? L W #`,
//!   day-of-week `1` = Sunday (`SUN`–`SAT` too), and exactly one of day-of-month and
//!   day-of-week `?`;
//! - `rate(N minute|minutes|hour|hours|day|days)`, singular iff N = 1, counted from
//!   the schedule's start; extension: `rate(N second|seconds)`;
//! - `at(yyyy-mm-ddThh:mm:ss)`, once;
//! - extension: a standard five-field cron (`*/5 * * * *`, 0 = Sunday).
//!
//! Times are evaluated in the schedule's IANA time zone (default UTC) with EventBridge
//! Scheduler's daylight-saving behaviour: a local time skipped in spring does not
//! fire; a local time repeated in autumn fires once (the first).

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("{0}")]
    Invalid(String),
    #[error("time zone {0:?} is not an IANA time zone name (e.g. America/New_York)")]
    BadTimeZone(String),
}

fn invalid(msg: impl Into<String>) -> ScheduleError {
    ScheduleError::Invalid(msg.into())
}

#[derive(Debug, Clone)]
enum Expr {
    Cron(Box<Cron>),
    /// Period in seconds, counted from the anchor.
    Rate(i64),
    At(NaiveDateTime),
}

#[derive(Debug, Clone)]
pub struct Schedule {
    expr: Expr,
    tz: Tz,
    /// Start of `rate` schedules (Unix ms).
    anchor_ms: i64,
}

const FIELDS: [&str; 6] = [
    "minutes",
    "hours",
    "day-of-month",
    "month",
    "day-of-week",
    "year",
];

impl Schedule {
    /// Parses `expression` in `timezone` (default UTC). `anchor_ms` is where `rate`
    /// schedules start counting (the schedule's start or creation time).
    pub fn parse(
        expression: &str,
        timezone: Option<&str>,
        anchor_ms: i64,
    ) -> Result<Self, ScheduleError> {
        let tz: Tz = match timezone {
            None | Some("") => Tz::UTC,
            Some(name) => name
                .parse()
                .map_err(|_| ScheduleError::BadTimeZone(name.to_string()))?,
        };
        let e = expression.trim();
        let expr = if let Some(inner) = strip_call(e, "cron") {
            Expr::Cron(Box::new(parse_eventbridge_cron(inner)?))
        } else if let Some(inner) = strip_call(e, "rate") {
            Expr::Rate(parse_rate(inner)?)
        } else if let Some(inner) = strip_call(e, "at") {
            let t =
                NaiveDateTime::parse_from_str(inner.trim(), "%Y-%m-%dT%H:%M:%S").map_err(|_| {
                    invalid(format!("at({inner}): the time must be yyyy-mm-ddThh:mm:ss"))
                })?;
            Expr::At(t)
        } else if e.split_whitespace().count() == 5 {
            let cron = CronParser::builder()
                .seconds(Seconds::Disallowed)
                .year(Year::Disallowed)
                .build()
                .parse(e)
                .map_err(|err| invalid(format!("cron {e:?}: {err}")))?;
            Expr::Cron(Box::new(cron))
        } else {
            return Err(invalid(format!(
                "{e:?} is not a schedule expression: use cron(…), rate(…), at(…) or a five-field cron"
            )));
        };
        Ok(Self {
            expr,
            tz,
            anchor_ms,
        })
    }

    /// The first fire time strictly after `after`, or `None` when there is none.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.expr {
            Expr::Rate(period) => {
                let anchor = DateTime::<Utc>::from_timestamp_millis(self.anchor_ms)?;
                let period_ms = period * 1000;
                let elapsed = (after - anchor).num_milliseconds();
                let k = if elapsed < 0 {
                    0
                } else {
                    elapsed / period_ms + 1
                };
                Some(anchor + TimeDelta::milliseconds(k * period_ms))
            }
            Expr::At(local) => {
                let t = first_local(&self.tz, local)?;
                (t > after).then_some(t)
            }
            Expr::Cron(cron) => {
                let mut from = after.with_timezone(&self.tz);
                for _ in 0..1000 {
                    let next = cron.find_next_occurrence(&from, false).ok()?;
                    let local = next.naive_local();
                    // Skip what croner offers for a wall time that does not exist
                    // (spring gap) and the second of a repeated one (autumn fold).
                    let keep = match self.tz.from_local_datetime(&local) {
                        LocalResult::Single(_) => cron.is_time_matching(&local).unwrap_or(false),
                        LocalResult::Ambiguous(first, _) => next == first,
                        LocalResult::None => false,
                    };
                    if keep {
                        return Some(next.with_timezone(&Utc));
                    }
                    from = next;
                }
                None
            }
        }
    }

    /// The next `count` fire times after `after`.
    pub fn preview(&self, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(count);
        let mut t = after;
        while out.len() < count {
            match self.next_after(t) {
                Some(n) => {
                    out.push(n);
                    t = n;
                }
                None => break,
            }
        }
        out
    }
}

fn first_local(tz: &Tz, local: &NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(local) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Some(t.with_timezone(&Utc)),
        LocalResult::None => None,
    }
}

fn strip_call<'a>(e: &'a str, name: &str) -> Option<&'a str> {
    e.strip_prefix(name)?
        .trim_start()
        .strip_prefix('(')?
        .strip_suffix(')')
}

fn parse_rate(inner: &str) -> Result<i64, ScheduleError> {
    let parts: Vec<&str> = inner.split_whitespace().collect();
    let [n, unit] = parts.as_slice() else {
        return Err(invalid(format!("rate({inner}): expected rate(value unit)")));
    };
    let n: i64 = n.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
        invalid(format!(
            "rate({inner}): the value must be a positive whole number"
        ))
    })?;
    let (singular, seconds) = match *unit {
        "second" => (true, 1),
        "seconds" => (false, 1),
        "minute" => (true, 60),
        "minutes" => (false, 60),
        "hour" => (true, 3600),
        "hours" => (false, 3600),
        "day" => (true, 86400),
        "days" => (false, 86400),
        other => {
            return Err(invalid(format!(
                "rate({inner}): unit {other:?} is not one of second(s), minute(s), hour(s), day(s)"
            )));
        }
    };
    if singular != (n == 1) {
        return Err(invalid(format!(
            "rate({inner}): use the singular unit for 1 and the plural otherwise"
        )));
    }
    Ok(n * seconds)
}

fn parse_eventbridge_cron(inner: &str) -> Result<Cron, ScheduleError> {
    let fields: Vec<&str> = inner.split_whitespace().collect();
    if fields.len() != 6 {
        return Err(invalid(format!(
            "cron({inner}): expected 6 fields (minutes hours day-of-month month day-of-week year), got {}",
            fields.len()
        )));
    }
    let (dom, dow) = (fields[2], fields[4]);
    match (dom == "?", dow == "?") {
        (true, true) => {
            return Err(invalid(format!(
                "cron({inner}): day-of-month and day-of-week cannot both be '?'"
            )));
        }
        (false, false) => {
            return Err(invalid(format!(
                "cron({inner}): one of day-of-month ({dom}) and day-of-week ({dow}) must be '?'"
            )));
        }
        _ => {}
    }
    for (i, f) in fields.iter().enumerate() {
        if f.contains('?') && *f != "?" || (f.contains('?') && i != 2 && i != 4) {
            return Err(invalid(format!(
                "cron({inner}): '?' is only allowed alone, in day-of-month or day-of-week ({} is {f:?})",
                FIELDS[i]
            )));
        }
    }
    let parser = CronParser::builder()
        .seconds(Seconds::Required)
        .year(Year::Required)
        .alternative_weekdays(true)
        .sloppy_ranges(true)
        .build();
    // croner wants `*` where EventBridge writes `?`.
    let pattern = format!(
        "0 {} {} {} {} {} {}",
        fields[0],
        fields[1],
        if dom == "?" { "*" } else { dom },
        fields[3],
        if dow == "?" { "*" } else { dow },
        fields[5]
    );
    parser.parse(&pattern).map_err(|err| {
        // Name the field that fails on its own.
        let bad = (0..6).find(|&i| {
            let mut probe = ["0", "0", "1", "1", "*", "*"].map(str::to_string);
            probe[i] = fields[i].replace('?', "*");
            if i == 4 && fields[i] != "?" {
                probe[2] = "*".into();
            }
            parser.parse(&format!("0 {}", probe.join(" "))).is_err()
        });
        match bad {
            Some(i) => invalid(format!(
                "cron({inner}): invalid {} field {:?}",
                FIELDS[i], fields[i]
            )),
            None => invalid(format!("cron({inner}): {err}")),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn preview(expr: &str, tz: Option<&str>, after: &str, n: usize) -> Vec<String> {
        Schedule::parse(expr, tz, 0)
            .unwrap()
            .preview(utc(after), n)
            .iter()
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .collect()
    }

    #[test]
    fn weekdays_at_six_pm() {
        // 2026-11-27 is a Friday.
        assert_eq!(
            preview("cron(0 18 ? * MON-FRI *)", None, "2026-11-27T12:00:00Z", 3),
            [
                "2026-11-27T18:00:00Z",
                "2026-11-30T18:00:00Z",
                "2026-12-01T18:00:00Z"
            ]
        );
    }

    #[test]
    fn last_day_of_month() {
        assert_eq!(
            preview("cron(0 12 L * ? *)", None, "2026-01-01T00:00:00Z", 3),
            [
                "2026-01-31T12:00:00Z",
                "2026-02-28T12:00:00Z",
                "2026-03-31T12:00:00Z"
            ]
        );
    }

    #[test]
    fn first_monday() {
        // 2 = MON with 1 = SUN; #1 = the first of the month.
        assert_eq!(
            preview("cron(0 9 ? * 2#1 *)", None, "2026-01-01T00:00:00Z", 3),
            [
                "2026-01-05T09:00:00Z",
                "2026-02-02T09:00:00Z",
                "2026-03-02T09:00:00Z"
            ]
        );
    }

    #[test]
    fn every_five_minutes_in_office_hours() {
        let got = preview(
            "cron(0/5 8-17 ? * MON-FRI *)",
            None,
            "2026-11-27T17:50:00Z",
            4,
        );
        assert_eq!(
            got,
            [
                "2026-11-27T17:55:00Z",
                "2026-11-30T08:00:00Z",
                "2026-11-30T08:05:00Z",
                "2026-11-30T08:10:00Z"
            ]
        );
    }

    #[test]
    fn new_york_across_spring_dst() {
        // 2026-03-08: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist that day.
        let got = preview(
            "cron(30 2 * * ? *)",
            Some("America/New_York"),
            "2026-03-06T12:00:00Z",
            3,
        );
        assert_eq!(
            got,
            [
                "2026-03-07T07:30:00Z",
                "2026-03-09T06:30:00Z",
                "2026-03-10T06:30:00Z"
            ]
        );
        // 09:00 local moves from 14:00Z to 13:00Z.
        let got = preview(
            "cron(0 9 * * ? *)",
            Some("America/New_York"),
            "2026-03-07T00:00:00Z",
            2,
        );
        assert_eq!(got, ["2026-03-07T14:00:00Z", "2026-03-08T13:00:00Z"]);
    }

    #[test]
    fn new_york_across_autumn_dst_fires_once() {
        // 2026-11-01: 01:30 happens twice (EDT, then EST); it fires once, the first.
        let got = preview(
            "cron(30 1 * * ? *)",
            Some("America/New_York"),
            "2026-10-31T12:00:00Z",
            3,
        );
        assert_eq!(
            got,
            [
                "2026-11-01T05:30:00Z",
                "2026-11-02T06:30:00Z",
                "2026-11-03T06:30:00Z"
            ]
        );
    }

    #[test]
    fn rates_count_from_the_anchor() {
        let anchor = utc("2026-01-01T00:00:10Z").timestamp_millis();
        let s = Schedule::parse("rate(5 minutes)", None, anchor).unwrap();
        let got = s.preview(utc("2026-01-01T00:07:00Z"), 2);
        assert_eq!(
            got,
            [utc("2026-01-01T00:10:10Z"), utc("2026-01-01T00:15:10Z")]
        );
        let s = Schedule::parse("rate(1 second)", None, anchor).unwrap();
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:10Z")),
            Some(utc("2026-01-01T00:00:11Z"))
        );
        assert_eq!(
            s.next_after(utc("2025-01-01T00:00:00Z")),
            Some(utc("2026-01-01T00:00:10Z"))
        );
    }

    #[test]
    fn at_fires_once_in_its_zone() {
        let s = Schedule::parse("at(2027-01-01T00:00:00)", Some("Europe/Berlin"), 0).unwrap();
        assert_eq!(
            s.preview(utc("2026-06-01T00:00:00Z"), 3),
            [utc("2026-12-31T23:00:00Z")]
        );
        assert_eq!(s.next_after(utc("2027-01-01T00:00:00Z")), None);
    }

    #[test]
    fn five_field_cron() {
        assert_eq!(
            preview("*/15 9 * * 1", None, "2026-11-27T00:00:00Z", 2),
            ["2026-11-30T09:00:00Z", "2026-11-30T09:15:00Z"]
        );
    }

    #[test]
    fn refusals_name_the_problem() {
        let err = |e: &str| Schedule::parse(e, None, 0).unwrap_err().to_string();
        assert!(err("cron(0 18 * * MON-FRI *)").contains("must be '?'"));
        assert!(err("cron(0 18 ? * ? *)").contains("both"));
        assert!(err("cron(0 18 ? *)").contains("expected 6 fields"));
        assert!(
            err("cron(0 25 ? * MON *)").contains("hours"),
            "{}",
            err("cron(0 25 ? * MON *)")
        );
        assert!(err("cron(61 1 ? * MON *)").contains("minutes"));
        assert!(err("rate(1 minutes)").contains("singular"));
        assert!(err("rate(5 minute)").contains("singular"));
        assert!(err("rate(0 minutes)").contains("positive"));
        assert!(err("rate(5 weeks)").contains("weeks"));
        assert!(err("at(2027-13-01T00:00:00)").contains("yyyy-mm-dd"));
        assert!(err("every day").contains("not a schedule expression"));
        assert!(matches!(
            Schedule::parse("rate(1 hour)", Some("Mars/Olympus"), 0),
            Err(ScheduleError::BadTimeZone(_))
        ));
    }
}
