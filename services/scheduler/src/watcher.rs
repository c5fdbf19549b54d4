//! Bucket watchers: S3-style events for stores that send no notifications. For each
//! distinct `watch` URL among the S3 triggers, one scheduler at a time (a lease in
//! the leases KV bucket, taken and renewed with compare-and-set) lists the store
//! every interval, diffs the listing against what it saw last (kept in KV, so it
//! survives restarts and failover), and emits `ObjectCreated:Put` for a new object or
//! one with a new ETag, `ObjectRemoved:Delete` for one gone. The first listing is the
//! baseline and fires nothing.
//!
//! Events are queued (acknowledged, deduplicated by key and version) before the new
//! listing is recorded, so a watcher dying between the two re-emits, and the
//! duplicate window absorbs it; a restart fires nothing twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use nimbus_common::{CodeStore, KvCache};
use nimbus_proto::trigger::{Lease, ObjectVersion, WatchState};
use nimbus_proto::{TriggerConfig, TriggerSource, WIRE_VERSION, decode, encode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::destinations::now_ms;
use crate::s3_events::S3Router;

pub struct Watchers {
    pub router: Arc<S3Router>,
    pub leases: kv::Store,
    pub state: kv::Store,
    /// This scheduler's identity in leases.
    pub holder: String,
    pub interval: Duration,
    pub region: String,
}

/// One watched store: its URL and the bucket name its records carry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    url: String,
    bucket: String,
}

impl Watchers {
    pub async fn run(
        self: Arc<Self>,
        triggers: Arc<KvCache<TriggerConfig>>,
        stop: CancellationToken,
    ) {
        let changes = triggers.subscribe();
        crate::tasks::reconcile(
            "bucket watcher",
            changes,
            stop,
            || {
                triggers
                    .list()
                    .into_iter()
                    .filter_map(|(_, _, t)| match &t.source {
                        TriggerSource::S3 {
                            bucket,
                            watch: Some(url),
                            ..
                        } => {
                            let target = Target {
                                url: url.clone(),
                                bucket: bucket.clone(),
                            };
                            Some((target.clone(), target))
                        }
                        _ => None,
                    })
                    .collect()
            },
            |target, token| {
                let me = self.clone();
                async move { me.watch(target, token).await }
            },
        )
        .await;
    }

    async fn watch(&self, target: Target, stop: CancellationToken) {
        let key = format!(
            "w-{}",
            &hex(&Sha256::digest(format!("{}|{}", target.url, target.bucket)))[..24]
        );
        let store = match CodeStore::from_url(&target.url) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(url = %target.url, error = %e, "cannot watch this store");
                return;
            }
        };
        let mut holding = false;
        tracing::info!(url = %target.url, bucket = %target.bucket, lease = %key, "bucket watcher started");
        loop {
            match self.lease(&key).await {
                Ok(true) => {
                    if !holding {
                        tracing::info!(url = %target.url, bucket = %target.bucket, "watching (lease taken)");
                        holding = true;
                    }
                    if let Err(e) = self.poll(&key, &target, &store).await {
                        tracing::warn!(url = %target.url, error = %e, "watch poll failed");
                    }
                }
                Ok(false) => {
                    if holding {
                        tracing::info!(url = %target.url, "lease lost; another scheduler watches");
                    }
                    holding = false;
                }
                Err(e) => tracing::warn!(url = %target.url, error = %e, "lease check failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = stop.cancelled() => break,
            }
        }
        if holding {
            // Hand the lease back so another scheduler takes over at once.
            if let Ok(Some(e)) = self.leases.entry(&key).await
                && decode::<Lease>(&e.value).is_ok_and(|l| l.holder == self.holder)
            {
                let _ = self
                    .leases
                    .delete_expect_revision(&key, Some(e.revision))
                    .await;
            }
        }
    }

    /// Takes or renews the lease; true while this scheduler holds it.
    async fn lease(&self, key: &str) -> Result<bool, String> {
        let ttl = (self.interval * 3).max(Duration::from_secs(3));
        let mine = encode(&Lease {
            v: WIRE_VERSION,
            holder: self.holder.clone(),
            expires_ms: now_ms() + ttl.as_millis() as u64,
        });
        match self.leases.entry(key).await.map_err(|e| e.to_string())? {
            Some(e) if e.operation == kv::Operation::Put => {
                let current: Lease = decode(&e.value).map_err(|e| e.to_string())?;
                if current.holder != self.holder && current.expires_ms > now_ms() {
                    return Ok(false);
                }
                Ok(self.leases.update(key, mine, e.revision).await.is_ok())
            }
            Some(e) => Ok(self.leases.update(key, mine, e.revision).await.is_ok()),
            None => Ok(self.leases.create(key, mine).await.is_ok()),
        }
    }

    async fn poll(&self, key: &str, target: &Target, store: &CodeStore) -> Result<(), String> {
        let prefix = store.path("");
        let prefix = (!prefix.as_ref().is_empty()).then_some(prefix);
        let mut listing = store.store.list(prefix.as_ref());
        let mut now: BTreeMap<String, ObjectVersion> = BTreeMap::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| e.to_string())?;
            let etag = meta.e_tag.clone().unwrap_or_else(|| {
                format!("{}-{}", meta.size, meta.last_modified.timestamp_millis())
            });
            now.insert(
                meta.location.to_string(),
                ObjectVersion {
                    etag,
                    size: meta.size,
                },
            );
        }
        let (revision, before) = match self.state.entry(key).await.map_err(|e| e.to_string())? {
            Some(e) if e.operation == kv::Operation::Put => (
                e.revision,
                Some(decode::<WatchState>(&e.value).map_err(|e| e.to_string())?),
            ),
            Some(e) => (e.revision, None),
            None => (0, None),
        };
        let mut events: Vec<(String, &'static str, Option<ObjectVersion>)> = Vec::new();
        if let Some(before) = &before {
            for (k, v) in &now {
                if before.objects.get(k).is_none_or(|old| old.etag != v.etag) {
                    events.push((k.clone(), "ObjectCreated:Put", Some(v.clone())));
                }
            }
            for (k, v) in &before.objects {
                if !now.contains_key(k) {
                    // A delete record carries no size or ETag; the version is kept for
                    // the deduplication id only.
                    events.push((k.clone(), "ObjectRemoved:Delete", Some(v.clone())));
                }
            }
        } else {
            tracing::info!(url = %target.url, objects = now.len(), "watch baseline recorded (no events)");
        }
        if before.as_ref().is_some_and(|b| b.objects == now) {
            return Ok(());
        }
        for (object_key, event, version) in &events {
            let rec = self.record(&target.bucket, object_key, event, version.as_ref());
            let dedupe = format!(
                "watch:{key}:{object_key}:{}:{event}",
                version.as_ref().map(|v| v.etag.as_str()).unwrap_or("gone")
            );
            self.router
                .route(std::slice::from_ref(&rec), &dedupe)
                .await?;
        }
        if !events.is_empty() {
            tracing::info!(url = %target.url, events = events.len(), "bucket changes emitted");
        }
        let state = encode(&WatchState {
            v: WIRE_VERSION,
            objects: now,
        });
        let written = if revision == 0 {
            self.state
                .create(key, state)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else {
            self.state
                .update(key, state, revision)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        written.map_err(|e| format!("recording the listing: {e}"))
    }

    fn record(
        &self,
        bucket: &str,
        key: &str,
        event: &str,
        version: Option<&ObjectVersion>,
    ) -> Value {
        let encoded: String = key
            .split('/')
            .map(|seg| url::form_urlencoded::byte_serialize(seg.as_bytes()).collect::<String>())
            .collect::<Vec<_>>()
            .join("/");
        let mut object = json!({ "key": encoded, "sequencer": format!("{:016X}", now_ms()) });
        if let Some(v) = version.filter(|_| event.starts_with("ObjectCreated")) {
            object["size"] = json!(v.size);
            object["eTag"] = json!(v.etag.trim_matches('"'));
        }
        json!({
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": self.region,
            "eventTime": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            "eventName": event,
            "userIdentity": { "principalId": "nimbus" },
            "requestParameters": { "sourceIPAddress": "127.0.0.1" },
            "responseElements": {},
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": "nimbus-watcher",
                "bucket": { "name": bucket, "ownerIdentity": { "principalId": "nimbus" }, "arn": format!("arn:aws:s3:::{bucket}") },
                "object": object,
            }
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.url, self.bucket)
    }
}
