//! The cluster under pressure: Event invocations, workers dying, every slot busy.

use std::time::Duration;

use nimbus_tests::*;
use serde_json::json;

/// Creates `app.slow_mark` as `name`, writing its start/done lines to a file;
/// returns the file.
async fn slow_marker(cluster: &Cluster, name: &str, timeout: u32) -> std::path::PathBuf {
    let mark = cluster.mark_file("marks.txt");
    cluster
        .create_function(
            name,
            "python3.12",
            "app.slow_mark",
            &python_zip(),
            json!({"Timeout": timeout, "Environment": {"Variables": {"MARK_FILE": mark.to_str().unwrap()}}}),
        )
        .await;
    mark
}

/// A Python function answering `{"greeting": "hello <name>"}`.
async fn echo_function(cluster: &Cluster, name: &str) {
    cluster
        .create_function(name, "python3.12", "app.handler", &python_zip(), json!({}))
        .await;
}

/// The first line of `mark` starting with `prefix`, once it is there.
async fn wait_mark(mark: &std::path::Path, prefix: &str) -> String {
    eventually(Duration::from_secs(20), prefix, || async {
        marks(mark).into_iter().find(|l| l.starts_with(prefix))
    })
    .await
}

/// Which worker (1-based) a mark line's log stream (`nimbus/w<n>/<instance>`) names.
/// Invokes `function` with `body` in a task of its own: its status, error type and
/// body.
fn invoke_in_background(
    cluster: &Cluster,
    function: &str,
    body: &'static str,
) -> tokio::task::JoinHandle<(u16, Option<String>, String)> {
    let url = format!(
        "{}/2015-03-31/functions/{function}/invocations",
        cluster.endpoint
    );
    let http = cluster.http.clone();
    tokio::spawn(async move {
        let resp = http.post(url).body(body).send().await.unwrap();
        let status = resp.status().as_u16();
        let kind = resp
            .headers()
            .get("x-amzn-ErrorType")
            .map(|v| v.to_str().unwrap().to_string());
        (status, kind, resp.text().await.unwrap())
    })
}

fn worker_of(line: &str) -> usize {
    (1..=9)
        .find(|n| line.contains(&format!("nimbus/w{n}/")))
        .unwrap_or_else(|| panic!("which worker? {line}"))
}

fn marks(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn event_invocation_runs_and_survives_a_worker_sigkill() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(ClusterOpts {
        workers: 2,
        ..Default::default()
    })
    .await;
    let mark = slow_marker(&cluster, "marker", 60).await;
    // No retries: a worker dying is not a function error, so it still runs again.
    let resp = cluster
        .http
        .put(cluster.url("/2019-09-25/functions/marker/event-invoke-config"))
        .json(&json!({"MaximumRetryAttempts": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // A quick Event invocation runs once.
    let r = cluster
        .invoke_raw(
            "marker",
            serde_json::to_vec(&json!({"id": "quick", "sleep": 0})).unwrap(),
            &[("X-Amz-Invocation-Type", "Event")],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    wait_mark(&mark, "done quick").await;

    // A slow one: SIGKILL the worker running it; it completes on the other one.
    let r = cluster
        .invoke_raw(
            "marker",
            serde_json::to_vec(&json!({"id": "slow", "sleep": 4})).unwrap(),
            &[("X-Amz-Invocation-Type", "Event")],
        )
        .await;
    assert_eq!(r.status, 202);
    let started = wait_mark(&mark, "start slow").await;
    let victim = worker_of(&started);
    cluster.workers[victim - 1].kill();
    let done = eventually(
        Duration::from_secs(40),
        "the slow event to finish elsewhere",
        || async {
            marks(&mark)
                .into_iter()
                .find(|l| l.starts_with("done slow"))
        },
    )
    .await;
    assert!(
        !done.contains(&format!("nimbus/w{victim}/")),
        "finished on the killed worker? {done}"
    );
    // It finished exactly once, and the first run never finished.
    let all = marks(&mark);
    assert_eq!(
        all.iter().filter(|l| l.starts_with("done slow")).count(),
        1,
        "{all:?}"
    );
    assert_eq!(
        all.iter().filter(|l| l.starts_with("done quick")).count(),
        1,
        "{all:?}"
    );

    // The survivor keeps serving synchronous calls.
    echo_function(&cluster, "echo").await;
    for i in 0..10 {
        let r = cluster.invoke("echo", &json!({"name": i})).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // A new worker is used once it heartbeats.
    cluster.add_worker();
    let nc = cluster.nats_client().await;
    cluster.wait_heartbeats(&nc, 2).await;
    cluster.stop();
}

#[tokio::test]
async fn killing_one_of_two_workers_leaves_the_cluster_serving() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(ClusterOpts {
        workers: 2,
        ..Default::default()
    })
    .await;
    echo_function(&cluster, "echo").await;
    for i in 0..6 {
        assert_eq!(
            cluster.invoke("echo", &json!({"name": i})).await.status,
            200
        );
    }
    cluster.workers[0].kill();
    // Right after the kill the scheduler may still pick the dead worker; it must
    // move on to the live one, so every call succeeds.
    for i in 0..20 {
        let r = cluster.invoke("echo", &json!({"name": i})).await;
        assert_eq!(r.status, 200, "call {i} after the kill: {}", r.text());
        assert_eq!(r.json()["greeting"], format!("hello {i}"));
    }
    cluster.stop();
}

#[tokio::test]
async fn a_sync_call_whose_worker_dies_fails_fast() {
    // Its cold start is placed by the gateway, which notices the worker's silence.
    a_sync_call_whose_worker_dies(false, "direct").await;
}

#[tokio::test]
async fn a_sync_call_placed_by_the_scheduler_fails_fast_when_its_worker_dies() {
    // The scheduler notices the worker's silence and answers the gateway's inbox.
    a_sync_call_whose_worker_dies(false, "scheduler").await;
}

#[tokio::test]
async fn a_warm_call_sent_straight_to_its_worker_fails_fast_when_the_worker_dies() {
    // A warm call goes from the gateway straight to the worker that ran the function
    // before: the gateway notices the worker's silence itself.
    a_sync_call_whose_worker_dies(true, "direct").await;
}

async fn a_sync_call_whose_worker_dies(warm_first: bool, dispatch: &str) {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(ClusterOpts {
        workers: 2,
        env: vec![("NIMBUS_SYNC_DISPATCH".into(), dispatch.into())],
        ..Default::default()
    })
    .await;
    let mark = slow_marker(&cluster, "slow", 60).await;
    if warm_first {
        let r = cluster.invoke("slow", &json!({"id": "warm-up"})).await;
        assert_eq!(r.status, 200, "{}", r.text());
        // Longer than the worker holds its ack back: the ack, then the result.
        let r = cluster
            .invoke("slow", &json!({"id": "acked", "sleep": 0.2}))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let runs = marks(&mark)
            .iter()
            .filter(|l| l.starts_with("start acked"))
            .count();
        assert_eq!(runs, 1, "{:?}", marks(&mark));
    }
    let call = invoke_in_background(&cluster, "slow", r#"{"id":"doomed","sleep":30}"#);
    let started = wait_mark(&mark, "start doomed").await;
    // A direct call's worker holds its ack back for a moment (a result ready by
    // then goes alone); killed before acking, the call would be placed again.
    tokio::time::sleep(Duration::from_millis(
        3 * nimbus_proto::worker::ACK_DEFER_MS,
    ))
    .await;
    let victim = worker_of(&started);
    cluster.workers[victim - 1].kill();
    // Without the scheduler noticing, the caller would wait 60 + 30 s.
    let (status, kind, body) = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("the call failed fast")
        .unwrap();
    assert_eq!(status, 500, "{body}");
    assert_eq!(kind.as_deref(), Some("ServiceException"));
    assert!(body.contains("stopped before it finished"), "{body}");
    if warm_first {
        // The doomed call ran on the warm-up's instance, not a second one.
        assert_eq!(
            worker_of(&started),
            worker_of(&wait_mark(&mark, "start warm-up").await)
        );
    }
    let metrics = cluster.gateway_metrics().await;
    let (lost, ran) = match (dispatch, warm_first) {
        // The warm-up's cold start placed by the gateway, "acked" on its instance.
        (_, true) => ("warm", [("any", 1), ("warm", 1)].as_slice()),
        ("direct", false) => ("any", [].as_slice()),
        _ => ("none", [].as_slice()),
    };
    let counted = |placed: &str, result: &str, n: u32| {
        format!(
            "nimbus_gateway_direct_dispatches_total{{placed=\"{placed}\",result=\"{result}\"}} {n}"
        )
    };
    if lost == "none" {
        assert!(
            !metrics.contains("nimbus_gateway_direct_dispatches_total"),
            "{metrics}"
        );
    } else {
        let line = counted(lost, "worker_lost", 1);
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    for (placed, n) in ran {
        let line = counted(placed, "ran", *n);
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    // The cluster still serves: the route to the dead worker is gone.
    let r = cluster.invoke("slow", &json!({"id": "after"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    cluster.stop();
}

#[tokio::test]
async fn services_asked_to_stop_do_so_with_nats_gone() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(ClusterOpts::default()).await;
    echo_function(&cluster, "kept").await;
    let r = cluster.invoke("kept", &json!({"name": "x"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    cluster.nats.proc.kill();
    // Each must exit cleanly on SIGTERM (within the harness's 20 s), not wait for
    // a NATS that is not coming back.
    cluster.stop();
}

#[tokio::test]
async fn with_sync_dispatch_scheduler_every_call_is_placed() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(ClusterOpts {
        env: vec![("NIMBUS_SYNC_DISPATCH".into(), "scheduler".into())],
        ..Default::default()
    })
    .await;
    echo_function(&cluster, "kept").await;
    for i in 0..3 {
        let r = cluster.invoke("kept", &json!({"name": i})).await;
        assert_eq!(r.status, 200, "call {i}: {}", r.text());
    }
    let metrics = cluster.gateway_metrics().await;
    assert!(
        !metrics.contains("nimbus_gateway_direct_dispatches_total"),
        "{metrics}"
    );
    cluster.kill_scheduler().await;
    let r = cluster.invoke("kept", &json!({"name": "x"})).await;
    assert_eq!(r.status, 503, "{}", r.text());
    cluster.stop();
}

#[tokio::test]
async fn sync_calls_go_on_while_no_scheduler_runs() {
    calls_while_no_scheduler_runs("direct").await;
}

#[tokio::test]
async fn with_cold_starts_left_to_schedulers_warm_calls_go_on_while_none_runs() {
    calls_while_no_scheduler_runs("warm").await;
}

async fn calls_while_no_scheduler_runs(dispatch: &str) {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(ClusterOpts {
        env: vec![("NIMBUS_SYNC_DISPATCH".into(), dispatch.into())],
        ..Default::default()
    })
    .await;
    for name in ["kept", "new"] {
        echo_function(&cluster, name).await;
    }
    let r = cluster.invoke("kept", &json!({"name": "first"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    cluster.kill_scheduler().await;
    // Warm: straight to the worker holding the instance.
    for i in 0..5 {
        let r = cluster.invoke("kept", &json!({"name": i})).await;
        assert_eq!(r.status, 200, "call {i}: {}", r.text());
        assert_eq!(r.json()["greeting"], format!("hello {i}"));
    }
    let r = cluster.invoke("new", &json!({"name": "x"})).await;
    let metrics = cluster.gateway_metrics().await;
    let warm_ran = "nimbus_gateway_direct_dispatches_total{placed=\"warm\",result=\"ran\"} 5";
    assert!(metrics.contains(warm_ran), "{warm_ran} in {metrics}");
    if dispatch == "direct" {
        // The gateway places the cold start itself, on the worker it hears.
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["greeting"], "hello x");
        let cold_ran = "nimbus_gateway_direct_dispatches_total{placed=\"any\",result=\"ran\"} 2";
        assert!(metrics.contains(cold_ran), "{cold_ran} in {metrics}");
        // Its one warm instance busy, a function's next call is a second cold start
        // the gateway places too (its warm route refused it).
        let mark = slow_marker(&cluster, "slow", 60).await;
        let r = cluster.invoke("slow", &json!({"id": "warm-up"})).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let long = invoke_in_background(&cluster, "slow", r#"{"id":"long","sleep":2}"#);
        wait_mark(&mark, "start long").await;
        let r = cluster.invoke("slow", &json!({"id": "beside"})).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let (status, _, body) = long.await.unwrap();
        assert_eq!(status, 200, "{body}");
        let metrics = cluster.gateway_metrics().await;
        let refused =
            "nimbus_gateway_direct_dispatches_total{placed=\"warm\",result=\"refused\"} 1";
        assert!(metrics.contains(refused), "{refused} in {metrics}");
        let cold_ran = "nimbus_gateway_direct_dispatches_total{placed=\"any\",result=\"ran\"} 4";
        assert!(metrics.contains(cold_ran), "{cold_ran} in {metrics}");
    } else {
        // A cold start needs a scheduler to place it: refused at once, clearly.
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(r.text().contains("No scheduler is running"), "{}", r.text());
        assert!(!metrics.contains("placed=\"any\""), "{metrics}");
    }
    cluster.stop();
}

#[tokio::test]
async fn a_draining_worker_finishes_its_work_and_takes_no_more() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(ClusterOpts {
        workers: 2,
        ..Default::default()
    })
    .await;
    let mark = slow_marker(&cluster, "slow", 60).await;
    let endpoint = cluster.endpoint.clone();
    let http = cluster.http.clone();
    let call = tokio::spawn(async move {
        let resp = http
            .post(format!("{endpoint}/2015-03-31/functions/slow/invocations"))
            .body(r#"{"id":"inflight","sleep":3}"#)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    });
    let started = wait_mark(&mark, "start inflight").await;
    let busy = worker_of(&started);
    // SIGTERM: the worker drains. Meanwhile new calls go to the other worker.
    cluster.workers[busy - 1].signal(nix::sys::signal::Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..3 {
        let r = cluster
            .invoke("slow", &json!({"id": format!("after-{i}"), "sleep": 0}))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let (status, body) = call.await.unwrap();
    assert_eq!(status, 200, "the in-flight call finished: {body}");
    assert_eq!(body, r#"{"ok": true}"#);
    let all = marks(&mark);
    for i in 0..3 {
        let done = all
            .iter()
            .find(|l| l.starts_with(&format!("done after-{i} ")))
            .unwrap();
        assert!(
            !done.contains(&format!("nimbus/w{busy}/")),
            "a draining worker took new work: {done}"
        );
    }
    // And it exits cleanly once drained.
    assert!(
        cluster.workers[busy - 1].terminate(Duration::from_secs(20)),
        "{}",
        cluster.workers[busy - 1].log_text()
    );
    cluster.stop();
}

#[tokio::test]
async fn an_event_whose_scheduler_dies_after_it_ran_is_not_run_again() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(ClusterOpts::default()).await;
    let mark = slow_marker(&cluster, "once", 60).await;
    let r = cluster
        .invoke_raw(
            "once",
            serde_json::to_vec(&json!({"id": "solo", "sleep": 2})).unwrap(),
            &[("X-Amz-Invocation-Type", "Event")],
        )
        .await;
    assert_eq!(r.status, 202);
    wait_mark(&mark, "start solo").await;
    // The only scheduler dies holding the unacknowledged message; the function
    // finishes on the worker regardless.
    cluster.scheduler.kill();
    wait_mark(&mark, "done solo").await;
    let mut cmd = std::process::Command::new(bin("nimbus-scheduler"));
    cmd.envs(cluster.nats.service_env())
        .env("NIMBUS_DATA_DIR", cluster.data.path().join("scheduler-2"));
    cluster.scheduler = Proc::spawn_for_test("scheduler-2", cmd, cluster.data.path());
    // JetStream redelivers after its ack wait (30 s); the new scheduler finds the
    // worker's completion record and acks without running the function again.
    eventually(
        Duration::from_secs(60),
        "the redelivery to be settled",
        || async {
            cluster
                .scheduler
                .log_text()
                .contains("already ran")
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = marks(&mark);
    assert_eq!(
        all.iter().filter(|l| l.starts_with("start solo")).count(),
        1,
        "{all:?}"
    );
    assert_eq!(
        all.iter().filter(|l| l.starts_with("done solo")).count(),
        1,
        "{all:?}"
    );
    cluster.stop();
}

#[tokio::test]
async fn every_slot_busy_gives_429() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(ClusterOpts {
        workers: 1,
        slots: 1,
        ..Default::default()
    })
    .await;
    let mark = slow_marker(&cluster, "busy", 30).await;
    let endpoint = cluster.endpoint.clone();
    let http = cluster.http.clone();
    let long = tokio::spawn(async move {
        http.post(format!("{endpoint}/2015-03-31/functions/busy/invocations"))
            .body(r#"{"id":"long","sleep":4}"#)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    wait_mark(&mark, "start long").await;
    let r = cluster
        .invoke("busy", &json!({"id": "second", "sleep": 0}))
        .await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(
        r.header("x-amzn-ErrorType").as_deref(),
        Some("TooManyRequestsException")
    );
    assert_eq!(long.await.unwrap(), 200);
    // With the slot free again, the function runs.
    let r = cluster
        .invoke("busy", &json!({"id": "third", "sleep": 0}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    cluster.stop();
}
