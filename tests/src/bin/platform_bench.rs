//! The platform benchmark: starts a local cluster (release binaries) and measures, in
//! one run, the machine's floors next to Nimbus's figures, so every figure can be read
//! as a ratio against a baseline taken on the same noisy machine at the same time.
//!
//! Floors: an HTTP keep-alive round trip on loopback; NATS request/reply through the
//! legs of a warm synchronous invocation (gateway → worker → gateway: client → B →
//! client, a trivial responder) and, for reference, of one a scheduler places
//! (client → A → B → client);
//! one Lambda Runtime API exchange with a warm native child (the native function's
//! own program against a minimal Runtime API); a bare process start (native no-op,
//! `python3 -I -S -c pass`).
//! Nimbus: warm sync invokes (native `provided` no-op — a tiny `bootstrap` on the
//! standard library, `native_noop.rs` — and a Python no-op) at concurrency 1 and 32; cold starts; Event latency from the 202 to
//! the function's start, and Event throughput end to end;
//! service memory idle and under load.
//!
//! `./scripts/bench` builds and runs it; it prints a markdown table and writes JSON
//! (`--out FILE`, default `target/platform-bench.json`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use nimbus_tests::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Hist = Histogram<u64>;

fn hist() -> Hist {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram")
}

#[derive(Debug, Clone)]
struct Stats {
    p50_ms: f64,
    p99_ms: f64,
    rps: f64,
    n: u64,
}

fn stats(h: &Hist, elapsed: Duration) -> Stats {
    Stats {
        p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        rps: h.len() as f64 / elapsed.as_secs_f64(),
        n: h.len(),
    }
}

/// An HTTP operation's outcome for [`load`]: a 2xx status.
fn success(r: &reqwest::Response) -> Result<(), String> {
    if r.status().is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {} from {}", r.status(), r.url()))
    }
}

/// An HTTP operation's outcome for [`load`]: exactly `want`.
fn status(r: &reqwest::Response, want: u16) -> Result<(), String> {
    if r.status().as_u16() == want {
        Ok(())
    } else {
        Err(format!("HTTP {} (not {want}) from {}", r.status(), r.url()))
    }
}

/// Runs `op` with `concurrency` workers for `n` operations in all; fails naming the
/// first error if any operation failed.
async fn load<F, Fut>(concurrency: usize, n: usize, op: F) -> Stats
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let op = Arc::new(op);
    let left = Arc::new(std::sync::atomic::AtomicUsize::new(n));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (op, left) = (op.clone(), left.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = hist();
            let mut failures = 0u64;
            while left
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |l| l.checked_sub(1),
                )
                .is_ok()
            {
                let t = Instant::now();
                match op().await {
                    Ok(()) => {
                        let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                    }
                    Err(e) => {
                        if failures == 0 {
                            eprintln!("an operation failed: {e}");
                        }
                        failures += 1;
                    }
                }
            }
            (h, failures)
        }));
    }
    let mut all = hist();
    let mut failures = 0;
    for t in tasks {
        let (h, f) = t.await.expect("task");
        all.add(&h).expect("bounds");
        failures += f;
    }
    assert_eq!(failures, 0, "operations failed during the benchmark");
    stats(&all, started.elapsed())
}

/// A minimal HTTP/1.1 keep-alive server: the loopback floor.
async fn http_floor_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                break;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                let mut have = 0;
                while let Ok(n) = sock.read(&mut buf[have..]).await {
                    if n == 0 {
                        break;
                    }
                    have += n;
                    while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let body_len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        let total = end + 4 + body_len;
                        if have < total {
                            break;
                        }
                        buf.copy_within(total..have, 0);
                        have -= total;
                        if sock
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    format!("http://{addr}/")
}

#[derive(Default)]
struct Out {
    rows: Vec<(String, String, String, String)>,
    report: serde_json::Map<String, Value>,
}

impl Out {
    fn rec(&mut self, key: &str, what: &str, s: &Stats, floor: Option<&Stats>) {
        let ratio = floor
            .map(|f| format!("{:.2}× / {:.2}×", s.p50_ms / f.p50_ms, s.p99_ms / f.p99_ms))
            .unwrap_or_default();
        self.rows.push((
            what.to_string(),
            format!("{:.3} / {:.3}", s.p50_ms, s.p99_ms),
            format!("{:.0}", s.rps),
            ratio,
        ));
        self.report.insert(
            key.into(),
            json!({"p50_ms": s.p50_ms, "p99_ms": s.p99_ms, "rps": s.rps, "n": s.n}),
        );
    }
}

fn rss_mb(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:").map(str::to_string))
        })
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Creates `name` from `zip`, waits `pause`, and invokes it once (its cold start):
/// the response and how long the invocation took.
async fn first_invoke(
    cluster: &Cluster,
    client: &SignedClient,
    name: &str,
    runtime: &str,
    handler: &str,
    zip: &[u8],
    pause: Duration,
) -> (reqwest::Response, Duration) {
    cluster
        .create_function(name, runtime, handler, zip, json!({}))
        .await;
    tokio::time::sleep(pause).await;
    let url = cluster.url(&format!("/2015-03-31/functions/{name}/invocations"));
    let t = Instant::now();
    let r = client.post(url).body("{}").send().await.unwrap();
    (r, t.elapsed())
}

/// `n` bytes no compressor shrinks (xorshift), different for each `seed`.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// The summed PSS, in MB, of every process descended from `pid` (not `pid` itself).
fn descendants_pss_mb(pid: Option<u32>) -> f64 {
    let Some(root) = pid else { return 0.0 };
    let mut parent_of = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // The parent is the second field after the command's closing parenthesis.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parent_of.push((p, ppid));
        }
    }
    let mut family = vec![root];
    let mut grew = true;
    while grew {
        grew = false;
        for (p, ppid) in &parent_of {
            if family.contains(ppid) && !family.contains(p) {
                family.push(*p);
                grew = true;
            }
        }
    }
    family[1..]
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .sum::<f64>()
        / 1024.0
}

fn real_python() -> std::path::PathBuf {
    for p in ["/usr/bin/python3", "/usr/local/bin/python3"] {
        if std::path::Path::new(p).is_file() {
            return std::fs::canonicalize(p).unwrap();
        }
    }
    "python3".into()
}

async fn spawn_floor(program: &std::path::Path, args: &[&str], n: usize) -> Stats {
    let mut h = hist();
    let started = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let ok = tokio::process::Command::new(program)
            .args(args)
            .status()
            .await
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "{} failed", program.display());
        let _ = h.record(t.elapsed().as_micros().max(1) as u64);
    }
    stats(&h, started.elapsed())
}

/// The Python no-op: a module importing nothing, so the figures are the platform's
/// and the interpreter's, not a test fixture's imports.
const PYTHON_NOOP: &str = "def handler(event, context):\n    return None\n";

/// A Python function returning when it started, in ns since the epoch.
const PYTHON_CLOCK: &str = "import time\ndef handler(event, context):\n    return time.time_ns()\n";

fn python_noop_zip() -> Vec<u8> {
    zip_files(&[("noop.py", PYTHON_NOOP.as_bytes(), false)])
}

/// A function's runtime program started bare — no worker, no box — with the
/// environment a worker gives it, against the Runtime API at `api`.
fn spawn_bare(
    program: &std::path::Path,
    args: &[&str],
    task_root: &std::path::Path,
    handler: &str,
    api: &str,
) -> tokio::process::Child {
    tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .envs([
            ("AWS_LAMBDA_RUNTIME_API", api),
            ("_HANDLER", handler),
            ("LAMBDA_TASK_ROOT", task_root.to_str().unwrap()),
            ("AWS_LAMBDA_FUNCTION_NAME", "bare"),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
            ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/bare"),
            ("AWS_LAMBDA_LOG_STREAM_NAME", "bare"),
            ("AWS_REGION", "us-east-1"),
            ("PATH", "/usr/local/bin:/usr/bin:/bin"),
            ("LANG", "C.UTF-8"),
            ("TZ", ":UTC"),
            ("PYTHONUNBUFFERED", "1"),
        ])
        .current_dir(task_root)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()))
}

/// The same runtime program a cold start runs, started bare (no worker, no box)
/// against a stand-in Runtime API: spawn → its first `GET …/invocation/next`. What a
/// cold start adds beyond this is the platform's.
async fn bare_init_floor(
    program: &std::path::Path,
    args: &[&str],
    task_root: &std::path::Path,
    handler: &str,
    n: usize,
) -> Stats {
    let mut h = hist();
    let started = Instant::now();
    for _ in 0..n {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = listener.local_addr().unwrap().to_string();
        let t = Instant::now();
        let mut child = spawn_bare(program, args, task_root, handler, &api);
        let first = tokio::time::timeout(Duration::from_secs(10), async {
            let (mut conn, _) = listener.accept().await?;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            std::io::Result::Ok(buf)
        })
        .await;
        let elapsed = t.elapsed();
        let request = first
            .unwrap_or_else(|_| panic!("{} never asked for work", program.display()))
            .unwrap();
        assert!(
            request.starts_with(b"GET /2018-06-01/runtime/invocation/next"),
            "{}: {}",
            program.display(),
            String::from_utf8_lossy(&request)
        );
        let _ = h.record(elapsed.as_micros().max(1) as u64);
        let _ = child.kill().await;
    }
    stats(&h, started.elapsed())
}

/// One HTTP/1.1 request off `conn` (headers and a `Content-Length` body): its
/// request line, or `None` at end of stream.
async fn read_request(
    conn: &mut tokio::io::BufReader<tokio::net::TcpStream>,
) -> std::io::Result<Option<String>> {
    use tokio::io::AsyncBufReadExt;
    let mut line = String::new();
    if conn.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let request = line.trim_end().to_string();
    let mut length = 0usize;
    loop {
        line.clear();
        if conn.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body).await?;
    Ok(Some(request))
}

/// One Lambda Runtime API exchange with a warm native child, the floor of what a
/// worker adds to a warm invocation: the program the native no-op runs (the same
/// tiny bootstrap), started once against a minimal Runtime API on
/// loopback; each sample is the time from handing it an event (the answer to its
/// waiting `GET …/next`) to having read its `POST …/response`.
async fn runtime_api_floor(
    program: &std::path::Path,
    task_root: &std::path::Path,
    n: usize,
) -> Stats {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap().to_string();
    let mut child = spawn_bare(program, &[], task_root, "bootstrap", &api);
    // Connections may be new or kept alive: each is served on its own; a `/next`
    // takes the next event from `events`, a response reports to `done`.
    let (events_tx, events_rx) = tokio::sync::mpsc::channel::<u64>(1);
    let events_rx = Arc::new(tokio::sync::Mutex::new(events_rx));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<(u64, Instant)>(1);
    let server = tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            let _ = conn.set_nodelay(true);
            let (events_rx, done_tx) = (events_rx.clone(), done_tx.clone());
            tokio::spawn(async move {
                let mut conn = tokio::io::BufReader::new(conn);
                while let Ok(Some(request)) = read_request(&mut conn).await {
                    let reply = if request.starts_with("GET /2018-06-01/runtime/invocation/next") {
                        let Some(id) = events_rx.lock().await.recv().await else {
                            return;
                        };
                        let body = "{}";
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                             Lambda-Runtime-Aws-Request-Id: req-{id}\r\n\
                             Lambda-Runtime-Deadline-Ms: {}\r\n\
                             Lambda-Runtime-Invoked-Function-Arn: arn:aws:lambda:us-east-1:000000000000:function:bare\r\n\
                             Lambda-Runtime-Trace-Id: Root=1-0-0\r\n\
                             Content-Length: {}\r\n\r\n{body}",
                            std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .unwrap()
                                .as_millis()
                                + 60_000,
                            body.len()
                        )
                    } else if let Some(rest) =
                        request.strip_prefix("POST /2018-06-01/runtime/invocation/req-")
                    {
                        let id = rest
                            .split('/')
                            .next()
                            .and_then(|i| i.parse().ok())
                            .unwrap_or(0);
                        let _ = done_tx.send((id, Instant::now())).await;
                        "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n".to_string()
                    } else {
                        panic!("unexpected Runtime API request: {request}");
                    };
                    if conn.get_mut().write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let mut h = hist();
    let started = Instant::now();
    // One exchange first: the child's start is not part of the floor.
    for id in 0..=n as u64 {
        let t = Instant::now();
        events_tx.send(id).await.unwrap();
        let (done, at) = tokio::time::timeout(Duration::from_secs(10), done_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{} never answered event {id}", program.display()))
            .unwrap();
        assert_eq!(done, id, "a response for another event");
        if id > 0 {
            let _ = h.record(at.duration_since(t).as_micros().max(1) as u64);
        }
    }
    let elapsed = started.elapsed();
    server.abort();
    let _ = child.kill().await;
    stats(&h, elapsed)
}

#[tokio::main]
async fn main() {
    use tokio::signal::unix::{SignalKind, signal};
    // Stopped early (Ctrl-C, `timeout`): dropping the run drops its cluster, whose
    // processes are killed on drop — none is left running behind the benchmark.
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("a SIGINT handler");
    let code = tokio::select! {
        () = run() => return,
        _ = term.recv() => 143,
        _ = int.recv() => 130,
    };
    eprintln!("stopped by a signal: the cluster was taken down");
    std::process::exit(code);
}

async fn run() {
    let args: Vec<String> = std::env::args().collect();
    let out_path = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| {
            workspace_root()
                .join("target/platform-bench.json")
                .display()
                .to_string()
        });
    let quick = args.iter().any(|a| a == "--quick");
    // `--boxes-ahead N`: the workers' NIMBUS_SANDBOX_BOXES_AHEAD (0: every box made
    // at its cold start), to compare cold starts with and without.
    // `--sync-dispatch warm|scheduler`: the gateway's NIMBUS_SYNC_DISPATCH (cold
    // starts, or every call, placed by the scheduler), to compare with calls sent
    // straight to a worker.
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let mut env: Vec<(String, String)> = Vec::new();
    if let Some(n) = flag("--boxes-ahead") {
        env.push(("NIMBUS_SANDBOX_BOXES_AHEAD".into(), n));
    }
    if let Some(how) = flag("--sync-dispatch") {
        env.push(("NIMBUS_SYNC_DISPATCH".into(), how));
    }
    // `--tiny`: a hundredth, for the test that keeps the benchmark working.
    let scale = if args.iter().any(|a| a == "--tiny") {
        100
    } else if quick {
        10
    } else {
        1
    };
    eprintln!("starting a local cluster from {}", bin_dir().display());
    let cluster = Cluster::start(ClusterOpts {
        slots: 64,
        // JetStream as `nimbus up` runs it: every write synced to disk.
        nats_sync_always: true,
        env,
        ..Default::default()
    })
    .await;
    let nc = cluster.nats_client().await;
    let mut out = Out::default();

    // ---- floors ----
    let url = http_floor_server().await;
    let client = reqwest::Client::new();
    let http1 = {
        let (c, u) = (client.clone(), url.clone());
        load(1, 2000 / scale, move || {
            let (c, u) = (c.clone(), u.clone());
            async move {
                c.post(&u)
                    .body("{}")
                    .send()
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| success(&r))
            }
        })
        .await
    };
    out.rec(
        "floor_http_c1",
        "floor: HTTP keep-alive round trip, c=1",
        &http1,
        None,
    );
    let http32 = {
        let (c, u) = (client.clone(), url.clone());
        load(32, 20000 / scale, move || {
            let (c, u) = (c.clone(), u.clone());
            async move {
                c.post(&u)
                    .body("{}")
                    .send()
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| success(&r))
            }
        })
        .await
    };
    out.rec(
        "floor_http_c32",
        "floor: HTTP keep-alive round trip, c=32",
        &http32,
        None,
    );
    // NATS legs: a warm call goes client → b → client (gateway → worker → gateway);
    // one a scheduler places client → a → b → client. Each responder has its own
    // connection, as the gateway, the scheduler and the worker do (on one
    // connection nats-server hands all the messages back to one socket).
    let nca = cluster.nats_client().await;
    let ncb = cluster.nats_client().await;
    let mut a = nca.subscribe("bench.floor.a").await.unwrap();
    let mut b = ncb.subscribe("bench.floor.b").await.unwrap();
    nca.flush().await.unwrap();
    ncb.flush().await.unwrap();
    tokio::spawn(async move {
        while let Some(m) = a.next().await {
            if let Some(reply) = m.reply {
                let _ = nca
                    .publish_with_reply("bench.floor.b", reply, m.payload)
                    .await;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(m) = b.next().await {
            if let Some(reply) = m.reply {
                let _ = ncb.publish(reply, m.payload).await;
            }
        }
    });
    nc.flush().await.unwrap();
    let nats_floor = |c: usize, n: usize, subject: &'static str| {
        let nc = nc.clone();
        load(c, n, move || {
            let nc = nc.clone();
            async move {
                nc.request(subject, "{}".into())
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("NATS request to {subject}: {e}"))
            }
        })
    };
    let nats1 = nats_floor(1, 2000 / scale, "bench.floor.b").await;
    let nats32 = nats_floor(32, 20000 / scale, "bench.floor.b").await;
    let placed1 = nats_floor(1, 2000 / scale, "bench.floor.a").await;
    let placed32 = nats_floor(32, 20000 / scale, "bench.floor.a").await;
    let floor_dir = tempfile::tempdir().unwrap();
    let exchange = runtime_api_floor(
        &bin_dir().join("native-noop-function"),
        floor_dir.path(),
        2000 / scale,
    )
    .await;
    let floor1 = Stats {
        p50_ms: http1.p50_ms + nats1.p50_ms + exchange.p50_ms,
        p99_ms: http1.p99_ms + nats1.p99_ms + exchange.p99_ms,
        rps: 0.0,
        n: http1.n.min(nats1.n).min(exchange.n),
    };
    out.rec(
        "floor_nats_c1",
        "floor: NATS request/reply over a warm call's legs (gateway → worker → gateway), c=1",
        &nats1,
        None,
    );
    out.rec(
        "floor_nats_c32",
        "floor: NATS, a warm call's legs, c=32",
        &nats32,
        None,
    );
    out.rec(
        "floor_nats_placed_c1",
        "floor: NATS over a placed call's legs (gateway → scheduler → worker → gateway), c=1",
        &placed1,
        None,
    );
    out.rec(
        "floor_nats_placed_c32",
        "floor: NATS, a placed call's legs, c=32",
        &placed32,
        None,
    );
    out.rec(
        "floor_runtime_api_c1",
        "floor: one Runtime API exchange with a warm native child (event → response)",
        &exchange,
        None,
    );
    out.rec(
        "floor_warm_c1",
        "floor: HTTP + NATS legs + Runtime API exchange (a warm invocation's floor), c=1",
        &floor1,
        None,
    );
    let py = real_python();
    let spawn_native = spawn_floor(std::path::Path::new("/bin/true"), &[], 50 / scale.min(5)).await;
    let spawn_py = spawn_floor(&py, &["-I", "-S", "-c", "pass"], 30 / scale.min(5)).await;
    out.rec(
        "floor_spawn_native",
        "floor: spawn + exit of a native no-op",
        &spawn_native,
        None,
    );
    out.rec(
        "floor_spawn_python",
        "floor: python3 -I -S -c pass",
        &spawn_py,
        None,
    );
    // The cold-start functions' own programs, bare.
    let bare_dir = tempfile::tempdir().unwrap();
    let native_bin = bin_dir().join("native-noop-function");
    std::fs::write(bare_dir.path().join("noop.py"), PYTHON_NOOP).unwrap();
    let py_bootstrap = workspace_root().join("services/worker/src/runtimes/python_bootstrap.py");
    let bare_native = bare_init_floor(
        &native_bin,
        &[],
        bare_dir.path(),
        "bootstrap",
        30 / scale.min(5),
    )
    .await;
    let bare_py = bare_init_floor(
        &py,
        &[py_bootstrap.to_str().unwrap()],
        bare_dir.path(),
        "noop.handler",
        20 / scale.min(5),
    )
    .await;
    out.rec(
        "floor_bare_init_native",
        "floor: the native function's bootstrap run bare, spawn → first /next",
        &bare_native,
        None,
    );
    out.rec(
        "floor_bare_init_python",
        "floor: the Python bootstrap + handler run bare, spawn → first /next",
        &bare_py,
        None,
    );

    // ---- Nimbus ----
    let idle = json!({
        "gateway_mb": rss_mb(cluster.gateway.pid()),
        "scheduler_mb": rss_mb(cluster.scheduler.pid()),
        "worker_mb": rss_mb(cluster.workers[0].pid()),
    });
    cluster
        .create_function(
            "native-noop",
            "provided.al2023",
            "bootstrap",
            &native_noop_zip(),
            json!({}),
        )
        .await;
    cluster
        .create_function(
            "python-noop",
            "python3.12",
            "noop.handler",
            &python_noop_zip(),
            json!({}),
        )
        .await;
    // From here on requests go to the gateway: signed, as a real client's are.
    let client = cluster.http.clone();
    let invoke_url = |f: &str| cluster.url(&format!("/2015-03-31/functions/{f}/invocations"));
    for (key, f, floor_key) in [
        ("native", "native-noop", &floor1),
        ("python", "python-noop", &floor1),
    ] {
        let u = invoke_url(f);
        // Warm up enough instances for c=32.
        let _ = load(32, 64, {
            let (c, u) = (client.clone(), u.clone());
            move || {
                let (c, u) = (c.clone(), u.clone());
                async move {
                    c.post(&u)
                        .body("{}")
                        .send()
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| success(&r))
                }
            }
        })
        .await;
        let c1 = load(1, 1000 / scale, {
            let (c, u) = (client.clone(), u.clone());
            move || {
                let (c, u) = (c.clone(), u.clone());
                async move {
                    c.post(&u)
                        .body("{}")
                        .send()
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| success(&r))
                }
            }
        })
        .await;
        out.rec(
            &format!("warm_{key}_c1"),
            &format!("warm sync invoke, {key} no-op, c=1"),
            &c1,
            Some(floor_key),
        );
        let c32 = load(32, 5000 / scale, {
            let (c, u) = (client.clone(), u.clone());
            move || {
                let (c, u) = (c.clone(), u.clone());
                async move {
                    c.post(&u)
                        .body("{}")
                        .send()
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| success(&r))
                }
            }
        })
        .await;
        out.rec(
            &format!("warm_{key}_c32"),
            &format!("warm sync invoke, {key} no-op, c=32"),
            &c32,
            None,
        );
        out.report.insert(
            format!("warm_{key}_c32_vs_nats_floor_throughput"),
            json!(c32.rps / nats32.rps),
        );
    }
    // How many warm calls went straight to the worker (the rest: via a scheduler).
    let metrics = cluster.gateway_metrics().await;
    let sum = |name: &str, label: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .fold(0.0, |a, b| a + b)
    };
    let direct = sum("nimbus_gateway_direct_dispatches_total{", "result=\"ran\"");
    let warm = sum(
        "nimbus_gateway_direct_dispatches_total{",
        "placed=\"warm\",result=\"ran\"",
    );
    let sync = sum(
        "nimbus_gateway_invocations_total{",
        "type=\"RequestResponse\"",
    );
    println!(
        "warm phase: {direct} of {sync} synchronous calls went straight to a worker, {warm} of them to a warm instance it knew"
    );
    out.report
        .insert("sync_calls_direct_share".into(), json!(direct / sync));
    out.report
        .insert("sync_calls_warm_direct_share".into(), json!(warm / sync));
    let loaded = json!({
        "gateway_mb": rss_mb(cluster.gateway.pid()),
        "scheduler_mb": rss_mb(cluster.scheduler.pid()),
        "worker_mb": rss_mb(cluster.workers[0].pid()),
    });

    // Cold starts: a new function each time, code already cached on the worker.
    for (key, runtime, handler, zip, floor, bare) in [
        (
            "native",
            "provided.al2023",
            "bootstrap",
            native_noop_zip(),
            &spawn_native,
            &bare_native,
        ),
        (
            "python",
            "python3.12",
            "noop.handler",
            python_noop_zip(),
            &spawn_py,
            &bare_py,
        ),
    ] {
        // Back to back (a burst: the boxes made ahead are used up faster than they
        // are made), then one at a time, 100 ms apart (each finds its box ready).
        for (mode, pause, what) in [
            ("", Duration::ZERO, "in a burst, back to back"),
            (
                "_paced",
                Duration::from_millis(100),
                "one at a time, 100 ms apart",
            ),
        ] {
            let mut h = hist();
            let mut init = hist();
            let started = Instant::now();
            // Thirty: with ten, one run's p50 moved by a millisecond from the next's.
            for i in 0..(30 / scale.min(5)).max(2) {
                let name = format!("cold-{key}{mode}-{i}");
                let (r, took) =
                    first_invoke(&cluster, &client, &name, runtime, handler, &zip, pause).await;
                let _ = h.record(took.as_micros().max(1) as u64);
                let init_ms: f64 = r
                    .headers()
                    .get("X-Nimbus-Init-Duration-Ms")
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(0.0);
                let _ = init.record((init_ms * 1000.0).max(1.0) as u64);
                assert!(r.status().is_success());
            }
            let s = stats(&h, started.elapsed());
            out.rec(
                &format!("cold_{key}{mode}"),
                &format!("cold start, {key} (first invoke, code cached), {what}"),
                &s,
                Some(floor),
            );
            out.report.insert(
                format!("cold_{key}{mode}_init_p50_ms"),
                json!(init.value_at_quantile(0.5) as f64 / 1000.0),
            );
            // Init Duration (spawn → first /next in the worker) against the same
            // program started bare: the box and the worker's part of a cold start.
            let init_stats = stats(&init, started.elapsed());
            out.rec(
                &format!("cold_{key}{mode}_init"),
                &format!("cold start Init Duration, {key}, {what}, vs the same program bare"),
                &init_stats,
                Some(bare),
            );
            out.report.insert(
                format!("cold_{key}{mode}_init_over_bare_ms"),
                json!(init_stats.p50_ms - bare.p50_ms),
            );
        }
    }

    // Cold start with the code fetched: each function's package is new to the worker
    // (its own 1 MiB of filler beside the same bootstrap), so the worker fetches it
    // from the object store, checks its SHA-256 and unpacks it before the start. One
    // at a time, 100 ms apart, as the paced start with the code cached.
    {
        let bootstrap = std::fs::read(bin_dir().join("native-noop-function"))
            .expect("native-noop-function is built with the workspace binaries");
        let mut h = hist();
        let mut size = 0;
        let started = Instant::now();
        let seed = Instant::now().elapsed().as_nanos() as u64 ^ u64::from(std::process::id());
        for i in 0..(30 / scale.min(5)).max(2) {
            let filler = noise(1024 * 1024, seed.wrapping_add(i as u64));
            let zip = zip_files(&[
                ("bootstrap", &bootstrap, true),
                ("filler.bin", &filler, false),
            ]);
            size = zip.len();
            let name = format!("cold-fetched-{i}");
            let (r, took) = first_invoke(
                &cluster,
                &client,
                &name,
                "provided.al2023",
                "bootstrap",
                &zip,
                Duration::from_millis(100),
            )
            .await;
            let _ = h.record(took.as_micros().max(1) as u64);
            assert!(r.status().is_success());
        }
        out.rec(
            "cold_native_fetched",
            &format!(
                "cold start, native, a {:.1} MiB package fetched from the object store, one at a time, 100 ms apart",
                size as f64 / 1048576.0
            ),
            &stats(&h, started.elapsed()),
            Some(&spawn_native),
        );
    }

    // Memory per warm instance: the worker's own RSS, and the instance's processes
    // (the box's init and pid 1, the runtime) by PSS — shared pages split between
    // the processes sharing them — for instances kept warm after one call each.
    {
        let worker = cluster.workers[0].pid();
        let k = (20 / scale).max(2);
        for (runtime, handler, zip, key) in [
            ("provided.al2023", "bootstrap", native_noop_zip(), "native"),
            ("python3.12", "noop.handler", python_noop_zip(), "python"),
        ] {
            let before = (rss_mb(worker), descendants_pss_mb(worker));
            for i in 0..k {
                let name = format!("kept-{key}-{i}");
                let (r, _) = first_invoke(
                    &cluster,
                    &client,
                    &name,
                    runtime,
                    handler,
                    &zip,
                    Duration::ZERO,
                )
                .await;
                assert!(r.status().is_success());
            }
            // The boxes taken are replaced within the REFILL delay: let them be.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let after = (rss_mb(worker), descendants_pss_mb(worker));
            let per = json!({
                "worker_mb": (after.0 - before.0) / k as f64,
                "processes_mb": (after.1 - before.1) / k as f64,
                "instances": k,
            });
            println!(
                "per warm {key} instance: worker +{:.2} MB RSS, its processes {:.2} MB PSS ({k} instances)",
                per["worker_mb"].as_f64().unwrap_or(0.0),
                per["processes_mb"].as_f64().unwrap_or(0.0),
            );
            out.report.insert(format!("per_warm_instance_{key}"), per);
        }
    }

    // Async: from the 202 to the function's start, one Event at a time on a warm
    // instance. The function returns when it started (ns since the epoch, this
    // host's clock); its on-success record brings that back.
    cluster
        .create_function(
            "python-clock",
            "python3.12",
            "clock.handler",
            &zip_files(&[("clock.py", PYTHON_CLOCK.as_bytes(), false)]),
            json!({}),
        )
        .await;
    let resp = client
        .put(cluster.url("/2019-09-25/functions/python-clock/event-invoke-config"))
        .json(
            &json!({"DestinationConfig": {"OnSuccess": {"Destination": "nats:bench.async.clock"}}}),
        )
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let mut clock = nc.subscribe("bench.async.clock").await.unwrap();
    nc.flush().await.unwrap();
    let warm = client
        .post(invoke_url("python-clock"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(warm.status().is_success());
    let unix_ns = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    };
    let mut to_start = hist();
    let t_all = Instant::now();
    for _ in 0..(200 / scale).max(3) {
        let r = client
            .post(invoke_url("python-clock"))
            .header("X-Amz-Invocation-Type", "Event")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        let accepted = unix_ns();
        let rec = tokio::time::timeout(Duration::from_secs(30), clock.next())
            .await
            .expect("no on-success record within 30 s")
            .unwrap();
        let doc: Value = serde_json::from_slice(&rec.payload).unwrap();
        let started = doc["responsePayload"]
            .as_u64()
            .unwrap_or_else(|| panic!("no start time in the record: {doc}"));
        // A start before the 202 reached us counts as no wait at all.
        let _ = to_start.record((started.saturating_sub(accepted) / 1000).max(1));
    }
    out.rec(
        "async_accept_to_start",
        "Event invoke: 202 → the function starts (one at a time, warm instance)",
        &stats(&to_start, t_all.elapsed()),
        None,
    );

    // Async: Event invocations accepted → completed (on-success records).
    let mut done = nc.subscribe("bench.async.done").await.unwrap();
    nc.flush().await.unwrap();
    let resp = client
        .put(cluster.url("/2019-09-25/functions/python-noop/event-invoke-config"))
        .json(
            &json!({"DestinationConfig": {"OnSuccess": {"Destination": "nats:bench.async.done"}}}),
        )
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let n_async = 500 / scale;
    let t0 = Instant::now();
    let accepted = load(16, n_async, {
        let (c, u) = (client.clone(), invoke_url("python-noop"));
        move || {
            let (c, u) = (c.clone(), u.clone());
            async move {
                c.post(&u)
                    .header("X-Amz-Invocation-Type", "Event")
                    .body("{}")
                    .send()
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| status(&r, 202))
            }
        }
    })
    .await;
    let mut completed = 0;
    while completed < n_async {
        match tokio::time::timeout(Duration::from_secs(60), done.next()).await {
            Ok(Some(_)) => completed += 1,
            _ => break,
        }
    }
    let async_secs = t0.elapsed().as_secs_f64();
    out.rec(
        "async_accept",
        "Event invoke accepted (202), c=16",
        &accepted,
        None,
    );
    out.report.insert("async_end_to_end".into(), json!({"invocations": n_async, "completed": completed, "seconds": async_secs, "per_second": completed as f64 / async_secs}));
    out.report.insert("rss_idle".into(), idle.clone());
    out.report.insert("rss_loaded".into(), loaded.clone());

    // ---- print ----
    println!("| measurement | p50 / p99 ms | req/s | vs floor (p50 / p99) |");
    println!("|---|---|---|---|");
    for (what, lat, rps, ratio) in &out.rows {
        println!("| {what} | {lat} | {rps} | {ratio} |");
    }
    println!(
        "| Event invocations end to end | {completed}/{n_async} in {async_secs:.2} s | {:.0} | |",
        completed as f64 / async_secs
    );
    for (k, label) in [("native", "native"), ("python", "python")] {
        if let Some(v) = out
            .report
            .get(&format!("warm_{k}_c32_vs_nats_floor_throughput"))
        {
            println!(
                "| warm {label} c=32 throughput / NATS floor c=32 | | {:.0}% | |",
                v.as_f64().unwrap_or(0.0) * 100.0
            );
        }
    }
    println!(
        "\nRSS MB idle: gateway {:.1}, scheduler {:.1}, worker {:.1}; after load: gateway {:.1}, scheduler {:.1}, worker {:.1}",
        idle["gateway_mb"].as_f64().unwrap_or(0.0),
        idle["scheduler_mb"].as_f64().unwrap_or(0.0),
        idle["worker_mb"].as_f64().unwrap_or(0.0),
        loaded["gateway_mb"].as_f64().unwrap_or(0.0),
        loaded["scheduler_mb"].as_f64().unwrap_or(0.0),
        loaded["worker_mb"].as_f64().unwrap_or(0.0),
    );
    let _ = std::fs::create_dir_all(
        std::path::Path::new(&out_path)
            .parent()
            .unwrap_or(std::path::Path::new(".")),
    );
    std::fs::write(
        &out_path,
        serde_json::to_string_pretty(&Value::Object(out.report)).unwrap(),
    )
    .unwrap();
    eprintln!("wrote {out_path}");
    cluster.stop();
}
