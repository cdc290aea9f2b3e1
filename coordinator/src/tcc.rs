//! TCC branches' phase two: the coordinator calls the participant itself. On global
//! commit it POSTs the branch's `confirm_url`, on rollback its `cancel_url`, with
//! `{"xid", "branch_id", "action": "confirm"|"cancel", "payload"}`. A 2xx answer is
//! done; anything else (another status, a refused connection, no answer within
//! `tcc_call_timeout_ms`) goes back to the engine as a retryable failure, which retries
//! with the phase-two backoff and, after `tcc_max_attempts`, leaves the branch `stalled`
//! for an operator. Calls are repeated after a crash or a lost answer: the participant's
//! fence (the proxy's `TCC(…)` hint) makes a repeated Confirm or Cancel a no-op.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::engine::{BranchId, Decision, ProxyAnswer, TccCall, XidNum};

/// How many calls may be in flight at once (the rest wait their turn).
const MAX_IN_FLIGHT: usize = 256;

/// The part of the answer body kept in a branch's `last_error`.
const ERROR_BODY_CHARS: usize = 200;

/// `host[:port]` of a URL (what names a TCC branch registered without a name).
pub fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    authority.rsplit_once('@').map_or(authority, |(_, h)| h)
}

/// Checks a Confirm or Cancel URL at registration: absolute `http` or `https`.
pub fn check_url(what: &str, url: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        Ok(u) => Err(format!(
            "{what} must be an http:// or https:// URL with a host, not {:?}",
            u.as_str()
        )),
        Err(e) => Err(format!("{what} {url:?} is not a URL: {e}")),
    }
}

/// Calls participants; cheap to clone.
#[derive(Clone)]
pub struct Caller {
    client: reqwest::Client,
    slots: Arc<Semaphore>,
}

impl Caller {
    pub fn new(timeout: Duration) -> Caller {
        // rustls on ring, as the broker clients use (no C build); the platform's roots.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .user_agent(concat!("rewind-coordinator/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client with a timeout builds");
        Caller {
            client,
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    /// One Confirm (`Decision::Commit`) or Cancel call, and what it means for the engine.
    pub async fn call(
        &self,
        xid: XidNum,
        branch_id: BranchId,
        action: Decision,
        call: &TccCall,
    ) -> ProxyAnswer {
        let (name, url) = match action {
            Decision::Commit => ("confirm", &call.confirm_url),
            Decision::Rollback => ("cancel", &call.cancel_url),
        };
        let payload = call
            .payload
            .as_deref()
            .and_then(|p| serde_json::from_str::<Value>(p).ok())
            .unwrap_or(Value::Null);
        let xid = rewind_protocol::xid::format(xid);
        let body = json!({
            "xid": xid,
            "branch_id": branch_id,
            "action": name,
            "payload": payload,
        });
        let _slot = self.slots.acquire().await.expect("never closed");
        let sent = self
            .client
            .post(url.as_str())
            .header("content-type", "application/json")
            .header("idempotency-key", format!("{xid}/{branch_id}/{name}"))
            .body(body.to_string())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => ProxyAnswer::Done,
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                let text: String = text.trim().chars().take(ERROR_BODY_CHARS).collect();
                ProxyAnswer::Retryable(format!("{name} {url} answered {status}: {text}"))
            }
            Err(e) => ProxyAnswer::Retryable(format!("{name} {url}: {}", error_chain(&e))),
        }
    }
}

/// An error with its causes ("error sending request: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_named_by_host() {
        assert_eq!(
            host_of("http://pay.internal:8080/tcc/confirm"),
            "pay.internal:8080"
        );
        assert_eq!(host_of("https://u:p@h/x?y"), "h");
        assert!(check_url("confirm_url", "http://127.0.0.1:9/c").is_ok());
        assert!(check_url("confirm_url", "ftp://h/c").is_err());
        assert!(check_url("confirm_url", "/relative").is_err());
    }
}
