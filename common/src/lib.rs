//! Boot plumbing shared by the Nimbus binaries, and nothing else.
//!
//! Rules for this crate, so it does not become a dumping ground:
//! - no domain types and no business logic (those live in `proto` or in a service);
//! - only what every binary needs to start and stop: telemetry, the shutdown signal,
//!   the NATS connection, the code-store URL, shared command-line groups.

pub mod code_store;
pub mod config;
pub mod kv_cache;
pub mod metrics_http;
pub mod nats;
pub mod shutdown;
pub mod telemetry;
pub mod topology;

pub use code_store::{CodeStore, CodeStoreError};
pub use kv_cache::KvCache;
pub use nats::{NatsArgs, connect, flush_before_exit};
pub use shutdown::shutdown_signal;

/// Runs a service: builds its multi-threaded runtime with [`worker_threads`]
/// threads and runs `service` as a task of it (see [`on_runtime_threads`]).
pub fn run_service<F>(name: &str, service: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = std::process::ExitCode> + Send + 'static,
{
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads())
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(on_runtime_threads(service)),
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Threads of a service's runtime: `TOKIO_WORKER_THREADS` when set, else half the
/// machine's cores, at least one — not tokio's one per core. A Nimbus machine runs
/// several services (nats-server, gateway, scheduler, worker) and the functions on
/// the same cores, and a service's tasks are small: with a thread per core, a task
/// woken on a busy thread wakes an idle sibling to steal it (a futex and two context
/// switches, ~10-20 us of CPU on the project machine) more often than the sibling
/// has work. Alternating pairs on the 2-core project machine, one thread against
/// two: CPU per warm call at concurrency 1 -15% in the gateway and the worker,
/// throughput at concurrency 32 unchanged (docs/PERFORMANCE.md).
pub fn worker_threads() -> usize {
    threads_for(
        std::env::var("TOKIO_WORKER_THREADS").ok().as_deref(),
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
    )
}

/// [`worker_threads`] for a `TOKIO_WORKER_THREADS` value and a number of cores.
fn threads_for(setting: Option<&str>, cores: usize) -> usize {
    setting
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or((cores / 2).max(1))
}

/// Runs a service's main future as a task of the runtime instead of on the thread
/// that called `block_on` (what `#[tokio::main]` does with it). A loop in that
/// future — the worker's dispatch loop — otherwise runs on a thread outside the
/// runtime's workers: every message it takes from a worker thread wakes that thread
/// and it wakes a worker thread again for what it spawns, two cross-thread wake-ups
/// per dispatch (~0.1 ms of a warm call's 0.6 ms on the project machine, by
/// syscall tracepoints). A panic in it ends the process as a failure.
pub async fn on_runtime_threads<F>(service: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = std::process::ExitCode> + Send + 'static,
{
    match tokio::spawn(service).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("the service's main task failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::threads_for;

    #[test]
    fn half_the_cores_unless_set() {
        assert_eq!(threads_for(None, 1), 1);
        assert_eq!(threads_for(None, 2), 1);
        assert_eq!(threads_for(None, 3), 1);
        assert_eq!(threads_for(None, 16), 8);
        assert_eq!(threads_for(Some("3"), 2), 3);
        assert_eq!(threads_for(Some(" 4 "), 2), 4);
        // Not a usable count: the default.
        assert_eq!(threads_for(Some("0"), 8), 4);
        assert_eq!(threads_for(Some("many"), 8), 4);
    }
}
