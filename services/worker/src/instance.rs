//! One function instance: a sandboxed runtime process, its Runtime API server and its
//! captured output. An instance serves one invocation at a time; [`Instance::invoke`]
//! runs one to its end (response, error, crash or timeout) and tells the pool whether
//! the instance may be reused.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nimbus_proto::FunctionConfig;
use tokio::net::unix::pipe;
use tokio::sync::{oneshot, watch};

use crate::runtime_api::{Invocation, RuntimeApi, RuntimeResult};
use crate::sandbox::{
    BOX_RUNTIME_API_PORT, Sandbox, SandboxError, SandboxHandle, SandboxSpec, Sandboxed,
};

/// Output kept per invocation; beyond it the log says it was truncated.
const MAX_LOG_BYTES: usize = 1024 * 1024;

/// Identifies interchangeable instances: same function, same configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceKey {
    pub function: String,
    pub revision: u64,
}

pub const PYTHON_BOOTSTRAP_FILE: &str = "python_bootstrap.py";

/// Python started in boxes made ahead: the interpreter and the bootstrap's imports
/// ready before the function is known (the bootstrap's `--await-order`). A function
/// whose environment sets what Python reads only at start (`PYTHON*`, locale
/// variables) gets a box made the usual way.
pub fn python_preload(runtimes: &Runtimes, sandbox: &dyn Sandbox) -> crate::sandbox::Preload {
    let paths = sandbox.paths(Path::new("/"), &runtimes.dir, None);
    crate::sandbox::Preload {
        program: runtimes.python.clone(),
        args: vec![
            paths
                .runtime_dir
                .join(PYTHON_BOOTSTRAP_FILE)
                .display()
                .to_string(),
        ],
        preload_args: vec!["--await-order".into()],
        runtime_dir: runtimes.dir.clone(),
        env: [("LANG", "C.UTF-8"), ("PYTHONUNBUFFERED", "1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        startup_vars: vec!["PYTHON".into(), "LC_".into(), "LANG".into()],
    }
}
pub const NODE_BOOTSTRAP_FILE: &str = "node_bootstrap.mjs";

/// Where runtimes live on this worker.
#[derive(Debug, Clone)]
pub struct Runtimes {
    pub python: PathBuf,
    /// `None`: no Node.js on this worker; nodejs functions fail to start, named.
    pub node: Option<PathBuf>,
    /// Holds the bootstraps ([`PYTHON_BOOTSTRAP_FILE`], [`NODE_BOOTSTRAP_FILE`]).
    pub dir: PathBuf,
    pub region: String,
    /// Names the log stream (`nimbus/<worker>/<instance>`).
    pub worker_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("runtime {0:?} is not supported")]
    UnsupportedRuntime(String),
    #[error("the package has no executable `bootstrap` at its root")]
    NoBootstrap,
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("instance setup: {0}")]
    Io(#[from] std::io::Error),
}

/// How an invocation ended.
pub enum Outcome {
    Response(Bytes),
    /// A Lambda error document (function error, crash, timeout or init failure).
    FunctionError(Bytes),
}

pub struct Finished {
    pub outcome: Outcome,
    /// Output captured for this invocation, START to REPORT.
    pub log: String,
    /// The instance can serve the next invocation.
    pub reusable: bool,
    /// Init time, when this invocation was the instance's first.
    pub init_duration_us: Option<u64>,
}

/// Captured stdout+stderr of an instance (one pipe, so their order is kept).
struct LogCapture {
    rx: pipe::Receiver,
    buf: std::sync::Mutex<Vec<u8>>,
}

impl LogCapture {
    /// Reads whatever is in the pipe now, without waiting.
    fn drain(&self) -> bool {
        let mut buf = self.buf.lock().expect("lock poisoned");
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.rx.try_read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    if buf.len() < MAX_LOG_BYTES {
                        let take = n.min(MAX_LOG_BYTES - buf.len());
                        buf.extend_from_slice(&chunk[..take]);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
    }

    fn take(&self) -> Vec<u8> {
        self.drain();
        std::mem::take(&mut *self.buf.lock().expect("lock poisoned"))
    }
}

pub struct Instance {
    pub key: InstanceKey,
    pub id: u64,
    api: RuntimeApi,
    sandbox: Arc<SandboxHandle>,
    /// OOM kills counted when last read — only when the runtime died: any kill
    /// since the instance started then names the crash `Runtime.OutOfMemory`
    /// (the instance ends with it).
    oom_kills: u64,
    exited: watch::Receiver<bool>,
    logs: Arc<LogCapture>,
    started: Instant,
    /// Init duration, known after the first invocation started.
    init: Option<Duration>,
    pub last_used: Instant,
    memory_mb: u32,
    timeout: Duration,
    function_arn: String,
    _tmp: Option<tempfile::TempDir>,
}

impl Instance {
    /// Starts an instance of `config` whose code is unpacked in `code_dir`.
    pub async fn start(
        id: u64,
        key: InstanceKey,
        config: &FunctionConfig,
        code_dir: &Path,
        runtimes: &Runtimes,
        sandbox: &dyn Sandbox,
        scratch: &Path,
    ) -> Result<Self, InstanceError> {
        // A box with its own network reaches the Runtime API through a Unix socket
        // (short name: socket paths are limited to 108 bytes).
        let api_socket = sandbox
            .isolates_network(&config.name)
            .then(|| scratch.join(format!("{id}.api")));
        let api = RuntimeApi::start(api_socket.as_deref()).await?;
        // A scratch directory on the host only where the box has no /tmp of its own:
        // unused otherwise, and its mkdir alone took 60-185 µs of a cold start on the
        // project machine's disk (syscall tracepoints).
        let tmp = if sandbox.own_tmp() {
            None
        } else {
            Some(
                tempfile::Builder::new()
                    .prefix(&format!("{}-", config.name))
                    .tempdir_in(scratch)?,
            )
        };
        let tmp_dir = tmp.as_ref().map(tempfile::TempDir::path);
        let paths = sandbox.paths(code_dir, &runtimes.dir, tmp_dir);
        let (program, args) = if config.runtime.starts_with("python3.") {
            (
                runtimes.python.clone(),
                vec![
                    paths
                        .runtime_dir
                        .join(PYTHON_BOOTSTRAP_FILE)
                        .display()
                        .to_string(),
                ],
            )
        } else if config.runtime.starts_with("nodejs") {
            let node = runtimes.node.clone().ok_or_else(|| {
                InstanceError::UnsupportedRuntime(format!(
                    "{} (no node on this worker; set NIMBUS_NODE)",
                    config.runtime
                ))
            })?;
            (
                node,
                vec![
                    paths
                        .runtime_dir
                        .join(NODE_BOOTSTRAP_FILE)
                        .display()
                        .to_string(),
                ],
            )
        } else if config.runtime.starts_with("provided") {
            let bootstrap = code_dir.join("bootstrap");
            if !bootstrap.is_file() {
                return Err(InstanceError::NoBootstrap);
            }
            (paths.task_root.join("bootstrap"), vec![])
        } else {
            return Err(InstanceError::UnsupportedRuntime(config.runtime.clone()));
        };
        let function_arn = function_arn(&runtimes.region, &config.name);
        let mut env = config.environment.clone();
        let code = paths.task_root.display().to_string();
        let reserved = [
            (
                "AWS_LAMBDA_RUNTIME_API",
                api.addr.map_or_else(
                    || format!("127.0.0.1:{BOX_RUNTIME_API_PORT}"),
                    |a| a.to_string(),
                ),
            ),
            ("_HANDLER", config.handler.clone()),
            ("LAMBDA_TASK_ROOT", code.clone()),
            (
                "LAMBDA_RUNTIME_DIR",
                paths.runtime_dir.display().to_string(),
            ),
            ("AWS_LAMBDA_FUNCTION_NAME", config.name.clone()),
            (
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                config.memory_mb.to_string(),
            ),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
            ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".into()),
            (
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{}", config.name),
            ),
            (
                "AWS_LAMBDA_LOG_STREAM_NAME",
                format!("nimbus/{}/{id}", runtimes.worker_id),
            ),
            ("AWS_REGION", runtimes.region.clone()),
            ("AWS_DEFAULT_REGION", runtimes.region.clone()),
            (
                "AWS_EXECUTION_ENV",
                format!("AWS_Lambda_{}", config.runtime),
            ),
            ("TMPDIR", paths.tmp.display().to_string()),
            ("TZ", ":UTC".into()),
            ("PYTHONUNBUFFERED", "1".into()),
        ];
        for (k, v) in reserved {
            env.insert(k.into(), v);
        }
        env.entry("PATH".into())
            .or_insert_with(|| "/usr/local/bin:/usr/bin:/bin".into());
        env.entry("LANG".into()).or_insert_with(|| "C.UTF-8".into());
        let (tx, rx) = pipe::pipe()?;
        let write_fd = tx.into_blocking_fd()?;
        let spec = SandboxSpec {
            program,
            args,
            env,
            function: config.name.clone(),
            instance_id: id,
            code_dir: code_dir.to_path_buf(),
            runtime_dir: runtimes.dir.clone(),
            tmp_dir: tmp_dir.map(Path::to_path_buf),
            memory_mb: config.memory_mb,
            runtime_api_socket: api_socket,
        };
        let started = Instant::now();
        // On the runtime's thread, not `block_in_place`: a thread that leaves the
        // runtime's workers that way may later idle out of tokio's blocking pool,
        // and every process forked on it (here, when no box made ahead is taken)
        // would get its `PDEATHSIG` then (see `sandbox::BoxPool::maker`).
        let Sandboxed {
            mut child,
            handle: boxed,
        } = sandbox.spawn(&spec, write_fd)?;
        let pid = boxed.pid;
        let logs = Arc::new(LogCapture {
            rx,
            buf: std::sync::Mutex::new(Vec::new()),
        });
        // Pump output continuously so a chatty function never blocks on a full pipe.
        let pump = logs.clone();
        tokio::spawn(async move {
            loop {
                if pump.rx.readable().await.is_err() || !pump.drain() {
                    break;
                }
            }
        });
        let (exit_tx, exit_rx) = watch::channel(false);
        let reaper = boxed.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            tracing::debug!(pid, ?status, "instance process exited");
            // Whatever it started goes with it.
            reaper.kill();
            drop(reaper);
            let _ = exit_tx.send(true);
        });
        Ok(Self {
            key,
            id,
            api,
            sandbox: boxed,
            oom_kills: 0,
            exited: exit_rx,
            logs,
            started,
            init: None,
            last_used: Instant::now(),
            memory_mb: config.memory_mb,
            timeout: Duration::from_secs(u64::from(config.timeout_secs)),
            function_arn,
            _tmp: tmp,
        })
    }

    /// Runs one invocation to its end.
    pub async fn invoke(&mut self, request_id: &str, payload: Bytes) -> Finished {
        let cold = self.init.is_none();
        let begin = Instant::now();
        let deadline = begin + self.timeout;
        let deadline_unix_ms = unix_ms() + self.timeout.as_millis() as u64;
        let preamble = self.logs.take();
        let (tx, rx) = oneshot::channel();
        let inv = Invocation {
            request_id: request_id.to_string(),
            payload,
            deadline_unix_ms,
            function_arn: self.function_arn.clone(),
            result: tx,
        };
        let mut ended = Ended::Crash;
        if self.api.next_tx.send(inv).await.is_ok() {
            let mut init_error = self.api.init_error.clone();
            let mut exited = self.exited.clone();
            ended = tokio::select! {
                r = rx => match r {
                    Ok(RuntimeResult::Response(b)) => Ended::Response(b),
                    Ok(RuntimeResult::Error(b)) => Ended::Error(b),
                    Err(_) => Ended::Crash,
                },
                _ = tokio::time::sleep_until(deadline.into()) => Ended::Timeout,
                _ = init_error.wait_for(Option::is_some) => Ended::InitError,
                _ = exited.wait_for(|e| *e) => Ended::Crash,
            };
        }
        // Duration excludes the init phase, as Lambda's does.
        let ready = (*self.api.ready.borrow()).unwrap_or(begin);
        let elapsed = Instant::now().saturating_duration_since(ready.max(begin));
        if cold {
            self.init = Some(ready.saturating_duration_since(self.started));
        }
        let max_mem = self.sandbox.peak_memory_mb();
        // Read only when the runtime died (the one case it decides): a cgroup file
        // read is a measurable part of a warm invocation's CPU in the worker.
        if matches!(ended, Ended::Crash) {
            let oom_kills = self.sandbox.oom_kills();
            let out_of_memory = oom_kills > self.oom_kills;
            self.oom_kills = oom_kills;
            if out_of_memory {
                ended = Ended::OutOfMemory;
            }
        }
        let (outcome, reusable, status_line) = match ended {
            Ended::Response(b) => (Outcome::Response(b), true, None),
            Ended::Error(b) => (Outcome::FunctionError(b), true, None),
            Ended::Timeout => {
                self.sandbox.kill();
                let msg = format!(
                    "Task timed out after {:.2} seconds",
                    self.timeout.as_secs_f64()
                );
                let doc = serde_json::json!({
                    "errorType": "Sandbox.Timedout",
                    "errorMessage": format!("RequestId: {request_id} Error: {msg}"),
                });
                (
                    Outcome::FunctionError(json_bytes(&doc)),
                    false,
                    Some(format!("{} {request_id} {msg}\n", timestamp())),
                )
            }
            Ended::InitError => {
                self.sandbox.kill();
                let body = self.api.init_error.borrow().clone().unwrap_or_default();
                (Outcome::FunctionError(body), false, None)
            }
            Ended::Crash => {
                let doc = serde_json::json!({
                    "errorType": "Runtime.ExitError",
                    "errorMessage": format!("RequestId: {request_id} Error: Runtime exited without providing a reason"),
                });
                self.sandbox.kill();
                (
                    Outcome::FunctionError(json_bytes(&doc)),
                    false,
                    Some(format!(
                        "RequestId: {request_id} Error: Runtime exited without providing a reason\n"
                    )),
                )
            }
            Ended::OutOfMemory => {
                let msg = format!(
                    "RequestId: {request_id} Error: Runtime exited with error: signal: killed (out of memory: {} MB limit)",
                    self.memory_mb
                );
                let doc = serde_json::json!({
                    "errorType": "Runtime.OutOfMemory",
                    "errorMessage": msg,
                });
                self.sandbox.kill();
                (
                    Outcome::FunctionError(json_bytes(&doc)),
                    false,
                    Some(format!("{msg}\nRuntime.OutOfMemory\n")),
                )
            }
        };
        let output = self.logs.take();
        let mut log = String::with_capacity(output.len() + preamble.len() + 256);
        log.push_str(&String::from_utf8_lossy(&preamble));
        log.push_str(&format!("START RequestId: {request_id} Version: $LATEST\n"));
        log.push_str(&String::from_utf8_lossy(&output));
        if output.len() >= MAX_LOG_BYTES {
            log.push_str("\n[nimbus] output truncated\n");
        }
        if !log.ends_with('\n') {
            log.push('\n');
        }
        if let Some(line) = status_line {
            log.push_str(&line);
        }
        log.push_str(&format!("END RequestId: {request_id}\n"));
        let ms = elapsed.as_secs_f64() * 1000.0;
        log.push_str(&format!(
            "REPORT RequestId: {request_id}\tDuration: {ms:.2} ms\tBilled Duration: {} ms\tMemory Size: {} MB\tMax Memory Used: {max_mem} MB\t",
            (ms.ceil() as u64).max(1),
            self.memory_mb,
        ));
        if cold && let Some(init) = self.init {
            log.push_str(&format!(
                "Init Duration: {:.2} ms\t",
                init.as_secs_f64() * 1000.0
            ));
        }
        log.push('\n');
        self.last_used = Instant::now();
        Finished {
            outcome,
            log,
            reusable: reusable && !*self.exited.borrow(),
            init_duration_us: cold
                .then(|| self.init.map(|d| d.as_micros() as u64))
                .flatten(),
        }
    }

    pub fn kill(&self) {
        self.sandbox.kill();
    }

    pub fn is_alive(&self) -> bool {
        !*self.exited.borrow()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // The process exits, its waiter drops the last handle and the cgroup goes.
        self.sandbox.kill();
    }
}

enum Ended {
    Response(Bytes),
    Error(Bytes),
    Timeout,
    InitError,
    Crash,
    OutOfMemory,
}

fn json_bytes(v: &serde_json::Value) -> Bytes {
    serde_json::to_vec(v).unwrap_or_default().into()
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

fn timestamp() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

pub fn function_arn(region: &str, name: &str) -> String {
    format!("arn:aws:lambda:{region}:000000000000:function:{name}")
}
