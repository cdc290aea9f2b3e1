use std::time::Duration;

use mysql_async::prelude::*;
use mysql_async::{Conn, OptsBuilder};
use rewind_proxy::Config;
use rewind_test_support::{free_addr, server_error, BACKEND};
use tokio::net::TcpStream;

use crate::Proxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_as_mysql() {
    let proxy = Proxy::with(Config {
        backend: BACKEND.into(),
        users: vec![rewind_proxy::config::User {
            name: "app".into(),
            password: "s3cret".into(),
        }],
        ..Config::default()
    })
    .await;
    let base = OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(proxy.addr.port())
        .prefer_socket(false);
    let mut ok = Conn::new(base.clone().user(Some("app")).pass(Some("s3cret")))
        .await
        .unwrap();
    let one: i64 = ok.query_first("SELECT 1").await.unwrap().unwrap();
    assert_eq!(one, 1);
    let e =
        server_error(Conn::new(base.clone().user(Some("app")).pass(Some("nope"))).await).unwrap();
    assert_eq!((e.0, e.1.as_str()), (1045, "28000"));
    assert!(e.2.contains("Access denied for user 'app'"));
    let e = server_error(Conn::new(base.clone().user(Some("root"))).await).unwrap();
    assert_eq!(e.0, 1045);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_gives_1040() {
    let proxy = Proxy::with(Config {
        backend: BACKEND.into(),
        max_connections: 2,
        ..Config::default()
    })
    .await;
    let a = proxy.conn("test").await;
    let b = proxy.conn("test").await;
    let e = server_error(Conn::new(proxy.opts("test")).await).unwrap();
    assert_eq!((e.0, e.2.as_str()), (1040, "Too many connections"), "{e:?}");
    drop(a);
    drop(b);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_down_is_a_clear_error_and_others_keep_working() {
    // A closed port.
    let closed = free_addr();
    let down = Proxy::with(Config {
        backend: format!("mysql://root@127.0.0.1:{}", closed.port()),
        connect_timeout_secs: 3,
        ..Config::default()
    })
    .await;
    let up = Proxy::start().await;
    let e = server_error(Conn::new(down.opts("test")).await).unwrap();
    assert_eq!(e.0, 1429, "{e:?}");
    assert!(e.2.contains("backend"), "{e:?}");
    let mut c = up.conn("test").await;
    let one: i64 = c.query_first("SELECT 1").await.unwrap().unwrap();
    assert_eq!(one, 1);
    down.stop().await;
    up.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_running_statements_finish() {
    let proxy = Proxy::start().await;
    let mut c = proxy.conn("test").await;
    let addr = proxy.addr;
    let running = tokio::spawn(async move {
        let r: Option<i64> = c.query_first("SELECT SLEEP(1)").await.unwrap();
        r
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.shutdown.cancel();
    assert_eq!(running.await.unwrap(), Some(0));
    tokio::time::timeout(Duration::from_secs(10), proxy.task)
        .await
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}
