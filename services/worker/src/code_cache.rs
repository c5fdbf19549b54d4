//! The code cache: packages fetched from the code store, verified against their
//! SHA-256 and unpacked into a content-addressed directory (`<root>/<sha256 hex>/`).
//!
//! A package is fetched once however many instances want it at the same moment, and
//! unpacked into a temporary directory that is renamed into place only when complete,
//! so a crash mid-unpack never leaves a half directory that looks valid.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nimbus_common::CodeStore;
use nimbus_proto::CodeRef;
use object_store::ObjectStoreExt;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

#[derive(Debug, Clone, thiserror::Error)]
pub enum CodeError {
    #[error(
        "code package {key} does not match its recorded SHA-256 (expected {expected}, got {actual})"
    )]
    ChecksumMismatch {
        key: String,
        expected: String,
        actual: String,
    },
    #[error("code package {key} could not be fetched: {reason}")]
    Fetch { key: String, reason: String },
    #[error("code package {key} could not be unpacked: {reason}")]
    Unpack { key: String, reason: String },
}

type Slot = Arc<OnceCell<PathBuf>>;

pub struct CodeCache {
    store: CodeStore,
    root: PathBuf,
    fetching: Mutex<HashMap<String, Slot>>,
}

impl CodeCache {
    pub fn new(store: CodeStore, root: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&root)?;
        // Leftovers of an unpack interrupted by a crash.
        for entry in std::fs::read_dir(&root)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(Self {
            store,
            root,
            fetching: Mutex::new(HashMap::new()),
        })
    }

    /// The unpacked directory of `code`, fetching and unpacking it if needed.
    pub async fn ensure(&self, code: &CodeRef) -> Result<PathBuf, CodeError> {
        if !is_hex_sha256(&code.sha256_hex) {
            return Err(CodeError::Fetch {
                key: code.key.clone(),
                reason: "recorded SHA-256 is not 64 hex digits".into(),
            });
        }
        let dir = self.root.join(&code.sha256_hex);
        if dir.is_dir() {
            return Ok(dir);
        }
        let slot = self
            .fetching
            .lock()
            .expect("lock poisoned")
            .entry(code.sha256_hex.clone())
            .or_default()
            .clone();
        let result = slot
            .get_or_try_init(|| self.fetch_and_unpack(code, dir.clone()))
            .await
            .cloned();
        self.fetching
            .lock()
            .expect("lock poisoned")
            .remove(&code.sha256_hex);
        result
    }

    async fn fetch_and_unpack(&self, code: &CodeRef, dir: PathBuf) -> Result<PathBuf, CodeError> {
        if dir.is_dir() {
            return Ok(dir);
        }
        let started = std::time::Instant::now();
        let path = self.store.path(&code.key);
        let fetch_err = |e: object_store::Error| CodeError::Fetch {
            key: code.key.clone(),
            reason: e.to_string(),
        };
        let bytes = self
            .store
            .store
            .get(&path)
            .await
            .map_err(fetch_err)?
            .bytes()
            .await
            .map_err(fetch_err)?;
        let tmp = self.root.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
        let key = code.key.clone();
        let expected = code.sha256_hex.clone();
        let target = dir.clone();
        // Hashing and unpacking off the async runtime: milliseconds per MB, which on
        // a service with one runtime thread would hold up every other call.
        tokio::task::spawn_blocking(move || {
            let actual = hex(&Sha256::digest(&bytes));
            if actual != expected {
                return Err(CodeError::ChecksumMismatch {
                    key,
                    expected,
                    actual,
                });
            }
            let result = unpack(&bytes, &tmp).and_then(|()| {
                std::fs::rename(&tmp, &target).or_else(|e| {
                    // Another process unpacked the same package first: fine.
                    if target.is_dir() {
                        let _ = std::fs::remove_dir_all(&tmp);
                        Ok(())
                    } else {
                        Err(e.to_string())
                    }
                })
            });
            if result.is_err() {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            result.map_err(|reason| CodeError::Unpack { key, reason })
        })
        .await
        .map_err(|e| CodeError::Unpack {
            key: code.key.clone(),
            reason: e.to_string(),
        })??;
        tracing::info!(key = %code.key, size = code.size, elapsed_ms = started.elapsed().as_millis() as u64, "code package cached");
        Ok(dir)
    }
}

fn is_hex_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Unpacks a zip into `dest` under the package rules (`nimbus-package`): nothing
/// outside `dest`, no links or special files, Lambda's size limits, set-id bits
/// dropped.
pub fn unpack(bytes: &[u8], dest: &Path) -> Result<(), String> {
    nimbus_package::unpack(bytes, dest, &nimbus_package::Limits::LAMBDA).map_err(|e| e.to_string())
}
