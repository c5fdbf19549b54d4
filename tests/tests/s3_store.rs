//! The cluster on an `s3://` code store: a real S3 protocol server (s3s with its
//! filesystem backend) runs in this test process; gateway and workers reach it
//! through `object_store`'s S3 client with SigV4 credentials.

use std::time::Duration;

use base64::Engine;
use nimbus_tests::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_code_store() {
    let _serial = SERIAL.lock().await;
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("code")).unwrap();
    let endpoint = start_s3(root.path()).await;
    let cluster = Cluster::start(ClusterOpts {
        code_store: Some("s3://code/nimbus".into()),
        env: s3_env(&endpoint),
        ..Default::default()
    })
    .await;

    // Inline zip: stored content-addressed in the bucket, under the URL's prefix.
    let zip = python_zip();
    let cfg = cluster
        .create_function("s3fn", "python3.12", "app.handler", &zip, json!({}))
        .await;
    let sha = hex_of_b64(cfg["CodeSha256"].as_str().unwrap());
    let stored = root
        .path()
        .join(format!("code/nimbus/functions/s3fn/{sha}.zip"));
    assert_eq!(std::fs::read(&stored).expect("package in the bucket"), zip);
    let r = cluster.invoke("s3fn", &json!({"name": "s3"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["greeting"], "hello s3");

    // update_function_code through the S3 store: the next invoke runs the new code.
    let v2 = zip_files(&[(
        "app.py",
        b"def handler(e, c):\n    return 'v2 from s3'\n",
        false,
    )]);
    let resp = cluster
        .http
        .put(cluster.url("/2015-03-31/functions/s3fn/code"))
        .json(&json!({"ZipFile": base64::engine::general_purpose::STANDARD.encode(&v2)}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        cluster.invoke("s3fn", &json!({})).await.json(),
        "v2 from s3"
    );

    // Code.S3Bucket/S3Key: an object already in the store.
    let uploaded = zip_files(&[(
        "app.py",
        b"def handler(e, c):\n    return 'from an uploaded object'\n",
        false,
    )]);
    std::fs::create_dir_all(root.path().join("code/nimbus/uploads")).unwrap();
    std::fs::write(root.path().join("code/nimbus/uploads/pkg.zip"), &uploaded).unwrap();
    let resp = cluster
        .http
        .post(cluster.url("/2015-03-31/functions"))
        .json(&json!({"FunctionName": "byref", "Runtime": "python3.12", "Role": "r", "Handler": "app.handler",
                      "Code": {"S3Bucket": "code", "S3Key": "uploads/pkg.zip"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    assert_eq!(
        cluster.invoke("byref", &json!({})).await.json(),
        "from an uploaded object"
    );
    let resp = cluster
        .http
        .post(cluster.url("/2015-03-31/functions"))
        .json(&json!({"FunctionName": "missing", "Runtime": "python3.12", "Role": "r", "Handler": "app.handler",
                      "Code": {"S3Bucket": "code", "S3Key": "uploads/nope.zip"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("NoSuchKey"));

    // A package whose bytes no longer match its recorded SHA-256 is refused by the
    // worker with a named error, and nothing runs.
    // (A package of its own: the worker caches by content, and python_zip() is
    // already cached from the first function.)
    let own = zip_files(&[(
        "app.py",
        b"def handler(e, c):\n    return 'genuine'\n",
        false,
    )]);
    let cfg = cluster
        .create_function(
            "tampered",
            "python3.12",
            "app.handler",
            &own,
            json!({"Description": "x"}),
        )
        .await;
    let sha = hex_of_b64(cfg["CodeSha256"].as_str().unwrap());
    let key = root
        .path()
        .join(format!("code/nimbus/functions/tampered/{sha}.zip"));
    let evil = zip_files(&[(
        "app.py",
        b"def handler(e, c):\n    return 'tampered'\n",
        false,
    )]);
    std::fs::write(&key, &evil).unwrap();
    let r = cluster.invoke("tampered", &json!({})).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(
        r.text().contains("CodeChecksumMismatch")
            && r.text().contains("does not match its recorded SHA-256"),
        "{}",
        r.text()
    );
    // Other functions are unaffected.
    assert_eq!(cluster.invoke("byref", &json!({})).await.status, 200);
    tokio::time::sleep(Duration::from_millis(10)).await;
    cluster.stop();
}

fn hex_of_b64(b64: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
