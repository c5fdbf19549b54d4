//! The CLI's HTTP client: the gateway is all it talks to. Errors become one line a
//! person can act on.

use std::time::Duration;

use anyhow::{Context, anyhow};
use nimbus_sigv4::Credentials;
use reqwest::{Method, Response, StatusCode};

#[derive(Clone)]
pub struct Client {
    pub endpoint: String,
    pub http: reqwest::Client,
    /// Signs every request (SigV4) when set.
    pub creds: Option<Credentials>,
    pub region: String,
}

impl Client {
    pub fn new(endpoint: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            http,
            creds: find_credentials()?,
            region: std::env::var("AWS_REGION")
                .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|_| "us-east-1".into()),
        })
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.endpoint))
    }

    /// Signs (when there are credentials) and sends, without judging the status.
    pub async fn execute(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Response> {
        let mut req = req.build().map_err(|e| self.transport(e))?;
        if let Some(creds) = &self.creds {
            nimbus_sigv4::sign_reqwest(&mut req, creds, &self.region);
        }
        self.http.execute(req).await.map_err(|e| self.transport(e))
    }

    /// Sends and turns transport failures and API errors into readable errors.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Response> {
        let resp = self.execute(req).await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let unsigned = self.creds.is_none();
        let err = api_error(resp).await;
        if unsigned && err.to_string().starts_with("MissingAuthenticationToken") {
            return Err(err.context(
                "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (`nimbus up` prints them), or AWS_PROFILE",
            ));
        }
        Err(err)
    }

    pub fn transport(&self, e: reqwest::Error) -> anyhow::Error {
        if e.is_connect() {
            anyhow!(
                "cannot reach the Nimbus gateway at {} (is `nimbus up` running? set --endpoint or NIMBUS_ENDPOINT)",
                self.endpoint
            )
        } else if e.is_timeout() {
            anyhow!("the gateway at {} did not answer in time", self.endpoint)
        } else {
            anyhow!("request to {} failed: {e}", self.endpoint)
        }
    }
}

/// `x-amzn-ErrorType: Message`.
pub async fn api_error(resp: Response) -> anyhow::Error {
    let status = resp.status();
    let kind = resp
        .headers()
        .get("x-amzn-ErrorType")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("Message")
                .or(v.get("message"))
                .and_then(|m| m.as_str().map(str::to_string))
        })
        .unwrap_or(body);
    if kind.is_empty() {
        anyhow!(
            "{} {}: {message}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
    } else {
        anyhow!("{kind}: {message}")
    }
}

pub fn is_not_found(status: StatusCode) -> bool {
    status == StatusCode::NOT_FOUND
}

/// Where the CLI finds its keys, first match wins: `AWS_ACCESS_KEY_ID` +
/// `AWS_SECRET_ACCESS_KEY`; the profile `AWS_PROFILE` (or `default`) of
/// `AWS_SHARED_CREDENTIALS_FILE` (or `~/.aws/credentials`); the keys `nimbus up`
/// keeps in its data dir. None: requests go unsigned.
pub fn find_credentials() -> anyhow::Result<Option<Credentials>> {
    if let (Ok(id), Ok(secret)) = (
        std::env::var("AWS_ACCESS_KEY_ID"),
        std::env::var("AWS_SECRET_ACCESS_KEY"),
    ) && !id.is_empty()
    {
        return Ok(Some(Credentials {
            access_key_id: id,
            secret_access_key: secret,
        }));
    }
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let shared = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".aws/credentials"))
        });
    if let Some(path) = shared
        && path.is_file()
    {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        if let Some(c) = profile_credentials(&text, &profile) {
            return Ok(Some(c));
        }
    }
    let local = std::env::var_os("NIMBUS_DATA_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(crate::up::default_data_dir)
        .join(crate::up::CREDENTIALS_FILE);
    if let Ok(text) = std::fs::read_to_string(&local) {
        return Ok(profile_credentials(&text, "default"));
    }
    Ok(None)
}

/// The keys of `[profile]` in an AWS shared-credentials file.
pub fn profile_credentials(text: &str, profile: &str) -> Option<Credentials> {
    nimbus_sigv4::credentials_profiles(text)
        .into_iter()
        .rev()
        .find_map(|(name, c)| (name == profile).then_some(c))
}
