//! The code store: where code packages live, chosen by URL.
//!
//! - `file:///abs/path` — a local directory (the default under the data dir);
//! - `s3://bucket[/prefix]` — S3 or an S3-compatible server; credentials and region
//!   from the usual `AWS_*` variables, the endpoint from `AWS_ENDPOINT_URL_S3`,
//!   `AWS_ENDPOINT_URL` or `AWS_ENDPOINT` (plain `http://` endpoints are allowed, as
//!   MinIO-style servers often are).
//!
//! Keys are relative to the URL's path, so several clusters can share one bucket.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum CodeStoreError {
    #[error("code store URL {url:?} is not a URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("code store scheme {0:?} is not supported (use file:// or s3://)")]
    UnsupportedScheme(String),
    #[error("code store directory {path}: {source}")]
    Directory {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("code store: {0}")]
    Store(#[from] object_store::Error),
}

#[derive(Debug, Clone)]
pub struct CodeStore {
    pub store: Arc<dyn ObjectStore>,
    prefix: Vec<String>,
    url: String,
}

impl CodeStore {
    /// Checks `url` as [`CodeStore::from_url`] would, without creating anything.
    pub fn check_url(url: &str) -> Result<(), CodeStoreError> {
        let bad = |reason: &str| CodeStoreError::BadUrl {
            url: url.into(),
            reason: reason.into(),
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        match parsed.scheme() {
            "file" => parsed
                .to_file_path()
                .map(|_| ())
                .map_err(|_| bad("not an absolute file path")),
            "s3" if parsed.host_str().unwrap_or_default().is_empty() => Err(bad("no bucket")),
            "s3" => Ok(()),
            other => Err(CodeStoreError::UnsupportedScheme(other.into())),
        }
    }

    pub fn from_url(url: &str) -> Result<Self, CodeStoreError> {
        let parsed = url::Url::parse(url).map_err(|e| CodeStoreError::BadUrl {
            url: url.into(),
            reason: e.to_string(),
        })?;
        match parsed.scheme() {
            "file" => {
                let path = parsed.to_file_path().map_err(|_| CodeStoreError::BadUrl {
                    url: url.into(),
                    reason: "not an absolute file path".into(),
                })?;
                std::fs::create_dir_all(&path).map_err(|source| CodeStoreError::Directory {
                    path: path.display().to_string(),
                    source,
                })?;
                let store = LocalFileSystem::new_with_prefix(&path)?;
                Ok(Self {
                    store: Arc::new(store),
                    prefix: vec![],
                    url: url.into(),
                })
            }
            "s3" => {
                let bucket = parsed.host_str().unwrap_or_default();
                if bucket.is_empty() {
                    return Err(CodeStoreError::BadUrl {
                        url: url.into(),
                        reason: "no bucket".into(),
                    });
                }
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                let endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
                    .iter()
                    .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
                if let Some(endpoint) = endpoint {
                    builder = builder
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_endpoint(endpoint);
                }
                if std::env::var("AWS_REGION").is_err()
                    && std::env::var("AWS_DEFAULT_REGION").is_err()
                {
                    builder = builder.with_region("us-east-1");
                } else if let Ok(region) = std::env::var("AWS_REGION") {
                    builder = builder.with_region(region);
                }
                let prefix = parsed
                    .path()
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                Ok(Self {
                    store: Arc::new(builder.build()?),
                    prefix,
                    url: url.into(),
                })
            }
            other => Err(CodeStoreError::UnsupportedScheme(other.into())),
        }
    }

    /// The object path of `key` (a `/`-separated relative key).
    pub fn path(&self, key: &str) -> Path {
        let parts = self
            .prefix
            .iter()
            .map(String::as_str)
            .chain(key.split('/').filter(|s| !s.is_empty()));
        Path::from_iter(parts)
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_carry_the_prefix() {
        let store = CodeStore {
            store: Arc::new(object_store::memory::InMemory::new()),
            prefix: vec!["a".into(), "b".into()],
            url: "s3://x/a/b".into(),
        };
        assert_eq!(
            store.path("functions/f/1.zip").as_ref(),
            "a/b/functions/f/1.zip"
        );
    }

    #[test]
    fn bad_urls_are_named() {
        assert!(matches!(
            CodeStore::from_url("ftp://x/y"),
            Err(CodeStoreError::UnsupportedScheme(s)) if s == "ftp"
        ));
        assert!(matches!(
            CodeStore::from_url("not a url"),
            Err(CodeStoreError::BadUrl { .. })
        ));
    }

    #[test]
    fn file_store_round_trips() {
        let dir = std::env::temp_dir().join(format!("nimbus-cs-{}", std::process::id()));
        let url = format!("file://{}", dir.display());
        let store = CodeStore::from_url(&url).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use object_store::ObjectStoreExt;
            let p = store.path("functions/f/abc.zip");
            store.store.put(&p, b"hello".to_vec().into()).await.unwrap();
            let got = store.store.get(&p).await.unwrap().bytes().await.unwrap();
            assert_eq!(&got[..], b"hello");
        });
        std::fs::remove_dir_all(dir).unwrap();
    }
}
