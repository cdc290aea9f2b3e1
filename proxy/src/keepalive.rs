//! TCP keep-alive on the proxy's connections (`tcp_keepalive_secs`).
//!
//! A client host that vanishes without closing its connection (powered off, cut off by the
//! network, a VM frozen for good) sends nothing more, not even a FIN. Its session would wait
//! for the next command forever, holding its backend connection, and a transaction it had
//! open kept its row locks in the database: InnoDB waits for nothing but the proxy's backend
//! connection, which looks idle and alive to the server, until the server's `wait_timeout`
//! (eight hours by default). Directly connected, MariaDB notices such a client through the
//! keep-alive it sets on its own client sockets (the kernel's defaults: after two hours).
//!
//! With keep-alive on, after `tcp_keepalive_secs` of silence the kernel sends probes every
//! [`PROBE_INTERVAL`], and after [`PROBES`] unanswered ones it resets the connection: the
//! session's read fails, it ends as for a client that closed (its transaction is rolled
//! back) and the backend connection goes back to the pool. A peer that is alive answers the
//! probes from its kernel, even while its process is busy or stopped, so a slow client is
//! never cut off. The same holds for the backend connections: a database host that goes
//! silent while a statement runs on it fails that statement (2013) instead of leaving the
//! session waiting for good. Data the peer never acknowledged is a different matter: the
//! kernel's retransmission gives up on it (about a quarter of an hour by default).

use std::time::Duration;

use tokio::net::TcpStream;

/// The largest idle time Linux accepts (`TCP_KEEPIDLE`).
pub const MAX_IDLE_SECS: u64 = 32_767;

/// Between two unanswered probes.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(10);

/// Unanswered probes before the kernel gives the connection up.
pub const PROBES: u32 = 6;

/// The keep-alive for `idle_secs` (0: none).
pub fn settings(idle_secs: u64) -> Option<socket2::TcpKeepalive> {
    (idle_secs > 0).then(|| {
        socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(idle_secs))
            .with_interval(PROBE_INTERVAL)
            .with_retries(PROBES)
    })
}

/// Turns keep-alive on for an accepted client connection. A failure only costs the
/// keep-alive: it is logged and the client served.
pub fn client(stream: &TcpStream, idle_secs: u64) {
    if let Some(k) = settings(idle_secs) {
        if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&k) {
            tracing::warn!(error = %e, "TCP keep-alive not set on a client connection");
        }
    }
}

/// The keep-alive idle time for a backend pool: the backend URL's own
/// (`?tcp_keepalive=<ms>`, mysql_async's parameter) if it sets one, else `idle_secs` (0:
/// none).
pub fn backend(url: &mysql_async::Opts, idle_secs: u64) -> Option<Duration> {
    url.tcp_keepalive()
        .or((idle_secs > 0).then(|| Duration::from_secs(idle_secs)))
}
