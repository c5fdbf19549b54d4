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
