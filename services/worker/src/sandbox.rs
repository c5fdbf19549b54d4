//! The isolation boundary. [`Sandbox`] is the trait placement code talks to;
//! [`ProcessSandbox`] is the implementation for now: a child process in its own
//! process group with a scrubbed environment, its own temporary directory, resource
//! limits, and death when the worker dies (`PR_SET_PDEATHSIG`). Stronger boxes
//! (per-function uids, cgroups, namespaces) slot in behind the same trait.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// What to start.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The whole environment: nothing of the worker's leaks in.
    pub env: BTreeMap<String, String>,
    /// Working directory (the unpacked code).
    pub cwd: PathBuf,
    pub memory_mb: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// A running sandboxed process.
pub struct Sandboxed {
    pub child: tokio::process::Child,
    pub pid: u32,
}

/// Kills everything in an instance's process group.
pub fn kill_group(pid: u32) {
    if pid > 1 {
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

pub trait Sandbox: Send + Sync + 'static {
    /// Starts `spec` with stdout and stderr both written to `output`.
    fn spawn(&self, spec: &SandboxSpec, output: OwnedFd) -> Result<Sandboxed, SandboxError>;
}

/// Runs each instance as a plain child process.
#[derive(Debug, Default)]
pub struct ProcessSandbox;

impl Sandbox for ProcessSandbox {
    fn spawn(&self, spec: &SandboxSpec, output: OwnedFd) -> Result<Sandboxed, SandboxError> {
        let err = |source| SandboxError::Spawn {
            program: spec.program.display().to_string(),
            source,
        };
        let stderr = output.try_clone().map_err(err)?;
        let mut cmd = tokio::process::Command::new(&spec.program);
        cmd.args(&spec.args)
            .env_clear()
            .envs(&spec.env)
            .current_dir(&spec.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::from(output))
            .stderr(Stdio::from(stderr))
            .process_group(0)
            .kill_on_drop(true);
        // Backstop against runaway address space; generous because V8 and
        // multi-threaded runtimes reserve far more than they use.
        let as_limit = (u64::from(spec.memory_mb) * 1024 * 1024)
            .saturating_mul(16)
            .max(8 << 30);
        // SAFETY: `pre_exec` runs in the forked child before exec; prctl and setrlimit
        // are async-signal-safe system calls and we allocate nothing.
        unsafe {
            cmd.pre_exec(move || {
                use nix::sys::resource::{Resource, setrlimit};
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                setrlimit(Resource::RLIMIT_NOFILE, 1024, 1024)?;
                setrlimit(Resource::RLIMIT_AS, as_limit, as_limit)?;
                setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(err)?;
        let pid = child.id().unwrap_or_default();
        Ok(Sandboxed { child, pid })
    }
}

/// Peak resident memory of a process in MB (`VmHWM`), or 0 if it is gone.
pub fn peak_memory_mb(pid: u32) -> u64 {
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
