//! Schedules: preview against EventBridge's documented examples, every instant of a
//! per-second schedule run exactly once by two schedulers (one killed mid-run), and
//! the misfire policy after every scheduler was down.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};
use nimbus_tests::*;
use serde_json::{Value, json};

/// Fire instants recorded per schedule (from the Scheduled Event's resources).
fn instants(path: &std::path::Path) -> BTreeMap<String, Vec<DateTime<Utc>>> {
    let mut out: BTreeMap<String, Vec<DateTime<Utc>>> = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["detail-type"] != "Scheduled Event" {
            continue;
        }
        let schedule = v["resources"][0]
            .as_str()
            .unwrap_or("")
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        let t = DateTime::parse_from_rfc3339(v["time"].as_str().unwrap())
            .unwrap()
            .with_timezone(&Utc);
        out.entry(schedule).or_default().push(t);
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

fn assert_no_duplicates(name: &str, times: &[DateTime<Utc>]) {
    let mut seen = std::collections::HashSet::new();
    for t in times {
        assert!(seen.insert(*t), "{name}: instant {t} ran twice: {times:?}");
    }
}

/// Instants missing from a per-second sequence.
fn missing(times: &[DateTime<Utc>]) -> i64 {
    times
        .windows(2)
        .map(|w| (w[1] - w[0]).num_seconds() - 1)
        .sum()
}

#[tokio::test]
async fn preview_matches_eventbridge_examples() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(ClusterOpts::default()).await;
    let ep = cluster.endpoint.clone();
    let cases: [(&str, Option<&str>, &str, &[&str]); 5] = [
        (
            "cron(0 18 ? * MON-FRI *)",
            None,
            "2026-11-27T12:00:00Z",
            &[
                "2026-11-27T18:00:00Z",
                "2026-11-30T18:00:00Z",
                "2026-12-01T18:00:00Z",
            ],
        ),
        (
            "cron(0 12 L * ? *)",
            None,
            "2026-01-01T00:00:00Z",
            &[
                "2026-01-31T12:00:00Z",
                "2026-02-28T12:00:00Z",
                "2026-03-31T12:00:00Z",
            ],
        ),
        (
            "cron(0 9 ? * 2#1 *)",
            None,
            "2026-01-01T00:00:00Z",
            &[
                "2026-01-05T09:00:00Z",
                "2026-02-02T09:00:00Z",
                "2026-03-02T09:00:00Z",
            ],
        ),
        (
            "cron(0/5 8-17 ? * MON-FRI *)",
            None,
            "2026-11-27T17:50:00Z",
            &[
                "2026-11-27T17:55:00Z",
                "2026-11-30T08:00:00Z",
                "2026-11-30T08:05:00Z",
            ],
        ),
        // New York across the March change: 02:30 does not exist on 2026-03-08.
        (
            "cron(30 2 * * ? *)",
            Some("America/New_York"),
            "2026-03-06T12:00:00Z",
            &[
                "2026-03-07T07:30:00Z",
                "2026-03-09T06:30:00Z",
                "2026-03-10T06:30:00Z",
            ],
        ),
    ];
    for (expr, tz, after, want) in cases {
        let mut args = vec![
            "schedule", "preview", expr, "--after", after, "--count", "3",
        ];
        if let Some(tz) = tz {
            args.extend(["--timezone", tz]);
        }
        let (ok, out) = nimbus(&ep, &args);
        assert!(ok, "{expr}: {out}");
        assert_eq!(out.lines().collect::<Vec<_>>(), want, "{expr}");
    }
    let (ok, out) = nimbus(&ep, &["schedule", "preview", "cron(0 25 ? * MON *)"]);
    assert!(!ok && out.contains("hours"), "{out}");
    let (ok, out) = nimbus(&ep, &["schedule", "preview", "rate(1 minutes)"]);
    assert!(!ok && out.contains("singular"), "{out}");
    cluster.stop();
}

#[tokio::test]
async fn every_instant_runs_once_across_two_schedulers() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(ClusterOpts {
        extra_schedulers: 1,
        ..Default::default()
    })
    .await;
    let mark = cluster.mark_file("ticks.jsonl");
    cluster
        .create_function(
            "recorder",
            "python3.12",
            "app.record_event",
            &python_zip(),
            json!({"Environment": {"Variables": {"MARK_FILE": mark.to_str().unwrap()}}}),
        )
        .await;
    let ep = cluster.endpoint.clone();
    let (ok, out) = nimbus(
        &ep,
        &[
            "schedule",
            "add",
            "tick",
            "--function",
            "recorder",
            "--expression",
            "rate(1 second)",
        ],
    );
    assert!(ok && out.contains("added schedule tick"), "{out}");
    let (ok, out) = nimbus(&ep, &["schedule", "ls"]);
    assert!(
        ok && out.contains("tick") && out.contains("rate(1 second)"),
        "{out}"
    );
    let (ok, out) = nimbus(
        &ep,
        &[
            "schedule",
            "add",
            "tick",
            "--function",
            "recorder",
            "--expression",
            "rate(1 second)",
        ],
    );
    assert!(!ok && out.contains("already exists"), "{out}");

    tokio::time::sleep(Duration::from_secs(6)).await;
    // One scheduler dies mid-run; the other carries on.
    cluster.extra_schedulers[0].kill();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (ok, out) = nimbus(&ep, &["schedule", "rm", "tick"]);
    assert!(ok, "{out}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let times = instants(&mark).remove("tick").unwrap_or_default();
    assert!(
        times.len() >= 10,
        "ran only {} times: {times:?}",
        times.len()
    );
    assert_no_duplicates("tick", &times);
    assert_eq!(missing(&times), 0, "an instant was skipped: {times:?}");
    cluster.stop();
}

#[tokio::test]
async fn misfire_policy_after_every_scheduler_was_down() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(ClusterOpts {
        env: vec![
            ("NIMBUS_MISFIRE_GRACE_MS".into(), "1500".into()),
            // The outage below outlasts JetStream's duplicate window: only the
            // schedule-state record keeps instants from firing twice.
            ("NIMBUS_DUPLICATE_WINDOW_SECS".into(), "2".into()),
        ],
        ..Default::default()
    })
    .await;
    let mark = cluster.mark_file("ticks.jsonl");
    cluster
        .create_function(
            "recorder",
            "python3.12",
            "app.record_event",
            &python_zip(),
            json!({"Environment": {"Variables": {"MARK_FILE": mark.to_str().unwrap()}}}),
        )
        .await;
    let ep = cluster.endpoint.clone();
    for (name, policy) in [("skipper", "skip"), ("catcher", "catch_up:3")] {
        let (ok, out) = nimbus(
            &ep,
            &[
                "schedule",
                "add",
                name,
                "--function",
                "recorder",
                "--expression",
                "rate(1 second)",
                "--misfire",
                policy,
            ],
        );
        assert!(ok, "{out}");
    }
    let (ok, out) = nimbus(
        &ep,
        &[
            "schedule",
            "add",
            "bad",
            "--function",
            "recorder",
            "--expression",
            "rate(1 second)",
            "--misfire",
            "sometimes",
        ],
    );
    assert!(!ok && out.contains("sometimes"), "{out}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Every scheduler down for 8 s.
    assert!(cluster.scheduler.terminate(Duration::from_secs(20)));
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut cmd = Command::new(bin("nimbus-scheduler"));
    cmd.envs(cluster.nats.service_env())
        .env("NIMBUS_MISFIRE_GRACE_MS", "1500")
        .env("NIMBUS_DUPLICATE_WINDOW_SECS", "2")
        .env("NIMBUS_DATA_DIR", cluster.data.path().join("scheduler"));
    cluster.scheduler = Proc::spawn_for_test("scheduler-restarted", cmd, cluster.data.path());
    tokio::time::sleep(Duration::from_secs(4)).await;
    for name in ["skipper", "catcher"] {
        let (ok, out) = nimbus(&ep, &["schedule", "rm", name]);
        assert!(ok, "{out}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = instants(&mark);
    let skipper = all.get("skipper").cloned().unwrap_or_default();
    let catcher = all.get("catcher").cloned().unwrap_or_default();
    assert_no_duplicates("skipper", &skipper);
    assert_no_duplicates("catcher", &catcher);
    let (ms, mc) = (missing(&skipper), missing(&catcher));
    // The outage missed ~8 instants: skip fires none of them, catch_up:3 the latest 3.
    assert!(ms >= 5, "skip: expected a gap, missing {ms}: {skipper:?}");
    assert!(
        (2..=4).contains(&(ms - mc)),
        "catch_up:3 should fill 3 more than skip: skip missing {ms}, catch-up missing {mc}\n{skipper:?}\n{catcher:?}"
    );
    cluster.stop();
}
