//! S3-style object events: MinIO's NATS envelope on the object-event subject, the
//! plain AWS shape through the gateway webhook, S3's filters on decoded keys, and
//! malformed events that neither crash anything nor block the next good one.

use std::time::Duration;

use nimbus_tests::*;
use serde_json::{Value, json};

fn aws_record(bucket: &str, key: &str, event: &str) -> Value {
    json!({
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2026-11-30T12:00:00.000Z", "eventName": event,
        "userIdentity": {"principalId": "x"}, "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "c",
               "bucket": {"name": bucket, "ownerIdentity": {"principalId": "x"}, "arn": format!("arn:aws:s3:::{bucket}")},
               "object": {"key": key, "size": 1, "eTag": "e", "sequencer": "1"}}
    })
}

/// Keys (decoded as the function sees them in the record) of recorded S3 events.
fn recorded_keys(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            v["Records"][0]["s3"]["object"]["key"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test]
async fn object_events_from_nats_and_webhook() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(ClusterOpts::default()).await;
    let ep = cluster.endpoint.clone();
    let mark = cluster.mark_file("s3.jsonl");
    cluster
        .create_function(
            "thumbs",
            "python3.12",
            "app.record_event",
            &python_zip(),
            json!({"Environment": {"Variables": {"MARK_FILE": mark.to_str().unwrap()}}}),
        )
        .await;
    let (ok, out) = nimbus(
        &ep,
        &[
            "trigger",
            "add",
            "s3",
            "--function",
            "thumbs",
            "--bucket",
            "photos",
            "--prefix",
            "uploads/",
            "--suffix",
            ".jpg",
            "--events",
            "s3:ObjectCreated:*",
        ],
    );
    assert!(ok && out.contains("bucket photos"), "{out}");
    for (args, needle) in [
        (vec!["--bucket", "Bad_Bucket"], "not a valid bucket"),
        (
            vec!["--bucket", "photos", "--events", "ObjectCreated"],
            "not an S3 event name",
        ),
        (vec!["--bucket", "photos", "--watch", "ftp://x/y"], "watch"),
    ] {
        let mut a = vec!["trigger", "add", "s3", "--function", "thumbs"];
        a.extend(args);
        let (ok, out) = nimbus(&ep, &a);
        assert!(!ok && out.contains(needle), "{a:?}: {out}");
    }

    // The webhook answers once the invocation is queued (retry until the scheduler's
    // trigger mirror has the new trigger).
    let webhook = cluster.url("/nimbus/v1/events/s3");
    let good = json!({"Records": [aws_record("photos", "uploads/first.jpg", "ObjectCreated:Put")]});
    eventually(
        Duration::from_secs(20),
        "the webhook to queue an event",
        || async {
            let r: Value = cluster
                .http
                .post(&webhook)
                .json(&good)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (r["queued"] == 1).then_some(())
        },
    )
    .await;
    // Resending the same notification (a sender's retry) queues nothing new.
    let r: Value = cluster
        .http
        .post(&webhook)
        .json(&good)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["queued"], 1, "{r}");

    // Filtered out: wrong suffix, prefix, event, bucket.
    let filtered = json!({"Records": [
        aws_record("photos", "uploads/a.png", "ObjectCreated:Put"),
        aws_record("photos", "other/a.jpg", "ObjectCreated:Put"),
        aws_record("photos", "uploads/a.jpg", "ObjectRemoved:Delete"),
        aws_record("videos", "uploads/a.jpg", "ObjectCreated:Put"),
    ]});
    let r: Value = cluster
        .http
        .post(&webhook)
        .json(&filtered)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["queued"], 0, "{r}");

    // Malformed: refused by the webhook with a reason; published garbage is skipped.
    let resp = cluster
        .http
        .post(&webhook)
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("not JSON"));
    let resp = cluster
        .http
        .post(&webhook)
        .json(&json!({"Records": [{"eventName": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("bucket"));
    let nc = cluster.nats_client().await;
    nc.publish("nimbus.events.s3", "{broken".into())
        .await
        .unwrap();
    nc.publish(
        "nimbus.events.s3",
        serde_json::to_vec(&json!({"Records": 5})).unwrap().into(),
    )
    .await
    .unwrap();

    // MinIO's NATS envelope, as its NATS target publishes it; the key is URL-encoded.
    let minio = std::fs::read(fixture("s3/minio-nats-put.json")).unwrap();
    nc.publish("nimbus.events.s3", minio.into()).await.unwrap();
    nc.flush().await.unwrap();

    let keys = eventually(Duration::from_secs(30), "both events to run", || async {
        let k = recorded_keys(&mark);
        (k.len() >= 2).then_some(k)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let keys_now = recorded_keys(&mark);
    assert_eq!(
        keys_now.len(),
        2,
        "only the matching events ran, once each: {keys_now:?}"
    );
    assert!(keys.contains(&"uploads/first.jpg".to_string()), "{keys:?}");
    assert!(
        keys.contains(&"uploads%2Fmy+cat.jpg".to_string()),
        "{keys:?}"
    );
    // The function got the AWS shape: {"Records": [one record]}.
    let events: Vec<Value> = std::fs::read_to_string(&mark)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for e in &events {
        assert_eq!(e["Records"].as_array().unwrap().len(), 1);
        assert_eq!(e["Records"][0]["s3"]["bucket"]["name"], "photos");
    }
    // The scheduler is still fine and counted the malformed ones.
    assert!(cluster.scheduler.child.is_some());
    cluster.stop();
}
