//! A statement with a TCC hint through a client session: the fence rows go in first, then
//! the statement (the transaction around both is [`crate::session::guarded`]'s).

use mysql_async::prelude::Queryable;
use mysql_async::Value;

use super::{Counts, Phase, Tcc};
use crate::classify::Kind;
use crate::error::ProxyError;
use crate::session::guarded::{Guard, GuardTx, Verdict};
use crate::session::{Session, Stmt};
use crate::xid::leading_hint;

impl Session {
    /// Runs `stmt` behind its TCC fence. `kind` is the statement's class (a result set is
    /// relayed as it comes; anything else is answered with its OK once committed).
    pub(crate) async fn with_tcc(
        &mut self,
        tcc: Result<Tcc, &'static str>,
        stmt: Stmt<'_>,
        params: Vec<Value>,
        kind: &Kind,
    ) -> Result<(), ProxyError> {
        let tcc = tcc.map_err(ProxyError::BadHint)?;
        let sql = stmt.bytes();
        if self.branch.is_some()
            || crate::xid::leading_xid(sql).is_some()
            || leading_hint(sql, b"XA").is_some()
        {
            return Err(ProxyError::AtRefused(
                "TCC on a statement of an AT or XA branch (a participant's Try, Confirm and \
                 Cancel are local transactions of their own: drop the XID or XA hint)"
                    .into(),
            ));
        }
        if leading_hint(sql, b"BARRIER").is_some() {
            return Err(ProxyError::AtRefused(
                "TCC and BARRIER on one statement (the fence already runs each phase once: \
                 drop the BARRIER)"
                    .into(),
            ));
        }
        if kind.is_transaction_control() {
            // BEGIN would commit the fence rows on their own; COMMIT and ROLLBACK end the
            // transaction the fence must share with the phase's work.
            return Err(ProxyError::AtRefused(
                "TCC on a transaction-control statement (tag the first statement inside the \
                 Try, Confirm or Cancel transaction)"
                    .into(),
            ));
        }
        self.single_statement(&stmt, Tcc::HINT)?;
        self.guarded(&tcc, stmt, params, kind).await
    }
}

impl Tcc {
    /// A fence row's insert parameters.
    fn row(&self, phase: Phase, origin: Phase) -> (&str, u64, &'static str, &'static str) {
        (&self.xid, self.branch_id, phase.as_str(), origin.as_str())
    }

    /// Who wrote the branch's `try` row (a duplicate key on it holds its shared lock).
    async fn try_origin(&self, s: &mut Session) -> Result<Option<String>, mysql_async::Error> {
        let sql = s.shared.tcc_fence.try_origin();
        let select = s.internal.get(&mut s.conn, &sql).await?;
        s.conn
            .exec_first(&select, (&self.xid, self.branch_id))
            .await
    }

    /// The phase is done already (1062): `what` says how.
    fn phase_done(&self, what: &'static str) -> ProxyError {
        ProxyError::TccPhaseDone {
            what,
            xid: self.xid.clone(),
            branch_id: self.branch_id,
        }
    }

    fn repeated(&self, s: &Session) -> Verdict {
        Counts::add(&s.shared.tcc_counts.repeated);
        Verdict::Refuse(self.phase_done(match self.phase {
            Phase::Try => "repeated try",
            Phase::Confirm => "repeated confirm",
            Phase::Cancel => "repeated cancel",
        }))
    }

    /// The Cancel's rows: a `try` placeholder, then the `cancel` row.
    async fn cancel(&self, s: &mut Session, tx: GuardTx) -> Result<Verdict, mysql_async::Error> {
        let insert = s.shared.tcc_fence.insert();
        let placeholder = s
            .insert_guard_row(&insert, self.row(Phase::Try, Phase::Cancel))
            .await?;
        if !placeholder && self.try_origin(s).await?.as_deref() == Some("cancel") {
            // An earlier Cancel wrote it (with its `cancel` row, committed together).
            return Ok(self.repeated(s));
        }
        if !s
            .insert_guard_row(&insert, self.row(Phase::Cancel, Phase::Cancel))
            .await?
        {
            return Ok(self.repeated(s));
        }
        let c = &s.shared.tcc_counts;
        Ok(match (placeholder, tx.own) {
            // The Try committed: this is the real Cancel.
            (false, false) => {
                Counts::add(&c.passed);
                Verdict::Run
            }
            // A Try committed after the client's transaction was rolled back: the
            // Cancel must run again, and will find it.
            (false, true) => {
                Counts::add(&c.raced);
                Verdict::Refuse(ProxyError::TccCancelRaced {
                    xid: self.xid.clone(),
                    branch_id: self.branch_id,
                })
            }
            // The Try never committed: an empty rollback, whose rows must be committed
            // without anything of the client's.
            (true, _) if tx.fresh => {
                Counts::add(&c.empty_rollbacks);
                Verdict::Keep(self.phase_done("empty rollback (the Try never committed)"))
            }
            (true, _) => Verdict::Again,
        })
    }
}

impl Guard for Tcc {
    const HINT: &'static str = "TCC";

    fn ddl(&self, s: &Session) -> String {
        s.shared.tcc_fence.ddl()
    }

    fn insert_literal(&self, s: &Session) -> Option<String> {
        match self.phase {
            Phase::Try | Phase::Confirm => Some(
                s.shared
                    .tcc_fence
                    .insert_literal(self, self.phase, self.phase),
            ),
            Phase::Cancel => None,
        }
    }

    async fn write(&self, s: &mut Session, tx: GuardTx) -> Result<Verdict, mysql_async::Error> {
        if self.phase == Phase::Cancel {
            return self.cancel(s, tx).await;
        }
        let insert = s.shared.tcc_fence.insert();
        if s.insert_guard_row(&insert, self.row(self.phase, self.phase))
            .await?
        {
            Counts::add(&s.shared.tcc_counts.passed);
            Ok(Verdict::Run)
        } else {
            self.duplicate(s, tx).await
        }
    }

    /// A duplicate `try` or `confirm` row.
    async fn duplicate(&self, s: &mut Session, _: GuardTx) -> Result<Verdict, mysql_async::Error> {
        if self.phase == Phase::Try && self.try_origin(s).await?.as_deref() == Some("cancel") {
            // The Cancel came first (suspension): this Try must never apply.
            Counts::add(&s.shared.tcc_counts.suspended);
            return Ok(Verdict::Refuse(ProxyError::TccSuspended {
                xid: self.xid.clone(),
                branch_id: self.branch_id,
            }));
        }
        Ok(self.repeated(s))
    }
}
