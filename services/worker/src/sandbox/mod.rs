//! The isolation boundary. [`Sandbox`] is the trait the instance code talks to;
//! [`ProcessSandbox`] is the implementation: a child process boxed with whatever the
//! host allows, each protection detected once at start and reported (logs, heartbeat,
//! `/healthz`) when it is off:
//!
//! - **uid**: every function runs under its own uid/gid from a configured range, no
//!   supplementary groups, `no_new_privs` (needs root);
//! - **cgroup**: memory limited to `MemorySize` (peak and OOM kills read back), a pids
//!   limit, a CPU share in proportion to memory, and kill-everything on teardown
//!   (`cgroup.kill` on v2, freezer + SIGKILL on v1);
//! - **mount namespace**: a private size-limited tmpfs on `/tmp` (and `/dev/shm`) that
//!   vanishes with the instance, the code bind-mounted read-only at `/var/task` and
//!   the runtime bootstraps at `/var/runtime`, as on Lambda;
//! - always: a process group, a scrubbed environment, rlimits (open files, a generous
//!   address-space backstop, no core dumps) and death with the worker (`PDEATHSIG`).
//!
//! - **pid namespace** (with the mount namespace): the runtime runs as pid 2 under a
//!   tiny init ([`init`]) with its own `/proc`; it sees only its own processes, and
//!   all of them end when it does.
//!
//! - **network namespace** (`isolated`, with the pid namespace): loopback only; the
//!   init relays the Runtime API in from a Unix socket. Off by default (`shared`:
//!   functions use the worker's network, as Lambda functions reach the internet;
//!   the bus is closed to them by NATS credentials), and per function by `egress`.

pub mod cgroup;
pub mod init;

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::mount::MsFlags;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Gid, Pid, Uid};

use self::cgroup::{Cgroups, InstanceCgroup, Limits};

/// Where the code and the runtime bootstraps appear inside a box with its own mounts.
pub const BOX_TASK_ROOT: &str = "/var/task";
pub const BOX_RUNTIME_DIR: &str = "/var/runtime";
/// The Runtime API's port on loopback inside a box with its own network (Lambda's).
pub const BOX_RUNTIME_API_PORT: u16 = 9001;

/// Settings of the box (worker flags).
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// First uid (and gid) handed to functions.
    pub uid_base: u32,
    /// How many uids the range holds.
    pub uid_count: u32,
    /// Size of each instance's `/tmp`.
    pub tmp_mb: u32,
    /// Processes and threads an instance may have (Lambda: 1,024).
    pub pids_max: u32,
    /// Off: run functions as the worker's own user, without cgroups or namespaces
    /// (for development only; reported as off).
    pub enabled: bool,
    /// Each instance in a network namespace of its own (loopback only; the Runtime
    /// API relayed by the box's init), except the functions in `egress`.
    pub isolate_network: bool,
    /// Functions (`*`: all) that keep the worker's network when it is isolated.
    pub egress: Vec<String>,
    /// Boxes kept made ahead of need (cgroup joined, namespaces entered, init
    /// waiting): a cold start takes one instead of paying for the cgroup move on
    /// its path. 0: every box is made at its cold start.
    pub boxes_ahead: usize,
}

/// What to start. Paths are host paths; [`Sandbox::paths`] says where they appear
/// inside the box.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// The program as seen inside the box.
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The whole environment: nothing of the worker's leaks in.
    pub env: BTreeMap<String, String>,
    pub function: String,
    pub instance_id: u64,
    /// Unpacked code (host path).
    pub code_dir: PathBuf,
    /// Runtime bootstraps (host path).
    pub runtime_dir: PathBuf,
    /// The instance's scratch directory (host path), its `/tmp` where the box has no
    /// `/tmp` of its own ([`Sandbox::own_tmp`]); `None` where it has.
    pub tmp_dir: Option<PathBuf>,
    pub memory_mb: u32,
    /// With a network namespace of its own ([`Sandbox::isolates_network`]): the
    /// worker's Runtime API socket, relayed to [`BOX_RUNTIME_API_PORT`] inside.
    pub runtime_api_socket: Option<PathBuf>,
}

/// A runtime started in boxes made ahead, before their function is known. It gets
/// one more argument, a seqpacket socket's descriptor, on which its order arrives
/// (see [`init::PRELOAD_ARG`]); it must take the order's uid, limits and
/// environment itself.
#[derive(Debug, Clone)]
pub struct Preload {
    /// The program and arguments (as inside the box) of the specs it serves.
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Arguments it gets after `args` when preloaded.
    pub preload_args: Vec<String>,
    /// The specs' `runtime_dir`, bound at creation.
    pub runtime_dir: PathBuf,
    /// Its environment until the order comes; a spec whose environment disagrees
    /// on any of these, or sets any other variable named in `startup_vars`
    /// (read once at the runtime's start), gets a box made the usual way.
    pub env: BTreeMap<String, String>,
    /// Prefixes of variables the runtime reads only at start.
    pub startup_vars: Vec<String>,
}

impl Preload {
    fn serves(&self, spec: &SandboxSpec) -> bool {
        spec.program == self.program
            && spec.args == self.args
            && spec.runtime_dir == self.runtime_dir
            && spec.runtime_api_socket.is_none()
            && self.env.iter().all(|(k, v)| spec.env.get(k) == Some(v))
            && spec.env.keys().all(|k| {
                self.env.contains_key(k) || !self.startup_vars.iter().any(|p| k.starts_with(p))
            })
    }
}

/// Paths as the function sees them.
#[derive(Debug, Clone)]
pub struct BoxPaths {
    pub task_root: PathBuf,
    pub runtime_dir: PathBuf,
    pub tmp: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the instance's box: {0}")]
    Setup(String),
}

/// A running sandboxed process.
pub struct Sandboxed {
    pub child: tokio::process::Child,
    pub handle: std::sync::Arc<SandboxHandle>,
}

/// What the instance keeps of its box: kill, memory figures. Dropping the last
/// handle kills everything the instance started and removes its cgroup.
pub struct SandboxHandle {
    /// The process the worker started: the runtime, or the box's outer init.
    pub pid: u32,
    /// The runtime is the init's grandchild (pid 2 of its namespace).
    pid_ns: bool,
    cgroup: Option<InstanceCgroup>,
}

impl SandboxHandle {
    /// Kills every process the instance started (its group; with a cgroup, also
    /// `setsid` daemons and double forks).
    pub fn kill(&self) {
        self.kill_group();
        if let Some(cg) = &self.cgroup {
            cg.kill_all();
        }
    }

    fn kill_group(&self) {
        if self.pid > 1 {
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        }
    }

    /// Peak memory in MB: the cgroup's (all processes together), else the main
    /// process's `VmHWM`.
    pub fn peak_memory_mb(&self) -> u64 {
        match &self.cgroup {
            Some(cg) => cg.peak_memory_mb(),
            None if self.pid_ns => first_child(self.pid)
                .and_then(first_child)
                .map_or(0, peak_rss_mb),
            None => peak_rss_mb(self.pid),
        }
    }

    /// OOM kills in the instance so far (0 without a memory cgroup).
    pub fn oom_kills(&self) -> u64 {
        self.cgroup.as_ref().map_or(0, InstanceCgroup::oom_kills)
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        // `destroy` kills what is in the cgroup.
        self.kill_group();
        if let Some(cg) = self.cgroup.take() {
            cg.destroy();
        }
    }
}

pub trait Sandbox: Send + Sync + 'static {
    /// Starts `spec` with stdout and stderr both written to `output`.
    fn spawn(&self, spec: &SandboxSpec, output: OwnedFd) -> Result<Sandboxed, SandboxError>;
    /// Where the code, the runtime and `/tmp` appear to the function (`tmp_dir`: the
    /// instance's scratch directory, when it has one).
    fn paths(&self, code_dir: &Path, runtime_dir: &Path, tmp_dir: Option<&Path>) -> BoxPaths;
    /// Whether the box mounts a `/tmp` of its own (then the instance needs no
    /// scratch directory on the host).
    fn own_tmp(&self) -> bool {
        false
    }
    /// Each protection: `on …` or `off: why`.
    fn report(&self) -> BTreeMap<String, String>;
    /// Removes what the box set up on the host (at exit, once instances are gone).
    fn cleanup(&self) {}

    /// Whether `function`'s instances get a network namespace of their own (then
    /// the spec must carry `runtime_api_socket`).
    fn isolates_network(&self, _function: &str) -> bool {
        false
    }

    /// Starts making boxes ahead of need, where the box supports it (from within
    /// the async runtime); again after each instance start, which may have taken one.
    fn prepare_boxes(&self) {}

    /// Also keep boxes with `preload`'s runtime already started in them (from
    /// before [`Sandbox::prepare_boxes`]).
    fn preload(&self, _preload: Preload) {}
}

/// Per-function uids: a function keeps its uid for the worker's life; two functions
/// never share one on this worker (collisions probe to the next free uid).
#[derive(Debug)]
struct UidTable {
    base: u32,
    count: u32,
    by_function: HashMap<String, u32>,
    taken: HashMap<u32, String>,
}

impl UidTable {
    fn uid_for(&mut self, function: &str) -> Option<u32> {
        if let Some(u) = self.by_function.get(function) {
            return Some(*u);
        }
        // The same function maps to the same uid on every worker of a host (FNV-1a).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in function.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let count = u64::from(self.count.max(1));
        for i in 0..count.min(self.taken.len() as u64 + 1) {
            let uid = self.base + ((h + i) % count) as u32;
            if let std::collections::hash_map::Entry::Vacant(e) = self.taken.entry(uid) {
                e.insert(function.to_string());
                self.by_function.insert(function.to_string(), uid);
                return Some(uid);
            }
        }
        None
    }
}

/// The process box.
pub struct ProcessSandbox {
    cfg: SandboxConfig,
    uids: Option<Mutex<UidTable>>,
    cgroups: Option<Arc<Cgroups>>,
    mount_ns: bool,
    /// Each instance in its own pid namespace under [`init`] (needs `mount_ns`).
    pid_ns: bool,
    /// How to start the box's init.
    init: InitProgram,
    /// Network namespaces are possible and asked for (needs `pid_ns`).
    net_ns: bool,
    /// Boxes made ahead (with uids, cgroups and both namespaces, and
    /// `boxes_ahead` > 0).
    pool: Option<Arc<BoxPool>>,
    report: BTreeMap<String, String>,
}

impl ProcessSandbox {
    /// Detects what this host allows and sets it up; logs every protection that is off.
    pub fn detect(cfg: SandboxConfig, worker_id: &str, data_dir: &Path) -> Self {
        let mut report = BTreeMap::new();
        let root = Uid::effective().is_root();
        let off = |why: &str| format!("off: {why}");
        let (uid_ok, cgroups, mount_ns) = if !cfg.enabled {
            let why = "disabled by NIMBUS_SANDBOX=off";
            (Err(off(why)), Err(off(why)), Err(off(why)))
        } else if !root {
            let why = format!(
                "the worker is not root (uid {}); functions run as the worker's user",
                Uid::effective()
            );
            (Err(off(&why)), Err(off(&why)), Err(off(&why)))
        } else {
            let cgroups = Cgroups::detect(worker_id)
                .map(Arc::new)
                .map_err(|e| off(&e));
            let mount_ns = probe_mount_namespace(cfg.tmp_mb).map_err(|e| off(&e));
            // Without our own mounts, the code must be reachable by other uids where
            // it lies; with them, the data dir can be closed to everyone.
            let uid_ok = if mount_ns.is_ok() {
                std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| off(&format!("cannot close {}: {e}", data_dir.display())))
            } else {
                let _ = std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o711));
                searchable_by_others(data_dir).map_err(|e| off(&e))
            };
            (uid_ok, cgroups, mount_ns)
        };
        let init = InitProgram::find();
        let pid_ns = match &mount_ns {
            Ok(()) => probe_pid_namespace(cfg.tmp_mb, &init).map_err(|e| off(&e)),
            Err(_) => Err(off("needs the mount namespace (for its own /proc)")),
        };
        let net_ns = if !cfg.isolate_network {
            Err(off(
                "functions use the worker's network (NIMBUS_SANDBOX_NETWORK=shared)",
            ))
        } else if pid_ns.is_err() {
            Err(off(
                "NIMBUS_SANDBOX_NETWORK=isolated needs the pid namespace (its init relays the Runtime API)",
            ))
        } else {
            probe_network_namespace().map_err(|e| off(&e))
        };
        report.insert(
            "uid".to_string(),
            match &uid_ok {
                Ok(()) => format!(
                    "on: one uid per function from {} ({} uids)",
                    cfg.uid_base, cfg.uid_count
                ),
                Err(e) => e.clone(),
            },
        );
        report.insert(
            "cgroup".to_string(),
            match &cgroups {
                Ok(cg) => format!(
                    "on: {}: memory = MemorySize, pids.max {}, CPU share by memory, kill on teardown",
                    cg.describe(),
                    cfg.pids_max
                ),
                Err(e) => e.clone(),
            },
        );
        report.insert(
            "mount_namespace".to_string(),
            match &mount_ns {
                Ok(()) => format!(
                    "on: private {} MB /tmp, code read-only at {BOX_TASK_ROOT}",
                    cfg.tmp_mb
                ),
                Err(e) => e.clone(),
            },
        );
        report.insert(
            "pid_namespace".to_string(),
            match &pid_ns {
                Ok(()) => format!(
                    "on: an instance sees only its own processes; they all end with it (init: {}; {} boxes made ahead)",
                    init.program.display(),
                    if uid_ok.is_ok() && cgroups.is_ok() {
                        cfg.boxes_ahead
                    } else {
                        0
                    },
                ),
                Err(e) => e.clone(),
            },
        );
        report.insert(
            "network_namespace".to_string(),
            match &net_ns {
                Ok(()) if cfg.egress.is_empty() => {
                    "on: loopback only; the Runtime API relayed in".to_string()
                }
                Ok(()) => format!(
                    "on: loopback only; the Runtime API relayed in; the worker's network for {}",
                    cfg.egress.join(",")
                ),
                Err(e) => e.clone(),
            },
        );
        for (name, state) in &report {
            let by_design = name == "network_namespace" && !cfg.isolate_network;
            if state.starts_with("off") && !by_design {
                tracing::warn!(protection = %name, %state, "sandbox protection is off");
            } else {
                tracing::info!(protection = %name, %state, "sandbox");
            }
        }
        Self {
            uids: uid_ok.as_ref().ok().map(|()| {
                Mutex::new(UidTable {
                    base: cfg.uid_base,
                    count: cfg.uid_count,
                    by_function: HashMap::new(),
                    taken: HashMap::new(),
                })
            }),
            pool: match (&cgroups, &uid_ok, &pid_ns) {
                (Ok(cg), Ok(()), Ok(())) if cfg.boxes_ahead > 0 => Some(Arc::new(BoxPool {
                    cgroups: cg.clone(),
                    init: init.clone(),
                    pids_max: cfg.pids_max,
                    target: cfg.boxes_ahead,
                    ready: Mutex::new(Vec::new()),
                    preload: std::sync::OnceLock::new(),
                    making: [AtomicUsize::new(0), AtomicUsize::new(0)],
                    closed: AtomicBool::new(false),
                    next: AtomicU64::new(1),
                    failures: AtomicU64::new(0),
                    maker: std::sync::OnceLock::new(),
                    preload_deaths: AtomicU64::new(0),
                    preload_used: AtomicBool::new(false),
                })),
                _ => None,
            },
            cgroups: cgroups.ok(),
            mount_ns: mount_ns.is_ok(),
            pid_ns: pid_ns.is_ok(),
            init,
            net_ns: net_ns.is_ok(),
            cfg,
            report,
        }
    }
}

/// Mount points inside the box, prepared before fork (nothing is allocated between
/// fork and exec).
pub(crate) struct MountPlan {
    tmp_data: CString,
    shm: bool,
    code: CString,
    /// `None`: bound already (a box with its runtime started ahead).
    runtime: Option<CString>,
}

impl MountPlan {
    pub(crate) fn new(tmp_mb: u32, code: CString, runtime: Option<CString>) -> Self {
        Self {
            tmp_data: CString::new(format!("size={tmp_mb}m,mode=1777")).expect("no NUL"),
            shm: Path::new("/dev/shm").is_dir(),
            code,
            runtime,
        }
    }
}

impl Sandbox for ProcessSandbox {
    fn paths(&self, code_dir: &Path, runtime_dir: &Path, tmp_dir: Option<&Path>) -> BoxPaths {
        if self.mount_ns {
            BoxPaths {
                task_root: BOX_TASK_ROOT.into(),
                runtime_dir: BOX_RUNTIME_DIR.into(),
                tmp: "/tmp".into(),
            }
        } else {
            BoxPaths {
                task_root: code_dir.to_path_buf(),
                runtime_dir: runtime_dir.to_path_buf(),
                tmp: tmp_dir.map_or_else(|| PathBuf::from("/tmp"), Path::to_path_buf),
            }
        }
    }

    fn own_tmp(&self) -> bool {
        self.mount_ns
    }

    fn report(&self) -> BTreeMap<String, String> {
        self.report.clone()
    }

    fn isolates_network(&self, function: &str) -> bool {
        self.net_ns && !self.cfg.egress.iter().any(|f| f == "*" || f == function)
    }

    fn prepare_boxes(&self) {
        if let Some(pool) = &self.pool {
            pool.refill();
        }
    }

    fn preload(&self, preload: Preload) {
        if let Some(pool) = &self.pool {
            let _ = pool.preload.set(preload);
        }
    }

    fn cleanup(&self) {
        if let Some(pool) = &self.pool {
            pool.close();
        }
        if let Some(cg) = &self.cgroups {
            cg.remove();
        }
    }

    fn spawn(&self, spec: &SandboxSpec, output: OwnedFd) -> Result<Sandboxed, SandboxError> {
        let err = |source| SandboxError::Spawn {
            program: spec.program.display().to_string(),
            source,
        };
        let uid = match &self.uids {
            Some(t) => Some(
                t.lock()
                    .expect("lock poisoned")
                    .uid_for(&spec.function)
                    .ok_or_else(|| SandboxError::Setup("the function uid range is full".into()))?,
            ),
            None => None,
        };
        if let Some(uid) = uid
            && let Some(tmp_dir) = &spec.tmp_dir
        {
            // The fallback /tmp (no mount namespace) belongs to the function alone.
            nix::unistd::chown(tmp_dir, Some(Uid::from_raw(uid)), Some(Gid::from_raw(uid)))
                .map_err(|e| SandboxError::Setup(format!("chown scratch: {e}")))?;
            std::fs::set_permissions(tmp_dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| SandboxError::Setup(format!("chmod scratch: {e}")))?;
        }
        if let Some(pool) = &self.pool
            && spec.runtime_api_socket.is_none()
        {
            // Not refilled here: making a box takes CPU this start needs. The
            // worker calls `prepare_boxes` once the start's first reply is out (or
            // after a bound, if that takes long).
            if let Some(ready) = pool.take(spec) {
                match ready.start(spec, uid, &output, &self.cfg) {
                    Ok(boxed) => return Ok(boxed),
                    Err(e) => tracing::warn!(
                        function = %spec.function,
                        error = %e,
                        "a box made ahead failed; making one now"
                    ),
                }
            }
        }
        let cgroup = match &self.cgroups {
            Some(cg) => Some(
                cg.create(
                    &format!("i{}", spec.instance_id),
                    Limits {
                        memory_mb: spec.memory_mb,
                        pids_max: self.cfg.pids_max,
                    },
                )
                .map_err(|e| SandboxError::Setup(format!("cgroup: {e}")))?,
            ),
            None => None,
        };
        let join = match &cgroup {
            Some(cg) => cg
                .join_files()
                .map_err(|e| SandboxError::Setup(format!("cgroup: {e}")))?,
            None => Vec::new(),
        };
        let join_fds: Vec<i32> = join.iter().map(AsRawFd::as_raw_fd).collect();
        let plan = if self.mount_ns {
            Some(MountPlan::new(
                self.cfg.tmp_mb,
                cstring(&spec.code_dir)?,
                Some(cstring(&spec.runtime_dir)?),
            ))
        } else {
            None
        };
        let pids_max = u64::from(self.cfg.pids_max);
        let nproc_backstop = uid.is_some() && cgroup.is_none();

        let stderr = output.try_clone().map_err(err)?;
        let pid_ns = self.pid_ns;
        // The Runtime API socket's directory, open for the init to reach through
        // /proc/self/fd (its path may lie under /tmp, which the box hides).
        let relay_dir = match &spec.runtime_api_socket {
            Some(sock) if pid_ns && self.net_ns => {
                use std::os::unix::fs::OpenOptionsExt;
                let dir = sock.parent().unwrap_or(Path::new("/"));
                let name = sock
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| SandboxError::Setup(format!("bad socket {}", sock.display())))?;
                let fd = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(nix::libc::O_PATH | nix::libc::O_DIRECTORY)
                    .open(dir)
                    .map_err(|e| SandboxError::Setup(format!("{}: {e}", dir.display())))?;
                Some((fd, name.to_string()))
            }
            Some(_) => {
                return Err(SandboxError::Setup(
                    "a separate network needs the pid and network namespaces".into(),
                ));
            }
            None => None,
        };
        let relay_fd = relay_dir.as_ref().map(|(fd, _)| fd.as_raw_fd());
        let mut cmd = if pid_ns {
            // The box's init (this binary) starts the runtime as pid 2 of the
            // instance's pid namespace, under the function's uid.
            let mut cmd = tokio::process::Command::new(&self.init.program);
            cmd.args(&self.init.args)
                .arg(uid.map_or("-".to_string(), |u| u.to_string()))
                .arg(match &relay_dir {
                    Some((fd, name)) => init::relay_arg(BOX_RUNTIME_API_PORT, fd.as_raw_fd(), name),
                    None => "-".to_string(),
                })
                .arg(&spec.program)
                .args(&spec.args);
            cmd
        } else {
            let mut cmd = tokio::process::Command::new(&spec.program);
            cmd.args(&spec.args);
            cmd
        };
        // The init drops to the uid itself (it needs root to mount /proc).
        let uid_here = if pid_ns { None } else { uid };
        cmd.env_clear()
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::from(output))
            .stderr(Stdio::from(stderr))
            .process_group(0)
            .kill_on_drop(true);
        if plan.is_none() {
            cmd.current_dir(&spec.code_dir);
        }
        let as_limit = as_limit(spec.memory_mb);
        // SAFETY: `pre_exec` runs in the forked child before exec. Everything it uses
        // was prepared before the fork; it makes system calls only (write, unshare,
        // mount, chdir, set*id, prctl, setrlimit) and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                use nix::sys::resource::{Resource, setrlimit};
                for fd in &join_fds {
                    nix::unistd::write(BorrowedFd::borrow_raw(*fd), b"0")?;
                }
                if let Some(p) = &plan {
                    enter_mounts(p)?;
                }
                if pid_ns {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)?;
                }
                if let Some(fd) = relay_fd {
                    // Inherited by the init (it sets close-on-exec again itself).
                    if nix::libc::fcntl(fd, nix::libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
                }
                setrlimit(Resource::RLIMIT_NOFILE, 1024, 1024)?;
                setrlimit(Resource::RLIMIT_AS, as_limit, as_limit)?;
                setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
                // Counted against the function's uid, whoever switches to it.
                if nproc_backstop {
                    setrlimit(Resource::RLIMIT_NPROC, pids_max, pids_max)?;
                }
                if let Some(uid) = uid_here {
                    become_uid(uid)?;
                }
                // After the uid change: changing credentials clears it.
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(err)?;
        drop(join);
        drop(relay_dir);
        let pid = child.id().unwrap_or_default();
        Ok(Sandboxed {
            child,
            handle: std::sync::Arc::new(SandboxHandle {
                pid,
                pid_ns,
                cgroup,
            }),
        })
    }
}

/// Backstop against runaway address space; generous because V8 and multi-threaded
/// runtimes reserve far more than they use. The memory limit proper is the cgroup's.
fn as_limit(memory_mb: u32) -> u64 {
    (u64::from(memory_mb) * 1024 * 1024)
        .saturating_mul(16)
        .max(8 << 30)
}

/// Preloaded boxes dying before use, none used yet, after which only plain boxes
/// are made (a runtime that cannot start ahead would otherwise fail every cold
/// start it was given).
const PRELOAD_DEATHS: u64 = 3;

/// The largest `MemorySize` (Lambda's): a box made ahead has it until its
/// function's is known.
const MAX_MEMORY_MB: u32 = 10_240;

/// Boxes made ahead of need. Making one moves a process into a new cgroup, which
/// costs an RCU grace period (~10 ms here) whatever the process; made ahead, a cold
/// start skips it, and the namespaces and the init's exec too.
struct BoxPool {
    cgroups: Arc<Cgroups>,
    init: InitProgram,
    pids_max: u32,
    /// Boxes kept ready of each kind.
    target: usize,
    ready: Mutex<Vec<ReadyBox>>,
    preload: std::sync::OnceLock<Preload>,
    /// Boxes being made: plain, preloaded.
    making: [AtomicUsize; 2],
    closed: AtomicBool,
    next: AtomicU64,
    failures: AtomicU64,
    /// Orders for the maker thread: the kind of box to make.
    maker: std::sync::OnceLock<std::sync::mpsc::Sender<bool>>,
    /// Preloaded boxes found dead before use, and whether one was ever used.
    preload_deaths: AtomicU64,
    preload_used: AtomicBool,
}

/// How long a cold start waits for a preloaded box's runtime to be ready (a Python
/// box takes ~20 ms to start; the box is the oldest one ready).
const RUNTIME_READY_WAIT: Duration = Duration::from_millis(250);

/// A box whose init waits for its [`init::Order`].
struct ReadyBox {
    preloaded: bool,
    /// Its runtime said it waits for its order ([`init::RUNTIME_READY`]); a plain
    /// box's runtime starts with the order.
    runtime_ready: bool,
    child: tokio::process::Child,
    handle: Arc<SandboxHandle>,
    control: OwnedFd,
}

impl BoxPool {
    /// A ready box for `spec`: one with its runtime started if there is one for
    /// it, else a plain one. Boxes that died waiting are dropped; preloading stops
    /// (plain boxes serve everyone) after [`PRELOAD_DEATHS`] preloaded boxes died
    /// waiting, none having been used.
    fn take(&self, spec: &SandboxSpec) -> Option<ReadyBox> {
        let wants_preloaded =
            self.preload_works() && self.preload.get().is_some_and(|p| p.serves(spec));
        let mut ready = self.ready.lock().expect("lock poisoned");
        // A box that died waiting (its runtime could not start ahead, killed by
        // hand, the OOM killer) is reaped and dropped; `refill` replaces it.
        ready.retain_mut(|b| match b.child.try_wait() {
            Ok(None) => true,
            _ => {
                if b.preloaded {
                    self.count_preload_death();
                }
                false
            }
        });
        let kinds: &[bool] = if wants_preloaded {
            &[true, false]
        } else {
            &[false]
        };
        for &preloaded in kinds {
            // The oldest: a box just made may still be starting its runtime (a
            // Python box needs ~20 ms before it can take its order).
            let Some(i) = ready.iter().position(|b| b.preloaded == preloaded) else {
                continue;
            };
            if preloaded {
                // Handed a function only once its runtime waits for it: a runtime
                // that cannot start ahead may still be alive here, about to die
                // with the function's first call. One not ready in time is dropped
                // and counts as a death.
                if !ready[i].runtime_ready(RUNTIME_READY_WAIT) {
                    let dead = ready.remove(i);
                    drop(ready);
                    self.count_preload_death();
                    drop(dead);
                    return self.take(spec);
                }
                self.preload_used.store(true, Ordering::SeqCst);
            }
            return Some(ready.remove(i));
        }
        None
    }

    fn count_preload_death(&self) {
        if self.preload_deaths.fetch_add(1, Ordering::SeqCst) + 1 == PRELOAD_DEATHS {
            tracing::warn!(
                "boxes with the runtime started ahead die before use (the runtime exits before its order); making plain boxes only"
            );
        }
    }

    fn preload_works(&self) -> bool {
        self.preload_used.load(Ordering::SeqCst)
            || self.preload_deaths.load(Ordering::SeqCst) < PRELOAD_DEATHS
    }

    /// Has boxes made until `target` of each kind are ready or being made.
    fn refill(self: &Arc<Self>) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let Some(maker) = self.maker() else {
            return;
        };
        let kinds: &[bool] = if self.preload.get().is_some() && self.preload_works() {
            &[false, true]
        } else {
            &[false]
        };
        for &preloaded in kinds {
            let have = self
                .ready
                .lock()
                .expect("lock poisoned")
                .iter()
                .filter(|b| b.preloaded == preloaded)
                .count();
            let counter = &self.making[usize::from(preloaded)];
            let making = counter.load(Ordering::SeqCst);
            for _ in (have + making)..self.target {
                counter.fetch_add(1, Ordering::SeqCst);
                if maker.send(preloaded).is_err() {
                    counter.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
            }
        }
    }

    /// The threads that make the boxes, started on first use; they live as long as
    /// the pool. Not the runtime's blocking threads: a box's `PDEATHSIG` fires when
    /// the *thread* that forked it ends, and the runtime retires a blocking thread
    /// after 10 s idle — which killed every box made ahead, and every instance
    /// started in one, 10 s after it was made. Two, so that one box's cgroup move
    /// (a wait, not work) does not hold up the next.
    fn maker(self: &Arc<Self>) -> Option<&std::sync::mpsc::Sender<bool>> {
        if let Some(tx) = self.maker.get() {
            return Some(tx);
        }
        // `tokio::process` wants the runtime's context to spawn children in.
        let rt = tokio::runtime::Handle::try_current().ok()?;
        Some(self.maker.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<bool>();
            let rx = Arc::new(Mutex::new(rx));
            for i in 0..2 {
                let (rt, rx, pool) = (rt.clone(), rx.clone(), Arc::downgrade(self));
                let started = std::thread::Builder::new()
                    .name(format!("box-maker-{i}"))
                    .spawn(move || {
                        let _rt = rt.enter();
                        loop {
                            let next = rx.lock().expect("lock poisoned").recv();
                            let (Ok(preloaded), Some(pool)) = (next, pool.upgrade()) else {
                                break;
                            };
                            pool.make_one(preloaded);
                        }
                    });
                if let Err(e) = started {
                    tracing::warn!(error = %e, "cannot start a box maker thread");
                }
            }
            tx
        }))
    }

    fn make_one(&self, preloaded: bool) {
        let made = self.make(preloaded);
        self.making[usize::from(preloaded)].fetch_sub(1, Ordering::SeqCst);
        match made {
            Ok(b) if !self.closed.load(Ordering::SeqCst) => {
                self.ready.lock().expect("lock poisoned").push(b);
            }
            Ok(_) => {}
            Err(e) => {
                if self.failures.fetch_add(1, Ordering::SeqCst) == 0 {
                    tracing::warn!(error = %e, preloaded, "cannot make a box ahead; boxes are made at cold start");
                }
            }
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.ready.lock().expect("lock poisoned").clear();
    }

    /// A cgroup with the largest limits, the init in it, in a private mount
    /// namespace and about to be pid 1's parent, waiting for its order.
    fn make(&self, preloaded: bool) -> Result<ReadyBox, SandboxError> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        let setup =
            |what: &str, e: &dyn std::fmt::Display| SandboxError::Setup(format!("{what}: {e}"));
        let limits = Limits {
            memory_mb: MAX_MEMORY_MB,
            pids_max: self.pids_max,
        };
        // A name still held (a cgroup that could not be removed) is skipped.
        let mut tries = 0;
        let cgroup = loop {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            match self.cgroups.create(&format!("b{n}"), limits) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 8 => tries += 1,
                made => break made.map_err(|e| setup("cgroup", &e))?,
            }
        };
        let join = cgroup.join_files().map_err(|e| setup("cgroup", &e))?;
        let join_fds: Vec<i32> = join.iter().map(AsRawFd::as_raw_fd).collect();
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| setup("socketpair", &e))?;
        let theirs_fd = theirs.as_raw_fd();
        let mut cmd = tokio::process::Command::new(&self.init.program);
        cmd.args(&self.init.args)
            .arg(init::AWAIT_ARG)
            .arg(theirs_fd.to_string())
            .env_clear();
        if preloaded {
            let p = self
                .preload
                .get()
                .ok_or_else(|| SandboxError::Setup("nothing to preload".into()))?;
            cmd.arg(init::PRELOAD_ARG)
                .arg(&p.runtime_dir)
                .arg(&p.program)
                .args(&p.args)
                .args(&p.preload_args)
                .envs(&p.env);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: as in `spawn`: system calls only, on what was prepared before.
        unsafe {
            cmd.pre_exec(move || {
                use nix::sys::resource::{Resource, setrlimit};
                for fd in &join_fds {
                    nix::unistd::write(BorrowedFd::borrow_raw(*fd), b"0")?;
                }
                private_mounts()?;
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)?;
                if nix::libc::fcntl(theirs_fd, nix::libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                setrlimit(Resource::RLIMIT_NOFILE, 1024, 1024)?;
                setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| setup("starting the init", &e))?;
        drop(join);
        drop(theirs);
        Ok(ReadyBox {
            preloaded,
            runtime_ready: !preloaded,
            handle: Arc::new(SandboxHandle {
                pid: child.id().unwrap_or_default(),
                pid_ns: true,
                cgroup: Some(cgroup),
            }),
            child,
            control: ours,
        })
    }
}

impl ReadyBox {
    /// Whether its runtime is ready for an order, waiting up to `wait` for it to say
    /// so (not at all if it said so before).
    fn runtime_ready(&mut self, wait: Duration) -> bool {
        use nix::libc;
        if self.runtime_ready {
            return true;
        }
        let mut pfd = libc::pollfd {
            fd: self.control.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let until = std::time::Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            // SAFETY: poll on our own descriptor.
            let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) };
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            if n <= 0 {
                return false; // not in time
            }
            // Anything else, or the end of the stream: the box is dying.
            self.runtime_ready = init::take_ready(self.control.as_raw_fd());
            return self.runtime_ready;
        }
    }

    /// Gives the box its function: limits, then the order with the output pipe.
    fn start(
        self,
        spec: &SandboxSpec,
        uid: Option<u32>,
        output: &OwnedFd,
        cfg: &SandboxConfig,
    ) -> Result<Sandboxed, SandboxError> {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        let setup =
            |what: &str, e: &dyn std::fmt::Display| SandboxError::Setup(format!("{what}: {e}"));
        if let Some(cg) = &self.handle.cgroup {
            cg.set_limits(Limits {
                memory_mb: spec.memory_mb,
                pids_max: cfg.pids_max,
            })
            .map_err(|e| setup("cgroup limits", &e))?;
        }
        let text = |p: &Path| {
            p.to_str()
                .map(str::to_string)
                .ok_or_else(|| SandboxError::Setup(format!("{} is not UTF-8", p.display())))
        };
        let order = init::Order {
            uid,
            as_limit: as_limit(spec.memory_mb),
            tmp_mb: cfg.tmp_mb,
            code: text(&spec.code_dir)?,
            runtime: text(&spec.runtime_dir)?,
            program: text(&spec.program)?,
            args: spec.args.clone(),
            env: spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        }
        .encode()
        .map_err(SandboxError::Setup)?;
        let fds = [output.as_raw_fd()];
        sendmsg::<()>(
            self.control.as_raw_fd(),
            &[std::io::IoSlice::new(&order)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(|e| setup("handing the box its function", &e))?;
        Ok(Sandboxed {
            child: self.child,
            handle: self.handle,
        })
    }
}

/// In the child: a mount namespace of its own with a private `/tmp`, and the code and
/// runtime bind-mounted read-only.
fn enter_mounts(p: &MountPlan) -> std::io::Result<()> {
    private_mounts()?;
    mount_box(p)
}

/// `src` (a host path) at `dst`, read-only.
pub(crate) fn bind_read_only(src: &std::ffi::CStr, dst: &std::ffi::CStr) -> std::io::Result<()> {
    use nix::mount::mount;
    const NONE: Option<&'static std::ffi::CStr> = None;
    mount(
        Some(src),
        dst,
        NONE,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        NONE,
    )?;
    mount(
        NONE,
        dst,
        NONE,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV,
        NONE,
    )?;
    Ok(())
}

/// A mount namespace of our own, nothing in it propagating back to the host.
fn private_mounts() -> std::io::Result<()> {
    use nix::mount::mount;
    const NONE: Option<&'static std::ffi::CStr> = None;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    mount(
        NONE,
        c"/",
        NONE,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        NONE,
    )?;
    Ok(())
}

/// In a private mount namespace: the box's mounts (code, runtime, `/tmp`,
/// `/dev/shm`), then `/var/task` as the working directory.
pub(crate) fn mount_box(p: &MountPlan) -> std::io::Result<()> {
    use nix::mount::mount;
    // Binds first: the sources may lie under /tmp, which the tmpfs then hides.
    bind_read_only(&p.code, c"/var/task")?;
    if let Some(runtime) = &p.runtime {
        bind_read_only(runtime, c"/var/runtime")?;
    }
    let tmpfs_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(
        Some(c"tmpfs"),
        c"/tmp",
        Some(c"tmpfs"),
        tmpfs_flags,
        Some(p.tmp_data.as_c_str()),
    )?;
    if p.shm {
        mount(
            Some(c"tmpfs"),
            c"/dev/shm",
            Some(c"tmpfs"),
            tmpfs_flags,
            Some(c"size=64m,mode=1777"),
        )?;
    }
    nix::unistd::chdir(c"/var/task")?;
    Ok(())
}

fn cstring(p: &Path) -> Result<CString, SandboxError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| SandboxError::Setup(format!("{} has a NUL byte", p.display())))
}

/// How the box's init is started: `nimbus-box-init` beside the worker (a small
/// binary: a cold start execs it), else the worker itself with [`init::INIT_ARG`]
/// (through the magic link, which works wherever the binary lies).
#[derive(Debug, Clone)]
struct InitProgram {
    program: PathBuf,
    args: Vec<String>,
}

impl InitProgram {
    fn find() -> Self {
        let beside = std::env::current_exe()
            .ok()
            .map(|exe| exe.with_file_name("nimbus-box-init"))
            // Under /tmp it would be hidden by the box's own /tmp.
            .filter(|p| p.is_file() && !p.starts_with("/tmp"));
        match beside {
            Some(program) => Self {
                program,
                args: vec![],
            },
            None => Self {
                program: "/proc/self/exe".into(),
                args: vec![init::INIT_ARG.to_string()],
            },
        }
    }
}

/// Runs `program` (this binary through the magic link, whose own path may lie under
/// /tmp, which a probe's tmpfs hides) with `args`, `setup` between fork and exec;
/// why it failed, if it did.
fn probe_child(
    program: &Path,
    args: &[&str],
    setup: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
) -> Result<(), String> {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    use std::os::unix::process::CommandExt;
    // SAFETY: the callers' setups make system calls only, on data prepared before
    // the fork, as in `spawn`.
    unsafe {
        cmd.pre_exec(setup);
    }
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "a probe child failed ({}) {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Can this host give instances their own mounts? Runs a real child through the same
/// steps (with throwaway mounts) once at start.
fn probe_mount_namespace(tmp_mb: u32) -> Result<(), String> {
    for dir in [BOX_TASK_ROOT, BOX_RUNTIME_DIR] {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {dir}: {e}"))?;
    }
    let plan = MountPlan::new(tmp_mb, c"/".into(), Some(c"/".into()));
    probe_child(Path::new("/proc/self/exe"), &["--version"], move || {
        enter_mounts(&plan)
    })
    .map_err(|e| format!("cannot unshare mounts or mount tmpfs: {e}"))
}

/// Can instances get a pid namespace of their own? Runs the real init (with
/// throwaway mounts) around `nimbus-worker --version` once at start.
fn probe_pid_namespace(tmp_mb: u32, init: &InitProgram) -> Result<(), String> {
    let plan = MountPlan::new(tmp_mb, c"/".into(), Some(c"/".into()));
    let mut args: Vec<String> = init.args.clone();
    args.extend(["-", "-", "/proc/self/exe", "--version"].map(String::from));
    probe_child(
        &init.program,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        move || {
            enter_mounts(&plan)?;
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)?;
            Ok(())
        },
    )
    .map_err(|e| format!("cannot give an instance its own pid namespace: {e}"))
}

/// Can instances get a network namespace of their own?
fn probe_network_namespace() -> Result<(), String> {
    probe_child(Path::new("/proc/self/exe"), &["--version"], || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(())
    })
    .map_err(|e| format!("cannot unshare the network namespace: {e}"))
}

/// The function's identity: its own uid and gid, no supplementary groups,
/// `no_new_privs`. System calls only (safe between fork and exec).
pub(crate) fn become_uid(uid: u32) -> nix::Result<()> {
    let (u, g) = (Uid::from_raw(uid), Gid::from_raw(uid));
    nix::unistd::setgroups(&[])?;
    nix::unistd::setresgid(g, g, g)?;
    nix::unistd::setresuid(u, u, u)?;
    nix::sys::prctl::set_no_new_privs()
}

/// A runtime binary under `/tmp` cannot start in a box with its own `/tmp`: why, if
/// `program` is one.
pub fn hidden_by_private_tmp(report: &BTreeMap<String, String>, program: &Path) -> Option<String> {
    let boxed = report
        .get("mount_namespace")
        .is_some_and(|s| s.starts_with("on"));
    (boxed && program.starts_with("/tmp")).then(|| {
        format!(
            "{} lies under /tmp, which each instance's private /tmp hides: install it elsewhere",
            program.display()
        )
    })
}

/// Every directory from `/` to `dir` must be searchable by other users for a
/// function's uid to reach its code.
fn searchable_by_others(dir: &Path) -> Result<(), String> {
    let mut p = PathBuf::new();
    for c in dir.components() {
        p.push(c);
        let mode = std::fs::metadata(&p)
            .map_err(|e| format!("{}: {e}", p.display()))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            return Err(format!(
                "{} is not searchable by other users (mode {:o}); functions could not reach their code",
                p.display(),
                mode & 0o777
            ));
        }
    }
    Ok(())
}

/// The oldest child of `pid`, in the worker's pid numbering.
fn first_child(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Peak resident memory of a process in MB (`VmHWM`), or 0 if it is gone.
pub fn peak_rss_mb(pid: u32) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb.div_ceil(1024))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtimes_under_tmp_are_named_only_when_tmp_is_private() {
        let on = BTreeMap::from([("mount_namespace".to_string(), "on: …".to_string())]);
        let off = BTreeMap::from([("mount_namespace".to_string(), "off: x".to_string())]);
        let node = Path::new("/tmp/x/.venv/bin/node");
        assert!(hidden_by_private_tmp(&on, node).is_some());
        assert!(hidden_by_private_tmp(&off, node).is_none());
        assert!(hidden_by_private_tmp(&on, Path::new("/usr/bin/node")).is_none());
    }

    #[test]
    fn functions_get_distinct_stable_uids() {
        let mut t = UidTable {
            base: 1000,
            count: 3,
            by_function: HashMap::new(),
            taken: HashMap::new(),
        };
        let a = t.uid_for("a").unwrap();
        let b = t.uid_for("b").unwrap();
        let c = t.uid_for("c").unwrap();
        assert_eq!(t.uid_for("a"), Some(a));
        let mut all = vec![a, b, c];
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 3, "{a} {b} {c}");
        assert!(all.iter().all(|u| (1000..1003).contains(u)));
        assert_eq!(t.uid_for("d"), None, "the range is full");
    }
}
