//! Asynchronous invocations, under Lambda's delivery contract. Schedulers share one
//! durable pull consumer on the async stream. A message is held (progress acks while
//! it runs) until its invocation finished, then acked:
//!
//! - success → the on-success destination, if any, gets the invocation record;
//! - function error or timeout → retried after a backoff (`retry_delay`, doubled per
//!   retry; Lambda's is 1 min then 2 min) up to `MaximumRetryAttempts` (default 2).
//!   The retry is a new message carrying `attempt + 1`, published (and acknowledged
//!   by JetStream) before the original is acked: the budget lives in the message, so
//!   a crashed worker or scheduler never uses it up;
//! - retries exhausted, or the event older than `MaximumEventAgeInSeconds` → the
//!   record goes to the on-failure destination, else the dead-letter stream;
//! - no worker could take it (throttled), the platform failed, or the worker running
//!   it vanished → nak; it runs again (another worker, any scheduler) until its age
//!   runs out. Workers never touch the stream.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt;
use nimbus_proto::{
    AsyncInvocation, Dispatch, ErrorCode, FunctionConfig, InvocationType, InvokeOutcome,
    InvokeReply, Names, WIRE_VERSION, decode, encode,
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::destinations::{Condition, Deliverer, LastResponse, now_ms, record};
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
/// Delay before an invocation that found no free worker is tried again.
const THROTTLE_DELAY: Duration = Duration::from_secs(1);

pub struct AsyncQueue {
    pub placement: Arc<Placement>,
    pub registry: Arc<Registry>,
    pub deliverer: Arc<Deliverer>,
    pub region: String,
    /// First retry's delay; doubled for each further retry.
    pub retry_delay: Duration,
    /// Completion records written by workers (see [`nimbus_proto::completion_key`]).
    pub completions: async_nats::jetstream::kv::Store,
}

pub async fn run(
    queue: Arc<AsyncQueue>,
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
        let queue = queue.clone();
        tracker.spawn(async move {
            let _permit = permit;
            queue.handle(msg).await;
        });
    }
    Ok(())
}

enum Ran {
    Finished(InvokeReply),
    /// Not run to an answer (no worker, worker vanished, platform error): nak.
    Again(Option<Duration>),
}

impl AsyncQueue {
    async fn handle(&self, msg: jetstream::Message) {
        let inv: AsyncInvocation = match decode(&msg.payload) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(subject = %msg.subject, error = %e, "undecodable async invocation discarded");
                let _ = msg.ack_with(AckKind::Term).await;
                return;
            }
        };
        let now = now_ms();
        if inv.not_before_ms > now {
            // A retry whose backoff has not elapsed: not an attempt.
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_millis(
                    inv.not_before_ms - now,
                ))))
                .await;
            return;
        }
        let (revision, config) = match self.registry.resolve(&inv.function, inv.min_revision).await
        {
            Ok(c) => c,
            Err(e) if e.code == ErrorCode::FunctionNotFound => {
                tracing::warn!(request_id = %inv.request_id, function = %inv.function, "function gone; async invocation discarded");
                let _ = msg.ack_with(AckKind::Term).await;
                return;
            }
            Err(e) => {
                tracing::warn!(request_id = %inv.request_id, error = %e, "registry unavailable; retrying later");
                let _ = msg.ack_with(AckKind::Nak(Some(THROTTLE_DELAY))).await;
                return;
            }
        };
        let age_ms = now.saturating_sub(inv.enqueued_at_ms);
        if age_ms > u64::from(config.max_event_age_secs()) * 1000 {
            tracing::warn!(request_id = %inv.request_id, function = %inv.function, age_ms, "event too old; not run");
            self.finish(&msg, &inv, &config, Condition::EventAgeExceeded, None)
                .await;
            return;
        }
        let ran = match self.completed_before(&msg, &inv).await {
            Some(reply) => Ran::Finished(reply),
            None => self.run_once(&msg, &inv, revision, &config).await,
        };
        match ran {
            Ran::Again(delay) => {
                let _ = msg.ack_with(AckKind::Nak(delay)).await;
            }
            Ran::Finished(reply) => match reply.outcome {
                InvokeOutcome::Success { payload, .. } => {
                    tracing::info!(request_id = %inv.request_id, function = %inv.function, "async invocation succeeded");
                    let resp = LastResponse {
                        payload,
                        function_error: false,
                    };
                    let dest = config
                        .event_invoke
                        .as_ref()
                        .and_then(|e| e.on_success.clone());
                    if dest.is_some() {
                        self.finish_to(
                            &msg,
                            &inv,
                            dest.as_deref(),
                            Condition::Success,
                            Some(&resp),
                        )
                        .await;
                    } else if let Err(e) = msg.double_ack().await {
                        tracing::warn!(request_id = %inv.request_id, error = %e, "ack failed; the invocation may run again");
                    }
                }
                InvokeOutcome::FunctionError { payload, .. } => {
                    let resp = LastResponse {
                        payload,
                        function_error: true,
                    };
                    if inv.attempt < config.max_retries() {
                        self.retry(&msg, &inv).await;
                    } else {
                        tracing::info!(request_id = %inv.request_id, function = %inv.function, attempts = inv.attempt + 1, "async invocation failed; retries exhausted");
                        self.finish(
                            &msg,
                            &inv,
                            &config,
                            Condition::RetriesExhausted,
                            Some(&resp),
                        )
                        .await;
                    }
                }
                InvokeOutcome::Failed(e) => {
                    tracing::warn!(request_id = %inv.request_id, function = %inv.function, error = %e, "async invocation could not run; retrying later");
                    let _ = msg.ack_with(AckKind::Nak(Some(THROTTLE_DELAY))).await;
                }
            },
        }
    }

    /// A redelivered attempt that already ran to completion (its scheduler died before
    /// acking): the worker's completion record, so it is not run twice.
    async fn completed_before(
        &self,
        msg: &jetstream::Message,
        inv: &AsyncInvocation,
    ) -> Option<InvokeReply> {
        let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
        if delivered <= 1 {
            return None;
        }
        let key = nimbus_proto::completion_key(&inv.request_id, inv.attempt);
        let entry = self.completions.entry(&key).await.ok().flatten()?;
        let reply = decode::<InvokeReply>(&entry.value).ok()?;
        tracing::info!(request_id = %inv.request_id, attempt = inv.attempt, delivered, "redelivered invocation already ran; using its recorded outcome");
        Some(reply)
    }

    /// Places the invocation and waits for its reply.
    async fn run_once(
        &self,
        msg: &jetstream::Message,
        inv: &AsyncInvocation,
        revision: u64,
        config: &FunctionConfig,
    ) -> Ran {
        let placement = &self.placement;
        let inbox = placement.nats.new_inbox();
        let mut replies = match placement.nats.subscribe(inbox.clone()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe for the reply; retrying later");
                return Ran::Again(Some(THROTTLE_DELAY));
            }
        };
        let d = Dispatch {
            v: WIRE_VERSION,
            request_id: inv.request_id.clone(),
            config: config.clone(),
            revision,
            payload: inv.payload.clone(),
            log_tail: false,
            invocation_type: InvocationType::Event,
            reply_to: inbox,
            attempt: inv.attempt,
            warm_only: false,
            ack_optional: false,
        };
        let worker = match placement.dispatch(&d).await {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(request_id = %inv.request_id, error = %e, "async invocation not placed; retrying later");
                return Ran::Again(Some(THROTTLE_DELAY));
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
                    let Some(reply) = reply else { return Ran::Again(None) };
                    return match decode::<InvokeReply>(&reply.payload) {
                        Ok(r) => Ran::Finished(r),
                        Err(e) => {
                            tracing::warn!(error = %e, "undecodable reply; running it again");
                            Ran::Again(Some(THROTTLE_DELAY))
                        }
                    };
                }
                _ = check.tick() => {
                    if !placement.workers.is_alive(&worker) {
                        tracing::warn!(request_id = %inv.request_id, worker_id = %worker, "worker vanished mid-invocation; handing it back");
                        return Ran::Again(None);
                    }
                    if tokio::time::Instant::now() >= deadline {
                        tracing::warn!(request_id = %inv.request_id, worker_id = %worker, "no result in time; handing it back");
                        return Ran::Again(None);
                    }
                    if last_progress.elapsed() >= PROGRESS_EVERY {
                        let _ = msg.ack_with(AckKind::Progress).await;
                        last_progress = tokio::time::Instant::now();
                    }
                }
            }
        }
    }

    /// Publishes the next attempt (acknowledged by JetStream), then acks this one.
    async fn retry(&self, msg: &jetstream::Message, inv: &AsyncInvocation) {
        let delay = self.retry_delay * 2u32.saturating_pow(inv.attempt);
        let next = AsyncInvocation {
            attempt: inv.attempt + 1,
            not_before_ms: now_ms() + delay.as_millis() as u64,
            ..inv.clone()
        };
        let Ok(subject) = self.deliverer.subjects.async_invoke(&inv.function) else {
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!("{}#{}", inv.request_id, next.attempt).as_str(),
        );
        match self
            .deliverer
            .js_publish(subject, headers, encode(&next))
            .await
        {
            Ok(()) => {
                tracing::info!(request_id = %inv.request_id, function = %inv.function, attempt = next.attempt, delay_ms = delay.as_millis() as u64, "function error; retry scheduled");
                if let Err(e) = msg.double_ack().await {
                    // The retry is queued and deduplicated by its id; a redelivery of
                    // this message republishes the same id.
                    tracing::warn!(request_id = %inv.request_id, error = %e, "ack after retry failed");
                }
            }
            Err(e) => {
                tracing::warn!(request_id = %inv.request_id, error = %e, "retry not queued; running it again later");
                let _ = msg.ack_with(AckKind::Nak(Some(THROTTLE_DELAY))).await;
            }
        }
    }

    async fn finish(
        &self,
        msg: &jetstream::Message,
        inv: &AsyncInvocation,
        config: &FunctionConfig,
        condition: Condition,
        response: Option<&LastResponse>,
    ) {
        let dest = config
            .event_invoke
            .as_ref()
            .and_then(|e| e.on_failure.clone());
        self.finish_to(msg, inv, dest.as_deref(), condition, response)
            .await;
    }

    /// Delivers the record (destination or DLQ), then acks; nak if delivery failed.
    async fn finish_to(
        &self,
        msg: &jetstream::Message,
        inv: &AsyncInvocation,
        dest: Option<&str>,
        condition: Condition,
        response: Option<&LastResponse>,
    ) {
        let count = if response.is_some() {
            inv.attempt + 1
        } else {
            inv.attempt
        };
        let rec = record(inv, &self.region, condition, count, response);
        match self
            .deliverer
            .deliver(&inv.function, &inv.request_id, dest, &rec)
            .await
        {
            Ok(()) => {
                tracing::info!(request_id = %inv.request_id, function = %inv.function, condition = ?condition, destination = dest.unwrap_or("dead-letter stream"), "invocation record delivered");
                let _ = msg.double_ack().await;
            }
            Err(e) => {
                tracing::warn!(request_id = %inv.request_id, error = %e, "record not delivered; trying again later");
                let _ = msg.ack_with(AckKind::Nak(Some(THROTTLE_DELAY))).await;
            }
        }
    }
}
