//! The code cache: packages fetched from the code store, verified against their
//! SHA-256 and unpacked into a content-addressed directory (`<root>/<sha256 hex>/`).
//!
//! A package is fetched once however many instances want it at the same moment, and
//! unpacked into a temporary directory that is renamed into place only when complete,
//! so a crash mid-unpack never leaves a half directory that looks valid.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nimbus_common::CodeStore;
use nimbus_proto::CodeRef;
use object_store::ObjectStoreExt;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

/// Limits of an unpacked package (Lambda's: 250 MB unzipped).
pub const MAX_UNZIPPED_BYTES: u64 = 250 * 1024 * 1024;
pub const MAX_ENTRIES: usize = 10_000;

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
        let actual = hex(&Sha256::digest(&bytes));
        if actual != code.sha256_hex {
            return Err(CodeError::ChecksumMismatch {
                key: code.key.clone(),
                expected: code.sha256_hex.clone(),
                actual,
            });
        }
        let tmp = self.root.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
        let key = code.key.clone();
        let target = dir.clone();
        tokio::task::spawn_blocking(move || {
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

/// Unpacks a zip into `dest`, refusing entries that would land outside it, symlinks
/// and device files, and enforcing Lambda's size limits. Set-id bits are dropped.
pub fn unpack(bytes: &[u8], dest: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| format!("not a zip: {e}"))?;
    if archive.len() > MAX_ENTRIES {
        return Err(format!("more than {MAX_ENTRIES} entries"));
    }
    std::fs::create_dir_all(dest).map_err(|e| e.to_string())?;
    let mut total: u64 = 0;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| e.to_string())?;
        let name = entry
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| format!("#{i}"));
        let rel = entry
            .enclosed_name()
            .ok_or_else(|| format!("entry {name:?} leaves the package root"))?;
        let mode = entry.unix_mode().unwrap_or(0);
        let file_type = mode & 0o170000;
        if file_type != 0 && file_type != 0o100000 && file_type != 0o040000 {
            return Err(format!("entry {name:?} is not a regular file or directory"));
        }
        let out = dest.join(&rel);
        if entry.is_dir() {
            std::fs::create_dir_all(&out).map_err(|e| format!("{name}: {e}"))?;
            continue;
        }
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{name}: {e}"))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&out)
            .map_err(|e| format!("{name}: {e}"))?;
        let budget = MAX_UNZIPPED_BYTES - total;
        let written = std::io::copy(&mut (&mut entry).take(budget + 1), &mut file)
            .map_err(|e| format!("{name}: {e}"))?;
        total += written;
        if total > MAX_UNZIPPED_BYTES {
            return Err(format!(
                "unzipped size exceeds {} MB",
                MAX_UNZIPPED_BYTES / 1024 / 1024
            ));
        }
        let perm = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(perm))
            .map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn zip_of(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut w = zip::ZipWriter::new(&mut buf);
        for (name, data, mode) in entries {
            let opts = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap();
        buf.into_inner()
    }

    #[test]
    fn unpacks_and_keeps_exec_bit() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let z = zip_of(&[
            ("bootstrap", b"#!/bin/sh\n", 0o755),
            ("lib/a.txt", b"a", 0o644),
        ]);
        unpack(&z, dir.path()).unwrap();
        let meta = std::fs::metadata(dir.path().join("bootstrap")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
        assert_eq!(std::fs::read(dir.path().join("lib/a.txt")).unwrap(), b"a");
    }

    #[test]
    fn refuses_escape() {
        let dir = tempfile::tempdir().unwrap();
        let z = zip_of(&[("../evil", b"x", 0o644)]);
        let err = unpack(&z, &dir.path().join("root")).unwrap_err();
        assert!(err.contains("../evil"), "{err}");
        assert!(!dir.path().join("evil").exists());
    }

    #[test]
    fn refuses_non_zip() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            unpack(b"hello", dir.path())
                .unwrap_err()
                .contains("not a zip")
        );
    }

    #[test]
    fn drops_setuid() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let z = zip_of(&[("x", b"x", 0o4755)]);
        unpack(&z, dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join("x"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
    }
}
