//! An in-memory mirror of a KV bucket, fed by a watch: services read it instead of
//! the bucket, so no request path reads storage. Values are wire messages decoded
//! with the `proto` codec; the highest revision seen is observable, so a caller can
//! wait until the mirror has caught up with a write it knows of.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use nimbus_proto::codec::Versioned;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub struct KvCache<T> {
    entries: RwLock<HashMap<String, (u64, Arc<T>)>>,
    seen: watch::Sender<u64>,
    pub kv: kv::Store,
}

impl<T: DeserializeOwned + Versioned + Send + Sync + 'static> KvCache<T> {
    /// Starts the watch; returns once the bucket's current contents are loaded (or
    /// after 10 s, with a warning, if the bucket does not answer).
    pub async fn start(kv: kv::Store, stop: CancellationToken) -> Arc<Self> {
        let (seen, _) = watch::channel(0);
        let cache = Arc::new(Self {
            entries: RwLock::new(HashMap::new()),
            seen,
            kv,
        });
        let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel();
        let c = cache.clone();
        tokio::spawn(async move { c.watch_loop(stop, loaded_tx).await });
        if tokio::time::timeout(Duration::from_secs(10), loaded_rx)
            .await
            .is_err()
        {
            tracing::warn!("KV mirror not loaded after 10 s; continuing");
        }
        cache
    }

    async fn watch_loop(
        self: Arc<Self>,
        stop: CancellationToken,
        loaded: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut loaded = Some(loaded);
        loop {
            let mut watch = match self.kv.watch_with_history(">").await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "KV watch failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.cancelled() => return,
                    }
                }
            };
            // An empty bucket delivers nothing: it is loaded at once.
            if let Ok(status) = self.kv.status().await
                && status.values() == 0
                && let Some(tx) = loaded.take()
            {
                let _ = tx.send(());
            }
            loop {
                let entry = tokio::select! {
                    e = watch.next() => e,
                    _ = stop.cancelled() => return,
                };
                let Some(entry) = entry else { break };
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(error = %e, "KV watch error; restarting it");
                        break;
                    }
                };
                self.apply(&entry);
                if entry.delta == 0
                    && let Some(tx) = loaded.take()
                {
                    let _ = tx.send(());
                }
            }
        }
    }

    /// Applies an entry (from the watch, or from a write this process just made).
    pub fn apply(&self, entry: &kv::Entry) {
        let mut map = self.entries.write().expect("lock poisoned");
        let current = map.get(&entry.key).map(|(r, _)| *r).unwrap_or(0);
        if entry.revision > current {
            match entry.operation {
                kv::Operation::Put => match nimbus_proto::decode::<T>(&entry.value) {
                    Ok(v) => {
                        map.insert(entry.key.clone(), (entry.revision, Arc::new(v)));
                    }
                    Err(e) => {
                        tracing::warn!(key = %entry.key, error = %e, "undecodable KV value ignored")
                    }
                },
                kv::Operation::Delete | kv::Operation::Purge => {
                    map.remove(&entry.key);
                }
            }
        }
        drop(map);
        self.seen.send_if_modified(|s| {
            if entry.revision > *s {
                *s = entry.revision;
                true
            } else {
                false
            }
        });
    }

    /// Records a value this process just wrote at `revision`.
    pub fn insert(&self, key: &str, revision: u64, value: T) {
        let mut map = self.entries.write().expect("lock poisoned");
        let current = map.get(key).map(|(r, _)| *r).unwrap_or(0);
        if revision > current {
            map.insert(key.to_string(), (revision, Arc::new(value)));
        }
    }

    /// Records a delete this process just made.
    pub fn remove(&self, key: &str) {
        self.entries.write().expect("lock poisoned").remove(key);
    }

    pub fn get(&self, key: &str) -> Option<(u64, Arc<T>)> {
        self.entries
            .read()
            .expect("lock poisoned")
            .get(key)
            .cloned()
    }

    /// Every entry, sorted by key.
    pub fn list(&self) -> Vec<(String, u64, Arc<T>)> {
        let mut all: Vec<_> = self
            .entries
            .read()
            .expect("lock poisoned")
            .iter()
            .map(|(k, (r, v))| (k.clone(), *r, v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Waits (at most `max`) until the watch has delivered `revision`.
    pub async fn caught_up(&self, revision: u64, max: Duration) -> bool {
        let mut rx = self.seen.subscribe();
        tokio::time::timeout(max, rx.wait_for(|s| *s >= revision))
            .await
            .is_ok()
    }

    /// Notified whenever the mirror applies a newer revision.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.seen.subscribe()
    }

    pub fn seen(&self) -> u64 {
        *self.seen.borrow()
    }
}
