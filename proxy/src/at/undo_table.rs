//! The `undo_log` table on each backend: its DDL and every statement on it.
//!
//! One row per branch, keyed by (xid, branch_id). `log_status` 0 is a normal record
//! written in phase one, in the same local transaction as the business writes; 1 is the
//! "global finished" marker a rollback inserts when it finds no record (the branch's
//! phase one has not committed yet): the late phase one then fails on the primary key
//! instead of committing a write nobody will undo. Timestamps are UTC.

use rewind_undo_log::undo_sql::quote_ident;

pub const STATUS_NORMAL: i32 = 0;
pub const STATUS_MARKER: i32 = 1;
/// `context` of records this version writes: the codec of `rollback_info`.
pub const CONTEXT: &str = "rewind/1";
/// The largest undo record sent in one query with the client's COMMIT
/// ([`UndoTable::insert_then`]): its hex literal is twice as long, so the query stays far
/// below the smallest `max_allowed_packet` in use (1 MiB). Larger records take the
/// prepared insert, which sends long data in chunks, and a round trip of their own.
pub const WITH_COMMIT_MAX: usize = 64 * 1024;

/// Statements on `<schema>.undo_log`.
#[derive(Debug, Clone)]
pub struct UndoTable {
    schema: String,
    table: String,
}

impl UndoTable {
    pub fn new(schema: &str) -> Self {
        UndoTable {
            schema: quote_ident(schema),
            table: format!("{}.`undo_log`", quote_ident(schema)),
        }
    }

    /// Creates the schema and table when missing (run at start and before phase two).
    pub fn ddl(&self) -> [String; 2] {
        [
            format!("CREATE DATABASE IF NOT EXISTS {}", self.schema),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\
                 branch_id BIGINT UNSIGNED NOT NULL, \
                 xid VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL, \
                 context VARCHAR(128) NOT NULL, \
                 rollback_info LONGBLOB NOT NULL, \
                 log_status INT NOT NULL, \
                 log_created DATETIME(6) NOT NULL, \
                 log_modified DATETIME(6) NOT NULL, \
                 PRIMARY KEY (xid, branch_id), \
                 KEY idx_log_created (log_created)\
                 ) ENGINE=InnoDB",
                self.table
            ),
        ]
    }

    /// Phase one: the branch's record (params: branch_id, xid, rollback_info).
    pub fn insert(&self) -> String {
        self.insert_of("?", "?", "?")
    }

    /// The record's insert with these SQL expressions for its branch_id, xid and
    /// rollback_info: placeholders ([`Self::insert`]) or values ([`Self::insert_then`]).
    fn insert_of(&self, branch_id: &str, xid: &str, info: &str) -> String {
        format!(
            "INSERT INTO {} (branch_id, xid, context, rollback_info, log_status, log_created, \
             log_modified) VALUES ({branch_id}, {xid}, '{CONTEXT}', {info}, {STATUS_NORMAL}, \
             UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))",
            self.table
        )
    }

    /// Phase one's record and the client's own `commit` statement in one multi-statement
    /// query: a round trip less per branch. The server stops a multi-statement query at
    /// the first statement that fails, so the COMMIT never runs without the record. The
    /// values are written in (the record as a hex literal, so no quoting or SQL mode can
    /// change it); `None` for a record over [`WITH_COMMIT_MAX`] bytes, or an XID that is not
    /// one the coordinator issues (only those are written into SQL text).
    pub fn insert_then(
        &self,
        branch_id: u64,
        xid: &str,
        info: &[u8],
        commit: &[u8],
    ) -> Option<Vec<u8>> {
        if info.len() > WITH_COMMIT_MAX || rewind_protocol::xid::parse(xid).is_none() {
            return None;
        }
        let info = format!("X'{}'", rewind_undo_log::undo_sql::hex_digits(info));
        let mut q = self
            .insert_of(&branch_id.to_string(), &format!("'{xid}'"), &info)
            .into_bytes();
        q.extend_from_slice(b";\n");
        q.extend_from_slice(commit);
        Some(q)
    }

    /// Rollback without a record: the anti-suspension marker (params: branch_id, xid).
    pub fn insert_marker(&self) -> String {
        format!(
            "INSERT INTO {} (branch_id, xid, context, rollback_info, log_status, log_created, \
             log_modified) VALUES (?, ?, '{CONTEXT}', '', {STATUS_MARKER}, UTC_TIMESTAMP(6), \
             UTC_TIMESTAMP(6))",
            self.table
        )
    }

    /// The record, locked for the rest of the undo transaction (params: xid, branch_id).
    pub fn select_for_update(&self) -> String {
        format!(
            "SELECT log_status, rollback_info FROM {} WHERE xid = ? AND branch_id = ? FOR UPDATE",
            self.table
        )
    }

    /// Params: xid, branch_id.
    pub fn delete_one(&self) -> String {
        format!("DELETE FROM {} WHERE xid = ? AND branch_id = ?", self.table)
    }

    /// Deletes `n` records (params: xid, branch_id per record), only normal ones: a
    /// committed global transaction never has a marker, and a marker must outlive the
    /// transaction it protects.
    pub fn delete_many(&self, n: usize) -> String {
        let one = "(xid = ? AND branch_id = ?)";
        format!(
            "DELETE FROM {} WHERE log_status = {STATUS_NORMAL} AND ({})",
            self.table,
            vec![one; n.max(1)].join(" OR ")
        )
    }

    /// Replaces a record's payload after an operator settled a row (params: info, xid,
    /// branch_id).
    pub fn update_info(&self) -> String {
        format!(
            "UPDATE {} SET rollback_info = ?, log_modified = UTC_TIMESTAMP(6) \
             WHERE xid = ? AND branch_id = ? AND log_status = {STATUS_NORMAL}",
            self.table
        )
    }

    /// Records older than `?` seconds, oldest first (params: age seconds, limit).
    pub fn older_than(&self) -> String {
        format!(
            "SELECT xid, branch_id, log_status FROM {} \
             WHERE log_created < UTC_TIMESTAMP(6) - INTERVAL ? SECOND \
             ORDER BY log_created LIMIT ?",
            self.table
        )
    }

    /// Deletes one record of a given status (params: xid, branch_id, status).
    pub fn delete_with_status(&self) -> String {
        format!(
            "DELETE FROM {} WHERE xid = ? AND branch_id = ? AND log_status = ?",
            self.table
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn statements_quote_the_schema() {
        let t = super::UndoTable::new("re`wind");
        assert!(t.ddl()[1].starts_with("CREATE TABLE IF NOT EXISTS `re``wind`.`undo_log` ("));
        assert_eq!(
            t.delete_many(2),
            "DELETE FROM `re``wind`.`undo_log` WHERE log_status = 0 AND \
             ((xid = ? AND branch_id = ?) OR (xid = ? AND branch_id = ?))"
        );
    }

    #[test]
    fn the_record_goes_with_the_commit_only_when_small_and_issued() {
        let t = super::UndoTable::new("rewind");
        let q = t.insert_then(7, "rw-42", b"\x00'\\", b"COMMIT").unwrap();
        assert_eq!(
            String::from_utf8(q).unwrap(),
            "INSERT INTO `rewind`.`undo_log` (branch_id, xid, context, rollback_info, \
             log_status, log_created, log_modified) VALUES (7, 'rw-42', 'rewind/1', \
             X'00275C', 0, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6));\nCOMMIT"
        );
        assert!(t.insert_then(7, "rw-4'2", b"x", b"COMMIT").is_none());
        let big = vec![0u8; super::WITH_COMMIT_MAX + 1];
        assert!(t.insert_then(7, "rw-42", &big, b"COMMIT").is_none());
        assert!(t.insert_then(7, "rw-42", &big[1..], b"COMMIT").is_some());
    }
}
