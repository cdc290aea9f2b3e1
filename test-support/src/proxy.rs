//! A `rewind-proxy` process in front of the test MariaDB.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use mysql_async::{Conn, OptsBuilder};

use crate::dir::TempDir;
use crate::mariadb::BACKEND;
use crate::process::{binary, free_addr, Process};
use crate::wait::eventually;

/// A `rewind-proxy` process.
pub struct Proxy {
    pub process: Process,
    pub addr: SocketAddr,
    /// Its arguments, for [`Proxy::restart`].
    args: Vec<String>,
}

impl Proxy {
    /// Starts a proxy in front of the test MariaDB and waits until it serves and has
    /// attached to the coordinator for phase two.
    pub async fn start(dir: &TempDir, name: &str, coordinators: &str, extra: &[&str]) -> Proxy {
        Self::start_with(dir, name, coordinators, extra, "").await
    }

    /// As [`Proxy::start`], with its admin listener (`/metrics`, `/readyz`) on a free port:
    /// the proxy and that address.
    pub async fn start_with_admin(
        dir: &TempDir,
        name: &str,
        coordinators: &str,
    ) -> (Proxy, SocketAddr) {
        let admin = free_addr();
        let arg = admin.to_string();
        let proxy = Self::start(dir, name, coordinators, &["--admin-addr", &arg]).await;
        (proxy, admin)
    }

    /// As [`Proxy::start`], with `REWIND_FAILPOINTS` set to `failpoints`.
    pub async fn start_with(
        dir: &TempDir,
        name: &str,
        coordinators: &str,
        extra: &[&str],
        failpoints: &str,
    ) -> Proxy {
        Self::start_as(dir, name, coordinators, extra, failpoints, true).await
    }

    /// As [`Proxy::start`], but waiting only until it serves: for a proxy that cannot
    /// attach to its coordinator.
    pub async fn start_unattached(
        dir: &TempDir,
        name: &str,
        coordinators: &str,
        extra: &[&str],
    ) -> Proxy {
        Self::start_as(dir, name, coordinators, extra, "", false).await
    }

    async fn start_as(
        dir: &TempDir,
        name: &str,
        coordinators: &str,
        extra: &[&str],
        failpoints: &str,
        attached: bool,
    ) -> Proxy {
        let addr = free_addr();
        let mut args = vec![
            "--listen".to_string(),
            addr.to_string(),
            "--backend".into(),
            BACKEND.into(),
            "--coordinator".into(),
            coordinators.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = dir.0.join(format!("{name}.log"));
        let process = Self::launch(addr, &args, &log, failpoints, attached).await;
        Proxy {
            process,
            addr,
            args,
        }
    }

    async fn launch(
        addr: SocketAddr,
        args: &[String],
        log: &Path,
        failpoints: &str,
        attached: bool,
    ) -> Process {
        // The log is appended to across restarts: count the attachments before this one.
        let attached_before = std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("attached to the coordinator")
            .count();
        let env = [("REWIND_FAILPOINTS".to_string(), failpoints.to_string())];
        let process = Process::spawn_env(&binary("rewind-proxy"), args, &env, log.to_path_buf());
        eventually(
            "the proxy serves and attaches",
            Duration::from_secs(30),
            || async move {
                let attachments = std::fs::read_to_string(log)
                    .unwrap_or_default()
                    .matches("attached to the coordinator")
                    .count();
                (!attached || attachments > attached_before)
                    && tokio::net::TcpStream::connect(addr).await.is_ok()
            },
        )
        .await;
        process
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts again after a kill, same port and arguments, without failpoints.
    pub async fn restart(&mut self) {
        self.process.kill();
        let log = self.process.log.clone();
        self.process = Self::launch(self.addr, &self.args, &log, "", true).await;
    }

    /// Waits until the process has exited (a failpoint aborted it).
    pub async fn wait_exit(&mut self, within: Duration) {
        assert!(
            self.process.wait_exit(within).await.is_some(),
            "the proxy did not exit within {within:?}"
        );
    }

    pub fn opts(&self, db: &str) -> OptsBuilder {
        crate::mariadb::root_opts(self.addr.port(), db)
    }

    pub async fn conn(&self, db: &str) -> Conn {
        Conn::new(self.opts(db))
            .await
            .expect("connect through the proxy")
    }
}

/// One sample of the `/metrics` of the proxy whose admin listener is `admin` (see
/// [`Proxy::start_with_admin`]): the value of the line that starts with `series` (name and
/// labels), 0 when there is none.
pub async fn proxy_metric(admin: SocketAddr, series: &str) -> f64 {
    let a = crate::http::request(admin, "GET", "/metrics", None, &[])
        .await
        .expect("GET /metrics");
    assert_eq!(a.status, 200);
    String::from_utf8(a.body)
        .expect("UTF-8 metrics")
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}
