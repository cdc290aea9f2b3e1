//! Half messages, the proxy's side: a producer's local transaction carries
//! `/*+ MSG('<message_id>') */` on a statement (a message prepared through the
//! coordinator's `POST /api/v1/messages`), and the proxy makes the message's fate the
//! transaction's:
//!
//! - before anything is written the coordinator is told which resource the message's
//!   local transaction runs on (`BindMessage`); a message unknown, already decided or bound
//!   elsewhere is refused with 1397 and nothing is applied;
//! - the message's check row (`<undo_schema>.msg_check`, origin `tx`) goes in first, in the
//!   client's own local transaction (insert-first, through [`crate::session::guarded`]), so
//!   the row commits exactly when the transaction does. A duplicate key means the message
//!   is gone already: cancelled by check-back (origin `probe`) or committed by another
//!   transaction (origin `tx`): 1397, the transaction rolled back;
//! - when the transaction ends the session tells the coordinator (`DecideMessage`): commit
//!   once the COMMIT's OK reached the client, rollback on ROLLBACK, a failed COMMIT or a
//!   client gone. When the proxy cannot be sure (a ROLLBACK TO SAVEPOINT, an implicit
//!   commit, a lost connection during COMMIT) it says nothing and the coordinator's
//!   check-back finds the truth in the database;
//! - check-back ([`check`]): a proxy of the resource inserts the row itself with origin
//!   `probe`. It going in means the producer's never committed, and now never can; a
//!   duplicate means it did; a lock wait means the producer's transaction still runs;
//! - a BARRIER whose local transaction commits through the proxy reports its
//!   (consumer, message id) pair, batched on the Attach stream ([`consumed`]): the
//!   coordinator marks the message consumed.
//!
//! Check rows are deleted [`Config::barrier_retention_secs`](crate::Config) after they were
//! written, with the barrier's pairs.
//!
//! - [`session`]: the statement's path through a client session, and the decision when its
//!   transaction ends.
//! - [`check`]: the check-back probe.
//! - [`consumed`]: the queue of committed barrier pairs and its sender.

pub(crate) mod check;
pub(crate) mod consumed;
pub(crate) mod session;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use rewind_undo_log::undo_sql::quote_ident;

use crate::coordinator::CallError;
use crate::xid::HintArg;
use crate::Shared;

/// The key column's length: 191 characters of utf8mb4 fit InnoDB's index limit anywhere.
const MAX_LEN: usize = 191;

/// A statement's half message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub message_id: String,
}

impl Msg {
    /// The `MSG('<message_id>')` hint of a statement's leading comment. `Err` names what is
    /// wrong with a hint that is there but unusable.
    pub fn of(sql: &[u8]) -> Option<Result<Msg, &'static str>> {
        const USAGE: &str = "MSG takes one quoted argument: MSG('<message_id>')";
        let Ok(args) = crate::xid::leading_hint(sql, b"MSG")? else {
            return Some(Err(USAGE));
        };
        let [HintArg::Quoted(id)] = args.as_slice() else {
            return Some(Err(USAGE));
        };
        Some(match std::str::from_utf8(id) {
            Ok(id) if !id.is_empty() && id.chars().count() <= MAX_LEN => Ok(Msg {
                message_id: id.to_string(),
            }),
            Ok(id) if !id.is_empty() => Err("MSG message id is at most 191 characters"),
            _ => Err("MSG message id must be non-empty UTF-8"),
        })
    }
}

/// Who wrote a check row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The producer's local transaction.
    Tx,
    /// A check-back probe, which found the producer's row missing.
    Probe,
}

impl Origin {
    /// The `origin` column's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Tx => "tx",
            Origin::Probe => "probe",
        }
    }

    pub fn parse(s: &str) -> Option<Origin> {
        match s {
            "tx" => Some(Origin::Tx),
            "probe" => Some(Origin::Probe),
            _ => None,
        }
    }
}

/// Statements on `<schema>.msg_check`.
#[derive(Debug, Clone)]
pub struct CheckTable {
    table: String,
}

impl CheckTable {
    pub fn new(schema: &str) -> Self {
        CheckTable {
            table: format!("{}.`msg_check`", quote_ident(schema)),
        }
    }

    /// Creates the table when missing (the schema exists: the undo table's DDL made it).
    /// Message ids compare byte for byte: two ids differing in case are two messages.
    pub fn ddl(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\
             message_id VARCHAR({MAX_LEN}) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL \
             PRIMARY KEY, \
             origin VARCHAR(8) CHARACTER SET ascii COLLATE ascii_bin NOT NULL, \
             created_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3), \
             KEY idx_created (created_at)\
             ) ENGINE=InnoDB",
            self.table
        )
    }

    /// Params: message id, origin.
    pub fn insert(&self) -> String {
        format!(
            "INSERT INTO {} (message_id, origin) VALUES (?, ?)",
            self.table
        )
    }

    /// Params: message id. A locking read: after a duplicate key it reads the committed
    /// row whatever the transaction's snapshot.
    pub fn origin(&self) -> String {
        format!(
            "SELECT origin FROM {} WHERE message_id = ? LOCK IN SHARE MODE",
            self.table
        )
    }

    /// Params: retention in seconds. At most 5,000 rows per statement.
    pub fn expire(&self) -> String {
        format!(
            "DELETE FROM {} WHERE created_at < CURRENT_TIMESTAMP(3) - INTERVAL ? SECOND \
             LIMIT 5000",
            self.table
        )
    }
}

/// How a local transaction holding half messages ended, as far as the proxy can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Its COMMIT answered OK: the messages are confirmed.
    Commit,
    /// It was rolled back (ROLLBACK, a COMMIT the server refused, the client gone): the
    /// messages are cancelled.
    Rollback,
    /// It ended, but how is not known here (an implicit commit, a connection lost during
    /// COMMIT): nothing is sent, check-back decides.
    Unsure,
    /// It goes on, but a ROLLBACK TO SAVEPOINT may have removed check rows: those messages
    /// are left to check-back.
    Partial,
}

/// What a command's result says for [`ending`]: OK, a backend error (its code), or a
/// failure of the proxy's own (a lost connection, a refusal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ok,
    Backend(u16),
    Other,
}

/// How the statement just answered (`kind`; `single`: nothing stacked after it) left the
/// local transaction holding pending marks; `in_trans`: the backend's in-transaction flag
/// after an OK answer. `None`: the transaction goes on.
pub fn ending(
    kind: &crate::classify::Kind,
    single: bool,
    answer: Answer,
    in_trans: bool,
) -> Option<End> {
    use crate::classify::Kind;
    match (kind, answer) {
        (Kind::Commit, Answer::Ok) => Some(End::Commit),
        // The server refused the COMMIT: InnoDB rolled the transaction back. A statement
        // stacked after it may be the one that failed, though.
        (Kind::Commit, Answer::Backend(_)) if single => Some(End::Rollback),
        // The connection went during the COMMIT: it may have committed.
        (Kind::Commit, _) => Some(End::Unsure),
        // A ROLLBACK whose connection is lost rolls back all the same.
        (Kind::Rollback, _) => Some(End::Rollback),
        (Kind::RollbackTo(_), Answer::Ok) => Some(End::Partial),
        // BEGIN commits the open transaction implicitly.
        (Kind::Begin, Answer::Ok) => Some(End::Unsure),
        // A deadlock victim's transaction is rolled back; left to check-back all the same,
        // so that the client's retry may use the message again (a cancelled one it could not).
        (_, Answer::Backend(1213)) => Some(End::Unsure),
        (_, Answer::Ok) if !in_trans => Some(End::Unsure),
        _ => None,
    }
}

/// The proxy's half-message figures (for `/metrics`) and the queue of consumed pairs.
#[derive(Default)]
pub struct Messages {
    /// Committed barrier pairs waiting for the Attach stream.
    pub(crate) consumed: consumed::Queue,
    /// MSG tags the coordinator accepted.
    pub bound: AtomicU64,
    /// Messages by [`End`]: commit, rollback, unsure (which counts `Partial` too).
    pub decided: [AtomicU64; 3],
    /// Check-back probes by outcome: committed, rolled back, running, failure.
    pub checks: [AtomicU64; 4],
}

impl Messages {
    pub(crate) fn count_decided(&self, end: End, n: usize) {
        let i = match end {
            End::Commit => 0,
            End::Rollback => 1,
            End::Unsure | End::Partial => 2,
        };
        self.decided[i].fetch_add(n as u64, Relaxed);
    }

    pub fn read(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }
}

/// Attempts of a `DecideMessage` the coordinator did not answer, and the pause between
/// them (each attempt itself retries for `coordinator_retry_ms`): after the last,
/// check-back decides.
const DECIDE_ATTEMPTS: u32 = 3;
const DECIDE_PAUSE: Duration = Duration::from_millis(200);

/// Tells the coordinator, on a task of its own (the client never waits for it), that the
/// local transaction carrying `ids` committed or rolled back.
pub(crate) fn decide(shared: Arc<Shared>, ids: Vec<String>, commit: bool) {
    tokio::spawn(async move {
        if commit {
            crate::failpoint::hit("msg-before-decide").await;
        }
        for id in ids {
            decide_one(&shared, &id, commit).await;
        }
    });
}

async fn decide_one(shared: &Shared, id: &str, commit: bool) {
    for attempt in 1..=DECIDE_ATTEMPTS {
        match shared
            .coordinator
            .decide_message(id, commit, &shared.resource_id)
            .await
        {
            Ok(status) => {
                tracing::debug!(message_id = %id, commit, %status, "half message decided");
                return;
            }
            Err(CallError::NotActive(why)) => {
                tracing::warn!(message_id = %id, commit, %why, "half message decided the other way elsewhere");
                return;
            }
            Err(e @ (CallError::NotFound(_) | CallError::Invalid(_))) => {
                tracing::warn!(message_id = %id, commit, error = %e, "half message decision refused");
                return;
            }
            Err(CallError::Unavailable(why)) if attempt == DECIDE_ATTEMPTS => {
                tracing::warn!(message_id = %id, commit, %why, "half message decision not delivered; check-back will decide");
            }
            Err(CallError::Unavailable(_)) => tokio::time::sleep(DECIDE_PAUSE).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Kind;

    #[test]
    fn the_hint_is_read_and_checked() {
        assert_eq!(
            Msg::of(b"/*+ MSG('m-1') */ INSERT INTO orders VALUES (1)"),
            Some(Ok(Msg {
                message_id: "m-1".into()
            }))
        );
        assert_eq!(
            Msg::of(b" /*+ msg(\"m-2\") */ UPDATE t SET a = 1"),
            Some(Ok(Msg {
                message_id: "m-2".into()
            }))
        );
        assert_eq!(Msg::of(b"INSERT INTO t VALUES (1)"), None);
        assert_eq!(Msg::of(b"/*+ XMSG('m') */ DO 1"), None);
        assert_eq!(Msg::of(b"DO 1 /*+ MSG('m') */"), None);
        // Named but unusable: an error, never a statement run without its message.
        for bad in [
            &b"/*+ MSG() */ DO 1"[..],
            b"/*+ MSG('') */ DO 1",
            b"/*+ MSG(42) */ DO 1",
            b"/*+ MSG('a', 'b') */ DO 1",
            b"/*+ MSG(m) */ DO 1",
            b"/*+ MSG('m' */ DO 1",
            b"/*+ MSG('\xff') */ DO 1",
        ] {
            assert!(
                matches!(Msg::of(bad), Some(Err(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("/*+ MSG('{}') */ DO 1", "é".repeat(192));
        assert!(matches!(Msg::of(long.as_bytes()), Some(Err(_))));
        let longest = format!("/*+ MSG('{}') */ DO 1", "é".repeat(191));
        assert!(matches!(Msg::of(longest.as_bytes()), Some(Ok(_))));
    }

    #[test]
    fn origins_round_trip() {
        for o in [Origin::Tx, Origin::Probe] {
            assert_eq!(Origin::parse(o.as_str()), Some(o));
        }
        assert_eq!(Origin::parse("TX"), None);
    }

    #[test]
    fn commit_and_rollback_decide_the_rest_is_unsure() {
        let end = |k: Kind, single, a, in_trans| ending(&k, single, a, in_trans);
        assert_eq!(
            end(Kind::Commit, true, Answer::Ok, false),
            Some(End::Commit)
        );
        // COMMIT AND CHAIN: committed, and a new transaction is open.
        assert_eq!(end(Kind::Commit, true, Answer::Ok, true), Some(End::Commit));
        assert_eq!(
            end(Kind::Commit, true, Answer::Backend(1180), true),
            Some(End::Rollback)
        );
        assert_eq!(
            end(Kind::Commit, false, Answer::Backend(1064), false),
            Some(End::Unsure)
        );
        assert_eq!(
            end(Kind::Commit, true, Answer::Other, false),
            Some(End::Unsure)
        );
        assert_eq!(
            end(Kind::Rollback, true, Answer::Ok, false),
            Some(End::Rollback)
        );
        assert_eq!(
            end(Kind::Rollback, true, Answer::Other, true),
            Some(End::Rollback)
        );
        assert_eq!(
            end(Kind::RollbackTo("s".into()), true, Answer::Ok, true),
            Some(End::Partial)
        );
        assert_eq!(
            end(
                Kind::RollbackTo("s".into()),
                true,
                Answer::Backend(1305),
                true
            ),
            None
        );
        assert_eq!(end(Kind::Begin, true, Answer::Ok, true), Some(End::Unsure));
        // DDL's implicit commit, `SET autocommit = 1`, a stacked COMMIT: the flag is off.
        assert_eq!(
            end(Kind::Other("CREATE".into()), true, Answer::Ok, false),
            Some(End::Unsure)
        );
        assert_eq!(end(Kind::Set, true, Answer::Ok, false), Some(End::Unsure));
        assert_eq!(
            end(Kind::Insert, false, Answer::Ok, false),
            Some(End::Unsure)
        );
        // The transaction goes on.
        assert_eq!(end(Kind::Insert, true, Answer::Ok, true), None);
        assert_eq!(end(Kind::Insert, true, Answer::Backend(1062), true), None);
        assert_eq!(end(Kind::Update, true, Answer::Backend(1205), true), None);
        assert_eq!(
            end(Kind::Update, true, Answer::Backend(1213), false),
            Some(End::Unsure)
        );
    }

    #[test]
    fn the_table_is_the_undo_schemas() {
        let t = CheckTable::new("rewind");
        assert!(t
            .ddl()
            .starts_with("CREATE TABLE IF NOT EXISTS `rewind`.`msg_check` ("));
        assert!(t.insert().contains("(message_id, origin) VALUES (?, ?)"));
    }
}
