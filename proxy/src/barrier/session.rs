//! A statement with a BARRIER hint through a client session: the barrier row goes in first,
//! then the statement; in autocommit the proxy wraps both in its own transaction and the
//! client hears of the statement only once both are committed.

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Value};

use super::Barrier;
use crate::classify::Kind;
use crate::error::ProxyError;
use crate::session::{Session, Stmt};
use crate::stacked;
use crate::wire;

/// How a pipelined barrier insert and statement went.
enum Pipelined {
    /// The insert went in; the statement's outcome (relayed, or its error).
    Ran(Result<(), ProxyError>),
    Duplicate,
    /// The insert was a deadlock victim (the transaction is rolled back).
    Deadlock(ProxyError),
}

/// How often a barrier insert chosen as a deadlock victim is retried. Each retry waits
/// behind the transaction that holds the pair, so a handful is plenty.
const DEADLOCK_RETRIES: u32 = 8;

impl Session {
    /// Runs `stmt` behind its `barrier`. `kind` is the statement's class (a result set is
    /// relayed as it comes; anything else is answered with its OK once committed).
    pub(crate) async fn with_barrier(
        &mut self,
        barrier: Result<Barrier, &'static str>,
        stmt: Stmt<'_>,
        params: Vec<Value>,
        kind: &Kind,
    ) -> Result<(), ProxyError> {
        let barrier = barrier.map_err(ProxyError::BadHint)?;
        if self.branch.is_some() || crate::xid::leading_xid(stmt.bytes()).is_some() {
            return Err(ProxyError::AtRefused(
                "BARRIER on a statement of a global transaction (run the consumer's local \
                 transaction outside it, or make the consumer a branch without the barrier)"
                    .into(),
            ));
        }
        if let Stmt::Text(sql) = stmt {
            let backslash = self.status
                & mysql_async::consts::StatusFlags::SERVER_STATUS_NO_BACKSLASH_ESCAPES.bits()
                == 0;
            if stacked::second_statement(sql, backslash).is_some() {
                return Err(ProxyError::AtRefused(
                    "several statements in one query behind a BARRIER (send them one at a \
                     time)"
                        .into(),
                ));
            }
        }
        let implicit = !self.in_transaction();
        let fresh = implicit || self.fresh_tx;
        self.fresh_tx = false;
        let mut attempt = 0;
        if let (Stmt::Text(sql), false) = (&stmt, implicit) {
            // Inside the client's transaction, a text statement goes in the same round
            // trip as its barrier insert: one multi-statement query, which the server
            // stops at the insert if it fails, so the statement never runs behind a
            // refused barrier.
            match self.pipelined(&barrier, sql).await {
                Pipelined::Ran(r) => return r,
                Pipelined::Duplicate => return Err(self.duplicate(barrier).await?),
                // The insert was a deadlock victim: InnoDB rolled the (fresh) transaction
                // back; retried below, one statement at a time.
                Pipelined::Deadlock(_) if fresh => attempt = 1,
                Pipelined::Deadlock(e) => return Err(e),
            }
        }
        loop {
            if implicit || attempt > 0 {
                self.conn.query_drop("START TRANSACTION").await?;
            }
            // Prepared once per session (the proxy's own statement cache on this backend
            // connection), then one round trip per message.
            let insert = self.shared.barrier.insert();
            let inserted = match self.internal.get(&mut self.conn, &insert).await {
                Ok(prepared) => {
                    self.conn
                        .exec_drop(&prepared, (&barrier.consumer, &barrier.message_id))
                        .await
                }
                Err(e) => Err(e),
            };
            match inserted {
                Ok(()) => break,
                // A backend the proxy has not prepared yet (it creates the table at start,
                // in the background): create it and try again.
                Err(mysql_async::Error::Server(e))
                    if e.code == 1146 && implicit && attempt == 0 =>
                {
                    self.end_transaction("ROLLBACK").await?;
                    self.conn.query_drop(self.shared.barrier.ddl()).await?;
                    attempt += 1;
                }
                Err(mysql_async::Error::Server(e)) if e.code == 1062 => {
                    return Err(self.duplicate(barrier).await?);
                }
                // A deadlock among duplicates waiting on a first attempt that rolled back:
                // InnoDB rolled this transaction back, and it held nothing but the barrier
                // insert (its first write), so it is opened again and retried.
                Err(mysql_async::Error::Server(e))
                    if e.code == 1213 && fresh && attempt < DEADLOCK_RETRIES =>
                {
                    attempt += 1;
                    tracing::debug!(consumer = %barrier.consumer, attempt, "barrier insert deadlock; retried");
                }
                Err(e) => {
                    if implicit {
                        self.end_transaction("ROLLBACK").await?;
                    }
                    return Err(e.into());
                }
            }
        }
        if !implicit {
            // The client's own transaction goes on; its COMMIT or ROLLBACK decides.
            return self.pass(stmt, params).await;
        }
        if matches!(kind, Kind::Select | Kind::ReadOnly | Kind::With) {
            // A result set streams to the client before the COMMIT; a failed COMMIT only
            // loses the barrier row, so the message is read again (at least once).
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
                let params = if params.is_empty() {
                    Params::Empty
                } else {
                    Params::Positional(params)
                };
                self.conn.exec_drop(&stmt, params).await
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

    /// A duplicate: the local transaction is rolled back and the client told.
    async fn duplicate(&mut self, barrier: Barrier) -> Result<ProxyError, ProxyError> {
        self.end_transaction("ROLLBACK").await?;
        let o = &self.shared.outbox;
        o.count(&o.barrier_duplicates, 1);
        Ok(ProxyError::DuplicateMessage {
            consumer: barrier.consumer,
            message_id: barrier.message_id,
        })
    }

    /// The barrier insert and the client's text statement in one query; the statement's
    /// results are relayed as if it had been sent alone.
    async fn pipelined(&mut self, barrier: &Barrier, sql: &[u8]) -> Pipelined {
        let mut query = self
            .shared
            .barrier
            .insert_literal(&barrier.consumer, &barrier.message_id)
            .into_bytes();
        query.extend_from_slice(b";\n");
        query.extend_from_slice(sql);
        match self.conn.query_iter(query).await {
            Ok(r) => drop(r),
            Err(mysql_async::Error::Server(e)) if e.code == 1062 => return Pipelined::Duplicate,
            Err(mysql_async::Error::Server(e)) if e.code == 1213 => {
                return Pipelined::Deadlock(mysql_async::Error::Server(e).into())
            }
            Err(e) => return Pipelined::Ran(Err(e.into())),
        }
        // The insert's OK is the proxy's; the statement's results are the client's.
        let next = mysql_async::QueryResult::<mysql_async::TextProtocol>::new(&mut self.conn)
            .next()
            .await;
        if let Err(e) = next {
            self.status = wire::Ok::from_backend(&self.conn).status;
            return Pipelined::Ran(Err(e.into()));
        }
        Pipelined::Ran(self.relay::<mysql_async::TextProtocol>(false).await)
    }

    /// Ends the proxy's (or the client's) transaction and takes the status flags it left.
    async fn end_transaction(&mut self, sql: &str) -> Result<(), ProxyError> {
        self.conn.query_drop(sql).await?;
        self.status = wire::Ok::from_backend(&self.conn).status;
        Ok(())
    }
}
