//! The real brokers the outbox tests read from: a RabbitMQ queue bound to `amq.topic`
//! (lapin), and NATS JetStream streams (async-nats). URLs from `REWIND_TEST_AMQP_URL` and
//! `REWIND_TEST_NATS_URL`, defaulting to the local services `scripts/ensure-brokers.sh`
//! provides.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, Consumer};

pub fn amqp_url() -> String {
    std::env::var("REWIND_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn nats_url() -> String {
    std::env::var("REWIND_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// The AMQP port of [`amqp_url`] (for a relay in front of it).
pub fn amqp_addr() -> std::net::SocketAddr {
    addr_of(&amqp_url(), 5672)
}

/// The NATS port of [`nats_url`].
pub fn nats_addr() -> std::net::SocketAddr {
    addr_of(&nats_url(), 4222)
}

fn addr_of(url: &str, default_port: u16) -> std::net::SocketAddr {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host.split('/').next().unwrap_or(host);
    let host = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:{default_port}")
    };
    use std::net::ToSocketAddrs;
    host.to_socket_addrs()
        .expect("broker address")
        .next()
        .expect("broker address")
}

/// One message as a consumer got it.
pub struct Delivery {
    pub message_id: String,
    pub routing_key: String,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    pub redelivered: bool,
    /// delivery_mode 2.
    pub persistent: bool,
    pub content_type: String,
    pub has_timestamp: bool,
    inner: lapin::message::Delivery,
}

impl Delivery {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    pub async fn ack(&self) {
        self.inner
            .ack(BasicAckOptions::default())
            .await
            .expect("basic.ack");
    }

    /// Hands the message back to the broker, which delivers it again (redelivered).
    pub async fn requeue(&self) {
        self.inner
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
            .expect("basic.nack");
    }
}

/// A server-named, exclusive queue bound to `amq.topic`, consumed with manual acks.
pub struct AmqpQueue {
    _conn: Connection,
    channel: Channel,
    consumer: Consumer,
    pub name: String,
}

impl AmqpQueue {
    pub async fn bind(routing_keys: &[&str]) -> AmqpQueue {
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ (scripts/ensure-brokers.sh starts it)");
        let channel = conn.create_channel().await.expect("channel");
        channel
            .basic_qos(500, BasicQosOptions::default())
            .await
            .expect("basic.qos");
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue.declare");
        let name = queue.name().to_string();
        let q = AmqpQueue {
            consumer: channel
                .basic_consume(
                    name.clone().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("basic.consume"),
            channel,
            _conn: conn,
            name,
        };
        for k in routing_keys {
            q.bind_key(k).await;
        }
        q
    }

    /// Binds one more routing key (a pattern of `amq.topic`).
    pub async fn bind_key(&self, routing_key: &str) {
        self.channel
            .queue_bind(
                self.name.clone().into(),
                "amq.topic".into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("queue.bind");
    }

    /// The next delivery, or `None` after `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Delivery> {
        let d = tokio::time::timeout(within, self.consumer.next())
            .await
            .ok()??
            .expect("delivery");
        let p = &d.properties;
        let headers = p
            .headers()
            .as_ref()
            .map(|t| {
                t.inner()
                    .iter()
                    .map(|(k, v)| {
                        let v = match v {
                            AMQPValue::LongString(s) => s.to_string(),
                            AMQPValue::ShortString(s) => s.to_string(),
                            other => format!("{other:?}"),
                        };
                        (k.to_string(), v)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Delivery {
            message_id: p
                .message_id()
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default(),
            routing_key: d.routing_key.to_string(),
            payload: d.data.clone(),
            headers,
            redelivered: d.redelivered,
            persistent: *p.delivery_mode() == Some(2),
            content_type: p
                .content_type()
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            has_timestamp: p.timestamp().is_some(),
            inner: d,
        })
    }

    /// The next `n` deliveries (acknowledged), failing the test after 20 s.
    pub async fn take(&mut self, n: usize) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let d = self
                .next(left)
                .await
                .unwrap_or_else(|| panic!("only {} of {n} messages arrived", got.len()));
            d.ack().await;
            got.push(d);
        }
        got
    }

    /// Deliveries (acknowledged) until none came for `quiet`.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Delivery> {
        let mut all = Vec::new();
        while let Some(d) = self.next(quiet).await {
            d.ack().await;
            all.push(d);
        }
        all
    }
}

/// A JetStream stream made for one test, deleted first if an earlier run left it.
pub struct JetStream {
    pub js: async_nats::jetstream::Context,
    pub stream: String,
}

/// One stored message of a stream.
pub struct Stored {
    pub subject: String,
    pub payload: Vec<u8>,
    pub msg_id: String,
    pub headers: BTreeMap<String, String>,
}

impl JetStream {
    pub async fn create(stream: &str, subjects: &[&str]) -> JetStream {
        let client = async_nats::connect(nats_url())
            .await
            .expect("connect to NATS (scripts/ensure-brokers.sh starts it)");
        let js = async_nats::jetstream::new(client);
        let _ = js.delete_stream(stream).await;
        js.create_stream(async_nats::jetstream::stream::Config {
            name: stream.to_string(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await
        .expect("create stream");
        JetStream {
            js,
            stream: stream.to_string(),
        }
    }

    /// Messages stored in the stream.
    pub async fn count(&self) -> u64 {
        let mut s = self.js.get_stream(&self.stream).await.expect("stream");
        s.info().await.expect("stream info").state.messages
    }

    /// Every stored message, in stream order.
    pub async fn messages(&self) -> Vec<Stored> {
        let s = self.js.get_stream(&self.stream).await.expect("stream");
        let n = self.count().await;
        let mut out = Vec::new();
        let mut seq = 1;
        while (out.len() as u64) < n {
            if let Ok(m) = s.get_raw_message(seq).await {
                let mut headers = BTreeMap::new();
                for (k, v) in m.headers.iter() {
                    if let Some(v) = v.first() {
                        headers.insert(k.to_string(), v.to_string());
                    }
                }
                out.push(Stored {
                    subject: m.subject.to_string(),
                    payload: m.payload.to_vec(),
                    msg_id: headers.get("Nats-Msg-Id").cloned().unwrap_or_default(),
                    headers,
                });
            }
            seq += 1;
            if seq > n + 10_000 {
                break;
            }
        }
        out
    }

    pub async fn delete(self) {
        let _ = self.js.delete_stream(&self.stream).await;
    }
}
