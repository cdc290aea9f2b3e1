//! Starting in-process on port 0 (the library entry point), and graceful shutdown of
//! the binary on SIGTERM with its state intact.

use std::time::Duration;

use rewind_coordinator::Config;
use rewind_protocol::v1::GlobalRequest;
use rewind_protocol::GlobalStatus;
use rewind_test_support::{Coordinator, TempDir};
use tokio_util::sync::CancellationToken;

use crate::begin;

#[tokio::test]
async fn t40_in_process_on_port_0_stops_on_cancel() {
    let dir = TempDir::new("inproc");
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = grpc.local_addr().unwrap();
    let config = Config {
        data_dir: dir.0.join("data"),
        ..Config::default()
    };
    let token = CancellationToken::new();
    let server = tokio::spawn(rewind_coordinator::run(config, grpc, http, token.clone()));
    let mut tm = rewind_protocol::TransactionManagerClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let xid = begin(&mut tm).await;
    assert!(xid.starts_with("rw-"));
    drop(tm);
    token.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("stops")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn t41_sigterm_is_graceful_and_state_survives() {
    let dir = TempDir::new("sigterm");
    // Also: the file is read, and flags (the harness's addresses) override it.
    let cfg = dir.0.join("coordinator.toml");
    std::fs::write(
        &cfg,
        "http_addr = \"127.0.0.1:1\"\nshutdown_grace_ms = 1000\ntick_ms = 100\n",
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap().to_string();
    let mut c = Coordinator::start(&dir, &["--config", &cfg]).await;
    let mut tm = c.tm().await;
    let xid = begin(&mut tm).await;
    drop(tm);
    let code = c.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "exit status after SIGTERM");
    let c = Coordinator::start(&dir, &[]).await;
    let s = c
        .tm()
        .await
        .status(GlobalRequest { xid })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(s, GlobalStatus::Begin as i32);
}
