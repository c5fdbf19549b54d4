//! Control groups for instances: memory (limit, peak, OOM kills), pids, CPU share, and
//! killing everything an instance started. cgroup v2 (one unified hierarchy) and v1
//! (one hierarchy per controller) are detected at start.
//!
//! Layout: under the worker's own cgroup, `nimbus-<worker id>/i<instance id>` (v1: in
//! each of the memory, pids, freezer and cpu hierarchies). On v2 a cgroup with
//! processes cannot hand controllers to children, so the worker first moves itself
//! into a `supervisor` leaf beside its instances.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[derive(Debug, Clone)]
enum Mode {
    V2 {
        parent: PathBuf,
    },
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        freezer: Option<PathBuf>,
        cpu: Option<PathBuf>,
    },
}

/// The worker's cgroup parent for instances.
#[derive(Debug, Clone)]
pub struct Cgroups {
    mode: Mode,
}

/// Limits for one instance.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory_mb: u32,
    pub pids_max: u32,
}

impl Cgroups {
    /// Finds the hierarchies and creates this worker's parent; `Err` says why not.
    pub fn detect(worker_id: &str) -> Result<Self, String> {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let name = format!("nimbus-{worker_id}");
        // v1 when the memory controller has its own hierarchy (hybrid hosts keep an
        // empty cgroup2 mount beside it).
        if let Some(memory_root) = v1_mount(&mounts, "memory") {
            let at = |controller: &str| -> Option<PathBuf> {
                let root = v1_mount(&mounts, controller)?;
                let path = v1_own_path(&own, controller)?;
                Some(root.join(path.trim_start_matches('/')).join(&name))
            };
            let memory = at("memory").unwrap_or_else(|| memory_root.join(&name));
            let pids = at("pids").ok_or("cgroup v1 has no pids hierarchy")?;
            let freezer = at("freezer");
            let cpu = at("cpu");
            let cgroups = Self {
                mode: Mode::V1 {
                    memory,
                    pids,
                    freezer,
                    cpu,
                },
            };
            cgroups.end_leftovers();
            for dir in cgroups.parents() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            // Children must account to the parent for limits to nest.
            if let Mode::V1 { memory, .. } = &cgroups.mode {
                let _ = std::fs::write(memory.join("memory.use_hierarchy"), "1");
            }
            return Ok(cgroups);
        }
        let root = v2_mount(&mounts).ok_or("no cgroup filesystem is mounted")?;
        let own_path = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or("no cgroup v2 entry in /proc/self/cgroup")?;
        let own_dir = root.join(own_path.trim_start_matches('/'));
        let controllers = std::fs::read_to_string(own_dir.join("cgroup.controllers"))
            .map_err(|e| format!("cannot read {}: {e}", own_dir.display()))?;
        for c in ["memory", "pids"] {
            if !controllers.split_whitespace().any(|x| x == c) {
                return Err(format!(
                    "the {c} controller is not delegated to {}",
                    own_dir.display()
                ));
            }
        }
        // Leave the cgroup we are in so it may enable controllers for children.
        let supervisor = own_dir.join("nimbus-supervisor");
        std::fs::create_dir_all(&supervisor)
            .map_err(|e| format!("cannot create {}: {e}", supervisor.display()))?;
        let procs = std::fs::read_to_string(own_dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace() {
            let _ = std::fs::write(supervisor.join("cgroup.procs"), pid);
        }
        let wanted: Vec<&str> = ["memory", "pids", "cpu"]
            .into_iter()
            .filter(|c| controllers.split_whitespace().any(|x| x == *c))
            .collect();
        let enable = wanted
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ");
        std::fs::write(own_dir.join("cgroup.subtree_control"), &enable)
            .map_err(|e| format!("cannot enable {enable} in {}: {e}", own_dir.display()))?;
        let parent = own_dir.join(&name);
        let cgroups = Self {
            mode: Mode::V2 {
                parent: parent.clone(),
            },
        };
        cgroups.end_leftovers();
        std::fs::create_dir_all(&parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        std::fs::write(parent.join("cgroup.subtree_control"), &enable)
            .map_err(|e| format!("cannot enable {enable} in {}: {e}", parent.display()))?;
        Ok(cgroups)
    }

    /// Ends what an earlier worker of this id left in its cgroups, then removes
    /// them: its boxes and instances die with it (`PDEATHSIG`), except those it was
    /// tearing down when it died — frozen (v1), they wait for a thaw forever.
    fn end_leftovers(&self) {
        let parent = match &self.mode {
            Mode::V2 { parent } => parent,
            Mode::V1 { pids, .. } => pids,
        };
        let mut ended = 0;
        let entries = std::fs::read_dir(parent).into_iter().flatten();
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = e.file_name();
            match &self.mode {
                Mode::V2 { parent } => {
                    let _ = std::fs::write(parent.join(&name).join("cgroup.kill"), "1");
                }
                Mode::V1 { pids, freezer, .. } => {
                    let procs = std::fs::read_to_string(pids.join(&name).join("cgroup.procs"))
                        .unwrap_or_default();
                    for pid in procs.split_whitespace().filter_map(|p| p.parse().ok()) {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                        ended += 1;
                    }
                    if let Some(f) = freezer {
                        let _ = std::fs::write(f.join(&name).join("freezer.state"), "THAWED");
                    }
                }
            }
        }
        if ended > 0 {
            tracing::warn!(processes = ended, cgroup = %parent.display(), "ended processes an earlier worker of this id left behind");
        }
        // They leave their cgroups a moment after dying.
        self.remove_within(Duration::from_secs(2));
    }

    pub fn describe(&self) -> String {
        match &self.mode {
            Mode::V2 { parent } => format!("v2 at {}", parent.display()),
            Mode::V1 { freezer, cpu, .. } => format!(
                "v1 memory+pids{}{}",
                if freezer.is_some() { "+freezer" } else { "" },
                if cpu.is_some() { "+cpu" } else { "" }
            ),
        }
    }

    /// Creates the cgroup of instance `id` with `limits`.
    pub fn create(&self, name: &str, limits: Limits) -> std::io::Result<InstanceCgroup> {
        let cg = match &self.mode {
            Mode::V2 { parent } => {
                let dir = parent.join(name);
                mkdir_fresh(&dir)?;
                let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                InstanceCgroup {
                    v2: true,
                    memory: dir.clone(),
                    pids: dir.clone(),
                    freezer: None,
                    cpu: Some(dir.clone()),
                    dirs: vec![dir],
                    peak_file: OnceLock::new(),
                    events_file: OnceLock::new(),
                }
            }
            Mode::V1 {
                memory: m,
                pids: p,
                freezer: f,
                cpu: c,
            } => {
                let mem = m.join(name);
                let pids = p.join(name);
                mkdir_fresh(&mem)?;
                mkdir_fresh(&pids)?;
                let mut dirs = vec![mem.clone(), pids.clone()];
                let freezer = match f {
                    Some(f) => {
                        let d = f.join(name);
                        mkdir_fresh(&d)?;
                        dirs.push(d.clone());
                        Some(d)
                    }
                    None => None,
                };
                let cpu = match c {
                    Some(c) => {
                        let d = c.join(name);
                        mkdir_fresh(&d)?;
                        dirs.push(d.clone());
                        Some(d)
                    }
                    None => None,
                };
                InstanceCgroup {
                    v2: false,
                    memory: mem,
                    pids,
                    freezer,
                    cpu,
                    dirs,
                    peak_file: OnceLock::new(),
                    events_file: OnceLock::new(),
                }
            }
        };
        cg.set_limits(limits)?;
        Ok(cg)
    }
}

/// One instance's cgroup(s).
#[derive(Debug)]
pub struct InstanceCgroup {
    v2: bool,
    memory: PathBuf,
    pids: PathBuf,
    freezer: Option<PathBuf>,
    cpu: Option<PathBuf>,
    dirs: Vec<PathBuf>,
    /// The peak-memory and OOM-event files, opened once: read after every
    /// invocation, a path lookup and open each time showed in the warm path.
    peak_file: OnceLock<Option<File>>,
    events_file: OnceLock<Option<File>>,
}

impl InstanceCgroup {
    /// Sets the memory, pids and CPU limits (again, for a box made before its
    /// function was known: a few writes).
    pub fn set_limits(&self, limits: Limits) -> std::io::Result<()> {
        let memory = u64::from(limits.memory_mb) * 1024 * 1024;
        // CPU in proportion to memory, as Lambda gives one vCPU at 1,769 MB.
        let share = (u64::from(limits.memory_mb) * 1024 / 1769).max(2);
        if self.v2 {
            std::fs::write(self.memory.join("memory.max"), memory.to_string())?;
            std::fs::write(self.pids.join("pids.max"), limits.pids_max.to_string())?;
            let weight = (share * 100 / 1024).clamp(1, 10_000);
            let _ = std::fs::write(self.memory.join("cpu.weight"), weight.to_string());
            return Ok(());
        }
        // memory+swap may never be below memory: raise it first, lower it last.
        let memsw = self.memory.join("memory.memsw.limit_in_bytes");
        let _ = std::fs::write(&memsw, "-1");
        std::fs::write(
            self.memory.join("memory.limit_in_bytes"),
            memory.to_string(),
        )?;
        // No swapping past the limit where swap is accounted.
        let _ = std::fs::write(&memsw, memory.to_string());
        std::fs::write(self.pids.join("pids.max"), limits.pids_max.to_string())?;
        if let Some(cpu) = &self.cpu {
            let _ = std::fs::write(cpu.join("cpu.shares"), share.to_string());
        }
        Ok(())
    }

    /// The file of every hierarchy that moves a task, opened for the child to write
    /// `0` into (which moves the writer) between fork and exec.
    ///
    /// On v1 that is `tasks`, not `cgroup.procs`: moving a whole process takes the
    /// kernel's global threadgroup lock for writing, and its first taking after a
    /// quiet spell waits for an RCU grace period — 10–24 ms on the project machine,
    /// most of a box's making — while a single thread moving itself skips that lock
    /// (~40 µs). Between fork and exec the child has one thread, so moving it moves
    /// the process. v2 has no such file outside threaded cgroups.
    pub fn join_files(&self) -> std::io::Result<Vec<File>> {
        let file = if self.v2 { "cgroup.procs" } else { "tasks" };
        self.dirs
            .iter()
            .map(|d| OpenOptions::new().write(true).open(d.join(file)))
            .collect()
    }

    /// Peak memory of the instance's processes together, in MB.
    pub fn peak_memory_mb(&self) -> u64 {
        self.read_memory_file(&self.peak_file, "memory.peak", "memory.max_usage_in_bytes")
            .and_then(|s| s.trim().parse::<u64>().ok())
            .or_else(|| read_u64(&self.memory.join("memory.current")))
            .map(|b| b.div_ceil(1024 * 1024))
            .unwrap_or(0)
    }

    /// How many times the kernel's OOM killer ended a process of this instance.
    pub fn oom_kills(&self) -> u64 {
        self.read_memory_file(&self.events_file, "memory.events", "memory.oom_control")
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// The memory controller's file named `v2` or `v1` (by the hierarchy), opened
    /// once into `cell` and read again from its start.
    fn read_memory_file(
        &self,
        cell: &OnceLock<Option<File>>,
        v2: &str,
        v1: &str,
    ) -> Option<String> {
        cell.get_or_init(|| File::open(self.memory.join(if self.v2 { v2 } else { v1 })).ok())
            .as_ref()
            .and_then(read_at_start)
    }

    pub fn procs(&self) -> Vec<i32> {
        std::fs::read_to_string(self.pids.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Kills every process in the instance, daemons and double forks included.
    pub fn kill_all(&self) {
        if self.v2 && std::fs::write(self.pids.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        // Freeze first so nothing forks while we kill (v1 freezer), then kill what is
        // listed until nothing is.
        let frozen = self.freezer.as_ref().is_some_and(|f| {
            std::fs::write(f.join("freezer.state"), "FROZEN").is_ok() && {
                let until = Instant::now() + Duration::from_millis(200);
                loop {
                    let s = std::fs::read_to_string(f.join("freezer.state")).unwrap_or_default();
                    if s.trim() == "FROZEN" || Instant::now() > until {
                        break true;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        for _ in 0..50 {
            let procs = self.procs();
            if procs.is_empty() {
                break;
            }
            for pid in procs {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            if frozen {
                // Killed tasks die once thawed.
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if let Some(f) = &self.freezer {
            let _ = std::fs::write(f.join("freezer.state"), "THAWED");
        }
    }

    /// Kills everything and removes the cgroups (in a thread: processes take a moment
    /// to leave after SIGKILL).
    pub fn destroy(self) {
        self.kill_all();
        std::thread::spawn(move || {
            for attempt in 0..100 {
                let busy: Vec<&PathBuf> = self
                    .dirs
                    .iter()
                    .filter(|d| d.exists() && std::fs::remove_dir(d).is_err())
                    .collect();
                if busy.is_empty() {
                    return;
                }
                if attempt % 10 == 9 {
                    self.kill_all();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            tracing::warn!(cgroup = %self.pids.display(), "instance cgroup still busy; left behind");
        });
    }
}

impl Cgroups {
    /// Removes this worker's parent cgroups (at exit), waiting up to a second for
    /// what was just killed to leave them (the boxes closed at drain).
    pub fn remove(&self) {
        if !self.remove_within(Duration::from_secs(1)) {
            tracing::warn!("the worker's cgroups are still busy; left behind");
        }
    }

    /// Removes the parent cgroups and everything under them, retrying until `within`
    /// has passed; whether they are gone.
    fn remove_within(&self, within: Duration) -> bool {
        let until = Instant::now() + within;
        loop {
            let gone = self.parents().iter().all(|d| {
                remove_tree(d);
                !d.exists()
            });
            if gone || Instant::now() >= until {
                return gone;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// This worker's parent cgroup in every hierarchy it uses.
    fn parents(&self) -> Vec<&PathBuf> {
        match &self.mode {
            Mode::V2 { parent } => vec![parent],
            Mode::V1 {
                memory,
                pids,
                freezer,
                cpu,
            } => [Some(memory), Some(pids), freezer.as_ref(), cpu.as_ref()]
                .into_iter()
                .flatten()
                .collect(),
        }
    }
}

fn mkdir_fresh(dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        let _ = std::fs::remove_dir(dir);
    }
    std::fs::create_dir(dir)
}

/// Removes a cgroup directory and its (empty) children, deepest first.
fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// The whole of a cgroup file open as `f`, read again from its start.
fn read_at_start(f: &File) -> Option<String> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 512];
    let n = f.read_at(&mut buf, 0).ok()?;
    String::from_utf8(buf[..n].to_vec()).ok()
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Mount point of the v1 hierarchy carrying `controller`.
fn v1_mount(mountinfo: &str, controller: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut r = right.split_whitespace();
        if r.next()? != "cgroup" {
            return None;
        }
        let opts = r.nth(1)?;
        opts.split(',')
            .any(|o| o == controller)
            .then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap_or_default()))
    })
}

fn v2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap_or_default()))
    })
}

/// This process's path in the v1 hierarchy of `controller`.
fn v1_own_path(cgroup: &str, controller: &str) -> Option<String> {
    cgroup.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let _id = parts.next()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
        32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
        36 31 0:33 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
        40 31 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";

    #[test]
    fn finds_v1_and_v2_mounts() {
        assert_eq!(
            v1_mount(MOUNTINFO, "memory"),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            v1_mount(MOUNTINFO, "cpu"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu"))
        );
        assert_eq!(v1_mount(MOUNTINFO, "pids"), None);
        assert_eq!(
            v2_mount(MOUNTINFO),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_own_v1_path() {
        let cg = "9:name=systemd:/\n4:memory:/process_api/b54b\n2:cpu,cpuacct:/x\n0::/\n";
        assert_eq!(
            v1_own_path(cg, "memory").as_deref(),
            Some("/process_api/b54b")
        );
        assert_eq!(v1_own_path(cg, "cpuacct").as_deref(), Some("/x"));
        assert_eq!(v1_own_path(cg, "pids"), None);
    }
}
