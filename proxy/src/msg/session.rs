//! A statement with a MSG hint through a client session: the message is bound at the
//! coordinator, its check row goes in first, then the statement (the transaction around
//! both is [`crate::session::guarded`]'s). And what the session remembers of its local
//! transaction until it ends ([`Marks`]: messages bound, barrier pairs recorded), then
//! settles: a decision for each message, the pairs to the consumed queue.
//!
//! How a transaction ended is read from the command that ended it (see [`super::ending`]),
//! or set by the proxy when it ended the transaction itself (its autocommit wrap, a
//! refusal's ROLLBACK). The decision goes out only after the answer was written to the
//! client, on a task of its own.

use std::sync::Arc;

use mysql_async::consts::StatusFlags;
use mysql_async::prelude::Queryable;
use mysql_async::Value;

use super::{Answer, End, Msg, Origin};
use crate::barrier::Barrier;
use crate::classify::{self, Kind};
use crate::coordinator::CallError;
use crate::error::ProxyError;
use crate::packet::Cursor;
use crate::session::guarded::{Guard, GuardTx, Verdict};
use crate::session::{
    Session, Stmt, COM_CHANGE_USER, COM_QUERY, COM_RESET_CONNECTION, COM_STMT_EXECUTE,
};
use crate::xid::{leading_hint, leading_xid};
use crate::{stacked, Shared};

/// What the current local transaction carries for after its end.
#[derive(Debug, Default)]
pub(crate) struct Marks {
    /// Messages whose check row this transaction wrote: decided when it ends.
    messages: Vec<String>,
    /// Messages bound in it whose rows a ROLLBACK TO SAVEPOINT may have removed: never
    /// decided here (check-back finds out), but not bound again either.
    unsure: Vec<String>,
    /// Barrier pairs (consumer, message id) it recorded: reported once it commits.
    consumed: Vec<(String, String)>,
    /// How it ended, when the proxy ended it itself during the command.
    ended: Option<End>,
}

impl Marks {
    fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.unsure.is_empty() && self.consumed.is_empty()
    }

    /// The proxy ended the transaction: `end` settles the marks after the command (the
    /// first ending of a command is the one that counts: a refusal's ROLLBACK before the
    /// proxy's own transaction that keeps guard rows).
    pub(crate) fn end(&mut self, end: End) {
        if !self.is_empty() && self.ended.is_none() {
            self.ended = Some(end);
        }
    }

    /// After a statement the proxy wrapped in a transaction of its own (autocommit): it
    /// committed when the answer is OK.
    pub(crate) fn wrapped(&mut self, r: &Result<(), ProxyError>) {
        self.end(match r {
            Ok(()) => End::Commit,
            Err(ProxyError::Backend { .. }) => End::Rollback,
            Err(_) => End::Unsure,
        });
    }

    /// A barrier's row went into the transaction.
    pub(crate) fn barrier_written(&mut self, b: &Barrier) {
        self.consumed
            .push((b.consumer.clone(), b.message_id.clone()));
    }

    fn message_written(&mut self, id: &str) {
        self.unsure.retain(|u| u != id);
        if !self.messages.iter().any(|m| m == id) {
            self.messages.push(id.to_string());
        }
    }

    /// A savepoint rolled back: rows may be gone.
    fn partial(&mut self) {
        self.unsure.append(&mut self.messages);
        self.consumed.clear();
    }

    fn take(&mut self, end: End) -> Ended {
        let m = std::mem::take(self);
        Ended {
            end,
            messages: m.messages,
            unsure: m.unsure.len(),
            consumed: m.consumed,
        }
    }
}

/// A local transaction that ended holding marks, to settle once its answer is written.
#[derive(Debug)]
pub(crate) struct Ended {
    end: End,
    messages: Vec<String>,
    /// Messages left to check-back whatever the end.
    unsure: usize,
    consumed: Vec<(String, String)>,
}

impl Ended {
    /// Tells the coordinator (on a task of its own) and queues the consumed pairs.
    pub(crate) fn settle(self, shared: &Arc<Shared>) {
        let m = &shared.messages;
        m.count_decided(End::Unsure, self.unsure);
        m.count_decided(self.end, self.messages.len());
        if self.end == End::Commit && !self.consumed.is_empty() {
            m.consumed.push(self.consumed);
        }
        if self.messages.is_empty() {
            return;
        }
        match self.end {
            End::Commit => super::decide(shared.clone(), self.messages, true),
            End::Rollback => super::decide(shared.clone(), self.messages, false),
            End::Unsure | End::Partial => {
                tracing::debug!(messages = ?self.messages, "transaction end unknown; half messages left to check-back");
            }
        }
    }
}

/// A message's check row, as a guard. `again`: the transaction bound the message before a
/// ROLLBACK TO SAVEPOINT, so a row of origin `tx` may be its own.
struct CheckRow {
    message_id: String,
    again: bool,
}

/// Refusal texts after a duplicate check row (1397; the transaction rolled back).
const CANCELLED: &str = "was cancelled by check-back (its local transaction did not commit in \
                         time); prepare a new message. The local transaction was rolled back \
                         and nothing of it applied";
const COMMITTED: &str = "was already committed by another local transaction. The local \
                         transaction was rolled back and nothing of it applied";

impl Session {
    /// Runs `stmt` behind its half message. `kind` is the statement's class (a result set
    /// is relayed as it comes; anything else is answered with its OK once committed).
    pub(crate) async fn with_msg(
        &mut self,
        msg: Result<Msg, &'static str>,
        stmt: Stmt<'_>,
        params: Vec<Value>,
        kind: &Kind,
    ) -> Result<(), ProxyError> {
        let msg = msg.map_err(ProxyError::BadHint)?;
        self.msg_refusals(stmt.bytes(), kind)?;
        self.single_statement(&stmt, CheckRow::HINT)?;
        let id = msg.message_id;
        if self.msg.messages.contains(&id) {
            // This transaction's row is in already: the statement just runs.
            self.fresh_tx = false;
            return self.pass(stmt, params).await;
        }
        let again = self.msg.unsure.contains(&id);
        if !again {
            self.bind_message(&id).await?;
        }
        let row = CheckRow {
            message_id: id,
            again,
        };
        let implicit = !self.in_transaction();
        let r = self.guarded(&row, stmt, params, kind).await;
        if implicit {
            self.msg.wrapped(&r);
        }
        r
    }

    fn msg_refusals(&self, sql: &[u8], kind: &Kind) -> Result<(), ProxyError> {
        if self.branch.is_some()
            || self.xa.is_some()
            || leading_xid(sql).is_some()
            || leading_hint(sql, b"XA").is_some()
        {
            return Err(ProxyError::AtRefused(
                "MSG on a statement of a global transaction (a half message's local \
                 transaction is its own: drop the XID or XA hint, or add the message to the \
                 global transaction with POST /api/v1/transactions/{xid}/messages)"
                    .into(),
            ));
        }
        if leading_hint(sql, b"BARRIER").is_some() || leading_hint(sql, b"TCC").is_some() {
            return Err(ProxyError::AtRefused(
                "MSG with BARRIER or TCC on one statement (put the MSG hint on another \
                 statement of the transaction)"
                    .into(),
            ));
        }
        if kind.is_transaction_control() {
            // BEGIN would commit the check row on its own; COMMIT and ROLLBACK end the
            // transaction the row must share with the producer's work.
            return Err(ProxyError::AtRefused(
                "MSG on a transaction-control statement (tag a statement inside the \
                 producer's local transaction)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Tells the coordinator this resource runs the message's local transaction, before
    /// anything is written (check-back must know where to look).
    async fn bind_message(&mut self, id: &str) -> Result<(), ProxyError> {
        let proxy_id = crate::attach::proxy_id(&self.shared);
        let shared = &self.shared;
        match shared
            .coordinator
            .bind_message(id, &shared.resource_id, &proxy_id)
            .await
        {
            Ok(()) => {
                shared
                    .messages
                    .bound
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            Err(CallError::NotFound(why) | CallError::NotActive(why) | CallError::Invalid(why)) => {
                Err(ProxyError::MessageRefused(why))
            }
            Err(e @ CallError::Unavailable(_)) => {
                Err(ProxyError::CoordinatorUnavailable(e.to_string()))
            }
        }
    }

    /// After a command: whether it ended a local transaction holding marks, and how. The
    /// marks are taken; the caller settles them once the answer is written.
    pub(crate) fn transaction_end(
        &mut self,
        cmd: u8,
        body: &[u8],
        result: &Result<(), ProxyError>,
    ) -> Option<Ended> {
        if self.msg.is_empty() {
            self.msg.ended = None;
            return None;
        }
        let end = match self.msg.ended.take() {
            Some(end) => end,
            None => self.command_end(cmd, body, result)?,
        };
        if end == End::Partial {
            self.msg.partial();
            return None;
        }
        Some(self.msg.take(end))
    }

    /// The client is gone: its transaction is rolled back with its backend session.
    pub(crate) fn abandoned(&mut self) -> Option<Ended> {
        (!self.msg.is_empty()).then(|| self.msg.take(End::Rollback))
    }

    /// How the command's own statement left the transaction (see [`super::ending`]).
    fn command_end(&self, cmd: u8, body: &[u8], result: &Result<(), ProxyError>) -> Option<End> {
        let (kind, single) = match cmd {
            // The backend session is reset, which rolls back (and so does a failed
            // re-authentication, which ends the session).
            COM_RESET_CONNECTION | COM_CHANGE_USER => return Some(End::Rollback),
            COM_QUERY => {
                let backslash =
                    self.status & StatusFlags::SERVER_STATUS_NO_BACKSLASH_ESCAPES.bits() == 0;
                (
                    classify::classify(body),
                    stacked::second_statement(body, backslash).is_none(),
                )
            }
            COM_STMT_EXECUTE => {
                let id = Cursor::new(body).u32().ok()?;
                (self.stmts.get(&id)?.kind.clone(), true)
            }
            _ => return None,
        };
        let answer = match result {
            Ok(()) => Answer::Ok,
            Err(ProxyError::Backend { code, .. }) => Answer::Backend(*code),
            Err(_) => Answer::Other,
        };
        let in_trans = self.status & StatusFlags::SERVER_STATUS_IN_TRANS.bits() != 0;
        super::ending(&kind, single, answer, in_trans)
    }
}

impl Guard for CheckRow {
    const HINT: &'static str = "MSG";

    fn ddl(&self, s: &Session) -> String {
        s.shared.msg_check.ddl()
    }

    /// Never pipelined: the row must be known to be in before the message is marked (a
    /// failed multi-statement query does not say whether the insert or the statement failed).
    fn insert_literal(&self, _: &Session) -> Option<String> {
        None
    }

    async fn write(&self, s: &mut Session, tx: GuardTx) -> Result<Verdict, mysql_async::Error> {
        let insert = s.shared.msg_check.insert();
        if s.insert_guard_row(&insert, (&self.message_id, Origin::Tx.as_str()))
            .await?
        {
            Ok(Verdict::Run)
        } else {
            self.duplicate(s, tx).await
        }
    }

    /// A committed check row: the message is decided already (or, `again`, the row may be
    /// this transaction's own).
    async fn duplicate(&self, s: &mut Session, _: GuardTx) -> Result<Verdict, mysql_async::Error> {
        let sql = s.shared.msg_check.origin();
        let select = s.internal.get(&mut s.conn, &sql).await?;
        let origin: Option<String> = s.conn.exec_first(&select, (&self.message_id,)).await?;
        let how = match origin.as_deref().and_then(Origin::parse) {
            Some(Origin::Tx) if self.again => return Ok(Verdict::Run),
            Some(Origin::Probe) => CANCELLED,
            // Origin `tx`; or a row deleted since (retention), long after its decision.
            _ => COMMITTED,
        };
        Ok(Verdict::Refuse(ProxyError::MessageGone {
            message_id: self.message_id.clone(),
            how,
        }))
    }

    fn written(&self, s: &mut Session) {
        s.msg.message_written(&self.message_id);
    }
}
