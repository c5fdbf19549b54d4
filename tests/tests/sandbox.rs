//! The function box, tested from inside functions with real limits: per-function uids,
//! private `/tmp`, read-only code, memory and pids limits from cgroups, and nothing
//! an instance started surviving its timeout.
//!
//! These tests need what the worker reports as `on` in its sandbox (root, cgroups,
//! mount namespaces — this machine and CI have them); each first checks the report
//! and fails, naming the protection, when one is off.

use std::time::{Duration, Instant};

use nimbus_tests::*;
use serde_json::{Value, json};

/// A value no other run shares (nanoseconds since the epoch).
fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Fails unless every protection the tests below rely on is on.
/// Asserts the worker reports the whole box; returns the cluster call's document.
async fn require_box(cluster: &Cluster) -> Value {
    // The gateway lists a worker once it has heard its first heartbeat.
    let doc: Value = eventually(
        Duration::from_secs(10),
        "a worker in the cluster call",
        || async {
            let doc = cluster.get_json("/nimbus/v1/cluster").await?;
            (!doc["workers"].as_array()?.is_empty()).then_some(doc)
        },
    )
    .await;
    let sandbox = &doc["workers"][0]["sandbox"];
    for p in ["uid", "cgroup", "mount_namespace", "pid_namespace"] {
        let state = sandbox[p].as_str().unwrap_or("missing");
        assert!(
            state.starts_with("on"),
            "sandbox protection {p} is {state}: {doc}"
        );
    }
    doc
}

/// Deploys the probe (`app.probe_box`: what a function sees of its box) as `name`.
async fn create_probe(cluster: &Cluster, name: &str, config: Value) {
    cluster
        .create_function(name, "python3.12", "app.probe_box", &python_zip(), config)
        .await;
}

/// Processes on the host owned by `uid`.
fn processes_of(uid: u64) -> Vec<u32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        if status.contains("State:\tZ") {
            continue; // dead, waiting for its new parent to reap it
        }
        let owner = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
        if owner == Some(uid) {
            out.push(pid);
        }
    }
    out
}

#[tokio::test]
async fn functions_cannot_see_each_other_or_the_worker() {
    let _serial = SERIAL.lock().await;
    let worker_secret = format!("worker-secret-{}", unique());
    let cluster = Cluster::start(ClusterOpts {
        env: vec![("NIMBUS_TEST_SECRET".into(), worker_secret.clone())],
        ..Default::default()
    })
    .await;
    require_box(&cluster).await;
    let keeper_secret = format!("keeper-secret-{}", unique());
    let prober_secret = format!("prober-secret-{}", unique());
    for (name, secret) in [("keeper", &keeper_secret), ("prober", &prober_secret)] {
        create_probe(
            &cluster,
            name,
            json!({"Environment": {"Variables": {"SECRET": secret}}}),
        )
        .await;
    }
    // The keeper writes a file into its /tmp and stays warm (its process, with its
    // secret in its environment, lives on).
    let keeper = cluster
        .invoke("keeper", &json!({"write_tmp": "keeper.txt"}))
        .await
        .json();
    let again = cluster.invoke("keeper", &json!({})).await.json();
    assert!(
        again["tmp"]
            .as_array()
            .unwrap()
            .contains(&json!("keeper.txt")),
        "a warm instance keeps its own /tmp: {again}"
    );
    // That /tmp is the box's own: the worker made no scratch directory for the
    // instance on the host.
    let scratch: Vec<String> = std::fs::read_dir(cluster.data.path().join("worker-1/instances"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        scratch.iter().all(|n| !n.starts_with("keeper-")),
        "a scratch directory on the host: {scratch:?}"
    );

    let prober = cluster
        .invoke(
            "prober",
            &json!({
                "secrets": [worker_secret, keeper_secret],
                "own": prober_secret,
            }),
        )
        .await
        .json();
    // The scan works (it sees its own environment) and finds no one else's.
    assert_eq!(prober["own_visible"], true, "{prober}");
    assert!(prober["readable_environs"].as_u64().unwrap() >= 1);
    assert_eq!(prober["found"], json!([]), "secrets leaked: {prober}");
    assert!(
        !prober["tmp"]
            .as_array()
            .unwrap()
            .contains(&json!("keeper.txt")),
        "another function's /tmp is visible: {prober}"
    );
    // Never root, one uid per function, no extra groups.
    let (pu, ku) = (
        prober["uid"].as_u64().unwrap(),
        keeper["uid"].as_u64().unwrap(),
    );
    assert!(pu >= 1_000_000 && ku >= 1_000_000, "{prober} {keeper}");
    assert_ne!(pu, ku, "two functions share a uid");
    assert_eq!(prober["gid"], prober["uid"]);
    assert_eq!(prober["groups"], json!([]), "{prober}");
    // Its own pid namespace: the runtime is pid 2 under the box's init, and no
    // other process (the worker, the warm keeper) is there to see.
    assert_eq!(prober["pid"], 2, "{prober}");
    assert_eq!(prober["ppid"], 1, "{prober}");
    assert_eq!(prober["pids"], json!([1, 2]), "{prober}");
    // The code is read-only, where Lambda puts it.
    assert_eq!(prober["task_root"], "/var/task");
    let code_write = prober["code_write"].as_str().unwrap();
    assert!(
        code_write.contains("Read-only file system"),
        "writing the code directory: {code_write}"
    );
    cluster.stop();
}

#[tokio::test]
async fn memory_limit_ends_the_invocation_not_the_worker() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(ClusterOpts::default()).await;
    require_box(&cluster).await;
    cluster
        .create_function(
            "hog",
            "python3.12",
            "app.hold_memory",
            &python_zip(),
            json!({"MemorySize": 128}),
        )
        .await;
    let r = cluster
        .invoke_raw(
            "hog",
            br#"{"mb": 1024}"#.to_vec(),
            &[("X-Amz-Log-Type", "Tail")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("X-Amz-Function-Error").as_deref(),
        Some("Unhandled")
    );
    let doc = r.json();
    assert_eq!(doc["errorType"], "Runtime.OutOfMemory", "{doc}");
    let log = r.log_tail();
    assert!(log.contains("Runtime.OutOfMemory"), "{log}");
    let report = log.lines().find(|l| l.starts_with("REPORT")).unwrap();
    assert!(report.contains("Memory Size: 128 MB"), "{report}");
    // The next invocation gets a fresh instance and works.
    let r = cluster.invoke("hog", &json!({"mb": 20})).await;
    assert_eq!(r.status, 200);
    assert!(r.header("X-Amz-Function-Error").is_none(), "{}", r.text());
    assert_eq!(r.json()["held_mb"], 20);
    cluster.stop();
}

#[tokio::test]
async fn fork_bomb_stops_at_the_pids_limit_and_dies_with_the_timeout() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(ClusterOpts::default()).await;
    require_box(&cluster).await;
    let mark = cluster.mark_file("bomb.json");
    cluster
        .create_function(
            "bomb",
            "python3.12",
            "app.fork_bomb",
            &python_zip(),
            json!({"MemorySize": 1024, "Timeout": 8,
                   "Environment": {"Variables": {"MARK_FILE": mark.to_str().unwrap()}}}),
        )
        .await;
    let r = cluster.invoke("bomb", &json!({})).await;
    assert!(r.text().contains("Task timed out"), "{}", r.text());
    let ended = Instant::now();
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&mark).unwrap()).unwrap();
    let forked = doc["forked"].as_u64().unwrap();
    assert!(
        (100..1024).contains(&forked),
        "forked {forked} children before the limit: {doc}"
    );
    assert!(
        doc["error"]
            .as_str()
            .unwrap_or_default()
            .contains("Resource temporarily unavailable"),
        "{doc}"
    );
    let uid = doc["uid"].as_u64().unwrap();
    // Every process of the function is gone within 2 s of the timeout.
    loop {
        let left = processes_of(uid);
        if left.is_empty() {
            break;
        }
        assert!(
            ended.elapsed() < Duration::from_secs(2),
            "{} processes of uid {uid} outlived the timeout by 2 s",
            left.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The worker is fine.
    cluster
        .create_function("after", "python3.12", "app.noop", &python_zip(), json!({}))
        .await;
    assert_eq!(cluster.invoke("after", &json!({})).await.status, 200);
    cluster.stop();
}

#[tokio::test]
async fn setsid_and_double_forked_daemons_die_with_the_timeout() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(ClusterOpts::default()).await;
    require_box(&cluster).await;
    let mark = cluster.mark_file("daemons.json");
    cluster
        .create_function(
            "daemons",
            "python3.12",
            "app.daemons",
            &python_zip(),
            json!({"Timeout": 3,
                   "Environment": {"Variables": {"MARK_FILE": mark.to_str().unwrap()}}}),
        )
        .await;
    let invoke = {
        let http = cluster.http.clone();
        let url = cluster.url("/2015-03-31/functions/daemons/invocations");
        tokio::spawn(async move { http.post(url).body("{}").send().await.unwrap().text().await })
    };
    // The pids the function sees are its namespace's; the host knows the
    // processes by the function's uid.
    let doc: Value = eventually(Duration::from_secs(20), "daemon pids", || async {
        serde_json::from_str(&std::fs::read_to_string(&mark).ok()?).ok()
    })
    .await;
    assert_eq!(doc["pids"].as_array().map(Vec::len), Some(2), "{doc}");
    let uid = doc["uid"].as_u64().unwrap();
    let running = processes_of(uid);
    // The runtime, the setsid daemon and the double-forked grandchild at least.
    assert!(running.len() >= 3, "daemons running: {running:?}");
    let body = invoke.await.unwrap().unwrap();
    assert!(body.contains("Task timed out"), "{body}");
    let ended = Instant::now();
    while !processes_of(uid).is_empty() {
        assert!(
            ended.elapsed() < Duration::from_secs(2),
            "processes {:?} of uid {uid} outlived the timeout by 2 s",
            processes_of(uid)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.stop();
}

/// The start-up probe works wherever the worker binary lies — under `/tmp` too, which
/// the probe's own private `/tmp` hides (it once failed there, turning the box off).
#[tokio::test]
async fn a_worker_binary_under_tmp_still_gets_its_mounts() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let exe = dir.path().join("nimbus-worker");
    std::fs::copy(bin("nimbus-worker"), &exe).unwrap();
    let mut cmd = std::process::Command::new(&exe);
    cmd.env("RUST_LOG", "info")
        .env("NIMBUS_WORKER_ID", "tmp-probe")
        .env("NIMBUS_DATA_DIR", dir.path().join("data"))
        // Nothing listens there: the probe runs before the bus is needed.
        .env("NIMBUS_NATS_URL", "nats://127.0.0.1:1");
    let mut worker = Proc::spawn_for_test("worker-in-tmp", cmd, dir.path());
    for protection in ["mount_namespace", "pid_namespace"] {
        let needle = format!("protection={protection}");
        let state = eventually(Duration::from_secs(20), "the probe's verdict", || async {
            worker
                .log_text()
                .lines()
                .find(|l| l.contains(&needle))
                .map(str::to_string)
        })
        .await;
        assert!(state.contains("state=on"), "{state}");
    }
    worker.kill();
    // Killed, the worker cannot remove its cgroups (each run left a set on the host):
    // the test does, once the boxes it made ahead have died with it.
    for controller in ["cpu", "freezer", "pids", "memory"] {
        let Some(dir) = own_v1_cgroup(controller).map(|d| d.join("nimbus-tmp-probe")) else {
            continue;
        };
        eventually(
            Duration::from_secs(10),
            "the killed worker's cgroups removed",
            || {
                let dir = dir.clone();
                async move { remove_cgroup_tree(&dir).then_some(()) }
            },
        )
        .await;
    }
}

/// Removes a cgroup directory and those under it, deepest first; true once it is gone
/// (false while a process is still in one).
fn remove_cgroup_tree(dir: &std::path::Path) -> bool {
    if !dir.exists() {
        return true;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    std::fs::remove_dir(dir).is_ok() || !dir.exists()
}

/// `NIMBUS_SANDBOX_NETWORK=isolated`: an instance has loopback only and reaches
/// nothing but its Runtime API (relayed in by the box's init, payloads of any size,
/// warm calls too); a function named in `NIMBUS_SANDBOX_EGRESS` keeps the network.
#[tokio::test]
async fn an_isolated_network_reaches_only_the_runtime_api() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(ClusterOpts {
        env: vec![
            ("NIMBUS_SANDBOX_NETWORK".into(), "isolated".into()),
            ("NIMBUS_SANDBOX_EGRESS".into(), "open".into()),
        ],
        ..Default::default()
    })
    .await;
    let doc = require_box(&cluster).await;
    let net = doc["workers"][0]["sandbox"]["network_namespace"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(net.starts_with("on") && net.contains("open"), "{net}");
    for name in ["closed", "open"] {
        cluster
            .create_function(
                name,
                "python3.12",
                "app.net_probe",
                &python_zip(),
                json!({}),
            )
            .await;
    }
    // The gateway's own port: reachable on the worker's network.
    let port = cluster
        .endpoint
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let probe = json!({"host": "127.0.0.1", "port": port});
    let closed = cluster.invoke("closed", &probe).await;
    assert_eq!(
        closed.status,
        200,
        "{}",
        String::from_utf8_lossy(&closed.body)
    );
    let closed = closed.json();
    assert_eq!(closed["reach"], "ConnectionRefusedError", "{closed}");
    assert_eq!(closed["interfaces"], json!(["lo"]), "{closed}");
    assert_eq!(closed["sys_interfaces"], json!(["lo"]), "{closed}");
    assert_eq!(closed["runtime_api"], "127.0.0.1:9001", "{closed}");
    // Warm calls and a large payload go through the relay as well.
    let blob = "x".repeat(3 << 20);
    for _ in 0..3 {
        let big = cluster
            .invoke(
                "closed",
                &json!({"host": "127.0.0.1", "port": port, "blob": blob}),
            )
            .await;
        assert_eq!(big.status, 200);
        assert_eq!(big.json()["echo"].as_str().map(str::len), Some(blob.len()));
    }
    let open = cluster.invoke("open", &probe).await.json();
    assert_eq!(open["reach"], "connected", "{open}");
    assert_ne!(open["interfaces"], json!(["lo"]), "{open}");
    assert_ne!(open["runtime_api"], "127.0.0.1:9001", "{open}");
    cluster.stop();
}

/// Plain boxes `worker` holds made ahead: the pids of inits with `--await` (and no
/// `--preload`) in their command lines that have not started a function yet — their
/// one child, the namespace's pid 1 made ahead, has no child of its own.
fn waiting_boxes(worker: u32) -> Vec<String> {
    let children = |pid: &str| -> Vec<String> {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .map(|c| c.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    };
    children_with_arg(worker, b"--await")
        .into_iter()
        .filter(|pid| {
            let preloaded = std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"--preload"));
            match children(pid).as_slice() {
                [pid1] => !preloaded && children(pid1).is_empty(),
                _ => false,
            }
        })
        .collect()
}

fn boxes_waiting(worker: u32) -> usize {
    waiting_boxes(worker).len()
}

/// A box made ahead (cgroup `b<n>`, the init waiting for its function), one with
/// Python started ahead in it, and one made at the cold start (`i<n>`, with
/// NIMBUS_SANDBOX_BOXES_AHEAD=0) are the same box: the function's uid, limits,
/// mounts, environment and pid namespace; the worker makes a new box ahead for each
/// one taken. A function setting a variable Python reads only at start gets a
/// plain box.
#[tokio::test]
async fn boxes_made_ahead_match_boxes_made_at_cold_start() {
    let _serial = SERIAL.lock().await;
    for ahead in [2usize, 0] {
        let cluster = Cluster::start(ClusterOpts {
            env: vec![("NIMBUS_SANDBOX_BOXES_AHEAD".into(), ahead.to_string())],
            ..Default::default()
        })
        .await;
        let doc = require_box(&cluster).await;
        let worker = cluster.workers[0].pid().unwrap();
        let pid_ns = doc["workers"][0]["sandbox"]["pid_namespace"].to_string();
        assert!(
            pid_ns.contains(&format!("{ahead} boxes made ahead")),
            "{pid_ns}"
        );
        // (memory, an extra variable, Python started ahead?)
        let cases = [
            (256u64, None, ahead > 0),
            (384, Some(("PYTHONDONTWRITEBYTECODE", "1")), false),
            (512, None, ahead > 0),
        ];
        for (i, (memory, extra, preloaded)) in cases.into_iter().enumerate() {
            if ahead > 0 {
                // The pool is full again (a taken box is replaced).
                eventually(Duration::from_secs(10), "boxes made ahead", || async {
                    (boxes_waiting(worker) == ahead).then_some(())
                })
                .await;
            }
            let name = format!("ahead{ahead}-{i}");
            let mut vars = json!({"MINE": "mine-value"});
            if let Some((k, v)) = extra {
                vars[k] = json!(v);
            }
            create_probe(
                &cluster,
                &name,
                json!({"MemorySize": memory, "Environment": {"Variables": vars}}),
            )
            .await;
            let r = cluster
                .invoke(&name, &json!({"own": "mine-value", "write_tmp": "x"}))
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
            let probe = r.json();
            assert_eq!(probe["preloaded"], preloaded, "{probe}");
            let cgroup = probe["memory_cgroup"].as_str().unwrap_or_default();
            let leaf = cgroup.rsplit('/').next().unwrap_or_default();
            let want = if ahead > 0 { 'b' } else { 'i' };
            assert!(leaf.starts_with(want), "cgroup {cgroup}: {probe}");
            assert_eq!(
                probe["memory_limit"].as_u64(),
                Some(memory * 1024 * 1024),
                "{probe}"
            );
            assert!(probe["uid"].as_u64().unwrap() >= 1_000_000, "{probe}");
            assert_eq!(probe["gid"], probe["uid"], "{probe}");
            assert_eq!(probe["groups"], json!([]), "{probe}");
            assert_eq!(probe["no_new_privs"], "1", "{probe}");
            assert_eq!(probe["cap_eff"], "0000000000000000", "{probe}");
            assert_eq!(probe["pids"], json!([1, 2]), "{probe}");
            assert_eq!(probe["task_root"], "/var/task", "{probe}");
            assert_eq!(probe["cwd"], "/var/task", "{probe}");
            assert_eq!(probe["env_mine"], "mine-value", "{probe}");
            assert_eq!(probe["tmp"], json!(["x"]), "{probe}");
            assert!(
                probe["code_write"].as_str().unwrap().contains("Read-only"),
                "{probe}"
            );
            assert_eq!(probe["own_visible"], true, "{probe}");
            assert_eq!(probe["self_environ_readable"], true, "{probe}");
            // The output pipe reached the box: the log carries the function's output.
            let tail = cluster
                .invoke_raw(&name, b"{}".to_vec(), &[("X-Amz-Log-Type", "Tail")])
                .await
                .log_tail();
            assert!(tail.contains("probe_box ran as 1"), "{tail}");
        }
        if ahead == 0 {
            assert_eq!(boxes_waiting(worker), 0);
        }
        cluster.stop();
    }
}

/// Boxes made ahead, and instances started in them, live on while the worker idles.
/// A box's death signal fires when the *thread* that forked it ends; boxes were once
/// made on the runtime's blocking threads, which end after 10 s idle, and every box
/// and every instance started in one died then (a warm call failing with
/// `Runtime.ExitError`).
#[tokio::test]
async fn boxes_made_ahead_and_their_instances_outlive_an_idle_spell() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(ClusterOpts {
        env: vec![("NIMBUS_SANDBOX_BOXES_AHEAD".into(), "2".into())],
        ..Default::default()
    })
    .await;
    require_box(&cluster).await;
    let worker = cluster.workers[0].pid().unwrap();
    let tail_of = |name: &'static str| {
        let cluster = &cluster;
        async move {
            let r = cluster
                .invoke_raw(name, b"{}".to_vec(), &[("X-Amz-Log-Type", "Tail")])
                .await;
            assert_eq!(r.status, 200, "{name}: {}", r.text());
            r.log_tail()
        }
    };
    // One instance in a box with Python started ahead, one in a plain box.
    create_probe(&cluster, "idle-py", json!({})).await;
    let plain = json!({"Environment": {"Variables": {"PYTHONDONTWRITEBYTECODE": "1"}}});
    create_probe(&cluster, "idle-plain", plain).await;
    for name in ["idle-py", "idle-plain"] {
        let tail = tail_of(name).await;
        assert!(tail.contains("Init Duration"), "{name}: {tail}");
    }
    eventually(Duration::from_secs(10), "boxes made ahead", || async {
        (boxes_waiting(worker) == 2).then_some(())
    })
    .await;
    let mut before = waiting_boxes(worker);
    before.sort();
    // Longer than the runtime keeps an idle blocking thread (10 s).
    tokio::time::sleep(Duration::from_secs(13)).await;
    let mut after = waiting_boxes(worker);
    after.sort();
    assert_eq!(after, before, "the boxes made ahead are not the same");
    // The same instances answer: warm calls, no new start.
    for name in ["idle-py", "idle-plain"] {
        let tail = tail_of(name).await;
        assert!(tail.contains("REPORT"), "{name}: {tail}");
        assert!(
            !tail.contains("Init Duration"),
            "{name} started again: {tail}"
        );
    }
    // And new functions start in the boxes that waited.
    for (i, (vars, preloaded)) in [
        (json!({}), true),
        (json!({"PYTHONDONTWRITEBYTECODE": "1"}), false),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("idle-new-{i}");
        create_probe(&cluster, &name, json!({"Environment": {"Variables": vars}})).await;
        let r = cluster.invoke(&name, &json!({})).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let probe = r.json();
        assert_eq!(probe["preloaded"], preloaded, "{probe}");
        let cgroup = probe["memory_cgroup"].as_str().unwrap_or_default();
        let leaf = cgroup.rsplit('/').next().unwrap_or_default();
        assert!(
            leaf.starts_with('b'),
            "not a box made ahead: {cgroup}: {probe}"
        );
    }
    cluster.stop();
    // Its boxes closed at the stop, the worker left no cgroup behind.
    for controller in ["freezer", "pids", "memory"] {
        let dir = own_v1_cgroup(controller).unwrap().join("nimbus-w1");
        assert!(!dir.exists(), "{} is left behind", dir.display());
    }
}

/// A runtime that cannot start ahead (here a Python that refuses `--await-order`,
/// a moment after it started: a box taken then is still alive) costs no
/// invocation: a preloaded box is handed a function only once its runtime says it
/// waits for one; boxes that died or did not say so in time are dropped, its
/// functions get plain boxes, and after a few such deaths the worker stops
/// preloading.
#[tokio::test]
async fn a_runtime_that_cannot_start_ahead_gets_plain_boxes() {
    let _serial = SERIAL.lock().await;
    use std::os::unix::fs::PermissionsExt;
    let dir = std::path::Path::new("/var/tmp").join(format!("nimbus-python-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let wrapper = dir.join("python3");
    std::fs::write(
        &wrapper,
        "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = --await-order ] && { sleep 0.4; exit 3; }; done\nexec /usr/bin/python3 \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cluster = Cluster::start(ClusterOpts {
        env: vec![("NIMBUS_PYTHON".into(), wrapper.display().to_string())],
        ..Default::default()
    })
    .await;
    require_box(&cluster).await;
    let worker = cluster.workers[0].pid().unwrap();
    for i in 0..4 {
        let name = format!("noahead-{i}");
        create_probe(&cluster, &name, json!({})).await;
        let r = cluster.invoke(&name, &json!({})).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let probe = r.json();
        assert_eq!(probe["preloaded"], false, "{probe}");
        assert_eq!(probe["pids"], json!([1, 2]), "{probe}");
    }
    // No more boxes with the runtime started ahead are made.
    eventually(Duration::from_secs(10), "preloading stopped", || async {
        children_with_arg(worker, b"--preload")
            .is_empty()
            .then_some(())
    })
    .await;
    cluster.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The directory of this process's cgroup in the v1 hierarchy of `controller`.
fn own_v1_cgroup(controller: &str) -> Option<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let root = mounts.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut r = right.split_whitespace();
        (r.next()? == "cgroup" && r.nth(1)?.split(',').any(|o| o == controller))
            .then(|| left.split_whitespace().nth(4).map(std::path::PathBuf::from))?
    })?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
        list.split(',').any(|c| c == controller).then_some(path)
    })?;
    Some(root.join(path.trim_start_matches('/')))
}

/// What a worker killed in the middle of a teardown leaves behind — a process in a
/// frozen cgroup under the worker's own, waiting for a thaw forever — is ended and
/// removed when a worker of the same id starts.
#[tokio::test]
async fn a_worker_ends_what_an_earlier_one_of_its_id_left_frozen() {
    let _serial = SERIAL.lock().await;
    let (Some(freezer), Some(pids)) = (own_v1_cgroup("freezer"), own_v1_cgroup("pids")) else {
        panic!("this test needs the cgroup v1 freezer and pids hierarchies");
    };
    // Every cluster's first worker is `w1`.
    let dirs = [
        freezer.join("nimbus-w1/left-behind"),
        pids.join("nimbus-w1/left-behind"),
    ];
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    let mut leftover = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    for d in &dirs {
        std::fs::write(d.join("cgroup.procs"), leftover.id().to_string()).unwrap();
    }
    std::fs::write(dirs[0].join("freezer.state"), "FROZEN").unwrap();
    // Frozen, a SIGKILL waits.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(leftover.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        leftover.try_wait().unwrap().is_none(),
        "the frozen process died"
    );
    let cluster = Cluster::start(ClusterOpts::default()).await;
    require_box(&cluster).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = leftover.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the leftover still runs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "{status:?}");
    for d in &dirs {
        assert!(!d.exists(), "{} is still there", d.display());
    }
    let log = cluster.workers[0].log_text();
    assert!(
        log.contains("an earlier worker of this id left behind"),
        "{log}"
    );
    // And the worker runs functions as ever.
    cluster
        .create_function(
            "after-leftover",
            "python3.12",
            "app.handler",
            &python_zip(),
            json!({}),
        )
        .await;
    let r = cluster
        .invoke("after-leftover", &json!({"name": "x"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    cluster.stop();
}
