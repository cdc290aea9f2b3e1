//! The proxy's client of the coordinator: one coordinator or a Raft cluster of them.
//!
//! Every call goes to the node believed to lead. A node that is not the leader answers
//! `UNAVAILABLE` with the leader's gRPC URL in the `rewind-leader` metadata; the client
//! switches there and retries. A node that cannot be reached is skipped for the next one
//! in the configured list. Retries stop after `retry_for`, so a caller holding a client's
//! local transaction open waits a bounded time. Only idempotent calls are retried: status
//! and lock queries are reads, RegisterBranch carries a request id the coordinator
//! deduplicates by, and ReportBranch, BindMessage and DecideMessage are idempotent by
//! nature.
//!
//! A session thread ([`crate::shards`]) calls through channels of its own, made on its
//! runtime ([`use_thread_channels`]): a channel's request queue and HTTP/2 connection are
//! tasks of the runtime that made it, so a session thread calling through the process's
//! channels handed every status, register and report call to another thread and back.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use rewind_protocol::v1::{
    self, register_branch_response, resource_manager_client::ResourceManagerClient,
    transaction_manager_client::TransactionManagerClient,
};
use rewind_protocol::GlobalStatus;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Response, Status};

/// Metadata key a non-leader puts its leader's gRPC URL in.
pub const LEADER_METADATA: &str = "rewind-leader";

/// Why a coordinator call failed, in the terms the proxy acts on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// Unknown global transaction (never issued, or pruned long after it finished).
    #[error("{0}")]
    NotFound(String),
    /// The global transaction exists but no longer takes branches (decided or finished).
    #[error("{0}")]
    NotActive(String),
    /// The coordinator refused the request itself.
    #[error("{0}")]
    Invalid(String),
    /// No coordinator answered in time.
    #[error("coordinator unavailable: {0}")]
    Unavailable(String),
}

/// Outcome of a branch registration.
#[derive(Debug, Clone)]
pub enum Registration {
    Registered(u64),
    Conflict {
        key: v1::LockKey,
        holder: String,
        holder_rolling_back: bool,
    },
}

thread_local! {
    /// On a session thread: its own channels, by client ([`Coordinators::id`]) and URL.
    /// `None` on every other thread (they share the client's channels).
    static THREAD_CHANNELS: RefCell<Option<HashMap<u64, HashMap<String, Channel>>>> =
        const { RefCell::new(None) };
}

/// Called once on a session thread, before it runs sessions: the coordinator calls made
/// on this thread go through channels made here (see the module doc).
pub(crate) fn use_thread_channels() {
    THREAD_CHANNELS.with(|c| *c.borrow_mut() = Some(HashMap::new()));
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

pub struct Coordinators {
    /// Tells this client's channels apart from another's on a session thread.
    id: u64,
    /// Configured gRPC URLs, in order of preference.
    urls: Vec<String>,
    /// Channels by URL, leader hints included; a std Mutex, never held across `.await`.
    channels: Mutex<HashMap<String, Channel>>,
    /// The URL believed to lead.
    current: Mutex<String>,
    /// One attempt's deadline.
    call_timeout: Duration,
    /// How long a call keeps retrying an unreachable or leaderless cluster.
    retry_for: Duration,
    /// TLS on every channel (`https://` URLs), leader hints' included.
    tls: Option<ClientTlsConfig>,
    /// Phase-one reports waiting for the call in flight (see [`Self::report_later`]).
    reports: Mutex<Reports>,
    /// How the reports left.
    pub report_counts: ReportCounts,
    /// How long a success report is held (see [`Self::report_later`]).
    report_hold: Duration,
}

#[derive(Default)]
struct Reports {
    queued: VecDeque<v1::ReportBranchRequest>,
    /// A task is sending (it takes whatever is queued when its call returns).
    sending: bool,
    /// Success reports held back, oldest first, with when each was held (see
    /// [`Coordinators::report_later`]).
    held: VecDeque<(Instant, v1::ReportBranchRequest)>,
    /// A task waits to move the held reports that are due to `queued`.
    timer: bool,
}

impl Reports {
    /// Queues a report for the sender; true when no sender runs and one must start.
    fn queue(&mut self, report: v1::ReportBranchRequest) -> bool {
        if self.queued.len() >= REPORTS_QUEUED {
            // Only while the coordinator is unreachable for long; the oldest goes.
            self.queued.pop_front();
            tracing::debug!("phase-one report queue full; the oldest report dropped");
        }
        self.queued.push_back(report);
        !std::mem::replace(&mut self.sending, true)
    }
}

/// How phase-one reports left, for the metrics.
#[derive(Default)]
pub struct ReportCounts {
    /// In a ReportBranch call (alone or with others queued meanwhile).
    pub call: AtomicU64,
    /// Along a registration.
    pub registration: AtomicU64,
    /// Not at all: the branch's phase-two command came first.
    pub moot: AtomicU64,
}

/// Reports sent in one call at most.
const REPORTS_PER_CALL: usize = 256;
/// Reports kept queued at most (only reached while the coordinator is unreachable).
const REPORTS_QUEUED: usize = 16 * 1024;
/// How long a success report waits for a registration to carry it, or for its branch's
/// phase-two command to make it moot, before it goes in a call of its own, unless set
/// (`phase_one_report_hold_ms`). The console shows the branch `registered` instead of
/// `phase_one_done` that much longer.
const DEFAULT_REPORT_HOLD: Duration = Duration::from_millis(100);
/// Held reports one registration carries at most.
const REPORTS_PER_REGISTRATION: usize = 64;

impl Coordinators {
    /// `list`: comma-separated gRPC URLs (`http://host:port`, or `https://` with `tls`).
    /// Connections are lazy: the proxy starts and serves untagged traffic with no
    /// coordinator up.
    pub fn new(
        list: &str,
        call_timeout: Duration,
        retry_for: Duration,
        tls: Option<ClientTlsConfig>,
    ) -> Result<Self, String> {
        let scheme = scheme(tls.is_some());
        let urls: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| normalize(u, scheme))
            .collect();
        if urls.is_empty() {
            return Err("no coordinator address given".into());
        }
        let mut channels = HashMap::new();
        for u in &urls {
            channels.insert(u.clone(), channel(u, call_timeout, &tls)?);
        }
        Ok(Coordinators {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            current: Mutex::new(urls[0].clone()),
            urls,
            channels: Mutex::new(channels),
            call_timeout,
            retry_for,
            tls,
            reports: Mutex::new(Reports::default()),
            report_counts: ReportCounts::default(),
            report_hold: DEFAULT_REPORT_HOLD,
        })
    }

    /// Holds success reports this long (zero: sends them at once; see
    /// [`Self::report_later`]).
    pub fn hold_reports(mut self, hold: Duration) -> Self {
        self.report_hold = hold;
        self
    }

    /// The leader's channel as far as we know, and its URL.
    pub fn current(&self) -> (String, Channel) {
        let url = lock(&self.current).clone();
        if let Some(ch) = self.thread_channel(&url) {
            return (url, ch);
        }
        let mut channels = lock(&self.channels);
        if let Some(ch) = channels.get(&url) {
            return (url, ch.clone());
        }
        // A leader hint that failed to parse never becomes current, so this is a
        // configured URL whose channel was built at start.
        let ch = channel(&url, self.call_timeout, &self.tls).unwrap_or_else(|_| {
            channels
                .values()
                .next()
                .cloned()
                .expect("at least one channel")
        });
        channels.insert(url.clone(), ch.clone());
        (url, ch)
    }

    /// On a session thread, this thread's channel to `url`, made on first use (`None`
    /// elsewhere, or if the URL does not parse: the shared map answers then).
    fn thread_channel(&self, url: &str) -> Option<Channel> {
        THREAD_CHANNELS.with(|c| {
            let mut c = c.borrow_mut();
            let mine = c.as_mut()?.entry(self.id).or_default();
            if let Some(ch) = mine.get(url) {
                return Some(ch.clone());
            }
            let ch = channel(url, self.call_timeout, &self.tls).ok()?;
            mine.insert(url.to_string(), ch.clone());
            Some(ch)
        })
    }

    /// After a failure on `failed`: follow the leader hint in `status`, or move to the next
    /// configured URL.
    pub fn fail_over(&self, failed: &str, status: Option<&Status>) {
        let hint = status
            .and_then(|s| s.metadata().get(LEADER_METADATA))
            .and_then(|v| v.to_str().ok())
            .map(|h| normalize(h, scheme(self.tls.is_some())))
            .filter(|h| !h.is_empty() && h != failed);
        let mut current = lock(&self.current);
        if *current != failed {
            return; // someone else already moved on
        }
        if let Some(hint) = hint {
            let mut channels = lock(&self.channels);
            if !channels.contains_key(&hint) {
                match channel(&hint, self.call_timeout, &self.tls) {
                    Ok(ch) => {
                        channels.insert(hint.clone(), ch);
                    }
                    Err(_) => return self.rotate(&mut current),
                }
            }
            *current = hint;
            return;
        }
        self.rotate(&mut current);
    }

    fn rotate(&self, current: &mut String) {
        let at = self
            .urls
            .iter()
            .position(|u| u == current)
            .map_or(0, |i| i + 1);
        *current = self.urls[at % self.urls.len()].clone();
    }

    /// Runs `f` against the leader, following leader hints and skipping dead nodes until it
    /// answers or `retry_for` has passed.
    async fn call<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, CallError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.retry_for;
        let mut attempt = 0u32;
        loop {
            let (url, ch) = self.current();
            let failure = match tokio::time::timeout(self.call_timeout, f(ch)).await {
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(s)) => match s.code() {
                    Code::NotFound => return Err(CallError::NotFound(s.message().into())),
                    Code::FailedPrecondition => {
                        return Err(CallError::NotActive(s.message().into()))
                    }
                    Code::InvalidArgument | Code::OutOfRange => {
                        return Err(CallError::Invalid(s.message().into()))
                    }
                    _ => {
                        let msg = format!("{what} at {url}: {}", s.message());
                        self.fail_over(&url, Some(&s));
                        msg
                    }
                },
                Err(_) => {
                    self.fail_over(&url, None);
                    format!("{what} at {url}: no answer within {:?}", self.call_timeout)
                }
            };
            attempt += 1;
            let pause = backoff(attempt);
            if Instant::now() + pause > deadline {
                return Err(CallError::Unavailable(failure));
            }
            tracing::debug!(%failure, attempt, "coordinator call failed; retrying");
            tokio::time::sleep(pause).await;
        }
    }

    pub async fn status(&self, xid: &str) -> Result<GlobalStatus, CallError> {
        let r = self
            .call("status", |ch| {
                let xid = xid.to_string();
                async move {
                    TransactionManagerClient::new(ch)
                        .status(v1::GlobalRequest { xid })
                        .await
                }
            })
            .await?;
        Ok(GlobalStatus::try_from(r.status).unwrap_or(GlobalStatus::Unspecified))
    }

    pub async fn register(
        self: &Arc<Self>,
        xid: &str,
        resource_id: &str,
        keys: &[v1::LockKey],
        request_id: &str,
        span: Option<&rewind_protocol::trace::Context>,
    ) -> Result<Registration, CallError> {
        // Held success reports ride along (see `report_later`).
        let reports = self.take_held();
        let r = self
            .call("register branch", |ch| {
                let mut req = tonic::Request::new(v1::RegisterBranchRequest {
                    xid: xid.to_string(),
                    resource_id: resource_id.to_string(),
                    lock_keys: keys.to_vec(),
                    request_id: request_id.to_string(),
                    reports: reports.clone(),
                    ..Default::default()
                });
                rewind_protocol::trace::inject(&mut req, span);
                async move { ResourceManagerClient::new(ch).register_branch(req).await }
            })
            .await;
        let r = match r {
            Ok(r) => {
                let n = reports.len() as u64;
                self.report_counts
                    .registration
                    .fetch_add(n, Ordering::Relaxed);
                r
            }
            Err(e) => {
                // An answer (unknown XID, refused) came with the reports applied; without
                // one they go their own way.
                if matches!(e, CallError::Unavailable(_)) {
                    self.queue_reports(reports);
                } else {
                    let n = reports.len() as u64;
                    self.report_counts
                        .registration
                        .fetch_add(n, Ordering::Relaxed);
                }
                return Err(e);
            }
        };
        match r.outcome {
            Some(register_branch_response::Outcome::Registered(b)) => {
                Ok(Registration::Registered(b.branch_id))
            }
            Some(register_branch_response::Outcome::Conflict(c)) => Ok(Registration::Conflict {
                key: c.key.unwrap_or_default(),
                holder: c.holder_xid,
                holder_rolling_back: c.holder_rolling_back,
            }),
            None => Err(CallError::Invalid(
                "registration answer without outcome".into(),
            )),
        }
    }

    /// Registers an XA branch already prepared in the database as XA transaction
    /// (`xid`, `bqual`); `bqual` is also the registration's request id.
    pub async fn register_xa(
        &self,
        xid: &str,
        resource_id: &str,
        bqual: &str,
        proxy_id: &str,
    ) -> Result<u64, CallError> {
        let r = self
            .call("register XA branch", |ch| {
                let req = v1::RegisterBranchRequest {
                    xid: xid.to_string(),
                    resource_id: resource_id.to_string(),
                    lock_keys: Vec::new(),
                    request_id: bqual.to_string(),
                    xa_bqual: bqual.to_string(),
                    proxy_id: proxy_id.to_string(),
                    reports: Vec::new(),
                };
                async move { ResourceManagerClient::new(ch).register_branch(req).await }
            })
            .await?;
        match r.outcome {
            Some(register_branch_response::Outcome::Registered(b)) => Ok(b.branch_id),
            _ => Err(CallError::Invalid(
                "an XA branch registration was answered without a branch".into(),
            )),
        }
    }

    /// What the coordinator knows of the XA branch (`xid`, `bqual`) (see XaBranchState).
    pub async fn xa_branch_state(
        &self,
        xid: &str,
        bqual: &str,
    ) -> Result<v1::XaBranchStateResponse, CallError> {
        self.call("XA branch state", |ch| {
            let req = v1::XaBranchStateRequest {
                xid: xid.to_string(),
                xa_bqual: bqual.to_string(),
            };
            async move { ResourceManagerClient::new(ch).xa_branch_state(req).await }
        })
        .await
    }

    /// Tells the coordinator how a branch's phase one ended, off the caller's path.
    ///
    /// A report is information (a branch without one goes through phase two like any
    /// other: what a report changes is the console's `phase_one_done`, and a failed branch
    /// sent no phase-two command), so it costs as few calls as it can:
    /// - A failure goes at once.
    /// - A success is held for up to `phase_one_report_hold_ms`: the next registration through this
    ///   proxy carries it (`RegisterBranchRequest.reports`), and once its branch's
    ///   phase-two command has come it is moot and never sent ([`Self::moot_report`]). In a
    ///   busy proxy registrations carry nearly all; a lone transaction's last branch is
    ///   usually decided within the hold. Only the rest go in calls of their own.
    /// - One call at a time: the reports that queue while it is on its way go together in
    ///   the next (`ReportBranchRequest.more`).
    ///
    /// One not delivered within the usual retries is only logged.
    pub fn report_later(self: &Arc<Self>, xid: &str, branch_id: u64, committed: bool) {
        let report = v1::ReportBranchRequest {
            xid: xid.to_string(),
            branch_id,
            committed,
            more: Vec::new(),
        };
        if !committed || self.report_hold.is_zero() {
            return self.queue_reports(vec![report]);
        }
        {
            let mut r = lock(&self.reports);
            if r.held.len() >= REPORTS_QUEUED {
                r.held.pop_front();
                tracing::debug!("held phase-one reports full; the oldest report dropped");
            }
            r.held.push_back((Instant::now(), report));
            if std::mem::replace(&mut r.timer, true) {
                return;
            }
        }
        let me = self.clone();
        tokio::spawn(async move { me.release_held().await });
    }

    /// Branch `branch_id` of `xid` got its phase-two command here: its held report, if
    /// any, tells the coordinator nothing it acts on any more, and is dropped.
    pub fn moot_report(&self, xid: &str, branch_id: u64) {
        let mut r = lock(&self.reports);
        let at = r
            .held
            .iter()
            .position(|(_, h)| h.branch_id == branch_id && h.xid == xid);
        if let Some(i) = at {
            r.held.remove(i);
            self.report_counts.moot.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The held reports a registration carries (the oldest first).
    fn take_held(&self) -> Vec<v1::ReportBranchRequest> {
        let mut r = lock(&self.reports);
        let n = r.held.len().min(REPORTS_PER_REGISTRATION);
        r.held.drain(..n).map(|(_, h)| h).collect()
    }

    /// Sends `reports` in calls of their own, starting a sender if none runs.
    fn queue_reports(self: &Arc<Self>, reports: Vec<v1::ReportBranchRequest>) {
        let mut start = false;
        {
            let mut r = lock(&self.reports);
            for report in reports {
                start |= r.queue(report);
            }
        }
        if start {
            let me = self.clone();
            tokio::spawn(async move { me.send_reports().await });
        }
    }

    /// Moves held reports to the sender as they come due, until none is held.
    async fn release_held(self: Arc<Self>) {
        loop {
            let due = {
                let mut r = lock(&self.reports);
                match r.held.front() {
                    Some((at, _)) => *at + self.report_hold,
                    None => {
                        r.timer = false;
                        return;
                    }
                }
            };
            tokio::time::sleep_until(due.into()).await;
            let now = Instant::now();
            let due: Vec<_> = {
                let mut r = lock(&self.reports);
                let n = r
                    .held
                    .iter()
                    .take_while(|(at, _)| *at + self.report_hold <= now)
                    .count();
                r.held.drain(..n).map(|(_, h)| h).collect()
            };
            if !due.is_empty() {
                self.queue_reports(due);
            }
        }
    }

    /// Sends queued reports, a call per batch, until none is left.
    async fn send_reports(&self) {
        loop {
            let mut batch: Vec<v1::ReportBranchRequest> = {
                let mut r = lock(&self.reports);
                if r.queued.is_empty() {
                    r.sending = false;
                    return;
                }
                let n = r.queued.len().min(REPORTS_PER_CALL);
                r.queued.drain(..n).collect()
            };
            let mut first = batch.remove(0);
            first.more = batch;
            let n = 1 + first.more.len();
            self.report_counts
                .call
                .fetch_add(n as u64, Ordering::Relaxed);
            let sent = self
                .call("report branches", |ch| {
                    let req = first.clone();
                    async move { ResourceManagerClient::new(ch).report_branch(req).await }
                })
                .await;
            if let Err(e) = sent {
                tracing::debug!(reports = n, error = %e, "phase-one reports not delivered");
            }
        }
    }

    /// A half message's local transaction runs on `resource_id` (see BindMessage):
    /// `NotFound` for an unknown message, `NotActive` for one decided, part of a global
    /// transaction or bound elsewhere (the coordinator's text says which).
    pub async fn bind_message(
        &self,
        message_id: &str,
        resource_id: &str,
        proxy_id: &str,
    ) -> Result<(), CallError> {
        self.call("bind message", |ch| {
            let req = v1::BindMessageRequest {
                message_id: message_id.to_string(),
                resource_id: resource_id.to_string(),
                proxy_id: proxy_id.to_string(),
            };
            async move { ResourceManagerClient::new(ch).bind_message(req).await }
        })
        .await
        .map(|_| ())
    }

    /// A half message's local transaction committed (`commit`) or rolled back; answers the
    /// message's status. `NotActive`: it was decided the other way.
    pub async fn decide_message(
        &self,
        message_id: &str,
        commit: bool,
        resource_id: &str,
    ) -> Result<String, CallError> {
        self.call("decide message", |ch| {
            let req = v1::DecideMessageRequest {
                message_id: message_id.to_string(),
                commit,
                resource_id: resource_id.to_string(),
            };
            async move { ResourceManagerClient::new(ch).decide_message(req).await }
        })
        .await
        .map(|r| r.status)
    }

    /// Which of `keys` other global transactions hold (`xid`'s own locks excluded).
    pub async fn query_locks(
        &self,
        keys: &[v1::LockKey],
        xid: Option<&str>,
    ) -> Result<Vec<v1::LockHolder>, CallError> {
        let r = self
            .call("query locks", |ch| {
                let req = v1::QueryLocksRequest {
                    keys: keys.to_vec(),
                    xid: xid.unwrap_or_default().to_string(),
                };
                async move { ResourceManagerClient::new(ch).query_locks(req).await }
            })
            .await?;
        Ok(r.held)
    }
}

fn scheme(tls: bool) -> &'static str {
    if tls {
        "https"
    } else {
        "http"
    }
}

/// `host:port` becomes `<scheme>://host:port` (leader hints are bare addresses); a
/// trailing `/` is dropped.
fn normalize(url: &str, scheme: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if url.contains("://") {
        url.to_string()
    } else {
        format!("{scheme}://{url}")
    }
}

fn channel(url: &str, timeout: Duration, tls: &Option<ClientTlsConfig>) -> Result<Channel, String> {
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("coordinator URL {url:?}: {e}"))?;
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.clone())
            .map_err(|e| format!("coordinator URL {url:?}: TLS: {e}"))?;
    }
    Ok(rewind_protocol::liveness::client(endpoint)
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .connect_lazy())
}

/// Jittered exponential backoff: 20 ms, 40 ms, … capped at 500 ms, each in [½, 1]×.
pub fn backoff(attempt: u32) -> Duration {
    let cap = 20u64.saturating_mul(1 << attempt.min(5)).min(500);
    Duration::from_millis(rand::rng().random_range(cap / 2..=cap))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Values behind these locks are replaced whole; a panic elsewhere cannot leave them
    // half-written.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn urls_are_normalized_and_rotated() {
        let c = Coordinators::new(
            "127.0.0.1:1, http://127.0.0.1:2/",
            Duration::from_secs(1),
            Duration::from_secs(1),
            None,
        )
        .unwrap();
        assert_eq!(c.urls, ["http://127.0.0.1:1", "http://127.0.0.1:2"]);
        assert_eq!(c.current().0, "http://127.0.0.1:1");
        c.fail_over("http://127.0.0.1:1", None);
        assert_eq!(c.current().0, "http://127.0.0.1:2");
        // A stale failure report from a caller that used the old leader changes nothing.
        c.fail_over("http://127.0.0.1:1", None);
        assert_eq!(c.current().0, "http://127.0.0.1:2");
        let mut s = Status::unavailable("not the leader");
        s.metadata_mut()
            .insert(LEADER_METADATA, "127.0.0.1:3".parse().unwrap());
        c.fail_over("http://127.0.0.1:2", Some(&s));
        assert_eq!(c.current().0, "http://127.0.0.1:3");
        c.fail_over("http://127.0.0.1:3", None);
        assert_eq!(
            c.current().0,
            "http://127.0.0.1:1",
            "a hint outside the list rotates back"
        );
        assert!(Coordinators::new(" , ", Duration::ZERO, Duration::ZERO, None).is_err());
        // With TLS, bare addresses and leader hints are https://.
        let tls = Some(ClientTlsConfig::new());
        let c = Coordinators::new("127.0.0.1:1", Duration::ZERO, Duration::ZERO, tls).unwrap();
        assert_eq!(c.current().0, "https://127.0.0.1:1");
        let mut s = Status::unavailable("not the leader");
        s.metadata_mut()
            .insert(LEADER_METADATA, "127.0.0.1:3".parse().unwrap());
        c.fail_over("https://127.0.0.1:1", Some(&s));
        assert_eq!(c.current().0, "https://127.0.0.1:3");
    }

    /// Each session thread calls over a connection of its own, made once; other threads
    /// share the client's. Counted at a listener that accepts and never answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_thread_calls_over_its_own_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                held.push(sock);
            }
        });
        let ms = Duration::from_millis(150);
        let c = Arc::new(Coordinators::new(&url, ms, ms, None).unwrap());
        let connections = || accepted.load(Ordering::SeqCst);
        // Two calls from a thread like a session thread: one connection of its own.
        let on_session_thread = |c: Arc<Coordinators>| {
            std::thread::spawn(move || {
                use_thread_channels();
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    assert!(c.status("x").await.is_err());
                    assert!(c.status("x").await.is_err());
                });
            })
            .join()
            .unwrap()
        };
        on_session_thread(c.clone());
        assert_eq!(
            connections(),
            1,
            "a session thread's two calls share one connection"
        );
        on_session_thread(c.clone());
        assert_eq!(connections(), 2, "another session thread has its own");
        // Called from the process's runtime: the shared channel, made once.
        assert!(c.status("x").await.is_err());
        assert!(c.status("x").await.is_err());
        assert_eq!(connections(), 3, "other threads share the client's channel");
    }
}
