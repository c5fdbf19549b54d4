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
                };
                placement.dispatch(&d).await
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
