//! Backend statements kept after the client closed them, for the next prepare of the same
//! text on the same session.
//!
//! Two client habits make every statement cost a prepare and a close on the backend
//! besides its execute: a statement tagged with an XID is new text in every global
//! transaction (`/*+ XID('…') */ UPDATE …`), and many drivers (Go's `database/sql`, for
//! one) prepare, execute and close each statement they run with arguments. The proxy
//! prepares the text without its leading hint comment ([`crate::xid::backend_text`]), and
//! when the client closes a statement that returns no columns (a write, or anything
//! without a result set) it keeps the backend statement, with its AT plan, instead of
//! closing it. The next prepare of the same text in the same database is answered from it:
//! no backend round trip and no second SQL analysis.
//!
//! What a kept statement must not change is how its text would be prepared now. The
//! current database is part of the key (and nothing is kept while the proxy does not know
//! it); anything that may change how text parses (SET, USE, any other statement outside
//! plain reads, writes and transaction control, a text with a `;`, COM_INIT_DB,
//! COM_SET_OPTION) closes every kept statement first, except the SETs of `autocommit`,
//! isolation level, access mode and timeouts that drivers and pools send around every
//! transaction; a reset or change of user makes the
//! backend forget them. Table definitions may change under a kept statement as under any
//! prepared statement: the server prepares it again by itself. Only statements without
//! result columns are kept, so the column definitions the client is sent at prepare
//! never come from an earlier definition.
//!
//! Bounded per session ([`PER_SESSION`]) and per process ([`PER_PROCESS`], against the
//! server's `max_prepared_stmt_count`); the oldest goes first.

use std::collections::VecDeque;
use std::sync::Arc;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Statement};

use crate::at::sql::Dml;
use crate::classify::Kind;
use crate::Shared;

/// Backend statements one session keeps.
pub(crate) const PER_SESSION: usize = 8;
/// Backend statements all sessions of the process keep together.
pub(crate) const PER_PROCESS: i64 = 1024;

struct Kept {
    db: String,
    /// The client's text; the backend prepared its [`crate::xid::backend_text`].
    raw: Arc<[u8]>,
    stmt: Statement,
    plan: Option<Arc<Dml>>,
}

/// A session's kept statements (see the module's docs).
pub(crate) struct Reuse {
    shared: Arc<Shared>,
    kept: VecDeque<Kept>,
    /// Bumped by everything that closes or forgets the kept statements: a statement
    /// prepared in an earlier generation may parse differently from the same text now.
    generation: u64,
}

/// A kept statement taken for a new prepare.
pub(crate) struct Taken {
    pub(crate) stmt: Statement,
    pub(crate) plan: Option<Arc<Dml>>,
}

impl Reuse {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Reuse {
            shared,
            kept: VecDeque::new(),
            generation: 0,
        }
    }

    /// The generation a statement prepared now belongs to (see [`Self::closed`]).
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The kept statement for `text` prepared in database `db`, if there is one.
    pub(crate) fn take(&mut self, db: Option<&str>, text: &[u8]) -> Option<Taken> {
        let db = db?;
        let at = self
            .kept
            .iter()
            .position(|k| crate::xid::backend_text(&k.raw) == text && k.db == db)?;
        let k = self.kept.remove(at)?;
        self.shared.metrics.statement_released(true);
        Some(Taken {
            stmt: k.stmt,
            plan: k.plan,
        })
    }

    /// The client closed a statement (its text `raw`) prepared in [`Self::generation`]
    /// `generation` while the session's database was `prepared_in` (`None`: not known to
    /// the proxy): kept when it may be (see the module's docs), else closed on the backend.
    pub(crate) async fn closed(
        &mut self,
        conn: &mut Conn,
        raw: Arc<[u8]>,
        stmt: Statement,
        plan: Option<Arc<Dml>>,
        prepared_in: Option<String>,
        generation: u64,
    ) {
        let keep =
            prepared_in.is_some() && generation == self.generation && stmt.columns().is_empty();
        if !keep || !self.shared.metrics.statement_kept(PER_PROCESS) {
            close(conn, stmt).await;
            return;
        }
        self.kept.push_back(Kept {
            db: prepared_in.unwrap_or_default(),
            raw,
            stmt,
            plan,
        });
        if self.kept.len() > PER_SESSION {
            if let Some(old) = self.kept.pop_front() {
                self.shared.metrics.statement_released(false);
                close(conn, old.stmt).await;
            }
        }
    }

    /// Something may change how text parses or which database it names: every kept
    /// statement is closed on the backend.
    pub(crate) async fn close_all(&mut self, conn: &mut Conn) {
        self.generation += 1;
        while let Some(k) = self.kept.pop_front() {
            self.shared.metrics.statement_released(false);
            close(conn, k.stmt).await;
        }
    }

    /// Whether a session with no open statements keeps none either (then nothing needs
    /// closing or telling apart when the session's state changes).
    pub(crate) fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// The backend connection forgot its statements (reset, change of user) or the session
    /// moves to another one: nothing to close here.
    pub(crate) fn forget(&mut self) {
        self.generation += 1;
        for _ in self.kept.drain(..) {
            self.shared.metrics.statement_released(false);
        }
    }
}

impl Drop for Reuse {
    fn drop(&mut self) {
        // The connection goes back to its pool, which resets it.
        self.forget();
    }
}

async fn close(conn: &mut Conn, stmt: Statement) {
    // COM_STMT_CLOSE has no answer; a lost backend shows on the next command.
    if let Err(e) = conn.close(stmt).await {
        tracing::debug!(error = %e, "closing a statement failed");
    }
}

/// Whether a statement may change how later text is prepared (the session's sql_mode,
/// character set, database, …): anything but plain reads, writes, transaction control
/// and the SETs drivers send around transactions
/// ([`crate::classify::set_leaves_parsing_alone`]), and any text that may hold a second
/// statement.
pub(crate) fn may_change_parsing(kind: &Kind, sql: &[u8]) -> bool {
    let plain = matches!(
        kind,
        Kind::Select
            | Kind::With
            | Kind::Insert
            | Kind::Update
            | Kind::Delete
            | Kind::Replace
            | Kind::ReadOnly
    ) || kind.is_transaction_control()
        || (*kind == Kind::Set && crate::classify::set_leaves_parsing_alone(sql));
    !plain || sql.contains(&b';')
}

#[cfg(test)]
mod tests {
    use super::may_change_parsing;
    use crate::classify::classify;

    #[test]
    fn only_plain_statements_leave_kept_statements_alone() {
        let changes = |sql: &str| may_change_parsing(&classify(sql.as_bytes()), sql.as_bytes());
        for plain in [
            "SELECT 1",
            "update t set a = 1 where id = ?",
            "/*+ XID('x') */ INSERT INTO t VALUES (?)",
            "BEGIN",
            "COMMIT",
            "SHOW TABLES",
            "SET autocommit = 0",
            "set @@session.autocommit=1",
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
            "SET TRANSACTION READ ONLY",
            "SET innodb_lock_wait_timeout = 50, @@max_statement_time = 1.5",
            "SET /* pool */ autocommit = DEFAULT",
        ] {
            assert!(!changes(plain), "{plain}");
        }
        for changing in [
            "SET sql_mode = 'ANSI_QUOTES'",
            "SET NAMES latin1",
            "USE other",
            "CALL p()",
            "SELECT 1; SET sql_mode = ''",
            "SET STATEMENT sql_mode = '' FOR UPDATE t SET a = 1",
            "SET autocommit = 0, sql_mode = ''",
            "SET autocommit = 0; SET NAMES latin1",
            "SET autocommit = '/*', sql_mode = '', @x = '*/'",
            "SET autocommit = 0 /*!50000 , sql_mode = '' */",
            "SET CHARACTER SET latin1",
            "SET character_set_client = latin1",
            "SET @@session.sql_mode = DEFAULT",
            "SET `sql_mode` = DEFAULT",
            "SET @x = 1",
            "SET",
        ] {
            assert!(changes(changing), "{changing}");
        }
    }
}
