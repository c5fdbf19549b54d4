//! The JetStream resources a cluster uses (the functions KV bucket, the async and logs
//! streams), created idempotently by whichever service starts first. Every service
//! declares them with the same settings, so the first one wins and the rest bind.

use anyhow::Context;
use async_nats::jetstream::{self, kv, stream};
use nimbus_proto::{Names, Subjects};
use std::time::Duration;

pub struct Topology {
    pub js: jetstream::Context,
    pub functions: kv::Store,
    pub triggers: kv::Store,
    pub schedules: kv::Store,
    pub routes: kv::Store,
    pub leases: kv::Store,
    pub watch_state: kv::Store,
    pub completions: kv::Store,
    pub schedule_state: kv::Store,
    pub async_stream: stream::Stream,
}

/// Messages on the async stream live at most this long (the maximum event age, 6 h,
/// plus an hour of slack for retries in flight).
pub const ASYNC_MAX_AGE: Duration = Duration::from_secs(7 * 3600);

pub async fn ensure(
    nats: &async_nats::Client,
    names: &Names,
    subjects: &Subjects,
    duplicate_window: Duration,
) -> anyhow::Result<Topology> {
    let js = jetstream::new(nats.clone());
    let functions = bucket(
        &js,
        plain(names.functions_bucket(), "Nimbus function configurations"),
    )
    .await?;
    let triggers = bucket(&js, plain(names.triggers_bucket(), "Nimbus event triggers")).await?;
    let schedules = bucket(&js, plain(names.schedules_bucket(), "Nimbus schedules")).await?;
    let routes = bucket(&js, plain(names.routes_bucket(), "Nimbus HTTP routes")).await?;
    let leases = bucket(&js, plain(names.leases_bucket(), "Nimbus leases")).await?;
    let completions = bucket(
        &js,
        kv::Config {
            // Longer than any redelivery delay (ack wait 30 s, plus slack).
            max_age: Duration::from_secs(30 * 60),
            max_bytes: 512 * 1024 * 1024,
            ..plain(
                names.completions_bucket(),
                "Nimbus completed async attempts (dedupe of redeliveries)",
            )
        },
    )
    .await?;
    let watch_state = bucket(
        &js,
        plain(names.watch_state_bucket(), "Nimbus bucket watcher state"),
    )
    .await?;
    let schedule_state = bucket(
        &js,
        plain(
            names.schedule_state_bucket(),
            "Nimbus schedule state: last instant fired",
        ),
    )
    .await?;
    let async_stream = js
        .get_or_create_stream(stream::Config {
            name: names.async_stream(),
            description: Some("Nimbus durable asynchronous invocations".into()),
            subjects: vec![subjects.async_all()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window,
            max_age: ASYNC_MAX_AGE,
            ..Default::default()
        })
        .await
        .context("creating the async invocation stream")?;
    js.get_or_create_stream(stream::Config {
        name: names.dlq_stream(),
        description: Some("Nimbus dead letters: records of failed async invocations".into()),
        subjects: vec![subjects.dlq_all()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(14 * 24 * 3600),
        max_messages_per_subject: 100_000,
        ..Default::default()
    })
    .await
    .context("creating the dead-letter stream")?;
    js.get_or_create_stream(stream::Config {
        name: names.logs_stream(),
        description: Some("Nimbus function logs (bounded)".into()),
        subjects: vec![subjects.logs_all()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_messages_per_subject: 1000,
        max_bytes: 256 * 1024 * 1024,
        max_age: Duration::from_secs(7 * 24 * 3600),
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    })
    .await
    .context("creating the logs stream")?;
    Ok(Topology {
        js,
        functions,
        triggers,
        schedules,
        routes,
        leases,
        watch_state,
        completions,
        schedule_state,
        async_stream,
    })
}

/// A bucket of one history entry in file storage: every bucket Nimbus uses.
fn plain(name: String, description: &str) -> kv::Config {
    kv::Config {
        bucket: name,
        description: description.into(),
        history: 1,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// Opens a KV bucket, creating it with `config` if it does not exist yet.
async fn bucket(js: &jetstream::Context, config: kv::Config) -> anyhow::Result<kv::Store> {
    match js.get_key_value(config.bucket.clone()).await {
        Ok(kv) => Ok(kv),
        Err(_) => {
            let name = config.bucket.clone();
            js.create_key_value(config)
                .await
                .with_context(|| format!("creating the {name} KV bucket"))
        }
    }
}
