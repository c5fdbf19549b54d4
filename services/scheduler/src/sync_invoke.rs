//! Synchronous invocations: schedulers share `<p>.invoke` in a queue group. Each
//! request is resolved against the registry cache, placed, and dispatched with the
//! gateway's reply inbox, so the worker answers the gateway directly. When it cannot
//! be placed the scheduler answers the gateway itself with the error.

use std::sync::Arc;

use futures::StreamExt;
use nimbus_proto::{
    Dispatch, InvocationType, InvokeReply, InvokeRequest, WIRE_VERSION, decode, encode,
    subjects::SCHEDULER_QUEUE,
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::placement::Placement;
use crate::registry::Registry;

/// Synchronous invocations being placed at once by one scheduler.
const MAX_IN_FLIGHT: usize = 4096;

pub async fn run(
    placement: Arc<Placement>,
    registry: Arc<Registry>,
    stop: CancellationToken,
    tracker: TaskTracker,
) -> anyhow::Result<()> {
    let nats = placement.nats.clone();
    let mut sub = nats
        .queue_subscribe(placement.subjects.invoke(), SCHEDULER_QUEUE.into())
        .await?;
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let in_flight = Arc::new(InFlight::default());
    // Once a second: a synchronous invocation whose worker went silent gets an error
    // reply now, instead of its caller waiting out the whole timeout.
    {
        let (in_flight, placement, stop) = (in_flight.clone(), placement.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => break,
                }
                for (worker, request_id, reply_to) in
                    in_flight.sweep(|w| placement.workers.is_alive(w))
                {
                    tracing::warn!(%request_id, worker_id = %worker, "worker vanished mid-invocation; failing the call");
                    let reply = InvokeReply::failed(
                        request_id,
                        nimbus_proto::WireError::worker_lost(&worker),
                    );
                    let _ = placement.nats.publish(reply_to, encode(&reply)).await;
                }
            }
        });
    }
    loop {
        let msg = tokio::select! {
            m = sub.next() => m,
            _ = stop.cancelled() => break,
        };
        let Some(msg) = msg else { break };
        let Some(reply_to) = msg.reply.clone() else {
            tracing::warn!("invocation without a reply subject dropped");
            continue;
        };
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let placement = placement.clone();
        let registry = registry.clone();
        let in_flight = in_flight.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let req: InvokeRequest = match decode(&msg.payload) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable invocation dropped");
                    let reply = InvokeReply::failed(
                        "",
                        nimbus_proto::WireError::new(
                            nimbus_proto::ErrorCode::InvalidRequest,
                            e.to_string(),
                        ),
                    );
                    let _ = placement.nats.publish(reply_to, encode(&reply)).await;
                    return;
                }
            };
            let result = async {
                let (revision, config) = registry.resolve(&req.function, req.min_revision).await?;
                let d = Dispatch {
                    v: WIRE_VERSION,
                    request_id: req.request_id.clone(),
                    config: (*config).clone(),
                    revision,
                    payload: req.payload,
                    log_tail: req.log_tail,
                    invocation_type: InvocationType::RequestResponse,
                    reply_to: reply_to.to_string(),
                    attempt: 0,
                    warm_only: false,
                    ack_optional: false,
                };
                let worker = placement.dispatch(&d).await?;
                let deadline = std::time::Instant::now()
                    + std::time::Duration::from_secs(u64::from(config.timeout_secs) + 5);
                in_flight.track(&worker, &req.request_id, reply_to.to_string(), deadline);
                Ok::<(), nimbus_proto::WireError>(())
            }
            .await;
            if let Err(err) = result {
                tracing::info!(request_id = %req.request_id, function = %req.function, error = %err, "invocation not placed");
                let reply = InvokeReply::failed(req.request_id, err);
                if let Err(e) = placement.nats.publish(reply_to, encode(&reply)).await {
                    tracing::warn!(error = %e, "error reply not sent");
                }
            }
        });
    }
    let _ = sub.unsubscribe().await;
    Ok(())
}

/// Synchronous invocations this scheduler placed, by worker, until their deadline.
/// Results bypass the scheduler, so an entry simply expires at its deadline; if its
/// worker goes silent first, the caller gets an error at once.
#[derive(Default)]
struct InFlight {
    calls: std::sync::Mutex<Vec<(String, String, String, std::time::Instant)>>,
}

impl InFlight {
    fn track(
        &self,
        worker: &str,
        request_id: &str,
        reply_to: String,
        deadline: std::time::Instant,
    ) {
        self.calls.lock().expect("lock poisoned").push((
            worker.to_string(),
            request_id.to_string(),
            reply_to,
            deadline,
        ));
    }

    /// Drops expired entries; returns (and drops) those whose worker is gone.
    fn sweep(&self, alive: impl Fn(&str) -> bool) -> Vec<(String, String, String)> {
        let now = std::time::Instant::now();
        let mut calls = self.calls.lock().expect("lock poisoned");
        let mut orphaned = Vec::new();
        calls.retain(|(worker, request_id, reply_to, deadline)| {
            if *deadline <= now {
                return false;
            }
            if !alive(worker) {
                orphaned.push((worker.clone(), request_id.clone(), reply_to.clone()));
                return false;
            }
            true
        });
        orphaned
    }
}
