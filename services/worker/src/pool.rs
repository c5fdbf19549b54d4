//! The instance pool: idle warm instances by function and configuration revision.
//! An instance is in the pool only while idle; a running one belongs to its
//! invocation. Dropping an [`Instance`] kills its process group.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nimbus_proto::WarmInstances;

use crate::instance::{Instance, InstanceKey};

#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<InstanceKey, Vec<Instance>>>,
}

impl Pool {
    /// An idle live instance for `key`, most recently used first.
    pub fn take(&self, key: &InstanceKey) -> Option<Instance> {
        let mut idle = self.idle.lock().expect("lock poisoned");
        let list = idle.get_mut(key)?;
        while let Some(inst) = list.pop() {
            if inst.is_alive() {
                return Some(inst);
            }
        }
        None
    }

    pub fn put(&self, inst: Instance) {
        let mut idle = self.idle.lock().expect("lock poisoned");
        idle.entry(inst.key.clone()).or_default().push(inst);
    }

    /// Drops idle instances of `function` older than `revision`: they can never be
    /// used again once a newer configuration is being invoked.
    pub fn retire_older(&self, function: &str, revision: u64) {
        let retired: Vec<Instance> = {
            let mut idle = self.idle.lock().expect("lock poisoned");
            let stale: Vec<InstanceKey> = idle
                .keys()
                .filter(|k| k.function == function && k.revision < revision)
                .cloned()
                .collect();
            stale
                .into_iter()
                .flat_map(|k| idle.remove(&k).unwrap_or_default())
                .collect()
        };
        if !retired.is_empty() {
            tracing::info!(%function, count = retired.len(), "retired instances of an older configuration");
        }
    }

    /// Drops instances idle for longer than `keep_alive`, and dead ones.
    pub fn reap(&self, keep_alive: Duration) -> usize {
        let now = Instant::now();
        let reaped: Vec<Instance> = {
            let mut idle = self.idle.lock().expect("lock poisoned");
            let mut out = Vec::new();
            for list in idle.values_mut() {
                let (keep, old): (Vec<_>, Vec<_>) = list
                    .drain(..)
                    .partition(|i| i.is_alive() && now.duration_since(i.last_used) < keep_alive);
                *list = keep;
                out.extend(old);
            }
            idle.retain(|_, l| !l.is_empty());
            out
        };
        reaped.len()
    }

    pub fn warm(&self) -> Vec<WarmInstances> {
        let idle = self.idle.lock().expect("lock poisoned");
        idle.iter()
            .map(|(k, l)| WarmInstances {
                function: k.function.clone(),
                revision: k.revision,
                idle: l.len() as u32,
            })
            .collect()
    }

    pub fn clear(&self) {
        let all: Vec<Instance> = {
            let mut idle = self.idle.lock().expect("lock poisoned");
            idle.drain().flat_map(|(_, l)| l).collect()
        };
        drop(all);
    }
}
