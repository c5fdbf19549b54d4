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
    let wrong = std::process::Command::new(bin("nimbus"))
        .env("NIMBUS_ENDPOINT", &cluster.endpoint)
        .env("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID)
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
