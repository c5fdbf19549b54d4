//! The wire contract between Nimbus services.
//!
//! Everything that crosses a process boundary lives here and only here:
//!
//! - [`subjects`]: every NATS subject, KV bucket and stream name, built and parsed in one place;
//! - [`function`]: a function's configuration as stored in the functions KV bucket;
//! - [`invoke`]: synchronous and asynchronous invocation messages, worker dispatches and replies;
//! - [`worker`]: worker heartbeats;
//! - [`logs`]: log records published by workers;
//! - [`error`]: the one error enum on the wire, with stable codes;
//! - [`codec`]: MessagePack encoding (named maps) with a version check.
//!
//! Compatibility rules are in `proto/README.md`: fields are only ever added, with
//! `#[serde(default)]`; a breaking change bumps [`WIRE_VERSION`].

pub mod codec;
pub mod error;
pub mod function;
pub mod invoke;
pub mod logs;
pub mod names;
pub use names::Names;
pub mod route;
pub mod schedule;
pub mod subjects;
pub mod trigger;
pub mod worker;

pub use codec::{DecodeError, decode, encode};
pub use error::{ErrorCode, WireError};
pub use function::{
    CodeRef, Destination, EventInvokeConfig, FunctionConfig, is_supported_runtime,
    validate_function_name,
};
pub use invoke::{
    AckResult, AsyncInvocation, Dispatch, DispatchAck, InvocationType, InvokeOutcome, InvokeReply,
    InvokeRequest, completion_key,
};
pub use logs::{LogBatch, LogRecord, decode_log_message};
pub use route::{FunctionUrlConfig, RouteConfig};
pub use schedule::{Misfire, ScheduleConfig, ScheduleState};
pub use subjects::{NATS_PUBLISHER_USER, NATS_SERVICE_USER, Subjects};
pub use trigger::{TriggerConfig, TriggerSource};
pub use worker::{Heartbeat, WarmInstances};

/// Version written into every internal message. Readers refuse messages from a newer
/// major version instead of misreading them.
pub const WIRE_VERSION: u16 = 1;

/// Lambda's synchronous payload limit (request and response), 6 MB.
pub const MAX_SYNC_PAYLOAD: usize = 6 * 1024 * 1024;
/// Lambda's asynchronous payload limit, 1 MB.
pub const MAX_ASYNC_PAYLOAD: usize = 1024 * 1024;
