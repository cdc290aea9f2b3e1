//! Prometheus text metrics, hand-rolled: a few atomics and fixed-bucket histograms.
//!
//! Why not `prometheus-client` (checked at 0.26): it only writes the OpenMetrics text
//! format, whose counter metadata names the family without `_total` (`# TYPE
//! rewind_lock_conflicts counter` over a `rewind_lock_conflicts_total` sample) and which
//! ends with `# EOF`. Served as today's `text/plain; version=0.0.4`, a Prometheus server
//! would then see our counters as untyped; served as OpenMetrics, the exposition format
//! of /metrics changes for every scraper that parses it. And its histogram takes a mutex
//! on every observation, where ours adds to atomics on each request's path. The output
//! here is small and fixed (names are a contract, see DESIGN.md), so it stays written out.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::engine::{Engine, GlobalStatus, Stats};
use crate::outbox::ResourceOutbox;

const BUCKETS_S: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

pub struct Histogram {
    counts: [AtomicU64; 13],
    sum_us: AtomicU64,
}

impl Histogram {
    const fn new() -> Histogram {
        Histogram {
            counts: [const { AtomicU64::new(0) }; 13],
            sum_us: AtomicU64::new(0),
        }
    }
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS_S
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(BUCKETS_S.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }
    fn render(&self, out: &mut String, name: &str, label: &str) {
        let mut cum = 0;
        for (i, b) in BUCKETS_S.iter().enumerate() {
            cum += self.counts[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{label}le=\"{b}\"}} {cum}");
        }
        cum += self.counts[BUCKETS_S.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{label}le=\"+Inf\"}} {cum}");
        let _ = writeln!(
            out,
            "{name}_sum{{{}}} {}",
            label.trim_end_matches(','),
            self.sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{{}}} {cum}", label.trim_end_matches(','));
    }
}

pub struct Metrics {
    rpc: [Histogram; 6],
    pub batch_fsync: Histogram,
    batches: AtomicU64,
    /// Of those, on a single node, the ones synced by their own `fdatasync` (the rest
    /// become durable with the next one: see `Command::needs_sync`).
    pub synced_batches: AtomicU64,
    batched_requests: AtomicU64,
    phase_two_retries: AtomicU64,
    branches_registered: AtomicU64,
    lock_conflicts: AtomicU64,
    finished: [AtomicU64; 10],
}

/// Operations whose latency is recorded.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Begin,
    Register,
    Commit,
    Rollback,
    Report,
    QueryLocks,
}

/// Their `op` label, in [`Op`] order.
const OPS: [&str; 6] = [
    "begin",
    "register",
    "commit",
    "rollback",
    "report",
    "query_locks",
];

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            rpc: [const { Histogram::new() }; 6],
            batch_fsync: Histogram::new(),
            batches: AtomicU64::new(0),
            synced_batches: AtomicU64::new(0),
            batched_requests: AtomicU64::new(0),
            phase_two_retries: AtomicU64::new(0),
            branches_registered: AtomicU64::new(0),
            lock_conflicts: AtomicU64::new(0),
            finished: [const { AtomicU64::new(0) }; 10],
        }
    }
}

impl Metrics {
    pub fn observe(&self, op: Op, d: Duration) {
        self.rpc[op as usize].observe(d);
    }

    pub fn record_batch(&self, requests: usize, fsync: Duration, stats: &Stats) {
        self.batches.fetch_add(1, Relaxed);
        self.batched_requests.fetch_add(requests as u64, Relaxed);
        self.batch_fsync.observe(fsync);
        self.phase_two_retries
            .fetch_add(stats.phase_two_retries, Relaxed);
        self.branches_registered
            .fetch_add(stats.branches_registered, Relaxed);
        self.lock_conflicts.fetch_add(stats.lock_conflicts, Relaxed);
        for (i, n) in stats.finished.iter().enumerate() {
            self.finished[i].fetch_add(*n, Relaxed);
        }
    }

    pub fn render(&self, engine: &Engine) -> String {
        let (active, branches, stalled) = engine.census();
        let mut out = String::new();
        let messages = engine.message_census();
        out.push_str("# HELP rewind_messages Half messages the coordinator holds in memory, by status (final ones only for a minute).\n# TYPE rewind_messages gauge\n");
        for st in crate::engine::MessageStatus::ALL {
            let _ = writeln!(
                out,
                "rewind_messages{{status=\"{}\"}} {}",
                st.name(),
                messages.get(&st).copied().unwrap_or(0)
            );
        }
        out.push_str("# HELP rewind_transactions Unfinished global transactions by status.\n# TYPE rewind_transactions gauge\n");
        for (i, st) in GlobalStatus::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "rewind_transactions{{status=\"{}\"}} {}",
                st.name(),
                active[i]
            );
        }
        out.push_str("# HELP rewind_transactions_finished_total Global transactions finished since start, by final status.\n# TYPE rewind_transactions_finished_total counter\n");
        for (i, st) in GlobalStatus::ALL
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_final())
        {
            let _ = writeln!(
                out,
                "rewind_transactions_finished_total{{status=\"{}\"}} {}",
                st.name(),
                self.finished[i].load(Relaxed)
            );
        }
        let gauges = [
            (
                "rewind_branches",
                "Branches of unfinished global transactions.",
                branches,
            ),
            (
                "rewind_branches_stalled",
                "TCC branches whose phase two failed tcc_max_attempts times, waiting for an operator.",
                stalled,
            ),
            (
                "rewind_locks_held",
                "Global row locks held.",
                engine.lock_count() as u64,
            ),
            (
                "rewind_lock_table_bytes",
                "Approximate memory of the lock table.",
                engine.lock_bytes() as u64,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let counters = [
            (
                "rewind_branches_registered_total",
                "Branches registered.",
                &self.branches_registered,
            ),
            (
                "rewind_lock_conflicts_total",
                "Registrations refused for a lock conflict.",
                &self.lock_conflicts,
            ),
            (
                "rewind_phase_two_retries_total",
                "Phase-two attempts that failed and were rescheduled.",
                &self.phase_two_retries,
            ),
            (
                "rewind_write_batches_total",
                "Write batches (one log record, or one Raft entry, each).",
                &self.batches,
            ),
            (
                "rewind_write_syncs_total",
                "Single node: write batches synced by their own fdatasync; a batch of only \
                 begins, phase-one reports and phase-two answers becomes durable with the \
                 next synced one.",
                &self.synced_batches,
            ),
            (
                "rewind_write_batch_requests_total",
                "Acknowledged requests written in those batches.",
                &self.batched_requests,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        out.push_str("# HELP rewind_request_duration_seconds Latency of coordinator operations (durable).\n# TYPE rewind_request_duration_seconds histogram\n");
        for (i, op) in OPS.iter().enumerate() {
            self.rpc[i].render(
                &mut out,
                "rewind_request_duration_seconds",
                &format!("op=\"{op}\","),
            );
        }
        out.push_str("# HELP rewind_write_batch_seconds Time of one durable write transaction.\n# TYPE rewind_write_batch_seconds histogram\n");
        self.batch_fsync
            .render(&mut out, "rewind_write_batch_seconds", "");
        out
    }
}

/// The proxies' outbox reports, one series per resource. The `_total` figures are the
/// reporting proxy's own counters, passed through as reported: they restart from 0 with
/// the proxy, which Prometheus reads as a counter reset. A stale report's figures are
/// still shown (the last known values); the console and API mark them stale.
pub fn render_outbox(out: &mut String, reports: &[ResourceOutbox]) {
    type Figure = fn(&ResourceOutbox) -> String;
    let families: [(&str, &str, &str, Figure); 5] = [
        (
            "rewind_outbox_new",
            "gauge",
            "Outbox messages waiting to be published (status NEW), by resource.",
            |r| r.report.new_count.to_string(),
        ),
        (
            "rewind_outbox_dead",
            "gauge",
            "Outbox messages the relay gave up on (status DEAD), by resource.",
            |r| r.report.dead_count.to_string(),
        ),
        (
            "rewind_outbox_oldest_new_age_seconds",
            "gauge",
            "Age of the oldest NEW outbox message, by resource (0 when none).",
            |r| (r.report.oldest_new_age_ms as f64 / 1000.0).to_string(),
        ),
        (
            "rewind_outbox_published_total",
            "counter",
            "Outbox messages published by the resource's proxy since it started.",
            |r| r.report.published_total.to_string(),
        ),
        (
            "rewind_barrier_duplicates_total",
            "counter",
            "Duplicate messages the barrier refused through the resource's proxy since it started.",
            |r| r.report.barrier_duplicates.to_string(),
        ),
    ];
    for (name, kind, help, figure) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for r in reports {
            let _ = writeln!(
                out,
                "{name}{{resource_id=\"{}\"}} {}",
                label_value(&r.report.resource_id),
                figure(r)
            );
        }
    }
}

/// A label value in the text format: backslash, double quote and newline escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::OutboxReport;

    #[test]
    fn outbox_series_per_resource_with_escaped_labels() {
        let r = |id: &str, new_count, age_ms| ResourceOutbox {
            report: OutboxReport {
                resource_id: id.into(),
                new_count,
                oldest_new_age_ms: age_ms,
                dead_count: 2,
                published_total: 9,
                barrier_duplicates: 1,
                ..OutboxReport::default()
            },
            received_at_ms: 0,
            stale: false,
        };
        let mut out = String::new();
        render_outbox(
            &mut out,
            &[r("127.0.0.1:3306", 4, 3200), r("a\"b\\c", 0, 0)],
        );
        for line in [
            "# TYPE rewind_outbox_new gauge",
            "rewind_outbox_new{resource_id=\"127.0.0.1:3306\"} 4",
            "rewind_outbox_new{resource_id=\"a\\\"b\\\\c\"} 0",
            "rewind_outbox_dead{resource_id=\"127.0.0.1:3306\"} 2",
            "rewind_outbox_oldest_new_age_seconds{resource_id=\"127.0.0.1:3306\"} 3.2",
            "# TYPE rewind_outbox_published_total counter",
            "rewind_outbox_published_total{resource_id=\"127.0.0.1:3306\"} 9",
            "rewind_barrier_duplicates_total{resource_id=\"127.0.0.1:3306\"} 1",
        ] {
            assert!(out.lines().any(|l| l == line), "{line:?} missing in\n{out}");
        }
    }
}
