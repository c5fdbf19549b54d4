//! Schedules: a function invoked on a cron, rate or at expression. The gateway writes
//! them to the schedules KV bucket (key = schedule name); every scheduler computes the
//! same fire times, and a per-schedule record in the schedule-state bucket (the last
//! instant fired, advanced by compare-and-set) makes each instant run once across any
//! number of schedulers and across outages longer than JetStream's duplicate window.

use serde::{Deserialize, Serialize};

use crate::codec::{current_version, versioned};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleConfig {
    #[serde(default = "current_version")]
    pub v: u16,
    /// `[A-Za-z0-9_-]{1,64}`.
    pub name: String,
    pub function: String,
    /// `cron(…)`, `rate(…)`, `at(…)` or a five-field cron.
    pub expression: String,
    /// IANA zone; `None` = UTC.
    #[serde(default)]
    pub timezone: Option<String>,
    /// The event (JSON); `None` = EventBridge's "Scheduled Event".
    #[serde(default)]
    pub payload: Option<String>,
    /// No fire before (Unix ms); rates count from here (default: creation).
    pub start_ms: u64,
    #[serde(default)]
    pub end_ms: Option<u64>,
    #[serde(default)]
    pub misfire: Misfire,
    pub created_ms: u64,
}
versioned!(ScheduleConfig);

/// What happens to instants missed while no scheduler ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case")]
pub enum Misfire {
    /// Fire none of them.
    Skip,
    /// Fire the latest one, once.
    #[default]
    FireOnce,
    /// Fire the latest `n` of them, oldest first.
    CatchUp { n: u32 },
}

impl Misfire {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "skip" => Some(Self::Skip),
            "fire_once" => Some(Self::FireOnce),
            other => {
                let n: u32 = other.strip_prefix("catch_up:")?.parse().ok()?;
                (1..=1000).contains(&n).then_some(Self::CatchUp { n })
            }
        }
    }

    pub fn as_string(&self) -> String {
        match self {
            Self::Skip => "skip".into(),
            Self::FireOnce => "fire_once".into(),
            Self::CatchUp { n } => format!("catch_up:{n}"),
        }
    }
}

/// The schedule-state record: the latest instant fired (Unix ms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleState {
    #[serde(default = "current_version")]
    pub v: u16,
    pub last_fired_ms: u64,
}
versioned!(ScheduleState);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misfire_round_trips() {
        for s in ["skip", "fire_once", "catch_up:5"] {
            assert_eq!(Misfire::parse(s).unwrap().as_string(), s);
        }
        assert!(Misfire::parse("catch_up:0").is_none());
        assert!(Misfire::parse("later").is_none());
    }
}
