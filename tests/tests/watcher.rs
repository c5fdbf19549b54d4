//! The bucket watcher: stores that send no notifications (a `file://` directory, an
//! S3 server) still produce object events — created and deleted objects, each once,
//! across schedulers and their restarts.

use std::process::Command;
use std::time::Duration;

use nimbus_tests::*;
use serde_json::{Value, json};

/// (event name, key) of every recorded S3 event.
fn events(path: &std::path::Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| {
            let r = &v["Records"][0];
            (
                r["eventName"].as_str().unwrap_or("").to_string(),
                r["s3"]["object"]["key"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

async fn watch_state_written(nc: &async_nats::Client) -> bool {
    let js = async_nats::jetstream::new(nc.clone());
    let Ok(kv) = js.get_key_value("NIMBUS_WATCH_STATE").await else {
        return false;
    };
    let Ok(keys) = kv.keys().await else {
        return false;
    };
    futures::StreamExt::count(keys).await > 0
}

fn scheduler(cluster: &Cluster, name: &str) -> Proc {
    let mut cmd = Command::new(bin("nimbus-scheduler"));
    cmd.envs(cluster.nats.service_env())
        .env("NIMBUS_WATCH_INTERVAL_MS", "300")
        .env("NIMBUS_DATA_DIR", cluster.data.path().join(name));
    Proc::spawn_for_test(name, cmd, cluster.data.path())
}

#[tokio::test]
async fn file_store_watcher_fires_once_across_restarts() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(ClusterOpts {
        extra_schedulers: 1,
        env: vec![("NIMBUS_WATCH_INTERVAL_MS".into(), "300".into())],
        ..Default::default()
    })
    .await;
    let ep = cluster.endpoint.clone();
    let mark = cluster.mark_file("events.jsonl");
    let watched = cluster.data.path().join("drop-box");
    std::fs::create_dir_all(watched.join("in")).unwrap();
    std::fs::write(watched.join("in/old.txt"), "was here first").unwrap();
    cluster
        .create_function(
            "ingest",
            "python3.12",
            "app.record_event",
            &python_zip(),
            json!({"Environment": {"Variables": {"MARK_FILE": mark.to_str().unwrap()}}}),
        )
        .await;
    let url = format!("file://{}", watched.display());
    let (ok, out) = nimbus(
        &ep,
        &[
            "trigger",
            "add",
            "s3",
            "--function",
            "ingest",
            "--bucket",
            "drop-box",
            "--watch",
            &url,
            "--events",
            "s3:ObjectCreated:*,s3:ObjectRemoved:*",
        ],
    );
    assert!(ok && out.contains("watching"), "{out}");
    let nc = cluster.nats_client().await;
    eventually(Duration::from_secs(20), "the baseline listing", || async {
        watch_state_written(&nc).await.then_some(())
    })
    .await;

    std::fs::write(watched.join("in/new file.txt"), "hello").unwrap();
    std::fs::remove_file(watched.join("in/old.txt")).unwrap();
    let got = eventually(
        Duration::from_secs(20),
        "created and deleted events",
        || async {
            let e = events(&mark);
            (e.len() >= 2).then_some(e)
        },
    )
    .await;
    assert!(
        got.contains(&("ObjectCreated:Put".into(), "in/new+file.txt".into())),
        "{got:?}"
    );
    assert!(
        got.contains(&("ObjectRemoved:Delete".into(), "in/old.txt".into())),
        "{got:?}"
    );

    // Restart every scheduler: nothing fires twice, and the watcher carries on.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(cluster.scheduler.terminate(Duration::from_secs(20)));
    cluster.extra_schedulers[0].kill();
    cluster.scheduler = scheduler(&cluster, "scheduler-again");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        events(&mark).len(),
        2,
        "re-fired after a restart: {:?}",
        events(&mark)
    );
    // An overwrite with new content is a new ObjectCreated:Put.
    std::fs::write(watched.join("in/new file.txt"), "hello again, longer").unwrap();
    eventually(Duration::from_secs(20), "the overwrite event", || async {
        let e = events(&mark);
        (e.len() >= 3).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let e = events(&mark);
    assert_eq!(e.len(), 3, "{e:?}");
    assert_eq!(
        e[2],
        (
            "ObjectCreated:Put".to_string(),
            "in/new+file.txt".to_string()
        )
    );
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_watcher_sees_created_and_deleted_objects() {
    let _serial = SERIAL.lock().await;
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("media/incoming")).unwrap();
    std::fs::write(root.path().join("media/incoming/existing.bin"), b"old").unwrap();
    let endpoint = start_s3(root.path()).await;
    let mut env = s3_env(&endpoint);
    env.push(("NIMBUS_WATCH_INTERVAL_MS".into(), "300".into()));
    let cluster = Cluster::start(ClusterOpts {
        env,
        ..Default::default()
    })
    .await;
    let ep = cluster.endpoint.clone();
    let mark = cluster.mark_file("events.jsonl");
    cluster
        .create_function(
            "ingest",
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
            "ingest",
            "--bucket",
            "media",
            "--prefix",
            "incoming/",
            "--watch",
            "s3://media/incoming",
        ],
    );
    assert!(ok, "{out}");
    let nc = cluster.nats_client().await;
    eventually(Duration::from_secs(20), "the baseline listing", || async {
        watch_state_written(&nc).await.then_some(())
    })
    .await;
    std::fs::write(root.path().join("media/incoming/fresh.bin"), b"new object").unwrap();
    std::fs::remove_file(root.path().join("media/incoming/existing.bin")).unwrap();
    let got = eventually(Duration::from_secs(20), "S3 watcher events", || async {
        let e = events(&mark);
        (e.len() >= 2).then_some(e)
    })
    .await;
    assert!(
        got.contains(&("ObjectCreated:Put".into(), "incoming/fresh.bin".into())),
        "{got:?}"
    );
    assert!(
        got.contains(&(
            "ObjectRemoved:Delete".into(),
            "incoming/existing.bin".into()
        )),
        "{got:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(events(&mark).len(), 2, "{:?}", events(&mark));
    cluster.stop();
}
