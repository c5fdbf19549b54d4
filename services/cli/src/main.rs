//! `nimbus`: the command line. Talks to the gateway over HTTP only.

mod bench;
mod client;
mod commands;
mod package;
mod up;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "nimbus",
    version,
    about = "Nimbus: functions on your own machines"
)]
struct Cli {
    /// The gateway to talk to.
    #[arg(
        long,
        global = true,
        env = "NIMBUS_ENDPOINT",
        default_value = "http://127.0.0.1:8080"
    )]
    endpoint: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Write a cluster's bus secrets into DIR, keeping any already there: random
    /// passwords for the services' and the publishers' NATS users and the
    /// nats-server `authorization` block using them (the compose file's first step).
    InitSecrets { dir: PathBuf },
    /// Run a local cluster: nats-server, gateway, scheduler and workers.
    Up {
        /// State: NATS JetStream, the code store, worker caches.
        #[arg(long, env = "NIMBUS_DATA_DIR")]
        data_dir: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:8080")]
        gateway_addr: String,
        #[arg(long, default_value_t = 4222)]
        nats_port: u16,
        #[arg(long, default_value_t = 1)]
        workers: u32,
        /// Slots per worker (invocations each runs at once).
        #[arg(long)]
        slots: Option<u32>,
        /// Access key id the gateway accepts (default: one generated on first
        /// start and kept in the data dir).
        #[arg(long, requires = "secret_access_key")]
        access_key_id: Option<String>,
        #[arg(long, requires = "access_key_id")]
        secret_access_key: Option<String>,
    },
    /// Create a function, or update its code and configuration.
    Deploy {
        name: String,
        #[arg(long)]
        runtime: String,
        #[arg(long)]
        handler: Option<String>,
        /// A directory (zipped for you) or a .zip file.
        #[arg(long)]
        code: PathBuf,
        /// Seconds (1-900).
        #[arg(long)]
        timeout: Option<u32>,
        /// MB (128-10240).
        #[arg(long)]
        memory: Option<u32>,
        /// KEY=VALUE, repeatable.
        #[arg(long = "env", value_parser = parse_kv)]
        env: Vec<(String, String)>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Invoke a function and print its result.
    Invoke {
        name: String,
        /// JSON payload.
        #[arg(long)]
        payload: Option<String>,
        #[arg(long)]
        payload_file: Option<PathBuf>,
        /// Queue it (Event invocation) instead of waiting for the result.
        #[arg(long = "async")]
        asynchronous: bool,
        /// Print the invocation's log tail to stderr.
        #[arg(long)]
        log: bool,
    },
    /// Load-test a function through the gateway.
    Bench {
        function: String,
        #[arg(long, short = 'c', default_value_t = 10)]
        concurrency: u32,
        /// How long to run (e.g. 10s, 500ms); default 10s unless --requests is given.
        #[arg(long, value_parser = parse_duration_ms)]
        duration: Option<u64>,
        /// Stop after this many requests.
        #[arg(long, short = 'n')]
        requests: Option<u64>,
        #[arg(long, default_value = "{}")]
        payload: String,
        /// Event invocations (measures acceptance).
        #[arg(long = "async")]
        asynchronous: bool,
        /// `text` or `json`.
        #[arg(long, default_value = "text")]
        output: String,
    },
    /// List functions.
    Ls,
    /// Show the cluster's live workers.
    Status,
    /// Delete a function.
    Rm { name: String },
    /// Schedules: invoke a function on cron, rate or at expressions.
    Schedule {
        #[command(subcommand)]
        action: ScheduleCmd,
    },
    /// HTTP routes: serve a function at a method and path on the gateway.
    Route {
        #[command(subcommand)]
        action: RouteCmd,
    },
    /// A function's URL (http://<gateway>/fn/<name>/).
    Url {
        #[command(subcommand)]
        action: UrlCmd,
    },
    /// Event triggers: bind functions to event sources.
    Trigger {
        #[command(subcommand)]
        action: TriggerCmd,
    },
    /// Dead letters: failed asynchronous invocations.
    Dlq {
        #[command(subcommand)]
        action: DlqCmd,
    },
    /// Show or set how asynchronous invocations are retried and where their
    /// records go (Lambda's event invoke config).
    EventConfig {
        name: String,
        /// Retries after a function error (0-2).
        #[arg(long)]
        retries: Option<u32>,
        /// Maximum event age in seconds (60-21600).
        #[arg(long)]
        max_age: Option<u32>,
        /// nats:SUBJECT or a function ARN.
        #[arg(long)]
        on_success: Option<String>,
        /// nats:SUBJECT or a function ARN (default: the dead-letter stream).
        #[arg(long)]
        on_failure: Option<String>,
    },
    /// Show a function's recent invocation logs.
    Logs {
        name: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
enum ScheduleCmd {
    /// Add a schedule.
    Add {
        name: String,
        #[arg(long)]
        function: String,
        /// cron(0 12 * * ? *), rate(5 minutes), at(2027-01-01T00:00:00), or */5 * * * *
        #[arg(long)]
        expression: String,
        /// IANA time zone (default UTC).
        #[arg(long)]
        timezone: Option<String>,
        /// JSON event (default: EventBridge's Scheduled Event).
        #[arg(long)]
        payload: Option<String>,
        /// RFC 3339; no fire before it (rates count from it).
        #[arg(long)]
        start: Option<String>,
        /// RFC 3339; no fire after it.
        #[arg(long)]
        end: Option<String>,
        /// skip | fire_once | catch_up:N — instants missed while no scheduler ran.
        #[arg(long)]
        misfire: Option<String>,
    },
    /// List schedules.
    Ls,
    /// Remove a schedule.
    Rm { name: String },
    /// Print the next fire times of an expression, one RFC 3339 UTC instant a line.
    Preview {
        expression: String,
        #[arg(long)]
        timezone: Option<String>,
        /// RFC 3339 (default: now).
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 10)]
        count: u32,
    },
}

#[derive(Debug, Subcommand)]
enum RouteCmd {
    /// Add a route: `--method GET --path '/hello/{name}' --function F`.
    Add {
        #[arg(long, default_value = "ANY")]
        method: String,
        #[arg(long)]
        path: String,
        #[arg(long)]
        function: String,
    },
    /// List routes.
    Ls,
    /// Remove a route.
    Rm { id: String },
}

#[derive(Debug, Subcommand)]
enum UrlCmd {
    /// Give a function a URL (AuthType NONE).
    Add { name: String },
    /// Show a function's URL.
    Get { name: String },
    /// Remove a function's URL.
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
enum TriggerCmd {
    /// Add a trigger.
    Add {
        #[command(subcommand)]
        source: TriggerSource,
    },
    /// List triggers.
    Ls {
        #[arg(long)]
        function: Option<String>,
    },
    /// Remove a trigger.
    Rm { id: String },
}

#[derive(Debug, Subcommand)]
enum TriggerSource {
    /// Consume a JetStream stream durably, invoking the function with batches.
    Stream {
        #[arg(long)]
        function: String,
        #[arg(long)]
        stream: String,
        #[arg(long, default_value_t = 10)]
        batch_size: u32,
        /// How long to gather a batch, e.g. 500ms, 2s.
        #[arg(long, default_value = "1s", value_parser = parse_duration_ms)]
        batch_window: u64,
    },
    /// Invoke the function (asynchronously) for each S3-style object event of a
    /// bucket: from the object-event subject, the gateway webhook
    /// (POST /nimbus/v1/events/s3), or a watcher of a store that sends none.
    S3 {
        #[arg(long)]
        function: String,
        #[arg(long)]
        bucket: String,
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, default_value = "")]
        suffix: String,
        /// Comma-separated event names (s3:ObjectCreated:*,s3:ObjectRemoved:*).
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        /// Watch this store for changes (file:///dir, s3://bucket/prefix).
        #[arg(long)]
        watch: Option<String>,
    },
    /// Invoke the function (asynchronously) with each message on a NATS subject.
    Nats {
        #[arg(long)]
        function: String,
        /// Subject, wildcards allowed (orders.>, orders.*.created).
        #[arg(long)]
        subject: String,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCmd {
    /// List a function's dead letters.
    Ls { name: String },
    /// Print one dead letter's full record.
    Show { name: String, seq: u64 },
    /// Re-enqueue every dead letter with its original payload, then remove it.
    Redrive { name: String },
    /// Delete a function's dead letters.
    Purge { name: String },
}

fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else {
        (s, 1)
    };
    num.trim()
        .parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("{s:?} is not a duration (500ms, 2s, 1m)"))
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    let client = client::Client::new(&cli.endpoint)?;
    match cli.command {
        Cmd::InitSecrets { dir } => up::init_secrets(&dir)?,
        Cmd::Up {
            data_dir,
            gateway_addr,
            nats_port,
            workers,
            slots,
            access_key_id,
            secret_access_key,
        } => {
            up::up(up::UpArgs {
                access_key: access_key_id.zip(secret_access_key).map(|(id, secret)| {
                    nimbus_sigv4::Credentials {
                        access_key_id: id,
                        secret_access_key: secret,
                    }
                }),
                data_dir: data_dir.unwrap_or_else(up::default_data_dir),
                gateway_addr,
                nats_port,
                workers,
                slots,
            })
            .await?;
        }
        Cmd::Deploy {
            name,
            runtime,
            handler,
            code,
            timeout,
            memory,
            env,
            description,
        } => {
            commands::deploy(
                &client,
                commands::Deploy {
                    name,
                    runtime,
                    handler,
                    code,
                    timeout,
                    memory,
                    env,
                    description,
                },
            )
            .await?;
        }
        Cmd::Invoke {
            name,
            payload,
            payload_file,
            asynchronous,
            log,
        } => {
            let payload = commands::read_payload(payload, payload_file)?;
            return commands::invoke(&client, &name, payload, asynchronous, log).await;
        }
        Cmd::Bench {
            function,
            concurrency,
            duration,
            requests,
            payload,
            asynchronous,
            output,
        } => {
            let json = match output.as_str() {
                "json" => true,
                "text" => false,
                other => anyhow::bail!("--output {other:?}: use text or json"),
            };
            let duration = match (duration, requests) {
                (Some(ms), _) => Some(std::time::Duration::from_millis(ms)),
                (None, None) => Some(std::time::Duration::from_secs(10)),
                (None, Some(_)) => None,
            };
            let report = bench::run(
                &client,
                bench::BenchArgs {
                    function,
                    concurrency,
                    duration,
                    requests,
                    payload: payload.into_bytes(),
                    asynchronous,
                    json,
                },
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                bench::print_text(&report);
            }
        }
        Cmd::Ls => commands::list(&client).await?,
        Cmd::Status => commands::status(&client).await?,
        Cmd::Rm { name } => commands::remove(&client, &name).await?,
        Cmd::Route { action } => match action {
            RouteCmd::Add {
                method,
                path,
                function,
            } => {
                commands::route_add(
                    &client,
                    serde_json::json!({"method": method, "path": path, "function": function}),
                )
                .await?
            }
            RouteCmd::Ls => commands::route_list(&client).await?,
            RouteCmd::Rm { id } => commands::route_remove(&client, &id).await?,
        },
        Cmd::Url { action } => match action {
            UrlCmd::Add { name } => commands::url(&client, &name, reqwest::Method::POST).await?,
            UrlCmd::Get { name } => commands::url(&client, &name, reqwest::Method::GET).await?,
            UrlCmd::Rm { name } => commands::url(&client, &name, reqwest::Method::DELETE).await?,
        },
        Cmd::Schedule { action } => match action {
            ScheduleCmd::Add {
                name,
                function,
                expression,
                timezone,
                payload,
                start,
                end,
                misfire,
            } => {
                let payload = payload
                    .map(|p| serde_json::from_str::<serde_json::Value>(&p))
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--payload is not JSON: {e}"))?;
                let body = serde_json::json!({
                    "name": name, "function": function, "expression": expression,
                    "timezone": timezone, "payload": payload, "start": start, "end": end, "misfire": misfire,
                });
                commands::schedule_add(&client, body).await?
            }
            ScheduleCmd::Ls => commands::schedule_list(&client).await?,
            ScheduleCmd::Rm { name } => commands::schedule_remove(&client, &name).await?,
            ScheduleCmd::Preview {
                expression,
                timezone,
                after,
                count,
            } => commands::schedule_preview(&client, &expression, timezone, after, count).await?,
        },
        Cmd::Trigger { action } => {
            match action {
                TriggerCmd::Add {
                    source: TriggerSource::Nats { function, subject },
                } => commands::trigger_add(
                    &client,
                    serde_json::json!({"type": "nats", "function": function, "subject": subject}),
                )
                .await?,
                TriggerCmd::Add {
                    source:
                        TriggerSource::S3 {
                            function,
                            bucket,
                            prefix,
                            suffix,
                            events,
                            watch,
                        },
                } => {
                    commands::trigger_add(
                        &client,
                        serde_json::json!({"type": "s3", "function": function, "bucket": bucket,
                        "prefix": prefix, "suffix": suffix, "events": events, "watch": watch}),
                    )
                    .await?
                }
                TriggerCmd::Add {
                    source:
                        TriggerSource::Stream {
                            function,
                            stream,
                            batch_size,
                            batch_window,
                        },
                } => {
                    commands::trigger_add(
                        &client,
                        serde_json::json!({"type": "stream", "function": function, "stream": stream,
                        "batch_size": batch_size, "batch_window_ms": batch_window}),
                    )
                    .await?
                }
                TriggerCmd::Ls { function } => {
                    commands::trigger_list(&client, function.as_deref()).await?
                }
                TriggerCmd::Rm { id } => commands::trigger_remove(&client, &id).await?,
            }
        }
        Cmd::Dlq { action } => match action {
            DlqCmd::Ls { name } => commands::dlq_list(&client, &name).await?,
            DlqCmd::Show { name, seq } => commands::dlq_show(&client, &name, seq).await?,
            DlqCmd::Redrive { name } => commands::dlq_redrive(&client, &name).await?,
            DlqCmd::Purge { name } => commands::dlq_purge(&client, &name).await?,
        },
        Cmd::EventConfig {
            name,
            retries,
            max_age,
            on_success,
            on_failure,
        } => {
            commands::event_config(&client, &name, retries, max_age, on_success, on_failure).await?
        }
        Cmd::Logs { name, limit } => commands::logs(&client, &name, limit).await?,
    }
    Ok(true)
}
