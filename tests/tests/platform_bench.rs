//! A tiny run of the platform benchmark (`./scripts/bench --tiny`: a hundredth of its
//! load) so it keeps working: it exits cleanly (it asserts that no operation failed
//! itself), every figure it reports has samples, and every Event invocation it sent
//! completed. No timing thresholds.

use nimbus_tests::*;
use serde_json::Value;

#[tokio::test]
async fn a_tiny_platform_bench_reports_every_figure() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = std::process::Command::new(bin("platform-bench"))
        .args(["--tiny", "--out"])
        .arg(&json)
        .env("CARGO_MANIFEST_DIR", env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let figures = report.as_object().unwrap();
    for key in [
        "floor_http_c1",
        "floor_nats_c1",
        "floor_nats_placed_c1",
        "floor_runtime_api_c1",
        "floor_warm_c1",
        "floor_spawn_native",
        "floor_spawn_python",
        "async_accept_to_start",
    ] {
        assert!(figures.contains_key(key), "{key} missing: {report}");
    }
    let mut measured = 0;
    for (key, v) in figures {
        if let Some(n) = v.get("n") {
            measured += 1;
            assert!(n.as_u64().unwrap() > 0, "{key} has no samples: {v}");
            assert!(v["p50_ms"].as_f64().unwrap() > 0.0, "{key}: {v}");
            assert!(
                v["p99_ms"].as_f64().unwrap() >= v["p50_ms"].as_f64().unwrap(),
                "{key}: {v}"
            );
        }
    }
    assert!(measured >= 15, "{measured} figures: {report}");
    // Warm calls went straight to a warm instance the gateway knew (the warm-up's
    // cold starts did not: the gateway placed those itself, also straight to a
    // worker).
    let warm = report["sync_calls_warm_direct_share"].as_f64().unwrap();
    assert!(warm > 0.0 && warm < 1.0, "{warm}");
    let direct = report["sync_calls_direct_share"].as_f64().unwrap();
    assert!(direct > warm, "{direct} direct, {warm} warm");
    let events = &report["async_end_to_end"];
    assert!(events["invocations"].as_u64().unwrap() > 0, "{events}");
    assert_eq!(events["completed"], events["invocations"], "{events}");
    // A cold start whose package had to be fetched, and memory per warm instance.
    assert!(
        report["cold_native_fetched"]["n"].as_u64().unwrap() > 0,
        "{report}"
    );
    for key in ["native", "python"] {
        let per = &report[format!("per_warm_instance_{key}")];
        assert!(per["processes_mb"].as_f64().unwrap() > 0.0, "{key}: {per}");
        assert!(per["worker_mb"].as_f64().is_some(), "{key}: {per}");
    }
    for rss in ["rss_idle", "rss_loaded"] {
        for (service, mb) in report[rss].as_object().unwrap() {
            assert!(mb.as_f64().unwrap() > 0.0, "{rss} {service}: {mb}");
        }
    }
    // Each figure is in the printed table too.
    assert!(table.contains("one Runtime API exchange"), "{table}");
}
