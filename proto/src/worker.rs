//! Worker heartbeats: what schedulers know of a worker. Liveness is a recent heartbeat.

use serde::{Deserialize, Serialize};

use crate::codec::{current_version, versioned};

/// How often workers publish a heartbeat.
pub const HEARTBEAT_INTERVAL_MS: u64 = 1000;
/// A worker not heard from for this long is out of placement.
pub const WORKER_EXPIRY_MS: u64 = 3000;
/// How long a worker may hold back the ack of a dispatch marked `ack_optional`: a
/// result ready by then is sent alone (one message fewer on a warm call's path).
/// A worker that dies within it leaves its caller without an ack, as one that died
/// before acking: the caller places the call again, so a call cut short by a crash
/// in its first milliseconds may run twice (as a client's retry would run it).
pub const ACK_DEFER_MS: u64 = 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    #[serde(default = "current_version")]
    pub v: u16,
    pub worker_id: String,
    /// Invocations it runs at once, at most.
    pub slots: u32,
    /// Invocations running now.
    pub busy: u32,
    /// Stopping: takes no new work.
    #[serde(default)]
    pub draining: bool,
    /// Idle warm instances, by function and configuration revision.
    #[serde(default)]
    pub warm: Vec<WarmInstances>,
    /// The worker's sandbox protections: name → `on: …` or `off: why`.
    #[serde(default)]
    pub sandbox: std::collections::BTreeMap<String, String>,
}
versioned!(Heartbeat);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmInstances {
    pub function: String,
    pub revision: u64,
    pub idle: u32,
}
