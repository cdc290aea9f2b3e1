//! RabbitMQ: confirms, properties, headers, order, unroutable messages.

use std::time::Duration;

use rewind_broker::{BrokerConfig, Message, PublishError, Publisher};

use crate::support::{amqp_url, unique, Queue};

fn headers(i: usize) -> Vec<(String, String)> {
    vec![
        ("x-index".to_string(), i.to_string()),
        ("x-origin".to_string(), "rewind-test".to_string()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishes_all_arrive_with_their_properties() {
    let rk = unique("rewind.test.amqp.concurrent");
    let mut queue = Queue::bind(&[&rk]).await;
    let publisher = Publisher::new(BrokerConfig::new(amqp_url())).unwrap();

    let mut tasks = Vec::new();
    for t in 0..8 {
        let publisher = publisher.clone();
        let rk = rk.clone();
        tasks.push(tokio::spawn(async move {
            let ids: Vec<usize> = (0..25).map(|i| t * 25 + i).collect();
            let hs: Vec<_> = ids.iter().map(|&i| headers(i)).collect();
            let payloads: Vec<_> = ids.iter().map(|i| format!("payload {i}")).collect();
            let msg_ids: Vec<_> = ids.iter().map(|i| format!("msg-{i}")).collect();
            let keys: Vec<_> = ids.iter().map(|i| format!("key-{}", i % 7)).collect();
            let publishes = ids.iter().map(|&i| {
                let m = Message {
                    message_id: &msg_ids[i - t * 25],
                    topic: &rk,
                    key: Some(&keys[i - t * 25]),
                    payload: payloads[i - t * 25].as_bytes(),
                    headers: &hs[i - t * 25],
                };
                let publisher = &publisher;
                async move { publisher.publish(&m).await }
            });
            for r in futures::future::join_all(publishes).await {
                r.expect("publish confirmed");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let mut got = queue.take(200).await;
    got.sort_by_key(|g| g.headers["x-index"].parse::<usize>().unwrap());
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g.message_id, format!("msg-{i}"));
        assert_eq!(g.payload, format!("payload {i}").as_bytes());
        assert_eq!(g.headers["x-origin"], "rewind-test");
        assert_eq!(g.headers["rewind-msg-key"], format!("key-{}", i % 7));
        assert_eq!(g.content_type, "application/octet-stream");
        assert!(g.persistent, "delivery mode 2");
        assert!(g.has_timestamp);
    }
    publisher.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_task_arrives_in_publish_order() {
    let rk = unique("rewind.test.amqp.order");
    let mut queue = Queue::bind(&[&rk]).await;
    let publisher = Publisher::new(BrokerConfig::new(amqp_url())).unwrap();
    let ids: Vec<String> = (0..100).map(|i| format!("ordered-{i}")).collect();

    // One after the other...
    for id in &ids[..20] {
        let m = Message {
            message_id: id,
            topic: &rk,
            key: None,
            payload: id.as_bytes(),
            headers: &[],
        };
        publisher.publish(&m).await.unwrap();
    }
    // ...and started in order but in flight together: the wire keeps the start order.
    let msgs: Vec<_> = ids[20..]
        .iter()
        .map(|id| Message {
            message_id: id,
            topic: &rk,
            key: None,
            payload: id.as_bytes(),
            headers: &[],
        })
        .collect();
    let results = futures::future::join_all(msgs.iter().map(|m| publisher.publish(m))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    let got: Vec<String> = queue
        .take(100)
        .await
        .into_iter()
        .map(|g| g.message_id)
        .collect();
    assert_eq!(got, ids);
    publisher.close().await;
}

#[tokio::test]
async fn content_type_header_becomes_the_property() {
    let rk = unique("rewind.test.amqp.ctype");
    let mut queue = Queue::bind(&[&rk]).await;
    let publisher = Publisher::new(BrokerConfig::new(amqp_url())).unwrap();
    let hs = vec![
        ("Content-Type".to_string(), "application/json".to_string()),
        ("x-a".to_string(), "1".to_string()),
    ];
    publisher
        .publish(&Message {
            message_id: "ct-1",
            topic: &rk,
            key: None,
            payload: b"{}",
            headers: &hs,
        })
        .await
        .unwrap();
    let got = queue.take(1).await;
    assert_eq!(got[0].content_type, "application/json");
    assert!(!got[0]
        .headers
        .keys()
        .any(|k| k.eq_ignore_ascii_case("content-type")));
    assert!(
        !got[0].headers.contains_key("rewind-msg-key"),
        "no key, no header"
    );
    assert_eq!(got[0].headers["x-a"], "1");
}

#[tokio::test]
async fn unroutable_is_an_error_when_mandatory() {
    let rk = unique("rewind.test.amqp.nobody");
    let msg = Message {
        message_id: "lost-1",
        topic: &rk,
        key: None,
        payload: b"nobody listens",
        headers: &[],
    };

    let publisher = Publisher::new(BrokerConfig::new(amqp_url())).unwrap();
    match publisher.publish(&msg).await {
        Err(PublishError::Unroutable {
            exchange,
            topic,
            reply,
        }) => {
            assert_eq!(exchange, "amq.topic");
            assert_eq!(topic, rk);
            assert!(reply.contains("NO_ROUTE"), "{reply}");
        }
        other => panic!("expected Unroutable, got {other:?}"),
    }
    // The publisher stays usable, and a routable message next to it is fine.
    let rk2 = unique("rewind.test.amqp.somebody");
    let mut queue = Queue::bind(&[&rk2]).await;
    let ok = Message {
        topic: &rk2,
        message_id: "found-1",
        ..msg
    };
    let (a, b) = tokio::join!(publisher.publish(&msg), publisher.publish(&ok));
    assert!(matches!(a, Err(PublishError::Unroutable { .. })), "{a:?}");
    b.unwrap();
    assert_eq!(queue.take(1).await[0].message_id, "found-1");

    let mut config = BrokerConfig::new(amqp_url());
    config.mandatory = false;
    let lenient = Publisher::new(config).unwrap();
    lenient
        .publish(&msg)
        .await
        .expect("dropped silently, as asked");
}

#[tokio::test]
async fn missing_exchange_is_rejected_and_the_publisher_recovers() {
    let mut config = BrokerConfig::new(amqp_url());
    config.exchange = unique("rewind.test.no-such-exchange");
    config.timeout = Duration::from_secs(3);
    let publisher = Publisher::new(config).unwrap();
    let msg = Message {
        message_id: "x-1",
        topic: "whatever",
        key: None,
        payload: b"",
        headers: &[],
    };
    for _ in 0..2 {
        match publisher.publish(&msg).await {
            Err(PublishError::Rejected(why)) => assert!(why.contains("NOT_FOUND"), "{why}"),
            other => panic!("expected Rejected, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn invalid_input_is_refused_before_sending() {
    let publisher = Publisher::new(BrokerConfig::new(amqp_url())).unwrap();
    let long = "k".repeat(256);
    let msg = Message {
        message_id: "i-1",
        topic: &long,
        key: None,
        payload: b"",
        headers: &[],
    };
    assert!(matches!(
        publisher.publish(&msg).await,
        Err(PublishError::InvalidMessage(_))
    ));
}

#[tokio::test]
async fn unreachable_broker_fails_within_the_timeout() {
    let mut config = BrokerConfig::new(crate::support::via(
        &amqp_url(),
        rewind_test_support::free_addr(),
    ));
    config.timeout = Duration::from_secs(2);
    let publisher = Publisher::new(config).unwrap();
    let started = std::time::Instant::now();
    let err = publisher
        .publish(&Message {
            message_id: "u-1",
            topic: "t",
            key: None,
            payload: b"",
            headers: &[],
        })
        .await
        .unwrap_err();
    assert!(err.is_connection(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}
