//! The TCC fence: a participant's Try, Confirm and Cancel local transactions carry
//! `/*+ TCC('<xid>', <branch_id>, 'try'|'confirm'|'cancel') */` on a statement (normally
//! the first of the local transaction, or a statement in autocommit), and the proxy writes
//! `<undo_schema>.tcc_fence` in that same transaction, before the statement runs. One row
//! per (xid, branch, phase), the primary key; insert-first only, so the database decides
//! and no deadlock reaches the participant (see [`crate::session::guarded`]):
//!
//! - Try inserts the `try` row (origin `try`). A duplicate is a repeated Try (origin
//!   `try`: 1062 `TCC phase already done`) or a Try after its Cancel (origin `cancel`,
//!   suspension: 1397 `XAER_NOTA`); either way nothing of it is applied.
//! - Confirm inserts the `confirm` row; a duplicate is a repeated Confirm (1062). The
//!   coordinator confirms only after a global commit, so the Try is not checked.
//! - Cancel inserts a `try` row of origin `cancel` (a placeholder) and the `cancel` row. A
//!   Try row of origin `try` already there is the real Cancel: the statement runs. A
//!   duplicate `cancel` row (or a placeholder already there) is a repeated Cancel (1062).
//!   Both rows new is an empty rollback (the Try never committed): the rows are committed,
//!   so a late Try is refused, and nothing of the client's is applied (1062). When the
//!   client had already run statements in that transaction, those are rolled back and the
//!   rows written again in a transaction of the proxy's own; a Try that committed in
//!   between makes that Cancel fail with 1205, to be run again.
//!
//! Every refusal rolls the local transaction back; the session goes on. Rows are deleted
//! [`Config::tcc_fence_retention_secs`](crate::Config) after they were written (with the
//! barrier's, every `undo_housekeeping_secs`).
//!
//! - [`session`]: the statement's path through a client session.

pub(crate) mod session;

use std::sync::atomic::{AtomicU64, Ordering};

use rewind_undo_log::undo_sql::quote_ident;

use crate::xid::HintArg;

/// The longest XID the fence keeps (the undo table's XID column).
const MAX_XID_LEN: usize = 128;

/// A statement's TCC hint: which branch of which global transaction, in which phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tcc {
    pub xid: String,
    pub branch_id: u64,
    pub phase: Phase,
}

/// The TCC phase a local transaction runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Try,
    Confirm,
    Cancel,
}

impl Phase {
    /// The name in the hint and in the table's `phase` and `origin` columns.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Try => "try",
            Phase::Confirm => "confirm",
            Phase::Cancel => "cancel",
        }
    }
}

impl Tcc {
    /// The `TCC('<xid>', <branch_id>, '<phase>')` hint of a statement's leading comment.
    /// `Err` names what is wrong with a hint that is there but unusable.
    pub fn of(sql: &[u8]) -> Option<Result<Tcc, &'static str>> {
        const USAGE: &str = "TCC takes three arguments: TCC('<xid>', <branch_id>, \
                             'try'|'confirm'|'cancel')";
        let Ok(args) = crate::xid::leading_hint(sql, b"TCC")? else {
            return Some(Err(USAGE));
        };
        let [HintArg::Quoted(xid), branch_id, HintArg::Quoted(phase)] = args.as_slice() else {
            return Some(Err(USAGE));
        };
        if xid.is_empty() || xid.len() > MAX_XID_LEN || !xid.iter().all(u8::is_ascii_graphic) {
            return Some(Err("TCC xid must be 1 to 128 printable ASCII characters"));
        }
        let Some(branch_id) = branch_id.number() else {
            return Some(Err("TCC branch id must be an unsigned 64-bit integer"));
        };
        let phase = match phase.to_ascii_lowercase().as_slice() {
            b"try" => Phase::Try,
            b"confirm" => Phase::Confirm,
            b"cancel" => Phase::Cancel,
            _ => return Some(Err("TCC phase must be 'try', 'confirm' or 'cancel'")),
        };
        Some(Ok(Tcc {
            xid: String::from_utf8_lossy(xid).into_owned(),
            branch_id,
            phase,
        }))
    }
}

/// Statements on `<schema>.tcc_fence`.
#[derive(Debug, Clone)]
pub struct FenceTable {
    table: String,
}

impl FenceTable {
    pub fn new(schema: &str) -> Self {
        FenceTable {
            table: format!("{}.`tcc_fence`", quote_ident(schema)),
        }
    }

    /// Creates the table when missing (the schema exists: the undo table's DDL made it).
    /// `origin` tells who wrote a `try` row: a Try (`try`) or a Cancel that came first
    /// (`cancel`, a placeholder); other rows carry their phase.
    pub fn ddl(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\
             xid VARCHAR({MAX_XID_LEN}) CHARACTER SET ascii COLLATE ascii_bin NOT NULL, \
             branch_id BIGINT UNSIGNED NOT NULL, \
             phase VARCHAR(8) CHARACTER SET ascii COLLATE ascii_bin NOT NULL, \
             origin VARCHAR(8) CHARACTER SET ascii COLLATE ascii_bin NOT NULL, \
             created DATETIME(6) NOT NULL, \
             PRIMARY KEY (xid, branch_id, phase), \
             KEY idx_created (created)\
             ) ENGINE=InnoDB",
            self.table
        )
    }

    /// Params: xid, branch id, phase, origin.
    pub fn insert(&self) -> String {
        format!(
            "INSERT INTO {} (xid, branch_id, phase, origin, created) \
             VALUES (?, ?, ?, ?, UTC_TIMESTAMP(6))",
            self.table
        )
    }

    /// The insert with its values inline, for a multi-statement query: the XID as a hex
    /// literal, so no quoting or SQL mode can change it.
    pub fn insert_literal(&self, tcc: &Tcc, phase: Phase, origin: Phase) -> String {
        let hex: String = tcc.xid.bytes().map(|b| format!("{b:02X}")).collect();
        format!(
            "INSERT INTO {} (xid, branch_id, phase, origin, created) VALUES \
             (X'{hex}', {}, '{}', '{}', UTC_TIMESTAMP(6))",
            self.table,
            tcc.branch_id,
            phase.as_str(),
            origin.as_str()
        )
    }

    /// Who wrote a branch's `try` row, read under the shared lock a duplicate key already
    /// holds. Params: xid, branch id.
    pub fn try_origin(&self) -> String {
        format!(
            "SELECT origin FROM {} WHERE xid = ? AND branch_id = ? AND phase = 'try' \
             LOCK IN SHARE MODE",
            self.table
        )
    }

    /// Params: retention in seconds. At most 5,000 rows per statement.
    pub fn expire(&self) -> String {
        format!(
            "DELETE FROM {} WHERE created < UTC_TIMESTAMP(6) - INTERVAL ? SECOND LIMIT 5000",
            self.table
        )
    }
}

/// How fenced statements went since the proxy started (logged by housekeeping).
#[derive(Debug, Default)]
pub struct Counts {
    /// The fence rows went in; the statement ran behind them.
    pub passed: AtomicU64,
    /// A repeated Try, Confirm or Cancel, refused with 1062.
    pub repeated: AtomicU64,
    /// A Cancel whose Try never committed: rows kept, 1062.
    pub empty_rollbacks: AtomicU64,
    /// A Try after its Cancel, refused with 1397.
    pub suspended: AtomicU64,
    /// A Cancel that met a Try committing meanwhile, failed with 1205.
    pub raced: AtomicU64,
}

impl Counts {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `passed, repeated, empty rollbacks, suspended, raced`.
    pub fn read(&self) -> [u64; 5] {
        [
            &self.passed,
            &self.repeated,
            &self.empty_rollbacks,
            &self.suspended,
            &self.raced,
        ]
        .map(|c| c.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hint_is_read_and_checked() {
        let tcc = |xid: &str, branch_id, phase| {
            Some(Ok(Tcc {
                xid: String::from(xid),
                branch_id,
                phase,
            }))
        };
        assert_eq!(
            Tcc::of(b"/*+ TCC('rw-1', 42, 'try') */ UPDATE stock SET n = n - 1"),
            tcc("rw-1", 42, Phase::Try)
        );
        assert_eq!(
            Tcc::of(b"/*+ tcc(\"rw-1\", '7', 'Confirm') */ DO 1"),
            tcc("rw-1", 7, Phase::Confirm)
        );
        assert_eq!(
            Tcc::of(b" /* TCC('x',18446744073709551615,'cancel') */ DO 1"),
            tcc("x", u64::MAX, Phase::Cancel)
        );
        assert_eq!(Tcc::of(b"UPDATE t SET a = 1"), None);
        assert_eq!(Tcc::of(b"/*+ XID('rw-1') */ UPDATE t SET a = 1"), None);
        assert_eq!(Tcc::of(b"/*+ NOTCC('x', 1, 'try') */ DO 1"), None);
        for bad in [
            &b"/*+ TCC('x', 1) */ DO 1"[..],
            b"/*+ TCC('x', 1, 'try', 'more') */ DO 1",
            b"/*+ TCC('x', 1, try) */ DO 1",
            b"/*+ TCC(x, 1, 'try') */ DO 1",
            b"/*+ TCC('x', 1, 'prepare') */ DO 1",
            b"/*+ TCC('x', -1, 'try') */ DO 1",
            b"/*+ TCC('x', 'one', 'try') */ DO 1",
            b"/*+ TCC('x', 18446744073709551616, 'try') */ DO 1",
            b"/*+ TCC('', 1, 'try') */ DO 1",
            b"/*+ TCC('a b', 1, 'try') */ DO 1",
            b"/*+ TCC(1, 1, 'try') */ DO 1",
            b"/*+ TCC('x', 1, 'try' */ DO 1",
        ] {
            assert!(
                matches!(Tcc::of(bad), Some(Err(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("/*+ TCC('{}', 1, 'try') */ DO 1", "x".repeat(129));
        assert!(matches!(Tcc::of(long.as_bytes()), Some(Err(_))));
        let longest = format!("/*+ TCC('{}', 1, 'try') */ DO 1", "x".repeat(128));
        assert!(matches!(Tcc::of(longest.as_bytes()), Some(Ok(_))));
    }

    #[test]
    fn the_literal_insert_quotes_nothing_it_is_given() {
        let t = FenceTable::new("rewind");
        let tcc = Tcc {
            xid: "rw-'1".into(),
            branch_id: 9,
            phase: Phase::Try,
        };
        assert_eq!(
            t.insert_literal(&tcc, Phase::Try, Phase::Try),
            "INSERT INTO `rewind`.`tcc_fence` (xid, branch_id, phase, origin, created) VALUES \
             (X'72772D2731', 9, 'try', 'try', UTC_TIMESTAMP(6))"
        );
    }
}
