//! The Nimbus scheduler: the router between gateways and workers.
//!
//! # Layout
//! - [`registry`]: function configurations from a KV watch (no storage read per call);
//! - the live worker table from heartbeats is [`nimbus_placement::WorkerTable`], shared
//!   with the gateway, which places synchronous calls itself;
//! - [`placement`]: picking a worker and handing an invocation over;
//! - [`sync_invoke`]: synchronous invocations (queue group `scheduler`);
//! - [`async_queue`]: durable asynchronous invocations from JetStream.
//!
//! Several schedulers may run; they share both the queue group and the durable
//! consumer, so each invocation is routed by exactly one of them.

pub mod async_queue;
pub mod cron;
pub mod destinations;
pub mod placement;
pub mod registry;
pub mod s3_events;
pub mod sync_invoke;
pub mod tasks;
pub mod triggers;
pub mod watcher;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use nimbus_proto::{Heartbeat, Names, Subjects, decode};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::placement::Placement;
use crate::registry::Registry;
use nimbus_placement::WorkerTable;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// How long a stopping scheduler waits for invocations it is placing or holding.
    pub drain_timeout: Duration,
    /// Delay before the first retry of a failed async invocation (doubled after).
    pub retry_delay: Duration,
    /// Region used in ARNs of invocation records.
    pub region: String,
    /// Schedule instants older than this when due were missed (no scheduler ran).
    pub misfire_grace: Duration,
    /// Subject of S3-style object event notifications (default `<prefix>.events.s3`).
    pub s3_events_subject: Option<String>,
    /// How often bucket watchers list their stores.
    pub watch_interval: Duration,
    /// Duplicate window of the async stream, if this scheduler creates it.
    pub duplicate_window: Duration,
}

pub async fn run(
    cfg: SchedulerConfig,
    nats: async_nats::Client,
    subjects: Subjects,
    names: Names,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topology =
        nimbus_common::topology::ensure(&nats, &names, &subjects, cfg.duplicate_window).await?;
    let stop = CancellationToken::new();
    let registry = Registry::start(topology.functions.clone(), stop.clone()).await?;
    let workers = Arc::new(WorkerTable::default());

    let mut heartbeats = nats.subscribe(subjects.heartbeat()).await?;
    let table = workers.clone();
    let hb_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                m = heartbeats.next() => m,
                _ = hb_stop.cancelled() => break,
            };
            let Some(msg) = msg else { break };
            match decode::<Heartbeat>(&msg.payload) {
                Ok(hb) => table.update(hb),
                Err(e) => tracing::warn!(error = %e, "undecodable heartbeat ignored"),
            }
        }
    });

    let placement = Arc::new(Placement {
        nats: nats.clone(),
        subjects: subjects.clone(),
        workers,
    });
    let tracker = TaskTracker::new();
    let consumers = CancellationToken::new();
    let sync = tokio::spawn(sync_invoke::run(
        placement.clone(),
        registry.clone(),
        consumers.clone(),
        tracker.clone(),
    ));
    let deliverer = Arc::new(destinations::Deliverer {
        nats: nats.clone(),
        js: topology.js.clone(),
        subjects: subjects.clone(),
        captured: Default::default(),
    });
    let runner = Arc::new(triggers::TriggerRunner {
        nats: nats.clone(),
        subjects: subjects.clone(),
        deliverer: deliverer.clone(),
    });
    let trigger_cache =
        nimbus_common::KvCache::start(topology.triggers.clone(), stop.clone()).await;
    tokio::spawn(runner.run(trigger_cache.clone(), stop.clone()));
    let s3 = Arc::new(s3_events::S3Router {
        deliverer: deliverer.clone(),
        triggers: trigger_cache.clone(),
    });
    let watchers = Arc::new(watcher::Watchers {
        router: s3.clone(),
        leases: topology.leases.clone(),
        state: topology.watch_state.clone(),
        holder: format!("scheduler-{}", uuid::Uuid::new_v4().simple()),
        interval: cfg.watch_interval,
        region: cfg.region.clone(),
    });
    tokio::spawn(watchers.run(trigger_cache.clone(), stop.clone()));
    tokio::spawn(
        s3.run_subject(
            nats.clone(),
            cfg.s3_events_subject
                .clone()
                .unwrap_or_else(|| subjects.s3_events()),
            stop.clone(),
        ),
    );
    let cron = Arc::new(cron::CronRunner {
        deliverer: deliverer.clone(),
        subjects: subjects.clone(),
        state: topology.schedule_state.clone(),
        region: cfg.region.clone(),
        misfire_grace: cfg.misfire_grace,
    });
    tokio::spawn(cron.run(topology.schedules.clone(), stop.clone()));
    let queue = Arc::new(async_queue::AsyncQueue {
        placement: placement.clone(),
        registry: registry.clone(),
        deliverer,
        region: cfg.region.clone(),
        retry_delay: cfg.retry_delay,
        completions: topology.completions.clone(),
    });
    let asynchronous = tokio::spawn(async_queue::run(
        queue,
        topology.async_stream.clone(),
        names.clone(),
        consumers.clone(),
        tracker.clone(),
    ));
    nats.flush().await?;
    tracing::info!("scheduler ready");

    shutdown.cancelled().await;
    consumers.cancel();
    let _ = sync.await;
    let _ = asynchronous.await;
    tracker.close();
    if tokio::time::timeout(cfg.drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout: unfinished async invocations will be redelivered");
    }
    stop.cancel();
    nimbus_common::flush_before_exit(&nats).await;
    tracing::info!("scheduler stopped");
    Ok(())
}
