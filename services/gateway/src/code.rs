//! Code packages: checked as zips, hashed, stored content-addressed
//! (`functions/<name>/<sha256 hex>.zip`) in the code store.

use bytes::Bytes;
use nimbus_common::CodeStore;
use nimbus_proto::CodeRef;
use object_store::{ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// Lambda's limit for a zip uploaded in the request.
pub const MAX_ZIP_BYTES: usize = 50 * 1024 * 1024;
/// Checks that `bytes` is a zip a worker will be able to unpack (the rules are
/// `nimbus-package`'s, the worker applies them again); names the offending entry.
pub fn validate_zip(bytes: &[u8]) -> Result<(), ApiError> {
    nimbus_package::validate(bytes, &nimbus_package::Limits::LAMBDA)
        .map_err(|e| ApiError::InvalidParameter(e.to_string()))
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
