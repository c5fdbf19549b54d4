//! A tiny run of `nimbus bench` so it keeps working: every request completes, none
//! fails, every reported figure has samples. No timing thresholds.

use nimbus_tests::*;
use serde_json::{Value, json};

fn bench(endpoint: &str, args: &[&str]) -> Value {
    let out = nimbus_cmd(endpoint)
        .arg("bench")
        .args(args)
        .args(["--output", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn bench_runs_a_few_hundred_invocations() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(ClusterOpts::default()).await;
    cluster
        .create_function("py", "python3.12", "app.handler", &python_zip(), json!({}))
        .await;
    cluster
        .create_function("rs", "provided.al2023", "bootstrap", &rust_zip(), json!({}))
        .await;
    for (f, n, c) in [("py", "300", "8"), ("rs", "300", "4")] {
        let r = bench(
            &cluster.endpoint,
            &[
                f,
                "--requests",
                n,
                "--concurrency",
                c,
                "--payload",
                r#"{"name":"bench"}"#,
            ],
        );
        assert_eq!(r["completed"], 300, "{r}");
        assert_eq!(r["succeeded"], 300, "{r}");
        for kind in ["throttled", "function", "timeout", "transport", "other"] {
            assert_eq!(r["errors"][kind], 0, "{kind}: {r}");
        }
        assert_eq!(r["latency_ms"]["samples"], 300, "{r}");
        for k in ["p50", "p90", "p99", "p99.9", "max", "mean"] {
            assert!(r["latency_ms"][k].as_f64().unwrap() > 0.0, "{k}: {r}");
        }
        assert!(r["throughput_rps"].as_f64().unwrap() > 0.0);
        assert!(
            r["cold_starts"].as_u64().unwrap() >= 1,
            "the first calls start instances: {r}"
        );
    }
    // Event mode: every invocation accepted.
    let r = bench(
        &cluster.endpoint,
        &["py", "--requests", "100", "--concurrency", "4", "--async"],
    );
    assert_eq!(r["succeeded"], 100, "{r}");
    assert_eq!(r["mode"], "Event");
    // A missing function fails like every other command.
    let out = nimbus_cmd(&cluster.endpoint)
        .args(["bench", "ghost", "-n", "5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ResourceNotFoundException"));
    cluster.stop();
}
