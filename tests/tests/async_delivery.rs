//! Lambda's asynchronous delivery contract: retries counted exactly, dead letters with
//! the invocation record, redrive, and destinations (a NATS subject, another function).

use std::time::Duration;

use futures::StreamExt;
use nimbus_tests::*;
use serde_json::{Value, json};

async fn put_config(cluster: &Cluster, name: &str, body: Value) -> (u16, Value) {
    let resp = cluster
        .http
        .put(cluster.url(&format!("/2019-09-25/functions/{name}/event-invoke-config")))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get_json(cluster: &Cluster, path: &str) -> Value {
    cluster
        .get_json(path)
        .await
        .unwrap_or_else(|| panic!("GET {path} gave no JSON"))
}

async fn event(cluster: &Cluster, name: &str, payload: Value) {
    let r = cluster
        .invoke_raw(
            name,
            serde_json::to_vec(&payload).unwrap(),
            &[("X-Amz-Invocation-Type", "Event")],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
}

/// How many invocations of `name` printed `needle` (from its log records).
async fn runs(cluster: &Cluster, name: &str, needle: &str) -> usize {
    let doc = get_json(
        cluster,
        &format!("/nimbus/v1/functions/{name}/logs?limit=1000"),
    )
    .await;
    doc["events"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter(|ev| ev["message"].as_str().unwrap_or("").contains(needle))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn retries_dead_letters_redrive_and_destinations() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(ClusterOpts {
        env: vec![("NIMBUS_RETRY_DELAY_MS".into(), "200".into())],
        ..Default::default()
    })
    .await;
    let mark = cluster.mark_file("records.jsonl");
    let env = json!({"Environment": {"Variables": {"MARK_FILE": mark.to_str().unwrap()}}});
    cluster
        .create_function(
            "failing",
            "python3.12",
            "app.fail",
            &python_zip(),
            json!({}),
        )
        .await;
    cluster
        .create_function(
            "recorder",
            "python3.12",
            "app.record_event",
            &python_zip(),
            env,
        )
        .await;
    cluster
        .create_function(
            "fine",
            "python3.12",
            "app.handler",
            &python_zip(),
            json!({}),
        )
        .await;

    // Unconfigured: Lambda's 404.
    let r = cluster
        .http
        .get(cluster.url("/2019-09-25/functions/failing/event-invoke-config"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Bad values and destinations are refused with 400 naming them.
    let (s, body) = put_config(&cluster, "failing", json!({"MaximumRetryAttempts": 3})).await;
    assert_eq!(s, 400, "{body}");
    let (s, body) = put_config(
        &cluster,
        "failing",
        json!({"DestinationConfig": {"OnFailure": {"Destination": "https://example.com/hook"}}}),
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        body.to_string().contains("https://example.com/hook"),
        "{body}"
    );

    // One retry: the function runs exactly twice, then the record is a dead letter.
    let (s, body) = put_config(
        &cluster,
        "failing",
        json!({"MaximumRetryAttempts": 1, "MaximumEventAgeInSeconds": 3600}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["MaximumRetryAttempts"], 1);
    event(&cluster, "failing", json!({"why": "dlq-test"})).await;
    let letters = eventually(Duration::from_secs(30), "a dead letter", || async {
        let doc = get_json(&cluster, "/nimbus/v1/functions/failing/dlq").await;
        let recs = doc["records"].as_array().cloned().unwrap_or_default();
        (!recs.is_empty()).then_some(recs)
    })
    .await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let seq = letters[0]["seq"].as_u64().unwrap();
    let rec = get_json(&cluster, &format!("/nimbus/v1/functions/failing/dlq/{seq}")).await;
    assert_eq!(rec["version"], "1.0");
    assert_eq!(rec["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(rec["requestContext"]["approximateInvokeCount"], 2);
    assert!(
        rec["requestContext"]["functionArn"]
            .as_str()
            .unwrap()
            .ends_with(":function:failing:$LATEST")
    );
    assert_eq!(rec["requestPayload"], json!({"why": "dlq-test"}));
    assert_eq!(rec["responseContext"]["functionError"], "Unhandled");
    assert_eq!(rec["responsePayload"]["errorType"], "ValueError");
    assert_eq!(rec["responsePayload"]["errorMessage"], "boom: dlq-test");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        runs(&cluster, "failing", "about to fail").await,
        2,
        "exactly 1 + 1 retry"
    );

    // The CLI shows and redrives it; the redriven event fails twice more and lands again.
    let (ok, out) = nimbus(&cluster.endpoint, &["dlq", "ls", "failing"]);
    assert!(
        ok && out.contains("RetriesExhausted") && out.contains("boom: dlq-test"),
        "{out}"
    );
    let (ok, out) = nimbus(
        &cluster.endpoint,
        &["dlq", "show", "failing", &seq.to_string()],
    );
    assert!(ok && out.contains("\"approximateInvokeCount\": 2"), "{out}");
    let (ok, out) = nimbus(&cluster.endpoint, &["dlq", "redrive", "failing"]);
    assert!(ok && out.contains("redriven 1"), "{out}");
    let again = eventually(
        Duration::from_secs(30),
        "the redriven dead letter",
        || async {
            let doc = get_json(&cluster, "/nimbus/v1/functions/failing/dlq").await;
            let recs = doc["records"].as_array().cloned().unwrap_or_default();
            recs.into_iter().find(|r| r["seq"].as_u64() != Some(seq))
        },
    )
    .await;
    assert_ne!(again["requestId"], rec["requestContext"]["requestId"]);
    let doc = get_json(&cluster, "/nimbus/v1/functions/failing/dlq").await;
    assert_eq!(
        doc["records"].as_array().unwrap().len(),
        1,
        "the redriven letter was removed: {doc}"
    );
    eventually(Duration::from_secs(5), "4 runs in all", || async {
        (runs(&cluster, "failing", "about to fail").await == 4).then_some(())
    })
    .await;
    let (ok, out) = nimbus(&cluster.endpoint, &["dlq", "purge", "failing"]);
    assert!(ok && out.contains("purged 1"), "{out}");

    // On failure → another function (by ARN), with no retries.
    let arn = "arn:aws:lambda:us-east-1:000000000000:function:recorder";
    let (s, body) = put_config(&cluster, "failing", json!({"MaximumRetryAttempts": 0, "DestinationConfig": {"OnFailure": {"Destination": arn}}})).await;
    assert_eq!(s, 200, "{body}");
    event(&cluster, "failing", json!({"why": "to-recorder"})).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let got: Value = loop {
        let text = std::fs::read_to_string(&mark).unwrap_or_default();
        if let Some(v) = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["requestPayload"]["why"] == "to-recorder")
        {
            break v;
        }
        if std::time::Instant::now() > deadline {
            let logs = get_json(&cluster, "/nimbus/v1/functions/recorder/logs?limit=10").await;
            panic!("no record at the recorder; its file: {text:?}; its logs: {logs}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(got["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(got["requestContext"]["approximateInvokeCount"], 1);
    let doc = get_json(&cluster, "/nimbus/v1/functions/failing/dlq").await;
    assert!(
        doc["records"].as_array().unwrap().is_empty(),
        "with a destination nothing goes to the DLQ: {doc}"
    );

    // On success → a NATS subject.
    let nc = cluster.nats_client().await;
    let mut sub = nc.subscribe("results.fine").await.unwrap();
    nc.flush().await.unwrap();
    let (s, body) = put_config(
        &cluster,
        "fine",
        json!({"DestinationConfig": {"OnSuccess": {"Destination": "nats:results.fine"}}}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    event(&cluster, "fine", json!({"name": "dest"})).await;
    let msg = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("success record")
        .unwrap();
    let rec: Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(rec["requestContext"]["condition"], "Success");
    assert_eq!(rec["responsePayload"]["greeting"], "hello dest");
    assert_eq!(rec["requestPayload"]["name"], "dest");
    // Once: a core subscriber (no stream) does not answer the record like a
    // JetStream ack would, and that once made the scheduler send it again and again
    // (each attempt waited 5 s for an ack).
    let again = tokio::time::timeout(Duration::from_secs(8), sub.next()).await;
    assert!(
        again.is_err(),
        "the record came again: {:?}",
        again
            .ok()
            .flatten()
            .map(|m| String::from_utf8_lossy(&m.payload).to_string())
    );
    // A subject a stream captures gets the record through JetStream, once.
    let js = async_nats::jetstream::new(nc.clone());
    let mut stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "USER_RESULTS".into(),
            subjects: vec!["captured.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let (s, body) = put_config(
        &cluster,
        "fine",
        json!({"DestinationConfig": {"OnSuccess": {"Destination": "nats:captured.ok"}}}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    event(&cluster, "fine", json!({"name": "kept"})).await;
    eventually(
        Duration::from_secs(30),
        "the record in the stream",
        || async {
            let mut st = js.get_stream("USER_RESULTS").await.ok()?;
            let n = st.info().await.ok()?.state.messages;
            (n > 0).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    let kept = stream
        .get_last_raw_message_by_subject("captured.ok")
        .await
        .unwrap();
    let rec: Value = serde_json::from_slice(&kept.payload).unwrap();
    assert_eq!(rec["requestPayload"]["name"], "kept");
    let log = cluster.scheduler.log_text();
    assert!(!log.contains("record not delivered"), "{log}");
    cluster.stop();
}

#[tokio::test]
async fn environment_secrets_stay_out_of_platform_output() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(ClusterOpts {
        env: vec![("NIMBUS_RETRY_DELAY_MS".into(), "100".into())],
        ..Default::default()
    })
    .await;
    let secret = "s3cr3t-value-7f2a9c";
    let env = json!({"Environment": {"Variables": {"DB_PASSWORD": secret}}});
    cluster
        .create_function("leaky", "python3.12", "app.fail", &python_zip(), env)
        .await;
    let (s, _) = put_config(&cluster, "leaky", json!({"MaximumRetryAttempts": 0})).await;
    assert_eq!(s, 200);
    // A synchronous failure, an async failure (dead letter), a timeout-free run.
    let r = cluster.invoke("leaky", &json!({"why": "sync"})).await;
    assert_eq!(
        r.header("X-Amz-Function-Error").as_deref(),
        Some("Unhandled")
    );
    event(&cluster, "leaky", json!({"why": "async"})).await;
    let letters = eventually(Duration::from_secs(30), "the dead letter", || async {
        let doc = get_json(&cluster, "/nimbus/v1/functions/leaky/dlq").await;
        let recs = doc["records"].as_array().cloned().unwrap_or_default();
        (!recs.is_empty()).then_some(recs)
    })
    .await;
    let seq = letters[0]["seq"].as_u64().unwrap();
    let record = get_json(&cluster, &format!("/nimbus/v1/functions/leaky/dlq/{seq}")).await;
    assert!(
        !record.to_string().contains(secret),
        "dead letter leaks the secret: {record}"
    );
    let metrics = cluster.gateway_metrics().await;
    assert!(!metrics.contains(secret));
    // The platform's own logs never carry it (the function's configuration does, of
    // course, and get_function shows it to the owner as Lambda does).
    for p in [&cluster.gateway, &cluster.scheduler, &cluster.workers[0]] {
        assert!(
            !p.log_text().contains(secret),
            "{} logged the secret",
            p.name
        );
    }
    cluster.stop();
}
