//! The CLI's HTTP client: the gateway is all it talks to. Errors become one line a
//! person can act on.

use std::time::Duration;

use anyhow::anyhow;
use reqwest::{Method, Response, StatusCode};

pub struct Client {
    pub endpoint: String,
    pub http: reqwest::Client,
}

impl Client {
    pub fn new(endpoint: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            http,
        })
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.endpoint))
    }

    /// Sends and turns transport failures and API errors into readable errors.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Response> {
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(api_error(resp).await)
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
