use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mysql_async::prelude::*;
use mysql_async::{Conn, OptsBuilder};
use rewind_test_support::{eventually, free_addr, Process, TempDir};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use rewind_test_support::wire::{frame, raw_login, read_packet};

const BIN: &str = env!("CARGO_BIN_EXE_rewind-proxy");

#[test]
fn help_lists_the_design_flags() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--backend",
        "--coordinator",
        "--undo-schema",
        "--config",
        "--max-connections",
    ] {
        assert!(text.contains(flag), "{flag} missing from --help:\n{text}");
    }
}

#[test]
fn unknown_config_keys_are_rejected_at_start() {
    let dir = TempDir::new("proxy-cfg");
    let file = dir.0.join("bad.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:0\"\nmax_conections = 3\n").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_conections"));
}

/// Starts the binary on `addr` (log in `dir`) and waits until it serves.
async fn spawn_binary(dir: &TempDir, addr: SocketAddr, extra: &[&str]) -> Process {
    let mut args = vec!["--listen".to_string(), addr.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let process = Process::spawn(Path::new(BIN), &args, dir.0.join("proxy.log"));
    eventually(
        "the proxy binary serves",
        Duration::from_secs(10),
        || async move { TcpStream::connect(addr).await.is_ok() },
    )
    .await;
    process
}

fn peak_rss_mb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap()
        / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_results_stream_row_by_row() {
    let dir = TempDir::new("proxy-stream");
    let addr = free_addr();
    let mut proxy = spawn_binary(&dir, addr, &[]).await;
    let mut s = raw_login(addr).await;
    // 256 MB of rows, read and thrown away by a raw client.
    s.write_all(&frame(
        0,
        b"\x03SELECT REPEAT('x', 1048576) FROM test.seq_1_to_256",
    ))
    .await
    .unwrap();
    let (mut rows, mut eofs) = (0, 0);
    while eofs < 2 {
        let p = read_packet(&mut s).await.unwrap();
        match p.as_slice().first() {
            Some(0xFE) if p.len() < 9 => eofs += 1,
            Some(0xFF) => panic!("{}", String::from_utf8_lossy(&p)),
            _ if eofs == 1 => rows += 1,
            _ => {}
        }
    }
    assert_eq!(rows, 256);
    let peak = peak_rss_mb(proxy.pid().expect("running"));
    // A collected result would need 256 MB at least.
    assert!(peak < 64, "proxy peak RSS {peak} MB");
    proxy.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_running_statements_then_exits() {
    let port = free_addr().port();
    let dir = TempDir::new("proxy-term");
    let file = dir.0.join("proxy.toml");
    // The flag overrides the file's listen address.
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:1\"\nshutdown_grace_secs = 10\n",
    )
    .unwrap();
    let args = [
        "--config".to_string(),
        file.display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
    ];
    let mut proxy = Process::spawn(Path::new(BIN), &args, dir.0.join("proxy.log"));
    let opts = OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some("root"))
        .prefer_socket(false);
    let mut conn = None;
    for _ in 0..100 {
        if let Ok(c) = Conn::new(opts.clone()).await {
            conn = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut conn = conn.expect("proxy binary came up");
    let running = tokio::spawn(async move {
        let r: Option<i64> = conn.query_first("SELECT SLEEP(1.5)").await.unwrap();
        r
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(proxy.sigterm());
    assert_eq!(running.await.unwrap(), Some(0), "statement finished");
    let status = proxy
        .wait_exit(Duration::from_secs(60))
        .await
        .expect("the proxy exits");
    assert!(status.success(), "{status:?}");
}
