use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

/// The Nimbus worker: runs function instances.
#[derive(Debug, Parser)]
#[command(name = "nimbus-worker", version)]
struct Args {
    #[command(flatten)]
    nats: nimbus_common::NatsArgs,
    /// Serve /metrics and /healthz on this address (off when unset).
    #[arg(long, env = "NIMBUS_METRICS_ADDR")]
    metrics_addr: Option<String>,
    /// This worker's id (letters, digits, `-`, `_`); random when unset.
    #[arg(long, env = "NIMBUS_WORKER_ID")]
    worker_id: Option<String>,
    /// Invocations this worker runs at once.
    #[arg(long, env = "NIMBUS_WORKER_SLOTS", default_value_t = 16)]
    slots: u32,
    /// Local state: code cache, runtime bootstraps, instance scratch.
    #[arg(long, env = "NIMBUS_DATA_DIR", default_value = "./nimbus-data")]
    data_dir: PathBuf,
    /// Where code packages live (`file:///path`, `s3://bucket/prefix`).
    /// Default: `file://<data-dir>/code-store`.
    #[arg(long, env = "NIMBUS_CODE_STORE")]
    code_store: Option<String>,
    /// Python interpreter for every `python3.x` runtime (a real binary, not a shim).
    #[arg(long, env = "NIMBUS_PYTHON")]
    python: Option<PathBuf>,
    /// Node.js interpreter for every `nodejs*` runtime (default: node on PATH).
    #[arg(long, env = "NIMBUS_NODE")]
    node: Option<PathBuf>,
    /// Seconds an idle instance stays warm.
    #[arg(long, env = "NIMBUS_KEEP_ALIVE_SECS", default_value_t = 600)]
    keep_alive_secs: u64,
    /// Seconds a stopping worker waits for in-flight invocations.
    #[arg(long, env = "NIMBUS_DRAIN_TIMEOUT_SECS", default_value_t = 60)]
    drain_timeout_secs: u64,
    /// Box functions (per-function uid, cgroup, own mounts) as far as the host
    /// allows; `off` runs them as the worker's user (development only).
    #[arg(long, env = "NIMBUS_SANDBOX", default_value = "on", value_parser = ["on", "off"])]
    sandbox: String,
    /// First uid (and gid) given to functions; each function gets its own.
    #[arg(long, env = "NIMBUS_SANDBOX_UID_BASE", default_value_t = 1_000_000)]
    sandbox_uid_base: u32,
    /// How many uids functions may use, from the base.
    #[arg(long, env = "NIMBUS_SANDBOX_UID_COUNT", default_value_t = 1_000_000)]
    sandbox_uid_count: u32,
    /// Size of each instance's private /tmp, in MB.
    #[arg(long, env = "NIMBUS_SANDBOX_TMP_MB", default_value_t = 512)]
    sandbox_tmp_mb: u32,
    /// Processes and threads one instance may have.
    #[arg(long, env = "NIMBUS_SANDBOX_PIDS_MAX", default_value_t = 1024)]
    sandbox_pids_max: u32,
    /// `shared`: functions use the worker's network (as on Lambda); `isolated`: each
    /// instance gets a network namespace with loopback only (the Runtime API is
    /// relayed in), except the functions in NIMBUS_SANDBOX_EGRESS.
    #[arg(long, env = "NIMBUS_SANDBOX_NETWORK", default_value = "shared", value_parser = ["shared", "isolated"])]
    sandbox_network: String,
    /// Functions that keep the worker's network under `isolated` (comma separated;
    /// `*`: all).
    #[arg(long, env = "NIMBUS_SANDBOX_EGRESS", value_delimiter = ',')]
    sandbox_egress: Vec<String>,
    /// Boxes kept made ahead of need, so a cold start skips making one (0: none).
    #[arg(long, env = "NIMBUS_SANDBOX_BOXES_AHEAD", default_value_t = 2)]
    sandbox_boxes_ahead: usize,
    /// Region reported to functions (`AWS_REGION`).
    #[arg(long, env = "NIMBUS_REGION", default_value = "us-east-1")]
    region: String,
    /// Check the configuration (every `NIMBUS_*` variable must be one this
    /// service reads) and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> std::process::ExitCode {
    // The box's init is this binary too; it must run before any thread exists.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(nimbus_worker::sandbox::init::INIT_ARG))
    {
        let args: Vec<String> = std::env::args().skip(2).collect();
        nimbus_worker::sandbox::init::run(&args);
    }
    nimbus_common::run_service("nimbus-worker", async_main())
}

async fn async_main() -> std::process::ExitCode {
    nimbus_common::telemetry::init();
    match main_exec().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "worker failed");
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
    let worker_id = match args.worker_id {
        Some(id) => id,
        None => format!("w-{}", uuid::Uuid::new_v4().simple()),
    };
    // The id names subjects and cgroups: refuse anything but a plain token.
    let subjects = args.nats.subjects()?;
    subjects
        .worker_invoke(&worker_id)
        .with_context(|| format!("bad worker id {worker_id:?}"))?;
    if args.check_config {
        if let Some(url) = &args.code_store {
            nimbus_common::CodeStore::check_url(url)?;
        }
        println!("nimbus-worker: configuration OK");
        return Ok(());
    }
    let shutdown = nimbus_common::shutdown_signal()?;
    let data_dir = std::path::absolute(&args.data_dir).context("data dir")?;
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let sandbox = nimbus_worker::sandbox::ProcessSandbox::detect(
        nimbus_worker::sandbox::SandboxConfig {
            uid_base: args.sandbox_uid_base,
            uid_count: args.sandbox_uid_count,
            tmp_mb: args.sandbox_tmp_mb,
            pids_max: args.sandbox_pids_max,
            enabled: args.sandbox == "on",
            isolate_network: args.sandbox_network == "isolated",
            egress: args
                .sandbox_egress
                .iter()
                .map(|f| f.trim().to_string())
                .filter(|f| !f.is_empty())
                .collect(),
            boxes_ahead: args.sandbox_boxes_ahead,
        },
        &worker_id,
        &data_dir,
    );
    let sandbox: std::sync::Arc<dyn nimbus_worker::sandbox::Sandbox> = std::sync::Arc::new(sandbox);
    if let Some(addr) = &args.metrics_addr {
        let health = serde_json::json!({ "status": "ok", "sandbox": sandbox.report() });
        nimbus_common::metrics_http::serve(addr, shutdown.clone(), health).await?;
    }
    let store_url = args
        .code_store
        .clone()
        .unwrap_or_else(|| format!("file://{}", data_dir.join("code-store").display()));
    let store = nimbus_common::CodeStore::from_url(&store_url)?;
    let python = match args.python {
        Some(p) => p,
        None => resolve_python().context("no python3 interpreter found; set NIMBUS_PYTHON")?,
    };
    let nats = nimbus_common::connect(&args.nats, &format!("nimbus-worker {worker_id}")).await?;
    let node = args.node.or_else(|| resolve_binary("node"));
    for runtime in std::iter::once(&python).chain(node.as_ref()) {
        if let Some(why) = nimbus_worker::sandbox::hidden_by_private_tmp(&sandbox.report(), runtime)
        {
            tracing::warn!("{why}");
        }
    }
    let cfg = nimbus_worker::WorkerConfig {
        worker_id,
        slots: args.slots,
        data_dir,
        python,
        node,
        keep_alive: Duration::from_secs(args.keep_alive_secs),
        region: args.region,
        drain_timeout: Duration::from_secs(args.drain_timeout_secs),
    };
    nimbus_worker::run(
        cfg,
        nats,
        subjects,
        args.nats.names(),
        store,
        sandbox,
        shutdown,
    )
    .await
}

/// `name` on PATH (or the usual places), resolved to the real binary.
fn resolve_binary(name: &str) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = vec![
        format!("/usr/bin/{name}").into(),
        format!("/usr/local/bin/{name}").into(),
    ];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join(name)));
    }
    candidates
        .into_iter()
        .filter(|p| p.is_file() && !p.to_string_lossy().contains("shims"))
        .find_map(|p| std::fs::canonicalize(p).ok())
}

/// A real interpreter binary: shims (pyenv) cost ~130 ms a start and may live where
/// other uids cannot read.
fn resolve_python() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> =
        vec!["/usr/bin/python3".into(), "/usr/local/bin/python3".into()];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("python3")));
    }
    candidates
        .into_iter()
        .filter(|p| p.is_file() && !p.to_string_lossy().contains("shims"))
        .find_map(|p| std::fs::canonicalize(p).ok())
}
