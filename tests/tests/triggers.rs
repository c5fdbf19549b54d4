//! NATS triggers: each message on a subject invokes the function once, across several
//! schedulers, with the documented envelope; removal stops it; bad triggers are refused.

use std::time::Duration;

use nimbus_tests::*;
use serde_json::{Value, json};

#[tokio::test]
async fn nats_trigger_invokes_once_per_message() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(ClusterOpts {
        extra_schedulers: 1,
        ..Default::default()
    })
    .await;
    let mark = cluster.mark_file("events.jsonl");
    cluster
        .create_function(
            "recorder",
            "python3.12",
            "app.record_event",
            &python_zip(),
            json!({"Environment": {"Variables": {"MARK_FILE": mark.to_str().unwrap()}}}),
        )
        .await;
    let ep = cluster.endpoint.clone();

    // Refusals: Nimbus's own subjects, bad subjects, unknown functions and types.
    for (args, needle) in [
        (
            vec![
                "trigger",
                "add",
                "nats",
                "--function",
                "recorder",
                "--subject",
                "nimbus.invoke",
            ],
            "reserved",
        ),
        (
            vec![
                "trigger",
                "add",
                "nats",
                "--function",
                "recorder",
                "--subject",
                "a..b",
            ],
            "not a valid NATS subject",
        ),
        (
            vec![
                "trigger",
                "add",
                "nats",
                "--function",
                "ghost",
                "--subject",
                "x.y",
            ],
            "ResourceNotFoundException",
        ),
    ] {
        let (ok, out) = nimbus(&ep, &args);
        assert!(!ok && out.contains(needle), "{args:?}: {out}");
    }

    let (ok, out) = nimbus(
        &ep,
        &[
            "trigger",
            "add",
            "nats",
            "--function",
            "recorder",
            "--subject",
            "orders.>",
        ],
    );
    assert!(ok, "{out}");
    let id = out.split_whitespace().nth(2).unwrap().to_string();
    let (ok, out) = nimbus(&ep, &["trigger", "ls"]);
    assert!(ok && out.contains(&id) && out.contains("orders.>"), "{out}");

    // Core NATS delivers only to live subscribers: probe until the trigger runs.
    let nc = cluster.nats_client().await;
    let mut n = 0;
    eventually(Duration::from_secs(20), "the trigger to start", || {
        n += 1;
        let nc = nc.clone();
        let mark = mark.clone();
        async move {
            nc.publish(
                "orders.probe",
                serde_json::to_vec(&json!({"probe": n})).unwrap().into(),
            )
            .await
            .ok()?;
            nc.flush().await.ok()?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            (!read_jsonl(&mark).is_empty()).then_some(())
        }
    })
    .await;

    // 20 JSON messages, one binary message with headers: each runs exactly once
    // although two schedulers run the trigger.
    for i in 0..20 {
        nc.publish(
            format!("orders.eu.{i}"),
            serde_json::to_vec(&json!({"order": i})).unwrap().into(),
        )
        .await
        .unwrap();
    }
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Order-Source", "test");
    nc.publish_with_headers(
        "orders.binary",
        headers,
        bytes::Bytes::from_static(b"\x00\x01not json"),
    )
    .await
    .unwrap();
    nc.flush().await.unwrap();
    eventually(Duration::from_secs(30), "21 events", || async {
        let r = read_jsonl(&mark);
        (r.iter()
            .filter(|e| {
                e["subject"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("orders.eu.") || s == "orders.binary")
            })
            .count()
            >= 21)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = read_jsonl(&mark);
    for i in 0..20 {
        let hits: Vec<&Value> = all
            .iter()
            .filter(|e| e["subject"] == format!("orders.eu.{i}"))
            .collect();
        assert_eq!(hits.len(), 1, "order {i}: {hits:?}");
        assert_eq!(hits[0]["data"], json!({"order": i}));
        assert_eq!(hits[0]["source"], "nimbus:nats");
        assert_eq!(hits[0]["triggerId"], id.as_str());
    }
    let bin: Vec<&Value> = all
        .iter()
        .filter(|e| e["subject"] == "orders.binary")
        .collect();
    assert_eq!(bin.len(), 1);
    assert_eq!(bin[0]["data"], Value::Null);
    assert_eq!(bin[0]["dataBase64"], "AAFub3QganNvbg==");
    assert_eq!(bin[0]["headers"]["Order-Source"], "test");

    // Removed: later messages invoke nothing.
    let (ok, out) = nimbus(&ep, &["trigger", "rm", &id]);
    assert!(ok, "{out}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nc.publish("orders.after", b"{\"late\":true}".to_vec().into())
        .await
        .unwrap();
    nc.flush().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !read_jsonl(&mark)
            .iter()
            .any(|e| e["subject"] == "orders.after"),
        "a removed trigger still fired"
    );
    let (ok, out) = nimbus(&ep, &["trigger", "rm", &id]);
    assert!(!ok && out.contains("ResourceNotFoundException"), "{out}");
    cluster.stop();
}

#[tokio::test]
async fn stream_trigger_delivers_batches_at_least_once() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(ClusterOpts {
        extra_schedulers: 1,
        ..Default::default()
    })
    .await;
    let mark = cluster.mark_file("batches.jsonl");
    cluster
        .create_function(
            "batcher",
            "python3.12",
            "app.record_event",
            &python_zip(),
            json!({"Environment": {"Variables": {"MARK_FILE": mark.to_str().unwrap()}}}),
        )
        .await;
    let nc = cluster.nats_client().await;
    let js = async_nats::jetstream::new(nc.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "ORDERS".into(),
        subjects: vec!["shop.orders.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    // Published before the trigger exists: a durable consumer still delivers them.
    for i in 0..7 {
        js.publish(
            format!("shop.orders.{i}"),
            serde_json::to_vec(&json!({"n": i})).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let ep = cluster.endpoint.clone();
    let (ok, out) = nimbus(
        &ep,
        &[
            "trigger",
            "add",
            "stream",
            "--function",
            "batcher",
            "--stream",
            "NOPE",
        ],
    );
    assert!(!ok && out.contains("does not exist"), "{out}");
    let (ok, out) = nimbus(
        &ep,
        &[
            "trigger",
            "add",
            "stream",
            "--function",
            "batcher",
            "--stream",
            "ORDERS",
            "--batch-size",
            "5",
            "--batch-window",
            "300ms",
        ],
    );
    assert!(ok, "{out}");
    for i in 7..12 {
        js.publish(
            format!("shop.orders.{i}"),
            serde_json::to_vec(&json!({"n": i})).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let batches = eventually(Duration::from_secs(30), "12 records in batches", || async {
        let b = read_jsonl(&mark);
        let n: usize = b
            .iter()
            .map(|e| e["Records"].as_array().map_or(0, Vec::len))
            .sum();
        (n >= 12).then_some(b)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut seen: Vec<i64> = read_jsonl(&mark)
        .iter()
        .flat_map(|b| b["Records"].as_array().cloned().unwrap_or_default())
        .map(|r| r["data"]["n"].as_i64().unwrap())
        .collect();
    seen.sort();
    assert_eq!(seen, (0..12).collect::<Vec<_>>(), "each message once");
    for b in &batches {
        let recs = b["Records"].as_array().unwrap();
        assert!(
            !recs.is_empty() && recs.len() <= 5,
            "batch of {}",
            recs.len()
        );
        assert_eq!(recs[0]["stream"], "ORDERS");
        assert!(recs[0]["sequence"].as_u64().unwrap() >= 1);
    }
    cluster.stop();
}
