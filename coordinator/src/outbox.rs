//! The local message tables (outbox) and consumer barriers of the backends, as the
//! coordinator sees them: the latest report of each resource, and the operator's
//! redrives of DEAD messages waiting for a proxy's answer.
//!
//! The rows live in each backend (`rewind.outbox`, `rewind.barrier`); the proxies read
//! them every few seconds and report over their Attach stream. What is kept here is a
//! cache of those reads, in memory only and not replicated: the databases are the
//! truth, and a restarted coordinator has every figure back one report interval after
//! the proxies re-attach. In a cluster the proxies attach to the leader, so the leader
//! holds the reports; a follower answers the outbox API `not_leader` like every other
//! `/api/v1` call (the HTTP leader gate), never an empty or outdated list of its own.
//!
//! Nothing is dropped when a proxy detaches: the last figures stay useful (a DEAD list
//! does not change because its relay went away), and [`is_stale`] marks them old instead.
//!
//! A redrive is a request/answer exchange over the stream: [`Outbox::begin_redrive`]
//! registers the waiter and sends in one step, the stream's answer completes it
//! ([`Outbox::complete_redrive`]), and a detaching proxy fails the redrives it was
//! asked for at once ([`Outbox::detached`]) instead of letting them run into the wait.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// How often a proxy reports (its relay's read interval).
pub const REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// A report older than three report intervals is marked stale: one late or lost report
/// is normal, three in a row mean the proxy is gone or cannot read its database.
pub const STALE_AFTER: Duration = Duration::from_secs(3 * REPORT_INTERVAL.as_secs());

/// How long an operator's redrive waits for the proxy's answer. Long enough for a
/// proxy to reach a busy backend, short enough for a console button.
pub const REDRIVE_WAIT: Duration = Duration::from_secs(10);

/// Most DEAD messages kept per resource (the proxy sends its newest 100; a proxy
/// sending more cannot make this cache grow without bound).
pub const MAX_DEAD: usize = 100;

/// One resource's outbox and barrier, as a proxy read them from the backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboxReport {
    pub resource_id: String,
    pub proxy_id: String,
    /// The relay's broker, password removed; empty when no relay is configured.
    pub broker: String,
    /// Rows waiting to be published, including held and backing-off ones.
    pub new_count: u64,
    /// Of those, rows held until their global transaction commits.
    pub held_count: u64,
    pub oldest_new_age_ms: u64,
    pub dead_count: u64,
    /// Since the reporting proxy started (so they restart from 0 with it).
    pub published_total: u64,
    pub failed_total: u64,
    pub last_error: String,
    /// The newest DEAD messages, at most [`MAX_DEAD`].
    pub dead: Vec<DeadMessage>,
    pub barrier_rows: u64,
    pub barrier_duplicates: u64,
    /// When the proxy read these figures (Unix milliseconds, the proxy's clock).
    pub read_at_ms: u64,
}

/// A message the relay gave up on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeadMessage {
    pub message_id: String,
    pub topic: String,
    pub msg_key: String,
    pub attempts: u32,
    pub last_error: String,
    pub created_at_ms: u64,
}

/// A report with where and when it arrived.
#[derive(Clone, Debug)]
pub struct ResourceOutbox {
    pub report: OutboxReport,
    /// Unix milliseconds, this coordinator's clock (shown; [`is_stale`] uses a monotonic
    /// instant so a clock step cannot revive or age a report).
    pub received_at_ms: u64,
    pub stale: bool,
}

/// What a proxy answered to a redrive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedriveOutcome {
    /// The message is NEW again.
    Done,
    /// No DEAD message with that id (never existed, already redriven or published).
    NotDead,
    /// The proxy could not act now (backend unreachable, ...).
    Failed(String),
}

/// Whether a report received at `received` is stale at `now` (see [`STALE_AFTER`]).
pub fn is_stale(received: Instant, now: Instant) -> bool {
    now.saturating_duration_since(received) > STALE_AFTER
}

struct Received {
    report: OutboxReport,
    at: Instant,
    at_ms: u64,
    /// The Attach connection it came from: redrives go to that proxy first.
    conn: u64,
}

struct PendingRedrive {
    /// The stream the command went out on: only its answer counts.
    conn: u64,
    answer: oneshot::Sender<RedriveOutcome>,
}

/// Reports by resource and redrives in flight. Both locks are std mutexes held for
/// map operations only, never across an `.await`.
#[derive(Default)]
pub struct Outbox {
    reports: Mutex<BTreeMap<String, Received>>,
    redrives: Mutex<HashMap<u64, PendingRedrive>>,
    next_command: AtomicU64,
}

impl Outbox {
    /// Keeps `report` as its resource's latest, replacing the previous one.
    pub fn store(&self, conn: u64, mut report: OutboxReport, at: Instant, at_ms: u64) {
        report.dead.truncate(MAX_DEAD);
        let mut reports = self.reports.lock().expect("outbox reports lock");
        reports.insert(
            report.resource_id.clone(),
            Received {
                report,
                at,
                at_ms,
                conn,
            },
        );
    }

    /// Whether any report for `resource_id` was ever received.
    pub fn knows(&self, resource_id: &str) -> bool {
        self.reports
            .lock()
            .expect("outbox reports lock")
            .contains_key(resource_id)
    }

    /// The connection whose report for `resource_id` is the latest.
    pub fn reporter(&self, resource_id: &str) -> Option<u64> {
        self.reports
            .lock()
            .expect("outbox reports lock")
            .get(resource_id)
            .map(|r| r.conn)
    }

    /// Every resource's latest report, sorted by resource id, staleness judged at `now`.
    pub fn reports(&self, now: Instant) -> Vec<ResourceOutbox> {
        self.reports
            .lock()
            .expect("outbox reports lock")
            .values()
            .map(|r| ResourceOutbox {
                report: r.report.clone(),
                received_at_ms: r.at_ms,
                stale: is_stale(r.at, now),
            })
            .collect()
    }

    /// DEAD messages of every resource (or of one), newest first.
    pub fn dead(&self, resource_id: Option<&str>) -> Vec<(String, DeadMessage)> {
        let reports = self.reports.lock().expect("outbox reports lock");
        let mut out: Vec<(String, DeadMessage)> = reports
            .values()
            .filter(|r| resource_id.is_none_or(|id| r.report.resource_id == id))
            .flat_map(|r| {
                r.report
                    .dead
                    .iter()
                    .map(|d| (r.report.resource_id.clone(), d.clone()))
            })
            .collect();
        out.sort_by(|a, b| {
            b.1.created_at_ms
                .cmp(&a.1.created_at_ms)
                .then_with(|| a.0.cmp(&b.0))
                .then_with(|| a.1.message_id.cmp(&b.1.message_id))
        });
        out
    }

    /// A proxy's answer says the message is no longer DEAD (`redriven`: it is NEW now).
    /// The cached report follows at once so the console stops offering the message;
    /// the next report replaces these figures with what the database says.
    pub fn forget_dead(&self, resource_id: &str, message_id: &str, redriven: bool) {
        let mut reports = self.reports.lock().expect("outbox reports lock");
        let Some(r) = reports.get_mut(resource_id) else {
            return;
        };
        let before = r.report.dead.len();
        r.report.dead.retain(|d| d.message_id != message_id);
        if r.report.dead.len() < before {
            r.report.dead_count = r.report.dead_count.saturating_sub(1);
            if redriven {
                r.report.new_count += 1;
            }
        }
    }

    pub fn next_command_id(&self) -> u64 {
        self.next_command.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Sends a redrive with `send` (which answers the connection that took it) and
    /// registers its waiter, both under the redrives lock: the answer and the
    /// connection's detach, which take that lock too, always find the waiter. `None`
    /// when no connection took the command.
    pub fn begin_redrive(
        &self,
        command_id: u64,
        send: impl FnOnce() -> Option<u64>,
    ) -> Option<oneshot::Receiver<RedriveOutcome>> {
        let mut redrives = self.redrives.lock().expect("outbox redrives lock");
        let conn = send()?;
        let (answer, rx) = oneshot::channel();
        redrives.insert(command_id, PendingRedrive { conn, answer });
        Some(rx)
    }

    /// A redrive's answer from connection `conn`; false when nothing waits for it (late
    /// after a timeout, or from another stream than the command went out on).
    pub fn complete_redrive(&self, conn: u64, command_id: u64, outcome: RedriveOutcome) -> bool {
        let mut redrives = self.redrives.lock().expect("outbox redrives lock");
        match redrives.get(&command_id) {
            Some(p) if p.conn == conn => {}
            _ => return false,
        }
        let Some(p) = redrives.remove(&command_id) else {
            return false;
        };
        // The waiter may have given up just now; nothing else to tell.
        let _ = p.answer.send(outcome);
        true
    }

    /// The waiter gave up: a late answer is ignored.
    pub fn abandon_redrive(&self, command_id: u64) {
        self.redrives
            .lock()
            .expect("outbox redrives lock")
            .remove(&command_id);
    }

    /// Connection `conn` is gone: its redrives will never be answered (dropping their
    /// senders wakes the waiters). Its reports stay.
    pub fn detached(&self, conn: u64) {
        self.redrives
            .lock()
            .expect("outbox redrives lock")
            .retain(|_, p| p.conn != conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(resource: &str, dead: &[(&str, u64)]) -> OutboxReport {
        OutboxReport {
            resource_id: resource.into(),
            new_count: 3,
            dead_count: dead.len() as u64,
            dead: dead
                .iter()
                .map(|(id, at)| DeadMessage {
                    message_id: (*id).into(),
                    created_at_ms: *at,
                    ..DeadMessage::default()
                })
                .collect(),
            ..OutboxReport::default()
        }
    }

    #[test]
    fn a_report_turns_stale_after_three_intervals() {
        let t0 = Instant::now();
        assert!(!is_stale(t0, t0));
        assert!(!is_stale(t0, t0 + STALE_AFTER));
        assert!(is_stale(t0, t0 + STALE_AFTER + Duration::from_millis(1)));
        assert_eq!(STALE_AFTER, Duration::from_secs(15));
        // A `now` before the receipt (another thread's instant) is not stale.
        assert!(!is_stale(t0 + Duration::from_secs(60), t0));

        let o = Outbox::default();
        o.store(1, report("b", &[]), t0, 1_000);
        o.store(2, report("a", &[]), t0 + Duration::from_secs(10), 11_000);
        let seen = o.reports(t0 + Duration::from_secs(16));
        let view: Vec<_> = seen
            .iter()
            .map(|r| (r.report.resource_id.as_str(), r.stale, r.received_at_ms))
            .collect();
        assert_eq!(view, [("a", false, 11_000), ("b", true, 1_000)]);
        assert_eq!((o.reporter("a"), o.reporter("b")), (Some(2), Some(1)));
        assert!(o.knows("a") && !o.knows("c"));
    }

    #[test]
    fn dead_messages_are_newest_first_and_forgotten_once_redriven() {
        let o = Outbox::default();
        let t = Instant::now();
        o.store(1, report("r1", &[("m1", 10), ("m2", 30)]), t, 0);
        o.store(1, report("r2", &[("m3", 20)]), t, 0);
        let ids = |o: &Outbox, r: Option<&str>| {
            o.dead(r)
                .into_iter()
                .map(|(_, d)| d.message_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&o, None), ["m2", "m3", "m1"]);
        assert_eq!(ids(&o, Some("r1")), ["m2", "m1"]);
        assert!(ids(&o, Some("nope")).is_empty());

        o.forget_dead("r1", "m2", true);
        o.forget_dead("r1", "unknown", true);
        let r1 = o.reports(t).remove(0).report;
        assert_eq!((r1.dead_count, r1.new_count), (1, 4));
        assert_eq!(ids(&o, Some("r1")), ["m1"]);
    }

    #[test]
    fn a_report_keeps_at_most_max_dead() {
        let o = Outbox::default();
        let many: Vec<(String, u64)> = (0..150).map(|i| (format!("m{i}"), i)).collect();
        let many: Vec<(&str, u64)> = many.iter().map(|(s, i)| (s.as_str(), *i)).collect();
        o.store(1, report("r", &many), Instant::now(), 0);
        assert_eq!(o.dead(None).len(), MAX_DEAD);
    }

    #[tokio::test]
    async fn redrive_answers_count_only_from_their_stream() {
        let o = Outbox::default();
        assert!(o.begin_redrive(1, || None).is_none(), "nobody took it");

        let rx = o.begin_redrive(2, || Some(7)).expect("sent");
        assert!(
            !o.complete_redrive(8, 2, RedriveOutcome::Done),
            "other stream"
        );
        assert!(o.complete_redrive(7, 2, RedriveOutcome::NotDead));
        assert_eq!(rx.await.ok(), Some(RedriveOutcome::NotDead));
        assert!(
            !o.complete_redrive(7, 2, RedriveOutcome::Done),
            "answered once"
        );

        let rx = o.begin_redrive(3, || Some(7)).expect("sent");
        o.detached(7);
        assert!(rx.await.is_err(), "a detach wakes the waiter");

        let _rx = o.begin_redrive(4, || Some(9)).expect("sent");
        o.abandon_redrive(4);
        assert!(!o.complete_redrive(9, 4, RedriveOutcome::Done), "too late");
    }
}
