//! Publishing to a message broker and knowing the broker has the message durably.
//!
//! One [`Publisher`] per broker: the proxy's outbox relay uses it to hand rows to the
//! broker, and the coordinator reuses it. [`Publisher::publish`] returns `Ok` only once
//! the broker took responsibility for the message: an AMQP 0-9-1 publisher confirm
//! (RabbitMQ) or a JetStream publish ack (NATS). Anything else is an error the caller
//! can act on ([`PublishError`]): retry later ([`PublishError::is_connection`]) or park
//! the message.
//!
//! Delivery is at least once: a publish that failed with [`PublishError::Connection`] or
//! [`PublishError::Timeout`] may still have reached the broker. The message id is what
//! lets the other side drop the duplicate (JetStream does so itself within the stream's
//! duplicate window; AMQP consumers see it as `message_id`).
//!
//! # Layout
//! - [`BrokerConfig`], [`Message`], [`PublishError`], [`Publisher`]: the API, here.
//! - `amqp`: RabbitMQ over lapin, one connection and one channel in confirm mode.
//! - `nats`: NATS JetStream over async-nats, one client.

mod amqp;
mod nats;

use std::sync::Arc;
use std::time::Duration;

/// Where to publish and how long to wait for it.
#[derive(Clone)]
pub struct BrokerConfig {
    /// `amqp://user:pass@host:5672/vhost` or `amqps://…` for RabbitMQ;
    /// `nats://[user:pass@]host:4222` or `tls://…` for NATS JetStream.
    pub url: String,
    /// The AMQP exchange messages go to, `amq.topic` by default (it exists on every
    /// RabbitMQ, so nothing has to be declared). Ignored for NATS.
    pub exchange: String,
    /// AMQP `mandatory` flag, on by default: a message no queue is bound for comes back
    /// as [`PublishError::Unroutable`] instead of being confirmed and dropped.
    pub mandatory: bool,
    /// Bound on one whole [`Publisher::publish`] call, connecting included, and on
    /// [`Publisher::close`]. 5 s by default.
    pub timeout: Duration,
}

impl BrokerConfig {
    /// A configuration with the defaults: exchange `amq.topic`, mandatory, 5 s.
    pub fn new(url: impl Into<String>) -> Self {
        BrokerConfig {
            url: url.into(),
            exchange: "amq.topic".to_string(),
            mandatory: true,
            timeout: Duration::from_secs(5),
        }
    }
}

/// The url is a secret's neighbour: show it only without its password.
impl std::fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("url", &redact_url(&self.url))
            .field("exchange", &self.exchange)
            .field("mandatory", &self.mandatory)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// One message to publish. Borrowed, so the caller's row needs no copy.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// AMQP `message_id` property; NATS `Nats-Msg-Id` header, JetStream's dedupe key.
    pub message_id: &'a str,
    /// AMQP routing key; NATS subject.
    pub topic: &'a str,
    /// Ordering key, sent as header [`KEY_HEADER`] on both brokers.
    pub key: Option<&'a str>,
    pub payload: &'a [u8],
    /// User headers: AMQP headers table (long strings), NATS headers. A `content-type`
    /// header (any case) becomes the AMQP `content_type` property instead.
    pub headers: &'a [(String, String)],
}

/// The header that carries [`Message::key`].
pub const KEY_HEADER: &str = "rewind-msg-key";

/// Why a publish did not end in the broker's acknowledgement.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The configuration cannot work (unknown url scheme, unparsable url, …).
    #[error("broker configuration: {0}")]
    Config(String),
    /// The message cannot be sent as it is (a header name or topic the protocol cannot
    /// carry, an AMQP short string over 255 bytes, …). Retrying will not help.
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// Connecting (TCP, TLS, login, opening the channel) failed.
    #[error("cannot connect to the broker: {0}")]
    Connect(String),
    /// AMQP, mandatory: the broker returned the message because no queue is bound for
    /// its routing key.
    #[error("unroutable: exchange {exchange:?} has no queue bound for {topic:?} ({reply})")]
    Unroutable {
        exchange: String,
        topic: String,
        /// The broker's reply, e.g. `312 NO_ROUTE`.
        reply: String,
    },
    /// The broker refused the message: an AMQP nack or channel error (e.g. no such
    /// exchange), a JetStream error ack (e.g. no stream for the subject).
    #[error("rejected by the broker: {0}")]
    Rejected(String),
    /// The connection was lost before the broker confirmed; the message may or may not
    /// have arrived.
    #[error("connection to the broker lost: {0}")]
    Connection(String),
    /// No answer within [`BrokerConfig::timeout`]; the message may or may not have
    /// arrived.
    #[error("no confirmation from the broker within the timeout")]
    Timeout,
}

impl PublishError {
    /// True when the failure is about reaching the broker (connect, connection lost,
    /// timeout), not about the message: publishing the same message later may succeed.
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            PublishError::Connect(_) | PublishError::Connection(_) | PublishError::Timeout
        )
    }
}

/// A handle on one broker; cheap to clone, all clones share one connection.
///
/// Connects lazily on the first publish and again on the first publish after the
/// connection died. Concurrent publishes pipeline over the one connection: they are put
/// on the wire in the order the calls started and then wait for their confirms together.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    described: String,
    backend: Backend,
}

enum Backend {
    Amqp(amqp::Amqp),
    Nats(nats::Nats),
}

impl Publisher {
    /// Checks the configuration; does not connect (the broker may come up later).
    pub fn new(config: BrokerConfig) -> Result<Publisher, PublishError> {
        if config.timeout.is_zero() {
            return Err(PublishError::Config("timeout must be above zero".into()));
        }
        let scheme = config
            .url
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase())
            .ok_or_else(|| {
                PublishError::Config(format!(
                    "broker url {:?} has no scheme (amqp://, amqps://, nats://, tls://)",
                    redact_url(&config.url)
                ))
            })?;
        let described = redact_url(&config.url);
        let backend = match scheme.as_str() {
            "amqp" | "amqps" => Backend::Amqp(amqp::Amqp::new(config, described.clone())?),
            "nats" | "tls" => Backend::Nats(nats::Nats::new(config, described.clone())?),
            other => {
                return Err(PublishError::Config(format!(
                    "unsupported broker url scheme {other:?} (amqp, amqps, nats, tls)"
                )))
            }
        };
        Ok(Publisher {
            inner: Arc::new(Inner { described, backend }),
        })
    }

    /// Publishes `msg`; `Ok` only once the broker confirmed it (AMQP publisher confirm,
    /// JetStream ack; a JetStream "duplicate" ack counts, the message is stored).
    /// Returns within [`BrokerConfig::timeout`].
    pub async fn publish(&self, msg: &Message<'_>) -> Result<(), PublishError> {
        match &self.inner.backend {
            Backend::Amqp(b) => b.publish(msg).await,
            Backend::Nats(b) => b.publish(msg).await,
        }
    }

    /// The url without its password (or NATS token), for logs and the console.
    pub fn describe(&self) -> String {
        self.inner.described.clone()
    }

    /// Closes the connection, if any, within the timeout. A later publish connects again.
    pub async fn close(&self) {
        match &self.inner.backend {
            Backend::Amqp(b) => b.close().await,
            Backend::Nats(b) => b.close().await,
        }
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Publisher")
            .field(&self.inner.described)
            .finish()
    }
}

/// `url` with the password of its user info removed. A NATS user info without a colon is
/// a token, a secret as a whole, so it goes entirely. Query strings are kept: neither
/// scheme puts secrets there.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a url we accept anyway; it could be anything, so show none of it.
        return "<invalid url>".to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let (userinfo, host) = (&authority[..at], &authority[at + 1..]);
    let is_nats = matches!(scheme.to_ascii_lowercase().as_str(), "nats" | "tls");
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}@{host}{tail}"),
        None if is_nats => format!("{scheme}://{host}{tail}"),
        None => url.to_string(),
    }
}

/// The `content-type` user header, if any: AMQP carries it as a property.
fn content_type(headers: &[(String, String)]) -> Option<&str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_and_tokens() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("amqps://u:p%40ss@h/v?heartbeat=10"),
            "amqps://u@h/v?heartbeat=10"
        );
        assert_eq!(redact_url("amqp://guest@h:5672"), "amqp://guest@h:5672");
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redact_url("nats://s3cret@h:4222"), "nats://h:4222");
        assert_eq!(redact_url("tls://u:p@h:4222"), "tls://u@h:4222");
        assert_eq!(redact_url("garbage:pw@x"), "<invalid url>");
    }

    #[test]
    fn validates_scheme_without_connecting() {
        // Port 1 is closed: new() must not try it.
        assert!(Publisher::new(BrokerConfig::new("amqp://guest:guest@127.0.0.1:1/%2f")).is_ok());
        assert!(Publisher::new(BrokerConfig::new("nats://127.0.0.1:1")).is_ok());
        assert!(Publisher::new(BrokerConfig::new("tls://127.0.0.1:1")).is_ok());
        for bad in ["http://h", "127.0.0.1:5672", "kafka://h:9092"] {
            assert!(
                matches!(
                    Publisher::new(BrokerConfig::new(bad)),
                    Err(PublishError::Config(_))
                ),
                "{bad}"
            );
        }
        let mut c = BrokerConfig::new("amqp://h");
        c.timeout = Duration::ZERO;
        assert!(matches!(Publisher::new(c), Err(PublishError::Config(_))));
        let p = Publisher::new(BrokerConfig::new("amqp://guest:secret@h:5672/%2f")).unwrap();
        assert_eq!(p.describe(), "amqp://guest@h:5672/%2f");
        assert!(!format!("{p:?}").contains("secret"));
    }

    #[test]
    fn connection_errors_are_the_retryable_ones() {
        assert!(PublishError::Timeout.is_connection());
        assert!(PublishError::Connect("x".into()).is_connection());
        assert!(PublishError::Connection("x".into()).is_connection());
        assert!(!PublishError::Rejected("x".into()).is_connection());
        assert!(!PublishError::Config("x".into()).is_connection());
    }
}
