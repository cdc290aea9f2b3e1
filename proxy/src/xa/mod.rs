//! XA mode: a local transaction tagged `/*+ XA('<xid>') */` (or `XID('<xid>')` with
//! `branch_mode = "xa"`) runs as an XA branch of the global transaction. The proxy runs
//! `XA START` where the client began its transaction; every statement then runs as the
//! client sent it (the database, not the proxy, decides what an XA transaction accepts);
//! the client's COMMIT becomes a proof row, `XA END`, `XA PREPARE` and the branch's
//! registration with the coordinator, and the client gets its OK only after all of them.
//! Phase two is `XA COMMIT` / `XA ROLLBACK`.
//!
//! MariaDB lets a session that prepared an XA transaction run nothing else that touches
//! a table, and lets no other session commit it while that one is connected. So the
//! prepared branch keeps its backend connection (pinned, for phase two) and the client's
//! session continues on a new one, with its session and user variables, its current
//! database and its prepared statements carried over ([`state`]).
//!
//! What proves the outcome: each branch inserts a row into `<undo_schema>.xa_branch`
//! inside itself. An `XA COMMIT` answered `XAER_NOTA` (a retry after a lost answer, or a
//! branch another connection finished) counts as committed only if that row is there;
//! without it, a branch still listed by `XA RECOVER` is held by another session, and one
//! that is not was rolled back (never success for a commit).
//!
//! - [`session`]: the client session's side (binding, COMMIT, ROLLBACK, disconnect).
//! - [`phase_two`]: XA COMMIT / ROLLBACK for the coordinator, and recovery of prepared
//!   branches nobody registered.
//! - [`lock_waits`]: the backend sessions waiting on the row locks of the branches held
//!   here, for the coordinator's console.
//! - [`state`]: carrying a session over to a new backend connection.

pub(crate) mod lock_waits;
pub(crate) mod phase_two;
pub(crate) mod session;
pub(crate) mod state;

use std::collections::HashMap;
use std::sync::Mutex;

use mysql_async::Conn;
use rewind_undo_log::undo_sql::{hex_digits as hex, quote_ident};

use crate::config::BranchMode;

/// The formatID of Rewind's XA transactions ("RWND"): `XA RECOVER` rows with another one
/// belong to someone else and are never touched.
pub const FORMAT_ID: u32 = u32::from_be_bytes(*b"RWND");

/// MySQL's limit on each of gtrid and bqual.
const MAX_XA_PART: usize = 64;

/// The XA tag of a statement: `XA('<xid>')`, or `XID('<xid>')` when plain tags mean XA.
/// `Err` names what is wrong with an XA hint that is there but unusable.
pub fn tag_of(sql: &[u8], mode: BranchMode) -> Option<Result<String, &'static str>> {
    const USAGE: &str = "XA takes one argument: XA('<xid>')";
    if let Some(args) = crate::xid::leading_hint(sql, b"XA") {
        let Ok(args) = args else {
            return Some(Err(USAGE));
        };
        let [crate::xid::HintArg::Quoted(xid)] = args.as_slice() else {
            return Some(Err(USAGE));
        };
        return Some(check_xid(xid));
    }
    if mode == BranchMode::Xa {
        return crate::xid::leading_xid(sql).map(check_xid);
    }
    None
}

fn check_xid(xid: &[u8]) -> Result<String, &'static str> {
    if xid.is_empty() || xid.len() > MAX_XA_PART || !xid.iter().all(u8::is_ascii_graphic) {
        return Err("an XA branch's xid must be 1 to 64 printable ASCII characters");
    }
    Ok(String::from_utf8_lossy(xid).into_owned())
}

/// An XA transaction id as the database knows it: (gtrid = the global XID, bqual = the
/// branch qualifier the proxy chose, formatID = [`FORMAT_ID`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct XaId {
    pub xid: String,
    pub bqual: String,
}

impl XaId {
    /// A new branch of `xid`: a random 128-bit qualifier, unique across proxies.
    pub fn new(xid: String) -> XaId {
        XaId {
            xid,
            bqual: format!("{:032x}", rand::random::<u128>()),
        }
    }

    /// `X'…',X'…',<formatID>`: hex literals, so no quoting or SQL mode can change them.
    pub fn sql(&self) -> String {
        format!(
            "X'{}',X'{}',{FORMAT_ID}",
            hex(self.xid.as_bytes()),
            hex(self.bqual.as_bytes())
        )
    }

    /// `XA <verb> <id>`.
    pub fn statement(&self, verb: &str) -> String {
        format!("XA {verb} {}", self.sql())
    }

    /// One `XA RECOVER` row: (formatID, gtrid_length, bqual_length, data). `None` for a
    /// row that is not one of Rewind's.
    pub fn of_recover_row(format_id: i64, gtrid_len: usize, data: &[u8]) -> Option<XaId> {
        if format_id != i64::from(FORMAT_ID) || gtrid_len > data.len() {
            return None;
        }
        let (gtrid, bqual) = data.split_at(gtrid_len);
        Some(XaId {
            xid: std::str::from_utf8(gtrid).ok()?.to_string(),
            bqual: std::str::from_utf8(bqual).ok()?.to_string(),
        })
    }
}

/// Statements on `<schema>.xa_branch`, the proof rows.
#[derive(Debug, Clone)]
pub struct ProofTable {
    table: String,
}

impl ProofTable {
    pub fn new(schema: &str) -> Self {
        ProofTable {
            table: format!("{}.`xa_branch`", quote_ident(schema)),
        }
    }

    pub fn ddl(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\
             gtrid VARBINARY({MAX_XA_PART}) NOT NULL, \
             bqual VARBINARY({MAX_XA_PART}) NOT NULL, \
             created DATETIME(6) NOT NULL, \
             PRIMARY KEY (gtrid, bqual), \
             KEY idx_created (created)\
             ) ENGINE=InnoDB",
            self.table
        )
    }

    /// The proof row of `id`, values inline (hex literals), for a multi-statement query.
    pub fn insert_literal(&self, id: &XaId) -> String {
        format!(
            "INSERT INTO {} (gtrid, bqual, created) VALUES (X'{}', X'{}', UTC_TIMESTAMP(6))",
            self.table,
            hex(id.xid.as_bytes()),
            hex(id.bqual.as_bytes())
        )
    }

    /// Params: gtrid, bqual. One row when the branch committed.
    pub fn select(&self) -> String {
        format!("SELECT 1 FROM {} WHERE gtrid = ? AND bqual = ?", self.table)
    }

    /// Params: retention in seconds.
    pub fn expire(&self) -> String {
        format!(
            "DELETE FROM {} WHERE created < UTC_TIMESTAMP(6) - INTERVAL ? SECOND LIMIT 5000",
            self.table
        )
    }
}

/// Backend connections of prepared XA branches, kept for their phase two, by qualifier.
#[derive(Default)]
pub struct Pinned {
    conns: Mutex<HashMap<String, Conn>>,
}

impl Pinned {
    /// Keeps `conn` for branch `bqual`; hands it back when `max` are kept already.
    pub fn pin(&self, bqual: String, conn: Conn, max: usize) -> Result<(), Conn> {
        let mut m = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= max {
            return Err(conn);
        }
        m.insert(bqual, conn);
        Ok(())
    }

    pub fn take(&self, bqual: &str) -> Option<Conn> {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(bqual)
    }

    pub fn holds(&self, bqual: &str) -> bool {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(bqual)
    }

    /// How many connections are kept (for `/metrics`).
    pub fn count(&self) -> usize {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Every kept connection, for closing at shutdown.
    pub fn drain(&self) -> Vec<Conn> {
        let mut m = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        m.drain().map(|(_, c)| c).collect()
    }

    /// (qualifier, backend thread id) of every pinned connection: InnoDB names that
    /// thread as the blocker of whoever waits on the branch's row locks.
    pub fn threads(&self) -> Vec<(String, u32)> {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(bqual, conn)| (bqual.clone(), conn.id()))
            .collect()
    }
}

/// Closes a connection for good: a connection whose XA transaction is not known to be
/// finished never goes back to the pool (one whose XA COMMIT or ROLLBACK succeeded does).
pub async fn discard(conn: Conn) {
    if let Err(e) = conn.disconnect().await {
        tracing::debug!(error = %e, "closing an XA connection failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        let xa = |s: &str, m| tag_of(s.as_bytes(), m);
        assert_eq!(
            xa("/*+ XA('rw-1') */ UPDATE t SET a = 1", BranchMode::At),
            Some(Ok("rw-1".into()))
        );
        assert_eq!(
            xa("/*+ XID('rw-1') */ UPDATE t SET a = 1", BranchMode::At),
            None
        );
        assert_eq!(
            xa("/*+ XID('rw-1') */ UPDATE t SET a = 1", BranchMode::Xa),
            Some(Ok("rw-1".into()))
        );
        assert!(matches!(
            xa("/*+ XA(rw) */ DO 1", BranchMode::At),
            Some(Err(_))
        ));
        assert!(matches!(
            xa("/*+ XA('a', 'b') */ DO 1", BranchMode::At),
            Some(Err(_))
        ));
        let long = format!("/*+ XA('{}') */ DO 1", "x".repeat(65));
        assert!(matches!(xa(&long, BranchMode::At), Some(Err(_))));
        assert_eq!(xa("/*+ MAXA('x') */ DO 1", BranchMode::At), None);
    }

    #[test]
    fn ids_round_trip_through_recover_rows() {
        let id = XaId::new("rw-42".into());
        assert_eq!(id.bqual.len(), 32);
        let mut data = id.xid.as_bytes().to_vec();
        data.extend_from_slice(id.bqual.as_bytes());
        assert_eq!(
            XaId::of_recover_row(i64::from(FORMAT_ID), 5, &data),
            Some(id.clone())
        );
        assert_eq!(XaId::of_recover_row(1, 5, &data), None);
        assert_eq!(XaId::of_recover_row(i64::from(FORMAT_ID), 99, &data), None);
        assert_eq!(
            XaId {
                xid: "a".into(),
                bqual: "b".into()
            }
            .statement("START"),
            format!("XA START X'61',X'62',{FORMAT_ID}")
        );
    }
}
