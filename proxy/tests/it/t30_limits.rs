use std::time::Duration;

use mysql_async::prelude::*;
use mysql_async::{Conn, OptsBuilder};
use rewind_proxy::Config;
use rewind_test_support::{direct, free_addr, server_error, BACKEND};
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

/// The kernel's timer on an established IPv4 socket whose local port is `local` (and remote
/// port `remote`, if given), from `/proc/net/tcp`: (kind, clock ticks until it fires).
/// Kind 2 is the keep-alive timer; 0 none.
fn tcp_timer(local: u16, remote: Option<u16>) -> Option<(u8, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let established = f.get(3) == Some(&"01");
        let matches = port(f[1]) == Some(local) && remote.is_none_or(|r| port(f[2]) == Some(r));
        if !(established && matches) {
            return None;
        }
        let (kind, when) = f[5].split_once(':')?;
        Some((kind.parse().ok()?, u64::from_str_radix(when, 16).ok()?))
    })
}

/// A client host that vanishes without closing its connection sends nothing, not even a
/// FIN: without keep-alive its session, backend connection and open transaction (its row
/// locks) would stay until the server's `wait_timeout`. With `tcp_keepalive_secs` the
/// kernel probes both the client's connection and the backend's after that much silence
/// (directly connected, MariaDB probes its clients after the kernel's two hours). The
/// probes themselves are the kernel's; what this checks is that both sockets carry the
/// proxy's keep-alive timer, and that 0 turns it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_backend_connections_keep_alive() {
    for secs in [25u64, 0] {
        let proxy = Proxy::with(Config {
            backend: BACKEND.into(),
            tcp_keepalive_secs: secs,
            ..Config::default()
        })
        .await;
        let mut c = proxy.conn("test").await;
        // The backend connection's port on this side, as the server sees its client.
        let id: u64 = c
            .query_first("SELECT CONNECTION_ID()")
            .await
            .unwrap()
            .unwrap();
        let host: String = direct("test")
            .await
            .exec_first(
                "SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = ?",
                (id,),
            )
            .await
            .unwrap()
            .expect("the session's backend connection is in the process list");
        let backend_port: u16 = host.rsplit(':').next().unwrap().parse().unwrap();
        // Any ACK still due settles on loopback at once.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let client = tcp_timer(proxy.addr.port(), None).expect("the accepted client socket");
        let backend = tcp_timer(backend_port, Some(3306)).expect("the backend socket");
        for (side, (kind, ticks)) in [("client", client), ("backend", backend)] {
            if secs == 0 {
                assert_eq!(kind, 0, "{side} connection: no keep-alive with 0");
            } else {
                // Clock ticks of 1/100 s; the kernel's default would be 7,200 s.
                assert_eq!(kind, 2, "{side} connection: keep-alive timer pending");
                assert!(
                    ticks <= secs * 100,
                    "{side} connection: probes due in {ticks} ticks, after at most {secs} s"
                );
            }
        }
        drop(c);
        proxy.stop().await;
    }
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
