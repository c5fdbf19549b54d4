use std::time::Duration;

use clap::Parser;

/// The Nimbus scheduler: places invocations on workers.
#[derive(Debug, Parser)]
#[command(name = "nimbus-scheduler", version)]
struct Args {
    #[command(flatten)]
    nats: nimbus_common::NatsArgs,
    /// Serve /metrics and /healthz on this address (off when unset).
    #[arg(long, env = "NIMBUS_METRICS_ADDR")]
    metrics_addr: Option<String>,
    /// Seconds a stopping scheduler waits for in-flight invocations.
    #[arg(long, env = "NIMBUS_DRAIN_TIMEOUT_SECS", default_value_t = 60)]
    drain_timeout_secs: u64,
    /// Milliseconds before the first retry of a failed async invocation (Lambda:
    /// one minute), doubled for each further retry.
    #[arg(long, env = "NIMBUS_RETRY_DELAY_MS", default_value_t = 60_000)]
    retry_delay_ms: u64,
    /// Milliseconds after which a due schedule instant counts as missed (then the
    /// schedule's misfire policy decides).
    #[arg(long, env = "NIMBUS_MISFIRE_GRACE_MS", default_value_t = 60_000)]
    misfire_grace_ms: u64,
    /// Subject on which S3-style object event notifications arrive (MinIO's NATS
    /// target); default `<prefix>.events.s3`.
    #[arg(long, env = "NIMBUS_S3_EVENTS_SUBJECT")]
    s3_events_subject: Option<String>,
    /// Milliseconds between listings of a watched bucket.
    #[arg(long, env = "NIMBUS_WATCH_INTERVAL_MS", default_value_t = 5_000)]
    watch_interval_ms: u64,
    /// Region reported in ARNs.
    #[arg(long, env = "NIMBUS_REGION", default_value = "us-east-1")]
    region: String,
    /// Check the configuration (every `NIMBUS_*` variable must be one this
    /// service reads) and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> std::process::ExitCode {
    nimbus_common::run_service("nimbus-scheduler", service_main())
}

async fn service_main() -> std::process::ExitCode {
    nimbus_common::telemetry::init();
    match main_exec().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "scheduler failed");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn main_exec() -> anyhow::Result<()> {
    let args = Args::parse();
    let cmd = <Args as clap::CommandFactory>::command();
    if args.check_config {
        nimbus_common::config::check_env(&cmd)?;
        args.nats.subjects()?;
        println!("nimbus-scheduler: configuration OK");
        return Ok(());
    }
    nimbus_common::config::warn_unknown_env(&cmd);
    let shutdown = nimbus_common::shutdown_signal()?;
    if let Some(addr) = &args.metrics_addr {
        nimbus_common::metrics_http::serve(
            addr,
            shutdown.clone(),
            serde_json::json!({ "status": "ok" }),
        )
        .await?;
    }
    let subjects = args.nats.subjects()?;
    let names = args.nats.names();
    let nats = nimbus_common::connect(&args.nats, "nimbus-scheduler").await?;
    let cfg = nimbus_scheduler::SchedulerConfig {
        drain_timeout: Duration::from_secs(args.drain_timeout_secs),
        retry_delay: Duration::from_millis(args.retry_delay_ms),
        region: args.region,
        misfire_grace: Duration::from_millis(args.misfire_grace_ms),
        s3_events_subject: args.s3_events_subject,
        watch_interval: Duration::from_millis(args.watch_interval_ms.max(100)),
        duplicate_window: args.nats.duplicate_window(),
    };
    nimbus_scheduler::run(cfg, nats, subjects, names, shutdown).await
}
