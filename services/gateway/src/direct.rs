//! Synchronous invocations straight to a worker.
//!
//! A synchronous invocation through a scheduler takes four NATS messages and wakes
//! three services: gateway → scheduler → worker (and its ack) → gateway. When this
//! gateway knows a worker that ran the function's current revision — the
//! [`InvokeReply::worker_id`] of an earlier call, or an idle instance listed in the
//! worker's heartbeat — it sends the [`Dispatch`] to that worker itself, marked
//! `warm_only`: the worker accepts it only with an idle warm instance (its ack) and
//! sends the result to this call's inbox. Three messages (two when the ack is left
//! out), no scheduler. With no known warm worker the gateway places the cold start
//! itself, as a scheduler would: on the first of its [`WorkerTable`]'s candidates
//! (the heartbeats every service hears: warm instances first, then the most free
//! slots). A refusal or a worker that no longer listens sends the call the
//! scheduler's way — which tries several workers — and the reply teaches the route
//! again.
//!
//! Results bypass the scheduler either way; for a direct call the gateway itself
//! watches the worker's heartbeats and fails the call when they stop, as the
//! scheduler does for the calls it placed.
//!
//! [`WorkerTable`]: nimbus_placement::WorkerTable

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use nimbus_proto::{
    AckResult, Dispatch, DispatchAck, FunctionConfig, Heartbeat, InvocationType, InvokeReply,
    WIRE_VERSION, WireError, decode, encode,
};
use tokio::sync::mpsc;

use crate::AppState;
use crate::error::ApiError;

/// How long a worker has to accept or refuse (as for a scheduler's dispatch).
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Which synchronous calls a gateway sends to a worker itself (`NIMBUS_SYNC_DISPATCH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatching {
    /// Warm calls to a worker holding an instance, cold starts to the worker its
    /// heartbeats show best placed; a scheduler when that worker refuses.
    Direct,
    /// Warm calls only; a scheduler places every cold start.
    WarmOnly,
    /// A scheduler places every call.
    Scheduler,
}

/// What a direct call asks of its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// An idle warm instance of the revision, or nothing (`Dispatch::warm_only`).
    Warm,
    /// A warm instance or a cold start, as a scheduler's dispatch.
    Any,
}

impl Placed {
    fn label(self) -> &'static str {
        match self {
            Placed::Warm => "warm",
            Placed::Any => "any",
        }
    }
}

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

/// Where the acks and results of this gateway's direct calls come: one subscription
/// (`<inbox>.>`) for all of them, each call under a number of its own — the ack to
/// `<inbox>.a.<n>`, the result to `<inbox>.r.<n>`. A subscription per call cost two
/// more protocol messages per call (SUB, UNSUB) and a change to nats-server's
/// subscription list each time; the two subjects let a worker skip the ack of a
/// call whose result is ready at once (`Dispatch::ack_optional`).
pub struct Replies {
    inbox: String,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, mpsc::Sender<(Leg, async_nats::Message)>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leg {
    Ack,
    Result,
}

impl Replies {
    /// Subscribes under a new inbox of `nats` and routes what comes until the
    /// subscription ends.
    pub async fn start(nats: &async_nats::Client) -> Result<Arc<Self>, async_nats::SubscribeError> {
        let inbox = nats.new_inbox();
        let mut sub = nats.subscribe(format!("{inbox}.>")).await?;
        let replies = Arc::new(Self {
            inbox,
            next: AtomicU64::new(1),
            waiting: Mutex::default(),
        });
        let routes = replies.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                routes.route(msg);
            }
        });
        Ok(replies)
    }

    fn route(&self, msg: async_nats::Message) {
        let Some(rest) = msg.subject.strip_prefix(self.inbox.as_str()) else {
            return;
        };
        let (leg, n) = match rest.split_at_checked(3) {
            Some((".a.", n)) => (Leg::Ack, n),
            Some((".r.", n)) => (Leg::Result, n),
            _ => return,
        };
        let Ok(n) = n.parse::<u64>() else { return };
        let waiting = self.waiting.lock().expect("lock poisoned");
        if let Some(tx) = waiting.get(&n) {
            // Two messages at most are expected; more are a worker's mistake.
            let _ = tx.try_send((leg, msg));
        }
    }

    fn call(&self) -> Call<'_> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(2);
        self.waiting.lock().expect("lock poisoned").insert(n, tx);
        Call {
            replies: self,
            n,
            rx,
        }
    }
}

/// One direct call's place in [`Replies`], given back when dropped.
struct Call<'a> {
    replies: &'a Replies,
    n: u64,
    rx: mpsc::Receiver<(Leg, async_nats::Message)>,
}

impl Call<'_> {
    fn subject(&self, leg: Leg) -> String {
        let tag = match leg {
            Leg::Ack => 'a',
            Leg::Result => 'r',
        };
        format!("{}.{tag}.{}", self.replies.inbox, self.n)
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        self.replies
            .waiting
            .lock()
            .expect("lock poisoned")
            .remove(&self.n);
    }
}

/// Sends `cfg`'s invocation to `worker` (a `warm_only` dispatch for [`Placed::Warm`])
/// and waits for the result; fails the call if the worker's heartbeats stop meanwhile.
#[allow(clippy::too_many_arguments)]
pub async fn invoke(
    state: &AppState,
    worker: &str,
    placed: Placed,
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
    // The worker acks (or refuses) first, or sends the result alone when it is ready
    // at once. Without the ack a call sent to a worker that had just died (its
    // subscription not yet gone from the server) could not be told from one running.
    let mut call = state.replies.call();
    let d = Dispatch {
        v: WIRE_VERSION,
        request_id: request_id.to_string(),
        config: cfg.clone(),
        revision,
        payload,
        log_tail,
        invocation_type: InvocationType::RequestResponse,
        reply_to: call.subject(Leg::Result),
        attempt: 0,
        warm_only: placed == Placed::Warm,
        ack_optional: true,
    };
    if let Err(e) = state
        .nats
        .publish_with_reply(subject, call.subject(Leg::Ack), encode(&d))
        .await
    {
        count(placed, "failed");
        return Err(ApiError::Service(format!("invocation failed: {e}")));
    }
    let first = match tokio::time::timeout(ACK_TIMEOUT, call.rx.recv()).await {
        Ok(Some(first)) => first,
        // Silent: the call goes through a scheduler, as a scheduler moves on to
        // another worker in the same case.
        Ok(None) | Err(_) => {
            tracing::debug!(worker_id = %worker, "direct dispatch unanswered");
            count(placed, "unreachable");
            return Ok(Direct::Unreachable);
        }
    };
    let msg = match first {
        (Leg::Result, msg) => msg,
        (Leg::Ack, ack) => {
            if let Some(not_taken) = not_taken(worker, placed, &ack) {
                return Ok(not_taken);
            }
            result_after_ack(state, worker, placed, request_id, &mut call, timeout).await?
        }
    };
    let reply = decode(&msg.payload).map_err(|e| {
        count(placed, "failed");
        ApiError::Service(format!("unreadable invocation reply: {e}"))
    })?;
    count(placed, "ran");
    Ok(Direct::Ran(reply))
}

/// What an ack says when the worker did not take the call: nobody listens on its
/// subject, it refused, or the ack is unreadable (taken as a refusal).
fn not_taken(worker: &str, placed: Placed, ack: &async_nats::Message) -> Option<Direct> {
    if ack.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
        tracing::debug!(worker_id = %worker, "direct dispatch: no responders");
        count(placed, "unreachable");
        return Some(Direct::Unreachable);
    }
    match decode::<DispatchAck>(&ack.payload) {
        Ok(DispatchAck {
            result: AckResult::Accepted,
            ..
        }) => None,
        Ok(DispatchAck {
            result: AckResult::Refused { .. },
            ..
        }) => {
            count(placed, "refused");
            Some(Direct::Refused)
        }
        Err(e) => {
            tracing::warn!(worker_id = %worker, error = %e, "undecodable dispatch ack");
            count(placed, "refused");
            Some(Direct::Refused)
        }
    }
}

/// The result of a call `worker` acked: within `timeout`, and while the worker is
/// heard from.
async fn result_after_ack(
    state: &AppState,
    worker: &str,
    placed: Placed,
    request_id: &str,
    call: &mut Call<'_>,
    timeout: Duration,
) -> Result<async_nats::Message, ApiError> {
    let outcome = tokio::select! {
        r = tokio::time::timeout(timeout, call.rx.recv()) => r,
        () = stopped(state, worker) => {
            tracing::warn!(%request_id, worker_id = %worker, "worker vanished mid-invocation; failing the call");
            count(placed, "worker_lost");
            return Err(ApiError::from_wire(WireError::worker_lost(worker)));
        }
    };
    match outcome {
        Ok(Some((Leg::Result, msg))) => Ok(msg),
        Ok(Some((Leg::Ack, _))) => {
            count(placed, "failed");
            Err(ApiError::Service(
                "invocation failed: the worker acked the call twice".into(),
            ))
        }
        Ok(None) => {
            count(placed, "failed");
            Err(ApiError::Service(
                "invocation failed: the reply subscription closed".into(),
            ))
        }
        Err(_) => {
            count(placed, "timed_out");
            Err(ApiError::Service(format!(
                "The invocation {request_id} did not complete within {} s (its worker may have stopped)",
                timeout.as_secs()
            )))
        }
    }
}

fn count(placed: Placed, result: &'static str) {
    metrics::counter!("nimbus_gateway_direct_dispatches_total", "placed" => placed.label(), "result" => result).increment(1);
}

/// Whether `worker` is heard from, not draining: it may be sent new work.
pub fn usable(state: &AppState, worker: &str) -> bool {
    state.workers.heard(worker) == Some(false)
}

/// Resolves once `worker` has not been heard from for the expiry time.
async fn stopped(state: &AppState, worker: &str) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if state.workers.heard(worker).is_none() {
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
