//! Half messages: the message service's state machine, part of the engine so that every
//! decision is durable on one node and replicated in a cluster like a transaction's.
//!
//! A message is `prepared` (durable, invisible to consumers) until its producer's local
//! transaction decides it: the proxy relays that transaction's COMMIT (`confirmed`) or
//! ROLLBACK (`cancelled`), or the application says so, or check-back finds out in the
//! producer's database. Decisions are write-once: the same one again is a no-op, the
//! opposite one is refused. Confirmed messages are published (`sent` once the broker
//! confirmed) and become `consumed` when a consumer's barrier with their id commits
//! through a proxy. A message that check-back cannot decide after `max_checks` is
//! `undecided` (still checked, at the capped interval) until an operator commits or drops
//! it; one the broker keeps refusing is `dead` until redriven.
//!
//! A message added to a global transaction (a message branch) has no check-back: its
//! branch confirms it when the transaction commits and cancels it when it rolls back
//! (see [`super::drive`]).
//!
//! What the engine keeps here is every message not yet final, and final ones for
//! [`LINGER_MS`] after their last change (so a reader never finds a message in neither
//! memory nor the store while its final record is on its way to disk). Scheduling (next
//! check, publish in flight) is volatile, like phase-two delivery: after a restart every
//! due message is simply checked or published again.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::drive::{backoff, backoff_between};
use super::model::*;
use super::{encode, Engine};
use crate::error::CoordinatorError;

/// How long a message stays in memory after it reached a final status.
pub const LINGER_MS: u64 = 60_000;
/// Events a message's history keeps: the first (prepared) and the latest others.
const HISTORY_LIMIT: usize = 48;
/// Consumers a message remembers.
const CONSUMERS_LIMIT: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    Prepared,
    Confirmed,
    Cancelled,
    Sent,
    Consumed,
    Undecided,
    Dead,
}

impl MessageStatus {
    pub const ALL: [MessageStatus; 7] = [
        MessageStatus::Prepared,
        MessageStatus::Confirmed,
        MessageStatus::Cancelled,
        MessageStatus::Sent,
        MessageStatus::Consumed,
        MessageStatus::Undecided,
        MessageStatus::Dead,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MessageStatus::Prepared => "prepared",
            MessageStatus::Confirmed => "confirmed",
            MessageStatus::Cancelled => "cancelled",
            MessageStatus::Sent => "sent",
            MessageStatus::Consumed => "consumed",
            MessageStatus::Undecided => "undecided",
            MessageStatus::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<MessageStatus> {
        MessageStatus::ALL.into_iter().find(|st| st.name() == s)
    }

    /// Decided for commit (whatever delivery did since).
    pub fn committed(self) -> bool {
        matches!(
            self,
            MessageStatus::Confirmed
                | MessageStatus::Sent
                | MessageStatus::Consumed
                | MessageStatus::Dead
        )
    }

    /// Nothing will happen to it any more except a consumer's barrier (`sent`).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            MessageStatus::Cancelled | MessageStatus::Sent | MessageStatus::Consumed
        )
    }
}

/// One entry of a message's life: what happened, when, and a word on why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageEvent {
    pub at_ms: u64,
    /// `prepared`, `bound`, `confirmed`, `cancelled`, `checked`, `undecided`,
    /// `publish_failed`, `sent`, `dead`, `redriven`, `consumed`.
    pub event: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// A message as it is stored and shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub message_id: String,
    pub topic: String,
    #[serde(default)]
    pub key: Option<String>,
    /// Published as these bytes (UTF-8 text).
    pub payload: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    pub status: MessageStatus,
    /// The resource the producer's local transaction runs on (given at prepare, or told
    /// by the proxy that saw the MSG tag).
    #[serde(default)]
    pub resource_id: Option<String>,
    /// The proxy that bound it (its Announce id).
    #[serde(default)]
    pub proxy_id: Option<String>,
    /// A message branch: its global transaction and branch.
    #[serde(default)]
    pub xid: Option<XidNum>,
    #[serde(default)]
    pub branch_id: Option<BranchId>,
    pub check_after_ms: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Check-backs answered without a decision (still running, or no answer).
    #[serde(default)]
    pub checks: u32,
    /// Publish attempts that failed.
    #[serde(default)]
    pub publish_failures: u32,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Consumers whose barrier with this id committed.
    #[serde(default)]
    pub consumers: Vec<String>,
    pub history: Vec<MessageEvent>,
}

impl MessageRecord {
    fn event(&mut self, now: u64, event: &str, detail: impl Into<String>) {
        if self.history.len() >= HISTORY_LIMIT {
            self.history.remove(1);
        }
        self.history.push(MessageEvent {
            at_ms: now,
            event: event.to_string(),
            detail: detail.into(),
        });
        self.updated_ms = now;
    }

    fn set(&mut self, status: MessageStatus, now: u64, detail: impl Into<String>) {
        self.status = status;
        self.event(now, status.name(), detail);
    }

    /// Records `consumer`'s barrier; false when it was recorded before.
    fn consumed_by(&mut self, consumer: &str, at_ms: u64) -> bool {
        if self.consumers.iter().any(|c| c == consumer) {
            return false;
        }
        if self.consumers.len() < CONSUMERS_LIMIT {
            self.consumers.push(consumer.to_string());
        }
        self.status = MessageStatus::Consumed;
        self.event(at_ms, "consumed", format!("by {consumer}"));
        true
    }
}

/// A message as the engine keeps it: its record and its volatile schedule.
#[derive(Clone, Debug)]
pub(super) struct Msg {
    pub(super) rec: MessageRecord,
    /// Check or publish in flight: (command id, when to stop waiting for its answer).
    in_flight: Option<(u64, u64)>,
    /// When the next check or publish (or, final, the eviction) is due.
    due_ms: u64,
    /// Publish attempts since the last success or redrive (drives the backoff).
    attempts: u32,
}

/// The engine's messages and their schedule.
#[derive(Default)]
pub(super) struct Messages {
    pub(super) by_id: HashMap<String, Msg>,
    /// (due, id) of every message in `by_id`.
    due: BTreeSet<(u64, String)>,
    /// Messages changed since the last [`Engine::take_writes`].
    pub(super) dirty: BTreeSet<String>,
    /// Messages that left memory since then, with their final records.
    pub(super) evicted: Vec<(String, u64, Vec<u8>)>,
    /// Consumed reports for messages no longer in memory, for the store.
    pub(super) consumed_elsewhere: Vec<ConsumedItem>,
}

impl Messages {
    fn schedule(&mut self, id: &str, due_ms: u64) {
        if let Some(m) = self.by_id.get_mut(id) {
            self.due.remove(&(m.due_ms, id.to_string()));
            m.due_ms = due_ms;
            self.due.insert((due_ms, id.to_string()));
        }
    }

    pub(super) fn insert(&mut self, rec: MessageRecord, due_ms: u64) {
        let id = rec.message_id.clone();
        self.due.insert((due_ms, id.clone()));
        self.by_id.insert(
            id,
            Msg {
                rec,
                in_flight: None,
                due_ms,
                attempts: 0,
            },
        );
    }

    pub(super) fn get(&self, id: &str) -> Option<&MessageRecord> {
        self.by_id.get(id).map(|m| &m.rec)
    }

    /// The message a command names, or `message_not_found`.
    fn find(&self, id: &str) -> Result<&Msg, CoordinatorError> {
        self.by_id.get(id).ok_or_else(|| not_found(id))
    }

    fn find_mut(&mut self, id: &str) -> Result<&mut Msg, CoordinatorError> {
        self.by_id.get_mut(id).ok_or_else(|| not_found(id))
    }
}

/// One consumer's barrier with a message id committed (through a proxy of `resource`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumedItem {
    pub message_id: String,
    pub consumer: String,
    pub at_ms: u64,
}

/// What check-back found in the producer's database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckOutcome {
    Committed,
    RolledBack,
    Running,
    Failed(String),
}

/// What the broker said to a publish.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PublishOutcome {
    Confirmed,
    /// May succeed later (connection, time-out, no broker yet).
    Retryable(String),
    /// Will never succeed as it is (invalid message, refused): dead at once.
    Permanent(String),
}

/// A message to prepare (`POST /api/v1/messages`, or a message branch with `xid`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PrepareMessage {
    /// Chosen by the adapter that received the request (random), so the log entry says
    /// the same on every node.
    pub message_id: String,
    pub topic: String,
    #[serde(default)]
    pub key: Option<String>,
    pub payload: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub resource_id: Option<String>,
    /// 0: the configured default.
    #[serde(default)]
    pub check_after_ms: u64,
    #[serde(default)]
    pub xid: Option<XidNum>,
}

/// A proxy saw the message's MSG tag in a local transaction on `resource_id`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BindMessage {
    pub message_id: String,
    pub resource_id: String,
    #[serde(default)]
    pub proxy_id: String,
}

/// Commit (`true`) or roll back a message. `by` says who: `producer` (the proxy relayed
/// the local COMMIT / ROLLBACK), `application` (the API), or an operator's name.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DecideMessage {
    pub message_id: String,
    pub commit: bool,
    pub by: String,
    /// An operator may decide an `undecided` (or still `prepared`) message; the
    /// application may not decide a message branch.
    #[serde(default)]
    pub operator: bool,
}

/// An operator puts a dead message back to `confirmed`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RedriveMessage {
    pub message_id: String,
    pub by: String,
}

/// A proxy's answer to a check-back.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MessageChecked {
    pub message_id: String,
    pub command_id: u64,
    pub outcome: CheckOutcome,
}

/// The publisher's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MessagePublished {
    pub message_id: String,
    pub command_id: u64,
    pub outcome: PublishOutcome,
}

/// Barrier rows that committed through a proxy.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MessagesConsumed {
    pub items: Vec<ConsumedItem>,
}

fn not_found(id: &str) -> CoordinatorError {
    CoordinatorError::MessageNotFound(id.to_string())
}

/// Characters a message id may hold: what a proxy's hint, a header and a URL carry
/// without escaping.
pub fn valid_message_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

impl Engine {
    pub(super) fn prepare_message(
        &mut self,
        c: PrepareMessage,
        now: u64,
    ) -> Result<MessageRecord, CoordinatorError> {
        if !valid_message_id(&c.message_id) {
            return Err(CoordinatorError::InvalidArgument(format!(
                "message id {:?}: 1 to 128 letters, digits, '-', '_', '.' or ':'",
                c.message_id
            )));
        }
        if c.topic.is_empty() {
            return Err(CoordinatorError::InvalidArgument(
                "topic must not be empty".into(),
            ));
        }
        if let Some(m) = self.messages.get(&c.message_id) {
            // A retried prepare (same id, chosen by the caller) answers the same message.
            if m.topic == c.topic && m.payload == c.payload && m.xid == c.xid {
                return Ok(m.clone());
            }
            return Err(CoordinatorError::InvalidArgument(format!(
                "message id {:?} is taken by another message",
                c.message_id
            )));
        }
        let check_after_ms = if c.check_after_ms == 0 {
            self.cfg.msg_check_after_ms
        } else {
            c.check_after_ms
        };
        let mut rec = MessageRecord {
            message_id: c.message_id.clone(),
            topic: c.topic,
            key: c.key,
            payload: c.payload,
            headers: c.headers,
            status: MessageStatus::Prepared,
            resource_id: c.resource_id.filter(|r| !r.is_empty()),
            proxy_id: None,
            xid: c.xid,
            branch_id: None,
            check_after_ms,
            created_ms: now,
            updated_ms: now,
            checks: 0,
            publish_failures: 0,
            last_error: None,
            consumers: Vec::new(),
            history: Vec::new(),
        };
        let due = match c.xid {
            Some(xid) => {
                // A message branch: no check-back; its transaction decides it.
                if self.accepting_branches(xid, &c.message_id)?.is_some() {
                    return Err(CoordinatorError::InvalidArgument(format!(
                        "message id {:?} is taken by another branch",
                        c.message_id
                    )));
                }
                let branch = self.add_branch(
                    xid,
                    rec.topic.clone(),
                    c.message_id.clone(),
                    super::commands::NewBranch::Msg(c.message_id.clone()),
                    Vec::new(),
                    now,
                );
                rec.branch_id = Some(branch);
                rec.event(
                    now,
                    "prepared",
                    format!("branch {branch} of {}", rewind_protocol::xid::format(xid)),
                );
                u64::MAX
            }
            None => {
                rec.event(now, "prepared", "");
                now.saturating_add(check_after_ms)
            }
        };
        self.messages.insert(rec.clone(), due);
        self.messages.dirty.insert(c.message_id);
        Ok(rec)
    }

    pub(super) fn bind_message(
        &mut self,
        c: BindMessage,
        now: u64,
    ) -> Result<MessageStatus, CoordinatorError> {
        let m = self.messages.find_mut(&c.message_id)?;
        let rec = &mut m.rec;
        if rec.xid.is_some() {
            return Err(CoordinatorError::MessageRefused(format!(
                "message {} belongs to global transaction {}: it is sent when that commits, \
                 no MSG tag needed",
                rec.message_id,
                rewind_protocol::xid::format(rec.xid.unwrap_or_default())
            )));
        }
        if rec.status != MessageStatus::Prepared {
            return Err(CoordinatorError::MessageRefused(format!(
                "message {} is already {}",
                rec.message_id,
                rec.status.name()
            )));
        }
        match &rec.resource_id {
            Some(r) if *r != c.resource_id && rec.proxy_id.is_some() => {
                return Err(CoordinatorError::MessageRefused(format!(
                    "message {} is bound to resource {r:?}, not {:?}: one message, one local \
                     transaction",
                    rec.message_id, c.resource_id
                )));
            }
            Some(r) if *r == c.resource_id && rec.proxy_id.is_some() => {}
            _ => {
                rec.resource_id = Some(c.resource_id.clone());
                rec.proxy_id = Some(c.proxy_id.clone());
                let detail = format!("resource {} through proxy {}", c.resource_id, c.proxy_id);
                rec.event(now, "bound", detail);
                self.messages.dirty.insert(c.message_id);
            }
        }
        Ok(MessageStatus::Prepared)
    }

    pub(super) fn decide_message(
        &mut self,
        c: DecideMessage,
        now: u64,
    ) -> Result<MessageStatus, CoordinatorError> {
        let m = self.messages.find(&c.message_id)?;
        if m.rec.xid.is_some() && !c.operator {
            return Err(CoordinatorError::MessageRefused(format!(
                "message {} belongs to global transaction {}: commit or roll back that",
                m.rec.message_id,
                rewind_protocol::xid::format(m.rec.xid.unwrap_or_default())
            )));
        }
        let status = m.rec.status;
        let wanted = if c.commit { "commit" } else { "roll back" };
        match status {
            s if s.committed() && c.commit => return Ok(s),
            MessageStatus::Cancelled if !c.commit => return Ok(status),
            MessageStatus::Prepared | MessageStatus::Undecided => {}
            s => {
                return Err(CoordinatorError::MessageDecided {
                    message_id: c.message_id,
                    status: s,
                    wanted,
                })
            }
        }
        if m.rec.xid.is_some() {
            // An operator on a message branch: its transaction decides, not them.
            return Err(CoordinatorError::MessageRefused(format!(
                "message {} belongs to a global transaction: decide the transaction",
                c.message_id
            )));
        }
        let detail = format!("by {}", c.by);
        Ok(self.settle_message(&c.message_id, c.commit, now, detail))
    }

    /// Confirms or cancels a prepared (or undecided) message: confirmed ones are due for
    /// publishing at once, cancelled ones linger and leave.
    pub(super) fn settle_message(
        &mut self,
        id: &str,
        commit: bool,
        now: u64,
        detail: String,
    ) -> MessageStatus {
        let Some(m) = self.messages.by_id.get_mut(id) else {
            return MessageStatus::Cancelled;
        };
        if !matches!(
            m.rec.status,
            MessageStatus::Prepared | MessageStatus::Undecided
        ) {
            return m.rec.status;
        }
        let st = if commit {
            MessageStatus::Confirmed
        } else {
            MessageStatus::Cancelled
        };
        m.rec.set(st, now, detail);
        m.in_flight = None;
        m.attempts = 0;
        self.messages.dirty.insert(id.to_string());
        let due = if commit { now } else { now + LINGER_MS };
        self.messages.schedule(id, due);
        if commit {
            self.due_message(id, now);
        }
        st
    }

    pub(super) fn redrive_message(
        &mut self,
        c: RedriveMessage,
        now: u64,
    ) -> Result<MessageStatus, CoordinatorError> {
        let m = self.messages.find_mut(&c.message_id)?;
        if m.rec.status != MessageStatus::Dead {
            return Err(CoordinatorError::MessageRefused(format!(
                "message {} is {}, not dead",
                c.message_id,
                m.rec.status.name()
            )));
        }
        m.rec.set(
            MessageStatus::Confirmed,
            now,
            format!("redriven by {}", c.by),
        );
        m.attempts = 0;
        m.in_flight = None;
        self.messages.dirty.insert(c.message_id.clone());
        self.messages.schedule(&c.message_id, now);
        self.due_message(&c.message_id, now);
        Ok(MessageStatus::Confirmed)
    }

    pub(super) fn message_checked(&mut self, c: MessageChecked, now: u64) {
        let Some(m) = self.messages.by_id.get_mut(&c.message_id) else {
            return;
        };
        if m.in_flight.map(|(id, _)| id) == Some(c.command_id) {
            m.in_flight = None;
        }
        if !matches!(
            m.rec.status,
            MessageStatus::Prepared | MessageStatus::Undecided
        ) {
            return;
        }
        match c.outcome {
            CheckOutcome::Committed => {
                self.settle_message(
                    &c.message_id,
                    true,
                    now,
                    "check-back: the local transaction committed".into(),
                );
            }
            CheckOutcome::RolledBack => {
                self.settle_message(
                    &c.message_id,
                    false,
                    now,
                    "check-back: the local transaction did not commit".into(),
                );
            }
            CheckOutcome::Running | CheckOutcome::Failed(_) => {
                let why = match c.outcome {
                    CheckOutcome::Failed(e) => e,
                    _ => "the local transaction is still running".into(),
                };
                self.check_inconclusive(&c.message_id, why, now);
            }
        }
    }

    /// A check that decided nothing: checked again after a capped backoff; `undecided`
    /// once `max_checks` found nothing.
    fn check_inconclusive(&mut self, id: &str, why: String, now: u64) {
        let Some(m) = self.messages.by_id.get_mut(id) else {
            return;
        };
        m.in_flight = None;
        m.rec.checks = m.rec.checks.saturating_add(1);
        m.rec.last_error = Some(why.clone());
        // Checks of one undecided stretch share one history entry (a message checked at
        // the capped interval for days must not push its earlier life out of history).
        let detail = format!("check {}: {why}", m.rec.checks);
        let entries = m.rec.history.len();
        match m.rec.history.last_mut() {
            Some(last) if last.event == "checked" && entries > 1 => {
                last.at_ms = now;
                last.detail = detail;
                m.rec.updated_ms = now;
            }
            _ => m.rec.event(now, "checked", detail),
        }
        if m.rec.status == MessageStatus::Prepared
            && self.cfg.msg_max_checks > 0
            && m.rec.checks >= self.cfg.msg_max_checks
        {
            m.rec.set(
                MessageStatus::Undecided,
                now,
                format!("{} checks decided nothing", m.rec.checks),
            );
        }
        let seed = m.rec.created_ms ^ u64::from(m.rec.checks);
        let wait = backoff_between(
            m.rec.check_after_ms.max(1),
            self.cfg.msg_check_cap_ms.max(1),
            seed,
            m.rec.checks + 1,
        );
        self.messages.dirty.insert(id.to_string());
        self.messages.schedule(id, now.saturating_add(wait));
    }

    pub(super) fn message_published(&mut self, c: MessagePublished, now: u64) {
        let Some(m) = self.messages.by_id.get_mut(&c.message_id) else {
            return;
        };
        if m.in_flight.map(|(id, _)| id) != Some(c.command_id) {
            // An answer to an attempt given up on: a confirmation still counts.
            if !(c.outcome == PublishOutcome::Confirmed && m.rec.status == MessageStatus::Confirmed)
            {
                return;
            }
        }
        m.in_flight = None;
        if m.rec.status != MessageStatus::Confirmed {
            return;
        }
        match c.outcome {
            PublishOutcome::Confirmed => {
                m.rec.last_error = None;
                m.rec.set(MessageStatus::Sent, now, "");
                self.messages.dirty.insert(c.message_id.clone());
                self.messages.schedule(&c.message_id, now + LINGER_MS);
            }
            outcome @ (PublishOutcome::Retryable(_) | PublishOutcome::Permanent(_)) => {
                let (permanent, e) = match outcome {
                    PublishOutcome::Permanent(e) => (true, e),
                    PublishOutcome::Retryable(e) => (false, e),
                    PublishOutcome::Confirmed => unreachable!("matched above"),
                };
                m.attempts += 1;
                m.rec.publish_failures = m.rec.publish_failures.saturating_add(1);
                m.rec.last_error = Some(e.clone());
                m.rec.event(now, "publish_failed", e);
                let max = self.cfg.msg_max_publish_attempts;
                if permanent || (max > 0 && m.attempts >= max) {
                    m.rec.set(
                        MessageStatus::Dead,
                        now,
                        format!("after {} failed publish attempt(s)", m.attempts),
                    );
                    self.messages.dirty.insert(c.message_id.clone());
                    self.messages.schedule(&c.message_id, u64::MAX);
                } else {
                    let seed = m.rec.created_ms.wrapping_add(c.command_id);
                    let wait = backoff(&self.cfg, seed, m.attempts);
                    self.stats.phase_two_retries += 1;
                    self.messages.dirty.insert(c.message_id.clone());
                    self.messages.schedule(&c.message_id, now + wait);
                }
            }
        }
    }

    pub(super) fn messages_consumed(&mut self, c: MessagesConsumed, now: u64) {
        for item in c.items {
            match self.messages.by_id.get_mut(&item.message_id) {
                Some(m) => {
                    // Only what was ever decided for commit can have been consumed (a
                    // prepared id in a barrier is someone else's id that looks alike).
                    if !m.rec.status.committed() {
                        continue;
                    }
                    let at = item.at_ms.min(now).max(m.rec.created_ms);
                    if m.rec.consumed_by(&item.consumer, at) {
                        m.in_flight = None;
                        self.messages.dirty.insert(item.message_id.clone());
                        self.messages.schedule(&item.message_id, now + LINGER_MS);
                    }
                }
                None => self.messages.consumed_elsewhere.push(item),
            }
        }
    }

    /// Check, publish or evict every message that is due.
    pub(super) fn tick_messages(&mut self, now: u64) {
        let due: Vec<String> = self
            .messages
            .due
            .range(..(now.saturating_add(1), String::new()))
            .map(|(_, id)| id.clone())
            .collect();
        for id in due {
            self.due_message(&id, now);
        }
    }

    /// Whatever `id` needs now: a check-back, a publish, an answer given up on, or
    /// leaving memory.
    fn due_message(&mut self, id: &str, now: u64) {
        let timeout = self.cfg.command_timeout_ms;
        let Some(m) = self.messages.by_id.get_mut(id) else {
            return;
        };
        if m.due_ms > now {
            return;
        }
        if let Some((_, deadline)) = m.in_flight {
            if deadline > now {
                self.messages.schedule(id, deadline);
                return;
            }
            // The answer is lost (a proxy or the broker link went away, or a leader
            // changed): try again now. (Nothing durable changes here: the schedule is
            // volatile and differs between nodes; only answers through the log count.)
            m.in_flight = None;
        }
        let status = m.rec.status;
        let checked = m.rec.xid.is_none();
        let resource = m.rec.resource_id.clone();
        match status {
            MessageStatus::Prepared | MessageStatus::Undecided if checked => {
                let Some(resource_id) = resource else {
                    self.settle_message(
                        id,
                        false,
                        now,
                        "check-back: no proxy ever saw its MSG tag (never run in a local \
                         transaction)"
                            .into(),
                    );
                    return;
                };
                let command_id = self.take_command_id();
                let m = self.messages.by_id.get_mut(id).expect("present");
                m.in_flight = Some((command_id, now + timeout));
                self.effects.push(Effect::CheckMessage {
                    command_id,
                    message_id: id.to_string(),
                    resource_id,
                });
                self.messages.schedule(id, now + timeout);
            }
            MessageStatus::Confirmed => {
                let command_id = self.take_command_id();
                let m = self.messages.by_id.get_mut(id).expect("present");
                m.in_flight = Some((command_id, now + timeout));
                let message = Box::new(m.rec.clone());
                self.effects.push(Effect::PublishMessage {
                    command_id,
                    message,
                });
                self.messages.schedule(id, now + timeout);
            }
            s if s.is_final() => {
                let m = self.messages.by_id.remove(id).expect("present");
                self.messages.due.remove(&(m.due_ms, id.to_string()));
                self.messages.dirty.remove(id);
                self.messages
                    .evicted
                    .push((id.to_string(), m.rec.created_ms, encode(&m.rec)));
            }
            _ => self.messages.schedule(id, u64::MAX),
        }
    }

    fn take_command_id(&mut self) -> u64 {
        let id = self.next_command;
        self.next_command += 1;
        id
    }

    /// A message branch's phase two: its message confirmed (commit) or cancelled.
    pub(super) fn finish_message_branch(&mut self, id: &str, commit: bool, xid: XidNum, now: u64) {
        let verb = if commit { "committed" } else { "rolled back" };
        let detail = format!(
            "global transaction {} {verb}",
            rewind_protocol::xid::format(xid)
        );
        self.settle_message(id, commit, now, detail);
    }

    /// Puts back messages not final (and final ones still lingering) after a restart or
    /// a snapshot: confirmed ones publish at once, prepared ones are checked when due.
    /// What changes durable state when due (cancelling a message no proxy bound, leaving
    /// memory) is due at a time computed from the record alone, as on a node that never
    /// stopped: every node of a cluster makes the change at the same log position.
    pub fn restore_messages(&mut self, records: impl IntoIterator<Item = MessageRecord>) {
        for rec in records {
            let due = match rec.status {
                MessageStatus::Prepared | MessageStatus::Undecided if rec.xid.is_none() => {
                    rec.created_ms.saturating_add(rec.check_after_ms)
                }
                MessageStatus::Prepared | MessageStatus::Undecided => u64::MAX,
                MessageStatus::Confirmed => 0,
                MessageStatus::Dead => u64::MAX,
                _ => rec.updated_ms.saturating_add(LINGER_MS),
            };
            self.messages.insert(rec, due);
        }
    }

    /// When the earliest message is due (`None`: none ever is without news).
    pub fn next_message_due(&self) -> Option<u64> {
        self.messages
            .due
            .first()
            .map(|(due, _)| *due)
            .filter(|due| *due != u64::MAX)
    }

    /// The message from memory (the store has the ones that left it).
    pub fn message(&self, id: &str) -> Option<MessageRecord> {
        self.messages.get(id).cloned()
    }

    /// Messages in memory, newest first, optionally of one status.
    pub fn messages_in_memory(&self, status: Option<MessageStatus>) -> Vec<MessageRecord> {
        let mut out: Vec<MessageRecord> = self
            .messages
            .by_id
            .values()
            .filter(|m| status.is_none_or(|s| s == m.rec.status))
            .map(|m| m.rec.clone())
            .collect();
        out.sort_by(|a, b| {
            b.created_ms
                .cmp(&a.created_ms)
                .then_with(|| b.message_id.cmp(&a.message_id))
        });
        out
    }

    /// How many messages in memory have each status.
    pub fn message_census(&self) -> HashMap<MessageStatus, u64> {
        let mut out = HashMap::new();
        for m in self.messages.by_id.values() {
            *out.entry(m.rec.status).or_insert(0) += 1;
        }
        out
    }

    /// Every message in memory (a cluster snapshot's share of them).
    pub fn all_messages(&self) -> Vec<MessageRecord> {
        self.messages
            .by_id
            .values()
            .map(|m| m.rec.clone())
            .collect()
    }

    /// The message writes since the last call: changed records (still in memory),
    /// evictions, and consumed reports for messages the store alone has.
    pub(super) fn take_message_writes(&mut self, w: &mut Writes) {
        for id in std::mem::take(&mut self.messages.dirty) {
            if let Some(m) = self.messages.by_id.get(&id) {
                w.messages.push(MessageWrite {
                    message_id: id,
                    created_ms: m.rec.created_ms,
                    record: encode(&m.rec),
                    in_memory: true,
                });
            }
        }
        for (id, created_ms, record) in self.messages.evicted.drain(..) {
            w.messages.push(MessageWrite {
                message_id: id,
                created_ms,
                record,
                in_memory: false,
            });
        }
        w.consumed
            .extend(std::mem::take(&mut self.messages.consumed_elsewhere));
    }
}

/// A message's durable change: its record and whether the engine still holds it (the
/// store restores those at start).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MessageWrite {
    pub message_id: String,
    pub created_ms: u64,
    pub record: Vec<u8>,
    pub in_memory: bool,
}

/// Marks a stored record consumed (the store applies it to a message no longer in
/// memory); false when nothing changes.
pub fn consume_stored(rec: &mut MessageRecord, item: &ConsumedItem) -> bool {
    if !rec.status.committed() {
        return false;
    }
    rec.consumed_by(&item.consumer, item.at_ms.max(rec.created_ms))
}
