//! A function's configuration, as the gateway writes it into the functions KV bucket
//! and schedulers and workers read it from their watch caches. The KV entry's revision
//! identifies one exact configuration: invocations carry it, so a call right after an
//! update never runs the old code.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec::{current_version, versioned};

/// Longest function name Lambda accepts.
pub const MAX_FUNCTION_NAME: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionConfig {
    #[serde(default = "current_version")]
    pub v: u16,
    pub name: String,
    pub runtime: String,
    pub handler: String,
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub description: String,
    pub timeout_secs: u32,
    pub memory_mb: u32,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    pub code: CodeRef,
    /// Lambda's format: `2026-11-30T11:28:22.000+0000`.
    pub last_modified: String,
    /// Changes on every write; Lambda's `RevisionId`.
    pub revision_id: String,
    #[serde(default = "default_ephemeral")]
    pub ephemeral_storage_mb: u32,
    /// Asynchronous invocation policy (`PutFunctionEventInvokeConfig`); `None` means
    /// Lambda's defaults and no destinations.
    #[serde(default)]
    pub event_invoke: Option<EventInvokeConfig>,
    /// The function's URL, when it has one.
    #[serde(default)]
    pub url: Option<crate::route::FunctionUrlConfig>,
}
versioned!(FunctionConfig);

/// Lambda's default: two retries after a function error.
pub const DEFAULT_MAX_RETRIES: u32 = 2;
/// Lambda's default and maximum event age: six hours.
pub const DEFAULT_MAX_EVENT_AGE_SECS: u32 = 21_600;

/// How asynchronous invocations of a function are retried and where their records go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventInvokeConfig {
    /// Retries after a function error: 0–2.
    pub maximum_retry_attempts: u32,
    /// Events older than this are not run: 60–21600 s.
    pub maximum_event_age_secs: u32,
    /// `nats:SUBJECT` or a function ARN.
    #[serde(default)]
    pub on_success: Option<String>,
    #[serde(default)]
    pub on_failure: Option<String>,
    /// Unix milliseconds of the last change (Lambda reports a timestamp).
    pub last_modified_ms: u64,
}

impl FunctionConfig {
    pub fn max_retries(&self) -> u32 {
        self.event_invoke
            .as_ref()
            .map_or(DEFAULT_MAX_RETRIES, |e| e.maximum_retry_attempts)
    }

    pub fn max_event_age_secs(&self) -> u32 {
        self.event_invoke
            .as_ref()
            .map_or(DEFAULT_MAX_EVENT_AGE_SECS, |e| e.maximum_event_age_secs)
    }
}

/// Where an invocation record goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Published (JSON) on a NATS subject.
    Nats(String),
    /// Invoked asynchronously with the record as its event.
    Function(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "destination {0:?} is not supported: use nats:SUBJECT or a Lambda function ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME)"
)]
pub struct DestinationError(pub String);

impl Destination {
    pub fn parse(s: &str) -> Result<Self, DestinationError> {
        let bad = || DestinationError(s.to_string());
        if let Some(subject) = s.strip_prefix("nats:") {
            let ok = !subject.is_empty()
                && subject.split('.').all(|t| {
                    !t.is_empty()
                        && t.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                });
            return if ok {
                Ok(Self::Nats(subject.to_string()))
            } else {
                Err(bad())
            };
        }
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            [
                "arn",
                partition,
                "lambda",
                _region,
                _account,
                "function",
                name,
                rest @ ..,
            ] if partition.starts_with("aws")
                && rest.len() <= 1
                && validate_function_name(name).is_ok() =>
            {
                Ok(Self::Function(name.to_string()))
            }
            _ => Err(bad()),
        }
    }
}

fn default_ephemeral() -> u32 {
    512
}

/// Where a function's code package lives in the code store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRef {
    /// Key inside the code store (relative to its prefix), content-addressed:
    /// `functions/<name>/<sha256 hex>.zip`.
    pub key: String,
    /// Hex SHA-256 of the zip; the worker refuses bytes that do not match.
    pub sha256_hex: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("function name must not be empty")]
    Empty,
    #[error("function name is longer than {MAX_FUNCTION_NAME} characters")]
    TooLong,
    #[error("function name may only contain letters, digits, hyphens and underscores")]
    BadCharacter,
}

/// Lambda's rule for function names: 1–64 of `[A-Za-z0-9_-]`. Names satisfying it are
/// also safe NATS subject tokens and KV keys.
pub fn validate_function_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_FUNCTION_NAME {
        return Err(NameError::TooLong);
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(NameError::BadCharacter);
    }
    Ok(())
}

/// Runtimes this build can run.
pub fn is_supported_runtime(runtime: &str) -> bool {
    matches!(
        runtime,
        "provided"
            | "provided.al2"
            | "provided.al2023"
            | "nodejs18.x"
            | "nodejs20.x"
            | "nodejs22.x"
    ) || runtime
        .strip_prefix("python3.")
        .is_some_and(|minor| !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_function_name("hello-world_1").is_ok());
        assert_eq!(validate_function_name(""), Err(NameError::Empty));
        assert_eq!(validate_function_name("a.b"), Err(NameError::BadCharacter));
        assert_eq!(validate_function_name("a b"), Err(NameError::BadCharacter));
        assert_eq!(
            validate_function_name(&"x".repeat(65)),
            Err(NameError::TooLong)
        );
    }

    #[test]
    fn destinations() {
        assert_eq!(
            Destination::parse("nats:orders.failed").unwrap(),
            Destination::Nats("orders.failed".into())
        );
        assert_eq!(
            Destination::parse("arn:aws:lambda:us-east-1:123456789012:function:on-fail").unwrap(),
            Destination::Function("on-fail".into())
        );
        assert!(Destination::parse("nats:a.*").is_err());
        assert!(Destination::parse("nats:").is_err());
        assert!(Destination::parse("arn:aws:sqs:us-east-1:123456789012:queue").is_err());
        assert!(Destination::parse("https://example.com").is_err());
    }

    #[test]
    fn runtimes() {
        assert!(is_supported_runtime("python3.12"));
        assert!(is_supported_runtime("provided.al2023"));
        assert!(!is_supported_runtime("python3."));
        assert!(!is_supported_runtime("python2.7"));
        assert!(!is_supported_runtime("java21"));
        assert!(is_supported_runtime("nodejs20.x"));
        assert!(!is_supported_runtime("nodejs8.10"));
    }
}
