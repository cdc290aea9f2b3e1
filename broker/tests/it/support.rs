//! Broker urls, unique names, and a consumer for an AMQP routing key.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, Consumer};

pub fn amqp_url() -> String {
    std::env::var("REWIND_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn nats_url() -> String {
    std::env::var("REWIND_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// `url` with its host:port replaced by `addr` (to go through a relay).
pub fn via(url: &str, addr: std::net::SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("url with scheme");
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let userinfo = authority.rsplit_once('@').map(|(u, _)| format!("{u}@"));
    format!("{scheme}://{}{addr}{tail}", userinfo.unwrap_or_default())
}

/// The host:port of `url`.
pub fn addr_of(url: &str, default_port: u16) -> std::net::SocketAddr {
    use std::net::ToSocketAddrs;
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let host = &rest[..end];
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let host = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:{default_port}")
    };
    host.to_socket_addrs()
        .expect("broker address")
        .next()
        .expect("broker address")
}

/// `prefix` and a random suffix: a name no other test (run) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{:016x}", rand::random::<u64>())
}

/// One message as the consumer got it.
pub struct Got {
    pub message_id: String,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    pub content_type: String,
    pub persistent: bool,
    pub has_timestamp: bool,
}

/// An exclusive auto-delete queue bound to `amq.topic` for `routing_key`, consumed with
/// auto-ack. Lives as long as its connection.
pub struct Queue {
    _conn: Connection,
    consumer: Consumer,
}

impl Queue {
    pub async fn bind(routing_key: &str) -> Queue {
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("test AMQP connection");
        let ch = conn.create_channel().await.expect("channel");
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue.declare");
        ch.queue_bind(
            q.name().clone(),
            "amq.topic".into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue.bind");
        let consumer = ch
            .basic_consume(
                q.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("basic.consume");
        Queue {
            _conn: conn,
            consumer,
        }
    }

    /// The next `n` messages, failing the test after 20 s.
    pub async fn take(&mut self, n: usize) -> Vec<Got> {
        let mut got = Vec::with_capacity(n);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while got.len() < n {
            let d = tokio::time::timeout_at(deadline, self.consumer.next())
                .await
                .unwrap_or_else(|_| panic!("only {} of {n} messages arrived", got.len()))
                .expect("consumer open")
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
                                AMQPValue::LongString(s) => {
                                    String::from_utf8_lossy(s.as_bytes()).into_owned()
                                }
                                other => panic!("header {k} is not a long string: {other:?}"),
                            };
                            (k.to_string(), v)
                        })
                        .collect()
                })
                .unwrap_or_default();
            got.push(Got {
                message_id: p
                    .message_id()
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                payload: d.data.clone(),
                headers,
                content_type: p
                    .content_type()
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                persistent: *p.delivery_mode() == Some(2),
                has_timestamp: p.timestamp().is_some(),
            });
        }
        got
    }
}
