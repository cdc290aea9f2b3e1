//! RabbitMQ (AMQP 0-9-1) over lapin: one connection, one channel in confirm mode.
//!
//! A publish holds the link lock only until its frames are on the socket, then waits for
//! its confirm without it, so concurrent publishes pipeline. The lock is what orders the
//! wire: lapin numbers a publish (its delivery tag) and queues its frames in two steps,
//! and two unserialised publishes could interleave between them and get each other's
//! confirms. Connecting also happens under the lock, so there is one reconnect at a
//! time and the publishes behind it wait for it.

use std::collections::HashMap;
use std::sync::Mutex as SyncMutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::message::BasicReturnMessage;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind};
use tokio::sync::Mutex;
use tokio::time::{timeout, timeout_at, Instant};
use tracing::{info, warn};

use crate::{content_type, BrokerConfig, Message, PublishError, KEY_HEADER};

/// Returned messages that lapin handed to another publish's confirm, at most this many.
/// See [`Amqp::strays`].
const MAX_STRAYS: usize = 1024;

pub(crate) struct Amqp {
    url: String,
    described: String,
    exchange: ShortString,
    mandatory: bool,
    timeout: Duration,
    link: Mutex<Option<Link>>,
    /// Returned (unroutable) messages that came attached to some other publish's confirm,
    /// by (message id, routing key), with the broker's reply.
    ///
    /// When RabbitMQ acks several publishes at once (`multiple`), lapin attaches the
    /// returned messages of that batch to the batch's confirms in arbitrary order, so a
    /// return may reach the wrong publish. That one parks it here and its owner, whose
    /// confirm came without it, claims it. The owner can still look before the other has
    /// parked it (both are woken by the same ack), which lapin gives no way to close.
    strays: SyncMutex<HashMap<(String, String), Vec<String>>>,
}

struct Link {
    conn: Connection,
    channel: Channel,
}

impl Amqp {
    pub(crate) fn new(config: BrokerConfig, described: String) -> Result<Amqp, PublishError> {
        config
            .url
            .parse::<lapin::uri::AMQPUri>()
            .map_err(|e| PublishError::Config(format!("AMQP url {described}: {e}")))?;
        let exchange = ShortString::try_new(config.exchange.clone()).map_err(|_| {
            PublishError::Config("AMQP exchange name is longer than 255 bytes".into())
        })?;
        Ok(Amqp {
            url: config.url,
            described,
            exchange,
            mandatory: config.mandatory,
            timeout: config.timeout,
            link: Mutex::new(None),
            strays: SyncMutex::new(HashMap::new()),
        })
    }

    pub(crate) async fn publish(&self, msg: &Message<'_>) -> Result<(), PublishError> {
        let deadline = Instant::now() + self.timeout;
        let topic = short(msg.topic, "topic")?;
        let properties = properties(msg)?;
        let options = BasicPublishOptions {
            mandatory: self.mandatory,
            immediate: false,
        };
        let confirm = timeout_at(deadline, async {
            let mut link = self.link.lock().await;
            let channel = self.channel(&mut link).await?;
            channel
                .basic_publish(
                    self.exchange.clone(),
                    topic,
                    options,
                    msg.payload,
                    properties,
                )
                .await
                .map_err(classify)
        })
        .await
        .map_err(|_| PublishError::Timeout)??;
        let confirmation = timeout_at(deadline, confirm)
            .await
            .map_err(|_| PublishError::Timeout)?
            .map_err(classify)?;
        match confirmation {
            Confirmation::Ack(None) => self.claim_stray(msg),
            Confirmation::Ack(Some(returned)) => {
                let reply = format!("{} {}", returned.reply_code, returned.reply_text);
                if is_return_of(&returned, msg) {
                    Err(self.unroutable(msg, reply))
                } else {
                    self.park_stray(&returned, reply);
                    self.claim_stray(msg)
                }
            }
            Confirmation::Nack(_) => Err(PublishError::Rejected(
                "basic.nack: the broker could not take the message (e.g. a queue is full \
                 with overflow=reject-publish, or it failed internally)"
                    .into(),
            )),
            // confirm_select succeeded on every channel we publish on.
            Confirmation::NotRequested => Err(PublishError::Connection(
                "channel is not in confirm mode".into(),
            )),
        }
    }

    /// The live channel, opening a new one or reconnecting when it died.
    async fn channel(&self, link: &mut Option<Link>) -> Result<Channel, PublishError> {
        if let Some(l) = link.as_mut() {
            if l.conn.status().connected() {
                if l.channel.status().connected() {
                    return Ok(l.channel.clone());
                }
                // The broker closed the channel (a channel error, e.g. publishing to an
                // exchange that does not exist); the connection is fine.
                warn!(broker = %self.described, "AMQP channel closed by the broker; opening a new one");
                if let Ok(channel) = open_channel(&l.conn).await {
                    l.channel = channel.clone();
                    return Ok(channel);
                }
            }
        }
        if let Some(old) = link.take() {
            warn!(broker = %self.described, "AMQP connection lost; reconnecting");
            // lapin keeps a connection's I/O going until it is closed; end it, off the
            // publish's clock.
            let t = self.timeout;
            tokio::spawn(async move {
                let _ = timeout(t, old.conn.close(200, "reconnecting".into())).await;
            });
        }
        let props = ConnectionProperties::default().with_connection_name("rewind-broker".into());
        let conn = Connection::connect(&self.url, props)
            .await
            .map_err(|e| PublishError::Connect(format!("{}: {e}", self.described)))?;
        let conn = CloseOnDrop(Some(conn));
        let channel = open_channel(conn.get()).await.map_err(|e| {
            PublishError::Connect(format!("{}: opening a channel: {e}", self.described))
        })?;
        info!(broker = %self.described, "connected to AMQP broker");
        *link = Some(Link {
            conn: conn.keep(),
            channel: channel.clone(),
        });
        Ok(channel)
    }

    fn unroutable(&self, msg: &Message<'_>, reply: String) -> PublishError {
        PublishError::Unroutable {
            exchange: self.exchange.to_string(),
            topic: msg.topic.to_string(),
            reply,
        }
    }

    fn park_stray(&self, returned: &BasicReturnMessage, reply: String) {
        let id = returned
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default();
        let key = (id, returned.delivery.routing_key.to_string());
        let mut strays = self.strays.lock().unwrap_or_else(|e| e.into_inner());
        if strays.len() >= MAX_STRAYS {
            // Owners that looked too early never come back for theirs.
            warn!(broker = %self.described, "dropping {} unclaimed returned messages", strays.len());
            strays.clear();
        }
        strays.entry(key).or_default().push(reply);
    }

    fn claim_stray(&self, msg: &Message<'_>) -> Result<(), PublishError> {
        if !self.mandatory {
            return Ok(());
        }
        let key = (msg.message_id.to_string(), msg.topic.to_string());
        let mut strays = self.strays.lock().unwrap_or_else(|e| e.into_inner());
        let Some(replies) = strays.get_mut(&key) else {
            return Ok(());
        };
        let reply = replies.pop().unwrap_or_default();
        if replies.is_empty() {
            strays.remove(&key);
        }
        Err(self.unroutable(msg, reply))
    }

    pub(crate) async fn close(&self) {
        let Ok(mut link) = timeout(self.timeout, self.link.lock()).await else {
            warn!(broker = %self.described, "AMQP close: publishes still running after the timeout");
            return;
        };
        if let Some(l) = link.take() {
            match timeout(self.timeout, l.conn.close(200, "closing".into())).await {
                Ok(Ok(())) => info!(broker = %self.described, "closed AMQP connection"),
                Ok(Err(e)) => warn!(broker = %self.described, "closing AMQP connection: {e}"),
                Err(_) => warn!(broker = %self.described, "closing AMQP connection timed out"),
            }
        }
    }
}

async fn open_channel(conn: &Connection) -> lapin::Result<Channel> {
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// A connection that is closed unless kept: a connect cut short (by the deadline or a
/// failed channel) must not leave lapin's I/O running.
struct CloseOnDrop(Option<Connection>);

impl CloseOnDrop {
    fn get(&self) -> &Connection {
        self.0.as_ref().expect("connection present until kept")
    }

    fn keep(mut self) -> Connection {
        self.0.take().expect("connection present until kept")
    }
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let (Some(conn), Ok(rt)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                let _ = timeout(Duration::from_secs(5), conn.close(200, "abandoned".into())).await;
            });
        }
    }
}

fn short(s: &str, what: &str) -> Result<ShortString, PublishError> {
    ShortString::try_new(s)
        .map_err(|_| PublishError::InvalidMessage(format!("AMQP {what} is longer than 255 bytes")))
}

fn properties(msg: &Message<'_>) -> Result<BasicProperties, PublishError> {
    let mut table = FieldTable::default();
    for (name, value) in msg.headers {
        if name.eq_ignore_ascii_case("content-type") {
            continue;
        }
        table.insert(
            short(name, "header name")?,
            AMQPValue::LongString(LongString::from(value.as_bytes())),
        );
    }
    if let Some(key) = msg.key {
        table.insert(
            ShortString::from(KEY_HEADER),
            AMQPValue::LongString(LongString::from(key.as_bytes())),
        );
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(short(
            content_type(msg.headers).unwrap_or("application/octet-stream"),
            "content-type",
        )?)
        .with_message_id(short(msg.message_id, "message_id")?)
        .with_timestamp(now)
        .with_headers(table))
}

fn is_return_of(returned: &BasicReturnMessage, msg: &Message<'_>) -> bool {
    returned.delivery.routing_key.as_str() == msg.topic
        && returned
            .delivery
            .properties
            .message_id()
            .as_ref()
            .is_some_and(|id| id.as_str() == msg.message_id)
}

/// A channel-level refusal by the broker (soft error, e.g. 404 no such exchange) is about
/// the message; everything else means the connection or channel is gone.
fn classify(e: lapin::Error) -> PublishError {
    match e.kind() {
        ErrorKind::ProtocolError(_) if e.is_amqp_soft_error() => {
            PublishError::Rejected(e.to_string())
        }
        ErrorKind::SerialisationError(_) => PublishError::InvalidMessage(e.to_string()),
        _ => PublishError::Connection(e.to_string()),
    }
}
