//! The proxy's Prometheus figures: counters the session loop, the modes and phase two
//! bump, rendered as text by the admin listener ([`crate::admin`]).
//!
//! Written out by hand like the coordinator's (`coordinator/src/metrics.rs`, which says
//! why not `prometheus-client`). What matters here is the session loop: a command costs
//! two relaxed atomic adds (its latency bucket and the latency sum), no lock and no
//! allocation; the command count is the histogram's own count. Errors sent to clients
//! are counted under a mutex: an error is never the hot path, and their codes are too
//! sparse for a fixed array.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use crate::at::rollback::UndoOutcome;
use crate::error::ProxyError;
use crate::Shared;

/// Upper bounds of the latency buckets, in microseconds (0.1 ms … 10 s).
const BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A latency histogram on fixed buckets; the last slot counts what exceeds them all.
struct Histogram {
    counts: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    const fn new() -> Histogram {
        Histogram {
            counts: [const { AtomicU64::new(0) }; BUCKETS_US.len() + 1],
            sum_us: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BUCKETS_US.partition_point(|&b| b < us);
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// `label` is `name="value",` (with the comma) or empty.
    fn render(&self, out: &mut String, name: &str, label: &str) {
        let mut cum = 0;
        for (i, b) in BUCKETS_US.iter().enumerate() {
            cum += self.counts[i].load(Relaxed);
            let le = *b as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{{label}le=\"{le}\"}} {cum}");
        }
        cum += self.counts[BUCKETS_US.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{label}le=\"+Inf\"}} {cum}");
        let bare = label.trim_end_matches(',');
        let sum = self.sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{bare}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{bare}}} {cum}");
    }
}

/// A client command's type, as counted (`command` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// COM_QUERY.
    Query,
    /// COM_STMT_PREPARE.
    Prepare,
    /// COM_STMT_EXECUTE.
    Execute,
    /// Everything else (ping, init db, statement close, reset, …).
    Other,
}

const COMMANDS: [&str; 4] = ["query", "prepare", "execute", "other"];

/// Which kind of branch a phase one was for (`mode` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    At,
    Xa,
}

const MODES: [&str; 2] = ["at", "xa"];

/// How a branch's phase one ended (`outcome` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhaseOne {
    /// AT: registered, undo record written, local COMMIT done. XA: prepared and
    /// registered.
    Committed,
    /// The local transaction (or XA branch) was rolled back and the client told so.
    RolledBack,
    /// Anything else: the outcome is unknown to the proxy (a lost connection at COMMIT,
    /// a prepared XA branch the coordinator could not be told about).
    Failed,
}

const PHASE_ONE: [&str; 3] = ["committed", "rolled_back", "failed"];

impl PhaseOne {
    /// The outcome a phase one's answer to the client stands for.
    pub fn of<T>(r: &Result<T, ProxyError>) -> PhaseOne {
        match r {
            Ok(_) => PhaseOne::Committed,
            Err(
                ProxyError::BranchRolledBack(_)
                | ProxyError::GlobalLockTimeout(_)
                | ProxyError::UnknownXid(_),
            ) => PhaseOne::RolledBack,
            Err(_) => PhaseOne::Failed,
        }
    }
}

const ACTIONS: [&str; 2] = ["commit", "rollback"];
const PHASE_TWO: [&str; 3] = ["done", "dirty_write", "failure"];

/// Every figure the proxy itself counts; one per process, in [`Shared`].
pub struct Metrics {
    /// Client sessions past the handshake, not yet ended.
    sessions: AtomicI64,
    sessions_total: AtomicU64,
    /// Of those, the sessions over TLS.
    tls_sessions_total: AtomicU64,
    /// Per [`Command`]: its latency, whose count is the command count.
    commands: [Histogram; 4],
    /// Error packets sent to clients, by MySQL error code.
    errors: Mutex<BTreeMap<u16, u64>>,
    /// Phase ones by [`Mode`] × [`PhaseOne`].
    branches: [[AtomicU64; 3]; 2],
    /// Phase-two commands run by this proxy, by action × outcome.
    phase_two: [[AtomicU64; 3]; 2],
    /// Backend statements kept for a later prepare of the same text (`session::reuse`),
    /// and the prepares answered from one.
    kept_statements: AtomicI64,
    reused_prepares: AtomicU64,
    /// AT UPDATEs and DELETEs run with their images as one query (`at::sql::pinned_key`).
    pub one_query_writes: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            sessions: AtomicI64::new(0),
            sessions_total: AtomicU64::new(0),
            tls_sessions_total: AtomicU64::new(0),
            commands: [const { Histogram::new() }; 4],
            errors: Mutex::new(BTreeMap::new()),
            branches: [const { [const { AtomicU64::new(0) }; 3] }; 2],
            phase_two: [const { [const { AtomicU64::new(0) }; 3] }; 2],
            kept_statements: AtomicI64::new(0),
            reused_prepares: AtomicU64::new(0),
            one_query_writes: AtomicU64::new(0),
        }
    }
}

/// Holds one open session in the gauge; dropping it closes the session.
pub struct OpenSession<'a>(&'a Metrics);

impl Drop for OpenSession<'_> {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Relaxed);
    }
}

impl Metrics {
    /// A client session (over TLS: `tls`) starts serving commands; it counts as open until
    /// the guard drops.
    pub fn session_opened(&self, tls: bool) -> OpenSession<'_> {
        self.sessions_total.fetch_add(1, Relaxed);
        if tls {
            self.tls_sessions_total.fetch_add(1, Relaxed);
        }
        self.sessions.fetch_add(1, Relaxed);
        OpenSession(self)
    }

    /// One client command answered, `took` from reading it to its answer being ready.
    pub fn command(&self, command: Command, took: Duration) {
        self.commands[command as usize].observe(took);
    }

    /// An ERR packet (as built by `wire::err_packet`) went to a client.
    pub fn error_sent(&self, packet: &[u8]) {
        if let [0xFF, lo, hi, ..] = *packet {
            let code = u16::from_le_bytes([lo, hi]);
            let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
            *errors.entry(code).or_default() += 1;
        }
    }

    pub fn phase_one(&self, mode: Mode, outcome: PhaseOne) {
        self.branches[mode as usize][outcome as usize].fetch_add(1, Relaxed);
    }

    /// An XA branch's phase one (`XA PREPARE` and registration) ended: prepared and
    /// registered, rolled back, or left in doubt. One call each, so that XA mode's
    /// commit path only gains a line per outcome.
    pub fn xa_committed(&self) {
        self.phase_one(Mode::Xa, PhaseOne::Committed);
    }

    pub fn xa_rolled_back(&self) {
        self.phase_one(Mode::Xa, PhaseOne::RolledBack);
    }

    pub fn xa_failed(&self) {
        self.phase_one(Mode::Xa, PhaseOne::Failed);
    }

    /// A phase-two command's result (`commit`: the action was a commit).
    pub fn phase_two(&self, commit: bool, outcome: &UndoOutcome) {
        let o = match outcome {
            UndoOutcome::Done => 0,
            UndoOutcome::DirtyWrite(_) => 1,
            UndoOutcome::Failure(_) => 2,
        };
        self.phase_two[usize::from(!commit)][o].fetch_add(1, Relaxed);
    }

    /// A backend statement is to be kept for reuse: `false` when the process keeps `limit`
    /// already (then it is not kept).
    pub fn statement_kept(&self, limit: i64) -> bool {
        self.kept_statements
            .fetch_update(Relaxed, Relaxed, |n| (n < limit).then_some(n + 1))
            .is_ok()
    }

    /// A kept backend statement was taken by a prepare (`reused`) or closed or forgotten.
    pub fn statement_released(&self, reused: bool) {
        self.kept_statements.fetch_sub(1, Relaxed);
        if reused {
            self.reused_prepares.fetch_add(1, Relaxed);
        }
    }

    /// The Prometheus text of every figure, with the gauges other modules own.
    pub fn render(&self, shared: &Shared) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let gauges = [
            (
                "rewind_proxy_sessions",
                "Client sessions open (past the handshake).",
                self.sessions.load(Relaxed).max(0) as u64,
            ),
            (
                "rewind_proxy_xa_pinned",
                "Backend connections kept for prepared XA branches' phase two.",
                shared.xa_pinned.count() as u64,
            ),
            (
                "rewind_proxy_kept_statements",
                "Backend statements the client closed, kept for the next prepare of the same \
                 text in the same session.",
                self.kept_statements.load(Relaxed).max(0) as u64,
            ),
            (
                "rewind_proxy_definition_sentinels",
                "Busy tables whose definition a transaction of the proxy's own holds \
                 confirmed for every session (one backend connection each).",
                shared.sentinels.running() as u64,
            ),
            (
                "rewind_proxy_runtime_workers",
                "Worker threads of the runtime serving the admin listener and, without \
                 session_threads, every session (worker_threads, or one per CPU core).",
                tokio::runtime::Handle::try_current()
                    .map_or(0, |h| h.metrics().num_workers() as u64),
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let o = &shared.outbox;
        let m = &shared.messages;
        let counters = [
            (
                "rewind_proxy_sessions_total",
                "Client sessions opened since start.",
                self.sessions_total.load(Relaxed),
            ),
            (
                "rewind_proxy_tls_sessions_total",
                "Client sessions opened over TLS since start.",
                self.tls_sessions_total.load(Relaxed),
            ),
            (
                "rewind_proxy_prepares_reused_total",
                "Client prepares answered from a kept backend statement (no backend round \
                 trip).",
                self.reused_prepares.load(Relaxed),
            ),
            (
                "rewind_proxy_at_one_query_writes_total",
                "AT UPDATEs and DELETEs sent as text whose condition pins one primary key, \
                 run with their before and after images as one query (the others take a \
                 round trip more).",
                self.one_query_writes.load(Relaxed),
            ),
            (
                "rewind_proxy_outbox_published_total",
                "Outbox messages the relay published since start.",
                o.published.load(Relaxed),
            ),
            (
                "rewind_proxy_outbox_failed_total",
                "Outbox publish attempts the broker refused or that failed since start.",
                o.failed.load(Relaxed),
            ),
            (
                "rewind_proxy_messages_bound_total",
                "Half messages whose MSG tag the coordinator accepted (BindMessage).",
                m.bound.load(Relaxed),
            ),
            (
                "rewind_proxy_messages_consumed_reported_total",
                "Committed barrier pairs sent to the coordinator as consumed messages.",
                m.consumed.reported.load(Relaxed),
            ),
            (
                "rewind_proxy_messages_consumed_dropped_total",
                "Committed barrier pairs dropped from a full queue before they were sent.",
                m.consumed.dropped.load(Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        out.push_str(
            "# HELP rewind_proxy_commands_total Client commands answered, by type.\n\
             # TYPE rewind_proxy_commands_total counter\n",
        );
        for (h, name) in self.commands.iter().zip(COMMANDS) {
            let _ = writeln!(
                out,
                "rewind_proxy_commands_total{{command=\"{name}\"}} {}",
                h.count()
            );
        }
        out.push_str(
            "# HELP rewind_proxy_command_seconds Time from reading a client command to its \
             answer being ready, by type.\n# TYPE rewind_proxy_command_seconds histogram\n",
        );
        for (h, name) in self.commands.iter().zip(COMMANDS) {
            h.render(
                &mut out,
                "rewind_proxy_command_seconds",
                &format!("command=\"{name}\","),
            );
        }
        out.push_str(
            "# HELP rewind_proxy_errors_total Error packets sent to clients, by MySQL error \
             code.\n# TYPE rewind_proxy_errors_total counter\n",
        );
        let errors = self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (code, n) in errors {
            let _ = writeln!(out, "rewind_proxy_errors_total{{code=\"{code}\"}} {n}");
        }
        out.push_str(
            "# HELP rewind_proxy_branches_total Branch phase ones (the client's COMMIT of a \
             bound transaction), by mode and outcome.\n\
             # TYPE rewind_proxy_branches_total counter\n",
        );
        for (row, mode) in self.branches.iter().zip(MODES) {
            for (n, outcome) in row.iter().zip(PHASE_ONE) {
                let _ = writeln!(
                    out,
                    "rewind_proxy_branches_total{{mode=\"{mode}\",outcome=\"{outcome}\"}} {}",
                    n.load(Relaxed)
                );
            }
        }
        out.push_str(
            "# HELP rewind_proxy_phase_two_total Phase-two commands from the coordinator run \
             by this proxy, by action and outcome.\n\
             # TYPE rewind_proxy_phase_two_total counter\n",
        );
        for (row, action) in self.phase_two.iter().zip(ACTIONS) {
            for (n, outcome) in row.iter().zip(PHASE_TWO) {
                let _ = writeln!(
                    out,
                    "rewind_proxy_phase_two_total{{action=\"{action}\",outcome=\"{outcome}\"}} {}",
                    n.load(Relaxed)
                );
            }
        }
        labelled(
            &mut out,
            "rewind_proxy_messages_decided_total",
            "Half messages whose local transaction ended, by what the proxy told the \
             coordinator (unsure: nothing, left to check-back).",
            "decision",
            DECISIONS.iter().zip(&m.decided),
        );
        labelled(
            &mut out,
            "rewind_proxy_message_checks_total",
            "Check-back probes of half messages run by this proxy, by outcome.",
            "outcome",
            CHECKS.iter().zip(&m.checks),
        );
        let d = &shared.definitions.counts;
        labelled(
            &mut out,
            "rewind_proxy_definition_checks_total",
            "Table definitions confirmed before AT writes, by how: read before the write \
             (query), skipped while another transaction held it confirmed (skipped), then \
             settled at commit by that holder's answer (proven) or read at commit \
             (query_at_commit); read by a busy table's sentinel for every session \
             (sentinel).",
            "how",
            DEFINITION_CHECKS.iter().zip([
                &d.queried,
                &d.skipped,
                &d.proven,
                &d.queried_at_commit,
                &d.sentinel,
            ]),
        );
        let b = &shared.begun;
        labelled(
            &mut out,
            "rewind_proxy_xid_checks_total",
            "XID checks of tagged statements that start a branch, by who answered: the \
             coordinator (a status call), or this proxy, which registered a branch of the \
             XID and has had no command for it since (known).",
            "answer",
            XID_CHECKS.iter().zip([&b.asked, &b.known]),
        );
        let r = &shared.coordinator.report_counts;
        labelled(
            &mut out,
            "rewind_proxy_phase_one_reports_total",
            "Phase-one reports by how they reached the coordinator: in a report call, along \
             a registration, or not at all because the branch's phase-two command came \
             first (moot).",
            "sent",
            REPORTS.iter().zip([&r.call, &r.registration, &r.moot]),
        );
        out
    }
}

const DEFINITION_CHECKS: [&str; 5] = ["query", "skipped", "proven", "query_at_commit", "sentinel"];

const XID_CHECKS: [&str; 2] = ["coordinator", "known"];

const REPORTS: [&str; 3] = ["call", "registration", "moot"];

const DECISIONS: [&str; 3] = ["commit", "rollback", "unsure"];
const CHECKS: [&str; 4] = ["committed", "rolled_back", "running", "failure"];

/// A counter with one label, one line per value.
fn labelled<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    values: impl Iterator<Item = (&'a &'a str, &'a AtomicU64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (value, n) in values {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {}", n.load(Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(h: &Histogram) -> String {
        let mut out = String::new();
        h.render(&mut out, "x", "command=\"query\",");
        out
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_bounds_inclusive() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(100)); // on the first bound
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60)); // past every bound
        let out = rendered(&h);
        for line in [
            "x_bucket{command=\"query\",le=\"0.0001\"} 1",
            "x_bucket{command=\"query\",le=\"0.00025\"} 2",
            "x_bucket{command=\"query\",le=\"0.0025\"} 2",
            "x_bucket{command=\"query\",le=\"0.005\"} 3",
            "x_bucket{command=\"query\",le=\"10\"} 3",
            "x_bucket{command=\"query\",le=\"+Inf\"} 4",
            "x_sum{command=\"query\"} 60.003201",
            "x_count{command=\"query\"} 4",
        ] {
            assert!(out.lines().any(|l| l == line), "{line:?} missing in\n{out}");
        }
        assert_eq!(h.count(), 4);
    }

    #[test]
    fn error_codes_come_from_the_packet() {
        let m = Metrics::default();
        let e = ProxyError::Backend {
            code: 1064,
            state: "42000".into(),
            message: "syntax".into(),
        };
        m.error_sent(&crate::wire::err_packet(&e));
        m.error_sent(&crate::wire::err_packet(&e));
        m.error_sent(&crate::wire::err_packet(&ProxyError::TooManyConnections));
        m.error_sent(b"\x00not an error");
        let errors = m.errors.lock().unwrap().clone();
        assert_eq!(errors, BTreeMap::from([(1040, 1), (1064, 2)]));
    }

    #[test]
    fn phase_one_outcomes_follow_the_answer() {
        let ok: Result<(), ProxyError> = Ok(());
        assert_eq!(PhaseOne::of(&ok), PhaseOne::Committed);
        let lock: Result<(), _> = Err(ProxyError::GlobalLockTimeout("x".into()));
        assert_eq!(PhaseOne::of(&lock), PhaseOne::RolledBack);
        let doubt: Result<(), _> = Err(ProxyError::XaInDoubt("x".into()));
        assert_eq!(PhaseOne::of(&doubt), PhaseOne::Failed);
    }

    #[test]
    fn session_guard_closes_the_session() {
        let m = Metrics::default();
        let a = m.session_opened(false);
        let b = m.session_opened(true);
        drop(a);
        assert_eq!(m.sessions.load(Relaxed), 1);
        drop(b);
        assert_eq!(m.sessions.load(Relaxed), 0);
        assert_eq!(m.sessions_total.load(Relaxed), 2);
        assert_eq!(m.tls_sessions_total.load(Relaxed), 1);
    }
}
