//! HTTP routes and function URLs: requests arrive as API Gateway HTTP API v2 events and
//! results map back to HTTP.

use nimbus_tests::*;
use serde_json::{Value, json};

#[tokio::test]
async fn routes_and_function_urls() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(ClusterOpts::default()).await;
    let ep = cluster.endpoint.clone();
    cluster
        .create_function("web", "python3.12", "app.web", &python_zip(), json!({}))
        .await;

    let (ok, out) = nimbus(
        &ep,
        &[
            "route",
            "add",
            "--method",
            "GET",
            "--path",
            "/hello/{name}",
            "--function",
            "web",
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = nimbus(
        &ep,
        &[
            "route",
            "add",
            "--method",
            "POST",
            "--path",
            "/upload/{proxy+}",
            "--function",
            "web",
        ],
    );
    assert!(ok, "{out}");
    for (path, needle) in [
        ("/nimbus/v1/x", "reserved"),
        ("/2015-03-31/functions", "reserved"),
        ("/metrics", "reserved"),
        ("no-slash", "must start with /"),
    ] {
        let (ok, out) = nimbus(
            &ep,
            &[
                "route",
                "add",
                "--method",
                "GET",
                "--path",
                path,
                "--function",
                "web",
            ],
        );
        assert!(!ok && out.contains(needle), "{path}: {out}");
    }
    let (ok, out) = nimbus(
        &ep,
        &[
            "route",
            "add",
            "--method",
            "GET",
            "--path",
            "/hello/{name}",
            "--function",
            "web",
        ],
    );
    assert!(!ok && out.contains("exists"), "{out}");
    let (ok, out) = nimbus(&ep, &["route", "ls"]);
    assert!(
        ok && out.contains("/hello/{name}") && out.contains("/upload/{proxy+}"),
        "{out}"
    );

    // GET /hello/ada?x=1&x=2 with cookies.
    let resp = cluster
        .http
        .get(cluster.url("/hello/ada?x=1&x=2&y=z"))
        .header("Cookie", "a=1; b=2")
        .header("X-Custom", "v")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-nimbus-test"], "yes");
    let cookies: Vec<_> = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(cookies, ["session=abc; Path=/", "theme=dark"]);
    let ev = resp.json::<Value>().await.unwrap()["event"].clone();
    assert_eq!(ev["version"], "2.0");
    assert_eq!(ev["routeKey"], "GET /hello/{name}");
    assert_eq!(ev["rawPath"], "/hello/ada");
    assert_eq!(ev["rawQueryString"], "x=1&x=2&y=z");
    assert_eq!(ev["queryStringParameters"], json!({"x": "1,2", "y": "z"}));
    assert_eq!(ev["pathParameters"], json!({"name": "ada"}));
    assert_eq!(ev["cookies"], json!(["a=1", "b=2"]));
    assert_eq!(ev["headers"]["x-custom"], "v");
    assert!(ev["headers"].get("cookie").is_none());
    assert_eq!(ev["requestContext"]["http"]["method"], "GET");
    assert_eq!(ev["requestContext"]["http"]["path"], "/hello/ada");
    assert_eq!(ev["requestContext"]["http"]["sourceIp"], "127.0.0.1");
    assert_eq!(ev["requestContext"]["stage"], "$default");
    assert_eq!(ev["isBase64Encoded"], false);
    assert!(ev.get("body").is_none());

    // A binary body arrives base64-encoded; a text one as text; greedy paths.
    let resp = cluster
        .http
        .post(cluster.url("/upload/a/b/c.bin"))
        .header("Content-Type", "application/octet-stream")
        .body(vec![0u8, 159, 146, 150])
        .send()
        .await
        .unwrap();
    let ev = resp.json::<Value>().await.unwrap()["event"].clone();
    assert_eq!(ev["pathParameters"]["proxy"], "a/b/c.bin");
    assert_eq!(ev["isBase64Encoded"], true);
    assert_eq!(ev["body"], "AJ+Slg==");
    let resp = cluster
        .http
        .post(cluster.url("/upload/t"))
        .header("Content-Type", "text/plain")
        .body("héllo")
        .send()
        .await
        .unwrap();
    let ev = resp.json::<Value>().await.unwrap()["event"].clone();
    assert_eq!(ev["body"], "héllo");
    assert_eq!(ev["isBase64Encoded"], false);

    // Method and path mismatches are 404; a bare result is 200 JSON; errors are 502.
    assert_eq!(
        cluster
            .http
            .delete(cluster.url("/hello/ada"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        cluster
            .http
            .get(cluster.url("/nowhere"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let resp = cluster
        .http
        .get(cluster.url("/hello/x?bare=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.json::<Value>().await.unwrap()["bare"], true);
    let resp = cluster
        .http
        .get(cluster.url("/hello/x?fail=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["message"],
        "Internal Server Error"
    );
    let resp = cluster
        .http
        .get(cluster.url("/hello/x?binary=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    assert_eq!(resp.bytes().await.unwrap().to_vec(), vec![0u8, 1, 2]);
    // The gateway's own API is untouched by routes.
    assert_eq!(
        cluster
            .http
            .get(cluster.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Function URL.
    assert_eq!(
        cluster
            .http
            .get(cluster.url("/fn/web/"))
            .send()
            .await
            .unwrap()
            .status(),
        404,
        "no URL yet"
    );
    let (ok, out) = nimbus(&ep, &["url", "add", "web"]);
    assert!(ok && out.trim() == format!("{ep}/fn/web/"), "{out}");
    let (ok, out) = nimbus(&ep, &["url", "add", "web"]);
    assert!(!ok && out.contains("ResourceConflictException"), "{out}");
    let resp = cluster
        .http
        .get(cluster.url("/fn/web/some/path?bare=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v = resp.json::<Value>().await.unwrap();
    assert_eq!(v["rawPath"], "/some/path");
    assert_eq!(v["routeKey"], "$default");
    let resp = cluster
        .http
        .post(cluster.url("/2021-10-31/functions/web/url"))
        .json(&json!({"AuthType": "BOGUS"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let (ok, _) = nimbus(&ep, &["url", "rm", "web"]);
    assert!(ok);
    assert_eq!(
        cluster
            .http
            .get(cluster.url("/fn/web/x"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // Removing a route stops it.
    let doc: Value = cluster
        .http
        .get(cluster.url("/nimbus/v1/routes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for r in doc["routes"].as_array().unwrap() {
        let (ok, out) = nimbus(&ep, &["route", "rm", r["id"].as_str().unwrap()]);
        assert!(ok, "{out}");
    }
    assert_eq!(
        cluster
            .http
            .get(cluster.url("/hello/ada"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    cluster.stop();
}
