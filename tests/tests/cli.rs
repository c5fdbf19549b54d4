//! The `nimbus` command against a live cluster, the way a user drives it.

use std::process::Command;

use nimbus_tests::*;

#[tokio::test]
async fn deploy_invoke_list_logs_remove() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(ClusterOpts::default()).await;
    let ep = cluster.endpoint.clone();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("python/app.py"), dir.path().join("app.py")).unwrap();
    let code = dir.path().to_str().unwrap();

    let (ok, out, err) = nimbus_split(
        &ep,
        &[
            "deploy",
            "hello",
            "--runtime",
            "python3.12",
            "--handler",
            "app.handler",
            "--code",
            code,
            "--env",
            "GREETING=from cli",
        ],
    );
    assert!(ok, "deploy failed: {out}{err}");
    assert!(out.contains("created hello"), "{out}");

    let (ok, out, err) = nimbus_split(&ep, &["invoke", "hello", "--payload", r#"{"name":"ada"}"#]);
    assert!(ok, "invoke failed: {out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["greeting"], "hello ada");
    assert_eq!(v["env"], "from cli");
    assert_eq!(v["count"], 1);
    let (_, out, _) = nimbus_split(&ep, &["invoke", "hello"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["count"], 2, "warm instance reused");

    // Redeploy (update path): new code, same name.
    std::fs::write(
        dir.path().join("app.py"),
        "def handler(e, c):\n    print('v2 here')\n    return 'v2'\n",
    )
    .unwrap();
    let (ok, out, err) = nimbus_split(
        &ep,
        &[
            "deploy",
            "hello",
            "--runtime",
            "python3.12",
            "--handler",
            "app.handler",
            "--code",
            code,
        ],
    );
    assert!(ok && out.contains("updated hello"), "{out}{err}");
    let (ok, out, _) = nimbus_split(&ep, &["invoke", "hello"]);
    assert!(ok);
    assert_eq!(out.trim(), "\"v2\"");

    let (ok, out, _) = nimbus_split(&ep, &["ls"]);
    assert!(
        ok && out
            .lines()
            .any(|l| l.starts_with("hello ") && l.contains("python3.12")),
        "{out}"
    );

    // Log records reach the stream in batches, a moment after their call
    // (`log_shipper::LINGER`): the last call's may not be there yet.
    let (ok, out, err) = eventually(
        std::time::Duration::from_secs(10),
        "the last call's log record",
        || async {
            let (ok, out, err) = nimbus_split(&ep, &["logs", "hello"]);
            (!ok || out.contains("v2 here")).then_some((ok, out, err))
        },
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("hello from hello count 1"), "{out}");
    assert!(out.contains("v2 here"), "{out}");
    assert!(
        out.contains("REPORT RequestId:") && out.contains("Max Memory Used:"),
        "{out}"
    );

    // Custom runtimes through the CLI: a directory with a bash bootstrap, and a zip
    // holding a Rust lambda_runtime binary.
    let (ok, out, err) = nimbus_split(
        &ep,
        &[
            "deploy",
            "sh",
            "--runtime",
            "provided.al2023",
            "--code",
            fixture("shell").to_str().unwrap(),
            "--env",
            "MY_VAR=cli",
        ],
    );
    assert!(ok, "{out}{err}");
    let (ok, out, err) = nimbus_split(&ep, &["invoke", "sh", "--payload", r#"{"via":"cli"}"#]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"shell": true, "var": "cli", "event": {"via": "cli"}})
    );
    let zips = tempfile::tempdir().unwrap();
    let rust_zip_path = zips.path().join("rust.zip");
    std::fs::write(&rust_zip_path, rust_zip()).unwrap();
    let (ok, out, err) = nimbus_split(
        &ep,
        &[
            "deploy",
            "rs",
            "--runtime",
            "provided.al2023",
            "--code",
            rust_zip_path.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}{err}");
    let (ok, out, err) = nimbus_split(&ep, &["invoke", "rs", "--payload", r#"{"via":"cli"}"#]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["rust"], true);
    assert_eq!(v["event"]["via"], "cli");

    // A function error: printed, exit status 1.
    let (ok, out, err) = nimbus_split(
        &ep,
        &[
            "deploy",
            "failing",
            "--runtime",
            "python3.12",
            "--handler",
            "app.fail",
            "--code",
            fixture("python").to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}{err}");
    let (ok, out, err) = nimbus_split(&ep, &["invoke", "failing"]);
    assert!(!ok);
    assert!(
        out.contains("ValueError") && err.contains("function error"),
        "{out}{err}"
    );

    let (ok, out, _) = nimbus_split(&ep, &["rm", "hello"]);
    assert!(ok && out.contains("deleted hello"));
    let (ok, _, err) = nimbus_split(&ep, &["invoke", "hello"]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "one-line error: {err}");
    assert!(err.contains("ResourceNotFoundException"), "{err}");

    // Logs survive a gateway restart (they live in NATS, not the gateway).
    let mut cluster = cluster;
    assert!(
        cluster
            .gateway
            .terminate(std::time::Duration::from_secs(10))
    );
    let addr_file = cluster.data.path().join("gateway2.addr");
    let mut cmd = Command::new(bin("nimbus-gateway"));
    cmd.envs(cluster.nats.service_env())
        .env("NIMBUS_CODE_STORE", &cluster.code_store)
        .env("NIMBUS_DATA_DIR", cluster.data.path().join("gateway"))
        .env("NIMBUS_GATEWAY_ADDR", "127.0.0.1:0")
        .env("NIMBUS_ADDR_FILE", &addr_file)
        .env("NIMBUS_ACCESS_KEYS", test_access_keys());
    cluster.gateway = Proc::spawn_for_test("gateway2", cmd, cluster.data.path());
    let addr = eventually(
        std::time::Duration::from_secs(20),
        "restarted gateway",
        || async { std::fs::read_to_string(&addr_file).ok() },
    )
    .await;
    let ep2 = format!("http://{addr}");
    let (ok, out, err) = nimbus_split(&ep2, &["logs", "failing"]);
    assert!(ok, "{err}");
    assert!(out.contains("about to fail"), "{out}");
    cluster.stop();
}

#[tokio::test]
async fn unreachable_cluster_is_one_clear_line() {
    let _serial = SERIAL.lock().await;
    let (ok, out, err) = nimbus_split("http://127.0.0.1:9", &["ls"]);
    assert!(!ok);
    assert!(out.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot reach the Nimbus gateway at http://127.0.0.1:9"),
        "{err}"
    );
}
