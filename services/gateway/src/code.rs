//! Code packages: checked as zips, hashed, stored content-addressed
//! (`functions/<name>/<sha256 hex>.zip`) in the code store.

use std::io::Read;

use bytes::Bytes;
use nimbus_common::CodeStore;
use nimbus_proto::CodeRef;
use object_store::{ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// Lambda's limit for a zip uploaded in the request.
pub const MAX_ZIP_BYTES: usize = 50 * 1024 * 1024;
/// Lambda's limit for the unzipped package.
pub const MAX_UNZIPPED_BYTES: u64 = 250 * 1024 * 1024;
pub const MAX_ENTRIES: usize = 10_000;

/// Checks that `bytes` is a zip a worker will be able to unpack; names the
/// offending entry otherwise.
pub fn validate_zip(bytes: &[u8]) -> Result<(), ApiError> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| {
        ApiError::InvalidParameter(format!(
            "Could not unzip uploaded file. Please check your file, then try to upload again. ({e})"
        ))
    })?;
    if archive.len() > MAX_ENTRIES {
        return Err(ApiError::InvalidParameter(format!(
            "The package has more than {MAX_ENTRIES} entries"
        )));
    }
    let mut total: u64 = 0;
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| ApiError::InvalidParameter(format!("Could not read entry {i}: {e}")))?;
        let name = entry
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| format!("#{i}"));
        if entry.enclosed_name().is_none() || name.contains('\0') {
            return Err(ApiError::InvalidParameter(format!(
                "Entry {name:?} leaves the package root"
            )));
        }
        let kind = entry.unix_mode().unwrap_or(0) & 0o170000;
        if kind != 0 && kind != 0o100000 && kind != 0o040000 {
            return Err(ApiError::InvalidParameter(format!(
                "Entry {name:?} is not a regular file or directory"
            )));
        }
        // Count real decompressed bytes, not the header's claim.
        let n = std::io::copy(
            &mut (&mut entry).take(MAX_UNZIPPED_BYTES - total + 1),
            &mut std::io::sink(),
        )
        .map_err(|e| ApiError::InvalidParameter(format!("Entry {name:?} is corrupt: {e}")))?;
        total += n;
        if total > MAX_UNZIPPED_BYTES {
            return Err(ApiError::InvalidParameter(
                "Unzipped size must be smaller than 262144000 bytes".into(),
            ));
        }
    }
    Ok(())
}

/// Validates and stores a package; returns where it lives.
pub async fn store_package(
    store: &CodeStore,
    function: &str,
    bytes: Bytes,
) -> Result<CodeRef, ApiError> {
    let checked = bytes.clone();
    tokio::task::spawn_blocking(move || validate_zip(&checked))
        .await
        .map_err(|e| ApiError::Service(e.to_string()))??;
    let sha256_hex = hex(&Sha256::digest(&bytes));
    let key = format!("functions/{function}/{sha256_hex}.zip");
    let path = store.path(&key);
    let size = bytes.len() as u64;
    if store.store.head(&path).await.is_err() {
        store
            .store
            .put(&path, PutPayload::from_bytes(bytes))
            .await
            .map_err(|e| ApiError::Service(format!("storing the code package: {e}")))?;
    }
    Ok(CodeRef {
        key,
        sha256_hex,
        size,
    })
}

/// Reads an object already in the code store (`Code.S3Key`).
pub async fn read_existing(store: &CodeStore, key: &str) -> Result<Bytes, ApiError> {
    if key.is_empty() || key.split('/').any(|s| s == ".." || s == ".") {
        return Err(ApiError::InvalidParameter(format!("Invalid S3Key {key:?}")));
    }
    let result = store.store.get(&store.path(key)).await.map_err(|e| match e {
        object_store::Error::NotFound { .. } => ApiError::InvalidParameter(format!(
            "Error occurred while GetObject. S3 Error Code: NoSuchKey. S3 Error Message: The specified key does not exist: {key}"
        )),
        other => ApiError::Service(format!("reading {key} from the code store: {other}")),
    })?;
    if result.meta.size as usize > MAX_ZIP_BYTES * 5 {
        return Err(ApiError::InvalidParameter(format!(
            "{key} is larger than the largest package accepted"
        )));
    }
    result
        .bytes()
        .await
        .map_err(|e| ApiError::Service(format!("reading {key}: {e}")))
}

pub async fn read_package(store: &CodeStore, code: &CodeRef) -> Result<Bytes, ApiError> {
    let result = store
        .store
        .get(&store.path(&code.key))
        .await
        .map_err(|e| ApiError::Service(format!("reading the code package: {e}")))?;
    result
        .bytes()
        .await
        .map_err(|e| ApiError::Service(format!("reading the code package: {e}")))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn refuses_non_zip_and_escapes() {
        assert!(matches!(
            validate_zip(b"not a zip"),
            Err(ApiError::InvalidParameter(m)) if m.contains("Could not unzip")
        ));
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut w = zip::ZipWriter::new(&mut buf);
        w.start_file("../../etc/x", zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(b"x").unwrap();
        w.finish().unwrap();
        let err = validate_zip(buf.get_ref()).unwrap_err();
        assert!(err.to_string().contains("../../etc/x"), "{err}");
    }
}
