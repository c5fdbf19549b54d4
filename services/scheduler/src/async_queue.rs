//! Asynchronous invocations: schedulers share one durable pull consumer on the async
//! stream. A message is held (progress acks while it runs) until its invocation
//! finished, then acked. If the worker running it disappears, or no worker can take
//! it, the message is nak'ed and runs again — on another worker, through any
//! scheduler. Workers never touch the stream.
//!
//! Retries of function errors, event age and destinations build on this loop.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt;
use nimbus_proto::{
    AsyncInvocation, Dispatch, ErrorCode, InvocationType, InvokeOutcome, InvokeReply, Names,
    WIRE_VERSION, decode,
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::placement::Placement;
use crate::registry::Registry;

/// Async invocations one scheduler runs at once.
const MAX_IN_FLIGHT: usize = 256;
/// JetStream redelivers an unacknowledged message after this long (a scheduler that
/// died holding it).
const ACK_WAIT: Duration = Duration::from_secs(30);
/// Progress acks and worker-liveness checks while an invocation runs.
const CHECK_EVERY: Duration = Duration::from_secs(1);
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

pub async fn run(
    placement: Arc<Placement>,
    registry: Arc<Registry>,
    stream: jetstream::stream::Stream,
    names: Names,
    stop: CancellationToken,
    tracker: TaskTracker,
) -> anyhow::Result<()> {
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &names.async_consumer(),
            consumer::pull::Config {
                durable_name: Some(names.async_consumer()),
                description: Some("Nimbus schedulers".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_deliver: -1,
                max_ack_pending: 10_000,
                ..Default::default()
            },
        )
        .await?;
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut messages = consumer.messages().await?;
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p?,
            _ = stop.cancelled() => break,
        };
        let msg = tokio::select! {
            m = messages.next() => m,
            _ = stop.cancelled() => break,
        };
        let Some(msg) = msg else { break };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "async consumer error");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let placement = placement.clone();
        let registry = registry.clone();
        tracker.spawn(async move {
            let _permit = permit;
            handle(msg, &placement, &registry).await;
        });
    }
    Ok(())
}

async fn handle(msg: jetstream::Message, placement: &Placement, registry: &Registry) {
    let inv: AsyncInvocation = match decode(&msg.payload) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(subject = %msg.subject, error = %e, "undecodable async invocation discarded");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
    };
    let (revision, config) = match registry.resolve(&inv.function, inv.min_revision).await {
        Ok(c) => c,
        Err(e) if e.code == ErrorCode::FunctionNotFound => {
            tracing::warn!(request_id = %inv.request_id, function = %inv.function, "function gone; async invocation discarded");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
        Err(e) => {
            tracing::warn!(request_id = %inv.request_id, error = %e, "registry unavailable; retrying later");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
            return;
        }
    };
    let inbox = placement.nats.new_inbox();
    let mut replies = match placement.nats.subscribe(inbox.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot subscribe for the reply; retrying later");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
            return;
        }
    };
    let d = Dispatch {
        v: WIRE_VERSION,
        request_id: inv.request_id.clone(),
        config: (*config).clone(),
        revision,
        payload: inv.payload,
        log_tail: false,
        invocation_type: InvocationType::Event,
        reply_to: inbox,
    };
    let worker = match placement.dispatch(&d).await {
        Ok(w) => w,
        Err(e) => {
            tracing::debug!(request_id = %inv.request_id, error = %e, "async invocation not placed; retrying later");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
            return;
        }
    };
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(u64::from(config.timeout_secs))
        + Duration::from_secs(30);
    let mut check = tokio::time::interval(CHECK_EVERY);
    let mut last_progress = tokio::time::Instant::now();
    loop {
        tokio::select! {
            reply = replies.next() => {
                let Some(reply) = reply else { break };
                match decode::<InvokeReply>(&reply.payload) {
                    Ok(r) => {
                        match &r.outcome {
                            InvokeOutcome::Success { .. } => tracing::info!(request_id = %r.request_id, function = %inv.function, worker_id = %worker, "async invocation succeeded"),
                            InvokeOutcome::FunctionError { .. } => tracing::info!(request_id = %r.request_id, function = %inv.function, worker_id = %worker, "async invocation failed with a function error"),
                            InvokeOutcome::Failed(e) => {
                                tracing::warn!(request_id = %r.request_id, function = %inv.function, error = %e, "async invocation could not run; retrying later");
                                let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                                return;
                            }
                        }
                        if let Err(e) = msg.double_ack().await {
                            tracing::warn!(request_id = %inv.request_id, error = %e, "ack failed; the invocation may run again");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "undecodable reply; acking anyway");
                        let _ = msg.ack().await;
                    }
                }
                return;
            }
            _ = check.tick() => {
                if !placement.workers.is_alive(&worker) {
                    tracing::warn!(request_id = %inv.request_id, worker_id = %worker, "worker vanished mid-invocation; handing it back");
                    let _ = msg.ack_with(AckKind::Nak(None)).await;
                    return;
                }
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(request_id = %inv.request_id, worker_id = %worker, "no result in time; handing it back");
                    let _ = msg.ack_with(AckKind::Nak(None)).await;
                    return;
                }
                if last_progress.elapsed() >= PROGRESS_EVERY {
                    let _ = msg.ack_with(AckKind::Progress).await;
                    last_progress = tokio::time::Instant::now();
                }
            }
        }
    }
    let _ = msg.ack_with(AckKind::Nak(None)).await;
}
