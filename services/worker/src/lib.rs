//! The Nimbus worker: runs invocations.
//!
//! # Layout
//! - [`code_cache`]: fetch, verify and unpack code packages;
//! - [`sandbox`]: the isolation boundary (a trait, a process implementation);
//! - [`runtime_api`]: the Lambda Runtime API served to each instance;
//! - [`instance`]: one runtime process and the invocation lifecycle;
//! - [`pool`]: idle warm instances;
//! - this file: the dispatch loop, slots, heartbeats, reaping and draining.
//!
//! A worker has a fixed number of slots. A dispatch beyond them is refused (the
//! scheduler tries another worker). Results go straight to the dispatch's `reply_to`.

pub mod code_cache;
pub mod instance;
pub mod log_shipper;
pub mod pool;
pub mod runtime_api;
pub mod sandbox;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use nimbus_common::CodeStore;
use nimbus_proto::{
    AckResult, Dispatch, DispatchAck, ErrorCode, Heartbeat, InvokeOutcome, InvokeReply, LogRecord,
    Subjects, WIRE_VERSION, WireError, decode, encode,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::code_cache::{CodeCache, CodeError};
use crate::instance::{Instance, InstanceError, InstanceKey, Outcome, Runtimes};
use crate::log_shipper::LogShipper;
use crate::pool::Pool;
use crate::sandbox::Sandbox;

/// The Python runtime's bootstrap, written into the data dir at start.
const PYTHON_BOOTSTRAP: &str = include_str!("runtimes/python_bootstrap.py");
/// The Node.js runtime's bootstrap, written into the data dir at start.
const NODE_BOOTSTRAP: &str = include_str!("runtimes/node_bootstrap.mjs");

/// Bytes of log returned with `X-Amz-Log-Type: Tail`.
const LOG_TAIL_BYTES: usize = 4096;

/// How long the ack of an `ack_optional` dispatch waits for its result.
const ACK_DEFER: Duration = Duration::from_millis(nimbus_proto::worker::ACK_DEFER_MS);

/// The longest a cold start's box is left unreplaced while the start and its first
/// call run.
const REFILL_AFTER: std::time::Duration = std::time::Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub worker_id: String,
    pub slots: u32,
    pub data_dir: PathBuf,
    pub python: PathBuf,
    /// Node.js for every `nodejs*` runtime, if this worker has one.
    pub node: Option<PathBuf>,
    pub keep_alive: Duration,
    pub region: String,
    /// How long a stopping worker waits for in-flight invocations.
    pub drain_timeout: Duration,
}

struct Worker {
    cfg: WorkerConfig,
    nats: async_nats::Client,
    /// Completion records of asynchronous attempts (opened on first use: the bucket
    /// is created by gateways and schedulers).
    completions: tokio::sync::OnceCell<async_nats::jetstream::kv::Store>,
    completions_bucket: String,
    subjects: Subjects,
    logs: LogShipper,
    code: CodeCache,
    pool: Pool,
    sandbox: Arc<dyn Sandbox>,
    runtimes: Runtimes,
    scratch: PathBuf,
    busy: AtomicU32,
    draining: AtomicBool,
    next_instance: AtomicU64,
}

pub async fn run(
    cfg: WorkerConfig,
    nats: async_nats::Client,
    subjects: Subjects,
    names: nimbus_proto::Names,
    store: CodeStore,
    sandbox: Arc<dyn Sandbox>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let runtime_dir = cfg.data_dir.join("runtimes");
    std::fs::create_dir_all(&runtime_dir).context("creating the runtimes directory")?;
    std::fs::write(
        runtime_dir.join(instance::PYTHON_BOOTSTRAP_FILE),
        PYTHON_BOOTSTRAP,
    )
    .context("writing the Python bootstrap")?;
    std::fs::write(
        runtime_dir.join(instance::NODE_BOOTSTRAP_FILE),
        NODE_BOOTSTRAP,
    )
    .context("writing the Node.js bootstrap")?;
    let scratch = cfg.data_dir.join("instances");
    // Scratch of instances a previous run left behind.
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).context("creating the instances directory")?;
    let code =
        CodeCache::new(store, cfg.data_dir.join("code")).context("creating the code cache")?;
    let subject = subjects.worker_invoke(&cfg.worker_id)?;
    let worker = Arc::new(Worker {
        runtimes: Runtimes {
            python: cfg.python.clone(),
            node: cfg.node.clone(),
            dir: runtime_dir,
            region: cfg.region.clone(),
            worker_id: cfg.worker_id.clone(),
        },
        cfg,
        nats: nats.clone(),
        completions: tokio::sync::OnceCell::new(),
        completions_bucket: names.completions_bucket(),
        logs: LogShipper::start(nats.clone(), subjects.clone()),
        subjects,
        code,
        pool: Pool::default(),
        sandbox,
        scratch,
        busy: AtomicU32::new(0),
        draining: AtomicBool::new(false),
        next_instance: AtomicU64::new(1),
    });
    let mut sub = nats.subscribe(subject.clone()).await?;
    nats.flush().await?;
    worker.sandbox.preload(instance::python_preload(
        &worker.runtimes,
        worker.sandbox.as_ref(),
    ));
    worker.sandbox.prepare_boxes();
    tracing::info!(worker_id = %worker.cfg.worker_id, slots = worker.cfg.slots, %subject, "worker ready");

    let tracker = TaskTracker::new();
    let background = CancellationToken::new();
    {
        let w = worker.clone();
        let stop = background.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(
                nimbus_proto::worker::HEARTBEAT_INTERVAL_MS,
            ));
            loop {
                tokio::select! {
                    _ = tick.tick() => w.heartbeat().await,
                    _ = stop.cancelled() => break,
                }
            }
        });
        let w = worker.clone();
        let stop = background.clone();
        tokio::spawn(async move {
            // Check often enough that an instance lives at most ~1.5× its keep-alive.
            let every =
                (w.cfg.keep_alive / 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let n = w.pool.reap(w.cfg.keep_alive);
                        if n > 0 { tracing::info!(reaped = n, "reaped idle instances"); }
                    }
                    _ = stop.cancelled() => break,
                }
            }
        });
    }

    loop {
        tokio::select! {
            msg = sub.next() => {
                let Some(msg) = msg else { break };
                worker.clone().on_dispatch(msg, &tracker).await;
            }
            _ = shutdown.cancelled() => break,
        }
    }

    // Drain: take no more work, tell the schedulers, finish what is running.
    worker.draining.store(true, Ordering::SeqCst);
    let _ = sub.unsubscribe().await;
    worker.heartbeat().await;
    tracker.close();
    let in_flight = worker.busy.load(Ordering::SeqCst);
    tracing::info!(in_flight, "draining");
    if tokio::time::timeout(worker.cfg.drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "drain timeout: abandoning in-flight invocations (their schedulers will retry them)"
        );
    }
    background.cancel();
    worker.pool.clear();
    worker.heartbeat().await;
    worker.sandbox.cleanup();
    worker.logs.close().await;
    nimbus_common::flush_before_exit(&nats).await;
    tracing::info!("worker stopped");
    Ok(())
}

impl Worker {
    async fn heartbeat(&self) {
        let hb = Heartbeat {
            v: WIRE_VERSION,
            worker_id: self.cfg.worker_id.clone(),
            slots: self.cfg.slots,
            busy: self.busy.load(Ordering::SeqCst),
            draining: self.draining.load(Ordering::SeqCst),
            warm: self.pool.warm(),
            sandbox: self.sandbox.report(),
        };
        if let Err(e) = self
            .nats
            .publish(self.subjects.heartbeat(), encode(&hb))
            .await
        {
            tracing::warn!(error = %e, "heartbeat not sent");
        }
    }

    fn try_acquire_slot(&self) -> bool {
        if self.draining.load(Ordering::SeqCst) {
            return false;
        }
        self.busy
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                (b < self.cfg.slots).then_some(b + 1)
            })
            .is_ok()
    }

    async fn on_dispatch(self: Arc<Self>, msg: async_nats::Message, tracker: &TaskTracker) {
        let Some(ack_to) = msg.reply.clone() else {
            tracing::warn!("dispatch without a reply subject ignored");
            return;
        };
        let dispatch: Dispatch = match decode(&msg.payload) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable dispatch refused");
                self.ack(
                    ack_to,
                    AckResult::Refused {
                        reason: e.to_string(),
                    },
                )
                .await;
                return;
            }
        };
        if !self.try_acquire_slot() {
            metrics::counter!("nimbus_worker_dispatches_refused_total").increment(1);
            self.refuse(ack_to, "no free slot").await;
            return;
        }
        // A gateway's dispatch runs on an idle warm instance of its revision or not
        // at all.
        let warm = if dispatch.warm_only {
            let key = InstanceKey {
                function: dispatch.config.name.clone(),
                revision: dispatch.revision,
            };
            match self.pool.take(&key) {
                Some(instance) => Some(instance),
                None => {
                    self.busy.fetch_sub(1, Ordering::SeqCst);
                    metrics::counter!("nimbus_worker_dispatches_refused_total").increment(1);
                    self.refuse(ack_to, "no idle warm instance of this revision")
                        .await;
                    return;
                }
            }
        } else {
            None
        };
        // The ack may wait for the result, which then goes alone (see `ACK_DEFER`).
        let deferred_ack = if dispatch.ack_optional {
            Some(ack_to)
        } else {
            self.ack(ack_to, AckResult::Accepted).await;
            None
        };
        let w = self.clone();
        tracker.spawn(async move {
            let reply_to = dispatch.reply_to.clone();
            let event = (dispatch.invocation_type == nimbus_proto::InvocationType::Event)
                .then(|| nimbus_proto::completion_key(&dispatch.request_id, dispatch.attempt));
            let started = std::time::Instant::now();
            let run = w.execute(dispatch, warm);
            let (mut reply, log) = match deferred_ack {
                None => run.await,
                Some(ack_to) => {
                    tokio::pin!(run);
                    tokio::select! {
                        biased;
                        done = &mut run => done,
                        () = tokio::time::sleep(ACK_DEFER) => {
                            w.ack(ack_to, AckResult::Accepted).await;
                            run.await
                        }
                    }
                }
            };
            reply.worker_id.clone_from(&w.cfg.worker_id);
            w.busy.fetch_sub(1, Ordering::SeqCst);
            let outcome = match &reply.outcome {
                InvokeOutcome::Success { .. } => "success",
                InvokeOutcome::FunctionError { .. } => "function_error",
                InvokeOutcome::Failed(_) => "failed",
            };
            metrics::counter!("nimbus_worker_invocations_total", "outcome" => outcome).increment(1);
            metrics::histogram!("nimbus_worker_invocation_seconds")
                .record(started.elapsed().as_secs_f64());
            if reply.init_duration_us.is_some() {
                metrics::counter!("nimbus_worker_cold_starts_total").increment(1);
            }
            if let Some(key) = event {
                w.record_completion(&key, &reply).await;
            }
            if let Err(e) = w.nats.publish(reply_to, encode(&reply)).await {
                tracing::warn!(request_id = %reply.request_id, error = %e, "reply not sent");
            }
            if reply.init_duration_us.is_some() {
                // A cold start's box is replaced now that its caller has the result:
                // on the socket, not only queued for the connection's task — a box
                // maker woken first took the CPU from it (~0.7 ms of a native cold
                // start, in half of them, by scheduler tracepoints).
                let _ = w.nats.flush().await;
                w.sandbox.prepare_boxes();
            }
            // The log record goes after the reply: it is not on the caller's path.
            if let Some((function, text)) = log {
                w.publish_log(function, &reply.request_id, text).await;
            }
        });
    }

    /// Records that an asynchronous attempt ran (before replying), so a redelivery of
    /// it — its scheduler died before acking — is not run again.
    async fn record_completion(&self, key: &str, reply: &InvokeReply) {
        if matches!(reply.outcome, InvokeOutcome::Failed(_)) {
            return; // it did not run: running it again is right
        }
        let store = self
            .completions
            .get_or_try_init(|| async {
                async_nats::jetstream::new(self.nats.clone())
                    .get_key_value(self.completions_bucket.clone())
                    .await
            })
            .await;
        let Ok(store) = store else {
            tracing::warn!(
                key,
                "completions bucket unavailable; a redelivery could run this again"
            );
            return;
        };
        // Large results are recorded without their payload: a redelivery then
        // reports the outcome without the response body.
        let mut recorded = reply.clone();
        match &mut recorded.outcome {
            InvokeOutcome::Success { payload, log_tail }
            | InvokeOutcome::FunctionError { payload, log_tail } => {
                *log_tail = None;
                if payload.len() > 1024 * 1024 {
                    *payload = bytes::Bytes::new();
                }
            }
            InvokeOutcome::Failed(_) => {}
        }
        if let Err(e) = store.put(key, encode(&recorded)).await {
            tracing::warn!(key, error = %e, "completion not recorded; a redelivery could run this again");
        }
    }

    async fn refuse(&self, to: async_nats::Subject, reason: &str) {
        self.ack(
            to,
            AckResult::Refused {
                reason: reason.into(),
            },
        )
        .await;
    }

    async fn ack(&self, to: async_nats::Subject, result: AckResult) {
        let ack = DispatchAck {
            v: WIRE_VERSION,
            worker_id: self.cfg.worker_id.clone(),
            result,
        };
        if let Err(e) = self.nats.publish(to, encode(&ack)).await {
            tracing::warn!(error = %e, "dispatch ack not sent");
        }
    }

    /// Runs the dispatch, on `warm` if it was taken already; returns the reply and
    /// the log record to publish after it.
    async fn execute(
        &self,
        d: Dispatch,
        warm: Option<Instance>,
    ) -> (InvokeReply, Option<(String, String)>) {
        let function = d.config.name.clone();
        let request_id = d.request_id.clone();
        self.pool.retire_older(&function, d.revision);
        let key = InstanceKey {
            function: function.clone(),
            revision: d.revision,
        };
        let mut instance = match warm.or_else(|| self.pool.take(&key)) {
            Some(i) => i,
            None => match self.cold_start(&d, key).await {
                Ok(i) => i,
                Err(reply) => return (*reply, None),
            },
        };
        let finished = instance.invoke(&request_id, d.payload).await;
        if finished.reusable {
            self.pool.put(instance);
        } else {
            drop(instance);
        }
        let log_tail = d.log_tail.then(|| tail(&finished.log, LOG_TAIL_BYTES));
        let outcome = match finished.outcome {
            Outcome::Response(payload) => InvokeOutcome::Success { payload, log_tail },
            Outcome::FunctionError(payload) => InvokeOutcome::FunctionError { payload, log_tail },
        };
        let reply = InvokeReply {
            v: WIRE_VERSION,
            request_id,
            executed_version: "$LATEST".into(),
            outcome,
            init_duration_us: finished.init_duration_us,
            worker_id: String::new(),
        };
        (reply, Some((function, finished.log)))
    }

    async fn cold_start(
        &self,
        d: &Dispatch,
        key: InstanceKey,
    ) -> Result<Instance, Box<InvokeReply>> {
        let code_dir = self.code.ensure(&d.config.code).await.map_err(|e| {
            tracing::warn!(function = %d.config.name, request_id = %d.request_id, error = %e, "code unavailable");
            let code = match e {
                CodeError::ChecksumMismatch { .. } => ErrorCode::CodeChecksumMismatch,
                _ => ErrorCode::CodeUnavailable,
            };
            Box::new(InvokeReply::failed(&d.request_id, WireError::new(code, e.to_string())))
        })?;
        let id = self.next_instance.fetch_add(1, Ordering::Relaxed);
        let started = Instance::start(
            id,
            key,
            &d.config,
            &code_dir,
            &self.runtimes,
            self.sandbox.as_ref(),
            &self.scratch,
        )
        .await;
        // The box this start may have taken is replaced once its first reply is
        // out (see `dispatch`), or after REFILL_AFTER if the start or the call takes
        // longer: made at once, the new box's fork, cgroup move and exec competed for
        // the CPU with the start and its first call.
        let sandbox = self.sandbox.clone();
        tokio::spawn(async move {
            tokio::time::sleep(REFILL_AFTER).await;
            sandbox.prepare_boxes();
        });
        started.map_err(|e| {
            tracing::warn!(function = %d.config.name, request_id = %d.request_id, error = %e, "instance did not start");
            let reply = match e {
                InstanceError::NoBootstrap | InstanceError::UnsupportedRuntime(_) => {
                    let doc = serde_json::json!({
                        "errorType": "Runtime.InvalidEntrypoint",
                        "errorMessage": e.to_string(),
                    });
                    InvokeReply {
                        v: WIRE_VERSION,
                        request_id: d.request_id.clone(),
                        executed_version: "$LATEST".into(),
                        outcome: InvokeOutcome::FunctionError {
                            payload: serde_json::to_vec(&doc).unwrap_or_default().into(),
                            log_tail: None,
                        },
                        init_duration_us: None,
                        worker_id: String::new(),
                    }
                }
                other => InvokeReply::failed(
                    &d.request_id,
                    WireError::new(ErrorCode::Internal, other.to_string()),
                ),
            };
            Box::new(reply)
        })
    }

    async fn publish_log(&self, function: String, request_id: &str, text: String) {
        let rec = LogRecord {
            v: WIRE_VERSION,
            function,
            request_id: request_id.into(),
            timestamp_ms: instance::unix_ms(),
            text,
        };
        self.logs.send(rec).await;
    }
}

/// The last `max` bytes of `s`, cut at a character boundary.
fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn tail_cuts_at_char_boundary() {
        assert_eq!(super::tail("abc", 10), "abc");
        assert_eq!(super::tail("abcdef", 3), "def");
        let t = super::tail("ééé", 3);
        assert_eq!(t, "é");
    }
}
