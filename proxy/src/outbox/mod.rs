//! The local message table (`<undo_schema>.outbox`) and its relay to a broker.
//!
//! An application writes a message by inserting a row in its own local transaction,
//! through the proxy or straight to the database; the row commits or vanishes with the
//! business change. The relay publishes it and marks it PUBLISHED only once the broker
//! confirmed it (AMQP publisher confirm, JetStream publish ack), so delivery is
//! at-least-once with a stable `message_id` (a crash between confirm and mark re-sends it;
//! JetStream drops that by `Nats-Msg-Id`, an AMQP consumer by its BARRIER).
//!
//! - When the proxy relays an OK that ends a transaction whose statements mentioned the
//!   outbox, it kicks the relay: no polling delay. A sweep every `sweep_interval_ms`
//!   catches rows written directly or stranded by a crash.
//! - A row written under an XID carries it (the AT insert path sets the column) and is held
//!   while the branch's undo record exists: until phase two of a global commit deletes it,
//!   which kicks the relay too. A global rollback deletes the row like any AT insert.
//! - Rows with the same `msg_key` leave in commit order: a key's rows are published one at
//!   a time, oldest first, and a row is never sent while an older NEW row of its key is
//!   held, in backoff, or locked by another relay (several proxies share one backend
//!   safely: `FOR UPDATE SKIP LOCKED` under READ COMMITTED, record locks only).
//! - A broker that refuses a message (unroutable, nacked, no stream for the subject) costs
//!   the row an attempt: capped exponential backoff, then DEAD after `max_attempts`. A
//!   broker that cannot be reached costs no attempts: the whole relay backs off and the
//!   backlog waits, so an outage never kills messages.
//! - PUBLISHED rows are deleted `retention_secs` after publication (by the barrier's
//!   housekeeping, which expires both); DEAD rows stay until an operator redrives them from
//!   the console (audited by the coordinator).
//!
//! - [`relay`]: the publishing loop; [`report`]: what the console shows, and redrive.

pub(crate) mod relay;
pub(crate) mod report;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rewind_undo_log::undo_sql::quote_ident;
use rewind_undo_log::TableName;
use tokio::sync::Notify;

/// Statements on `<schema>.outbox`.
#[derive(Debug, Clone)]
pub struct OutboxTable {
    schema: String,
    table: String,
    undo: String,
}

/// `last_error` is cut to this many characters.
pub const MAX_ERROR: usize = 1024;

impl OutboxTable {
    pub fn new(schema: &str) -> Self {
        OutboxTable {
            schema: schema.to_string(),
            table: format!("{}.`outbox`", quote_ident(schema)),
            undo: format!("{}.`undo_log`", quote_ident(schema)),
        }
    }

    /// Whether `name` is this table (what the AT path treats specially).
    pub fn is(&self, name: &TableName) -> bool {
        name.schema == self.schema && name.table == "outbox"
    }

    /// Creates the table when missing (the schema exists: the undo table's DDL made it).
    /// `message_id` defaults to a UUID (time, node and a per-boot random clock sequence):
    /// unique across backends, and the same on every attempt. Timestamps are UTC.
    pub fn ddl(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\
             id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT, \
             message_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL \
               DEFAULT (UUID()), \
             topic VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
             msg_key VARCHAR(191) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL, \
             payload LONGBLOB NOT NULL, \
             headers LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL, \
             status ENUM('NEW', 'PUBLISHED', 'DEAD') NOT NULL DEFAULT 'NEW', \
             attempts INT UNSIGNED NOT NULL DEFAULT 0, \
             next_attempt_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)), \
             last_error VARCHAR({MAX_ERROR}) NULL, \
             xid VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL, \
             created_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)), \
             published_at DATETIME(6) NULL, \
             PRIMARY KEY (id), \
             UNIQUE KEY uk_message_id (message_id), \
             KEY idx_status (status, id), \
             CONSTRAINT outbox_topic CHECK (topic <> ''), \
             CONSTRAINT outbox_headers CHECK (headers IS NULL OR \
               (JSON_VALID(headers) AND JSON_TYPE(headers) = 'OBJECT'))\
             ) ENGINE=InnoDB",
            self.table
        )
    }

    /// The oldest NEW rows, without locking (params: limit): per row whether it is due,
    /// whether its global transaction still holds it, and how long until it is due.
    pub fn candidates(&self) -> String {
        format!(
            "SELECT o.id, o.msg_key, o.next_attempt_at <= UTC_TIMESTAMP(6) AS due, \
             (o.xid IS NOT NULL AND EXISTS (SELECT 1 FROM {undo} u WHERE u.xid = o.xid)) \
               AS held, \
             GREATEST(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), o.next_attempt_at), 0) \
               AS wait_us \
             FROM {table} o WHERE o.status = 'NEW' ORDER BY o.id LIMIT ?",
            undo = self.undo,
            table = self.table
        )
    }

    /// Locks `n` chosen rows that are still NEW, skipping rows another relay holds.
    pub fn lock(&self, n: usize) -> String {
        format!(
            "SELECT id, message_id, topic, msg_key, payload, headers, attempts FROM {} \
             WHERE id IN ({}) AND status = 'NEW' ORDER BY id FOR UPDATE SKIP LOCKED",
            self.table,
            vec!["?"; n.max(1)].join(", ")
        )
    }

    /// Marks `n` rows published.
    pub fn published(&self, n: usize) -> String {
        format!(
            "UPDATE {} SET status = 'PUBLISHED', attempts = attempts + 1, \
             published_at = UTC_TIMESTAMP(6), last_error = NULL WHERE id IN ({})",
            self.table,
            vec!["?"; n.max(1)].join(", ")
        )
    }

    /// A refused attempt (params: attempts, status, backoff µs, error, id).
    pub fn failed(&self) -> String {
        format!(
            "UPDATE {} SET attempts = ?, status = ?, \
             next_attempt_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, last_error = ? \
             WHERE id = ?",
            self.table
        )
    }

    /// Params: retention in seconds. At most 5,000 rows per statement, oldest first: rows
    /// are published roughly in id order, so the scan of `idx_status`'s PUBLISHED range
    /// stops early (one index fewer for every insert and mark to maintain).
    pub fn expire(&self) -> String {
        format!(
            "DELETE FROM {} WHERE status = 'PUBLISHED' \
             AND published_at < UTC_TIMESTAMP(6) - INTERVAL ? SECOND ORDER BY id LIMIT 5000",
            self.table
        )
    }

    /// One DEAD message back to NEW, attempts cleared (params: message id).
    pub fn redrive(&self) -> String {
        format!(
            "UPDATE {} SET status = 'NEW', attempts = 0, next_attempt_at = UTC_TIMESTAMP(6), \
             last_error = LEFT(CONCAT('redriven by an operator; was: ', \
               IFNULL(last_error, '')), {MAX_ERROR}) \
             WHERE message_id = ? AND status = 'DEAD'",
            self.table
        )
    }

    /// NEW and DEAD counts, held rows and the oldest row's age, per status.
    pub fn counts(&self) -> String {
        format!(
            "SELECT o.status, COUNT(*), \
             SUM(o.xid IS NOT NULL AND EXISTS (SELECT 1 FROM {undo} u WHERE u.xid = o.xid)), \
             TIMESTAMPDIFF(MICROSECOND, MIN(o.created_at), UTC_TIMESTAMP(6)) \
             FROM {table} o WHERE o.status IN ('NEW', 'DEAD') GROUP BY o.status",
            undo = self.undo,
            table = self.table
        )
    }

    /// The newest DEAD rows (params: limit).
    pub fn dead(&self) -> String {
        format!(
            "SELECT message_id, topic, IFNULL(msg_key, ''), attempts, IFNULL(last_error, ''), \
             CAST(UNIX_TIMESTAMP(created_at) * 1000 AS UNSIGNED) \
             FROM {} WHERE status = 'DEAD' ORDER BY id DESC LIMIT ?",
            self.table
        )
    }

    /// Sets the XID of rows an AT insert wrote (params: xid, then `n` ids).
    pub fn hold(&self, n: usize) -> String {
        format!(
            "UPDATE {} SET xid = ? WHERE id IN ({})",
            self.table,
            vec!["?"; n.max(1)].join(", ")
        )
    }
}

/// Whether a statement's text may write the outbox: a cheap, case-insensitive look for
/// the word (false positives only cost a sweep).
pub fn mentions_outbox(sql: &[u8]) -> bool {
    crate::classify::mentions(sql, b"outbox")
}

/// What sessions, phase two and the relay share about the outbox.
#[derive(Default)]
pub struct Outbox {
    /// Wakes the relay (a permit is kept when it is busy, so no kick is lost).
    kick: Notify,
    /// Whether a relay runs at all (a broker is configured).
    pub enabled: bool,
    pub published: AtomicU64,
    pub failed: AtomicU64,
    pub barrier_duplicates: AtomicU64,
    /// The relay's last error; empty after a success.
    pub last_error: Mutex<String>,
}

impl Outbox {
    pub fn new(enabled: bool) -> Self {
        Outbox {
            enabled,
            ..Outbox::default()
        }
    }

    /// Asks the relay to sweep now.
    pub fn kick(&self) {
        if self.enabled {
            self.kick.notify_one();
        }
    }

    pub(crate) async fn kicked(&self) {
        self.kick.notified().await
    }

    pub(crate) fn note_error(&self, e: Option<String>) {
        if let Ok(mut last) = self.last_error.lock() {
            match e {
                Some(e) => *last = e,
                None => last.clear(),
            }
        }
    }

    pub(crate) fn count(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_word_is_found_in_any_case() {
        assert!(mentions_outbox(
            b"INSERT INTO rewind.OutBox (topic) VALUES ('x')"
        ));
        assert!(mentions_outbox(b"insert into `outbox` values ()"));
        assert!(!mentions_outbox(b"INSERT INTO orders VALUES (1)"));
        assert!(!mentions_outbox(b"out"));
    }

    #[test]
    fn statements_quote_the_schema() {
        let t = OutboxTable::new("re`wind");
        assert!(t
            .ddl()
            .starts_with("CREATE TABLE IF NOT EXISTS `re``wind`.`outbox` ("));
        assert!(t.candidates().contains("FROM `re``wind`.`undo_log` u"));
        assert!(t.lock(2).contains("WHERE id IN (?, ?) AND status = 'NEW'"));
        assert!(t.is(&TableName::new("re`wind", "outbox")));
        assert!(!t.is(&TableName::new("re`wind", "OUTBOX")));
        assert!(!t.is(&TableName::new("rewind", "outbox")));
    }
}
