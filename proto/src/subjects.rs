//! Every NATS subject Nimbus uses, built and parsed here and nowhere else.
//!
//! | subject | pattern |
//! |---|---|
//! | `<p>.invoke` | request/reply, queue group `scheduler` |
//! | `<p>.worker.<id>.invoke` | request/reply: dispatch to one worker |
//! | `<p>.worker.heartbeat` | publish |
//! | `<p>.async.<function>` | JetStream stream `<P>_ASYNC` |
//! | `<p>.logs.<function>` | publish, captured by stream `<P>_LOGS` |
//! | `<p>.dlq.<function>` | JetStream stream `<P>_DLQ` |
//!
//! Tokens that come from users (function names) are validated before they are put
//! into a subject: [`crate::validate_function_name`] only admits `[A-Za-z0-9_-]`.

use crate::function::validate_function_name;

/// Queue group in which schedulers share synchronous invocations.
pub const SCHEDULER_QUEUE: &str = "scheduler";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("subject prefix {0:?} must be non-empty tokens of [A-Za-z0-9_-] separated by dots")]
    BadPrefix(String),
    #[error("{0:?} is not a valid subject token")]
    BadToken(String),
}

fn valid_token(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The NATS user of the platform's services.
pub const NATS_SERVICE_USER: &str = "nimbus";
/// The NATS user of users' publishers (trigger subjects only).
pub const NATS_PUBLISHER_USER: &str = "publisher";

/// `GOMAXPROCS` for a nats-server started on the services' own machine (`nimbus up`,
/// the test clusters, the platform benchmark): half the cores, at least one — unless
/// the environment already sets it (`None`: leave it). A Go runtime with idle
/// processors wakes and spins a thread for every message it readies; beside four
/// other processes on two cores that cost nats-server ~40% more CPU per invocation
/// and the invocation ~10% of its latency and throughput (docs/PERFORMANCE.md).
pub fn local_nats_gomaxprocs() -> Option<String> {
    gomaxprocs_for(
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        std::env::var_os("GOMAXPROCS").is_some(),
    )
}

fn gomaxprocs_for(cores: usize, already_set: bool) -> Option<String> {
    (!already_set).then(|| (cores / 2).max(1).to_string())
}

impl Subjects {
    pub fn new(prefix: &str) -> Result<Self, SubjectError> {
        if prefix.split('.').all(valid_token) {
            Ok(Self {
                prefix: prefix.to_string(),
            })
        } else {
            Err(SubjectError::BadPrefix(prefix.to_string()))
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Queue group in which schedulers share one NATS trigger's messages.
    pub fn trigger_queue(&self, trigger_id: &str) -> String {
        format!("{}-trigger-{trigger_id}", self.prefix.replace('.', "-"))
    }

    /// Default subject of S3-style object event notifications (MinIO's NATS target
    /// publishes here).
    pub fn s3_events(&self) -> String {
        format!("{}.events.s3", self.prefix)
    }

    /// Every subject only the platform's services may publish to (NATS permission
    /// patterns): users' publishers are denied these and may use the rest, the
    /// object-event subject included.
    pub fn internal(&self) -> Vec<String> {
        let p = &self.prefix;
        vec![
            format!("{p}.invoke"),
            format!("{p}.worker.>"),
            format!("{p}.async.>"),
            format!("{p}.dlq.>"),
            format!("{p}.logs.>"),
        ]
    }

    /// nats-server's `authorization` block for a cluster on this prefix: the
    /// services' user ([`NATS_SERVICE_USER`]) may do anything; the publisher
    /// ([`NATS_PUBLISHER_USER`], for users' apps and MinIO) may publish to anything
    /// but [`Subjects::internal`] and `$JS`/`$KV`/`$O`/`$SYS`/inboxes, and subscribe to
    /// nothing; no one else connects. Passwords go in as they are (no quotes in them).
    pub fn nats_authorization(&self, service_password: &str, publisher_password: &str) -> String {
        self.nats_authorization_values(
            &format!("\"{service_password}\""),
            &format!("\"{publisher_password}\""),
        )
    }

    /// [`Subjects::nats_authorization`] with the password values written verbatim
    /// into the config: `$NAME` makes nats-server read an environment variable
    /// (how the Kubernetes manifests pass their Secret).
    pub fn nats_authorization_values(&self, service: &str, publisher: &str) -> String {
        let deny: Vec<String> = self
            .internal()
            .into_iter()
            .chain(["$JS.>", "$KV.>", "$O.>", "$SYS.>", "_INBOX.>"].map(String::from))
            .map(|s| format!("\"{s}\""))
            .collect();
        format!(
            "authorization {{\n  users = [\n    {{ user: \"{NATS_SERVICE_USER}\", password: {service} }}\n    {{ user: \"{NATS_PUBLISHER_USER}\", password: {publisher}, permissions: {{ publish: {{ allow: [\">\"], deny: [{}] }}, subscribe: {{ deny: [\">\"] }} }} }}\n  ]\n}}\n",
            deny.join(", ")
        )
    }

    /// Synchronous invocations from gateways to schedulers.
    pub fn invoke(&self) -> String {
        format!("{}.invoke", self.prefix)
    }

    /// Dispatches to one worker.
    pub fn worker_invoke(&self, worker_id: &str) -> Result<String, SubjectError> {
        if !valid_token(worker_id) {
            return Err(SubjectError::BadToken(worker_id.to_string()));
        }
        Ok(format!("{}.worker.{worker_id}.invoke", self.prefix))
    }

    /// Worker heartbeats.
    pub fn heartbeat(&self) -> String {
        format!("{}.worker.heartbeat", self.prefix)
    }

    /// Durable asynchronous invocations of one function.
    pub fn async_invoke(&self, function: &str) -> Result<String, SubjectError> {
        self.function_subject("async", function)
    }

    /// Every asynchronous invocation (the async stream's subject filter).
    pub fn async_all(&self) -> String {
        format!("{}.async.>", self.prefix)
    }

    /// Dead letters of one function.
    pub fn dlq(&self, function: &str) -> Result<String, SubjectError> {
        self.function_subject("dlq", function)
    }

    /// Every dead letter (the DLQ stream's subject filter).
    pub fn dlq_all(&self) -> String {
        format!("{}.dlq.>", self.prefix)
    }

    /// Log records of one function.
    pub fn logs(&self, function: &str) -> Result<String, SubjectError> {
        self.function_subject("logs", function)
    }

    /// Every log record (the logs stream's subject filter).
    pub fn logs_all(&self) -> String {
        format!("{}.logs.>", self.prefix)
    }

    fn function_subject(&self, kind: &str, function: &str) -> Result<String, SubjectError> {
        validate_function_name(function).map_err(|_| SubjectError::BadToken(function.into()))?;
        Ok(format!("{}.{kind}.{function}", self.prefix))
    }

    /// Parses `<p>.worker.<id>.invoke` back into the worker id.
    pub fn parse_worker_invoke<'a>(&self, subject: &'a str) -> Option<&'a str> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix('.')?;
        match rest.split('.').collect::<Vec<_>>().as_slice() {
            ["worker", id, "invoke"] if valid_token(id) => Some(id),
            _ => None,
        }
    }

    /// Parses `<p>.async.<function>` or `<p>.logs.<function>` into (kind, function).
    pub fn parse_function_subject<'a>(&self, subject: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix('.')?;
        match rest.split('.').collect::<Vec<_>>().as_slice() {
            [kind @ ("async" | "logs" | "dlq"), function] if valid_token(function) => {
                Some((kind, function))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_local_nats_server_gets_half_the_cores_unless_told() {
        assert_eq!(super::gomaxprocs_for(1, false).as_deref(), Some("1"));
        assert_eq!(super::gomaxprocs_for(2, false).as_deref(), Some("1"));
        assert_eq!(super::gomaxprocs_for(16, false).as_deref(), Some("8"));
        assert_eq!(super::gomaxprocs_for(16, true), None);
    }

    use super::*;

    #[test]
    fn round_trips() {
        let s = Subjects::new("nimbus").unwrap();
        assert_eq!(s.invoke(), "nimbus.invoke");
        let w = s.worker_invoke("w-1").unwrap();
        assert_eq!(w, "nimbus.worker.w-1.invoke");
        assert_eq!(s.parse_worker_invoke(&w), Some("w-1"));
        let a = s.async_invoke("hello").unwrap();
        assert_eq!(s.parse_function_subject(&a), Some(("async", "hello")));
        let l = s.logs("hello_2").unwrap();
        assert_eq!(s.parse_function_subject(&l), Some(("logs", "hello_2")));
    }

    #[test]
    fn multi_token_prefix() {
        let s = Subjects::new("acme.prod").unwrap();
        let w = s.worker_invoke("abc").unwrap();
        assert_eq!(w, "acme.prod.worker.abc.invoke");
        assert_eq!(s.parse_worker_invoke(&w), Some("abc"));
        assert_eq!(s.parse_worker_invoke("nimbus.worker.abc.invoke"), None);
    }

    #[test]
    fn refuses_bad_tokens() {
        let s = Subjects::new("nimbus").unwrap();
        assert!(s.worker_invoke("a.b").is_err());
        assert!(s.worker_invoke("*").is_err());
        assert!(s.async_invoke("a>").is_err());
        assert!(s.logs("").is_err());
        assert!(Subjects::new("nimbus..x").is_err());
        assert!(Subjects::new("").is_err());
        assert_eq!(s.parse_worker_invoke("nimbus.worker.a.b.invoke"), None);
    }
}
