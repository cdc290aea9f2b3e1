//! What AT mode refuses, decided in one place: SQL it cannot undo exactly, and statements
//! that would commit the local transaction implicitly or write out of the proxy's sight.
//! Every refusal reaches the client as 1235 naming the construct, before anything ran, so
//! the local transaction is left as the client had it.
//!
//! Three kinds of reasons meet here: the statement's kind inside a bound transaction
//! ([`Refusal`]), the table it writes ([`table`]), and the statement's shape as the SQL
//! analysis sees it (`at::sql` raises those as `Error::Refused`, mapped by [`analysis`]).

use rewind_undo_log::{Error as UndoError, SqlKind, TableMeta};

use crate::error::ProxyError;

/// A statement AT mode does not run, by what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The proxy must parse a statement to record its undo (or check its locks).
    NotUtf8,
    /// Several statements in one query inside a global transaction.
    Stacked,
    /// `START TRANSACTION` while bound: it would commit the bound transaction.
    NestedBegin,
    /// `SET autocommit` while bound: switching it on commits implicitly.
    Autocommit,
    /// `WITH … INSERT/UPDATE/DELETE`.
    WithWrite,
    /// Anything else that commits implicitly or writes where no undo can be recorded
    /// (DDL, CALL, LOCK TABLES, LOAD DATA, XA …), by its first keyword.
    Statement(String),
    /// Write isolation: a write whose text is not UTF-8 while global locks are held.
    UncheckableText,
    /// Write isolation: a write the analysis cannot read while global locks are held.
    Uncheckable(String),
    /// Write isolation: a multi-statement or WITH write on a table holding global locks.
    UncheckableShape,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotUtf8 => f.write_str(
                "a statement whose text is not UTF-8 (the proxy must parse it to record its undo)",
            ),
            Refusal::Stacked => {
                f.write_str("several statements in one query (send them one at a time)")
            }
            Refusal::NestedBegin => f.write_str(
                "START TRANSACTION inside a local transaction that belongs to a global one (it \
                 would commit that transaction implicitly; COMMIT or ROLLBACK first)",
            ),
            Refusal::Autocommit => f.write_str(
                "SET autocommit inside a global transaction (switching it on commits the local \
                 transaction implicitly)",
            ),
            Refusal::WithWrite => f.write_str(
                "WITH … INSERT/UPDATE/DELETE (write without the common table expression)",
            ),
            Refusal::Statement(word) => write!(
                f,
                "`{}` statements in a global transaction (they commit implicitly or write where \
                 the proxy cannot record an undo)",
                if word.is_empty() { "empty" } else { word }
            ),
            Refusal::UncheckableText => f.write_str(
                "a write whose text is not UTF-8 while global locks are held on this backend \
                 (the proxy must parse it to check them)",
            ),
            Refusal::Uncheckable(why) => write!(
                f,
                "a write the proxy cannot check against the global locks held on this backend \
                 ({why}); retry once they are released"
            ),
            Refusal::UncheckableShape => f.write_str(
                "a multi-statement or WITH query writing a table that holds global locks (the \
                 proxy can wait for the locks of single UPDATE and DELETE statements only)",
            ),
        }
    }
}

impl From<Refusal> for ProxyError {
    fn from(r: Refusal) -> Self {
        ProxyError::AtRefused(r.to_string())
    }
}

/// Why a statement of `kind` that assigns `set_columns` (UPDATE only) may not write `meta`'s
/// table inside a global transaction, or `None` when it may. Every reason is a write the
/// images would not capture, so the undo could not be exact.
pub fn table(meta: &TableMeta, kind: SqlKind, set_columns: &[String]) -> Option<ProxyError> {
    if !meta.engine.eq_ignore_ascii_case("InnoDB") {
        let engine = if meta.engine.is_empty() {
            "unknown"
        } else {
            &meta.engine
        };
        return Some(ProxyError::AtRefused(format!(
            "table {} uses the {engine} storage engine (not transactional: its writes cannot \
             be rolled back with the local transaction)",
            meta.name
        )));
    }
    if let Some(trigger) = meta.triggers.first() {
        return Some(ProxyError::AtRefused(format!(
            "table {} has trigger `{trigger}` (its writes would have no undo record)",
            meta.name
        )));
    }
    for c in &meta.cascades {
        let hits = match kind {
            SqlKind::Delete => c.on_delete,
            SqlKind::Update => c.on_update && c.columns.iter().any(|col| set_columns.contains(col)),
            SqlKind::Insert => false,
        };
        if hits {
            return Some(ProxyError::AtRefused(format!(
                "table {} is referenced by foreign key `{}` with ON {} CASCADE/SET NULL/SET \
                 DEFAULT (the child rows it rewrites would have no undo record)",
                meta.name,
                c.constraint,
                if kind == SqlKind::Delete {
                    "DELETE"
                } else {
                    "UPDATE"
                }
            )));
        }
    }
    None
}

/// Maps an error of the SQL analysis or of loading table metadata, met before anything
/// was written; `table` names the table for messages that lack it.
pub fn analysis(e: UndoError, table: &str) -> ProxyError {
    match e {
        UndoError::Refused(why) => ProxyError::AtRefused(why),
        UndoError::UnknownTable { schema, table } => {
            ProxyError::NoSuchTable(format!("{schema}.{table}"))
        }
        UndoError::Mysql(e) => e.into(),
        UndoError::Parse(why) => {
            ProxyError::AtRefused(format!("statement the proxy cannot parse ({why})"))
        }
        other => ProxyError::AtRefused(format!("{other} (table {table})")),
    }
}
