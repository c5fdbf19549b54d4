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
