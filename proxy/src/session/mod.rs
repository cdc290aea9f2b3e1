//! One client session: after the handshake, take a backend connection from the pool
//! matching the client's CLIENT_FOUND_ROWS, then relay commands one at a time until
//! COM_QUIT, EOF, a fatal error or shutdown. Dropping the `Conn` returns it to the pool,
//! which resets it (COM_RESET_CONNECTION) before anyone else gets it.
//!
//! - [`guarded`]: a statement behind rows a mode writes first (the barrier, the TCC fence,
//!   a half message's check row).
//! - [`reuse`]: backend statements kept after the client closed them, for the next prepare
//!   of the same text.

pub(crate) mod guarded;
pub(crate) mod kill;
pub(crate) mod reuse;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mysql_async::consts::{CapabilityFlags, ColumnFlags, ColumnType, StatusFlags};
use mysql_async::prelude::{Protocol, Queryable};
use mysql_async::{BinaryProtocol, Conn, QueryResult, Statement, TextProtocol, Value};
use mysql_common::io::ParseBuf;
use mysql_common::value::{BinValue, ValueDeserializer};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::at::{self, Branch, StmtCache};
use crate::barrier::Barrier;
use crate::classify::{self, Kind};
use crate::config::WriteIsolation;
use crate::error::ProxyError;
use crate::handshake;
use crate::metrics::Command;
use crate::msg::Msg;
use crate::packet::{put_lenenc_int, Cursor, PacketStream};
use crate::stacked;
use crate::tcc::Tcc;
use crate::wire;
use crate::xa::session::Route as XaRoute;
use crate::xid;
use crate::Shared;

const COM_QUIT: u8 = 0x01;
const COM_INIT_DB: u8 = 0x02;
pub(crate) const COM_QUERY: u8 = 0x03;
const COM_STATISTICS: u8 = 0x09;
const COM_PROCESS_KILL: u8 = 0x0c;
pub(crate) const COM_CHANGE_USER: u8 = 0x11;
const COM_PING: u8 = 0x0e;
const COM_STMT_PREPARE: u8 = 0x16;
pub(crate) const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;
const COM_STMT_RESET: u8 = 0x1a;
const COM_SET_OPTION: u8 = 0x1b;
pub(crate) const COM_RESET_CONNECTION: u8 = 0x1f;
const MYSQL_OPTION_MULTI_STATEMENTS_ON: u16 = 0;
const MYSQL_OPTION_MULTI_STATEMENTS_OFF: u16 = 1;

/// Largest client packet accepted (MySQL's max_allowed_packet upper bound is 1 GB; 64 MB
/// keeps one session's worst case bounded).
const MAX_CLIENT_PACKET: usize = 64 * 1024 * 1024;
const DEFAULT_COLLATION: u8 = 45;

/// A statement prepared on the backend for this client.
pub(crate) struct Prepared {
    pub(crate) stmt: Statement,
    /// Parameter types from the last execute that bound them (new-params-bound flag).
    pub(crate) types: Vec<(ColumnType, ColumnFlags)>,
    /// COM_STMT_SEND_LONG_DATA chunks per parameter, consumed by the next execute.
    pub(crate) long_data: HashMap<u16, Vec<u8>>,
    /// XID tag in the prepared text: every execute is part of that global transaction.
    pub(crate) tag: Option<String>,
    /// First-keyword class of the text, and the text itself when it is UTF-8: for the AT
    /// path when an execute is tagged or runs inside a bound local transaction.
    pub(crate) kind: Kind,
    pub(crate) sql: Option<Arc<str>>,
    /// The DML analysis, done on the first execute that needs it.
    pub(crate) plan: Option<Arc<crate::at::sql::Dml>>,
    /// The statement's BARRIER hint, if it has one.
    pub(crate) barrier: Option<Result<Barrier, &'static str>>,
    /// The statement's TCC hint, if it has one.
    pub(crate) tcc: Option<Result<Tcc, &'static str>>,
    /// The statement's MSG hint (a half message), if it has one.
    pub(crate) msg: Option<Result<Msg, &'static str>>,
    /// The text mentions the outbox (see [`Session::outbox_written`]).
    pub(crate) outbox: bool,
    /// The statement's XA tag (`XA('…')`, or `XID('…')` with `branch_mode = "xa"`).
    pub(crate) xa_tag: Option<Result<String, &'static str>>,
    /// The text as the client sent it (the backend prepared [`Prepared::backend_text`]).
    pub(crate) raw: Arc<[u8]>,
    /// The session's database when it was prepared, if the proxy knew it, and the
    /// [`reuse::Reuse::generation`] it was prepared in.
    pub(crate) prepared_in: Option<String>,
    pub(crate) generation: u64,
    /// Executing it may change how later text parses ([`reuse::may_change_parsing`]).
    pub(crate) changes_parsing: bool,
}

impl Prepared {
    /// An execute's parameter values (after its NULL bitmap and any types bound), with
    /// the long data sent for it, which they consume. A long-data parameter over
    /// `max_allowed_packet` gets the server's own error (the session goes on).
    pub(crate) fn decode_params(
        &mut self,
        bitmap: &[u8],
        values: &[u8],
        max_allowed_packet: Option<usize>,
    ) -> Result<Vec<Value>, ProxyError> {
        let mut out = Vec::with_capacity(self.types.len());
        let mut too_long = false;
        let mut rest = ParseBuf(values);
        for (i, &(ty, fl)) in self.types.iter().enumerate() {
            let null = bitmap[i / 8] & (1 << (i % 8)) != 0;
            if let Some(data) = self.long_data.remove(&(i as u16)) {
                too_long |= max_allowed_packet.is_some_and(|max| data.len() > max);
                out.push(Value::Bytes(data));
            } else if null || ty == ColumnType::MYSQL_TYPE_NULL {
                out.push(Value::NULL);
            } else {
                let v: ValueDeserializer<BinValue> = rest
                    .parse((ty, fl))
                    .map_err(|_| ProxyError::Malformed("bad parameter value"))?;
                out.push(v.0);
            }
        }
        self.long_data.clear();
        if too_long {
            return Err(ProxyError::Backend {
                code: 1105,
                state: "HY000".into(),
                message: "Parameter of prepared statement which is set through \
                          mysql_send_long_data() is longer than 'max_allowed_packet' bytes"
                    .into(),
            });
        }
        Ok(out)
    }

    /// The text the backend prepared ([`xid::backend_text`]): to prepare it again on
    /// another backend connection, and the key under which it may be kept ([`reuse`]).
    pub(crate) fn backend_text(&self) -> &[u8] {
        xid::backend_text(&self.raw)
    }
}

pub(crate) struct Session {
    pub(crate) ps: PacketStream,
    pub(crate) conn: Conn,
    /// `conn`'s thread id under the session's handshake id, for a `KILL` of that id.
    pub(crate) backend_id: kill::Registered,
    /// Its session thread's backend pools (by CLIENT_FOUND_ROWS): where a replacement
    /// connection comes from.
    pub(crate) pools: [mysql_async::Pool; 2],
    /// Negotiated capabilities (client's ∩ ours): decide EOF vs OK terminators.
    pub(crate) caps: CapabilityFlags,
    pub(crate) stmts: HashMap<u32, Prepared>,
    /// Last status flags seen from the backend, for packets the backend did not send us.
    pub(crate) status: u16,
    /// Multi-statements allowed: CLIENT_MULTI_STATEMENTS, then COM_SET_OPTION.
    pub(crate) multi_statements: bool,
    /// For COM_CHANGE_USER: the accepted logins and the client's host for error messages.
    pub(crate) shared: Arc<Shared>,
    pub(crate) peer: String,
    /// The global transaction the current local transaction is bound to (AT mode).
    pub(crate) branch: Option<Branch>,
    /// Statements the proxy itself prepared on this backend connection (image reads).
    pub(crate) internal: StmtCache,
    /// The session's current database when known; `None`: ask the backend when needed.
    pub(crate) db: Option<Option<String>>,
    /// Set while relaying the result of a statement the proxy wrapped in its own
    /// transaction: the client, in autocommit, must not see the in-transaction flag.
    pub(crate) hide_in_trans: bool,
    /// The client's span (a `traceparent` in the statement on the AT path) while that
    /// statement runs; only looked for while traces are on.
    pub(crate) client_span: Option<rewind_protocol::trace::SpanContext>,
    /// The last statement opened the current transaction (BEGIN / START TRANSACTION) and
    /// nothing ran in it since: a barrier insert that InnoDB rolls back as a deadlock
    /// victim may then be retried without losing anything of the client's.
    pub(crate) fresh_tx: bool,
    /// The parameter types of the client's execute being run on a path that decoded its
    /// values (empty while a text statement runs): what its values are sent on as
    /// ([`crate::params`]).
    pub(crate) exec_types: Vec<crate::params::ParamType>,
    /// A statement mentioning the outbox ran since the last transaction ended: when the
    /// next one ends (COMMIT, or the statement itself in autocommit), the relay is kicked,
    /// so committed messages leave at once instead of at the next sweep.
    pub(crate) outbox_written: bool,
    /// The session's `wait_timeout`: a client idle between commands for longer is
    /// disconnected, as the backend would disconnect it (and will, on the backend
    /// connection: the proxy ends the client's connection at the same moment, so the
    /// client's driver sees a closed socket, not an error on its next command).
    pub(crate) idle_limit: Option<Duration>,
    /// Wakes the idle wait every `idle_check_ms` (one timer for the session's life).
    pub(crate) ticker: tokio::time::Interval,
    /// When the last command finished.
    pub(crate) last_active: std::time::Instant,
    /// The XA branch the current local transaction is (XA mode).
    pub(crate) xa: Option<crate::xa::session::Bound>,
    /// The session created a temporary table (which cannot move to another backend
    /// connection, as an XA branch's session must).
    pub(crate) temp_tables: bool,
    /// Half messages bound and barrier pairs recorded in the current local transaction,
    /// settled when it ends (see [`crate::msg::session`]).
    pub(crate) msg: crate::msg::session::Marks,
    /// The next statement id given to the client: the proxy's own numbering, so a
    /// session moved to another backend connection keeps its statements' ids.
    pub(crate) next_stmt_id: u32,
    /// Backend statements the client closed, kept for the next prepare of the same text.
    pub(crate) reuse: reuse::Reuse,
}

/// Serves one accepted TCP connection to completion. Never panics on client bytes.
pub async fn serve(
    stream: TcpStream,
    conn_id: u32,
    shared: Arc<Shared>,
    pools: [mysql_async::Pool; 2],
    shutdown: CancellationToken,
) {
    let peer = stream
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let mut ps = PacketStream::new(stream, MAX_CLIENT_PACKET);
    let timeout = Duration::from_secs(shared.config.connect_timeout_secs);

    let hello = match tokio::time::timeout(
        timeout,
        handshake::accept(
            &mut ps,
            conn_id,
            &shared.server_version,
            &shared.logins,
            &peer,
            shared.client_tls.as_ref(),
        ),
    )
    .await
    {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            info!(error = %e, "handshake failed");
            send_error_and_close(&mut ps, &e, &shared).await;
            return;
        }
        Err(_) => {
            let e = ProxyError::Malformed("handshake timed out");
            send_error_and_close(&mut ps, &e, &shared).await;
            return;
        }
    };
    debug!(user = %hello.user, "authenticated");

    let found_rows = hello.caps.contains(CapabilityFlags::CLIENT_FOUND_ROWS);
    let pool = &pools[usize::from(found_rows)];
    let conn = match tokio::time::timeout(timeout, crate::session_conn(pool)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            let e = match ProxyError::from(e) {
                // A backend refusing our login is still "backend unavailable" to the client.
                ProxyError::Backend { message, .. } => ProxyError::BackendUnavailable(message),
                other => other,
            };
            info!(error = %e, "no backend connection");
            send_error_and_close(&mut ps, &e, &shared).await;
            return;
        }
        Err(_) => {
            let e = ProxyError::BackendUnavailable("timed out getting a connection".into());
            send_error_and_close(&mut ps, &e, &shared).await;
            return;
        }
    };
    let mut s = Session {
        ps,
        backend_id: shared.session_ids.register(conn_id, conn.id()),
        conn,
        pools,
        caps: hello.caps,
        stmts: HashMap::new(),
        status: StatusFlags::SERVER_STATUS_AUTOCOMMIT.bits(),
        multi_statements: hello
            .caps
            .contains(CapabilityFlags::CLIENT_MULTI_STATEMENTS),
        shared: shared.clone(),
        peer,
        branch: None,
        internal: StmtCache::default(),
        db: None,
        hide_in_trans: false,
        client_span: None,
        fresh_tx: false,
        exec_types: Vec::new(),
        outbox_written: false,
        idle_limit: None,
        ticker: {
            let every = Duration::from_millis(match shared.config.idle_check_ms {
                0 => 1_000,
                ms => ms,
            });
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        },
        last_active: std::time::Instant::now(),
        xa: None,
        temp_tables: false,
        msg: Default::default(),
        next_stmt_id: 1,
        reuse: reuse::Reuse::new(shared.clone()),
    };
    // Open from here: the session serves commands until it ends.
    let _open = shared.metrics.session_opened(s.ps.is_tls());
    if let Err(e) = s.initialise(hello.charset, hello.database.as_deref()).await {
        send_error_and_close(&mut s.ps, &e, &shared).await;
        return;
    }
    let ok = wire::Ok {
        status: s.status,
        ..wire::Ok::default()
    };
    s.ps.push(&wire::ok_packet(&ok));
    if s.ps.flush().await.is_err() {
        return;
    }
    s.run(shutdown).await;
    s.ps.shutdown().await;
    if let Some(ended) = s.abandoned() {
        // The client went mid-transaction: the backend session's end rolls it back.
        ended.settle(&shared);
    }
    if s.xa.is_some() {
        // A client gone before its COMMIT: the branch is rolled back, and the connection
        // that held it never goes back to the pool.
        s.xa_abandon().await;
        crate::xa::discard(s.conn).await;
    }
    // Otherwise dropping `s.conn` hands it back to the pool, whose COM_RESET_CONNECTION
    // also closes the client's prepared statements on the backend.
}

async fn send_error_and_close(ps: &mut PacketStream, e: &ProxyError, shared: &Shared) {
    if !matches!(e, ProxyError::ClientIo(_)) {
        let err = wire::err_packet(e);
        shared.metrics.error_sent(&err);
        ps.push(&err);
    }
    ps.shutdown().await;
}

impl Session {
    /// Gives the backend session the client's charset and default database.
    async fn initialise(&mut self, charset: u8, db: Option<&[u8]>) -> Result<(), ProxyError> {
        if charset != DEFAULT_COLLATION {
            // Collation ids are per server: ask once, then remember.
            let cached = self
                .shared
                .collations
                .lock()
                .ok()
                .and_then(|m| m.get(&charset).cloned());
            let names = match cached {
                Some(n) => Some(n),
                None => {
                    let row: Option<(String, String)> = self
                        .conn
                        .query_first(format!(
                            "SELECT CHARACTER_SET_NAME, COLLATION_NAME FROM information_schema.COLLATIONS WHERE ID = {charset}"
                        ))
                        .await?;
                    if let (Some(n), Ok(mut m)) = (&row, self.shared.collations.lock()) {
                        m.insert(charset, n.clone());
                    }
                    row
                }
            };
            if let Some((cs, coll)) = names {
                self.conn
                    .query_drop(format!("SET NAMES {cs} COLLATE {coll}"))
                    .await?;
            }
        }
        if let Some(db) = db {
            self.conn.query_drop(use_statement(db)).await?;
        }
        self.db = Some(db.map(|d| String::from_utf8_lossy(d).into_owned()));
        self.idle_limit = None;
        let timeouts = self.shared.idle_timeouts.lock().ok().and_then(|t| *t);
        if let Some((wait, interactive)) = timeouts {
            let secs = if self.caps.contains(CapabilityFlags::CLIENT_INTERACTIVE) {
                // The server gives an interactive client interactive_timeout as its
                // wait_timeout; the backend connection is not interactive, so say it.
                if interactive != wait {
                    self.conn
                        .query_drop(format!("SET SESSION wait_timeout = {interactive}"))
                        .await?;
                }
                interactive
            } else {
                wait
            };
            self.idle_limit = Some(Duration::from_secs(secs));
        }
        Ok(())
    }

    /// Reads the session's `wait_timeout` again after a statement that may have set it
    /// (and the globals, which a `SET GLOBAL` may have changed for later sessions).
    async fn reread_idle_limit(&mut self) {
        if self.idle_limit.is_none() || self.conn.is_disconnected() {
            return;
        }
        let read: Result<Option<(u64, u64, u64)>, _> = self
            .conn
            .query_first(
                "SELECT @@session.wait_timeout, @@global.wait_timeout, \
                 @@global.interactive_timeout",
            )
            .await;
        if let Ok(Some((secs, wait, interactive))) = read {
            self.idle_limit = Some(Duration::from_secs(secs));
            if let Ok(mut t) = self.shared.idle_timeouts.lock() {
                *t = Some((wait, interactive));
            }
        }
    }

    async fn run(&mut self, shutdown: CancellationToken) {
        loop {
            self.ps.seq = 0;
            // Waiting for the next command, without ever cancelling a read in progress.
            // Meanwhile, on the session's ticker (no timer is made per command): past
            // wait_timeout the client is disconnected, as the server would disconnect it;
            // and an idle session pings its backend (`idle_check_ms`), so a backend session
            // ended by KILL, a restart or a failover ends the client's connection now, while
            // its driver can still tell (a pool checks a connection before reusing it),
            // rather than failing its next statement.
            let pkt = {
                let conn = &mut self.conn;
                let ticker = &mut self.ticker;
                let (since, limit) = (self.last_active, self.idle_limit);
                // Ping only a session idle for at least half a period (not a busy one).
                let ping_after = match self.shared.config.idle_check_ms {
                    0 => None,
                    ms => Some(Duration::from_millis(ms / 2)),
                };
                let read = self.ps.read_packet();
                tokio::pin!(read);
                // The exact moment wait_timeout runs out, armed once the session is within
                // one tick of it: the server ends an idle connection at wait_timeout to the
                // millisecond, and a driver that sleeps just past it (go-sql-driver's stale
                // connection check) must find it closed, not closed up to a tick later.
                let mut expiry: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
                loop {
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => {
                            // Idle between commands: a running statement is never cut here.
                            return;
                        }
                        r = &mut read => break r,
                        _ = async { expiry.as_mut().unwrap().await }, if expiry.is_some() => {
                            debug!("client idle past wait_timeout; closing");
                            return;
                        }
                        _ = ticker.tick() => {
                            let idle = since.elapsed();
                            if limit.is_some_and(|l| idle >= l) {
                                // wait_timeout: the server closes such a connection silently.
                                debug!("client idle past wait_timeout; closing");
                                return;
                            }
                            if let Some(left) = limit.map(|l| l - idle) {
                                if expiry.is_none() && left <= ticker.period() {
                                    expiry = Some(Box::pin(tokio::time::sleep(left)));
                                }
                            }
                            if ping_after.is_some_and(|p| idle >= p) {
                                if let Err(e) = conn.ping().await {
                                    info!(error = %e, "backend connection lost while idle; closing the client's");
                                    return;
                                }
                            }
                        }
                    }
                }
            };
            let pkt = match pkt {
                Ok(Some(p)) => p,
                Ok(None) => return,
                Err(e) => {
                    debug!(error = %e, "bad client packet");
                    send_error_and_close(&mut self.ps, &e, &self.shared).await;
                    return;
                }
            };
            let Some((&cmd, body)) = pkt.split_first() else {
                let err = wire::err_packet(&ProxyError::Malformed("empty packet"));
                self.shared.metrics.error_sent(&err);
                self.ps.push(&err);
                if self.ps.flush().await.is_err() {
                    return;
                }
                continue;
            };
            if cmd == COM_QUIT {
                return;
            }
            let timeout_set = match cmd {
                COM_QUERY => mentions_wait_timeout(body),
                COM_STMT_EXECUTE => Cursor::new(body).u32().ok().is_some_and(|id| {
                    self.stmts.get(&id).is_some_and(|p| {
                        p.sql
                            .as_deref()
                            .is_some_and(|q| mentions_wait_timeout(q.as_bytes()))
                    })
                }),
                COM_RESET_CONNECTION => true,
                _ => false,
            };
            let started = std::time::Instant::now();
            let result = self.command(cmd, body).await;
            self.last_active = std::time::Instant::now();
            let counted = match cmd {
                COM_QUERY => Command::Query,
                COM_STMT_PREPARE => Command::Prepare,
                COM_STMT_EXECUTE => Command::Execute,
                _ => Command::Other,
            };
            self.shared
                .metrics
                .command(counted, self.last_active - started);
            if timeout_set {
                self.reread_idle_limit().await;
            }
            if self.outbox_written && self.status & StatusFlags::SERVER_STATUS_IN_TRANS.bits() == 0
            {
                self.outbox_written = false;
                self.shared.outbox.kick();
            }
            // Decided now, settled once the answer is written: a commit is never announced
            // before the client has its OK, and never delays it.
            let ended = self.transaction_end(cmd, body, &result);
            if let Err(e) = result {
                debug!(error = %e, "command failed");
                // The backend ended the session (KILL, restart, failover): end the client's
                // connection the way the server would, with no packet, so its driver
                // treats the connection as broken rather than a statement as failed.
                let backend_gone =
                    matches!(e, ProxyError::BackendUnavailable(_)) && self.conn.is_disconnected();
                if backend_gone {
                    info!(error = %e, "backend connection lost; closing the client's");
                } else if !matches!(e, ProxyError::ClientIo(_)) {
                    let err = wire::err_packet(&e);
                    self.shared.metrics.error_sent(&err);
                    self.ps.push(&err);
                }
                if e.is_fatal() || self.conn.is_disconnected() {
                    self.ps.shutdown().await;
                    if let Some(ended) = ended {
                        ended.settle(&self.shared);
                    }
                    return;
                }
            }
            let flushed = self.ps.flush().await.is_ok();
            if let Some(ended) = ended {
                // A client gone after its COMMIT was sent still committed.
                ended.settle(&self.shared);
            }
            if !flushed {
                return;
            }
        }
    }

    async fn command(&mut self, cmd: u8, body: &[u8]) -> Result<(), ProxyError> {
        self.exec_types.clear();
        if self.may_change_parsing(cmd, body) {
            self.reuse.close_all(&mut self.conn).await;
        }
        match cmd {
            COM_QUERY => self.query(body).await,
            COM_INIT_DB => {
                self.db = None;
                self.conn.query_drop(use_statement(body)).await?;
                self.db = Some(Some(String::from_utf8_lossy(body).into_owned()));
                self.push_ok();
                Ok(())
            }
            COM_PING => {
                self.conn.ping().await?;
                self.push_ok();
                Ok(())
            }
            COM_CHANGE_USER => self.change_user(body).await,
            // `mysql_kill()`: the statement it stands for, so the id is translated as a
            // KILL statement's would be (`kill`).
            COM_PROCESS_KILL => {
                let id = Cursor::new(body).u32()?;
                self.query(format!("KILL CONNECTION {id}").as_bytes()).await
            }
            COM_STATISTICS => {
                // The reply is a bare string, as mysqladmin status / the CLI's `status` expect.
                let text = self.statistics().await?;
                self.ps.push(text.as_bytes());
                Ok(())
            }
            COM_RESET_CONNECTION => {
                // The reset closes every prepared statement on the backend and rolls back
                // an open transaction (a bound one was never registered: nothing to tell).
                self.xa_reset().await?;
                self.temp_tables = false;
                self.stmts.clear();
                self.reuse.forget();
                self.internal.clear();
                self.branch = None;
                self.db = None;
                self.conn.reset().await?;
                self.push_ok();
                Ok(())
            }
            COM_SET_OPTION => {
                // MULTI_STATEMENTS on/off: enforced here (the backend connection always
                // allows them); the reply is an EOF packet, as MySQL sends.
                match Cursor::new(body).u16()? {
                    MYSQL_OPTION_MULTI_STATEMENTS_ON => self.multi_statements = true,
                    MYSQL_OPTION_MULTI_STATEMENTS_OFF => self.multi_statements = false,
                    _ => return Err(ProxyError::Malformed("unknown COM_SET_OPTION option")),
                }
                self.ps.push(&wire::legacy_eof(self.status, 0));
                Ok(())
            }
            COM_STMT_PREPARE => self.prepare(body).await,
            COM_STMT_EXECUTE => self.execute(body).await,
            COM_STMT_SEND_LONG_DATA => {
                // No reply, ever, by protocol.
                let mut c = Cursor::new(body);
                let (Ok(id), Ok(param)) = (c.u32(), c.u16()) else {
                    return Ok(());
                };
                if let Some(p) = self.stmts.get_mut(&id) {
                    p.long_data
                        .entry(param)
                        .or_default()
                        .extend_from_slice(c.remaining());
                }
                Ok(())
            }
            COM_STMT_CLOSE => {
                // No reply, ever, by protocol.
                if let Ok(id) = Cursor::new(body).u32() {
                    if let Some(p) = self.stmts.remove(&id) {
                        // Never answered, even on failure; a lost backend shows on the
                        // next command.
                        self.reuse
                            .closed(
                                &mut self.conn,
                                p.raw,
                                p.stmt,
                                p.plan,
                                p.prepared_in,
                                p.generation,
                            )
                            .await;
                    }
                }
                Ok(())
            }
            COM_STMT_RESET => {
                let id = Cursor::new(body).u32()?;
                let p = self
                    .stmts
                    .get_mut(&id)
                    .ok_or(ProxyError::UnknownStatement(id))?;
                p.long_data.clear();
                self.push_ok();
                Ok(())
            }
            other => Err(ProxyError::UnknownCommand(other)),
        }
    }

    /// COM_CHANGE_USER: re-authenticate (always through an AuthSwitch with a fresh
    /// scramble), then give the backend session a clean slate like MySQL does (reset,
    /// then the requested database and charset).
    /// Whether command `cmd` may change how the backend would prepare a text (see
    /// [`reuse`]); only asked while the session has statements open or kept.
    fn may_change_parsing(&self, cmd: u8, body: &[u8]) -> bool {
        if self.stmts.is_empty() && self.reuse.is_empty() {
            return false;
        }
        match cmd {
            COM_QUERY => reuse::may_change_parsing(&classify::classify(body), body),
            COM_STMT_EXECUTE => Cursor::new(body)
                .u32()
                .ok()
                .and_then(|id| self.stmts.get(&id))
                .is_some_and(|p| p.changes_parsing),
            COM_INIT_DB | COM_SET_OPTION => true,
            _ => false,
        }
    }

    async fn change_user(&mut self, body: &[u8]) -> Result<(), ProxyError> {
        let mut c = Cursor::new(body);
        let user = String::from_utf8_lossy(c.nul_str()).into_owned();
        if self
            .caps
            .contains(CapabilityFlags::CLIENT_SECURE_CONNECTION)
        {
            let n = c.u8()? as usize;
            c.take(n)?;
        } else {
            c.nul_str();
        }
        let db = Some(c.nul_str().to_vec()).filter(|d| !d.is_empty());
        let charset = if c.remaining().len() >= 2 {
            Some(c.u16()?)
        } else {
            None
        };
        let scramble = handshake::new_scramble();
        let auth = handshake::auth_switch(&mut self.ps, &scramble).await?;
        handshake::check_login(&self.shared.logins, &user, &scramble, &auth, &self.peer)?;
        self.xa_reset().await?;
        self.temp_tables = false;
        self.stmts.clear();
        self.reuse.forget();
        self.internal.clear();
        self.branch = None;
        self.db = None;
        self.conn.reset().await?;
        let charset = charset
            .and_then(|c| u8::try_from(c).ok())
            .unwrap_or(DEFAULT_COLLATION);
        self.initialise(charset, db.as_deref()).await?;
        self.push_ok();
        Ok(())
    }

    /// The backend's own COM_STATISTICS numbers, in MySQL's format.
    async fn statistics(&mut self) -> Result<String, ProxyError> {
        let rows: Vec<(String, String)> = self
            .conn
            .query(
                "SHOW GLOBAL STATUS WHERE Variable_name IN ('Uptime', 'Threads_connected', \
                 'Questions', 'Slow_queries', 'Opened_tables', 'Open_tables')",
            )
            .await?;
        let get = |name: &str| {
            rows.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let uptime = get("Uptime").max(1);
        let questions = get("Questions");
        Ok(format!(
            "Uptime: {uptime}  Threads: {}  Questions: {questions}  Slow queries: {}  Opens: {}  Open tables: {}  Queries per second avg: {}.{:03}",
            get("Threads_connected"),
            get("Slow_queries"),
            get("Opened_tables"),
            get("Open_tables"),
            questions / uptime,
            (questions % uptime) * 1000 / uptime
        ))
    }

    /// Before a reset: an XA branch in progress is rolled back (or the session ends).
    async fn xa_reset(&mut self) -> Result<(), ProxyError> {
        if self.xa.is_some() && !self.xa_abandon().await {
            return Err(ProxyError::BackendUnavailable(
                "an XA branch could not be rolled back before the reset".into(),
            ));
        }
        Ok(())
    }

    fn push_ok(&mut self) {
        let ok = wire::Ok::from_backend(&self.conn);
        self.status = ok.status & !StatusFlags::SERVER_MORE_RESULTS_EXISTS.bits();
        self.ps.push(&wire::ok_packet(&ok));
    }

    async fn query(&mut self, sql: &[u8]) -> Result<(), ProxyError> {
        let translated;
        let sql = match kill::translate(sql, crate::SESSION_ID_BASE, &self.shared.session_ids) {
            None => sql,
            Some(Ok(kill)) => {
                translated = kill;
                translated.as_bytes()
            }
            Some(Err(e)) => return Err(e),
        };
        if self.shared.outbox.enabled && crate::outbox::mentions_outbox(sql) {
            self.outbox_written = true;
        }
        if let Some(msg) = Msg::of(sql) {
            let kind = classify::classify(sql);
            return self
                .with_msg(msg, at::Stmt::Text(sql), Vec::new(), &kind)
                .await;
        }
        if let Some(tcc) = Tcc::of(sql) {
            let kind = classify::classify(sql);
            return self
                .with_tcc(tcc, at::Stmt::Text(sql), Vec::new(), &kind)
                .await;
        }
        if let Some(barrier) = Barrier::of(sql) {
            let kind = classify::classify(sql);
            return self
                .with_barrier(barrier, at::Stmt::Text(sql), Vec::new(), &kind)
                .await;
        }
        let xa_tag = crate::xa::tag_of(sql, self.shared.config.branch_mode);
        if self.xa.is_none() && xa_tag.is_none() {
            return self.query_plain(sql, false).await;
        }
        let kind = classify::classify(sql);
        match self
            .xa_route(&kind, sql, xa_tag, xid::leading_xid(sql))
            .await
        {
            XaRoute::Done(r) => r,
            XaRoute::Plain => self.query_plain(sql, true).await,
            XaRoute::PlainThenPrepare(mark) => {
                let ran = self.query_plain(sql, true).await;
                self.xa_after_plain(mark, ran).await
            }
        }
    }

    /// A statement no mode took (`xa`: XA mode saw it first, so no XID tag binds AT).
    async fn query_plain(&mut self, sql: &[u8], xa: bool) -> Result<(), ProxyError> {
        let was_in_trans = self.status & StatusFlags::SERVER_STATUS_IN_TRANS.bits() != 0;
        self.fresh_tx = false;
        let tag = if xa { None } else { xid::leading_xid(sql) };
        if tag.is_some() || self.branch.is_some() {
            let tag = tag.map(|t| String::from_utf8_lossy(t).into_owned());
            return self.at_query(sql, tag).await;
        }
        if self.db.is_some() && classify::may_change_database(sql) {
            self.db = None;
        }
        let isolate = self.shared.config.write_isolation == WriteIsolation::All;
        let second = if !self.multi_statements || isolate {
            let backslash =
                self.status & StatusFlags::SERVER_STATUS_NO_BACKSLASH_ESCAPES.bits() == 0;
            stacked::second_statement(sql, backslash)
        } else {
            None
        };
        if let (Some(at), false) = (second, self.multi_statements) {
            return Err(ProxyError::StackedStatement(near(&sql[at..])));
        }
        let ticket = if isolate {
            match self
                .route_untagged(
                    &at::Stmt::Text(sql),
                    &classify::classify(sql),
                    second.is_some(),
                )
                .await?
            {
                at::Route::Fast(t) => t,
                at::Route::Isolated => return self.isolated(at::Stmt::Text(sql), Vec::new()).await,
            }
        } else {
            None
        };
        if classify::mentions(sql, b"INFILE") {
            let load = matches!(classify::classify(sql), Kind::Other(ref w) if w == "LOAD");
            if load
                && !self.caps.contains(CapabilityFlags::CLIENT_LOCAL_FILES)
                && mentions_local(sql)
            {
                // What MariaDB answers a client that did not enable local files.
                return Err(ProxyError::Backend {
                    code: 4166,
                    state: "HY000".into(),
                    message: "The used command is not allowed because the MariaDB server or \
                              client has disabled the local infile capability"
                        .into(),
                });
            }
            // The backend may ask for a local file (a LOAD, possibly not the first
            // statement of the query): the client is asked in turn.
            self.query_relaying_infile(sql).await?
        } else {
            drop(self.conn.query_iter(sql).await?)
        }
        let r = self.relay::<TextProtocol>().await;
        drop(ticket);
        if !was_in_trans && self.status & StatusFlags::SERVER_STATUS_IN_TRANS.bits() != 0 {
            self.fresh_tx = classify::classify(sql) == Kind::Begin;
        }
        if classify::may_change_schema(sql) {
            // DDL through this proxy: table metadata is reloaded on next use (DDL made
            // elsewhere is caught by the definition check before every AT write).
            self.shared.metas.clear();
            if classify::mentions(sql, b"TEMPORARY") {
                self.temp_tables = true;
            }
        }
        r
    }

    async fn prepare(&mut self, sql: &[u8]) -> Result<(), ProxyError> {
        let text = xid::backend_text(sql);
        let prepared_in = match &self.db {
            Some(Some(db)) => Some(db.clone()),
            _ => None,
        };
        let (stmt, plan) = match self.reuse.take(prepared_in.as_deref(), text) {
            Some(kept) => (kept.stmt, kept.plan),
            None => (self.conn.prep(text).await?, None),
        };
        let kind = classify::classify(sql);
        let id = self.next_stmt_id;
        self.next_stmt_id = self.next_stmt_id.checked_add(1).unwrap_or(1);
        let params = stmt.params().to_vec();
        let columns = stmt.columns();
        let mut b = vec![0x00];
        b.extend_from_slice(&id.to_le_bytes());
        b.extend_from_slice(&(columns.len() as u16).to_le_bytes());
        b.extend_from_slice(&(params.len() as u16).to_le_bytes());
        b.push(0);
        b.extend_from_slice(&0u16.to_le_bytes());
        self.ps.push(&b);
        for defs in [&params[..], &columns[..]] {
            if !defs.is_empty() {
                for c in defs {
                    self.ps.push(&wire::column_def(c));
                }
                if !self.caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF) {
                    self.ps.push(&wire::legacy_eof(self.status, 0));
                }
            }
        }
        self.stmts.insert(
            id,
            Prepared {
                types: vec![
                    (ColumnType::MYSQL_TYPE_VAR_STRING, ColumnFlags::empty());
                    params.len()
                ],
                stmt,
                long_data: HashMap::new(),
                tag: xid::leading_xid(sql).map(|t| String::from_utf8_lossy(t).into_owned()),
                changes_parsing: reuse::may_change_parsing(&kind, sql),
                kind,
                sql: std::str::from_utf8(sql).ok().map(Arc::from),
                plan,
                barrier: Barrier::of(sql),
                tcc: Tcc::of(sql),
                msg: Msg::of(sql),
                outbox: crate::outbox::mentions_outbox(sql),
                xa_tag: crate::xa::tag_of(sql, self.shared.config.branch_mode),
                raw: Arc::from(sql),
                prepared_in,
                generation: self.reuse.generation(),
            },
        );
        Ok(())
    }

    async fn execute(&mut self, body: &[u8]) -> Result<(), ProxyError> {
        let mut c = Cursor::new(body);
        let id = c.u32()?;
        let _flags = c.u8()?; // cursor requests are answered with a plain result set
        let _iterations = c.u32()?;
        let p = self
            .stmts
            .get_mut(&id)
            .ok_or(ProxyError::UnknownStatement(id))?;
        if p.outbox && self.shared.outbox.enabled {
            self.outbox_written = true;
        }
        let n = p.types.len();
        let mut bitmap: &[u8] = &[];
        if n > 0 {
            bitmap = c.take(n.div_ceil(8))?;
            if c.u8()? == 1 {
                for t in p.types.iter_mut() {
                    let ty = ColumnType::try_from(c.u8()?)
                        .map_err(|_| ProxyError::Malformed("unknown parameter type"))?;
                    let fl = if c.u8()? & 0x80 != 0 {
                        ColumnFlags::UNSIGNED_FLAG
                    } else {
                        ColumnFlags::empty()
                    };
                    *t = (ty, fl);
                }
            }
        }
        let plain = p.msg.is_none()
            && p.tcc.is_none()
            && p.barrier.is_none()
            && p.xa_tag.is_none()
            && p.tag.is_none()
            && p.long_data.is_empty()
            && self.xa.is_none()
            && self.branch.is_none();
        if plain {
            // Nothing here needs the values: the client's bytes go to the backend as they
            // came (see `execute_raw`), unless write isolation must look into this write.
            self.fresh_tx = false;
            let checked = self.shared.config.write_isolation == WriteIsolation::All
                && matches!(p.kind, Kind::Update | Kind::Delete | Kind::With);
            let ticket = if checked {
                let kind = p.kind.clone();
                let st = at::Stmt::Prepared {
                    id,
                    stmt: p.stmt.clone(),
                    sql: p.sql.clone(),
                };
                match self.route_untagged(&st, &kind, false).await? {
                    at::Route::Fast(t) => t,
                    at::Route::Isolated => {
                        let p = self
                            .stmts
                            .get_mut(&id)
                            .ok_or(ProxyError::UnknownStatement(id))?;
                        let values = p.decode_params(bitmap, c.remaining(), None)?;
                        self.exec_types.clone_from(&p.types);
                        return self.isolated(st, values).await;
                    }
                }
            } else {
                None
            };
            let p = self
                .stmts
                .get(&id)
                .ok_or(ProxyError::UnknownStatement(id))?;
            let body = raw_execute_body(p.stmt.id(), bitmap, &p.types, c.remaining());
            let r = self.execute_raw(id, &body).await;
            drop(ticket);
            return r;
        }
        let values = p.decode_params(bitmap, c.remaining(), self.shared.max_allowed_packet)?;
        self.exec_types.clone_from(&p.types);
        if let Some(msg) = p.msg.clone() {
            let kind = p.kind.clone();
            let st = at::Stmt::Prepared {
                id,
                stmt: p.stmt.clone(),
                sql: p.sql.clone(),
            };
            return self.with_msg(msg, st, values, &kind).await;
        }
        if let Some(tcc) = p.tcc.clone() {
            let kind = p.kind.clone();
            let st = at::Stmt::Prepared {
                id,
                stmt: p.stmt.clone(),
                sql: p.sql.clone(),
            };
            return self.with_tcc(tcc, st, values, &kind).await;
        }
        if let Some(barrier) = p.barrier.clone() {
            let kind = p.kind.clone();
            let st = at::Stmt::Prepared {
                id,
                stmt: p.stmt.clone(),
                sql: p.sql.clone(),
            };
            return self.with_barrier(barrier, st, values, &kind).await;
        }
        if self.xa.is_some() || p.xa_tag.is_some() {
            let (kind, tag, raw) = (p.kind.clone(), p.xa_tag.clone(), p.raw.clone());
            let any_tag = xid::leading_xid(&raw);
            return match self.xa_route(&kind, &raw, tag, any_tag).await {
                XaRoute::Done(r) => r,
                XaRoute::Plain => self.execute_plain(id, values, true).await,
                XaRoute::PlainThenPrepare(mark) => {
                    let ran = self.execute_plain(id, values, true).await;
                    self.xa_after_plain(mark, ran).await
                }
            };
        }
        self.execute_plain(id, values, false).await
    }

    /// An execute no mode took (`xa`: XA mode saw it first, so no XID tag binds AT).
    async fn execute_plain(
        &mut self,
        id: u32,
        values: Vec<Value>,
        xa: bool,
    ) -> Result<(), ProxyError> {
        let p = self
            .stmts
            .get(&id)
            .ok_or(ProxyError::UnknownStatement(id))?;
        let begins = p.kind == Kind::Begin;
        self.fresh_tx = false;
        if (p.tag.is_some() && !xa) || self.branch.is_some() {
            return self.at_execute(id, values).await;
        }
        let stmt = p.stmt.clone();
        let ticket = if self.shared.config.write_isolation == WriteIsolation::All {
            let (kind, sql) = (p.kind.clone(), p.sql.clone());
            let st = at::Stmt::Prepared {
                id,
                stmt: stmt.clone(),
                sql,
            };
            match self.route_untagged(&st, &kind, false).await? {
                at::Route::Fast(t) => t,
                at::Route::Isolated => return self.isolated(st, values).await,
            }
        } else {
            None
        };
        crate::params::exec_pending(&mut self.conn, &stmt, values, &self.exec_types).await?;
        let r = self.relay::<BinaryProtocol>().await;
        drop(ticket);
        self.fresh_tx = begins && r.is_ok();
        if matches!(
            &self.stmts.get(&id).map(|p| &p.kind),
            Some(classify::Kind::Other(_))
        ) {
            // A prepared DDL statement (see `query`).
            self.shared.metas.clear();
        }
        r
    }

    /// An execute no mode takes and no AT, XA or isolation path needs to see into: sent
    /// with the client's parameter bytes as they came (`body`, from [`raw_execute_body`]),
    /// not decoded into values that mysql_async would encode again. What the backend
    /// would refuse (a malformed value, a packet over its max_allowed_packet) it refuses
    /// with its own error, as it would directly.
    async fn execute_raw(&mut self, id: u32, body: &[u8]) -> Result<(), ProxyError> {
        let p = self
            .stmts
            .get(&id)
            .ok_or(ProxyError::UnknownStatement(id))?;
        let begins = p.kind == Kind::Begin;
        let ddl = matches!(p.kind, classify::Kind::Other(_));
        self.fresh_tx = false;
        self.conn.exec_raw(&p.stmt, body).await?;
        let r = self.relay::<BinaryProtocol>().await;
        self.fresh_tx = begins && r.is_ok();
        if ddl {
            // A prepared DDL statement (see `query`).
            self.shared.metas.clear();
        }
        r
    }

    /// Relays every result set of the pending result, row by row, then its final OK/EOF.
    /// Backend errors in later result sets end the response as MySQL would (ERR packet).
    pub(crate) async fn relay<P: Protocol>(&mut self) -> Result<(), ProxyError> {
        let deprecate_eof = self.caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF);
        let more_flag = StatusFlags::SERVER_MORE_RESULTS_EXISTS.bits();
        loop {
            let Some(columns) = QueryResult::<P>::new(&mut self.conn).columns() else {
                // Nothing pending, or a pending error from a later statement.
                QueryResult::<P>::new(&mut self.conn).next().await?;
                return Ok(());
            };
            if columns.is_empty() {
                self.push_ok();
                QueryResult::<P>::new(&mut self.conn).next().await?;
                continue;
            }
            let mut b = Vec::with_capacity(9);
            put_lenenc_int(&mut b, columns.len() as u64);
            self.ps.push(&b);
            for c in columns.iter() {
                self.ps.push(&wire::column_def(c));
            }
            if !deprecate_eof {
                self.ps.push(&wire::legacy_eof(self.status, 0));
            }
            // Rows go to the client as the backend sent them (text or binary alike): the
            // column definitions above are the backend's, so its row bytes fit them.
            let ps = &mut self.ps;
            while QueryResult::<P>::new(&mut self.conn)
                .next_raw(|row| ps.push(row))
                .await?
            {
                ps.maybe_flush().await?;
            }
            // `next_raw` has already read the following result's header, if any: a next set
            // is pending, or an error is (which clears the last OK).
            let more = QueryResult::<P>::new(&mut self.conn).columns().is_some()
                || self.conn.last_ok_packet().is_none();
            let (mut status, warnings) = match self.conn.last_ok_packet() {
                Some(ok) if !more => (ok.status_flags().bits(), ok.warnings()),
                Some(ok) => (ok.status_flags().bits(), 0),
                None => (self.status, 0),
            };
            if more {
                status |= more_flag;
            } else {
                status &= !more_flag;
            }
            if self.hide_in_trans {
                status &= !StatusFlags::SERVER_STATUS_IN_TRANS.bits();
            }
            self.status = status & !more_flag;
            self.ps.push(&wire::eof_packet(self.caps, status, warnings));
        }
    }
}

/// The COM_STMT_EXECUTE body (after the command byte) for the backend's statement
/// `backend_id`, from a client's execute: its NULL bitmap and parameter bytes as they came,
/// with no cursor (answered as a plain result set, see `execute`), one iteration, and the
/// parameter types always bound (the client may have bound them on an earlier execute, and
/// the backend statement may since have run with other types: an AT or mode path encodes
/// its own).
fn raw_execute_body(
    backend_id: u32,
    bitmap: &[u8],
    types: &[(ColumnType, ColumnFlags)],
    values: &[u8],
) -> Vec<u8> {
    let mut b = Vec::with_capacity(10 + bitmap.len() + 2 * types.len() + values.len());
    b.extend_from_slice(&backend_id.to_le_bytes());
    b.push(0); // CURSOR_TYPE_NO_CURSOR
    b.extend_from_slice(&1u32.to_le_bytes());
    if !types.is_empty() {
        b.extend_from_slice(bitmap);
        b.push(1);
        for &(ty, fl) in types {
            let unsigned = if fl.contains(ColumnFlags::UNSIGNED_FLAG) {
                0x80
            } else {
                0
            };
            b.extend_from_slice(&[ty as u8, unsigned]);
        }
        b.extend_from_slice(values);
    }
    b
}

/// Whether a LOAD statement is `LOAD DATA|XML [LOW_PRIORITY|CONCURRENT] LOCAL INFILE`: the
/// word LOCAL before INFILE (comments between words are not expected here).
fn mentions_local(sql: &[u8]) -> bool {
    sql.split(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
        .filter(|w| !w.is_empty())
        .take_while(|w| !w.eq_ignore_ascii_case(b"INFILE"))
        .any(|w| w.eq_ignore_ascii_case(b"LOCAL"))
}

/// Whether a statement may change the session's `wait_timeout` (by name, any case).
fn mentions_wait_timeout(sql: &[u8]) -> bool {
    classify::mentions(sql, b"wait_timeout")
}

/// The start of the refused text, as MySQL quotes it in syntax errors.
fn near(rest: &[u8]) -> String {
    let rest = String::from_utf8_lossy(rest);
    rest.trim_start().chars().take(80).collect()
}

/// `USE` for a database name given as raw bytes (backticks doubled).
fn use_statement(db: &[u8]) -> Vec<u8> {
    let mut q = b"USE `".to_vec();
    for &b in db {
        if b == b'`' {
            q.push(b'`');
        }
        q.push(b);
    }
    q.push(b'`');
    q
}

/// A statement being run for a mode (AT, the barrier, the TCC fence): COM_QUERY text or a
/// prepared statement being executed.
#[derive(Clone)]
pub enum Stmt<'a> {
    /// COM_QUERY text.
    Text(&'a [u8]),
    /// COM_STMT_EXECUTE of the client's statement `id`.
    Prepared {
        id: u32,
        stmt: Statement,
        sql: Option<std::sync::Arc<str>>,
    },
}

impl Stmt<'_> {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Stmt::Text(b) => b,
            Stmt::Prepared { sql, .. } => sql.as_deref().map(str::as_bytes).unwrap_or_default(),
        }
    }

    pub(crate) fn text(&self) -> Result<&str, ProxyError> {
        match self {
            Stmt::Text(b) => std::str::from_utf8(b).ok(),
            Stmt::Prepared { sql, .. } => sql.as_deref(),
        }
        .ok_or_else(|| ProxyError::from(crate::at::refusals::Refusal::NotUtf8))
    }
}

/// Helpers every mode uses.
impl Session {
    pub(crate) fn in_transaction(&self) -> bool {
        self.status & StatusFlags::SERVER_STATUS_IN_TRANS.bits() != 0
            || self.status & StatusFlags::SERVER_STATUS_AUTOCOMMIT.bits() == 0
    }

    /// Runs the client's statement and relays its results unchanged.
    pub(crate) async fn pass(
        &mut self,
        stmt: Stmt<'_>,
        params: Vec<Value>,
    ) -> Result<(), ProxyError> {
        match stmt {
            Stmt::Text(sql) => {
                drop(self.conn.query_iter(sql).await?);
                self.relay::<TextProtocol>().await
            }
            Stmt::Prepared { stmt, .. } => {
                crate::params::exec_pending(&mut self.conn, &stmt, params, &self.exec_types)
                    .await?;
                self.relay::<BinaryProtocol>().await
            }
        }
    }

    pub(crate) fn push_ok_packet(&mut self, ok: wire::Ok) {
        self.status = ok.status & !StatusFlags::SERVER_MORE_RESULTS_EXISTS.bits();
        self.ps.push(&wire::ok_packet(&ok));
    }
}

#[cfg(test)]
mod local_tests {
    #[test]
    fn local_is_the_keyword_before_infile() {
        use super::mentions_local as m;
        assert!(m(b"LOAD DATA LOCAL INFILE '/tmp/x' INTO TABLE t"));
        assert!(m(b"load data low_priority local infile 'x' into table t"));
        assert!(!m(b"LOAD DATA INFILE '/usr/local/x' INTO TABLE t"));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn use_statement_quotes_backticks() {
        assert_eq!(super::use_statement(b"a`b"), b"USE `a``b`".to_vec());
    }
}
