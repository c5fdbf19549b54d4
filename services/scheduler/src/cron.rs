//! Schedules: every scheduler computes the same fire times for every schedule; the
//! schedule-state KV record (the last instant fired) decides which of them fires an
//! instant. For each due instant a scheduler publishes the invocation to the async
//! stream (message id `cron:<schedule>@<instant>`, deduplicated), then advances the
//! record with compare-and-set; a scheduler that loses the race rereads and finds the
//! instant done. The record, not JetStream's duplicate window, is what keeps an
//! instant from running twice after an outage of any length.
//!
//! Instants missed by more than the misfire grace (no scheduler ran) follow the
//! schedule's misfire policy: `skip`, `fire_once` (the latest, default) or
//! `catch_up:N` (the latest N). Late-but-within-grace instants (a busy machine) all
//! fire.
//!
//! The event is EventBridge's "Scheduled Event" unless the schedule has a payload.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use chrono::{DateTime, TimeDelta, Utc};
use nimbus_common::KvCache;
use nimbus_proto::{
    AsyncInvocation, Misfire, ScheduleConfig, ScheduleState, Subjects, WIRE_VERSION, decode, encode,
};
use nimbus_schedule::Schedule;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::destinations::Deliverer;

/// Due instants considered at once (a long outage of a per-second schedule).
const MAX_DUE: usize = 100_000;

pub struct CronRunner {
    pub deliverer: Arc<Deliverer>,
    pub subjects: Subjects,
    pub state: kv::Store,
    pub region: String,
    /// Instants older than this when found due were missed (no scheduler ran).
    pub misfire_grace: Duration,
}

impl CronRunner {
    pub async fn run(self: Arc<Self>, bucket: kv::Store, stop: CancellationToken) {
        let cache: Arc<KvCache<ScheduleConfig>> = KvCache::start(bucket, stop.clone()).await;
        let changes = cache.subscribe();
        crate::tasks::reconcile(
            "schedule",
            changes,
            stop,
            || {
                cache
                    .list()
                    .into_iter()
                    .map(|(name, _, s)| (name, (*s).clone()))
                    .collect()
            },
            |cfg, token| {
                let me = self.clone();
                async move { me.run_schedule(cfg, token).await }
            },
        )
        .await;
    }

    async fn run_schedule(&self, cfg: ScheduleConfig, stop: CancellationToken) {
        let schedule = match Schedule::parse(
            &cfg.expression,
            cfg.timezone.as_deref(),
            cfg.start_ms as i64,
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(schedule = %cfg.name, error = %e, "invalid schedule ignored");
                return;
            }
        };
        tracing::info!(schedule = %cfg.name, function = %cfg.function, expression = %cfg.expression, "schedule running");
        while !stop.is_cancelled() {
            let wait = match self.step(&cfg, &schedule).await {
                Ok(Some(next)) => (next - Utc::now()).to_std().unwrap_or_default(),
                Ok(None) => {
                    tracing::info!(schedule = %cfg.name, "schedule has no more fire times");
                    stop.cancelled().await;
                    return;
                }
                Err(Retry::Now) => Duration::ZERO,
                Err(Retry::Later(e)) => {
                    tracing::warn!(schedule = %cfg.name, error = %e, "schedule step failed; retrying");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Fires what is due; returns the next fire time.
    async fn step(
        &self,
        cfg: &ScheduleConfig,
        schedule: &Schedule,
    ) -> Result<Option<DateTime<Utc>>, Retry> {
        let (revision, last_ms) = match self.state.entry(&cfg.name).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => {
                let st: ScheduleState =
                    decode(&e.value).map_err(|e| Retry::Later(e.to_string()))?;
                (e.revision, st.last_fired_ms as i64)
            }
            Ok(_) => (0, cfg.start_ms as i64 - 1),
            Err(e) => return Err(Retry::Later(e.to_string())),
        };
        let now = Utc::now();
        let end = cfg
            .end_ms
            .and_then(|e| DateTime::<Utc>::from_timestamp_millis(e as i64))
            .unwrap_or(now)
            .min(now);
        let last = DateTime::<Utc>::from_timestamp_millis(last_ms).unwrap_or(now);
        let mut due = Vec::new();
        let mut t = last;
        while let Some(n) = schedule.next_after(t) {
            if n > end || due.len() >= MAX_DUE {
                break;
            }
            due.push(n);
            t = n;
        }
        let Some(newest) = due.last().copied() else {
            let next = schedule.next_after(now.max(last));
            let before_end =
                |n: &DateTime<Utc>| cfg.end_ms.is_none_or(|e| n.timestamp_millis() <= e as i64);
            return Ok(next.filter(before_end));
        };
        let cutoff = now - TimeDelta::from_std(self.misfire_grace).unwrap_or_default();
        let (missed, on_time): (Vec<_>, Vec<_>) = due.iter().partition(|t| **t < cutoff);
        let mut fire: Vec<DateTime<Utc>> = match cfg.misfire {
            Misfire::Skip => vec![],
            Misfire::FireOnce => missed.last().copied().into_iter().collect(),
            Misfire::CatchUp { n } => missed
                .iter()
                .rev()
                .take(n as usize)
                .rev()
                .copied()
                .collect(),
        };
        if !missed.is_empty() {
            tracing::warn!(schedule = %cfg.name, missed = missed.len(), firing = fire.len(), policy = %cfg.misfire.as_string(), "instants missed while no scheduler ran");
        }
        fire.extend(on_time);
        for instant in &fire {
            self.fire(cfg, *instant).await.map_err(Retry::Later)?;
        }
        let record = encode(&ScheduleState {
            v: WIRE_VERSION,
            last_fired_ms: newest.timestamp_millis() as u64,
        });
        let advanced = if revision == 0 {
            self.state
                .create(&cfg.name, record)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else {
            self.state
                .update(&cfg.name, record, revision)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        match advanced {
            Ok(()) => Err(Retry::Now),
            // Another scheduler advanced it first: reread.
            Err(_) => Err(Retry::Now),
        }
    }

    async fn fire(&self, cfg: &ScheduleConfig, instant: DateTime<Utc>) -> Result<(), String> {
        let key = format!("{}@{}", cfg.name, instant.timestamp_millis());
        let request_id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, key.as_bytes()).to_string();
        let payload = match &cfg.payload {
            Some(p) => bytes::Bytes::from(p.clone().into_bytes()),
            None => bytes::Bytes::from(
                serde_json::to_vec(&json!({
                    "version": "0",
                    "id": request_id,
                    "detail-type": "Scheduled Event",
                    "source": "aws.events",
                    "account": "000000000000",
                    "time": instant.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    "region": self.region,
                    "resources": [format!("arn:aws:scheduler:{}:000000000000:schedule/default/{}", self.region, cfg.name)],
                    "detail": {},
                }))
                .unwrap_or_default(),
            ),
        };
        let inv = AsyncInvocation {
            v: WIRE_VERSION,
            request_id,
            function: cfg.function.clone(),
            min_revision: 0,
            payload,
            enqueued_at_ms: instant.timestamp_millis() as u64,
            attempt: 0,
            not_before_ms: 0,
        };
        let subject = self
            .subjects
            .async_invoke(&cfg.function)
            .map_err(|e| e.to_string())?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("cron:{key}").as_str());
        self.deliverer
            .js_publish(subject, headers, encode(&inv))
            .await
            .map_err(|e| e.to_string())?;
        tracing::debug!(schedule = %cfg.name, %instant, "fired");
        Ok(())
    }
}

enum Retry {
    /// State changed: look again at once.
    Now,
    Later(String),
}
