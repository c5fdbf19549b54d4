//! Invocation messages.
//!
//! Synchronous: the gateway sends an [`InvokeRequest`] on `<p>.invoke` with its own
//! reply inbox; a scheduler places it and sends a [`Dispatch`] to one worker as a
//! request whose reply is a [`DispatchAck`] (accepted or refused, so the scheduler can
//! try another worker). The worker sends the [`InvokeReply`] straight to
//! `Dispatch::reply_to` — the gateway's inbox — so the result takes no extra hop.
//!
//! Warm, straight to a worker: a gateway that has seen a worker run the function's
//! current revision (its [`InvokeReply::worker_id`], or an idle instance in the
//! worker's heartbeat) sends the [`Dispatch`] to that worker itself, with
//! [`Dispatch::warm_only`] set, as a scheduler would: the worker accepts it only
//! with an idle warm instance of that exact revision (the ack), then sends the
//! [`InvokeReply`] to the gateway's `reply_to` — three messages, no scheduler on the
//! path. Refused or unanswered, the gateway asks a scheduler as above.
//!
//! Asynchronous: the gateway publishes an [`AsyncInvocation`] to the async stream; a
//! scheduler consumes it and dispatches with its own inbox as `reply_to`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::codec::{current_version, versioned};
use crate::error::WireError;
use crate::function::FunctionConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InvocationType {
    RequestResponse,
    Event,
}

/// Gateway → scheduler, on `<p>.invoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvokeRequest {
    #[serde(default = "current_version")]
    pub v: u16,
    pub request_id: String,
    pub function: String,
    /// The functions-bucket revision the gateway saw: the scheduler runs this
    /// configuration or a newer one, never an older one.
    pub min_revision: u64,
    pub payload: Bytes,
    /// Return the tail of the invocation's log (`X-Amz-Log-Type: Tail`).
    #[serde(default)]
    pub log_tail: bool,
}
versioned!(InvokeRequest);

/// Gateway → async stream, on `<p>.async.<function>`, message id = `request_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AsyncInvocation {
    #[serde(default = "current_version")]
    pub v: u16,
    pub request_id: String,
    pub function: String,
    pub min_revision: u64,
    pub payload: Bytes,
    /// When the gateway accepted it (Unix ms); the basis of the maximum event age.
    pub enqueued_at_ms: u64,
    /// Attempts already made that ended in a function error. Counted here, not by
    /// JetStream redeliveries, so a crashed worker does not use up the retry budget.
    #[serde(default)]
    pub attempt: u32,
    /// Not to be run before this instant (Unix ms): the backoff of a retry.
    #[serde(default)]
    pub not_before_ms: u64,
}
versioned!(AsyncInvocation);

/// Scheduler → worker, on `<p>.worker.<id>.invoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispatch {
    #[serde(default = "current_version")]
    pub v: u16,
    pub request_id: String,
    /// The exact configuration to run, so the worker reads no storage to learn it.
    pub config: FunctionConfig,
    /// Functions-bucket revision of `config`; warm instances are keyed by it.
    pub revision: u64,
    pub payload: Bytes,
    #[serde(default)]
    pub log_tail: bool,
    pub invocation_type: InvocationType,
    /// Where the worker sends the [`InvokeReply`].
    pub reply_to: String,
    /// For asynchronous invocations: which attempt this is (0 = the first).
    #[serde(default)]
    pub attempt: u32,
    /// Sent by a gateway straight to the worker: run it on an idle warm instance of
    /// `revision` or refuse; never start an instance for it (placing a cold start is
    /// the scheduler's).
    #[serde(default)]
    pub warm_only: bool,
    /// The sender tells an ack from the result by their subjects (`reply_to` is not
    /// the request's reply subject): the worker may skip the ack of an accepted
    /// dispatch whose result is ready within [`ACK_DEFER_MS`](crate::worker::ACK_DEFER_MS),
    /// and sends only the result. Older workers ignore it and always ack.
    #[serde(default)]
    pub ack_optional: bool,
}
versioned!(Dispatch);

/// Key of an asynchronous attempt's completion record in the completions bucket.
/// Workers write the record before replying; a scheduler that receives the same
/// attempt again (JetStream redelivered it because the scheduler holding it died
/// after the function ran) finds it and does not run the function twice.
pub fn completion_key(request_id: &str, attempt: u32) -> String {
    let safe: String = request_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.{attempt}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckResult {
    Accepted,
    /// The worker will not run it (full or draining); the scheduler tries another.
    Refused {
        reason: String,
    },
}

/// Worker → scheduler: reply to a [`Dispatch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchAck {
    #[serde(default = "current_version")]
    pub v: u16,
    pub worker_id: String,
    pub result: AckResult,
}
versioned!(DispatchAck);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InvokeOutcome {
    /// The function returned; `payload` is its response.
    Success {
        payload: Bytes,
        #[serde(default)]
        log_tail: Option<String>,
    },
    /// The function raised, crashed or timed out; `payload` is Lambda's
    /// `{errorMessage, errorType, stackTrace}` document.
    FunctionError {
        payload: Bytes,
        #[serde(default)]
        log_tail: Option<String>,
    },
    /// The platform could not run it.
    Failed(WireError),
}

/// Worker (or scheduler, when it cannot place the call) → whoever asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvokeReply {
    #[serde(default = "current_version")]
    pub v: u16,
    pub request_id: String,
    #[serde(default = "latest")]
    pub executed_version: String,
    pub outcome: InvokeOutcome,
    /// Set when this invocation started a new instance: its init time in microseconds.
    #[serde(default)]
    pub init_duration_us: Option<u64>,
    /// The worker that ran it (empty when none did): where a gateway sends the
    /// function's next warm invocation.
    #[serde(default)]
    pub worker_id: String,
}
versioned!(InvokeReply);

fn latest() -> String {
    "$LATEST".into()
}

impl InvokeReply {
    pub fn failed(request_id: impl Into<String>, err: WireError) -> Self {
        Self {
            v: crate::WIRE_VERSION,
            request_id: request_id.into(),
            executed_version: latest(),
            outcome: InvokeOutcome::Failed(err),
            init_duration_us: None,
            worker_id: String::new(),
        }
    }
}
