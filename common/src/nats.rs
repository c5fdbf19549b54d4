//! Connecting to NATS, with the client's events logged: slow consumers and
//! disconnects are the only sign that messages were dropped.

use anyhow::Context;
use nimbus_proto::Subjects;
use nimbus_proto::names::Names;

/// Command-line group every service shares.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma separated.
    #[arg(
        long = "nats-url",
        env = "NIMBUS_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub url: String,
    /// Prefix of every subject, stream and bucket this cluster uses.
    #[arg(
        long = "subject-prefix",
        env = "NIMBUS_SUBJECT_PREFIX",
        default_value = "nimbus"
    )]
    pub prefix: String,
    /// JetStream's duplicate window on the async stream (seconds): how long a
    /// message id is remembered. Only the service that creates the stream sets it.
    #[arg(
        long = "duplicate-window-secs",
        env = "NIMBUS_DUPLICATE_WINDOW_SECS",
        default_value_t = 120
    )]
    pub duplicate_window_secs: u64,
    /// NATS user (with `NIMBUS_NATS_PASSWORD`), when the server wants one.
    #[arg(long = "nats-user", env = "NIMBUS_NATS_USER")]
    pub user: Option<String>,
    #[arg(
        long = "nats-password",
        env = "NIMBUS_NATS_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// A file holding the NATS password (instead of `NIMBUS_NATS_PASSWORD`).
    #[arg(long = "nats-password-file", env = "NIMBUS_NATS_PASSWORD_FILE")]
    pub password_file: Option<std::path::PathBuf>,
}

impl NatsArgs {
    pub fn subjects(&self) -> anyhow::Result<Subjects> {
        Subjects::new(&self.prefix).context("invalid NIMBUS_SUBJECT_PREFIX")
    }

    pub fn duplicate_window(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.duplicate_window_secs.max(1))
    }

    pub fn names(&self) -> Names {
        Names::new(&self.prefix)
    }
}

/// Connects (retrying until the server answers) and logs the client's events.
pub async fn connect(args: &NatsArgs, name: &str) -> anyhow::Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new();
    if let Some(user) = &args.user {
        let password = match (&args.password, &args.password_file) {
            (Some(p), _) => p.clone(),
            (None, Some(file)) => std::fs::read_to_string(file)
                .with_context(|| format!("reading the NATS password from {}", file.display()))?
                .trim()
                .to_string(),
            (None, None) => String::new(),
        };
        options = options.user_and_password(user.clone(), password);
    }
    let client = options
        .name(name)
        .retry_on_initial_connect()
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS"),
                async_nats::Event::SlowConsumer(sid) => {
                    tracing::warn!(sid, "slow consumer: NATS dropped messages")
                }
                other => tracing::info!(event = %other, "NATS event"),
            }
        })
        .connect(args.url.as_str())
        .await
        .with_context(|| format!("connecting to NATS at {}", args.url))?;
    Ok(client)
}

/// How long a stopping service waits to hand its last messages to NATS.
pub const FINAL_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

/// The last flush before a service exits. A flush waits for the server's answer,
/// so with NATS gone it would wait for a reconnection that may never come — and
/// the service, asked to stop, would not. Bounded by [`FINAL_FLUSH`].
pub async fn flush_before_exit(client: &async_nats::Client) {
    match tokio::time::timeout(FINAL_FLUSH, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "last messages may not have reached NATS"),
        Err(_) => tracing::warn!(
            "NATS did not answer within {} s: stopping without its acknowledgement",
            FINAL_FLUSH.as_secs()
        ),
    }
}
