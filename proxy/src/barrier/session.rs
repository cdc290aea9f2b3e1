//! A statement with a BARRIER hint through a client session: the barrier row goes in first,
//! then the statement (the transaction around both is [`crate::session::guarded`]'s).

use mysql_async::Value;

use super::Barrier;
use crate::classify::Kind;
use crate::error::ProxyError;
use crate::session::guarded::{Guard, GuardTx, Verdict};
use crate::session::{Session, Stmt};

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
        self.single_statement(&stmt, Barrier::HINT)?;
        let implicit = !self.in_transaction();
        let r = self.guarded(&barrier, stmt, params, kind).await;
        if implicit {
            // The proxy's own transaction: its pair is reported if it committed.
            self.msg.wrapped(&r);
        }
        r
    }
}

impl Guard for Barrier {
    const HINT: &'static str = "BARRIER";

    fn ddl(&self, s: &Session) -> String {
        s.shared.barrier.ddl()
    }

    fn insert_literal(&self, s: &Session) -> Option<String> {
        Some(
            s.shared
                .barrier
                .insert_literal(&self.consumer, &self.message_id),
        )
    }

    async fn write(&self, s: &mut Session, tx: GuardTx) -> Result<Verdict, mysql_async::Error> {
        let insert = s.shared.barrier.insert();
        if s.insert_guard_row(&insert, (&self.consumer, &self.message_id))
            .await?
        {
            Ok(Verdict::Run)
        } else {
            self.duplicate(s, tx).await
        }
    }

    /// A committed transaction recorded the pair: the message was processed.
    async fn duplicate(&self, s: &mut Session, _: GuardTx) -> Result<Verdict, mysql_async::Error> {
        let o = &s.shared.outbox;
        o.count(&o.barrier_duplicates, 1);
        Ok(Verdict::Refuse(ProxyError::DuplicateMessage {
            consumer: self.consumer.clone(),
            message_id: self.message_id.clone(),
        }))
    }

    /// The pair is reported to the coordinator (consumed) once the transaction commits.
    fn written(&self, s: &mut Session) {
        s.msg.barrier_written(self);
    }
}
