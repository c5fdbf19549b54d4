//! One telemetry init for every binary: stderr, `RUST_LOG` filter (default `info`),
//! JSON when `NIMBUS_LOG_FORMAT=json`.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,async_nats=warn,hyper=warn,reqwest=warn,object_store=warn")
    });
    let json = std::env::var("NIMBUS_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    // A second init (tests calling `run` twice) is harmless.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
