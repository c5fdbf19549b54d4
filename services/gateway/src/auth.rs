//! The front door: SigV4 verification of the Lambda API and the native API against
//! the configured access keys. Open without credentials: `/healthz`, `/metrics`,
//! HTTP routes, and function URLs whose `AuthType` is `NONE` (an `AWS_IAM` URL checks
//! its caller itself, with [`check`]).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::error::ApiError;

/// Largest body buffered for a signature check: a 50 MB zip, base64 in JSON.
const MAX_SIGNED_BODY: usize = 80 * 1024 * 1024;

/// Access key id → secret.
#[derive(Debug, Clone, Default)]
pub struct AccessKeys(HashMap<String, String>);

impl AccessKeys {
    /// `ID:SECRET[,ID:SECRET…]`.
    pub fn parse_list(spec: &str) -> anyhow::Result<Self> {
        let mut keys = HashMap::new();
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((id, secret)) = pair.split_once(':') else {
                bail!(
                    "access keys are ID:SECRET pairs separated by commas; got an entry without ':'"
                );
            };
            insert(&mut keys, id.trim(), secret.trim())?;
        }
        Ok(Self(keys))
    }

    /// An AWS shared-credentials file (`aws_access_key_id` / `aws_secret_access_key`
    /// in each section), as `nimbus up` writes.
    pub fn load_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading access keys from {}", path.display()))?;
        let mut keys = HashMap::new();
        for (_, c) in nimbus_sigv4::credentials_profiles(&text) {
            insert(&mut keys, &c.access_key_id, &c.secret_access_key)?;
        }
        if keys.is_empty() {
            bail!(
                "{} holds no aws_access_key_id/aws_secret_access_key pair",
                path.display()
            );
        }
        Ok(Self(keys))
    }

    /// Loads `path`, first writing a new key pair there if it does not exist (a
    /// compose or Kubernetes gateway's first start). The file is made 0600 and given
    /// to the owner of its directory: on a bind mount that is the user whose CLI
    /// will read it. Two gateways starting together: one creates, the other loads.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        use std::io::Write;
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let dir = path.parent().unwrap_or(Path::new("."));
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
        match created {
            Ok(mut f) => {
                let creds = nimbus_sigv4::generate().context("generating an access key")?;
                f.write_all(
                    nimbus_sigv4::credentials_file(
                        &creds,
                        "written by nimbus-gateway on first start: the keys this cluster accepts",
                    )
                    .as_bytes(),
                )
                .and_then(|()| f.sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
                if let Ok(meta) = std::fs::metadata(dir) {
                    let _ = std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid()));
                }
                tracing::info!(
                    access_key_id = %creds.access_key_id,
                    file = %path.display(),
                    "created an access key"
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(e).with_context(|| format!("creating {}", path.display()));
            }
        }
        // A concurrent creator may not have written yet.
        for _ in 0..50 {
            if std::fs::metadata(path)
                .map(|m| m.len() > 0)
                .unwrap_or(false)
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Self::load_file(path)
    }

    pub fn extend(&mut self, other: AccessKeys) {
        self.0.extend(other.0);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn secret_of(&self, id: &str) -> Option<String> {
        self.0.get(id).cloned()
    }

    /// The key of presigned links: every gateway with the same access keys derives
    /// the same one.
    fn link_key(&self) -> Vec<u8> {
        let mut all: Vec<_> = self.0.iter().collect();
        all.sort();
        let mut material = b"nimbus-presigned-links".to_vec();
        for (id, secret) in all {
            material.extend_from_slice(format!("\n{id}:{secret}").as_bytes());
        }
        nimbus_sigv4::hmac(&material, b"link")
    }

    /// A query string that lets anyone GET `path` until `expires` (unix seconds),
    /// like the presigned S3 URL of Lambda's `Code.Location`.
    pub fn presign(&self, path: &str, expires: i64) -> String {
        format!(
            "X-Nimbus-Expires={expires}&X-Nimbus-Signature={}",
            self.link_signature(path, expires)
        )
    }

    fn link_signature(&self, path: &str, expires: i64) -> String {
        nimbus_sigv4::hex(&nimbus_sigv4::hmac(
            &self.link_key(),
            format!("GET\n{path}\n{expires}").as_bytes(),
        ))
    }

    fn presigned_ok(&self, path: &str, query: &str) -> bool {
        let mut expires = None;
        let mut sig = None;
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("X-Nimbus-Expires", v)) => expires = v.parse::<i64>().ok(),
                Some(("X-Nimbus-Signature", v)) => sig = Some(v),
                _ => {}
            }
        }
        let (Some(expires), Some(sig)) = (expires, sig) else {
            return false;
        };
        if chrono::Utc::now().timestamp() > expires {
            return false;
        }
        let want = self.link_signature(path, expires);
        nimbus_sigv4::constant_time_eq(want.as_bytes(), sig.as_bytes())
    }
}

/// How long a `Code.Location` link works (Lambda's: 10 minutes).
pub const LINK_SECS: i64 = 600;

fn insert(keys: &mut HashMap<String, String>, id: &str, secret: &str) -> anyhow::Result<()> {
    if id.is_empty() || secret.is_empty() {
        bail!("an access key id or secret is empty");
    }
    keys.insert(id.to_string(), secret.to_string());
    Ok(())
}

/// Paths that need a signature.
fn protected(path: &str) -> bool {
    [
        "/2015-03-31/",
        "/2019-09-25/",
        "/2021-10-31/",
        "/nimbus/v1/",
    ]
    .iter()
    .any(|p| path.starts_with(p))
}

/// Middleware: refuses unsigned or wrongly signed calls to the APIs.
pub async fn authenticate(
    State(state): State<std::sync::Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(keys) = &state.access_keys else {
        return next.run(req).await;
    };
    if !protected(req.uri().path()) {
        return next.run(req).await;
    }
    // A presigned link (GET only) stands in for a signature.
    if req.method() == axum::http::Method::GET
        && let Some(query) = req.uri().query()
        && query.contains("X-Nimbus-Signature=")
    {
        if keys.presigned_ok(req.uri().path(), query) {
            return next.run(req).await;
        }
        return ApiError::Auth(nimbus_sigv4::AuthError::BadSignature).into_response();
    }
    match check(keys, req).await {
        Ok(req) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Verifies a request's signature; gives the request back with its body buffered.
pub async fn check(keys: &AccessKeys, req: Request) -> Result<Request, ApiError> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, MAX_SIGNED_BODY)
        .await
        .map_err(|_| ApiError::EntityTooLarge("Request must be smaller than 80 MB".into()))?;
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let request = nimbus_sigv4::RequestParts {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or_default(),
        headers: &headers,
        body: &body,
    };
    match nimbus_sigv4::verify(&request, |id| keys.secret_of(id), chrono::Utc::now()) {
        Ok(_) => Ok(Request::from_parts(parts, Body::from(body))),
        Err(e) => {
            tracing::info!(path = %parts.uri.path(), error_type = e.aws_type(), "request refused");
            Err(ApiError::Auth(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_key_lists_and_credentials_files() {
        let k = AccessKeys::parse_list("A:one, B:two").unwrap();
        assert_eq!(k.secret_of("B").as_deref(), Some("two"));
        assert!(AccessKeys::parse_list("nocolon").is_err());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("credentials");
        std::fs::write(
            &f,
            "[default]\naws_access_key_id = AK1\naws_secret_access_key = s1\n\n[other]\naws_secret_access_key=s2\naws_access_key_id=AK2\n",
        )
        .unwrap();
        let k = AccessKeys::load_file(&f).unwrap();
        assert_eq!(k.secret_of("AK1").as_deref(), Some("s1"));
        assert_eq!(k.secret_of("AK2").as_deref(), Some("s2"));
        std::fs::write(&f, "[default]\n").unwrap();
        assert!(AccessKeys::load_file(&f).is_err());
    }

    #[test]
    fn presigned_links_expire_and_name_their_path() {
        let k = AccessKeys::parse_list("A:one").unwrap();
        let later = chrono::Utc::now().timestamp() + 60;
        let q = k.presign("/nimbus/v1/functions/f/code", later);
        assert!(k.presigned_ok("/nimbus/v1/functions/f/code", &q));
        assert!(!k.presigned_ok("/nimbus/v1/functions/g/code", &q));
        let past = k.presign("/nimbus/v1/functions/f/code", later - 120);
        assert!(!k.presigned_ok("/nimbus/v1/functions/f/code", &past));
        let other = AccessKeys::parse_list("A:two").unwrap();
        assert!(!other.presigned_ok("/nimbus/v1/functions/f/code", &q));
    }

    #[test]
    fn only_the_apis_are_protected() {
        assert!(protected("/2015-03-31/functions"));
        assert!(protected("/nimbus/v1/cluster"));
        assert!(!protected("/healthz"));
        assert!(!protected("/fn/x/"));
        assert!(!protected("/my/route"));
    }
}
