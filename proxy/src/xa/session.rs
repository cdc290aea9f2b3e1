//! The client session's side of XA mode: binding a local transaction to an XA branch,
//! the client's COMMIT (proof row, `XA END`, `XA PREPARE`, registration, a new backend
//! connection for the session) and ROLLBACK, and a client gone mid-branch.
//!
//! Binding: `/*+ XA('<xid>') */ BEGIN` runs `XA START` instead of `BEGIN`; a tag on the
//! first statement of a transaction (after a `BEGIN` with nothing in it yet, or with
//! `autocommit = 0`) starts the branch before that statement; a tagged write in
//! autocommit is a branch by itself (started, run, prepared and registered before the
//! client sees its result). A tag on a statement of a transaction that already did work
//! is refused: XA can only start a transaction. Reads in autocommit need no branch and
//! run as they are.

use mysql_async::consts::{CapabilityFlags, StatusFlags};
use mysql_async::prelude::Queryable;

use super::{state, XaId};
use crate::classify::{self, Kind};
use crate::coordinator::CallError;
use crate::error::ProxyError;
use crate::packet::Mark;
use crate::session::Session;
use crate::wire;

/// The XA branch the session's current local transaction is.
#[derive(Debug, Clone)]
pub struct Bound {
    pub id: XaId,
    /// The proxy started it around one autocommit statement, and ends it after it.
    pub implicit: bool,
}

/// What XA mode makes of a statement.
pub enum Route {
    /// Handled: this is its outcome.
    Done(Result<(), ProxyError>),
    /// Run it the ordinary way (inside the bound branch, if there is one).
    Plain,
    /// Run it the ordinary way, then prepare and register the branch the proxy started
    /// around it (autocommit); the client's result is taken back if that fails.
    PlainThenPrepare(Mark),
}

impl Session {
    /// Decides what XA mode does with a statement of `kind`, whose XA tag (if any) is
    /// `tag` and whose XID tag of any mode is `any_tag`.
    pub(crate) async fn xa_route(
        &mut self,
        kind: &Kind,
        text: &[u8],
        tag: Option<Result<String, &'static str>>,
        any_tag: Option<&[u8]>,
    ) -> Route {
        if let Some(b) = &self.xa {
            let other = match (&tag, any_tag) {
                (Some(Ok(t)), _) if *t != b.id.xid => Some(t.clone()),
                (_, Some(t)) if t != b.id.xid.as_bytes() => {
                    Some(String::from_utf8_lossy(t).into_owned())
                }
                _ => None,
            };
            if let Some(tagged) = other {
                return Route::Done(Err(ProxyError::XidMismatch {
                    bound: b.id.xid.clone(),
                    tagged,
                }));
            }
            return match kind {
                Kind::Commit
                    if classify::mentions(text, b"CHAIN")
                        || classify::mentions(text, b"RELEASE") =>
                {
                    Route::Done(Err(ProxyError::AtRefused(
                        "COMMIT AND CHAIN / RELEASE of an XA branch (send a plain COMMIT)".into(),
                    )))
                }
                Kind::Commit => Route::Done(self.xa_commit().await),
                Kind::Rollback => Route::Done(self.xa_rollback().await),
                Kind::Other(w) if w == "XA" => Route::Done(Err(ProxyError::AtRefused(
                    "XA statements inside a local transaction that Rewind runs as an XA branch"
                        .into(),
                ))),
                _ => Route::Plain,
            };
        }
        let xid = match tag {
            None => return Route::Plain,
            Some(Err(why)) => return Route::Done(Err(ProxyError::BadHint(why))),
            Some(Ok(x)) => x,
        };
        if let Some(b) = &self.branch {
            return Route::Done(Err(ProxyError::XidMismatch {
                bound: b.xid.clone(),
                tagged: xid,
            }));
        }
        match kind {
            // Nothing to bind: they end (or act inside) a transaction that is not a branch.
            Kind::Commit
            | Kind::Rollback
            | Kind::RollbackTo(_)
            | Kind::Savepoint(_)
            | Kind::ReleaseSavepoint(_) => return Route::Plain,
            _ => {}
        }
        let in_trans = self.status & StatusFlags::SERVER_STATUS_IN_TRANS.bits() != 0;
        let autocommit = self.status & StatusFlags::SERVER_STATUS_AUTOCOMMIT.bits() != 0;
        let read = matches!(kind, Kind::Select | Kind::ReadOnly | Kind::Set | Kind::Use);
        if !in_trans && autocommit && read {
            // A read in autocommit is over when it returns: no branch to make of it.
            return Route::Plain;
        }
        if let Err(e) = self.check_xid(&xid).await {
            return Route::Done(Err(e));
        }
        if self.temp_tables {
            return Route::Done(Err(ProxyError::AtRefused(
                "an XA branch in a session that created temporary tables (the session \
                 continues on a new backend connection after XA PREPARE, and temporary \
                 tables cannot move with it; use a new connection)"
                    .into(),
            )));
        }
        let id = XaId::new(xid);
        match kind {
            Kind::Begin => {
                // BEGIN would commit an open transaction first; so does this.
                if in_trans {
                    if let Err(e) = self.conn.query_drop("COMMIT").await {
                        return Route::Done(Err(e.into()));
                    }
                }
                Route::Done(self.xa_start(id, false).await.map(|()| {
                    let ok = wire::Ok::from_backend(&self.conn);
                    self.push_ok_packet(ok);
                }))
            }
            _ if in_trans && !self.fresh_tx => Route::Done(Err(ProxyError::AtRefused(
                "an XA tag on a statement of a local transaction that already ran others (XA \
                 can only start a transaction: put the tag on BEGIN or on the transaction's \
                 first statement)"
                    .into(),
            ))),
            _ if in_trans || !autocommit => {
                if in_trans {
                    // BEGIN with nothing in it yet: the XA branch takes its place.
                    if let Err(e) = self.conn.query_drop("ROLLBACK").await {
                        return Route::Done(Err(e.into()));
                    }
                }
                match self.xa_start(id, false).await {
                    Ok(()) => Route::Plain,
                    Err(e) => Route::Done(Err(e)),
                }
            }
            _ => match self.xa_start(id, true).await {
                Ok(()) => {
                    self.hide_in_trans = true;
                    Route::PlainThenPrepare(self.ps.mark())
                }
                Err(e) => Route::Done(Err(e)),
            },
        }
    }

    async fn xa_start(&mut self, id: XaId, implicit: bool) -> Result<(), ProxyError> {
        self.conn.query_drop(id.statement("START")).await?;
        tracing::debug!(xid = %id.xid, bqual = %id.bqual, implicit, "XA branch started");
        self.xa = Some(Bound { id, implicit });
        self.fresh_tx = false;
        Ok(())
    }

    /// After the statement of an implicit branch ran: prepare and register it, or take
    /// the statement's result back and answer the error instead.
    pub(crate) async fn xa_after_plain(
        &mut self,
        mark: Mark,
        ran: Result<(), ProxyError>,
    ) -> Result<(), ProxyError> {
        self.hide_in_trans = false;
        if let Err(e) = ran {
            if let Some(b) = self.xa.take() {
                self.xa_rollback_on_conn(&b.id).await;
            }
            self.refresh_status().await;
            return Err(e);
        }
        if self.xa.is_none() {
            // The statement ended the branch itself (the backend rolled it back).
            return Ok(());
        }
        match self.xa_prepare().await {
            Ok(ok) => {
                // The statement's own result stands; the session's flags are the new
                // connection's.
                self.status = ok.status & !StatusFlags::SERVER_STATUS_IN_TRANS.bits();
                Ok(())
            }
            Err(e) => {
                if !self.ps.rewind(mark) {
                    tracing::warn!(
                        "an XA branch failed after part of its statement's result was sent"
                    );
                }
                Err(e)
            }
        }
    }

    /// The client's COMMIT of a bound branch.
    async fn xa_commit(&mut self) -> Result<(), ProxyError> {
        let ok = self.xa_prepare().await?;
        self.push_ok_packet(ok);
        Ok(())
    }

    /// The client's ROLLBACK of a bound branch: `XA END` + `XA ROLLBACK`. Should the
    /// rollback fail with the connection still up, the session ends and the connection is
    /// closed, which rolls the branch back.
    async fn xa_rollback(&mut self) -> Result<(), ProxyError> {
        let Some(b) = self.xa.take() else {
            return Ok(());
        };
        if let Err(e) = end_and_rollback(&mut self.conn, &b.id).await {
            self.xa = Some(b);
            return Err(ProxyError::BackendUnavailable(format!(
                "XA ROLLBACK failed ({e}); the connection is closed, which rolls the branch back"
            )));
        }
        let ok = wire::Ok::from_backend(&self.conn);
        self.push_ok_packet(ok);
        Ok(())
    }

    /// Best effort `XA END` + `XA ROLLBACK` of a branch that did not get prepared.
    async fn xa_rollback_on_conn(&mut self, id: &XaId) {
        if self.conn.is_disconnected() {
            return;
        }
        if let Err(e) = end_and_rollback(&mut self.conn, id).await {
            tracing::debug!(xid = %id.xid, error = %e, "XA ROLLBACK of an unprepared branch failed");
        }
    }

    async fn refresh_status(&mut self) {
        if !self.conn.is_disconnected() && self.conn.query_drop("DO 0").await.is_ok() {
            self.status = wire::Ok::from_backend(&self.conn).status;
        }
    }

    /// Ends the bound branch: reads the session's state, readies a new backend connection
    /// with it, writes the proof row, `XA END` + `XA PREPARE`, registers the branch, and
    /// moves the session to the new connection (the prepared branch keeps the old one for
    /// phase two). Any failure before the branch is prepared rolls it back; the answer
    /// says what happened. Returns the OK for the client.
    async fn xa_prepare(&mut self) -> Result<wire::Ok, ProxyError> {
        let b = self.xa.take().expect("called on a bound session");
        let id = b.id.clone();
        let fail = |why: String| {
            ProxyError::BranchRolledBack(format!("{why}; the XA branch was rolled back"))
        };
        let st = match state::capture(&mut self.conn).await {
            Ok(st) => st,
            Err(e) => {
                self.xa_rollback_on_conn(&id).await;
                self.shared.metrics.xa_rolled_back();
                return Err(fail(format!("reading the session's state failed: {e}")));
            }
        };
        let found_rows = self.caps.contains(CapabilityFlags::CLIENT_FOUND_ROWS);
        let pool = &self.pools[usize::from(found_rows)];
        let timeout = std::time::Duration::from_secs(self.shared.config.connect_timeout_secs);
        let mut fresh = match tokio::time::timeout(timeout, crate::session_conn(pool)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                self.xa_rollback_on_conn(&id).await;
                self.shared.metrics.xa_rolled_back();
                return Err(fail(format!(
                    "no backend connection for the session to continue on: {e}"
                )));
            }
            Err(_) => {
                self.xa_rollback_on_conn(&id).await;
                self.shared.metrics.xa_rolled_back();
                return Err(fail(
                    "no backend connection for the session to continue on in time".into(),
                ));
            }
        };
        let mut statements = Vec::with_capacity(self.stmts.len());
        let readied = async {
            state::apply(&mut fresh, &st).await?;
            // The session's flags as they are now (statement preparation reports none).
            let status = wire::Ok::from_backend(&fresh).status;
            for (&client_id, p) in &self.stmts {
                statements.push((client_id, fresh.prep(p.backend_text()).await?));
            }
            Ok::<_, mysql_async::Error>(status)
        }
        .await;
        let fresh_status = match readied {
            Ok(s) => s,
            Err(e) => {
                self.xa_rollback_on_conn(&id).await;
                self.shared.metrics.xa_rolled_back();
                return Err(fail(format!(
                    "readying a new backend connection failed: {e}"
                )));
            }
        };
        let prepare = format!(
            "{}; {}; {}",
            self.shared.xa_proof.insert_literal(&id),
            id.statement("END"),
            id.statement("PREPARE")
        );
        if let Err(e) = self.conn.query_drop(prepare).await {
            let lost = self.conn.is_disconnected();
            if lost {
                // Prepared or not, the branch is out of this session's hands: recovery
                // rolls back a prepared branch nobody registered.
                self.move_to(fresh, fresh_status, statements, &st, None);
            } else {
                self.xa_rollback_on_conn(&id).await;
                self.refresh_status().await;
            }
            self.shared.metrics.xa_rolled_back();
            return Err(fail(format!("XA PREPARE failed: {e}")));
        }
        crate::failpoint::hit("xa-after-prepare").await;
        let registered = self
            .shared
            .coordinator
            .register_xa(
                &id.xid,
                &self.shared.resource_id,
                &id.bqual,
                &crate::attach::proxy_id(&self.shared),
            )
            .await;
        match registered {
            Ok(branch_id) => {
                tracing::debug!(xid = %id.xid, branch_id, bqual = %id.bqual, implicit = b.implicit, "XA branch prepared and registered");
                self.shared.metrics.xa_committed();
                self.move_to(fresh, fresh_status, statements, &st, Some(id));
                crate::failpoint::hit("xa-after-register").await;
                Ok(wire::Ok {
                    status: fresh_status,
                    ..wire::Ok::default()
                })
            }
            Err(CallError::Unavailable(why)) => {
                // Registered or not, nobody can tell now: the branch stays prepared and
                // the coordinator's answer decides it later (recovery asks).
                self.shared.metrics.xa_failed();
                self.move_to(fresh, fresh_status, statements, &st, None);
                Err(ProxyError::XaInDoubt(format!(
                    "the XA branch was prepared but the coordinator could not be reached to \
                     register it ({why}); it stays prepared and follows global transaction \
                     {}: committed only if the coordinator had registered it and the global \
                     transaction commits, rolled back otherwise",
                    id.xid
                )))
            }
            Err(e) => {
                if let Err(r) = self.conn.query_drop(id.statement("ROLLBACK")).await {
                    tracing::warn!(xid = %id.xid, error = %r, "XA ROLLBACK of a refused branch failed; recovery will roll it back");
                    self.move_to(fresh, fresh_status, statements, &st, None);
                } else {
                    self.refresh_status().await;
                }
                self.shared.metrics.xa_rolled_back();
                Err(ProxyError::UnknownXid(format!(
                    "{e}; the XA branch was rolled back"
                )))
            }
        }
    }

    /// Moves the session to `fresh` (readied with the session's state and statements).
    /// The old connection is kept for the prepared branch `pin`, or closed.
    fn move_to(
        &mut self,
        fresh: mysql_async::Conn,
        status: u16,
        statements: Vec<(u32, mysql_async::Statement)>,
        st: &state::SessionState,
        pin: Option<XaId>,
    ) {
        let old = std::mem::replace(&mut self.conn, fresh);
        self.backend_id.moved(self.conn.id());
        // Statements kept for reuse stay with the old connection.
        self.reuse.forget();
        for (client_id, stmt) in statements {
            if let Some(p) = self.stmts.get_mut(&client_id) {
                p.stmt = stmt;
            }
        }
        self.internal.clear();
        self.db = Some(st.db.clone());
        self.status = status;
        let kept = match pin {
            Some(id) => self
                .shared
                .xa_pinned
                .pin(id.bqual, old, self.shared.config.xa_max_pinned),
            None => Err(old),
        };
        if let Err(old) = kept {
            tokio::spawn(super::discard(old));
        }
    }

    /// A client gone (or reset) in the middle of a branch: `XA END` + `XA ROLLBACK`.
    /// Returns false when that failed: the branch stays bound, and the connection must be
    /// closed (which rolls it back).
    pub(crate) async fn xa_abandon(&mut self) -> bool {
        let Some(b) = self.xa.take() else {
            return true;
        };
        tracing::debug!(xid = %b.id.xid, "client left an XA branch unfinished; rolling it back");
        if self.conn.is_disconnected() {
            return true;
        }
        match end_and_rollback(&mut self.conn, &b.id).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(xid = %b.id.xid, error = %e, "XA ROLLBACK of an abandoned branch failed; closing its connection");
                self.xa = Some(b);
                false
            }
        }
    }
}

/// `XA END` (which fails harmlessly on a branch already ended or marked rollback-only)
/// and `XA ROLLBACK` of an unprepared branch on its own connection.
async fn end_and_rollback(
    conn: &mut mysql_async::Conn,
    id: &XaId,
) -> Result<(), mysql_async::Error> {
    let _ = conn.query_drop(id.statement("END")).await;
    conn.query_drop(id.statement("ROLLBACK")).await
}
