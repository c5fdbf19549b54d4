//! Function code packages (zips) are untrusted input. The gateway validates them on
//! upload and the worker again on extraction, with the same rules, here:
//!
//! - every entry stays inside the package root: no `..`, no absolute path, no NUL
//!   in a name, no duplicate names;
//! - only regular files and directories: symbolic links (a file written through a
//!   link is how CVE-2025-29787 escaped), devices, FIFOs and sockets are refused;
//! - Lambda's limits: 250 MB unzipped, at most 10,000 entries — counted from the
//!   bytes actually decompressed, never from the headers' claims;
//! - no zip bombs: an entry over 1 MiB that decompresses more than 1,000× is refused;
//! - encrypted entries are refused; set-uid/set-gid/sticky bits are dropped (files
//!   are written 0644, or 0755 when any execute bit was set).
//!
//! Refusals name the entry. [`unpack`] writes only below its destination, creates
//! files with `create_new` (nothing is overwritten, nothing followed), and leaves
//! cleanup of a failed unpack to the caller (who unpacks into a fresh directory).

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_unzipped_bytes: u64,
    pub max_entries: usize,
    /// Entries larger than `ratio_floor_bytes` may not decompress more than this.
    pub max_ratio: u64,
    pub ratio_floor_bytes: u64,
}

impl Limits {
    /// Lambda's: 250 MB unzipped, 10,000 entries; bombs over 1,000×.
    pub const LAMBDA: Limits = Limits {
        max_unzipped_bytes: 250 * 1024 * 1024,
        max_entries: 10_000,
        max_ratio: 1_000,
        ratio_floor_bytes: 1024 * 1024,
    };
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackageError {
    #[error(
        "Could not unzip uploaded file. Please check your file, then try to upload again. ({0})"
    )]
    NotZip(String),
    #[error("the package has more than {0} entries")]
    TooManyEntries(usize),
    #[error("unzipped size must be smaller than {0} bytes")]
    TooLarge(u64),
    #[error("entry {name:?} {reason}")]
    Entry { name: String, reason: String },
    #[error("unpacking: {0}")]
    Io(String),
}

fn entry_err(name: &str, reason: impl Into<String>) -> PackageError {
    PackageError::Entry {
        name: name.to_string(),
        reason: reason.into(),
    }
}

/// One checked entry: where it goes and whether it is executable.
enum Kind {
    Dir,
    File { executable: bool },
}

/// Walks the archive, checking every entry; `sink` gets each entry's relative path
/// and reader.
fn walk(
    bytes: &[u8],
    limits: &Limits,
    mut sink: impl FnMut(&Path, Kind, &mut dyn Read, &str) -> Result<u64, PackageError>,
) -> Result<(), PackageError> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| PackageError::NotZip(e.to_string()))?;
    if archive.len() > limits.max_entries {
        return Err(PackageError::TooManyEntries(limits.max_entries));
    }
    let mut seen = HashSet::new();
    let mut total: u64 = 0;
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| PackageError::NotZip(format!("entry {i}: {e}")))?;
        let raw = entry.name_raw().to_vec();
        let name = String::from_utf8_lossy(&raw).into_owned();
        if raw.contains(&0) {
            return Err(entry_err(&name, "has a NUL byte in its name"));
        }
        if name.is_empty() || name.len() > 1024 {
            return Err(entry_err(&name, "has an empty or over-long name"));
        }
        if entry.encrypted() {
            return Err(entry_err(&name, "is encrypted"));
        }
        if name.contains('\\') {
            return Err(entry_err(
                &name,
                "uses a backslash (Windows path separators are not allowed)",
            ));
        }
        let rel: PathBuf = entry
            .enclosed_name()
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| entry_err(&name, "leaves the package root"))?;
        if name.starts_with('/') {
            return Err(entry_err(&name, "leaves the package root"));
        }
        if !seen.insert(rel.clone()) {
            return Err(entry_err(&name, "appears twice"));
        }
        let mode = entry.unix_mode().unwrap_or(0);
        let kind = match mode & 0o170000 {
            0o120000 => return Err(entry_err(&name, "is a symbolic link")),
            0o020000 | 0o060000 => return Err(entry_err(&name, "is a device file")),
            0o010000 | 0o140000 => return Err(entry_err(&name, "is a FIFO or socket")),
            0o040000 => Kind::Dir,
            _ if entry.is_dir() => Kind::Dir,
            0 | 0o100000 => Kind::File {
                executable: mode & 0o111 != 0,
            },
            other => {
                return Err(entry_err(
                    &name,
                    format!("has an unknown file type {other:o}"),
                ));
            }
        };
        let compressed = entry.compressed_size().max(1);
        let budget = limits.max_unzipped_bytes - total;
        let mut limited = (&mut entry).take(budget + 1);
        let n = sink(&rel, kind, &mut limited, &name)?;
        total += n;
        if total > limits.max_unzipped_bytes {
            return Err(PackageError::TooLarge(limits.max_unzipped_bytes));
        }
        if n > limits.ratio_floor_bytes && n / compressed > limits.max_ratio {
            return Err(entry_err(
                &name,
                format!(
                    "decompresses {}× (more than {}×): refused as a zip bomb",
                    n / compressed,
                    limits.max_ratio
                ),
            ));
        }
    }
    Ok(())
}

/// Checks a package without writing anything.
pub fn validate(bytes: &[u8], limits: &Limits) -> Result<(), PackageError> {
    walk(bytes, limits, |_, kind, reader, name| match kind {
        Kind::Dir => Ok(0),
        Kind::File { .. } => std::io::copy(reader, &mut std::io::sink())
            .map_err(|e| entry_err(name, format!("is corrupt: {e}"))),
    })
}

/// Unpacks a package below `dest` (created if missing).
pub fn unpack(bytes: &[u8], dest: &Path, limits: &Limits) -> Result<(), PackageError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dest).map_err(|e| PackageError::Io(e.to_string()))?;
    walk(bytes, limits, |rel, kind, reader, name| {
        let out = dest.join(rel);
        debug_assert!(out.starts_with(dest));
        match kind {
            Kind::Dir => {
                std::fs::create_dir_all(&out).map_err(|e| entry_err(name, e.to_string()))?;
                Ok(0)
            }
            Kind::File { executable } => {
                if let Some(parent) = out.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| entry_err(name, e.to_string()))?;
                }
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&out)
                    .map_err(|e| entry_err(name, e.to_string()))?;
                let n = std::io::copy(reader, &mut file)
                    .map_err(|e| entry_err(name, format!("is corrupt: {e}")))?;
                let perm = if executable { 0o755 } else { 0o644 };
                std::fs::set_permissions(&out, std::fs::Permissions::from_mode(perm))
                    .map_err(|e| entry_err(name, e.to_string()))?;
                Ok(n)
            }
        }
    })
}
