//! HTTP to the coordinator's REST API and console, with reqwest.
//!
//! Every request gets a fresh client: tests kill and restart servers on the same ports
//! and every test runs its own tokio runtime, so no connection may outlive its request.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::Value as Json;

/// What the server answered.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON, or as a JSON string when it is not JSON (metrics, HTML).
    pub fn json(&self) -> Json {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| Json::String(String::from_utf8_lossy(&self.body).into()))
    }

    /// The first value of header `name`, if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A client that keeps connections open (for load generators; tests use [`request`]).
pub fn keep_alive_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .expect("an HTTP client builds")
}

/// One request to `http://{addr}{path}`. The body, if any, is sent as it is (it need
/// not be valid JSON), labelled `application/json` as the API's clients do.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Result<Answer> {
    // reqwest is built with rustls (as the coordinator needs it for its TCC calls), so a
    // client needs a crypto provider even for plain http://.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Plain http only, so no root certificates: loading the system's (reqwest's default,
    // through the platform verifier) took about 20 ms of CPU per request in a debug build,
    // which made every coordinator call in a test cost ten times the call itself.
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .tls_certs_only([])
        .build()?;
    let mut req = client
        .request(
            Method::from_bytes(method.as_bytes())?,
            format!("http://{addr}{path}"),
        )
        .header("Content-Type", "application/json")
        .body(body.unwrap_or_default().to_vec());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await?.to_vec();
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// A JSON API call: the status and the body as JSON (see [`Answer::json`]).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Json>,
) -> Result<(u16, Json)> {
    http_as(addr, method, path, body, None).await
}

/// [`http`] with `Authorization: Bearer <token>` when a token is given.
pub async fn http_as(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Json>,
    bearer: Option<&str>,
) -> Result<(u16, Json)> {
    let body = body.map(|b| b.to_string().into_bytes());
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let a = request(addr, method, path, body.as_deref(), &headers).await?;
    Ok((a.status, a.json()))
}
