//! A client statement behind guard rows: what the consumer barrier, the TCC fence and a
//! half message's check row share.
//! A mode (a [`Guard`]) inserts its rows into the statement's own local transaction before
//! the statement runs, and the primary key decides (insert-first: no locking read, no
//! UPDATE of guard rows, which deadlock under REPEATABLE READ). This module owns the
//! transaction around that:
//!
//! - in autocommit the proxy wraps rows and statement in a transaction of its own and
//!   answers the statement's OK only once both are committed;
//! - a refusal rolls the local transaction back (or, for rows that must outlive it,
//!   commits a transaction that holds only them) and the session goes on;
//! - when InnoDB picks a deadlock victim among duplicates waiting on a first attempt that
//!   rolled back (it does, 1213), and the guard rows were the transaction's first writes,
//!   the transaction is opened again and the rows retried: no deadlock reaches a client;
//! - inside the client's transaction, a guard that is one insert goes in the same round
//!   trip as a text statement (one multi-statement query).
//!
//! The mode keeps its SQL, its refusals and what a duplicate means.

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Value};

use crate::classify::Kind;
use crate::error::ProxyError;
use crate::msg::End;
use crate::session::{Session, Stmt};
use crate::{stacked, wire};

/// How often guard rows chosen as a deadlock victim are retried. Each retry waits behind
/// the transaction that holds the rows, so a handful is plenty.
const DEADLOCK_RETRIES: u32 = 8;

/// The transaction a guard writes its rows in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GuardTx {
    /// Nothing of the client's ran in it before the rows (autocommit, or right after
    /// BEGIN): InnoDB rolling it back loses nothing, and committing it commits only rows.
    pub(crate) fresh: bool,
    /// The proxy's own transaction after [`Verdict::Again`]: no client statement follows.
    pub(crate) own: bool,
}

/// What a guard's rows say about the statement.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// The rows are in: the statement runs, and the client's COMMIT (or the proxy's, in
    /// autocommit) decides for both.
    Run,
    /// Refused: the transaction is rolled back and the client gets the error.
    Refuse(ProxyError),
    /// Refused, but the rows written must stay: the transaction, which holds nothing else
    /// ([`GuardTx::fresh`] only), is committed and the client gets the error.
    Keep(ProxyError),
    /// As `Keep`, in a transaction that already holds the client's work: it is rolled
    /// back, and the guard writes again in a transaction of the proxy's own
    /// ([`GuardTx::own`]), whose verdict is final (`Keep` or `Refuse`).
    Again,
}

/// A mode's rows, written first in the statement's transaction.
pub(crate) trait Guard {
    /// The hint's name, for refusals and logs.
    const HINT: &'static str;

    /// Creates the guard's table (a backend the proxy has not prepared yet: it creates
    /// the tables at start, in the background).
    fn ddl(&self, s: &Session) -> String;

    /// When the guard is a single insert: that insert with its values inline, to go in
    /// one query with a text statement. A duplicate key is then read by [`Guard::duplicate`].
    fn insert_literal(&self, s: &Session) -> Option<String>;

    /// Writes the rows in the open transaction. A backend error is the rows' own (a
    /// deadlock is retried by the caller when the transaction is fresh).
    async fn write(&self, s: &mut Session, tx: GuardTx) -> Result<Verdict, mysql_async::Error>;

    /// What a duplicate key on the [`Guard::insert_literal`] insert means.
    async fn duplicate(&self, s: &mut Session, tx: GuardTx) -> Result<Verdict, mysql_async::Error>;

    /// The rows are in the statement's transaction and the statement runs next: a mode
    /// that acts when the transaction ends (the barrier's consumed pairs, half messages)
    /// notes them in the session here. Nothing by default.
    fn written(&self, _s: &mut Session) {}
}

/// How a pipelined guard insert and statement went.
enum Pipelined {
    /// The insert went in; the statement's outcome (relayed, or its error).
    Ran(Result<(), ProxyError>),
    /// The insert failed (not a duplicate, not a deadlock); the statement did not run.
    Failed(ProxyError),
    Duplicate,
    /// The insert was a deadlock victim (the transaction is rolled back).
    Deadlock(ProxyError),
}

impl Session {
    /// Runs `stmt` behind `guard`'s rows. `kind` is the statement's class (a result set is
    /// relayed as it comes; anything else is answered with its OK once committed). The
    /// mode has made its own refusals already.
    pub(crate) async fn guarded<G: Guard>(
        &mut self,
        guard: &G,
        stmt: Stmt<'_>,
        params: Vec<Value>,
        kind: &Kind,
    ) -> Result<(), ProxyError> {
        let implicit = !self.in_transaction();
        let mut tx = GuardTx {
            fresh: implicit || self.fresh_tx,
            own: false,
        };
        self.fresh_tx = false;
        // Whether the loop opens the transaction (the proxy's, or the client's again after
        // a deadlock rolled it back).
        let mut open = implicit;
        let mut attempt = 0;
        if let (Stmt::Text(sql), false) = (&stmt, implicit) {
            if let Some(insert) = guard.insert_literal(self) {
                // The server stops a multi-statement query at the insert if it fails, so
                // the statement never runs behind refused rows.
                match self.pipelined(insert, sql).await {
                    Pipelined::Ran(r) => {
                        guard.written(self);
                        return r;
                    }
                    Pipelined::Failed(e) => return Err(e),
                    Pipelined::Duplicate => {
                        let verdict = guard.duplicate(self, tx).await?;
                        return self.refused::<G>(verdict, tx).await;
                    }
                    // The insert was a deadlock victim: InnoDB rolled the (fresh)
                    // transaction back; retried below, one statement at a time.
                    Pipelined::Deadlock(_) if tx.fresh => {
                        open = true;
                        attempt = 1;
                    }
                    Pipelined::Deadlock(e) => return Err(e),
                }
            }
        }
        loop {
            if open {
                self.conn.query_drop("START TRANSACTION").await?;
            }
            let verdict = match guard.write(self, tx).await {
                Ok(v) => v,
                Err(mysql_async::Error::Server(e))
                    if e.code == 1146 && implicit && !tx.own && attempt == 0 =>
                {
                    self.end_transaction("ROLLBACK").await?;
                    self.conn.query_drop(guard.ddl(self)).await?;
                    attempt += 1;
                    continue;
                }
                // A deadlock among duplicates waiting on a first attempt that rolled back:
                // InnoDB rolled this transaction back, and it held nothing but guard rows,
                // so it is opened again and the rows retried.
                Err(mysql_async::Error::Server(e))
                    if e.code == 1213 && tx.fresh && attempt < DEADLOCK_RETRIES =>
                {
                    attempt += 1;
                    open = true;
                    tracing::debug!(hint = G::HINT, attempt, "guard insert deadlock; retried");
                    continue;
                }
                Err(e) => {
                    if implicit || tx.own {
                        self.end_transaction("ROLLBACK").await?;
                    }
                    return Err(e.into());
                }
            };
            match verdict {
                Verdict::Run if !tx.own => {
                    guard.written(self);
                    break;
                }
                Verdict::Again if !tx.fresh => {
                    // The client's work goes; the rows are written again, alone.
                    self.end_transaction("ROLLBACK").await?;
                    crate::failpoint::hit("guard-before-own-transaction").await;
                    tx = GuardTx {
                        fresh: true,
                        own: true,
                    };
                    open = true;
                    attempt = 0;
                }
                verdict => return self.refused::<G>(verdict, tx).await,
            }
        }
        if !implicit {
            // The client's own transaction goes on; its COMMIT or ROLLBACK decides.
            return self.pass(stmt, params).await;
        }
        if matches!(kind, Kind::Select | Kind::ReadOnly | Kind::With) {
            // A result set streams to the client before the COMMIT; a failed COMMIT only
            // loses the guard rows (the statement read, it wrote nothing).
            self.hide_in_trans = true;
            let r = self.pass(stmt, params).await;
            self.hide_in_trans = false;
            self.end_transaction(if r.is_ok() { "COMMIT" } else { "ROLLBACK" })
                .await?;
            return r;
        }
        let ran = match stmt {
            Stmt::Text(sql) => self.conn.query_drop(sql).await,
            Stmt::Prepared { stmt, .. } => {
                crate::params::exec_drop(&mut self.conn, &stmt, params, &self.exec_types).await
            }
        };
        match ran {
            Ok(()) => {
                let mut ok = wire::Ok::from_backend(&self.conn);
                self.conn.query_drop("COMMIT").await?;
                ok.status = wire::Ok::from_backend(&self.conn).status;
                self.push_ok_packet(ok);
                Ok(())
            }
            Err(e) => {
                self.end_transaction("ROLLBACK").await?;
                Err(e.into())
            }
        }
    }

    /// Ends the transaction as a refusing `verdict` says and returns the client's error.
    async fn refused<G: Guard>(&mut self, verdict: Verdict, tx: GuardTx) -> Result<(), ProxyError> {
        match verdict {
            Verdict::Refuse(e) => {
                self.end_transaction("ROLLBACK").await?;
                Err(e)
            }
            Verdict::Keep(e) if tx.fresh => {
                self.end_transaction("COMMIT").await?;
                Err(e)
            }
            other => {
                // A guard answering outside its contract (`Keep` in a transaction holding
                // the client's work, `Run` or `Again` where no statement follows): nothing
                // of it is kept.
                debug_assert!(false, "{} guard answered {other:?} in {tx:?}", G::HINT);
                self.end_transaction("ROLLBACK").await?;
                Err(ProxyError::Unsupported("this guard outcome"))
            }
        }
    }

    /// Refuses several statements in one query behind the hint: the guard covers one.
    pub(crate) fn single_statement(&self, stmt: &Stmt<'_>, hint: &str) -> Result<(), ProxyError> {
        if let Stmt::Text(sql) = stmt {
            let backslash = self.status
                & mysql_async::consts::StatusFlags::SERVER_STATUS_NO_BACKSLASH_ESCAPES.bits()
                == 0;
            if stacked::second_statement(sql, backslash).is_some() {
                return Err(ProxyError::AtRefused(format!(
                    "several statements in one query behind a {hint} (send them one at a time)"
                )));
            }
        }
        Ok(())
    }

    /// Runs a guard's insert (prepared once per session, in the proxy's own statement
    /// cache on this backend connection): whether the row went in (`false`: duplicate key).
    pub(crate) async fn insert_guard_row(
        &mut self,
        sql: &str,
        params: impl Into<Params> + Send,
    ) -> Result<bool, mysql_async::Error> {
        let prepared = self.internal.get(&mut self.conn, sql).await?;
        match self.conn.exec_drop(&prepared, params.into()).await {
            Ok(()) => Ok(true),
            Err(mysql_async::Error::Server(e)) if e.code == 1062 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The guard insert and the client's text statement in one query; the statement's
    /// results are relayed as if it had been sent alone.
    async fn pipelined(&mut self, insert: String, sql: &[u8]) -> Pipelined {
        let mut query = insert.into_bytes();
        query.extend_from_slice(b";\n");
        query.extend_from_slice(sql);
        match self.conn.query_iter(query).await {
            Ok(r) => drop(r),
            Err(mysql_async::Error::Server(e)) if e.code == 1062 => return Pipelined::Duplicate,
            Err(mysql_async::Error::Server(e)) if e.code == 1213 => {
                return Pipelined::Deadlock(mysql_async::Error::Server(e).into())
            }
            Err(e) => return Pipelined::Failed(e.into()),
        }
        // The insert's OK is the proxy's; the statement's results are the client's.
        let next = mysql_async::QueryResult::<mysql_async::TextProtocol>::new(&mut self.conn)
            .next()
            .await;
        if let Err(e) = next {
            self.status = wire::Ok::from_backend(&self.conn).status;
            return Pipelined::Ran(Err(e.into()));
        }
        Pipelined::Ran(self.relay::<mysql_async::TextProtocol>().await)
    }

    /// Ends the proxy's (or the client's) transaction and takes the status flags it left;
    /// what the transaction carried for its end (half messages, barrier pairs) is settled
    /// as `sql` says once the command is answered.
    pub(crate) async fn end_transaction(&mut self, sql: &str) -> Result<(), ProxyError> {
        self.conn.query_drop(sql).await?;
        self.status = wire::Ok::from_backend(&self.conn).status;
        self.msg.end(if sql == "COMMIT" {
            End::Commit
        } else {
            End::Rollback
        });
        Ok(())
    }
}
