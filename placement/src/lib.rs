//! The live table of workers, fed by their heartbeats, and the order in which to
//! try them for an invocation. A worker not heard from for
//! [`nimbus_proto::worker::WORKER_EXPIRY_MS`] is out of placement.
//!
//! Both placers keep one: a scheduler (asynchronous invocations, and synchronous
//! ones a gateway hands it) and a gateway (the synchronous calls it sends to a
//! worker itself).
//!
//! Load figures are hints for ordering, never grounds for refusing: a heartbeat is up
//! to a second old and synchronous results bypass the scheduler, so only the worker
//! knows whether it has a free slot (it refuses otherwise). Between heartbeats the
//! scheduler counts what it dispatched and what was refused, so a burst spreads
//! instead of piling onto the worker that looked emptiest a second ago.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nimbus_proto::Heartbeat;

const EXPIRY: Duration = Duration::from_millis(nimbus_proto::worker::WORKER_EXPIRY_MS);

struct Entry {
    hb: Heartbeat,
    seen: Instant,
    /// Dispatched by this scheduler since the last heartbeat.
    extra_busy: u32,
    /// Refused work since the last heartbeat: tried last.
    refused: bool,
    /// Warm instances this scheduler used since the last heartbeat, per key.
    warm_taken: HashMap<(String, u64), u32>,
}

impl Entry {
    fn free(&self) -> u32 {
        self.hb
            .slots
            .saturating_sub(self.hb.busy)
            .saturating_sub(self.extra_busy)
    }

    fn idle_warm(&self, function: &str, revision: u64) -> u32 {
        let idle = self
            .hb
            .warm
            .iter()
            .find(|w| w.function == function && w.revision == revision)
            .map(|w| w.idle)
            .unwrap_or(0);
        let taken = self
            .warm_taken
            .get(&(function.to_string(), revision))
            .copied()
            .unwrap_or(0);
        idle.saturating_sub(taken)
    }
}

#[derive(Default)]
pub struct WorkerTable {
    workers: Mutex<HashMap<String, Entry>>,
}

impl WorkerTable {
    pub fn update(&self, hb: Heartbeat) {
        let mut w = self.workers.lock().expect("lock poisoned");
        if !w.contains_key(&hb.worker_id) {
            tracing::info!(worker_id = %hb.worker_id, slots = hb.slots, "worker joined");
        }
        w.insert(
            hb.worker_id.clone(),
            Entry {
                hb,
                seen: Instant::now(),
                extra_busy: 0,
                refused: false,
                warm_taken: HashMap::new(),
            },
        );
    }

    /// Workers to try, best first: those with an idle warm instance of this exact
    /// configuration, then the rest by estimated free slots (most first); workers
    /// that just refused come last. Draining and silent workers are left out.
    pub fn candidates(&self, function: &str, revision: u64) -> Vec<String> {
        let now = Instant::now();
        let mut w = self.workers.lock().expect("lock poisoned");
        w.retain(|id, e| {
            let alive = now.duration_since(e.seen) < EXPIRY;
            if !alive {
                tracing::warn!(worker_id = %id, "worker expired (no heartbeat)");
            }
            alive
        });
        let mut list: Vec<(bool, bool, u32, &String)> = w
            .iter()
            .filter(|(_, e)| !e.hb.draining)
            .map(|(id, e)| {
                let warm = e.idle_warm(function, revision) > 0 && e.free() > 0;
                (!e.refused, warm, e.free(), id)
            })
            .collect();
        list.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then(b.1.cmp(&a.1))
                .then(b.2.cmp(&a.2))
                .then(a.3.cmp(b.3))
        });
        list.into_iter().map(|(_, _, _, id)| id.clone()).collect()
    }

    /// Records a dispatch this scheduler made.
    pub fn dispatched(&self, worker: &str, function: &str, revision: u64) {
        let mut w = self.workers.lock().expect("lock poisoned");
        if let Some(e) = w.get_mut(worker) {
            e.extra_busy += 1;
            if e.idle_warm(function, revision) > 0 {
                *e.warm_taken
                    .entry((function.to_string(), revision))
                    .or_default() += 1;
            }
        }
    }

    /// Records that a worker refused work for lack of slots.
    pub fn refused(&self, worker: &str) {
        let mut w = self.workers.lock().expect("lock poisoned");
        if let Some(e) = w.get_mut(worker) {
            e.refused = true;
        }
    }

    pub fn is_alive(&self, worker: &str) -> bool {
        self.heard(worker).is_some()
    }

    /// `Some(draining)` while `worker` is heard from; `None` once it is not.
    pub fn heard(&self, worker: &str) -> Option<bool> {
        let w = self.workers.lock().expect("lock poisoned");
        w.get(worker)
            .filter(|e| e.seen.elapsed() < EXPIRY)
            .map(|e| e.hb.draining)
    }

    /// The last heartbeat of every worker heard from, with its age; the silent
    /// ones are dropped.
    pub fn snapshot(&self) -> Vec<(Duration, Heartbeat)> {
        let mut w = self.workers.lock().expect("lock poisoned");
        w.retain(|_, e| e.seen.elapsed() < EXPIRY);
        w.values()
            .map(|e| (e.seen.elapsed(), e.hb.clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.workers.lock().expect("lock poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_proto::{WIRE_VERSION, WarmInstances};

    fn hb(id: &str, slots: u32, busy: u32, warm: &[(&str, u64, u32)]) -> Heartbeat {
        Heartbeat {
            v: WIRE_VERSION,
            worker_id: id.into(),
            slots,
            busy,
            draining: false,
            warm: warm
                .iter()
                .map(|(f, r, i)| WarmInstances {
                    function: f.to_string(),
                    revision: *r,
                    idle: *i,
                })
                .collect(),
            sandbox: Default::default(),
        }
    }

    #[test]
    fn warm_first_then_least_loaded() {
        let t = WorkerTable::default();
        t.update(hb("a", 4, 0, &[]));
        t.update(hb("b", 4, 3, &[("f", 2, 1)]));
        t.update(hb("c", 4, 1, &[("f", 1, 1)]));
        assert_eq!(t.candidates("f", 2), vec!["b", "a", "c"]);
        // b's one warm instance is taken by the first dispatch; b is still a
        // candidate (only the worker knows whether it is full), but last.
        t.dispatched("b", "f", 2);
        assert_eq!(t.candidates("f", 2), vec!["a", "c", "b"]);
    }

    #[test]
    fn draining_workers_are_skipped_and_refusers_go_last() {
        let t = WorkerTable::default();
        let mut d = hb("b", 2, 0, &[]);
        d.draining = true;
        t.update(d);
        assert!(t.candidates("f", 1).is_empty());
        t.update(hb("a", 2, 2, &[]));
        t.update(hb("c", 1, 0, &[]));
        assert_eq!(t.candidates("f", 1), vec!["c", "a"]);
        t.refused("c");
        assert_eq!(t.candidates("f", 1), vec!["a", "c"]);
        // The next heartbeat clears the refusal.
        t.update(hb("c", 1, 0, &[]));
        assert_eq!(t.candidates("f", 1), vec!["c", "a"]);
    }

    #[test]
    fn silent_workers_expire() {
        let t = WorkerTable::default();
        t.update(hb("a", 2, 0, &[]));
        assert!(t.is_alive("a"));
        {
            let mut w = t.workers.lock().unwrap();
            w.get_mut("a").unwrap().seen = Instant::now() - EXPIRY - Duration::from_millis(1);
        }
        assert!(!t.is_alive("a"));
        assert_eq!(t.heard("a"), None);
        assert!(t.candidates("f", 1).is_empty());
        assert!(t.is_empty());
        let mut d = hb("b", 2, 0, &[]);
        d.draining = true;
        t.update(d);
        assert_eq!(t.heard("b"), Some(true));
        t.update(hb("c", 2, 0, &[]));
        assert_eq!(t.heard("c"), Some(false));
        let mut seen: Vec<_> = t.snapshot().into_iter().map(|(_, h)| h.worker_id).collect();
        seen.sort();
        assert_eq!(seen, ["b", "c"]);
    }
}
