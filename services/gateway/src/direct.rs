//! Warm invocations straight to a worker.
//!
//! A synchronous invocation through a scheduler takes four NATS messages and wakes
//! three services: gateway → scheduler → worker (and its ack) → gateway. When this
//! gateway knows a worker that ran the function's current revision — the
//! [`InvokeReply::worker_id`] of an earlier call, or an idle instance listed in the
//! worker's heartbeat — it sends the [`Dispatch`] to that worker itself, marked
//! `warm_only`: the worker accepts it only with an idle warm instance (its ack) and
//! sends the result to this call's inbox. Three messages, no scheduler. Anything
//! else — no known worker, a refusal, a worker that no longer listens — goes the
//! scheduler's way, and its reply teaches the route again. Cold starts are always
//! placed by a scheduler, which sees every worker's load.
//!
//! Results bypass the scheduler either way; for a direct call the gateway itself
//! watches the worker's heartbeats and fails the call when they stop, as the
//! scheduler does for the calls it placed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use nimbus_proto::{
    AckResult, Dispatch, DispatchAck, FunctionConfig, Heartbeat, InvocationType, InvokeReply,
    WIRE_VERSION, WireError, decode, encode,
};

use crate::AppState;
use crate::error::ApiError;

/// How long a worker has to accept or refuse (as for a scheduler's dispatch).
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Workers known to have run each function's newest revision this gateway has seen.
#[derive(Default)]
pub struct WarmRoutes {
    routes: Mutex<HashMap<String, (u64, Vec<String>)>>,
    next: AtomicUsize,
}

impl WarmRoutes {
    /// `worker` ran (or holds an idle instance of) `function` at `revision`.
    pub fn learn(&self, function: &str, revision: u64, worker: &str) {
        if worker.is_empty() {
            return;
        }
        let mut routes = self.routes.lock().expect("lock poisoned");
        match routes.get_mut(function) {
            Some((rev, workers)) if *rev == revision => {
                if !workers.iter().any(|w| w == worker) {
                    workers.push(worker.to_string());
                }
            }
            Some((rev, _)) if *rev > revision => {}
            _ => {
                routes.insert(function.to_string(), (revision, vec![worker.to_string()]));
            }
        }
    }

    /// A worker for `function` at exactly `revision` that `usable` accepts; the
    /// known ones take turns.
    pub fn pick(
        &self,
        function: &str,
        revision: u64,
        usable: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let routes = self.routes.lock().expect("lock poisoned");
        let (rev, workers) = routes.get(function)?;
        if *rev != revision || workers.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..workers.len())
            .map(|i| &workers[(start + i) % workers.len()])
            .find(|w| usable(w))
            .cloned()
    }

    /// `worker` refused `function`: its instances are busy or gone.
    pub fn forget(&self, function: &str, worker: &str) {
        let mut routes = self.routes.lock().expect("lock poisoned");
        if let Some((_, workers)) = routes.get_mut(function) {
            workers.retain(|w| w != worker);
            if workers.is_empty() {
                routes.remove(function);
            }
        }
    }

    /// `function` was deleted. (Through another gateway, its routes stay here —
    /// a few bytes each, never used: calls to it fail at the lookup.)
    pub fn forget_function(&self, function: &str) {
        self.routes.lock().expect("lock poisoned").remove(function);
    }

    /// `worker` stopped listening or is draining.
    pub fn forget_worker(&self, worker: &str) {
        let mut routes = self.routes.lock().expect("lock poisoned");
        routes.retain(|_, (_, workers)| {
            workers.retain(|w| w != worker);
            !workers.is_empty()
        });
    }

    /// What a heartbeat tells: its idle instances are routes, a draining worker none.
    pub fn heard(&self, hb: &Heartbeat) {
        if hb.draining {
            return self.forget_worker(&hb.worker_id);
        }
        for w in hb.warm.iter().filter(|w| w.idle > 0) {
            self.learn(&w.function, w.revision, &hb.worker_id);
        }
    }
}

/// How a direct call went: run (its reply), or not taken — then a scheduler places it.
pub enum Direct {
    Ran(InvokeReply),
    /// The worker refused it (no idle instance of that revision, no free slot).
    Refused,
    /// Nobody listens on the worker's subject, or it did not answer in time.
    Unreachable,
}

/// Sends `cfg`'s invocation to `worker` as a `warm_only` dispatch and waits for the
/// result; fails the call if the worker's heartbeats stop meanwhile.
#[allow(clippy::too_many_arguments)]
pub async fn invoke(
    state: &AppState,
    worker: &str,
    cfg: &FunctionConfig,
    revision: u64,
    request_id: &str,
    payload: bytes::Bytes,
    log_tail: bool,
    timeout: Duration,
) -> Result<Direct, ApiError> {
    let subject = state
        .subjects
        .worker_invoke(worker)
        .map_err(|e| ApiError::Service(e.to_string()))?;
    // The result comes to an inbox of this call; the request's own answer is the
    // worker's ack. Without the ack a call sent to a worker that had just died (its
    // subscription not yet gone from the server) could not be told from one running.
    let inbox = state.nats.new_inbox();
    let mut results = state
        .nats
        .subscribe(inbox.clone())
        .await
        .map_err(|e| ApiError::Service(format!("invocation failed: {e}")))?;
    let d = Dispatch {
        v: WIRE_VERSION,
        request_id: request_id.to_string(),
        config: cfg.clone(),
        revision,
        payload,
        log_tail,
        invocation_type: InvocationType::RequestResponse,
        reply_to: inbox.to_string(),
        attempt: 0,
        warm_only: true,
    };
    let request = async_nats::Request::new()
        .payload(encode(&d))
        .timeout(Some(ACK_TIMEOUT));
    match state.nats.send_request(subject, request).await {
        Ok(msg) => match decode::<DispatchAck>(&msg.payload) {
            Ok(DispatchAck {
                result: AckResult::Accepted,
                ..
            }) => {}
            Ok(DispatchAck {
                result: AckResult::Refused { .. },
                ..
            }) => {
                count("refused");
                return Ok(Direct::Refused);
            }
            Err(e) => {
                tracing::warn!(worker_id = %worker, error = %e, "undecodable dispatch ack");
                count("refused");
                return Ok(Direct::Refused);
            }
        },
        // Gone, or silent: the call goes through a scheduler, as a scheduler moves
        // on to another worker in the same case.
        Err(e) => {
            tracing::debug!(worker_id = %worker, error = %e, "direct dispatch unanswered");
            count("unreachable");
            return Ok(Direct::Unreachable);
        }
    }
    let outcome = tokio::select! {
        r = tokio::time::timeout(timeout, results.next()) => r,
        () = stopped(state, worker) => {
            tracing::warn!(%request_id, worker_id = %worker, "worker vanished mid-invocation; failing the call");
            count("worker_lost");
            return Err(ApiError::from_wire(WireError::worker_lost(worker)));
        }
    };
    let msg = match outcome {
        Ok(Some(msg)) => msg,
        Ok(None) => {
            count("failed");
            return Err(ApiError::Service(
                "invocation failed: the reply subscription closed".into(),
            ));
        }
        Err(_) => {
            count("timed_out");
            return Err(ApiError::Service(format!(
                "The invocation {request_id} did not complete within {} s (its worker may have stopped)",
                timeout.as_secs()
            )));
        }
    };
    let reply = decode(&msg.payload).map_err(|e| {
        count("failed");
        ApiError::Service(format!("unreadable invocation reply: {e}"))
    })?;
    count("ran");
    Ok(Direct::Ran(reply))
}

fn count(result: &'static str) {
    metrics::counter!("nimbus_gateway_direct_dispatches_total", "result" => result).increment(1);
}

/// Whether `worker` is heard from, not draining: it may be sent new work.
pub fn usable(state: &AppState, worker: &str) -> bool {
    state.worker_heard(worker) == Some(false)
}

/// Resolves once `worker` has not been heard from for the expiry time.
async fn stopped(state: &AppState, worker: &str) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if state.worker_heard(worker).is_none() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::WarmRoutes;

    #[test]
    fn routes_follow_the_newest_revision_and_forget_refusers() {
        let r = WarmRoutes::default();
        r.learn("f", 3, "w1");
        r.learn("f", 3, "w2");
        r.learn("f", 2, "w3"); // an older revision's instance: not a route
        let picked: Vec<_> = (0..4).map(|_| r.pick("f", 3, |_| true).unwrap()).collect();
        assert!(picked.contains(&"w1".to_string()) && picked.contains(&"w2".to_string()));
        assert_eq!(r.pick("f", 2, |_| true), None);
        assert_eq!(r.pick("f", 3, |w| w == "w2").as_deref(), Some("w2"));
        assert_eq!(r.pick("f", 3, |_| false), None);
        r.learn("f", 4, "w3");
        assert_eq!(r.pick("f", 3, |_| true), None);
        assert_eq!(r.pick("f", 4, |_| true).as_deref(), Some("w3"));
        r.forget("f", "w3");
        assert_eq!(r.pick("f", 4, |_| true), None);
        r.learn("f", 4, "w1");
        r.learn("g", 1, "w1");
        r.forget_worker("w1");
        assert_eq!(r.pick("f", 4, |_| true), None);
        assert_eq!(r.pick("g", 1, |_| true), None);
        r.learn("", 1, "");
        assert_eq!(r.pick("", 1, |_| true), None);
        r.learn("h", 1, "w2");
        r.forget_function("h");
        assert_eq!(r.pick("h", 1, |_| true), None);
    }
}
