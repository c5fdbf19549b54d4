//! The locked front door: SigV4 on the Lambda and native APIs (boto3, the CLI, raw
//! HTTP), open health checks, and function URLs with `AuthType` `AWS_IAM` or `NONE`.

use nimbus_tests::*;
use serde_json::json;

#[tokio::test]
async fn apis_need_a_valid_signature() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(ClusterOpts::default()).await;
    cluster
        .create_function(
            "authed",
            "python3.12",
            "app.handler",
            &python_zip(),
            json!({}),
        )
        .await;

    let out = std::process::Command::new(test_python())
        .arg(workspace_root().join("tests/py/auth_suite.py"))
        .arg(&cluster.endpoint)
        .arg("authed")
        .env("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", TEST_SECRET_ACCESS_KEY)
        .output()
        .expect("running python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "auth suite failed\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("auth suite passed"), "{stdout}");

    // Raw HTTP: the native API is locked too; health checks are not.
    let raw = cluster.http.unsigned();
    let r = raw
        .get(cluster.url("/nimbus/v1/cluster"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(
        r.headers()["x-amzn-ErrorType"],
        "MissingAuthenticationTokenException"
    );
    let r = raw
        .post(cluster.url("/2015-03-31/functions/authed/invocations"))
        .header("Authorization", "AWS4-HMAC-SHA256 garbage")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(
        r.headers()["x-amzn-ErrorType"],
        "IncompleteSignatureException"
    );
    for open in ["/healthz", "/metrics"] {
        let r = raw.get(cluster.url(open)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{open}");
    }

    // The CLI signs with the usual AWS variables; a wrong secret is named.
    let (ok, out) = nimbus(&cluster.endpoint, &["invoke", "authed"]);
    assert!(ok && out.contains("hello world"), "{out}");
    let wrong = nimbus_cmd(&cluster.endpoint)
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .args(["ls"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success());
    assert!(err.contains("InvalidSignatureException"), "{err}");
    cluster.stop();
}

#[tokio::test]
async fn function_urls_with_aws_iam_need_a_signature() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(ClusterOpts::default()).await;
    for (name, auth) in [("private", "AWS_IAM"), ("public", "NONE")] {
        cluster
            .create_function(name, "python3.12", "app.web", &python_zip(), json!({}))
            .await;
        let r = cluster
            .http
            .post(cluster.url(&format!("/2021-10-31/functions/{name}/url")))
            .json(&json!({ "AuthType": auth }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    }
    let raw = cluster.http.unsigned();
    let r = raw.get(cluster.url("/fn/private/")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(r.text().await.unwrap(), r#"{"message":"Forbidden"}"#);
    let r = raw
        .get(cluster.url("/fn/private/"))
        .header("Authorization", "AWS4-HMAC-SHA256 Credential=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // Signed, it reaches the function (which answers 201).
    let r = cluster
        .http
        .get(cluster.url("/fn/private/hello?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    // NONE needs nothing.
    let r = raw.get(cluster.url("/fn/public/")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    cluster.stop();
}

/// Speaks the NATS protocol by hand: `CONNECT` with `connect`, then `commands`, then
/// `PING`; returns everything the server said until `PONG` or it hung up.
fn nats_raw(url: &str, connect: serde_json::Value, commands: &str) -> String {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("nats://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    out.extend_from_slice(&buf[..n]);
    write!(s, "CONNECT {connect}\r\n{commands}PING\r\n").unwrap();
    while !String::from_utf8_lossy(&out).contains("PONG") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn the_bus_is_closed_to_strangers_and_functions() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(ClusterOpts::default()).await;
    let url = cluster.nats.url.clone();
    // No credentials: refused.
    let anon = nats_raw(&url, json!({"verbose": false}), "");
    assert!(anon.contains("Authorization Violation"), "{anon}");
    // A publisher may fire triggers (any subject but the platform's) and nothing else.
    let publisher = json!({"verbose": false, "user": NATS_PUBLISHER_USER, "pass": cluster.nats.publisher_password});
    let ok = nats_raw(
        &url,
        publisher.clone(),
        "PUB orders.new 2\r\nhi\r\nPUB nimbus.events.s3 2\r\n{}\r\n",
    );
    assert!(ok.contains("PONG") && !ok.contains("-ERR"), "{ok}");
    for (cmd, what) in [
        (
            "PUB nimbus.invoke 2\r\nhi\r\n",
            "Publish to \"nimbus.invoke\"",
        ),
        (
            "PUB nimbus.worker.w1.invoke 2\r\nhi\r\n",
            "Publish to \"nimbus.worker.w1.invoke\"",
        ),
        ("PUB $JS.API.INFO 0\r\n\r\n", "Publish to \"$JS.API.INFO\""),
        ("SUB nimbus.> 1\r\n", "Subscription to \"nimbus.>\""),
    ] {
        let refused = nats_raw(&url, publisher.clone(), cmd);
        assert!(
            refused.contains("Permissions Violation") && refused.contains(what),
            "{cmd}: {refused}"
        );
    }
    // A function on the same host cannot get in either.
    cluster
        .create_function(
            "prober",
            "python3.12",
            "app.nats_probe",
            &python_zip(),
            json!({}),
        )
        .await;
    let (host, port) = url.trim_start_matches("nats://").rsplit_once(':').unwrap();
    let r = cluster
        .invoke("prober", &json!({"host": host, "port": port}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json()["answer"].as_str().unwrap_or_default().to_string();
    assert!(answer.starts_with("INFO"), "{answer}");
    assert!(answer.contains("Authorization Violation"), "{answer}");
    cluster.stop();
}
