//! NATS JetStream over async-nats: one client, publishes awaited for their PubAck.
//!
//! async-nats reconnects by itself once it has connected, so this module connects once
//! (lazily, under the lock, so concurrent first publishes share one connect) and then
//! only refuses to send while the client is not connected: a request sent into a dead
//! connection would wait for an ack until the timeout. The lock is held while a publish
//! is handed to the client, not while its ack is awaited, which keeps the wire order
//! that of the calls and lets the acks pipeline.
//!
//! async-nats keeps a request waiting across a reconnect, but a publish written into the
//! connection that died gets no ack ever; so a disconnect fails the publishes awaiting
//! their acks at once with [`PublishError::Connection`] instead of letting them run into
//! the timeout.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::context::{PublishError as JsError, PublishErrorKind};
use async_nats::jetstream::{self, message::PublishMessage};
use async_nats::{Client, ConnectOptions, Event, HeaderMap, HeaderName, HeaderValue};
use tokio::sync::{watch, Mutex};
use tokio::time::{timeout, timeout_at, Instant};
use tracing::{debug, info, warn};

use crate::{BrokerConfig, Message, PublishError, KEY_HEADER};

/// JetStream's dedupe header, set from [`Message::message_id`].
const MSG_ID_HEADER: &str = "Nats-Msg-Id";

pub(crate) struct Nats {
    url: String,
    described: String,
    timeout: Duration,
    link: Mutex<Option<Link>>,
    /// Counts the client's disconnects; a publish awaiting its ack watches it.
    disconnects: Arc<watch::Sender<u64>>,
}

#[derive(Clone)]
struct Link {
    client: Client,
    js: jetstream::Context,
}

impl Nats {
    pub(crate) fn new(config: BrokerConfig, described: String) -> Result<Nats, PublishError> {
        config
            .url
            .parse::<async_nats::ServerAddr>()
            .map_err(|e| PublishError::Config(format!("NATS url {described}: {e}")))?;
        Ok(Nats {
            url: config.url,
            described,
            timeout: config.timeout,
            link: Mutex::new(None),
            disconnects: Arc::new(watch::channel(0).0),
        })
    }

    pub(crate) async fn publish(&self, msg: &Message<'_>) -> Result<(), PublishError> {
        let deadline = Instant::now() + self.timeout;
        if msg.topic.is_empty() || msg.topic.contains(char::is_whitespace) {
            return Err(PublishError::InvalidMessage(format!(
                "NATS subject {:?} is empty or has whitespace",
                msg.topic
            )));
        }
        let publish = PublishMessage::build()
            .payload(msg.payload.to_vec().into())
            .headers(headers(msg)?);
        let mut disconnects = self.disconnects.subscribe();
        let ack = timeout_at(deadline, async {
            let mut link = self.link.lock().await;
            let link = self.connect(&mut link).await?;
            if link.client.connection_state() != State::Connected {
                return Err(PublishError::Connection(format!(
                    "not connected to {} (the client is reconnecting)",
                    self.described
                )));
            }
            disconnects.borrow_and_update();
            link.js
                .send_publish(msg.topic.to_string(), publish)
                .await
                .map_err(|e| classify(e, msg))
        })
        .await
        .map_err(|_| PublishError::Timeout)??;
        let ack = tokio::select! {
            biased;
            ack = timeout_at(deadline, ack) => ack
                .map_err(|_| PublishError::Timeout)?
                .map_err(|e| classify(e, msg))?,
            _ = disconnects.changed() => {
                return Err(PublishError::Connection(format!(
                    "connection to {} lost before the ack",
                    self.described
                )))
            }
        };
        if ack.duplicate {
            // Stored before under the same Nats-Msg-Id: the broker has it, which is all
            // the caller asked.
            debug!(stream = %ack.stream, seq = ack.sequence, id = msg.message_id, "duplicate publish");
        }
        Ok(())
    }

    async fn connect(&self, link: &mut Option<Link>) -> Result<Link, PublishError> {
        if let Some(l) = link.as_ref() {
            return Ok(l.clone());
        }
        let described = self.described.clone();
        let disconnects = self.disconnects.clone();
        let client = ConnectOptions::new()
            .name("rewind-broker")
            .connection_timeout(self.timeout)
            .request_timeout(Some(self.timeout))
            .event_callback(move |event| {
                let described = described.clone();
                if matches!(event, Event::Disconnected) {
                    disconnects.send_modify(|n| *n += 1);
                }
                async move {
                    match event {
                        Event::Connected => {
                            info!(broker = %described, "NATS connection (re)established")
                        }
                        Event::Disconnected => {
                            warn!(broker = %described, "NATS connection lost; reconnecting")
                        }
                        other => info!(broker = %described, "NATS: {other}"),
                    }
                }
            })
            .connect(self.url.as_str())
            .await
            .map_err(|e| PublishError::Connect(format!("{}: {e}", self.described)))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(self.timeout)
            .build(client.clone());
        info!(broker = %self.described, "connected to NATS");
        let l = Link { client, js };
        *link = Some(l.clone());
        Ok(l)
    }

    pub(crate) async fn close(&self) {
        let Ok(mut link) = timeout(self.timeout, self.link.lock()).await else {
            warn!(broker = %self.described, "NATS close: publishes still running after the timeout");
            return;
        };
        if let Some(l) = link.take() {
            match timeout(self.timeout, l.client.drain()).await {
                Ok(Ok(())) => info!(broker = %self.described, "closed NATS connection"),
                Ok(Err(e)) => warn!(broker = %self.described, "closing NATS connection: {e}"),
                Err(_) => warn!(broker = %self.described, "closing NATS connection timed out"),
            }
        }
    }
}

/// The NATS headers of `msg`; names and values are checked here because async-nats
/// panics on invalid ones.
fn headers(msg: &Message<'_>) -> Result<HeaderMap, PublishError> {
    let mut map = HeaderMap::new();
    let mut put = |name: &str, value: &str| -> Result<(), PublishError> {
        let n = HeaderName::from_str(name).map_err(|_| {
            PublishError::InvalidMessage(format!(
                "NATS header name {name:?} is not printable ASCII without ':'"
            ))
        })?;
        let v = HeaderValue::from_str(value).map_err(|_| {
            PublishError::InvalidMessage(format!(
                "NATS header {name:?} has a line break in its value"
            ))
        })?;
        map.insert(n, v);
        Ok(())
    };
    for (name, value) in msg.headers {
        put(name, value)?;
    }
    if let Some(key) = msg.key {
        put(KEY_HEADER, key)?;
    }
    put(MSG_ID_HEADER, msg.message_id)?;
    Ok(map)
}

fn classify(e: JsError, msg: &Message<'_>) -> PublishError {
    match e.kind() {
        PublishErrorKind::TimedOut => PublishError::Timeout,
        PublishErrorKind::BrokenPipe => PublishError::Connection(e.to_string()),
        PublishErrorKind::MaxPayloadExceeded => PublishError::InvalidMessage(e.to_string()),
        PublishErrorKind::StreamNotFound => PublishError::Rejected(format!(
            "no responders: no JetStream stream takes subject {:?}",
            msg.topic
        )),
        _ => PublishError::Rejected(e.to_string()),
    }
}
