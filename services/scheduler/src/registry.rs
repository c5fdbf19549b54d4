//! The function registry as the scheduler sees it: a [`KvCache`] mirror of the
//! functions bucket. The invocation path never reads storage, except when an
//! invocation asks for a revision the watch has not delivered yet and does not
//! deliver within [`CATCH_UP`] — then one direct read settles it.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use nimbus_common::KvCache;
use nimbus_proto::{ErrorCode, FunctionConfig, WireError};
use tokio_util::sync::CancellationToken;

/// How long an invocation waits for the watch to catch up with its revision.
pub const CATCH_UP: Duration = Duration::from_secs(2);

pub struct Registry {
    cache: Arc<KvCache<FunctionConfig>>,
}

impl Registry {
    pub async fn start(kv: kv::Store, stop: CancellationToken) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            cache: KvCache::start(kv, stop).await,
        }))
    }

    /// The configuration of `name` at `min_revision` or newer.
    pub async fn resolve(
        &self,
        name: &str,
        min_revision: u64,
    ) -> Result<(u64, Arc<FunctionConfig>), WireError> {
        if let Some((rev, cfg)) = self.cache.get(name)
            && rev >= min_revision
        {
            return Ok((rev, cfg));
        }
        if self.cache.seen() < min_revision
            && self.cache.caught_up(min_revision, CATCH_UP).await
            && let Some((rev, cfg)) = self.cache.get(name)
            && rev >= min_revision
        {
            return Ok((rev, cfg));
        }
        // The watch is behind or the name is unknown: one direct read decides.
        tracing::debug!(function = %name, min_revision, "registry miss; reading the bucket");
        match self.cache.kv.entry(name).await {
            Ok(Some(entry))
                if entry.operation == kv::Operation::Put && entry.revision >= min_revision =>
            {
                self.cache.apply(&entry);
                self.cache.get(name).ok_or_else(|| not_found(name))
            }
            Ok(_) => Err(not_found(name)),
            Err(e) => Err(WireError::new(
                ErrorCode::Internal,
                format!("reading the functions bucket: {e}"),
            )),
        }
    }
}

fn not_found(name: &str) -> WireError {
    WireError::new(
        ErrorCode::FunctionNotFound,
        format!("Function not found: {name}"),
    )
}
