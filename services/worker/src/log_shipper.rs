//! Ships invocation log records to the logs stream in batches.
//!
//! The stream runs with JetStream syncing every write to disk (`sync_interval:
//! always`): one message per invocation cost a disk sync per invocation — at
//! concurrency 32 more CPU in nats-server and the kernel's writeback than the
//! gateway's whole share. Records wait here up to [`LINGER`] and leave as one
//! [`LogBatch`] per function, so under load a sync carries many invocations and at
//! rest a record leaves within a few milliseconds. Records are off the caller's path
//! (the reply has gone, `Tail` logs travel in it), so the wait costs no latency.

use std::collections::HashMap;
use std::time::Duration;

use nimbus_proto::{LogBatch, LogRecord, Subjects, WIRE_VERSION, encode};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long the first record of a batch waits for others.
pub const LINGER: Duration = Duration::from_millis(10);
/// A batch's size beyond which it leaves at once (well under `max_payload`; a lone
/// record larger than this — up to the 1 MiB of output an invocation keeps — still
/// leaves alone).
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Records waiting beyond this are published by the caller itself (back-pressure
/// instead of unbounded memory).
const QUEUE: usize = 4096;

pub struct LogShipper {
    tx: mpsc::Sender<LogRecord>,
    stop: CancellationToken,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl LogShipper {
    pub fn start(nats: async_nats::Client, subjects: Subjects) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(nats, subjects, rx, stop.clone()));
        Self {
            tx,
            stop,
            task: std::sync::Mutex::new(Some(task)),
        }
    }

    /// Queues a record; waits only when [`QUEUE`] records are already waiting.
    pub async fn send(&self, rec: LogRecord) {
        if self.tx.send(rec).await.is_err() {
            tracing::warn!("log shipper stopped; record dropped");
        }
    }

    /// Publishes what is queued, without waiting for more, and stops.
    pub async fn close(&self) {
        self.stop.cancel();
        let task = self.task.lock().expect("lock poisoned").take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

async fn run(
    nats: async_nats::Client,
    subjects: Subjects,
    mut rx: mpsc::Receiver<LogRecord>,
    stop: CancellationToken,
) {
    let mut batch: Vec<LogRecord> = Vec::new();
    loop {
        let closing = stop.is_cancelled();
        if closing {
            rx.close(); // what is queued still comes out; nothing more goes in
        }
        let first = tokio::select! {
            r = rx.recv() => r,
            _ = stop.cancelled(), if !closing => continue,
        };
        let Some(first) = first else { break };
        let mut bytes = first.text.len();
        batch.push(first);
        let until = tokio::time::Instant::now() + LINGER;
        while bytes < MAX_BATCH_BYTES {
            let next = if closing {
                rx.try_recv().ok()
            } else {
                tokio::select! {
                    r = rx.recv() => r,
                    _ = tokio::time::sleep_until(until) => None,
                    _ = stop.cancelled() => rx.try_recv().ok(),
                }
            };
            let Some(rec) = next else { break };
            bytes += rec.text.len();
            batch.push(rec);
        }
        publish(&nats, &subjects, std::mem::take(&mut batch)).await;
    }
}

/// One message per function, each function's records in arrival order.
async fn publish(nats: &async_nats::Client, subjects: &Subjects, records: Vec<LogRecord>) {
    let mut by_function: HashMap<String, Vec<LogRecord>> = HashMap::new();
    let mut order = Vec::new();
    for rec in records {
        if !by_function.contains_key(&rec.function) {
            order.push(rec.function.clone());
        }
        by_function
            .entry(rec.function.clone())
            .or_default()
            .push(rec);
    }
    for function in order {
        let records = by_function.remove(&function).unwrap_or_default();
        let Ok(subject) = subjects.logs(&function) else {
            continue;
        };
        let n = records.len();
        let msg = encode(&LogBatch {
            v: WIRE_VERSION,
            records,
        });
        if let Err(e) = nats.publish(subject, msg).await {
            tracing::warn!(%function, records = n, error = %e, "log records not published");
        }
    }
}
