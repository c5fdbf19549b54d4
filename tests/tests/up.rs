//! `nimbus up`: the local cluster a user starts with one command. Functions and their
//! code survive a restart on the same data dir; Ctrl-C/SIGTERM stops everything.

use std::process::{Command, Stdio};
use std::time::Duration;

use nimbus_tests::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The CLI as a user runs it after `nimbus up`: no AWS variables or profile, so it
/// signs with the keys `nimbus up` keeps in its data dir.
fn cli(data: &std::path::Path, endpoint: &str, args: &[&str]) -> (bool, String, String) {
    let out = nimbus_cmd(endpoint)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .env("HOME", data)
        .env("NIMBUS_DATA_DIR", data)
        .args(args)
        .output()
        .expect("running nimbus");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `nimbus up` on `data` with the gateway on `gw` and nats-server on `nats`.
fn up_cmd(data: &std::path::Path, gw: u16, nats: u16) -> Command {
    let mut cmd = Command::new(bin("nimbus"));
    cmd.env("NIMBUS_NATS_SERVER", nats_server_bin())
        .args(["up", "--data-dir"])
        .arg(data)
        .args([
            "--gateway-addr",
            &format!("127.0.0.1:{gw}"),
            "--nats-port",
            &nats.to_string(),
        ])
        .stdin(Stdio::null());
    cmd
}

async fn start_up(data: &std::path::Path, gw: u16, nats: u16) -> Proc {
    let mut cmd = up_cmd(data, gw, nats);
    cmd.args(["--workers", "2"]);
    let up = Proc::spawn_for_test("nimbus-up", cmd, data.parent().unwrap());
    let endpoint = format!("http://127.0.0.1:{gw}");
    let client = reqwest::Client::new();
    eventually(Duration::from_secs(30), "nimbus up to serve", || {
        let client = client.clone();
        let endpoint = endpoint.clone();
        async move {
            let r = client
                .get(format!("{endpoint}/healthz"))
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        }
    })
    .await;
    // The endpoint is printed for the user.
    eventually(Duration::from_secs(10), "the endpoint line", || async {
        up.log_text()
            .contains(&format!("endpoint:  {endpoint}"))
            .then_some(())
    })
    .await;
    up
}

/// A port still held (an earlier `nimbus up`'s nats-server, say) stops `nimbus up`
/// at once with a message naming it, before anything starts.
#[tokio::test]
async fn up_refuses_a_port_in_use_and_names_it() {
    let _serial = SERIAL.lock().await;
    let base = tempfile::tempdir().unwrap();
    let data = base.path().join("data");
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = held.local_addr().unwrap().port();
    let free = free_port();
    for (gw, nats, flag) in [(free, busy, "--nats-port"), (busy, free, "--gateway-addr")] {
        let out = up_cmd(&data, gw, nats).output().expect("running nimbus up");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "nimbus up started on a busy port");
        assert!(
            stderr.contains(&format!("127.0.0.1:{busy} is already in use"))
                && stderr.contains(flag),
            "the error names the port and its flag: {stderr}"
        );
        assert!(
            !data.join("nats/nats.conf").exists(),
            "nothing was set up before the check"
        );
    }
    drop(held);
}

#[tokio::test]
async fn up_runs_a_cluster_that_survives_restart() {
    let _serial = SERIAL.lock().await;
    let base = tempfile::tempdir().unwrap();
    let data = base.path().join("data");
    let (gw, nats) = (free_port(), free_port());
    let endpoint = format!("http://127.0.0.1:{gw}");
    let mut up = start_up(&data, gw, nats).await;

    // Its nats-server runs on half the cores, unless the environment says otherwise.
    let nats_server = children_with_arg(
        up.pid().unwrap(),
        nats_server_bin().as_os_str().as_encoded_bytes(),
    );
    assert_eq!(
        nats_server.len(),
        1,
        "nimbus up's nats-server: {nats_server:?}"
    );
    let environ = std::fs::read(format!("/proc/{}/environ", nats_server[0])).unwrap();
    let want = std::env::var("GOMAXPROCS").unwrap_or_else(|_| {
        let cores = std::thread::available_parallelism().unwrap().get();
        (cores / 2).max(1).to_string()
    });
    assert!(
        environ
            .split(|b| *b == 0)
            .any(|v| v == format!("GOMAXPROCS={want}").as_bytes()),
        "nats-server's environment lacks GOMAXPROCS={want}"
    );

    // A key pair was made on first start, printed, and kept (owner-only) in the data dir.
    let creds = std::fs::read_to_string(data.join("credentials")).unwrap();
    let key_id = creds
        .lines()
        .find_map(|l| l.strip_prefix("aws_access_key_id = "))
        .unwrap()
        .to_string();
    assert!(
        up.log_text()
            .contains(&format!("AWS_ACCESS_KEY_ID={key_id}"))
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("credentials"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The bus wants credentials; publishers get theirs in the data dir.
    let publisher = std::fs::read_to_string(data.join("nats/publisher.url")).unwrap();
    assert!(publisher.starts_with("nats://publisher:"), "{publisher}");
    assert!(up.log_text().contains(publisher.trim()));
    // Without them the API refuses.
    let refused = reqwest::get(format!("{endpoint}/2015-03-31/functions"))
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 403);

    let code = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("python/app.py"), code.path().join("app.py")).unwrap();
    // `nimbus up` reports ready only once its workers have: the cluster serves at once.
    let (ok, out, _) = cli(&data, &endpoint, &["status"]);
    assert!(
        ok && out.contains("2 live worker(s)")
            && out.contains("local-1")
            && out.contains("local-2"),
        "{out}"
    );
    let (ok, out, err) = cli(
        &data,
        &endpoint,
        &[
            "deploy",
            "kept",
            "--runtime",
            "python3.12",
            "--handler",
            "app.handler",
            "--code",
            code.path().to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}{err}");
    let out = eventually(Duration::from_secs(10), "the first invoke", || async {
        let (ok, out, _) = cli(
            &data,
            &endpoint,
            &["invoke", "kept", "--payload", r#"{"name":"up"}"#],
        );
        ok.then_some(out)
    })
    .await;
    assert!(out.contains("hello up"), "{out}");

    // The metrics endpoint counts what happened.
    let metrics = reqwest::get(format!("{endpoint}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("nimbus_gateway_requests_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nimbus_gateway_invocations_total"),
        "{metrics}"
    );

    // SIGTERM stops every child and exits cleanly.
    assert!(
        up.terminate(Duration::from_secs(40)),
        "nimbus up did not stop cleanly:\n{}",
        up.log_text()
    );
    assert!(
        up.log_text().contains("worker stopped"),
        "{}",
        up.log_text()
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", gw)).is_err(),
        "gateway still listening"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", nats)).is_err(),
        "nats still listening"
    );

    // Same data dir: the function and its code are still there.
    let mut up = start_up(&data, gw, nats).await;
    let (ok, out, _) = cli(&data, &endpoint, &["ls"]);
    assert!(ok && out.contains("kept"), "{out}");
    let out = eventually(
        Duration::from_secs(10),
        "the invoke after restart",
        || async {
            let (ok, out, _) = cli(
                &data,
                &endpoint,
                &["invoke", "kept", "--payload", r#"{"name":"again"}"#],
            );
            ok.then_some(out)
        },
    )
    .await;
    assert!(out.contains("hello again"), "{out}");
    assert!(up.terminate(Duration::from_secs(40)), "{}", up.log_text());
}

#[tokio::test]
async fn idle_instances_are_reaped_after_keep_alive() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(ClusterOpts {
        env: vec![("NIMBUS_KEEP_ALIVE_SECS".into(), "1".into())],
        ..Default::default()
    })
    .await;
    cluster
        .create_function(
            "brief",
            "python3.12",
            "app.handler",
            &python_zip(),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(
        cluster.invoke("brief", &serde_json::json!({})).await.json()["count"],
        1
    );
    assert_eq!(
        cluster.invoke("brief", &serde_json::json!({})).await.json()["count"],
        2
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = cluster.invoke("brief", &serde_json::json!({})).await;
    assert_eq!(r.json()["count"], 1, "a reaped instance starts cold");
    cluster.stop();
}
