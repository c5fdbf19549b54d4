//! Event triggers: what binds a function to a source of events. Stored in the
//! triggers KV bucket (key = trigger id) by the gateway; every scheduler watches it
//! and runs the sources. Each event becomes an [`crate::AsyncInvocation`] on the
//! async stream, under the same delivery contract as an `Event` invoke.

use serde::{Deserialize, Serialize};

use crate::codec::{current_version, versioned};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerConfig {
    #[serde(default = "current_version")]
    pub v: u16,
    /// Letters, digits, `-`, `_` (a KV key and a queue-group token).
    pub id: String,
    pub function: String,
    pub source: TriggerSource,
    /// Unix ms of creation.
    pub created_ms: u64,
}
versioned!(TriggerConfig);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TriggerSource {
    /// Every message on a core NATS subject (wildcards allowed), taken once across
    /// all schedulers (a queue group).
    Nats { subject: String },
    /// A JetStream stream, consumed durably (consumer `nimbus-trigger-<id>`) in
    /// batches; each batch is one invocation with `{"Records":[…]}`.
    Stream {
        stream: String,
        batch_size: u32,
        batch_window_ms: u64,
    },
    /// S3-style object events for a bucket (from the object-event subject, the
    /// gateway webhook, or a bucket watcher), filtered as S3 filters them.
    S3 {
        bucket: String,
        #[serde(default)]
        prefix: String,
        #[serde(default)]
        suffix: String,
        /// Event-name patterns (`s3:ObjectCreated:*`); empty = every event.
        #[serde(default)]
        events: Vec<String>,
        /// A store to watch for changes (`file://…`, `s3://bucket/prefix`), for
        /// stores that send no notifications.
        #[serde(default)]
        watch: Option<String>,
    },
}

/// S3's event-name match: `s3:ObjectCreated:*` covers `ObjectCreated:Put`, …; the
/// record's name may come with or without the `s3:` prefix.
pub fn event_name_matches(pattern: &str, name: &str) -> bool {
    let p = pattern.strip_prefix("s3:").unwrap_or(pattern);
    let n = name.strip_prefix("s3:").unwrap_or(name);
    match p.strip_suffix('*') {
        Some(head) => n.starts_with(head),
        None => p == n,
    }
}

/// Whether an S3 event name pattern is one S3 knows (`s3:ObjectCreated:*`,
/// `s3:ObjectRemoved:Delete`, …).
pub fn valid_event_pattern(pattern: &str) -> bool {
    let Some(rest) = pattern.strip_prefix("s3:") else {
        return false;
    };
    let mut parts = rest.split(':');
    let family = parts.next().unwrap_or("");
    let kind = parts.next();
    parts.next().is_none()
        && !family.is_empty()
        && family.bytes().all(|b| b.is_ascii_alphanumeric())
        && kind.is_none_or(|k| {
            k == "*" || (!k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric()))
        })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TriggerError {
    #[error(
        "subject {0:?} is not a valid NATS subject (tokens of letters, digits, -, _, with * or a final >)"
    )]
    BadSubject(String),
    #[error("subject {0:?} is reserved for Nimbus itself")]
    ReservedSubject(String),
}

/// Checks a user's subscription subject; refuses Nimbus's own subjects (so a
/// trigger can never feed on invocations, dispatches or heartbeats) and the
/// server's (`$JS`, `_INBOX`, …).
pub fn validate_trigger_subject(subject: &str, prefix: &str) -> Result<(), TriggerError> {
    let tokens: Vec<&str> = subject.split('.').collect();
    let ok = !subject.is_empty()
        && subject.len() <= 256
        && tokens.iter().enumerate().all(|(i, t)| {
            *t == "*"
                || (*t == ">" && i == tokens.len() - 1)
                || (!t.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
        });
    if !ok {
        return Err(TriggerError::BadSubject(subject.into()));
    }
    let first = tokens[0];
    let prefix_first = prefix.split('.').next().unwrap_or(prefix);
    if first == ">" || first == "*" || first == prefix_first || first.starts_with('_') {
        return Err(TriggerError::ReservedSubject(subject.into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names() {
        assert!(event_name_matches(
            "s3:ObjectCreated:*",
            "ObjectCreated:Put"
        ));
        assert!(event_name_matches(
            "s3:ObjectCreated:*",
            "s3:ObjectCreated:CompleteMultipartUpload"
        ));
        assert!(!event_name_matches(
            "s3:ObjectCreated:*",
            "ObjectRemoved:Delete"
        ));
        assert!(event_name_matches(
            "s3:ObjectRemoved:Delete",
            "s3:ObjectRemoved:Delete"
        ));
        assert!(!event_name_matches(
            "s3:ObjectRemoved:Delete",
            "ObjectRemoved:DeleteMarkerCreated"
        ));
        assert!(valid_event_pattern("s3:ObjectCreated:*"));
        assert!(valid_event_pattern("s3:ObjectRemoved:Delete"));
        assert!(!valid_event_pattern("ObjectCreated:*"));
        assert!(!valid_event_pattern("s3:Object Created"));
    }

    #[test]
    fn subjects() {
        assert!(validate_trigger_subject("orders.>", "nimbus").is_ok());
        assert!(validate_trigger_subject("orders.*.created", "nimbus").is_ok());
        assert!(matches!(
            validate_trigger_subject("nimbus.invoke", "nimbus"),
            Err(TriggerError::ReservedSubject(_))
        ));
        assert!(matches!(
            validate_trigger_subject(">", "nimbus"),
            Err(TriggerError::ReservedSubject(_))
        ));
        assert!(validate_trigger_subject("orders.>.x", "nimbus").is_err());
        assert!(validate_trigger_subject("orders..x", "nimbus").is_err());
        assert!(validate_trigger_subject("a b", "nimbus").is_err());
    }
}

/// A lease in the leases KV bucket: who runs a singleton task (a bucket watcher)
/// until when. Taken and renewed with compare-and-set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    #[serde(default = "current_version")]
    pub v: u16,
    pub holder: String,
    pub expires_ms: u64,
}
versioned!(Lease);

/// What a bucket watcher saw last: object key → version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchState {
    #[serde(default = "current_version")]
    pub v: u16,
    pub objects: std::collections::BTreeMap<String, ObjectVersion>,
}
versioned!(WatchState);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectVersion {
    pub etag: String,
    pub size: u64,
}
