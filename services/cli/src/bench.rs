//! `nimbus bench`: a load generator aimed at one function through the gateway, like
//! `hey`/`wrk`: C concurrent keep-alive connections for a duration or a number of
//! requests; throughput, latency percentiles from an HDR histogram, errors by kind,
//! cold starts seen (the gateway's `X-Nimbus-Init-Duration-Ms`), a live progress line.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::client::Client;

pub struct BenchArgs {
    pub function: String,
    pub concurrency: u32,
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
    pub payload: Vec<u8>,
    pub asynchronous: bool,
    pub json: bool,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    ok: AtomicU64,
    throttled: AtomicU64,
    function_error: AtomicU64,
    timeout: AtomicU64,
    transport: AtomicU64,
    other: AtomicU64,
    cold: AtomicU64,
}

pub async fn run(client: &Client, args: BenchArgs) -> anyhow::Result<Value> {
    // Fail fast, with the usual error, when the function does not exist.
    client
        .send(client.request(
            Method::GET,
            &format!("/2015-03-31/functions/{}/configuration", args.function),
        ))
        .await?;
    let counters = Arc::new(Counters::default());
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1,
        3_600_000_000,
        3,
    )?));
    let started = Instant::now();
    let deadline = args.duration.map(|d| started + d);
    let limit = args.requests;
    let url = format!(
        "{}/2015-03-31/functions/{}/invocations",
        client.endpoint, args.function
    );
    let payload = bytes::Bytes::from(args.payload.clone());
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()?;
        let (counters, hist, url, payload) =
            (counters.clone(), hist.clone(), url.clone(), payload.clone());
        let (creds, region) = (client.creds.clone(), client.region.clone());
        let asynchronous = args.asynchronous;
        tasks.push(tokio::spawn(async move {
            let mut local =
                Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("histogram");
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let n = counters.sent.fetch_add(1, Ordering::Relaxed);
                if limit.is_some_and(|l| n >= l) {
                    break;
                }
                let t0 = Instant::now();
                let req = http
                    .post(&url)
                    .header(
                        "X-Amz-Invocation-Type",
                        if asynchronous {
                            "Event"
                        } else {
                            "RequestResponse"
                        },
                    )
                    .body(payload.clone())
                    .build();
                let resp = match req {
                    Ok(mut req) => {
                        if let Some(c) = &creds {
                            nimbus_sigv4::sign_reqwest(&mut req, c, &region);
                        }
                        http.execute(req).await
                    }
                    Err(e) => Err(e),
                };
                let kind = match resp {
                    Err(_) => &counters.transport,
                    Ok(r) => {
                        if r.headers().contains_key("X-Nimbus-Init-Duration-Ms") {
                            counters.cold.fetch_add(1, Ordering::Relaxed);
                        }
                        let status = r.status().as_u16();
                        let function_error = r.headers().contains_key("X-Amz-Function-Error");
                        let body = r.bytes().await.unwrap_or_default();
                        if status == 429 {
                            &counters.throttled
                        } else if function_error
                            && body.windows(16).any(|w| w == b"Sandbox.Timedout")
                        {
                            &counters.timeout
                        } else if function_error {
                            &counters.function_error
                        } else if (200..300).contains(&status) {
                            &counters.ok
                        } else {
                            &counters.other
                        }
                    }
                };
                kind.fetch_add(1, Ordering::Relaxed);
                let _ = local.record(t0.elapsed().as_micros().max(1) as u64);
            }
            hist.lock().await.add(&local).expect("same bounds");
        }));
    }
    // Live progress on a terminal.
    let progress = {
        let counters = counters.clone();
        let quiet = args.json || !std::io::IsTerminal::is_terminal(&std::io::stderr());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                if quiet {
                    continue;
                }
                let done = counters.ok.load(Ordering::Relaxed);
                let errs = counters.throttled.load(Ordering::Relaxed)
                    + counters.function_error.load(Ordering::Relaxed)
                    + counters.timeout.load(Ordering::Relaxed)
                    + counters.transport.load(Ordering::Relaxed)
                    + counters.other.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                eprint!(
                    "\r[{secs:5.1}s] {done} ok, {errs} errors, {:.0} req/s   ",
                    (done + errs) as f64 / secs
                );
            }
        })
    };
    for t in tasks {
        let _ = t.await;
    }
    progress.abort();
    let elapsed = started.elapsed().as_secs_f64();
    let h = hist.lock().await;
    let c = &counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let errors = get(&c.throttled)
        + get(&c.function_error)
        + get(&c.timeout)
        + get(&c.transport)
        + get(&c.other);
    let completed = get(&c.ok) + errors;
    let ms = |v: u64| (v as f64) / 1000.0;
    let report = json!({
        "function": args.function,
        "mode": if args.asynchronous { "Event" } else { "RequestResponse" },
        "concurrency": args.concurrency,
        "requested": args.requests,
        "completed": completed,
        "succeeded": get(&c.ok),
        "errors": {
            "throttled": get(&c.throttled),
            "function": get(&c.function_error),
            "timeout": get(&c.timeout),
            "transport": get(&c.transport),
            "other": get(&c.other),
        },
        "cold_starts": get(&c.cold),
        "duration_s": elapsed,
        "throughput_rps": completed as f64 / elapsed.max(1e-9),
        "latency_ms": {
            "samples": h.len(),
            "mean": h.mean() / 1000.0,
            "p50": ms(h.value_at_quantile(0.50)),
            "p90": ms(h.value_at_quantile(0.90)),
            "p99": ms(h.value_at_quantile(0.99)),
            "p99.9": ms(h.value_at_quantile(0.999)),
            "max": ms(h.max()),
        },
    });
    Ok(report)
}

pub fn print_text(r: &Value) {
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!();
    }
    let l = &r["latency_ms"];
    let e = &r["errors"];
    println!(
        "{} ({}), concurrency {}",
        r["function"].as_str().unwrap_or(""),
        r["mode"].as_str().unwrap_or(""),
        r["concurrency"]
    );
    println!(
        "  completed   {} in {:.2} s  ({:.1} req/s)",
        r["completed"],
        r["duration_s"].as_f64().unwrap_or(0.0),
        r["throughput_rps"].as_f64().unwrap_or(0.0)
    );
    println!("  succeeded   {}", r["succeeded"]);
    println!(
        "  errors      throttled {}  function {}  timeout {}  transport {}  other {}",
        e["throttled"], e["function"], e["timeout"], e["transport"], e["other"]
    );
    println!("  cold starts {}", r["cold_starts"]);
    let f = |k: &str| l[k].as_f64().unwrap_or(0.0);
    println!(
        "  latency ms  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  mean {:.2}",
        f("p50"),
        f("p90"),
        f("p99"),
        f("p99.9"),
        f("max"),
        f("mean")
    );
}
