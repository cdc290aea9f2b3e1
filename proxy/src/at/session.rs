//! The AT path of a session: statements that carry an XID tag, and every statement of a
//! local transaction bound to a global one.
//!
//! Binding follows DESIGN.md: a tag binds the XID to the connection's current local
//! transaction (explicit BEGIN, or `autocommit = 0`) until its COMMIT or ROLLBACK; in
//! autocommit a tagged DML statement is a branch by itself, which the proxy wraps in its
//! own transaction and commits. Inside a bound transaction only statements whose effects
//! the proxy can see and undo run: DML (with images), reads, savepoints, SET (except
//! `autocommit`), USE. Everything that would commit implicitly or write out of sight is
//! refused with 1235 before it reaches the backend.

use crate::at::sql as analyze;
use mysql_async::consts::StatusFlags;
use mysql_async::prelude::Queryable;
use mysql_async::Value;
use rewind_protocol::trace::{self, KeyValue};
use rewind_protocol::GlobalStatus;

use super::refusals::Refusal;
use super::statement::{self, StatementRun};
use super::{Branch, Failure, Original};
use crate::at::isolation::{Admission, Ticket};
use crate::classify::{self, Kind};
use crate::coordinator::CallError;
use crate::error::ProxyError;
use crate::session::Session;
use crate::stacked;
use crate::wire;

pub use crate::session::Stmt;

/// Where a statement without an XID goes (write isolation).
pub enum Route {
    /// Straight to the backend, holding the ticket (if any) until it is done.
    Fast(Option<Ticket>),
    /// An UPDATE/DELETE on a table holding global locks: wait for its rows' locks first.
    Isolated,
}

impl Session {
    /// Write isolation for a statement outside any global transaction. Reads and INSERTs
    /// go straight through; UPDATE/DELETE (and multi-statement or WITH queries, which may
    /// hold one) too while no table of the resource holds a global lock — without being
    /// parsed. Otherwise the statement's tables are looked up: writes to locked tables
    /// take the slow path, others go straight through.
    pub(crate) async fn route_untagged(
        &mut self,
        stmt: &Stmt<'_>,
        kind: &Kind,
        multi: bool,
    ) -> Result<Route, ProxyError> {
        if !(multi || matches!(kind, Kind::Update | Kind::Delete | Kind::With)) {
            return Ok(Route::Fast(None));
        }
        let iso = self.shared.isolation.clone();
        if let Admission::Fast(t) = iso.admit_unparsed() {
            return Ok(Route::Fast(Some(t)));
        }
        let text = stmt
            .text()
            .map_err(|_| ProxyError::from(Refusal::UncheckableText))?;
        let refs = analyze::written_tables(text)
            .map_err(|e| ProxyError::from(Refusal::Uncheckable(e.to_string())))?;
        let db = if refs.iter().any(|r| r.schema.is_none()) {
            self.current_db().await?
        } else {
            None
        };
        let mut tables = Vec::with_capacity(refs.len());
        for r in &refs {
            match self.statement(db.as_deref()).meta(r).await {
                Ok(meta) => tables.push(rewind_undo_log::LockKey::table_id(&meta.name)),
                // The backend reports a missing table itself; tables AT refuses (views,
                // no primary key) never hold global locks.
                Err(
                    ProxyError::NoSuchTable(_) | ProxyError::NoDatabase | ProxyError::AtRefused(_),
                ) => {}
                Err(e) => return Err(e),
            }
        }
        match iso.admit(&tables) {
            Admission::Fast(t) => Ok(Route::Fast(Some(t))),
            Admission::Locked if !multi && matches!(kind, Kind::Update | Kind::Delete) => {
                Ok(Route::Isolated)
            }
            _ => Err(Refusal::UncheckableShape.into()),
        }
    }

    /// The slow path of write isolation (see [`StatementRun::isolated_write`]). In autocommit
    /// the proxy opens and commits its own transaction around it.
    pub(crate) async fn isolated(
        &mut self,
        stmt: Stmt<'_>,
        params: Vec<Value>,
    ) -> Result<(), ProxyError> {
        let plan = self.plan(&stmt).map_err(|e| match e {
            ProxyError::AtRefused(why) => ProxyError::AtRefused(format!(
                "{why}, on a table that holds global locks (the proxy cannot check this \
                 statement's rows against them)"
            )),
            other => other,
        })?;
        let (wrap, db) = self.begin_own().await?;
        let r = self
            .statement(db.as_deref())
            .isolated_write(&plan, params)
            .await;
        match r {
            Ok(mut ok) => {
                if wrap {
                    self.conn.query_drop("COMMIT").await?;
                    ok.status = wire::Ok::from_backend(&self.conn).status;
                }
                self.push_ok_packet(ok);
                Ok(())
            }
            Err(Failure::Clean(e) | Failure::Poisoned(e)) => Err(self.close_wrap(wrap, e).await),
            Err(Failure::Stale(_)) => unreachable!("phase one retries stale metadata"),
        }
    }

    pub(crate) async fn at_query(
        &mut self,
        sql: &[u8],
        tag: Option<String>,
    ) -> Result<(), ProxyError> {
        let backslash = self.status & StatusFlags::SERVER_STATUS_NO_BACKSLASH_ESCAPES.bits() == 0;
        if stacked::second_statement(sql, backslash).is_some() {
            return Err(Refusal::Stacked.into());
        }
        let kind = classify::classify(sql);
        if trace::enabled() {
            self.client_span = crate::xid::traceparent(sql);
        }
        let r = self
            .at_statement(kind, tag, Stmt::Text(sql), Vec::new())
            .await;
        self.client_span = None;
        self.settle_binding(r).await
    }

    pub(crate) async fn at_execute(
        &mut self,
        id: u32,
        values: Vec<Value>,
    ) -> Result<(), ProxyError> {
        let p = self
            .stmts
            .get(&id)
            .ok_or(ProxyError::UnknownStatement(id))?;
        let (kind, tag) = (p.kind.clone(), p.tag.clone());
        if trace::enabled() {
            self.client_span = crate::xid::traceparent(&p.raw);
        }
        let stmt = Stmt::Prepared {
            id,
            stmt: p.stmt.clone(),
            sql: p.sql.clone(),
        };
        let r = self.at_statement(kind, tag, stmt, values).await;
        self.client_span = None;
        self.settle_binding(r).await
    }

    /// After an AT statement: when the local transaction ended without the proxy's own
    /// COMMIT or ROLLBACK handling (the backend rolled it back on a deadlock or lock wait
    /// timeout), the binding ends too; the backend's rollback already undid its writes.
    async fn settle_binding(&mut self, r: Result<(), ProxyError>) -> Result<(), ProxyError> {
        if self.branch.is_none() {
            return r;
        }
        if r.is_err() {
            // The server may have ended the transaction (a deadlock): its metadata locks too.
            if let Some(b) = &mut self.branch {
                b.checks.lost();
            }
        }
        if r.is_err() && !self.conn.is_disconnected() {
            // Error packets carry no status flags: ask with a statement that does nothing.
            if self.conn.query_drop("DO 0").await.is_ok() {
                self.status = wire::Ok::from_backend(&self.conn).status;
            }
        }
        if self.status & StatusFlags::SERVER_STATUS_IN_TRANS.bits() == 0 {
            if let Some(b) = self.branch.take() {
                if r.is_ok() && !b.items.is_empty() {
                    tracing::warn!(xid = %b.xid, "local transaction ended without COMMIT; branch dropped");
                } else {
                    tracing::debug!(xid = %b.xid, "local transaction ended; binding dropped");
                }
            }
        }
        r
    }

    async fn at_statement(
        &mut self,
        kind: Kind,
        tag: Option<String>,
        stmt: Stmt<'_>,
        params: Vec<Value>,
    ) -> Result<(), ProxyError> {
        if let (Some(b), Some(t)) = (&self.branch, &tag) {
            if &b.xid != t {
                return Err(ProxyError::XidMismatch {
                    bound: b.xid.clone(),
                    tagged: t.clone(),
                });
            }
        }
        let bound = self.branch.is_some();
        match kind {
            Kind::Commit => match self.branch.take() {
                Some(b) if !b.items.is_empty() => {
                    let ok = super::commit(
                        &mut self.conn,
                        &mut self.internal,
                        &self.shared,
                        b,
                        stmt.bytes(),
                    )
                    .await?;
                    self.push_ok_packet(ok);
                    Ok(())
                }
                // Nothing written: nothing to register.
                _ => self.pass(stmt, params).await,
            },
            Kind::Rollback => {
                // Nothing was registered before COMMIT, so nothing to tell the coordinator.
                self.branch = None;
                self.pass(stmt, params).await
            }
            Kind::Savepoint(name) => {
                self.pass(stmt, params).await?;
                if let Some(b) = &mut self.branch {
                    b.savepoint(&name);
                }
                Ok(())
            }
            Kind::RollbackTo(name) => {
                self.pass(stmt, params).await?;
                if let Some(b) = &mut self.branch {
                    b.rollback_to(&name);
                }
                Ok(())
            }
            Kind::ReleaseSavepoint(name) => {
                self.pass(stmt, params).await?;
                if let Some(b) = &mut self.branch {
                    b.release(&name);
                }
                Ok(())
            }
            Kind::Begin if bound => Err(Refusal::NestedBegin.into()),
            Kind::Begin => {
                if let Some(t) = &tag {
                    self.check_xid(t).await?;
                }
                self.pass(stmt, params).await?;
                if let Some(t) = tag {
                    self.branch = Some(Branch::new(t, false));
                }
                Ok(())
            }
            Kind::Set if classify::mentions_autocommit(stmt.bytes()) => {
                Err(Refusal::Autocommit.into())
            }
            Kind::Select if classify::mentions_for_update(stmt.bytes()) => {
                self.locking_read(tag, stmt, params).await
            }
            Kind::With => {
                if analyze::is_read_query(stmt.text()?).unwrap_or(false) {
                    self.read(tag, stmt, params).await
                } else {
                    Err(Refusal::WithWrite.into())
                }
            }
            Kind::Use => {
                self.db = None;
                self.read(tag, stmt, params).await
            }
            Kind::Select | Kind::ReadOnly | Kind::Set => self.read(tag, stmt, params).await,
            Kind::Insert | Kind::Update | Kind::Delete | Kind::Replace => {
                self.dml(tag, stmt, params).await
            }
            Kind::Other(word) => Err(Refusal::Statement(word).into()),
        }
    }

    /// A statement that writes nothing: it runs as is. A tag on it binds the current
    /// local transaction, if one is open.
    async fn read(
        &mut self,
        tag: Option<String>,
        stmt: Stmt<'_>,
        params: Vec<Value>,
    ) -> Result<(), ProxyError> {
        if let Some(t) = tag {
            if self.branch.is_none() && self.in_transaction() {
                self.check_xid(&t).await?;
                self.branch = Some(Branch::new(t, false));
            }
        }
        self.pass(stmt, params).await
    }

    /// Unknown, malformed or finished XIDs are refused before anything runs.
    pub(crate) async fn check_xid(&self, xid: &str) -> Result<(), ProxyError> {
        match self.xid_check(xid)? {
            Some(asking) => asking.await,
            None => Ok(()),
        }
    }

    /// The XID check without its wait: a malformed XID is refused at once, one this proxy
    /// knows to be running needs nothing (`None`), any other is asked of the coordinator by
    /// the returned call, which borrows nothing of the session (so a statement can run
    /// meanwhile, see [`Self::dml`]).
    fn xid_check(
        &self,
        xid: &str,
    ) -> Result<
        Option<impl std::future::Future<Output = Result<(), ProxyError>> + Send + 'static>,
        ProxyError,
    > {
        if rewind_protocol::xid::parse(xid).is_none() {
            return Err(ProxyError::UnknownXid(format!(
                "{xid:?} is not a global transaction id (begin one with the coordinator's \
                 POST /api/v1/transactions)"
            )));
        }
        // Running as far as a status call could tell: this proxy registered a branch of it
        // and no command for it has come (see `at::begun`).
        if self.shared.begun.is_running(xid) {
            return Ok(None);
        }
        let (shared, xid) = (self.shared.clone(), xid.to_string());
        Ok(Some(async move {
            match shared.coordinator.status(&xid).await {
                Ok(GlobalStatus::Begin) => Ok(()),
                Ok(st) => Err(ProxyError::UnknownXid(format!(
                    "global transaction {xid} is {}; it takes no more work",
                    st.api_name()
                ))),
                Err(CallError::NotFound(_)) => Err(ProxyError::UnknownXid(format!(
                    "global transaction {xid} does not exist"
                ))),
                Err(e) => Err(ProxyError::CoordinatorUnavailable(e.to_string())),
            }
        }))
    }

    /// The XID of a statement that ran beside its check ([`Self::dml`]) was refused: the
    /// local transaction is rolled back, the statement's writes with it, and the binding
    /// dropped. Returns the refusal, saying so when the transaction was the client's.
    async fn refused_after_run(&mut self, implicit: bool, e: ProxyError) -> ProxyError {
        // The branch's definition holdings end before its transaction does.
        self.branch = None;
        match self.conn.query_drop("ROLLBACK").await {
            Ok(()) => self.status = wire::Ok::from_backend(&self.conn).status,
            Err(r) => tracing::warn!(error = %r, "ROLLBACK after a refused XID failed"),
        }
        if implicit {
            // The client sent the statement alone: to it, the statement never ran.
            return e;
        }
        let rolled_back = "the local transaction was rolled back";
        match e {
            ProxyError::UnknownXid(m) => ProxyError::UnknownXid(format!("{m}; {rolled_back}")),
            ProxyError::CoordinatorUnavailable(m) => {
                ProxyError::CoordinatorUnavailable(format!("{m}; {rolled_back}"))
            }
            other => other,
        }
    }

    /// The AT context for one statement on this session's backend connection.
    fn statement<'a>(&'a mut self, db: Option<&'a str>) -> StatementRun<'a> {
        let (xid, checks) = match &mut self.branch {
            Some(b) => (Some(b.xid.as_str()), Some(&mut b.checks)),
            None => (None, None),
        };
        StatementRun {
            conn: &mut self.conn,
            stmts: &mut self.internal,
            shared: &self.shared,
            db,
            xid,
            checks,
            types: &self.exec_types,
        }
    }

    /// The current database for unqualified table names.
    async fn current_db(&mut self) -> Result<Option<String>, ProxyError> {
        if let Some(db) = &self.db {
            return Ok(db.clone());
        }
        let db: Option<Option<String>> = self.conn.query_first("SELECT DATABASE()").await?;
        let db = db.flatten();
        self.db = Some(db.clone());
        Ok(db)
    }

    /// The DML plan of a statement: parsed once per prepared statement.
    fn plan(&mut self, stmt: &Stmt<'_>) -> Result<std::sync::Arc<crate::at::sql::Dml>, ProxyError> {
        if let Stmt::Prepared { id, .. } = stmt {
            if let Some(plan) = self.stmts.get(id).and_then(|p| p.plan.clone()) {
                return Ok(plan);
            }
        }
        let plan = std::sync::Arc::new(
            crate::at::sql::analyze(stmt.text()?).map_err(|e| statement::refused(e, "?"))?,
        );
        if let Stmt::Prepared { id, .. } = stmt {
            if let Some(p) = self.stmts.get_mut(id) {
                p.plan = Some(plan.clone());
            }
        }
        Ok(plan)
    }

    async fn dml(
        &mut self,
        tag: Option<String>,
        stmt: Stmt<'_>,
        params: Vec<Value>,
    ) -> Result<(), ProxyError> {
        // Refusals of the statement's shape come first: nothing has started yet.
        let plan = self.plan(&stmt)?;
        // A prepared UPDATE or DELETE whose parameters all have exact literals runs as its
        // text with them written in: one query for its images and its write, not three
        // executes (see `at::inline`).
        let inlined = match (&stmt, &*plan) {
            (
                Stmt::Prepared { sql: Some(sql), .. },
                analyze::Dml::Update(_) | analyze::Dml::Delete(_),
            ) => super::inline::inline(sql, &params, &self.exec_types).and_then(|text| {
                let plan = analyze::analyze(&text).ok()?;
                Some((std::sync::Arc::new(plan), text))
            }),
            _ => None,
        };
        let (plan, params) = match &inlined {
            Some((p, _)) => {
                // A text has no parameter types: none may reach the proxy's own values.
                self.exec_types.clear();
                (p.clone(), Vec::new())
            }
            None => (plan, params),
        };
        // The statement that starts a branch: a malformed XID is refused before anything
        // runs; one this proxy does not know to be running is asked about while the
        // statement runs, so the status call's round trip is off the client's path. The
        // statement's writes are in the local transaction, which nothing commits before the
        // answer is in: a refusal rolls it back (`refused_after_run`) once the statement is
        // done (one waiting for a row lock is waited for).
        let mut asking = None;
        if self.branch.is_none() {
            let xid = tag.expect("an unbound statement reaches the AT path only when tagged");
            asking = self.xid_check(&xid)?;
            let implicit = !self.in_transaction();
            if implicit {
                self.conn.query_drop("START TRANSACTION").await?;
            }
            self.branch = Some(Branch::new(xid, implicit));
        }
        let implicit = self.branch.as_ref().is_some_and(|b| b.implicit);
        let span = trace::enabled().then(|| self.statement_span());
        let original = match (&stmt, &inlined) {
            (_, Some((_, text))) => Original::Text(text.as_bytes()),
            (Stmt::Text(sql), None) => Original::Text(sql),
            (Stmt::Prepared { stmt, .. }, None) => Original::Prepared(stmt),
        };
        let work = async {
            let db = self.current_db().await.map_err(Failure::Clean)?;
            self.statement(db.as_deref())
                .run_dml(&plan, original, params)
                .await
        };
        let (answer, run) = match asking {
            Some(asking) => tokio::join!(asking, work),
            None => (Ok(()), work.await),
        };
        if let Some(cx) = span {
            let outcome = match (&answer, &run) {
                (Err(e), _) => format!("refused: {e}"),
                (_, Ok((items, _))) => format!("ok: {} rows recorded", items.len()),
                (_, Err(Failure::Clean(e) | Failure::Poisoned(e))) => format!("error: {e}"),
                (_, Err(Failure::Stale(_))) => "stale metadata".into(),
            };
            trace::set(&cx, "outcome", outcome);
            trace::end(&cx);
        }
        if let Err(e) = answer {
            return Err(self.refused_after_run(implicit, e).await);
        }
        match run {
            Ok((items, mut ok)) => {
                let branch = self.branch.as_mut().expect("bound above");
                branch.items.extend(items);
                if implicit {
                    let branch = self.branch.take().expect("bound above");
                    let committed = if branch.items.is_empty() {
                        self.conn.query_drop("COMMIT").await?;
                        wire::Ok::from_backend(&self.conn)
                    } else {
                        super::commit(
                            &mut self.conn,
                            &mut self.internal,
                            &self.shared,
                            branch,
                            b"COMMIT",
                        )
                        .await?
                    };
                    ok.status = committed.status;
                }
                self.push_ok_packet(ok);
                Ok(())
            }
            Err(Failure::Clean(e)) => Err(self.end_implicit(implicit, e).await),
            Err(Failure::Stale(_)) => unreachable!("phase one retries stale metadata"),
            Err(Failure::Poisoned(e)) => {
                self.branch = None;
                let e = match e {
                    ProxyError::BranchRolledBack(why) => super::abort(&mut self.conn, why).await,
                    other => super::abort(&mut self.conn, other.to_string()).await,
                };
                Err(e)
            }
        }
    }

    /// Traces on, a DML statement of the bound branch: starts the branch's `at.branch`
    /// span if this is its first (child of the client's span, if the statement carries
    /// one) and answers the statement's `at.statement` span (child of the client's span
    /// if it carries one, else of `at.branch`).
    fn statement_span(&mut self) -> trace::Context {
        let client = self.client_span.clone().map(trace::remote);
        let branch = self.branch.as_mut().expect("bound before");
        let xid = KeyValue::new("xid", branch.xid.clone());
        let branch_cx = branch
            .trace
            .get_or_insert_with(|| {
                trace::start(
                    "at.branch",
                    &client.clone().unwrap_or_default(),
                    vec![
                        xid.clone(),
                        KeyValue::new("resource_id", self.shared.resource_id.clone()),
                        KeyValue::new("implicit", branch.implicit),
                    ],
                )
            })
            .clone();
        trace::start(
            "at.statement",
            client.as_ref().unwrap_or(&branch_cx),
            vec![xid],
        )
    }

    /// A statement of an implicit (proxy-opened) branch failed cleanly: the branch ends
    /// with the transaction the proxy opened.
    async fn end_implicit(&mut self, implicit: bool, e: ProxyError) -> ProxyError {
        if implicit {
            self.branch = None;
        }
        self.close_wrap(implicit, e).await
    }

    /// `SELECT … FOR UPDATE` in a global transaction: waits until no other global
    /// transaction holds a lock on the rows it locks, then runs as written. In autocommit
    /// the proxy wraps it in its own transaction so the rows stay locked between the check
    /// and the read.
    async fn locking_read(
        &mut self,
        tag: Option<String>,
        stmt: Stmt<'_>,
        params: Vec<Value>,
    ) -> Result<(), ProxyError> {
        let select = match analyze::analyze_locking_select(stmt.text()?) {
            Ok(Some(s)) => s,
            Ok(None) => return self.read(tag, stmt, params).await,
            Err(e) => return Err(statement::refused(e, "SELECT … FOR UPDATE")),
        };
        if let Some(t) = &tag {
            if self.branch.is_none() {
                self.check_xid(t).await?;
            }
        }
        if self.branch.is_none() && self.in_transaction() {
            if let Some(t) = tag.clone() {
                self.branch = Some(Branch::new(t, false));
            }
        }
        let xid = self.branch.as_ref().map(|b| b.xid.clone()).or(tag);
        let (wrap, db) = self.begin_own().await?;
        let waited = self
            .statement(db.as_deref())
            .wait_for_locked_rows(&select, params.clone(), xid.as_deref())
            .await;
        if let Err(e) = waited {
            return Err(self.close_wrap(wrap, e).await);
        }
        self.hide_in_trans = wrap;
        let r = self.pass(stmt, params).await;
        self.hide_in_trans = false;
        if wrap {
            self.conn.query_drop("COMMIT").await?;
            self.status = wire::Ok::from_backend(&self.conn).status;
        }
        r
    }

    /// For a statement the client sent in autocommit: opens the proxy's own transaction
    /// around it (so rows stay locked between check and write). Returns whether it did,
    /// and the current database.
    async fn begin_own(&mut self) -> Result<(bool, Option<String>), ProxyError> {
        let wrap = !self.in_transaction();
        if wrap {
            self.conn.query_drop("START TRANSACTION").await?;
        }
        match self.current_db().await {
            Ok(db) => Ok((wrap, db)),
            Err(e) => Err(self.close_wrap(wrap, e).await),
        }
    }

    /// After a failure: rolls back the proxy's own transaction, if it opened one, so the
    /// client is back in plain autocommit; returns the error.
    async fn close_wrap(&mut self, wrap: bool, e: ProxyError) -> ProxyError {
        if wrap {
            if let Err(r) = self.conn.query_drop("ROLLBACK").await {
                tracing::warn!(error = %r, "closing the proxy's own transaction failed");
            }
            self.status = wire::Ok::from_backend(&self.conn).status;
        }
        e
    }
}
