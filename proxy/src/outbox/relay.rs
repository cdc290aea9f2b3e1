//! The relay: sweeps `<undo_schema>.outbox` and publishes what is due.
//!
//! One sweep, on its own backend connection under READ COMMITTED:
//! 1. read the oldest NEW rows without locking, with whether each is due and whether its
//!    global transaction still holds it;
//! 2. choose what may go: for each `msg_key`, the leading run of due, unheld rows (a key
//!    stops at its first row that may not go yet, so nothing overtakes it); rows without a
//!    key each on their own;
//! 3. lock the chosen rows that are still NEW, `FOR UPDATE SKIP LOCKED`; a key also stops
//!    at its first chosen row another relay has locked;
//! 4. publish: keys in parallel, each key's rows one after the other, each confirmed by the
//!    broker before the next; a key stops at its first failure;
//! 5. mark the confirmed rows PUBLISHED and charge refused ones an attempt, then commit.
//!
//! A crash anywhere before 5 commits leaves the rows NEW (locks die with the connection),
//! so they are sent again with the same message id.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Pool, Row, Value};
use rewind_broker::{BrokerConfig, Message, PublishError, Publisher};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::MAX_ERROR;
use crate::Shared;

/// Runs until `shutdown` when a broker is configured.
pub async fn run(shared: Arc<Shared>, pool: Pool, shutdown: CancellationToken) {
    let cfg = &shared.config.outbox;
    let mut broker = BrokerConfig::new(cfg.broker.clone());
    broker.exchange = cfg.exchange.clone();
    broker.mandatory = cfg.mandatory;
    broker.timeout = Duration::from_millis(cfg.publish_timeout_ms);
    let publisher = match Publisher::new(broker) {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "outbox relay disabled");
            shared
                .outbox
                .note_error(Some(format!("relay disabled: {e}")));
            return;
        }
    };
    info!(broker = %publisher.describe(), "outbox relay running");
    let interval = Duration::from_millis(cfg.sweep_interval_ms);
    let mut wait = Duration::ZERO;
    let mut failures = 0u32;
    let mut last_sweep = std::time::Instant::now() - interval;
    loop {
        tokio::select! {
            _ = shared.outbox.kicked() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => break,
        }
        // Busy (the last sweep ended a moment ago): let a few more commits land, so one
        // sweep, one mark and one fsync serve many messages instead of one each.
        if last_sweep.elapsed() < BUSY {
            tokio::time::sleep(COALESCE).await;
        }
        wait = interval;
        loop {
            match sweep(&shared, &pool, &publisher).await {
                Ok(s) => {
                    if failures > 0 {
                        info!("outbox relay recovered");
                    }
                    failures = 0;
                    if s.published > 0 {
                        debug!(published = s.published, "outbox rows published");
                    }
                    if let Some(due) = s.next_due {
                        wait = wait.min(due);
                    }
                    if !s.more {
                        break;
                    }
                }
                Err(e) => {
                    failures += 1;
                    // The broker or the database is away: back off without listening to
                    // kicks, so a busy proxy does not hammer it.
                    let pause = crate::coordinator::backoff(failures)
                        .max(Duration::from_millis(100))
                        .min(Duration::from_secs(5));
                    if failures == 1 || failures.is_multiple_of(20) {
                        warn!(error = %e, attempt = failures, "outbox relay failed; retrying");
                    }
                    shared.outbox.note_error(Some(e));
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.cancelled() => {}
                    }
                    wait = Duration::ZERO;
                    break;
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        last_sweep = std::time::Instant::now();
    }
    publisher.close().await;
}

/// A kick this soon after the last sweep finds the relay busy …
const BUSY: Duration = Duration::from_millis(5);
/// … and waits this long before sweeping.
const COALESCE: Duration = Duration::from_millis(2);

/// What a sweep found.
#[derive(Debug, Default)]
pub(crate) struct Swept {
    /// Rows the broker confirmed.
    pub published: usize,
    /// The batch was full and something went: sweep again at once.
    pub more: bool,
    /// When the next row in backoff is due.
    pub next_due: Option<Duration>,
}

/// One candidate row as step 1 reads it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Candidate {
    pub id: u64,
    pub key: Option<String>,
    pub due: bool,
    pub held: bool,
}

/// Step 2: the rows that may go now, in id order.
pub(crate) fn choose(candidates: &[Candidate]) -> Vec<u64> {
    let mut stopped: HashSet<&str> = HashSet::new();
    let mut chosen = Vec::new();
    for c in candidates {
        let ready = c.due && !c.held;
        match &c.key {
            None if ready => chosen.push(c.id),
            None => {}
            Some(k) if stopped.contains(k.as_str()) => {}
            Some(k) if ready => chosen.push(c.id),
            Some(k) => {
                stopped.insert(k);
            }
        }
    }
    chosen
}

/// Step 3's cut: of the chosen rows (id order), those locked, each key stopping at its
/// first chosen row that was not.
pub(crate) fn cut(
    chosen: &[u64],
    keys: &HashMap<u64, Option<String>>,
    locked: &HashSet<u64>,
) -> Vec<u64> {
    let mut stopped: HashSet<&str> = HashSet::new();
    let mut go = Vec::new();
    for id in chosen {
        let key = keys.get(id).and_then(|k| k.as_deref());
        match key {
            Some(k) if stopped.contains(k) => {}
            Some(k) if !locked.contains(id) => {
                stopped.insert(k);
            }
            _ if locked.contains(id) => go.push(*id),
            _ => {}
        }
    }
    go
}

/// A locked row ready to publish.
struct Outgoing {
    id: u64,
    message_id: String,
    topic: String,
    key: Option<String>,
    payload: Vec<u8>,
    headers: Vec<(String, String)>,
    attempts: u32,
}

/// One sweep. `Err` means nothing could be published (database or broker unreachable):
/// the caller backs off; rows are left as they were.
pub(crate) async fn sweep(
    shared: &Shared,
    pool: &Pool,
    publisher: &Publisher,
) -> Result<Swept, String> {
    let cfg = &shared.config.outbox;
    let table = &shared.outbox_table;
    let mut conn = pool.get_conn().await.map_err(db)?;
    let rows: Vec<Row> = conn
        .exec(table.candidates(), (cfg.batch as u64,))
        .await
        .map_err(db)?;
    let mut candidates = Vec::with_capacity(rows.len());
    let mut next_due: Option<Duration> = None;
    for r in &rows {
        let (Some(id), Some(key), Some(due), Some(held), Some(wait_us)) = (
            r.get_opt::<u64, _>(0).and_then(Result::ok),
            r.get_opt::<Option<String>, _>(1).and_then(Result::ok),
            r.get_opt::<bool, _>(2).and_then(Result::ok),
            r.get_opt::<bool, _>(3).and_then(Result::ok),
            r.get_opt::<i64, _>(4).and_then(Result::ok),
        ) else {
            return Err("outbox: unexpected candidate row shape".into());
        };
        if !due && !held {
            let d = Duration::from_micros(wait_us.max(0) as u64);
            next_due = Some(next_due.map_or(d, |n| n.min(d)));
        }
        candidates.push(Candidate { id, key, due, held });
    }
    let chosen = choose(&candidates);
    if chosen.is_empty() {
        return Ok(Swept {
            next_due,
            ..Swept::default()
        });
    }
    let keys: HashMap<u64, Option<String>> =
        candidates.iter().map(|c| (c.id, c.key.clone())).collect();
    let mut tx = conn
        .start_transaction(mysql_async::TxOpts::default())
        .await
        .map_err(db)?;
    let params: Vec<Value> = chosen.iter().map(|id| Value::from(*id)).collect();
    let locked_rows: Vec<Row> = tx
        .exec(table.lock(chosen.len()), Params::Positional(params))
        .await
        .map_err(db)?;
    let mut locked: HashMap<u64, Outgoing> = HashMap::with_capacity(locked_rows.len());
    for mut r in locked_rows {
        let row = (|| {
            Some(Outgoing {
                id: r.take_opt::<u64, _>(0)?.ok()?,
                message_id: r.take_opt::<String, _>(1)?.ok()?,
                topic: r.take_opt::<String, _>(2)?.ok()?,
                key: r.take_opt::<Option<String>, _>(3)?.ok()?,
                payload: r.take_opt::<Vec<u8>, _>(4)?.ok()?,
                headers: Vec::new(),
                attempts: r.take_opt::<u32, _>(6)?.ok()?,
            })
        })();
        let headers = r
            .take_opt::<Option<String>, _>(5)
            .and_then(Result::ok)
            .flatten();
        let Some(mut row) = row else {
            return Err("outbox: unexpected row shape".into());
        };
        row.headers = parse_headers(headers.as_deref());
        locked.insert(row.id, row);
    }
    let ids: HashSet<u64> = locked.keys().copied().collect();
    let go = cut(&chosen, &keys, &ids);
    // Groups: one per key (in id order), one per keyless row.
    let mut groups: Vec<Vec<&Outgoing>> = Vec::new();
    let mut by_key: HashMap<&str, usize> = HashMap::new();
    for id in &go {
        let row = &locked[id];
        match row.key.as_deref() {
            Some(k) => match by_key.get(k) {
                Some(&g) => groups[g].push(row),
                None => {
                    by_key.insert(k, groups.len());
                    groups.push(vec![row]);
                }
            },
            None => groups.push(vec![row]),
        }
    }
    let outcomes = futures::future::join_all(groups.iter().map(|g| async move {
        let mut out = Vec::with_capacity(g.len());
        for row in g {
            let msg = Message {
                message_id: &row.message_id,
                topic: &row.topic,
                key: row.key.as_deref(),
                payload: &row.payload,
                headers: &row.headers,
            };
            let r = publisher.publish(&msg).await;
            let failed = r.is_err();
            out.push((row.id, r));
            if failed {
                break;
            }
        }
        out
    }))
    .await;
    let mut published = Vec::new();
    let mut refused = Vec::new();
    let mut unreachable: Option<PublishError> = None;
    for (id, r) in outcomes.into_iter().flatten() {
        match r {
            Ok(()) => published.push(id),
            Err(e) if e.is_connection() => {
                unreachable.get_or_insert(e);
            }
            Err(e) => refused.push((id, e)),
        }
    }
    if !published.is_empty() {
        let params: Vec<Value> = published.iter().map(|id| Value::from(*id)).collect();
        tx.exec_drop(table.published(published.len()), Params::Positional(params))
            .await
            .map_err(db)?;
    }
    for (id, e) in &refused {
        let row = &locked[id];
        let attempts = row.attempts.saturating_add(1);
        let dead = attempts >= cfg.max_attempts;
        let backoff = backoff_us(cfg.backoff_initial_ms, cfg.backoff_max_ms, attempts);
        let mut why = e.to_string();
        if why.chars().count() > MAX_ERROR {
            why = why.chars().take(MAX_ERROR).collect();
        }
        if dead {
            warn!(message_id = %row.message_id, topic = %row.topic, attempts, error = %why,
                "outbox message DEAD");
        } else {
            debug!(message_id = %row.message_id, attempts, error = %why, "outbox message refused");
        }
        tx.exec_drop(
            table.failed(),
            (
                attempts,
                if dead { "DEAD" } else { "NEW" },
                backoff,
                why,
                *id,
            ),
        )
        .await
        .map_err(db)?;
    }
    tx.commit().await.map_err(db)?;
    let o = &shared.outbox;
    o.count(&o.published, published.len() as u64);
    o.count(
        &o.failed,
        (refused.len() + usize::from(unreachable.is_some())) as u64,
    );
    if let Some(e) = unreachable {
        if published.is_empty() {
            return Err(format!("broker {}: {e}", publisher.describe()));
        }
        o.note_error(Some(format!("broker {}: {e}", publisher.describe())));
    } else if let Some((_, e)) = refused.last() {
        o.note_error(Some(format!("broker {}: {e}", publisher.describe())));
    } else {
        o.note_error(None);
    }
    let more = rows.len() >= cfg.batch && !published.is_empty();
    Ok(Swept {
        published: published.len(),
        more,
        next_due,
    })
}

fn db(e: mysql_async::Error) -> String {
    format!("backend: {e}")
}

/// Backoff before attempt `attempts + 1`, in µs: initial × 2^(attempts−1), capped.
pub(crate) fn backoff_us(initial_ms: u64, max_ms: u64, attempts: u32) -> u64 {
    let shift = attempts.saturating_sub(1).min(30);
    initial_ms.saturating_mul(1 << shift).min(max_ms) * 1000
}

/// The row's `headers` JSON object as (name, value) pairs; non-string values are sent as
/// their JSON text. The table's CHECK constraint keeps anything but an object out.
fn parse_headers(text: Option<&str>) -> Vec<(String, String)> {
    let Some(text) = text else { return Vec::new() };
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text) {
        Ok(map) => map
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: u64, key: Option<&str>, due: bool, held: bool) -> Candidate {
        Candidate {
            id,
            key: key.map(str::to_string),
            due,
            held,
        }
    }

    #[test]
    fn a_key_stops_at_its_first_row_that_may_not_go() {
        let rows = [
            c(1, Some("a"), true, false),
            c(2, Some("b"), false, false), // b in backoff
            c(3, Some("a"), true, false),
            c(4, Some("b"), true, false), // must not overtake 2
            c(5, None, true, true),       // held by its global transaction
            c(6, None, true, false),
            c(7, Some("c"), true, true), // held: c stops
            c(8, Some("c"), true, false),
            c(9, Some("a"), true, false),
        ];
        assert_eq!(choose(&rows), vec![1, 3, 6, 9]);
    }

    #[test]
    fn a_key_stops_at_a_row_another_relay_locked() {
        let keys: HashMap<u64, Option<String>> = [
            (1, Some("a".into())),
            (2, Some("a".into())),
            (3, None),
            (4, Some("b".into())),
            (5, None),
        ]
        .into_iter()
        .collect();
        let locked: HashSet<u64> = [2, 3, 4].into_iter().collect();
        assert_eq!(cut(&[1, 2, 3, 4, 5], &keys, &locked), vec![3, 4]);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff_us(500, 60_000, 1), 500_000);
        assert_eq!(backoff_us(500, 60_000, 2), 1_000_000);
        assert_eq!(backoff_us(500, 60_000, 8), 60_000_000);
        assert_eq!(backoff_us(500, 60_000, 100), 60_000_000);
    }

    #[test]
    fn headers_are_strings() {
        assert_eq!(
            parse_headers(Some(r#"{"a":"x","n":1}"#)),
            vec![("a".into(), "x".into()), ("n".into(), "1".into())]
        );
        assert!(parse_headers(None).is_empty());
    }
}
