//! rewind-proxy: a MySQL-protocol server in front of one backend MySQL/MariaDB server,
//! and the place where Rewind's AT mode runs. Every client session gets its own backend
//! connection, so session state (current database, variables, transactions, temporary
//! tables, prepared statements) behaves exactly as on the backend. Statements tagged with
//! a leading `/*+ XID('...') */` comment, and every statement of a local transaction such
//! a tag bound, take the AT path: images, undo record, global locks; everything else passes
//! straight through (write isolation aside: UPDATE/DELETE on tables holding global locks).
//!
//! # Layout
//!
//! Modules follow a client's bytes; each transaction mode owns one folder.
//! - [`packet`]: the client's socket (plain TCP or TLS), framing (length + sequence id,
//!   16 MB splits), a buffered writer flushed at 64 KB so results stream, and a
//!   bounds-checked cursor for client bytes.
//! - [`handshake`]: HandshakeV10, the switch to TLS on an SSLRequest, capability
//!   negotiation, mysql_native_password check.
//! - [`tls`]: certificates and keys read at start: the client listener's, the backend
//!   connections' and the coordinator channels' TLS.
//! - [`shards`]: the session threads (single-threaded runtimes) sessions are spread over.
//! - [`session`]: one task per client; the command loop relaying to a `mysql_async::Conn`.
//!   It only classifies a command and hands it on: untagged statements straight to the
//!   backend, statements of a global transaction to the mode that owns them.
//! - [`wire`]: encoding of OK / EOF / ERR, column definitions and text/binary rows.
//! - [`xid`]: the cheap leading-comment hint reader (XID and the other hints' arguments);
//!   [`classify`]: first-keyword classes.
//! - [`stacked`]: the cheap second-statement detector for clients without multi-statements.
//! - [`at`]: AT mode, all of it: the session's AT path (binding, refusals, write isolation's
//!   routing), the SQL analysis, images and key-restricted writes per statement kind, the
//!   branch's commit protocol, global-lock waits, and phase two (rollback with the
//!   dirty-write check, operator resolutions, undo housekeeping). See `at/mod.rs`.
//! - [`barrier`]: the idempotent-consumer barrier (`/*+ BARRIER('<consumer>', '<id>') */`).
//! - [`msg`]: half messages (`/*+ MSG('<message_id>') */`): the producer's check row in its
//!   own local transaction, the commit or rollback told to the coordinator when it ends, the
//!   check-back probe, and committed barrier pairs reported as consumed.
//! - [`tcc`]: the TCC fence (`/*+ TCC('<xid>', <branch_id>, 'try'|'confirm'|'cancel') */`):
//!   repeated phases, empty rollbacks and suspended Tries refused in the participant's own
//!   local transaction. It and the barrier write their rows first through the session's
//!   [`session::guarded`] (the implicit transaction, deadlock retries, refusals).
//! - [`outbox`]: the local message table and its relay to RabbitMQ or NATS JetStream.
//! - [`infile`]: `LOAD DATA LOCAL INFILE`, the backend's file request relayed to the client.
//! - [`attach`]: the Attach stream to the coordinator, which delivers phase two and
//!   write-isolation sets to the modes.
//! - [`coordinator`]: the gRPC client that follows the cluster's leader.
//! - [`admin`]: the admin HTTP listener (`/metrics`, `/healthz`, `/readyz`); [`metrics`]:
//!   the counters sessions, modes and phase two bump, and their Prometheus text.
//! - [`failpoint`]: test hooks (the `failpoints` feature only); `fuzzing`: entry points
//!   for `fuzz/`'s targets (`--cfg fuzzing` only).
//! - [`error`]: the one error enum and its one mapping to MySQL error packets.
//! - [`config`]: configuration (TOML, defaults, validation).
//!
//! # Why not opensrv-mysql's command loop
//!
//! `opensrv_mysql::AsyncMysqlIntermediary::run` cannot be a faithful pass-through: it
//! answers unknown or unparsed commands with OK, hard-codes `SELECT @@max_allowed_packet`,
//! intercepts `USE`, rejects non-UTF-8 query bytes (BLOB literals) with a
//! connection-killing error, lacks COM_RESET_CONNECTION / COM_STMT_RESET / COM_SET_OPTION /
//! COM_CHANGE_USER / COM_STATISTICS, its handshake advertises neither
//! CLIENT_MULTI_STATEMENTS / MULTI_RESULTS / PS_MULTI_RESULTS / TRANSACTIONS / FOUND_ROWS
//! nor real status flags, and its `Column` has no charset, decimals, schema or original
//! names. So the wire layer here is our own; opensrv still supplies `ErrorKind` (code +
//! SQLSTATE) for every error the proxy raises itself.
//!
//! # Known deviations from talking to the backend directly
//!
//! - The connection id in our handshake is the proxy's session number (from 2^31 up, so it
//!   never names a backend thread), not the backend thread id: the backend connection is
//!   chosen after the client's CLIENT_FOUND_ROWS is known. A `KILL` of that id is sent
//!   with the session's backend thread id instead (`session/kill.rs`).
//! - mysql_async always opens backend connections with CLIENT_MULTI_STATEMENTS; for a client
//!   without multi-statements, [`stacked`] refuses a second statement with 1064 itself
//!   (its message differs from the server's; under ANSI_QUOTES a backslash inside a
//!   double-quoted identifier is taken as an escape).
//! - Cursor requests in COM_STMT_EXECUTE get a plain result set; COM_STMT_FETCH,
//!   COM_FIELD_LIST, COM_BINLOG_DUMP and other rare commands get 1047.
//! - An execute no mode looks into reaches the backend with the client's parameter bytes
//!   as sent. Where the proxy decodes them (AT, XA, the guarded modes, long data, a write
//!   waiting for a global lock), decimals, strings, BLOBs and dates keep the client's type
//!   ([`params`]), but integers go as LONGLONG (a YEAR as its number, which MariaDB stores
//!   as NULL directly) and JSON, ENUM, SET, BIT and GEOMETRY as VAR_STRING: the same values,
//!   while a bare `SELECT ?` reports its column as the wider type. The prepare's warning
//!   count is reported as 0.
//! - For clients without CLIENT_DEPRECATE_EOF, the EOF after column definitions carries the
//!   previous statement's status flags; a result set followed by more results reports 0
//!   warnings in its terminator.
//! - TLS with the client is the proxy's own (`tls_cert`), independent of TLS to the backend
//!   (`backend_tls`): `Ssl_cipher` and the other `Ssl_%` status variables describe the
//!   proxy's backend connection, not the client's. TLS 1.2 and 1.3 only (rustls); client
//!   certificates are not asked for. No compression (not advertised).
//! - Backend unreachable is 1429 (ER_CONNECT_TO_FOREIGN_DATA_SOURCE): opensrv's `ErrorKind`
//!   has no client-side 2003/2013 codes.
//! - On the AT path the proxy runs its own statements on the client's connection (image
//!   reads, the key-restricted write, the undo record): `ROW_COUNT()` and `FOUND_ROWS()`
//!   right after an AT statement describe the proxy's last read, and after a tagged
//!   autocommit statement `SHOW WARNINGS` shows those of the proxy's COMMIT (the OK packet
//!   itself carries the statement's own affected rows, last insert id and warning count).
//!
//! # Tests and benchmark
//!
//! `cargo test -p rewind-proxy` (unit tests inline; `tests/proxy.rs` starts the proxy
//! in-process and drives it with mysql_async, the `mariadb` CLI, sysbench and raw sockets
//! against MariaDB at 127.0.0.1:3306). `bench/passthrough` measures throughput, p95 and
//! CPU per query against direct, and RSS with 1,000 idle clients.

mod admin;
pub mod at;
mod attach;
mod barrier;
mod classify;
pub mod config;
mod coordinator;
mod error;
pub mod failpoint;
#[cfg(fuzzing)]
pub mod fuzzing;
mod handshake;
mod infile;
mod keepalive;
mod metrics;
mod msg;
mod outbox;
mod packet;
mod params;
mod session;
mod shards;
mod stacked;
mod tcc;
mod tls;
mod wire;
mod xa;
mod xid;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

pub use config::Config;
pub use error::ProxyError;

/// First session id announced in handshakes (see `run`).
pub(crate) const SESSION_ID_BASE: u32 = 0x8000_0000;

/// What every session reads; built once by [`run`].
pub struct Shared {
    pub config: Config,
    /// The client listener's TLS, when it has a certificate.
    pub client_tls: Option<tls::ClientTls>,
    /// TLS options of every backend connection (`backend_tls`), when not off.
    pub backend_ssl: Option<mysql_async::SslOpts>,
    /// Accepted (user, password) pairs.
    pub logins: Vec<config::User>,
    /// Backend pools by the client's CLIENT_FOUND_ROWS (index 0 = off, 1 = on): the flag
    /// changes UPDATE's affected-rows count, so a backend connection must match its client.
    /// Sessions take theirs from their session thread's own pair (see [`shards`]); these
    /// serve the process's runtime.
    pub pools: [mysql_async::Pool; 2],
    /// Version string in our handshake: the backend's, when it could be read at start.
    pub server_version: String,
    /// The backend's global `wait_timeout` and `interactive_timeout` (seconds), when they
    /// could be read at start: a client idle that long is disconnected, as the server
    /// would (see `session::Session::idle_limit`).
    pub idle_timeouts: std::sync::Mutex<Option<(u64, u64)>>,
    /// The backend's `max_allowed_packet`, when it could be read at start: the longest
    /// long-data parameter it accepts.
    pub max_allowed_packet: Option<usize>,
    /// Collation id → (charset, collation) names, learnt from the backend on first use, so
    /// a client connecting with a non-default charset costs one `SET NAMES`, not a lookup.
    pub collations: std::sync::Mutex<std::collections::HashMap<u8, (String, String)>>,
    /// The coordinator (or cluster), reached only for tagged work.
    pub coordinator: Arc<coordinator::Coordinators>,
    /// This backend's resource id (see [`Config::resource`]).
    pub resource_id: String,
    /// Table metadata for images, shared by all sessions.
    pub metas: rewind_undo_log::MetaCache,
    /// Which transactions hold which table definitions confirmed (see `at::definitions`).
    pub definitions: Arc<at::definitions::Witness>,
    /// XIDs known to be running from this proxy's own registrations.
    pub begun: at::begun::Begun,
    /// Per busy table, a transaction holding its definition confirmed for every session.
    pub sentinels: at::sentinel::Sentinels,
    /// Statements on the undo_log table.
    pub undo: at::undo_table::UndoTable,
    /// Statements on the consumer barrier's table.
    pub barrier: barrier::BarrierTable,
    /// Statements on the half messages' check table, and their figures and consumed queue.
    pub msg_check: msg::CheckTable,
    pub messages: msg::Messages,
    /// Statements on the TCC fence's table, and how fenced statements went.
    pub tcc_fence: tcc::FenceTable,
    pub tcc_counts: tcc::Counts,
    /// Statements on the local message table, and the relay's kick and counters.
    pub outbox_table: outbox::OutboxTable,
    pub outbox: outbox::Outbox,
    /// Tables of this resource holding global locks, and the writes in flight to others.
    pub isolation: Arc<at::isolation::Isolation>,
    /// Statements on the XA branches' proof rows, and the connections of prepared XA
    /// branches kept for their phase two.
    pub xa_proof: xa::ProofTable,
    pub xa_pinned: xa::Pinned,
    /// Each session's backend thread id by its handshake id, for `KILL <handshake id>`.
    pub session_ids: Arc<session::kill::BackendIds>,
    /// What `/metrics` shows (see [`admin`]).
    pub metrics: metrics::Metrics,
}

/// Serves clients from `listener` until `shutdown` is cancelled; then stops accepting, lets
/// running statements finish (at most `shutdown_grace_secs`), and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), ProxyError> {
    config.validate().map_err(ProxyError::Config)?;
    // mysql_async builds its TLS client configs on the process's default provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client_tls = tls::client_tls(&config).map_err(ProxyError::Config)?;
    let backend_ssl = tls::backend_ssl(&config).map_err(ProxyError::Config)?;
    let coordinator_tls = tls::coordinator_tls(&config).map_err(ProxyError::Config)?;
    let pools = [
        pool(&config, false, &backend_ssl)?,
        pool(&config, true, &backend_ssl)?,
    ];
    // With `session_threads`, sessions run on their own threads, each with its own pools
    // (see `shards`); otherwise on this runtime with these pools.
    let shards = match config.session_threads {
        0 => None,
        n => Some(shards::Shards::start(n, || {
            Ok([
                pool(&config, false, &backend_ssl)?,
                pool(&config, true, &backend_ssl)?,
            ])
        })?),
    };
    let (server_version, settings) = backend_version(&pools[0]).await;
    let (idle_timeouts, max_allowed_packet) = match settings {
        Some((wait, interactive, max)) => (Some((wait, interactive)), Some(max)),
        None => (None, None),
    };
    let coordinator = coordinator::Coordinators::new(
        &config.coordinator,
        Duration::from_millis(config.coordinator_timeout_ms),
        Duration::from_millis(config.coordinator_retry_ms),
        coordinator_tls,
    )
    .map_err(ProxyError::Config)?
    .hold_reports(Duration::from_millis(config.phase_one_report_hold_ms));
    if client_tls.is_some() {
        info!(
            required = config.require_secure_transport,
            "client TLS offered"
        );
    }
    let shared = Arc::new(Shared {
        client_tls,
        backend_ssl,
        logins: config.logins(),
        pools,
        server_version,
        idle_timeouts: std::sync::Mutex::new(idle_timeouts),
        max_allowed_packet,
        coordinator: Arc::new(coordinator),
        resource_id: config.resource(),
        metas: rewind_undo_log::MetaCache::new(),
        definitions: Arc::default(),
        begun: Default::default(),
        sentinels: Default::default(),
        undo: at::undo_table::UndoTable::new(&config.undo_schema),
        barrier: barrier::BarrierTable::new(&config.undo_schema),
        msg_check: msg::CheckTable::new(&config.undo_schema),
        messages: msg::Messages::default(),
        tcc_fence: tcc::FenceTable::new(&config.undo_schema),
        tcc_counts: tcc::Counts::default(),
        outbox_table: outbox::OutboxTable::new(&config.undo_schema),
        outbox: outbox::Outbox::new(!config.outbox.broker.is_empty()),
        isolation: Arc::default(),
        xa_proof: xa::ProofTable::new(&config.undo_schema),
        xa_pinned: xa::Pinned::default(),
        session_ids: Default::default(),
        metrics: metrics::Metrics::default(),
        config,
        collations: Default::default(),
    });
    shared.sentinels.attach(Arc::downgrade(&shared));
    // Phase two (undo on rollback, record deletes on commit) and undo housekeeping run
    // beside the sessions and stop with them.
    let phase_two = tokio::spawn(attach::run(shared.clone(), shutdown.clone()));
    // The admin listener outlives the drain (its figures stay readable, `/readyz` says
    // "shutting down") and stops last.
    let admin_stop = CancellationToken::new();
    let admin = admin_listener(&shared.config.admin_addr).await.map(|l| {
        tokio::spawn(admin::serve(
            shared.clone(),
            l,
            shutdown.clone(),
            admin_stop.clone(),
        ))
    });
    // Taken before serving: the (max_connections + 1)th client gets error 1040.
    let limit = Arc::new(Semaphore::new(shared.config.max_connections));
    let tracker = TaskTracker::new();
    // Session ids live far above the backend's thread ids, so `KILL QUERY <handshake id>`
    // (the mariadb CLI on Ctrl-C, Connector/J's cancel) is told from a backend id: it is
    // sent with that session's backend thread id instead (`session/kill.rs`), never
    // killing someone else's statement.
    let next_id = AtomicU32::new(SESSION_ID_BASE);
    info!(addr = ?listener.local_addr().ok(), "rewind-proxy accepting");
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, _) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        keepalive::client(&stream, shared.config.tcp_keepalive_secs);
        let conn_id = next_id.fetch_add(1, Ordering::Relaxed) | SESSION_ID_BASE;
        let span = tracing::info_span!("conn", conn_id);
        match limit.clone().try_acquire_owned() {
            Ok(permit) if shards.is_none() => {
                let (shared, pools) = (shared.clone(), shared.pools.clone());
                let shutdown = shutdown.clone();
                tracker.spawn(
                    async move {
                        session::serve(stream, conn_id, shared, pools, shutdown).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            Ok(permit) => {
                // The socket moves to the session's thread and registers with its driver.
                let stream = match stream.into_std() {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(error = %e, "accepted socket unusable");
                        continue;
                    }
                };
                let shard = shards.as_ref().expect("session threads").pick();
                let counted = shard.enter();
                let pools = shard.pools.clone();
                let shared = shared.clone();
                let shutdown = shutdown.clone();
                tracker.spawn_on(
                    async move {
                        match tokio::net::TcpStream::from_std(stream) {
                            Ok(stream) => {
                                session::serve(stream, conn_id, shared, pools, shutdown).await
                            }
                            Err(e) => warn!(error = %e, "accepted socket unusable"),
                        }
                        drop(counted);
                        drop(permit);
                    }
                    .instrument(span),
                    &shard.handle,
                );
            }
            Err(_) => {
                tracker.spawn(reject_too_many(stream, shared.clone()).instrument(span));
            }
        }
    }
    drop(listener);
    tracker.close();
    let grace = Duration::from_secs(shared.config.shutdown_grace_secs);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!("shutdown grace period over; closing remaining connections");
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), phase_two).await;
    shared.sentinels.stop();
    admin_stop.cancel();
    if let Some(admin) = admin {
        let _ = tokio::time::timeout(Duration::from_secs(5), admin).await;
    }
    if let Some(shards) = shards {
        shards.stop().await;
    }
    for p in shared.pools.iter() {
        let _ = tokio::time::timeout(Duration::from_secs(2), p.clone().disconnect()).await;
    }
    info!("rewind-proxy stopped");
    Ok(())
}

/// MySQL sends "Too many connections" in place of the greeting.
async fn reject_too_many(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let mut ps = packet::PacketStream::new(stream, 1024);
    let err = wire::err_packet_before_handshake(&ProxyError::TooManyConnections);
    shared.metrics.error_sent(&err);
    ps.push(&err);
    ps.shutdown().await;
}

/// The admin listener, bound at `addr` (empty: none). A port that cannot be bound is
/// logged and the proxy serves SQL without it: the admin endpoints are for operators and
/// must not keep clients from their database (two proxies on one host with the default,
/// say); an orchestrator probing `/readyz` sees the problem.
async fn admin_listener(addr: &str) -> Option<TcpListener> {
    if addr.is_empty() {
        return None;
    }
    match TcpListener::bind(addr).await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(addr, error = %e, "admin listener not started: cannot bind");
            None
        }
    }
}

fn pool(
    config: &Config,
    found_rows: bool,
    ssl: &Option<mysql_async::SslOpts>,
) -> Result<mysql_async::Pool, ProxyError> {
    let opts = mysql_async::Opts::from_url(&config.backend)
        .map_err(|e| ProxyError::BackendUnavailable(e.to_string()))?;
    let constraints = mysql_async::PoolConstraints::new(0, config.max_connections.max(1))
        .ok_or_else(|| ProxyError::BackendUnavailable("bad pool size".into()))?;
    let keepalive_idle = keepalive::backend(&opts, config.tcp_keepalive_secs);
    let opts = mysql_async::OptsBuilder::from_opts(opts)
        .tcp_keepalive(keepalive_idle)
        .client_found_rows(found_rows)
        // Statements are the client's: never cached, closed when the client closes them.
        .stmt_cache_size(0)
        // Leave the backend's session defaults alone.
        .wait_timeout(None)
        // LOAD DATA LOCAL INFILE: the file comes from the client (see `infile`).
        .local_infile_handler(Some(infile::Relay))
        // Read whatever the backend sends, as client libraries do: a row may be larger
        // than max_allowed_packet (a LONGBLOB of exactly that size is); what the backend
        // accepts is for it to say (its own error 1153).
        .max_allowed_packet(Some(1 << 30))
        .prefer_socket(false)
        .ssl_opts(ssl.clone())
        .pool_opts(
            mysql_async::PoolOpts::default()
                .with_constraints(constraints)
                // COM_RESET_CONNECTION before a connection serves another client.
                .with_reset_connection(true)
                // Give idle backend connections back to the server after a minute.
                .with_inactive_connection_ttl(Duration::from_secs(60))
                .with_ttl_check_interval(Duration::from_secs(30)),
        );
    Ok(mysql_async::Pool::new(opts))
}

/// A backend connection for a client session to start on, or for a session moving to
/// another connection (XA, `xa::state`): reset first, so that it holds the server's
/// global values of now, as a connection made now would.
///
/// A pooled connection holds the values of when it was last reset, on its return to the
/// pool. Without this reset, a `SET GLOBAL` (say a stricter `sql_mode`) made while a
/// connection sat idle did not reach the session that got it next, for that session's
/// whole life; and a session moving to such a connection kept none of its values that
/// equal the new globals (`xa::state` carries only those that differ from them). The
/// cost is one round trip when a session starts (and for each XA branch).
pub(crate) async fn session_conn(
    pool: &mysql_async::Pool,
) -> Result<mysql_async::Conn, mysql_async::Error> {
    let mut conn = pool.get_conn().await?;
    if !conn.reset().await? {
        // No COM_RESET_CONNECTION (MariaDB before 10.2.4): the older form.
        conn.change_user(Default::default()).await?;
    }
    Ok(conn)
}

/// The backend's own version string, as its handshake would show it (MariaDB 10+ prefixes
/// "5.5.5-" so that MySQL drivers do not take it for MySQL 10), so drivers that pick
/// features by version (Connector/J, PDO) behave as they would direct.
///
/// Also the backend's idle timeouts (global `wait_timeout`, `interactive_timeout`) and
/// `max_allowed_packet`.
async fn backend_version(pool: &mysql_async::Pool) -> (String, Option<(u64, u64, usize)>) {
    let read = async {
        let mut conn = pool.get_conn().await?;
        let v: Option<(String, u64, u64, usize)> = conn
            .query_first(
                "SELECT VERSION(), @@global.wait_timeout, @@global.interactive_timeout, \
                 @@global.max_allowed_packet",
            )
            .await?;
        Ok::<_, mysql_async::Error>((conn.server_version(), v))
    };
    match tokio::time::timeout(Duration::from_secs(3), read).await {
        Ok(Ok(((major, _, _), Some((v, wait, interactive, max))))) => {
            let v = if v.contains("MariaDB") && major >= 10 {
                format!("5.5.5-{v}")
            } else {
                v
            };
            (v, Some((wait, interactive, max)))
        }
        other => {
            // Serve anyway (the backend may come up later); a TLS refusal shows here first.
            let why = match other {
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no answer within 3 s".into(),
                Ok(Ok(_)) => "no version row".into(),
            };
            warn!(error = %why, "backend not reachable at start; announcing a default version");
            ("8.0.35-rewind".to_string(), None)
        }
    }
}
