//! Protocol tests: the proxy runs in-process on 127.0.0.1:0 in front of the MariaDB at
//! 127.0.0.1:3306 (root, no password); real clients (mysql_async text and binary, the
//! `mariadb` CLI, sysbench, and a raw socket for bad input) talk to it. Each test uses its
//! own `rwp_<name>` database so tests run in parallel. One test binary, modules numbered
//! by area; the MariaDB helpers, temp dirs and processes come from `rewind-test-support`.
//!
//! - `wire`: the MySQL wire by hand (packets, a raw login) for what real clients never send.
//! - `t10_fidelity`: every column type and parameter reads back as it does directly.
//! - `t20_session`: OK packets, multi-results, session state and its reset, flags.
//! - `t30_limits`: authentication, max connections, a backend that is down, shutdown.
//! - `t40_bad_input`: garbage, truncation and hand-made packets.
//! - `t50_real_clients`: the `mariadb` CLI and sysbench.
//! - `t60_binary`: the `rewind-proxy` binary: flags, config, streaming, SIGTERM.
//! - `t70_images`: AT's building blocks below the session (SQL analysis, images, records,
//!   undo SQL, the dirty-write check) against MariaDB directly.

mod t10_fidelity;
mod t20_session;
mod t30_limits;
mod t40_bad_input;
mod t50_real_clients;
mod t60_binary;
mod t70_images;

use std::net::SocketAddr;
use std::time::Duration;

use mysql_async::{Column, Conn, OptsBuilder, Row, Value};
use rewind_proxy::Config;
use rewind_test_support::BACKEND;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The proxy library's `run`, in this process, on a port of its own.
pub struct Proxy {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// In front of the test MariaDB, everything else default.
    pub async fn start() -> Proxy {
        Proxy::with(Config {
            backend: BACKEND.into(),
            ..Config::default()
        })
        .await
    }

    pub async fn with(config: Config) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            rewind_proxy::run(listener, config, token).await.unwrap();
        });
        Proxy {
            addr,
            shutdown,
            task,
        }
    }

    pub fn opts(&self, db: &str) -> OptsBuilder {
        rewind_test_support::root_opts(self.addr.port(), db)
    }

    pub async fn conn(&self, db: &str) -> Conn {
        Conn::new(self.opts(db)).await.unwrap()
    }

    /// Cancels and waits for `run` to return.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("proxy stops")
            .unwrap();
    }
}

/// Everything a client sees of a column.
pub fn meta(c: &Column) -> String {
    format!(
        "{}|{}|{}|{}|{}|{:?}|{:?}|cs={}|len={}|dec={}",
        c.schema_str(),
        c.table_str(),
        c.org_table_str(),
        c.name_str(),
        c.org_name_str(),
        c.column_type(),
        c.flags(),
        c.character_set(),
        c.column_length(),
        c.decimals()
    )
}

pub fn values(rows: Vec<Row>) -> Vec<Vec<Value>> {
    rows.into_iter().map(Row::unwrap).collect()
}
