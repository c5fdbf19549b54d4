//! The function commands: deploy, invoke, ls, rm, logs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use base64::Engine;
use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{Client, api_error, is_not_found};

pub struct Deploy {
    pub name: String,
    pub runtime: String,
    pub handler: Option<String>,
    pub code: PathBuf,
    pub timeout: Option<u32>,
    pub memory: Option<u32>,
    pub env: Vec<(String, String)>,
    pub description: Option<String>,
}

pub async fn deploy(client: &Client, d: Deploy) -> anyhow::Result<()> {
    let zip = crate::package::package(&d.code)?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&zip);
    let exists = {
        let resp = client
            .execute(client.request(Method::GET, &format!("/2015-03-31/functions/{}", d.name)))
            .await?;
        if resp.status().is_success() {
            true
        } else if is_not_found(resp.status()) {
            false
        } else {
            return Err(api_error(resp).await);
        }
    };
    let env: BTreeMap<String, String> = d.env.iter().cloned().collect();
    let cfg = if exists {
        upload(
            client,
            Method::PUT,
            &format!("/2015-03-31/functions/{}/code", d.name),
            json!({ "ZipFile": b64 }),
            zip.len(),
        )
        .await?;
        let mut update = json!({ "Runtime": d.runtime });
        if let Some(h) = &d.handler {
            update["Handler"] = json!(h);
        }
        if let Some(t) = d.timeout {
            update["Timeout"] = json!(t);
        }
        if let Some(m) = d.memory {
            update["MemorySize"] = json!(m);
        }
        if !d.env.is_empty() {
            update["Environment"] = json!({ "Variables": env });
        }
        if let Some(desc) = &d.description {
            update["Description"] = json!(desc);
        }
        let resp = client
            .send(
                client
                    .request(
                        Method::PUT,
                        &format!("/2015-03-31/functions/{}/configuration", d.name),
                    )
                    .json(&update),
            )
            .await?;
        resp.json::<Value>().await?
    } else {
        let mut create = json!({
            "FunctionName": d.name,
            "Runtime": d.runtime,
            "Role": "arn:aws:iam::000000000000:role/nimbus",
            "Handler": d.handler.clone().unwrap_or_default(),
            "Code": { "ZipFile": b64 },
            "Environment": { "Variables": env },
        });
        if let Some(t) = d.timeout {
            create["Timeout"] = json!(t);
        }
        if let Some(m) = d.memory {
            create["MemorySize"] = json!(m);
        }
        if let Some(desc) = &d.description {
            create["Description"] = json!(desc);
        }
        upload(
            client,
            Method::POST,
            "/2015-03-31/functions",
            create,
            zip.len(),
        )
        .await?
    };
    println!(
        "{} {} ({}, {} bytes, sha256 {})",
        if exists { "updated" } else { "created" },
        d.name,
        cfg["Runtime"].as_str().unwrap_or(""),
        cfg["CodeSize"],
        cfg["CodeSha256"].as_str().unwrap_or(""),
    );
    Ok(())
}

/// Sends a JSON document in chunks, with a progress bar on a terminal.
async fn upload(
    client: &Client,
    method: Method,
    path: &str,
    doc: Value,
    zip_len: usize,
) -> anyhow::Result<Value> {
    let body = serde_json::to_vec(&doc)?;
    // The body is streamed (for the progress bar): its hash travels ahead of it.
    let hash = nimbus_sigv4::payload_hash(&body);
    let total = body.len() as u64;
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) && zip_len > 64 * 1024 {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "uploading {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let b = bar.clone();
    let chunks: Vec<bytes::Bytes> = bytes::Bytes::from(body)
        .chunks(64 * 1024)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let stream = futures::stream::iter(chunks).map(move |c| {
        b.inc(c.len() as u64);
        Ok::<_, std::io::Error>(c)
    });
    let req = client
        .request(method, path)
        .header("Content-Type", "application/json")
        .header("Content-Length", total)
        .header("x-amz-content-sha256", hash)
        .body(reqwest::Body::wrap_stream(stream));
    let result = client.send(req).await;
    bar.finish_and_clear();
    Ok(result?.json().await?)
}

pub async fn invoke(
    client: &Client,
    name: &str,
    payload: Vec<u8>,
    asynchronous: bool,
    log: bool,
) -> anyhow::Result<bool> {
    let mut req = client
        .request(
            Method::POST,
            &format!("/2015-03-31/functions/{name}/invocations"),
        )
        .header(
            "X-Amz-Invocation-Type",
            if asynchronous {
                "Event"
            } else {
                "RequestResponse"
            },
        )
        .body(payload);
    if log {
        req = req.header("X-Amz-Log-Type", "Tail");
    }
    let resp = client.send(req).await?;
    if asynchronous {
        let id = resp
            .headers()
            .get("x-amzn-RequestId")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        println!("queued {name} (request {id})");
        return Ok(true);
    }
    let function_error = resp.headers().get("X-Amz-Function-Error").is_some();
    if let Some(tail) = resp
        .headers()
        .get("X-Amz-Log-Result")
        .and_then(|v| v.to_str().ok())
        && let Ok(text) = base64::engine::general_purpose::STANDARD.decode(tail)
    {
        eprint!("{}", String::from_utf8_lossy(&text));
    }
    let body = resp.bytes().await?;
    println!("{}", String::from_utf8_lossy(&body));
    if function_error {
        eprintln!("function error (Unhandled)");
    }
    Ok(!function_error)
}

pub async fn list(client: &Client) -> anyhow::Result<()> {
    let mut marker: Option<String> = None;
    let mut rows = Vec::new();
    loop {
        let mut path = "/2015-03-31/functions/?MaxItems=50".to_string();
        if let Some(m) = &marker {
            path.push_str(&format!("&Marker={m}"));
        }
        let doc: Value = client
            .send(client.request(Method::GET, &path))
            .await?
            .json()
            .await?;
        for f in doc["Functions"].as_array().into_iter().flatten() {
            rows.push(format!(
                "{:<32} {:<16} {:>7} {:>7}  {}",
                f["FunctionName"].as_str().unwrap_or(""),
                f["Runtime"].as_str().unwrap_or(""),
                f["MemorySize"].to_string(),
                f["Timeout"].to_string(),
                f["LastModified"].as_str().unwrap_or(""),
            ));
        }
        match doc["NextMarker"].as_str() {
            Some(m) => marker = Some(m.to_string()),
            None => break,
        }
    }
    println!(
        "{:<32} {:<16} {:>7} {:>7}  LAST MODIFIED",
        "NAME", "RUNTIME", "MEMORY", "TIMEOUT"
    );
    for r in rows {
        println!("{r}");
    }
    Ok(())
}

pub async fn status(client: &Client) -> anyhow::Result<()> {
    let doc: Value = client
        .send(client.request(Method::GET, "/nimbus/v1/cluster"))
        .await?
        .json()
        .await?;
    let workers = doc["workers"].as_array().cloned().unwrap_or_default();
    println!(
        "gateway {} is up; {} live worker(s)",
        client.endpoint,
        workers.len()
    );
    if !workers.is_empty() {
        println!(
            "{:<24} {:>6} {:>6} {:>6}  STATE",
            "WORKER", "SLOTS", "BUSY", "WARM"
        );
    }
    for w in workers {
        println!(
            "{:<24} {:>6} {:>6} {:>6}  {}",
            w["id"].as_str().unwrap_or(""),
            w["slots"].to_string(),
            w["busy"].to_string(),
            w["warm"].to_string(),
            if w["draining"] == true {
                "draining"
            } else {
                "ready"
            },
        );
        // Protections a function box lacks on this worker (by-design ones too).
        if let Some(sandbox) = w["sandbox"].as_object() {
            for (name, state) in sandbox {
                if let Some(why) = state.as_str().and_then(|s| s.strip_prefix("off: ")) {
                    println!("  sandbox {name} off: {why}");
                }
            }
        }
    }
    Ok(())
}

pub async fn remove(client: &Client, name: &str) -> anyhow::Result<()> {
    client
        .send(client.request(Method::DELETE, &format!("/2015-03-31/functions/{name}")))
        .await?;
    println!("deleted {name}");
    Ok(())
}

pub async fn logs(client: &Client, name: &str, limit: u32) -> anyhow::Result<()> {
    // Fail like every other command when the function does not exist.
    client
        .send(client.request(
            Method::GET,
            &format!("/2015-03-31/functions/{name}/configuration"),
        ))
        .await?;
    let doc: Value = client
        .send(client.request(
            Method::GET,
            &format!("/nimbus/v1/functions/{name}/logs?limit={limit}"),
        ))
        .await?
        .json()
        .await?;
    for ev in doc["events"].as_array().into_iter().flatten() {
        print!("{}", ev["message"].as_str().unwrap_or(""));
    }
    Ok(())
}

pub fn read_payload(payload: Option<String>, file: Option<PathBuf>) -> anyhow::Result<Vec<u8>> {
    match (payload, file) {
        (Some(_), Some(_)) => bail!("give --payload or --payload-file, not both"),
        (Some(p), None) => Ok(p.into_bytes()),
        (None, Some(f)) => std::fs::read(&f).with_context(|| format!("reading {}", f.display())),
        (None, None) => Ok(b"{}".to_vec()),
    }
}

pub async fn dlq_list(client: &Client, name: &str) -> anyhow::Result<()> {
    let doc: Value = client
        .send(client.request(Method::GET, &format!("/nimbus/v1/functions/{name}/dlq")))
        .await?
        .json()
        .await?;
    let records = doc["records"].as_array().cloned().unwrap_or_default();
    if records.is_empty() {
        println!("no dead letters for {name}");
        return Ok(());
    }
    println!(
        "{:>6}  {:<36}  {:<17} {:>5}  ERROR",
        "SEQ", "REQUEST ID", "CONDITION", "TRIES"
    );
    for r in records {
        println!(
            "{:>6}  {:<36}  {:<17} {:>5}  {}: {}",
            r["seq"].to_string(),
            r["requestId"].as_str().unwrap_or(""),
            r["condition"].as_str().unwrap_or(""),
            r["approximateInvokeCount"].to_string(),
            r["errorType"].as_str().unwrap_or("-"),
            r["errorMessage"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}

pub async fn dlq_show(client: &Client, name: &str, seq: u64) -> anyhow::Result<()> {
    let doc: Value = client
        .send(client.request(
            Method::GET,
            &format!("/nimbus/v1/functions/{name}/dlq/{seq}"),
        ))
        .await?
        .json()
        .await?;
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}

pub async fn dlq_redrive(client: &Client, name: &str) -> anyhow::Result<()> {
    let doc: Value = client
        .send(client.request(
            Method::POST,
            &format!("/nimbus/v1/functions/{name}/dlq/redrive"),
        ))
        .await?
        .json()
        .await?;
    println!("redriven {} dead letter(s) of {name}", doc["redriven"]);
    Ok(())
}

pub async fn dlq_purge(client: &Client, name: &str) -> anyhow::Result<()> {
    let doc: Value = client
        .send(client.request(Method::DELETE, &format!("/nimbus/v1/functions/{name}/dlq")))
        .await?
        .json()
        .await?;
    println!("purged {} dead letter(s) of {name}", doc["purged"]);
    Ok(())
}

pub async fn event_config(
    client: &Client,
    name: &str,
    retries: Option<u32>,
    max_age: Option<u32>,
    on_success: Option<String>,
    on_failure: Option<String>,
) -> anyhow::Result<()> {
    let path = format!("/2019-09-25/functions/{name}/event-invoke-config");
    let doc: Value =
        if retries.is_none() && max_age.is_none() && on_success.is_none() && on_failure.is_none() {
            client
                .send(client.request(Method::GET, &path))
                .await?
                .json()
                .await?
        } else {
            let mut body = json!({});
            if let Some(r) = retries {
                body["MaximumRetryAttempts"] = json!(r);
            }
            if let Some(a) = max_age {
                body["MaximumEventAgeInSeconds"] = json!(a);
            }
            let mut dest = json!({});
            if let Some(d) = on_success {
                dest["OnSuccess"] = json!({ "Destination": d });
            }
            if let Some(d) = on_failure {
                dest["OnFailure"] = json!({ "Destination": d });
            }
            body["DestinationConfig"] = dest;
            // Update merges with what is set; create it first when there is none.
            let resp = client
                .execute(client.request(Method::POST, &path).json(&body))
                .await?;
            if resp.status().is_success() {
                resp.json().await?
            } else if is_not_found(resp.status()) {
                client
                    .send(client.request(Method::PUT, &path).json(&body))
                    .await?
                    .json()
                    .await?
            } else {
                return Err(api_error(resp).await);
            }
        };
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}

pub async fn trigger_add(client: &Client, body: Value) -> anyhow::Result<()> {
    let t: Value = client
        .send(
            client
                .request(Method::POST, "/nimbus/v1/triggers")
                .json(&body),
        )
        .await?
        .json()
        .await?;
    println!(
        "added trigger {} ({} {} -> {})",
        t["id"].as_str().unwrap_or(""),
        t["type"].as_str().unwrap_or(""),
        source_of(&t),
        t["function"].as_str().unwrap_or("")
    );
    Ok(())
}

pub async fn trigger_list(client: &Client, function: Option<&str>) -> anyhow::Result<()> {
    let path = match function {
        Some(f) => format!("/nimbus/v1/triggers?function={f}"),
        None => "/nimbus/v1/triggers".into(),
    };
    let doc: Value = client
        .send(client.request(Method::GET, &path))
        .await?
        .json()
        .await?;
    println!("{:<16} {:<6} {:<32} SOURCE", "ID", "TYPE", "FUNCTION");
    for t in doc["triggers"].as_array().into_iter().flatten() {
        println!(
            "{:<16} {:<6} {:<32} {}",
            t["id"].as_str().unwrap_or(""),
            t["type"].as_str().unwrap_or(""),
            t["function"].as_str().unwrap_or(""),
            source_of(t),
        );
    }
    Ok(())
}

fn source_of(t: &Value) -> String {
    match t["type"].as_str() {
        Some("s3") => {
            let mut s = format!(
                "bucket {} prefix {:?} suffix {:?}",
                t["bucket"].as_str().unwrap_or(""),
                t["prefix"].as_str().unwrap_or(""),
                t["suffix"].as_str().unwrap_or("")
            );
            if let Some(ev) = t["events"].as_array().filter(|e| !e.is_empty()) {
                let names: Vec<&str> = ev.iter().filter_map(Value::as_str).collect();
                s.push_str(&format!(" events {}", names.join(",")));
            }
            if let Some(w) = t["watch"].as_str() {
                s.push_str(&format!(" watching {w}"));
            }
            s
        }
        Some("stream") => format!(
            "stream {} batches of {} / {} ms",
            t["stream"].as_str().unwrap_or(""),
            t["batchSize"],
            t["batchWindowMs"]
        ),
        _ => t["subject"].as_str().unwrap_or("").to_string(),
    }
}

pub async fn trigger_remove(client: &Client, id: &str) -> anyhow::Result<()> {
    client
        .send(client.request(Method::DELETE, &format!("/nimbus/v1/triggers/{id}")))
        .await?;
    println!("removed trigger {id}");
    Ok(())
}

pub async fn schedule_add(client: &Client, body: Value) -> anyhow::Result<()> {
    let s: Value = client
        .send(
            client
                .request(Method::POST, "/nimbus/v1/schedules")
                .json(&body),
        )
        .await?
        .json()
        .await?;
    println!(
        "added schedule {} ({} -> {}), next {}",
        s["name"].as_str().unwrap_or(""),
        s["expression"].as_str().unwrap_or(""),
        s["function"].as_str().unwrap_or(""),
        s["next"].as_str().unwrap_or("never"),
    );
    Ok(())
}

pub async fn schedule_list(client: &Client) -> anyhow::Result<()> {
    let doc: Value = client
        .send(client.request(Method::GET, "/nimbus/v1/schedules"))
        .await?
        .json()
        .await?;
    println!(
        "{:<24} {:<24} {:<28} {:<18} NEXT",
        "NAME", "FUNCTION", "EXPRESSION", "TIMEZONE"
    );
    for s in doc["schedules"].as_array().into_iter().flatten() {
        println!(
            "{:<24} {:<24} {:<28} {:<18} {}",
            s["name"].as_str().unwrap_or(""),
            s["function"].as_str().unwrap_or(""),
            s["expression"].as_str().unwrap_or(""),
            s["timezone"].as_str().unwrap_or(""),
            s["next"].as_str().unwrap_or("never"),
        );
    }
    Ok(())
}

pub async fn schedule_remove(client: &Client, name: &str) -> anyhow::Result<()> {
    client
        .send(client.request(Method::DELETE, &format!("/nimbus/v1/schedules/{name}")))
        .await?;
    println!("removed schedule {name}");
    Ok(())
}

pub async fn schedule_preview(
    client: &Client,
    expression: &str,
    timezone: Option<String>,
    after: Option<String>,
    count: u32,
) -> anyhow::Result<()> {
    let mut query = vec![
        ("expression", expression.to_string()),
        ("count", count.to_string()),
    ];
    if let Some(t) = timezone {
        query.push(("timezone", t));
    }
    if let Some(a) = after {
        query.push(("after", a));
    }
    let doc: Value = client
        .send(
            client
                .request(Method::GET, "/nimbus/v1/schedule-preview")
                .query(&query),
        )
        .await?
        .json()
        .await?;
    for t in doc["times"].as_array().into_iter().flatten() {
        println!("{}", t.as_str().unwrap_or(""));
    }
    Ok(())
}

pub async fn route_add(client: &Client, body: Value) -> anyhow::Result<()> {
    let r: Value = client
        .send(
            client
                .request(Method::POST, "/nimbus/v1/routes")
                .json(&body),
        )
        .await?
        .json()
        .await?;
    println!(
        "added route {} ({} -> {}) at {}{}",
        r["id"].as_str().unwrap_or(""),
        r["routeKey"].as_str().unwrap_or(""),
        r["function"].as_str().unwrap_or(""),
        client.endpoint,
        r["path"].as_str().unwrap_or(""),
    );
    Ok(())
}

pub async fn route_list(client: &Client) -> anyhow::Result<()> {
    let doc: Value = client
        .send(client.request(Method::GET, "/nimbus/v1/routes"))
        .await?
        .json()
        .await?;
    println!("{:<16} {:<8} {:<40} FUNCTION", "ID", "METHOD", "PATH");
    for r in doc["routes"].as_array().into_iter().flatten() {
        println!(
            "{:<16} {:<8} {:<40} {}",
            r["id"].as_str().unwrap_or(""),
            r["method"].as_str().unwrap_or(""),
            r["path"].as_str().unwrap_or(""),
            r["function"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}

pub async fn route_remove(client: &Client, id: &str) -> anyhow::Result<()> {
    client
        .send(client.request(Method::DELETE, &format!("/nimbus/v1/routes/{id}")))
        .await?;
    println!("removed route {id}");
    Ok(())
}

pub async fn url(client: &Client, name: &str, method: Method) -> anyhow::Result<()> {
    let path = format!("/2021-10-31/functions/{name}/url");
    let req = client.request(method.clone(), &path);
    let req = if method == Method::POST {
        req.json(&json!({"AuthType": "NONE"}))
    } else {
        req
    };
    let resp = client.send(req).await?;
    if method == Method::DELETE {
        println!("removed the URL of {name}");
    } else {
        let doc: Value = resp.json().await?;
        println!("{}", doc["FunctionUrl"].as_str().unwrap_or(""));
    }
    Ok(())
}
