//! Placement: pick a worker for an invocation and hand it over.
//!
//! Candidates come from the [`WorkerTable`] (warm instance first, then least loaded).
//! The dispatch is a request whose reply is the worker's [`DispatchAck`]; a refusal
//! (full, draining) or silence moves on to the next candidate. The result itself
//! goes from the worker straight to `Dispatch::reply_to`.

use std::sync::Arc;
use std::time::Duration;

use nimbus_proto::{
    AckResult, Dispatch, DispatchAck, ErrorCode, Subjects, WireError, decode, encode,
};

use nimbus_placement::WorkerTable;

/// Workers tried for one invocation before it is throttled.
const MAX_ATTEMPTS: usize = 4;
/// How long a worker has to accept or refuse.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Placement {
    pub nats: async_nats::Client,
    pub subjects: Subjects,
    pub workers: Arc<WorkerTable>,
}

impl Placement {
    /// Hands `d` to a worker; returns the worker's id.
    pub async fn dispatch(&self, d: &Dispatch) -> Result<String, WireError> {
        let candidates = self.workers.candidates(&d.config.name, d.revision);
        if candidates.is_empty() {
            return Err(throttled(self.workers.is_empty()));
        }
        let payload = encode(d);
        for worker in candidates.iter().take(MAX_ATTEMPTS) {
            let subject = self
                .subjects
                .worker_invoke(worker)
                .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
            let request = async_nats::Request::new()
                .payload(payload.clone())
                .timeout(Some(ACK_TIMEOUT));
            match self.nats.send_request(subject, request).await {
                Ok(msg) => match decode::<DispatchAck>(&msg.payload) {
                    Ok(DispatchAck {
                        result: AckResult::Accepted,
                        ..
                    }) => {
                        self.workers.dispatched(worker, &d.config.name, d.revision);
                        metrics::counter!("nimbus_scheduler_dispatches_total", "result" => "accepted").increment(1);
                        tracing::debug!(request_id = %d.request_id, worker_id = %worker, "dispatched");
                        return Ok(worker.clone());
                    }
                    Ok(DispatchAck {
                        result: AckResult::Refused { reason },
                        ..
                    }) => {
                        tracing::debug!(request_id = %d.request_id, worker_id = %worker, %reason, "worker refused");
                        self.workers.refused(worker);
                        metrics::counter!("nimbus_scheduler_dispatches_total", "result" => "refused").increment(1);
                    }
                    Err(e) => {
                        tracing::warn!(worker_id = %worker, error = %e, "undecodable dispatch ack")
                    }
                },
                Err(e) => {
                    tracing::warn!(request_id = %d.request_id, worker_id = %worker, error = %e, "dispatch failed")
                }
            }
        }
        Err(throttled(false))
    }
}

fn throttled(no_workers: bool) -> WireError {
    metrics::counter!("nimbus_scheduler_dispatches_total", "result" => "throttled").increment(1);
    let message = if no_workers {
        "Rate Exceeded. No worker is available to run the function."
    } else {
        "Rate Exceeded. Every worker slot is busy."
    };
    WireError::new(ErrorCode::TooManyRequests, message)
}
