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
}
versioned!(FunctionConfig);

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
    matches!(runtime, "provided" | "provided.al2" | "provided.al2023")
        || runtime
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
    fn runtimes() {
        assert!(is_supported_runtime("python3.12"));
        assert!(is_supported_runtime("provided.al2023"));
        assert!(!is_supported_runtime("python3."));
        assert!(!is_supported_runtime("python2.7"));
        assert!(!is_supported_runtime("java21"));
    }
}
