use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// The Nimbus gateway: the AWS Lambda API and the native API over HTTP.
#[derive(Debug, Parser)]
#[command(name = "nimbus-gateway", version)]
struct Args {
    #[command(flatten)]
    nats: nimbus_common::NatsArgs,
    /// Address to listen on.
    #[arg(long, env = "NIMBUS_GATEWAY_ADDR", default_value = "127.0.0.1:8080")]
    addr: String,
    /// Where code packages live (`file:///path`, `s3://bucket/prefix`).
    /// Default: `file://<data-dir>/code-store`.
    #[arg(long, env = "NIMBUS_CODE_STORE")]
    code_store: Option<String>,
    #[arg(long, env = "NIMBUS_DATA_DIR", default_value = "./nimbus-data")]
    data_dir: PathBuf,
    /// Region reported in ARNs.
    #[arg(long, env = "NIMBUS_REGION", default_value = "us-east-1")]
    region: String,
    /// Subject on which S3-style object event notifications are routed; default
    /// `<prefix>.events.s3`.
    #[arg(long, env = "NIMBUS_S3_EVENTS_SUBJECT")]
    s3_events_subject: Option<String>,
    /// Write the bound address to this file once listening (for supervisors and
    /// tests that bind port 0).
    #[arg(long, env = "NIMBUS_ADDR_FILE")]
    addr_file: Option<PathBuf>,
    /// `sigv4`: the APIs need AWS SigV4 signatures from a configured key;
    /// `off`: anyone may call them (development only).
    #[arg(long, env = "NIMBUS_AUTH", default_value = "sigv4", value_parser = ["sigv4", "off"])]
    auth: String,
    /// Access keys as `ID:SECRET[,ID:SECRET…]`.
    #[arg(long, env = "NIMBUS_ACCESS_KEYS", hide_env_values = true)]
    access_keys: Option<String>,
    /// An AWS shared-credentials file of access keys (what `nimbus up` writes).
    #[arg(long, env = "NIMBUS_ACCESS_KEYS_FILE")]
    access_keys_file: Option<PathBuf>,
    /// Create NIMBUS_ACCESS_KEYS_FILE with a new key pair when it does not exist.
    #[arg(long, env = "NIMBUS_ACCESS_KEYS_CREATE", default_value_t = false)]
    access_keys_create: bool,
    /// Who places a synchronous call. `direct`: this gateway sends a warm call
    /// straight to a worker known to hold an idle instance of the function, and a
    /// cold start to the worker the heartbeats show best placed (a scheduler if it
    /// refuses); `warm`: warm calls only, a scheduler places cold starts;
    /// `scheduler`: a scheduler places every call (one more NATS hop and service on
    /// the path).
    #[arg(long, env = "NIMBUS_SYNC_DISPATCH", default_value = "direct", value_parser = ["direct", "warm", "scheduler"])]
    sync_dispatch: String,
    /// Check the configuration (every `NIMBUS_*` variable must be one this
    /// service reads) and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> std::process::ExitCode {
    nimbus_common::run_service("nimbus-gateway", service_main())
}

async fn service_main() -> std::process::ExitCode {
    nimbus_common::telemetry::init();
    match main_exec().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "gateway failed");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn main_exec() -> anyhow::Result<()> {
    let args = Args::parse();
    let cmd = <Args as clap::CommandFactory>::command();
    if args.check_config {
        nimbus_common::config::check_env(&cmd)?;
    } else {
        nimbus_common::config::warn_unknown_env(&cmd);
    }
    // Configuration errors before any connection is made.
    let access_keys = if args.auth == "off" {
        tracing::warn!("NIMBUS_AUTH=off: the Lambda and native APIs accept unsigned requests");
        None
    } else {
        let mut keys = nimbus_gateway::auth::AccessKeys::default();
        if let Some(list) = &args.access_keys {
            keys.extend(nimbus_gateway::auth::AccessKeys::parse_list(list)?);
        }
        // Checking must not write: a missing file is fine when it would be made.
        let made_at_start = args.check_config
            && args.access_keys_create
            && args.access_keys_file.as_ref().is_some_and(|f| !f.exists());
        match &args.access_keys_file {
            Some(_) if made_at_start => {}
            Some(file) if args.access_keys_create => {
                keys.extend(nimbus_gateway::auth::AccessKeys::load_or_create(file)?)
            }
            Some(file) => keys.extend(nimbus_gateway::auth::AccessKeys::load_file(file)?),
            None if args.access_keys_create => {
                anyhow::bail!("NIMBUS_ACCESS_KEYS_CREATE needs NIMBUS_ACCESS_KEYS_FILE")
            }
            None => {}
        }
        if keys.is_empty() && !made_at_start {
            anyhow::bail!(
                "no access keys: set NIMBUS_ACCESS_KEYS (ID:SECRET) or NIMBUS_ACCESS_KEYS_FILE, or NIMBUS_AUTH=off to accept unsigned requests"
            );
        }
        Some(keys)
    };
    let shutdown = nimbus_common::shutdown_signal()?;
    let data_dir = std::path::absolute(&args.data_dir).context("data dir")?;
    let store_url = args
        .code_store
        .clone()
        .unwrap_or_else(|| format!("file://{}", data_dir.join("code-store").display()));
    let subjects = args.nats.subjects()?;
    if args.check_config {
        nimbus_common::CodeStore::check_url(&store_url)?;
        println!("nimbus-gateway: configuration OK");
        return Ok(());
    }
    let code = nimbus_common::CodeStore::from_url(&store_url)?;
    let names = args.nats.names();
    let nats = nimbus_common::connect(&args.nats, "nimbus-gateway").await?;
    let listener = tokio::net::TcpListener::bind(&args.addr)
        .await
        .with_context(|| format!("binding {}", args.addr))?;
    if let Some(path) = &args.addr_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, listener.local_addr()?.to_string())?;
        std::fs::rename(&tmp, path)?;
    }
    let cfg = nimbus_gateway::GatewayConfig {
        access_keys,
        region: args.region,
        s3_events_subject: args.s3_events_subject,
        duplicate_window: args.nats.duplicate_window(),
        dispatch: match args.sync_dispatch.as_str() {
            "warm" => nimbus_gateway::direct::Dispatching::WarmOnly,
            "scheduler" => nimbus_gateway::direct::Dispatching::Scheduler,
            _ => nimbus_gateway::direct::Dispatching::Direct,
        },
    };
    nimbus_gateway::run(cfg, listener, nats, subjects, names, code, shutdown).await
}
