//! Runtimes and the invocation lifecycle: custom `bootstrap`s (bash, Rust
//! `lambda_runtime`), timeouts that kill the whole process group, measured memory,
//! and a warm path that reads no storage.

use std::time::Duration;

use futures::StreamExt;
use nimbus_tests::*;
use serde_json::json;

#[tokio::test]
async fn shell_and_rust_bootstraps() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(ClusterOpts::default()).await;
    cluster
        .create_function(
            "sh",
            "provided.al2023",
            "ignored",
            &shell_zip(),
            json!({"Environment": {"Variables": {"MY_VAR": "from env"}}}),
        )
        .await;
    let r = cluster.invoke("sh", &json!({"k": [1, 2, 3]})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["shell"], true);
    assert_eq!(v["var"], "from env");
    assert_eq!(v["event"], json!({"k": [1, 2, 3]}));
    let r = cluster
        .invoke_raw("sh", b"{\"n\":2}".to_vec(), &[("X-Amz-Log-Type", "Tail")])
        .await;
    assert_eq!(r.json()["event"]["n"], 2);
    let log = r.log_tail();
    assert!(log.contains("shell got "), "{log}");
    assert!(
        !log.contains("Init Duration"),
        "a warm invocation has no Init Duration: {log}"
    );

    cluster
        .create_function("rs", "provided.al2", "bootstrap", &rust_zip(), json!({}))
        .await;
    let r = cluster.invoke("rs", &json!({"hello": "rust"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["rust"], true);
    assert_eq!(v["event"]["hello"], "rust");
    assert_eq!(v["function"], "rs");
    assert_eq!(
        v["request_id"].as_str(),
        r.header("x-amzn-RequestId").as_deref()
    );
    let r = cluster.invoke("rs", &json!({"fail": 1})).await;
    assert_eq!(
        r.header("X-Amz-Function-Error").as_deref(),
        Some("Unhandled")
    );
    assert!(
        r.json()["errorMessage"]
            .as_str()
            .unwrap()
            .contains("asked to fail"),
        "{}",
        r.text()
    );

    // A provided function without a bootstrap fails as a function error, not a crash.
    cluster
        .create_function(
            "nobootstrap",
            "provided.al2023",
            "x",
            &zip_files(&[("README", b"no bootstrap", false)]),
            json!({}),
        )
        .await;
    let r = cluster.invoke("nobootstrap", &json!({})).await;
    assert_eq!(
        r.header("X-Amz-Function-Error").as_deref(),
        Some("Unhandled")
    );
    assert!(r.text().contains("bootstrap"), "{}", r.text());
    cluster.stop();
}

#[tokio::test]
async fn timeout_kills_the_process_group_and_the_next_call_works() {
    let _serial = SERIAL.lock().await;
    // Names the function's child among the host's processes.
    let mark = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let cluster = Cluster::start(ClusterOpts::default()).await;
    cluster
        .create_function(
            "sleepy",
            "python3.12",
            "app.sleepy",
            &python_zip(),
            json!({"Timeout": 2}),
        )
        .await;
    let r = cluster
        .invoke_raw(
            "sleepy",
            serde_json::to_vec(&json!({"mark": mark})).unwrap(),
            &[("X-Amz-Log-Type", "Tail")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("X-Amz-Function-Error").as_deref(),
        Some("Unhandled")
    );
    let err = r.json();
    assert!(
        err["errorMessage"]
            .as_str()
            .unwrap()
            .contains("Task timed out after 2.00 seconds"),
        "{err}"
    );
    let log = r.log_tail();
    let arg = log
        .lines()
        .find_map(|l| l.strip_prefix("child-arg "))
        .unwrap_or_else(|| panic!("no child in {log}"))
        .trim()
        .to_string();
    assert_eq!(arg, format!("300.{mark}"));
    assert!(log.contains("Task timed out after 2.00 seconds"), "{log}");
    // The function's child (a `sleep 300`) is gone with it.
    eventually(
        Duration::from_secs(2),
        "the function's child process to die",
        || async { (!alive_with_arg(&arg)).then_some(()) },
    )
    .await;
    // The next invocation gets a fresh instance and times out the same way (it works).
    cluster
        .create_function(
            "quick",
            "python3.12",
            "app.handler",
            &python_zip(),
            json!({}),
        )
        .await;
    let r = cluster.invoke("quick", &json!({"name": "after"})).await;
    assert_eq!(r.json()["greeting"], "hello after");
    let r = cluster.invoke("sleepy", &json!({})).await;
    assert!(r.text().contains("Task timed out"), "{}", r.text());
    cluster.stop();
}

#[tokio::test]
async fn report_line_measures_memory() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(ClusterOpts::default()).await;
    cluster
        .create_function(
            "mem",
            "python3.12",
            "app.hold_memory",
            &python_zip(),
            json!({"MemorySize": 512}),
        )
        .await;
    let r = cluster
        .invoke_raw(
            "mem",
            br#"{"mb": 100}"#.to_vec(),
            &[("X-Amz-Log-Type", "Tail")],
        )
        .await;
    assert_eq!(r.json()["held_mb"], 100);
    let log = r.log_tail();
    let report = log.lines().find(|l| l.starts_with("REPORT")).unwrap();
    let field = |name: &str| -> f64 {
        report
            .split('\t')
            .find_map(|f| f.trim().strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} missing in {report}"))
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(field("Max Memory Used:") >= 100.0, "{report}");
    assert_eq!(field("Memory Size:"), 512.0);
    assert!(field("Duration:") > 0.0);
    assert!(field("Billed Duration:") >= field("Duration:"));
    assert!(field("Init Duration:") > 0.0, "{report}");
    cluster.stop();
}

/// Log records leave a worker in batches (one stream message per function per
/// flush, not one synced write per invocation), yet every invocation's record is
/// there once, with its START/END/REPORT, and `limit` returns the newest.
#[tokio::test]
async fn logs_keep_every_invocation_once_in_batches() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(ClusterOpts {
        slots: 16,
        ..Default::default()
    })
    .await;
    cluster
        .create_function(
            "chatty",
            "python3.12",
            "app.handler",
            &python_zip(),
            json!({}),
        )
        .await;
    let calls = futures::stream::iter(0..48)
        .map(|i| {
            let cluster = &cluster;
            async move {
                let r = cluster.invoke("chatty", &json!({"name": i})).await;
                assert_eq!(r.status, 200, "{}", r.text());
                r.json()["request_id"].as_str().unwrap().to_string()
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<String>>()
        .await;
    let mut invoked = calls.clone();
    invoked.sort();
    let events = eventually(Duration::from_secs(20), "48 log records", || async {
        let doc = cluster
            .get_json("/nimbus/v1/functions/chatty/logs?limit=1000")
            .await?;
        let events = doc["events"].as_array()?.clone();
        (events.len() >= 48).then_some(events)
    })
    .await;
    let mut logged: Vec<String> = events
        .iter()
        .map(|e| e["requestId"].as_str().unwrap().to_string())
        .collect();
    logged.sort();
    assert_eq!(logged, invoked, "each invocation's record once");
    for e in &events {
        let text = e["message"].as_str().unwrap();
        let id = e["requestId"].as_str().unwrap();
        assert!(text.contains(&format!("START RequestId: {id}")), "{text}");
        assert!(text.contains("hello from chatty"), "{text}");
        assert!(text.contains(&format!("REPORT RequestId: {id}")), "{text}");
    }
    // `limit` gives the newest records, oldest first, as the full list ends.
    let last5 = cluster
        .get_json("/nimbus/v1/functions/chatty/logs?limit=5")
        .await
        .expect("logs");
    let last5: Vec<&serde_json::Value> = last5["events"].as_array().unwrap().iter().collect();
    assert_eq!(last5.len(), 5);
    let tail: Vec<&serde_json::Value> = events[events.len() - 5..].iter().collect();
    assert_eq!(last5, tail);
    // Fewer stream messages than records: 16 calls at a time share flushes.
    let nc = cluster.nats_client().await;
    let js = async_nats::jetstream::new(nc);
    let stream = js.get_stream("NIMBUS_LOGS").await.expect("logs stream");
    let mut subjects = stream
        .info_with_subjects("nimbus.logs.chatty")
        .await
        .expect("stream info");
    let mut messages = 0;
    while let Some(Ok((_, n))) = subjects.next().await {
        messages += n;
    }
    assert!(
        (1..48).contains(&messages),
        "{messages} stream messages for 48 records"
    );
    cluster.stop();
}

#[tokio::test]
async fn warm_invocations_read_no_storage() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(ClusterOpts::default()).await;
    cluster
        .create_function(
            "warm",
            "python3.12",
            "app.handler",
            &python_zip(),
            json!({}),
        )
        .await;
    assert_eq!(cluster.invoke("warm", &json!({})).await.status, 200);
    // Watch every JetStream API call while 100 warm invocations run.
    let nc = cluster.nats_client().await;
    let mut api = nc.subscribe("$JS.API.>").await.unwrap();
    nc.flush().await.unwrap();
    for i in 0..100 {
        let r = cluster.invoke("warm", &json!({"name": i})).await;
        assert_eq!(r.status, 200);
    }
    let mut reads = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(300), api.next()).await {
        let s = msg.subject.to_string();
        // Storage reads: KV gets (direct or message get) and consumer creation.
        if s.starts_with("$JS.API.DIRECT.GET")
            || s.starts_with("$JS.API.STREAM.MSG.GET")
            || s.starts_with("$JS.API.CONSUMER.CREATE")
        {
            reads.push(s);
        }
    }
    assert!(
        reads.is_empty(),
        "storage reads on the warm path: {reads:?}"
    );
    cluster.stop();
}

#[tokio::test]
async fn nodejs_runtime_async_callback_and_errors() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(ClusterOpts::default()).await;
    let esm = std::fs::read(fixture("node/index.mjs")).unwrap();
    let cjs = std::fs::read(fixture("node/legacy.js")).unwrap();
    let zip = zip_files(&[("index.mjs", &esm, false), ("legacy.js", &cjs, false)]);
    cluster
        .create_function(
            "node-hello",
            "nodejs20.x",
            "index.handler",
            &zip,
            json!({"Environment": {"Variables": {"GREETING": "from env"}}, "MemorySize": 256}),
        )
        .await;
    let r = cluster
        .invoke_raw(
            "node-hello",
            br#"{"name":"ada"}"#.to_vec(),
            &[("X-Amz-Log-Type", "Tail")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["greeting"], "hello ada");
    assert_eq!(v["env"], "from env");
    assert_eq!(v["functionName"], "node-hello");
    assert_eq!(v["memory"], "256");
    assert_eq!(v["remainingOk"], true);
    assert_eq!(
        v["requestId"].as_str(),
        r.header("x-amzn-RequestId").as_deref()
    );
    let log = r.log_tail();
    assert!(
        log.contains("node says hi 1") && log.contains("REPORT RequestId:"),
        "{log}"
    );
    assert_eq!(
        cluster.invoke("node-hello", &json!({})).await.json()["count"],
        2,
        "warm instance reused"
    );

    cluster
        .create_function("node-fail", "nodejs22.x", "index.fail", &zip, json!({}))
        .await;
    let r = cluster.invoke("node-fail", &json!({})).await;
    assert_eq!(
        r.header("X-Amz-Function-Error").as_deref(),
        Some("Unhandled")
    );
    let e = r.json();
    assert_eq!(e["errorType"], "OrderError");
    assert_eq!(e["errorMessage"], "no such order");
    assert!(
        e["stackTrace"].as_array().is_some_and(|s| !s.is_empty()),
        "{e}"
    );

    cluster
        .create_function("node-cb", "nodejs18.x", "legacy.handler", &zip, json!({}))
        .await;
    let v = cluster.invoke("node-cb", &json!({"x": 1})).await.json();
    assert_eq!(v, json!({"style": "callback", "got": {"x": 1}}));
    cluster
        .create_function(
            "node-cb-err",
            "nodejs20.x",
            "legacy.broken",
            &zip,
            json!({}),
        )
        .await;
    let r = cluster.invoke("node-cb-err", &json!({})).await;
    assert_eq!(r.json()["errorType"], "TypeError");

    // A missing export is an init error, reported as the invocation's error.
    cluster
        .create_function("node-missing", "nodejs20.x", "index.nope", &zip, json!({}))
        .await;
    let r = cluster.invoke("node-missing", &json!({})).await;
    assert_eq!(
        r.header("X-Amz-Function-Error").as_deref(),
        Some("Unhandled")
    );
    assert_eq!(
        r.json()["errorType"],
        "Runtime.HandlerNotFound",
        "{}",
        r.text()
    );
    cluster.stop();
}

/// The address a service logged as `metrics listening addr=…`.
fn metrics_addr(log: &str) -> Option<String> {
    log.lines()
        .find(|l| l.contains("metrics listening"))
        .and_then(|l| l.split("addr=").nth(1))
        .map(|a| a.split_whitespace().next().unwrap_or("").to_string())
}

#[tokio::test]
async fn scheduler_and_worker_expose_metrics() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(ClusterOpts {
        env: vec![("NIMBUS_METRICS_ADDR".into(), "127.0.0.1:0".into())],
        ..Default::default()
    })
    .await;
    cluster
        .create_function(
            "counted",
            "python3.12",
            "app.handler",
            &python_zip(),
            json!({}),
        )
        .await;
    for _ in 0..2 {
        assert_eq!(cluster.invoke("counted", &json!({})).await.status, 200);
    }
    let worker = metrics_addr(&cluster.workers[0].log_text()).expect("worker metrics address");
    let scheduler = metrics_addr(&cluster.scheduler.log_text()).expect("scheduler metrics address");
    let get = |addr: String, path: &str| {
        let url = format!("http://{addr}{path}");
        let http = cluster.http.clone();
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let health: serde_json::Value =
        serde_json::from_str(&get(worker.clone(), "/healthz").await).unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    for protection in ["uid", "cgroup", "mount_namespace", "pid_namespace"] {
        assert!(health["sandbox"][protection].is_string(), "{health}");
    }
    assert_eq!(
        get(scheduler.clone(), "/healthz").await,
        r#"{"status":"ok"}"#
    );
    let w = get(worker, "/metrics").await;
    assert!(
        w.contains("nimbus_worker_invocations_total{outcome=\"success\"} 2"),
        "{w}"
    );
    assert!(w.contains("nimbus_worker_cold_starts_total 1"), "{w}");
    // The gateway places the cold start itself (the worker's heartbeat shows its
    // free slots); its reply names the worker, so the second call goes straight to
    // that worker's warm instance. No scheduler on either call's path.
    let s = get(scheduler, "/metrics").await;
    assert!(!s.contains("nimbus_scheduler_dispatches_total"), "{s}");
    let g = cluster.gateway_metrics().await;
    for placed in ["any", "warm"] {
        let ran = format!(
            "nimbus_gateway_direct_dispatches_total{{placed=\"{placed}\",result=\"ran\"}} 1"
        );
        assert!(g.contains(&ran), "{ran} in {g}");
    }
    cluster.stop();
}

/// Whether a live (not zombie) process on the host has `arg` among its arguments.
fn alive_with_arg(arg: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let dir = e.path();
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes())
            && std::fs::read_to_string(dir.join("stat")).is_ok_and(|s| !s.contains(") Z "))
    })
}
