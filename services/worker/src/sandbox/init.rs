//! The box's init: what makes an instance's pid namespace work.
//!
//! `unshare(CLONE_NEWPID)` (in the spawn's `pre_exec`) moves only the *children* of
//! the caller into the new namespace, so the worker does not exec the runtime
//! directly: it execs itself as [`INIT_ARG`], still root and already in the
//! instance's mount namespace and cgroups. That process (the *outer* init, in the
//! worker's pid namespace) forks the namespace's pid 1, which mounts a `/proc` of
//! its own (so the function sees only its own processes), forks the runtime as
//! pid 2 — dropping to the function's uid, `no_new_privs`, `PDEATHSIG` — and reaps
//! whatever gets orphaned under it. When the runtime ends, pid 1 ends with its
//! status, and the kernel kills everything left in the namespace: a `setsid` daemon
//! cannot outlive its instance even where no cgroup is available. The outer init
//! waits for pid 1 and ends the same way, so the worker sees the runtime's status.
//! With a network namespace of its own (the spawn unshares that too), pid 1 brings
//! up loopback and relays `127.0.0.1:9001` to the worker's Runtime API socket.
//!
//! A box can also be made before its function is known ([`AWAIT_ARG`]): the init
//! forks pid 1 at once, which mounts its `/proc` and waits, already in the box's
//! cgroup and namespaces, for an [`Order`] — the function's uid, program,
//! environment, code and output pipe — then mounts the code and `/tmp` and goes on
//! as above (a fork and a mount fewer on the cold start's path). Moving a process
//! into a cgroup costs an RCU grace period (~10 ms on the project machine, most of a
//! native cold start); a box made ahead pays it off the invocation's path.
//!
//! It runs before the worker's async runtime starts (a single thread, so `fork` is
//! safe) and never returns.

use std::ffi::CString;

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

/// `nimbus-worker __nimbus-box-init <uid|-> <relay|-> <program> [args…]`, where
/// `relay` is `<port>:<fd>:<name>`: in a network namespace of its own, pid 1 brings
/// up loopback, listens on `127.0.0.1:<port>` and relays each connection to the
/// Unix socket `<name>` in the directory open as `<fd>` (the worker's Runtime API).
pub const INIT_ARG: &str = "__nimbus-box-init";

/// `… __nimbus-box-init --await <fd>`: a box made ahead; its [`Order`] arrives on
/// the Unix seqpacket socket `<fd>`, with the output pipe as the message's one
/// descriptor. The socket closing first means the box was not needed: exit 0.
pub const AWAIT_ARG: &str = "--await";

/// `… --await <fd> --preload <runtime-dir> <program> [args…]`: a box made ahead
/// whose runtime starts at once, before its function is known: the init binds
/// `<runtime-dir>` at `/var/runtime` and starts `<program> [args…] <fd2>` as pid 2,
/// still root, with the init's own environment; the runtime waits on the seqpacket
/// socket `<fd2>`. On the order, the init mounts the code and `/tmp` and passes the
/// order and the output pipe on; the runtime takes the function's uid, limits and
/// environment itself (the Python bootstrap's `--await-order`). The interpreter's
/// start and the bootstrap's imports are then off the cold start's path.
pub const PRELOAD_ARG: &str = "--preload";

/// What a box made ahead runs, once its function is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub uid: Option<u32>,
    /// `RLIMIT_AS`, which depends on the function's memory.
    pub as_limit: u64,
    pub tmp_mb: u32,
    /// Host paths bind-mounted read-only at `/var/task` and `/var/runtime`.
    pub code: String,
    pub runtime: String,
    pub program: String,
    pub args: Vec<String>,
    /// `KEY=VALUE`: the runtime's whole environment.
    pub env: Vec<String>,
}

impl Order {
    /// NUL-terminated fields: uid (`-`: none), as_limit, tmp_mb, code, runtime,
    /// program, the number of args, the args, then the environment.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let fields = [
            self.uid.map_or("-".to_string(), |u| u.to_string()),
            self.as_limit.to_string(),
            self.tmp_mb.to_string(),
            self.code.clone(),
            self.runtime.clone(),
            self.program.clone(),
            self.args.len().to_string(),
        ];
        for f in fields.iter().chain(&self.args).chain(&self.env) {
            if f.contains('\0') {
                return Err(format!("NUL in {f:?}"));
            }
            out.extend_from_slice(f.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Order, String> {
        let body = bytes.strip_suffix(&[0]).unwrap_or(bytes);
        let mut f = body
            .split(|b| *b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned());
        let mut next = |what: &str| f.next().ok_or_else(|| format!("order without {what}"));
        let uid = match next("uid")?.as_str() {
            "-" => None,
            u => Some(u.parse().map_err(|_| format!("bad uid {u:?}"))?),
        };
        let as_limit = next("as_limit")?.parse().map_err(|_| "bad as_limit")?;
        let tmp_mb = next("tmp_mb")?.parse().map_err(|_| "bad tmp_mb")?;
        let code = next("code")?;
        let runtime = next("runtime")?;
        let program = next("program")?;
        let nargs: usize = next("nargs")?.parse().map_err(|_| "bad nargs")?;
        let args = (0..nargs).map(|_| next("arg")).collect::<Result<_, _>>()?;
        let env = f.collect();
        Ok(Order {
            uid,
            as_limit,
            tmp_mb,
            code,
            runtime,
            program,
            args,
            env,
        })
    }
}

/// The relay argument for [`INIT_ARG`].
pub fn relay_arg(port: u16, dir_fd: i32, name: &str) -> String {
    format!("{port}:{dir_fd}:{name}")
}

struct Relay {
    port: u16,
    dir_fd: i32,
    name: String,
}

/// The init's whole life: `args` are what follows [`INIT_ARG`].
pub fn run(args: &[String]) -> ! {
    // What the start-up probe runs inside a trial box (`/proc/self/exe --version`).
    if args.first().map(String::as_str) == Some("--version") {
        println!("nimbus-box-init {}", env!("CARGO_PKG_VERSION"));
        std::process::exit(0);
    }
    let result = if args.first().map(String::as_str) == Some(AWAIT_ARG) {
        await_order(&args[1..])
    } else {
        try_run(args)
    };
    match result {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("nimbus box init: {e}");
            std::process::exit(126)
        }
    }
}

enum Never {}

fn try_run(args: &[String]) -> Result<Never, String> {
    let [uid, relay, program, rest @ ..] = args else {
        return Err(format!(
            "usage: {INIT_ARG} <uid|-> <port:fd:name|-> <program> [args…]"
        ));
    };
    let relay = match relay.as_str() {
        "-" => None,
        r => {
            let mut parts = r.splitn(3, ':');
            let (Some(port), Some(fd), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(format!("bad relay {r:?}"));
            };
            Some(Relay {
                port: port.parse().map_err(|_| format!("bad port in {r:?}"))?,
                dir_fd: fd.parse().map_err(|_| format!("bad fd in {r:?}"))?,
                name: name.to_string(),
            })
        }
    };
    let uid: Option<u32> = match uid.as_str() {
        "-" => None,
        u => Some(u.parse().map_err(|_| format!("bad uid {u:?}"))?),
    };
    let argv: Vec<CString> = std::iter::once(program)
        .chain(rest)
        .map(|a| cstr(a))
        .collect::<Result<_, _>>()?;
    fork_pid_one(uid, relay, argv)
}

/// A box made ahead: waits for its order on the socket `<fd>` (`args`: `<fd>
/// [--preload <runtime-dir> <program> [args…]]`).
fn await_order(args: &[String]) -> Result<Never, String> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    // Only ever in a box: run by hand, its mounts would land on the host's.
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    if ns("self").is_none() || ns("self") == ns("1") {
        return Err(
            "not in a mount namespace of its own: a box's init runs only in a box the worker made"
                .into(),
        );
    }
    let fd = args.first().map(String::as_str).unwrap_or("");
    let fd: i32 = fd.parse().map_err(|_| format!("bad socket fd {fd:?}"))?;
    // SAFETY: fstat on a descriptor number; it need not be open.
    let is_socket = unsafe {
        let mut st: nix::libc::stat = std::mem::zeroed();
        nix::libc::fstat(fd, &mut st) == 0 && st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFSOCK
    };
    if !is_socket {
        return Err(format!("descriptor {fd} is not the worker's socket"));
    }
    // SAFETY: the worker handed this descriptor to us for this purpose.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let preloaded = match args.get(1).map(String::as_str) {
        None => None,
        Some(PRELOAD_ARG) => match &args[2..] {
            [runtime_dir, program, rest @ ..] => Some(start_preloaded(runtime_dir, program, rest)?),
            _ => {
                return Err(format!(
                    "usage: {AWAIT_ARG} <fd> {PRELOAD_ARG} <runtime-dir> <program> [args…]"
                ));
            }
        },
        Some(other) => return Err(format!("unexpected {other:?}")),
    };
    // With the runtime started ahead: if pid 1 ends before the order comes (the
    // runtime could not start), the box ends too, so the worker sees it dead
    // instead of handing it a function. (A poll on a pidfd: after
    // `unshare(CLONE_NEWPID)` this process cannot start threads.)
    if let Some((pid1, runtime)) = &preloaded {
        wait_for_order_or_exit(sock.as_raw_fd(), runtime.as_raw_fd(), *pid1)?;
    }
    let Some((pid1, runtime)) = preloaded else {
        // A plain box: pid 1 is made now, with its /proc, and takes the order
        // itself — a fork and a mount fewer on the cold start's path.
        // SAFETY: single-threaded (the async runtime has not started).
        match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
            ForkResult::Parent { child } => {
                drop(sock);
                exit_like(pid_one_status(wait_for(child)))
            }
            ForkResult::Child => {
                let e = pid_one_awaiting(sock);
                eprintln!("nimbus box init: {}", e.err().unwrap_or_default());
                std::process::exit(126)
            }
        }
    };
    let (message, order, output) = take_order(sock)?;
    let plan = super::MountPlan::new(order.tmp_mb, cstr(&order.code)?, None);
    super::mount_box(&plan).map_err(|e| format!("mounting the box: {e}"))?;
    sendmsg::<()>(
        runtime.as_raw_fd(),
        &[std::io::IoSlice::new(&message)],
        &[ControlMessage::ScmRights(&[output])],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(|e| format!("handing the runtime its function: {e}"))?;
    // SAFETY: our copy; the runtime has its own.
    unsafe { nix::libc::close(output) };
    drop(runtime);
    exit_like(pid_one_status(wait_for(pid1)))
}

/// Pid 1 of a plain box made ahead: its /proc now; on the order, the function's
/// output, limits and mounts, then the runtime as pid 2 (as [`pid_one`]).
fn pid_one_awaiting(sock: std::os::fd::OwnedFd) -> Result<Never, String> {
    pid_one_prelude()?;
    let (_, order, output) = take_order(sock)?;
    // SAFETY: stdout and stderr hold it now.
    unsafe { nix::libc::close(output) };
    use nix::sys::resource::{Resource, setrlimit};
    setrlimit(Resource::RLIMIT_AS, order.as_limit, order.as_limit)
        .map_err(|e| format!("RLIMIT_AS: {e}"))?;
    let argv: Vec<CString> = std::iter::once(&order.program)
        .chain(&order.args)
        .map(|a| cstr(a))
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = order
        .env
        .iter()
        .map(|e| cstr(e))
        .collect::<Result<_, _>>()?;
    let plan = super::MountPlan::new(
        order.tmp_mb,
        cstr(&order.code)?,
        Some(cstr(&order.runtime)?),
    );
    super::mount_box(&plan).map_err(|e| format!("mounting the box: {e}"))?;
    start_runtime(order.uid, None, &argv, Some(&envp))
}

/// `a` as a C string for exec and mount (an argument with a NUL is refused).
fn cstr(a: &str) -> Result<CString, String> {
    CString::new(a.as_bytes()).map_err(|_| format!("NUL in {a:?}"))
}

/// The order off the worker's socket (which it closes): the raw message, the
/// order, and the output pipe it carried, already made this process's stdout and
/// stderr. Exits (0) if the worker closed the box unused.
fn take_order(sock: std::os::fd::OwnedFd) -> Result<(Vec<u8>, Order, std::os::fd::RawFd), String> {
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut buf = vec![0u8; 256 * 1024];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let (len, output) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let fds: Vec<i32> = msg
                    .cmsgs()
                    .map_err(|e| format!("order: {e}"))?
                    .filter_map(|c| match c {
                        ControlMessageOwned::ScmRights(fds) => Some(fds),
                        _ => None,
                    })
                    .flatten()
                    .collect();
                break (msg.bytes, fds.first().copied());
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("waiting for the order: {e}")),
        }
    };
    if len == 0 {
        std::process::exit(0); // the worker closed the box unused
    }
    drop(sock);
    let order = Order::decode(&buf[..len])?;
    let output = output.ok_or("order without its output descriptor")?;
    // SAFETY: descriptors we own; stdout and stderr become the instance's pipe.
    unsafe {
        if nix::libc::dup2(output, 1) < 0 || nix::libc::dup2(output, 2) < 0 {
            return Err(format!("dup2: {}", std::io::Error::last_os_error()));
        }
    }
    buf.truncate(len);
    Ok((buf, order, output))
}

/// The message a preloaded runtime sends its init once it waits for its order, and
/// the init passes on to the worker: only then is the box handed a function (a
/// runtime that cannot start ahead dies instead, and its box with it).
pub const RUNTIME_READY: &[u8] = b"ready";

/// Takes one message off `fd` without waiting: whether it was [`RUNTIME_READY`]
/// (anything else, nothing, or the end of the stream: it was not).
pub fn take_ready(fd: i32) -> bool {
    let mut buf = [0u8; 16];
    // SAFETY: recv into our own buffer.
    let n = unsafe {
        nix::libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            nix::libc::MSG_DONTWAIT,
        )
    };
    n > 0 && &buf[..n as usize] == RUNTIME_READY
}

/// Returns when `sock` has something to read; exits (125) if `pid1` ends first.
/// Meanwhile passes the runtime's [`RUNTIME_READY`] on `runtime` on to the worker.
fn wait_for_order_or_exit(sock: i32, runtime: i32, pid1: Pid) -> Result<(), String> {
    use nix::libc;
    // SAFETY: plain system calls on descriptors we own.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid1.as_raw(), 0) as i32;
        let mut fds = [
            libc::pollfd {
                fd: sock,
                events: libc::POLLIN,
                revents: 0,
            },
            // No pidfd (old kernel): a negative fd is ignored; the worker notices
            // a dead runtime when it sees no readiness.
            libc::pollfd {
                fd: pidfd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: runtime,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            if libc::poll(fds.as_mut_ptr(), 3, -1) < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("poll: {e}"));
            }
            if fds[1].revents != 0 {
                std::process::exit(125);
            }
            if fds[2].revents != 0 {
                if take_ready(runtime) {
                    libc::send(
                        sock,
                        RUNTIME_READY.as_ptr().cast(),
                        RUNTIME_READY.len(),
                        libc::MSG_NOSIGNAL,
                    );
                }
                fds[2].fd = -1; // one message; an end of stream means pid 1 is ending
            }
            if fds[0].revents != 0 {
                if pidfd >= 0 {
                    libc::close(pidfd);
                }
                return Ok(());
            }
        }
    }
}

/// For `--preload`: binds the runtime dir, then forks pid 1, which starts the
/// runtime at once (root, the init's environment) with one end of a seqpacket
/// socket as its last argument. Returns pid 1 and the other end.
fn start_preloaded(
    runtime_dir: &str,
    program: &str,
    args: &[String],
) -> Result<(Pid, std::os::fd::OwnedFd), String> {
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    super::bind_read_only(&cstr(runtime_dir)?, c"/var/runtime")
        .map_err(|e| format!("mounting the runtime: {e}"))?;
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| format!("socketpair: {e}"))?;
    // Inherited by pid 1 and the runtime.
    // SAFETY: plain fcntl on our own descriptor.
    if unsafe { nix::libc::fcntl(theirs.as_raw_fd(), nix::libc::F_SETFD, 0) } < 0 {
        return Err(format!("fcntl: {}", std::io::Error::last_os_error()));
    }
    let argv: Vec<CString> = std::iter::once(program)
        .chain(args.iter().map(String::as_str))
        .map(cstr)
        .chain(std::iter::once(cstr(&theirs.as_raw_fd().to_string())))
        .collect::<Result<_, _>>()?;
    // SAFETY: single-threaded (the async runtime has not started).
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Parent { child } => Ok((child, ours)),
        ForkResult::Child => {
            drop(ours);
            let e = pid_one(None, None, &argv);
            eprintln!("nimbus box init: {}", e.err().unwrap_or_default());
            std::process::exit(126)
        }
    }
}

/// Pid 1 cannot die of its own signal: it ended with 128 + n instead.
fn pid_one_status(status: WaitStatus) -> WaitStatus {
    match status {
        WaitStatus::Exited(pid, code) if (129..160).contains(&code) => {
            match Signal::try_from(code - 128) {
                Ok(sig) => WaitStatus::Signaled(pid, sig, false),
                Err(_) => WaitStatus::Exited(pid, code),
            }
        }
        other => other,
    }
}

/// The outer init: forks pid 1 of the namespace, waits for it and ends like it.
fn fork_pid_one(
    uid: Option<u32>,
    relay: Option<Relay>,
    argv: Vec<CString>,
) -> Result<Never, String> {
    // SAFETY: single-threaded (the async runtime has not started).
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Parent { child } => exit_like(pid_one_status(wait_for(child))),
        ForkResult::Child => pid_one(uid, relay, &argv),
    }
}

/// Pid 1 of the namespace (its mounts made by whoever made the box).
fn pid_one(uid: Option<u32>, relay: Option<Relay>, argv: &[CString]) -> Result<Never, String> {
    pid_one_prelude()?;
    start_runtime(uid, relay, argv, None)
}

/// What pid 1 is first: bound to its parent's life, and the /proc of its namespace.
fn pid_one_prelude() -> Result<(), String> {
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    // Only ever inside a box: run by hand, the mounts here and after would land on
    // the host.
    if nix::unistd::getpid().as_raw() != 1 {
        return Err(
            "not pid 1 of a new pid namespace: the box's init runs only in a box the worker made"
                .into(),
        );
    }
    use nix::mount::{MsFlags, mount};
    const NONE: Option<&'static std::ffi::CStr> = None;
    mount(
        Some(c"proc"),
        c"/proc",
        Some(c"proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        NONE,
    )
    .map_err(|e| format!("mounting /proc: {e}"))?;
    Ok(())
}

/// Pid 1's work: the runtime as pid 2 (with the relay, if any), then reaping
/// everything until the runtime ends, and ending like it.
fn start_runtime(
    uid: Option<u32>,
    relay: Option<Relay>,
    argv: &[CString],
    envp: Option<&[CString]>,
) -> Result<Never, String> {
    use nix::mount::{MsFlags, mount};
    const NONE: Option<&'static std::ffi::CStr> = None;
    // Bound before the runtime starts, so its first connection waits in the backlog.
    let relay = match relay {
        Some(r) => {
            loopback_up().map_err(|e| format!("bringing up loopback: {e}"))?;
            // A sysfs of this namespace: the host's interfaces are not its business.
            mount(
                Some(c"sysfs"),
                c"/sys",
                Some(c"sysfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                NONE,
            )
            .map_err(|e| format!("mounting /sys: {e}"))?;
            let listener = std::net::TcpListener::bind(("127.0.0.1", r.port))
                .map_err(|e| format!("listening on 127.0.0.1:{}: {e}", r.port))?;
            // The directory stays ours: the runtime does not inherit it.
            // SAFETY: plain fcntl on a descriptor we were given.
            unsafe { nix::libc::fcntl(r.dir_fd, nix::libc::F_SETFD, nix::libc::FD_CLOEXEC) };
            Some((listener, format!("/proc/self/fd/{}/{}", r.dir_fd, r.name)))
        }
        None => None,
    };
    // SAFETY: still single-threaded.
    let runtime = match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            let e = become_function(uid, argv, envp);
            eprintln!("nimbus box init: cannot start {:?}: {e}", argv[0]);
            // SAFETY: leave without running the parent's exit handlers.
            unsafe { nix::libc::_exit(127) }
        }
        ForkResult::Parent { child } => child,
    };
    if let Some((listener, target)) = relay {
        std::thread::spawn(move || serve_relay(listener, target));
    }
    // Reap everything; end with the runtime.
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(status) if status.pid() == Some(runtime) => exit_like(status),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("wait: {e}")),
        }
    }
}

/// In the runtime's process: the function's identity, then exec. Returns only on
/// failure.
fn become_function(
    uid: Option<u32>,
    argv: &[CString],
    envp: Option<&[CString]>,
) -> nix::errno::Errno {
    let step = || -> nix::Result<std::convert::Infallible> {
        if let Some(uid) = uid {
            super::become_uid(uid)?;
        }
        // After the uid change: changing credentials clears it.
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
        match envp {
            Some(envp) => nix::unistd::execve(&argv[0], argv, envp),
            None => nix::unistd::execv(&argv[0], argv),
        }
    };
    match step() {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// Each loopback connection of the runtime, relayed to the worker's socket.
fn serve_relay(listener: std::net::TcpListener, target: String) {
    for conn in listener.incoming() {
        let Ok(tcp) = conn else { continue };
        let unix = match std::os::unix::net::UnixStream::connect(&target) {
            Ok(u) => u,
            Err(e) => {
                eprintln!("nimbus box init: the Runtime API is unreachable: {e}");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (Ok(tcp2), Ok(unix2)) = (tcp.try_clone(), unix.try_clone()) else {
            continue;
        };
        std::thread::spawn(move || pipe(tcp, unix2));
        std::thread::spawn(move || pipe(unix, tcp2));
    }
}

/// Copies until end of stream, then passes the end on.
fn pipe(mut from: impl std::io::Read, mut to: impl std::io::Write + ShutdownWrite) {
    let _ = std::io::copy(&mut from, &mut to);
    to.shutdown_write();
}

trait ShutdownWrite {
    fn shutdown_write(&self);
}

impl ShutdownWrite for std::net::TcpStream {
    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

impl ShutdownWrite for std::os::unix::net::UnixStream {
    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

/// A new network namespace has only `lo`, and it is down.
fn loopback_up() -> std::io::Result<()> {
    use nix::libc;
    // SAFETY: an ioctl pair on a throwaway socket with a zeroed, NUL-terminated
    // interface request.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let result = if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        libc::close(fd);
        result
    }
}

fn wait_for(child: Pid) -> WaitStatus {
    loop {
        match waitpid(child, None) {
            Ok(s @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => return s,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return WaitStatus::Exited(child, 126),
        }
    }
}

/// Ends this process the way `status` ended its child: the same exit code, or
/// the same signal.
fn exit_like(status: WaitStatus) -> ! {
    match status {
        WaitStatus::Signaled(_, sig, _) => {
            // Default disposition, then the signal itself; pid 1 of a namespace
            // ignores signals sent to itself, so fall back to 128 + n.
            // SAFETY: plain system calls.
            unsafe {
                nix::libc::signal(sig as i32, nix::libc::SIG_DFL);
                nix::libc::kill(nix::libc::getpid(), sig as i32);
            }
            std::process::exit(128 + sig as i32)
        }
        WaitStatus::Exited(_, code) => std::process::exit(code),
        _ => std::process::exit(126),
    }
}

#[cfg(test)]
mod tests {
    use super::Order;

    #[test]
    fn orders_round_trip_and_refuse_nul() {
        let order = Order {
            uid: Some(1_000_123),
            as_limit: 8 << 30,
            tmp_mb: 512,
            code: "/data/code/abc".into(),
            runtime: "/data/runtimes".into(),
            program: "/var/task/bootstrap".into(),
            args: vec!["a b".into(), String::new()],
            env: vec!["A=1".into(), "MULTI=line\nline".into(), "EMPTY=".into()],
        };
        assert_eq!(Order::decode(&order.encode().unwrap()).unwrap(), order);
        let none = Order {
            uid: None,
            args: vec![],
            env: vec![],
            ..order.clone()
        };
        assert_eq!(Order::decode(&none.encode().unwrap()).unwrap(), none);
        let bad = Order {
            env: vec!["X=a\0b".into()],
            ..order
        };
        assert!(bad.encode().is_err());
        assert!(Order::decode(b"-\x008\x00").is_err());
    }
}
