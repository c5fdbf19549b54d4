//! Keeping one task per configured thing running (a trigger, a schedule, a watched
//! store), following a KV mirror: a new item starts a task, a changed one restarts
//! it, a removed one cancels it.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Runs until `stop`. `wanted` is read again whenever `changes` fires; `start`
/// spawns the task of one item with its own cancellation token.
pub async fn reconcile<K, V, W, S, F>(
    what: &'static str,
    mut changes: watch::Receiver<u64>,
    stop: CancellationToken,
    wanted: W,
    start: S,
) where
    K: Eq + Hash + Clone + std::fmt::Display,
    V: PartialEq + Clone,
    W: Fn() -> HashMap<K, V>,
    S: Fn(V, CancellationToken) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let mut running: HashMap<K, (V, CancellationToken)> = HashMap::new();
    loop {
        let now = wanted();
        running.retain(|key, (value, token)| {
            let keep = now.get(key) == Some(value);
            if !keep {
                tracing::info!(%key, what, "stopped");
                token.cancel();
            }
            keep
        });
        for (key, value) in now {
            if running.contains_key(&key) {
                continue;
            }
            let token = stop.child_token();
            tokio::spawn(start(value.clone(), token.clone()));
            running.insert(key, (value, token));
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { break },
            _ = stop.cancelled() => break,
        }
    }
    for (_, (_, token)) in running {
        token.cancel();
    }
}
