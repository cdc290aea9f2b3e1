//! NATS JetStream: acks, dedupe by Nats-Msg-Id, headers, no stream.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use rewind_broker::{BrokerConfig, Message, PublishError, Publisher};

use crate::support::{nats_url, unique};

/// A stream taking exactly `subject`, deleted on drop (best effort).
pub struct Stream {
    pub js: jetstream::Context,
    pub name: String,
}

impl Stream {
    pub async fn create(subject: &str) -> Stream {
        let client = async_nats::connect(nats_url())
            .await
            .expect("test NATS client");
        let js = jetstream::new(client);
        let name = unique("REWIND_TEST");
        js.create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.to_string()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("create stream");
        Stream { js, name }
    }

    pub async fn messages(&self) -> u64 {
        let mut s = self.js.get_stream(&self.name).await.expect("stream");
        s.info().await.expect("stream info").state.messages
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let (js, name) = (self.js.clone(), self.name.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = js.delete_stream(&name).await;
            });
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishes_are_acked_deduplicated_and_carry_headers() {
    let subject = unique("rewind.test.nats.dedupe");
    let stream = Stream::create(&subject).await;
    let publisher = Publisher::new(BrokerConfig::new(nats_url())).unwrap();

    let ids: Vec<String> = (0..100).map(|i| format!("n-{i}")).collect();
    let hs = vec![("x-origin".to_string(), "rewind-test".to_string())];
    let msgs: Vec<_> = ids
        .iter()
        .map(|id| Message {
            message_id: id,
            topic: &subject,
            key: Some("order-7"),
            payload: id.as_bytes(),
            headers: &hs,
        })
        .collect();
    let results = futures::future::join_all(msgs.iter().map(|m| publisher.publish(m))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    // The same ids again: JetStream acks them as duplicates and stores nothing.
    for m in &msgs[..10] {
        publisher
            .publish(m)
            .await
            .expect("duplicate ack is success");
    }
    assert_eq!(stream.messages().await, 100);

    let s = stream.js.get_stream(&stream.name).await.unwrap();
    let first = s.get_raw_message(1).await.expect("first message");
    assert_eq!(
        first.payload.as_ref(),
        b"n-0",
        "publish order is stream order"
    );
    let h = &first.headers;
    assert_eq!(h.get("Nats-Msg-Id").map(|v| v.as_str()), Some("n-0"));
    assert_eq!(h.get("rewind-msg-key").map(|v| v.as_str()), Some("order-7"));
    assert_eq!(h.get("x-origin").map(|v| v.as_str()), Some("rewind-test"));
    let last = s.get_raw_message(100).await.expect("last message");
    assert_eq!(last.payload.as_ref(), b"n-99");
    publisher.close().await;
}

#[tokio::test]
async fn subject_without_stream_is_rejected_not_hung() {
    let mut config = BrokerConfig::new(nats_url());
    config.timeout = Duration::from_secs(3);
    let publisher = Publisher::new(config).unwrap();
    let subject = unique("rewind.test.nats.nostream");
    let started = std::time::Instant::now();
    let r = publisher
        .publish(&Message {
            message_id: "lost",
            topic: &subject,
            key: None,
            payload: b"",
            headers: &[],
        })
        .await;
    match r {
        Err(PublishError::Rejected(why)) => assert!(why.contains("no responders"), "{why}"),
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn invalid_headers_are_refused_not_panicking() {
    let subject = unique("rewind.test.nats.badheader");
    let publisher = Publisher::new(BrokerConfig::new(nats_url())).unwrap();
    for hs in [
        vec![("bad:name".to_string(), "v".to_string())],
        vec![("x-ok".to_string(), "line\r\nbreak".to_string())],
    ] {
        let r = publisher
            .publish(&Message {
                message_id: "h",
                topic: &subject,
                key: None,
                payload: b"",
                headers: &hs,
            })
            .await;
        assert!(matches!(r, Err(PublishError::InvalidMessage(_))), "{r:?}");
    }
}
