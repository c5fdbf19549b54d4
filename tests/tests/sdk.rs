//! Unmodified boto3 against a live cluster (tests/py/boto3_suite.py holds the checks).

use nimbus_tests::*;

#[tokio::test]
async fn boto3_lambda_api() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(ClusterOpts::default()).await;
    let out = std::process::Command::new(test_python())
        .arg(workspace_root().join("tests/py/boto3_suite.py"))
        .arg(&cluster.endpoint)
        .arg(workspace_root().join("tests/fixtures"))
        .arg(bin_dir().join("rust-echo-function"))
        .env("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", TEST_SECRET_ACCESS_KEY)
        .output()
        .expect("running python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "boto3 suite failed\n{stdout}\n{stderr}\n--- gateway ---\n{}",
        cluster.gateway.log_text()
    );
    assert!(stdout.contains("boto3 suite passed"), "{stdout}");
    // The Event invocation the suite queued ran: its log record reaches `logs`.
    let logs = eventually(
        std::time::Duration::from_secs(20),
        "the async invocation's log",
        || async {
            let doc = cluster
                .get_json("/nimbus/v1/functions/sdk-hello/logs?limit=50")
                .await?;
            let text = doc["events"].to_string();
            text.contains("hello from sdk-hello").then_some(doc)
        },
    )
    .await;
    assert!(logs["events"].as_array().is_some_and(|e| !e.is_empty()));
    cluster.stop();
}
