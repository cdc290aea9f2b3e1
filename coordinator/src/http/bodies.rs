//! What the API answers, as types: each serializes to the JSON that DESIGN.md, the
//! console and applications read, and derives its part of the OpenAPI description
//! ([`super::openapi`]), so the two cannot say different things. Fields that are always
//! present but may be `null` are `required` in the description; fields that only some
//! records have (a TCC branch's URLs, a message branch's id) are left out when absent.
//!
//! The request bodies live beside their handlers: the handler parses exactly the type the
//! description is derived from.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::config::ApiAuth;
use crate::engine::{
    AuditEntry, BranchRecord, BranchStatus, BranchType, Conflict, ConflictState, GlobalRecord,
    GlobalStatus, HeldLock, MessageRecord, MessageStatus, PreparedXa,
};
use crate::error::CoordinatorError;
use crate::locks::RowKey;
use crate::outbox::{DeadMessage, ResourceOutbox};
use crate::xa_waits::XaWaiter;

fn xid_text(xid: u64) -> String {
    rewind_protocol::xid::format(xid)
}

/// The body of every error answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable name of what went wrong: `not_found`, `invalid_argument`,
    /// `already_decided`, `unauthorized`, `not_leader`, …
    #[schema(example = "not_found")]
    pub error: &'static str,
    /// What happened and what to do, in words.
    pub message: String,
    /// `not_leader` only: the leader's gRPC address (`null` while none is elected).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub leader_grpc: Option<Option<String>>,
    /// `not_leader` only: the leader's HTTP address, where to send the call again.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub leader_http: Option<Option<String>>,
}

impl From<&CoordinatorError> for ErrorBody {
    fn from(e: &CoordinatorError) -> Self {
        let (leader_grpc, leader_http) = match e {
            CoordinatorError::NotLeader { grpc, http } => (Some(grpc.clone()), Some(http.clone())),
            _ => (None, None),
        };
        ErrorBody {
            error: e.kind(),
            message: e.to_string(),
            leader_grpc,
            leader_http,
        }
    }
}

// ---- operators -------------------------------------------------------------------------

/// A console session opened: its cookie comes in `Set-Cookie`.
#[derive(Serialize, ToSchema)]
pub struct LoggedIn {
    pub operator: String,
    /// Send back in `X-CSRF-Token` on every mutating call made with the session cookie.
    pub csrf: String,
}

#[derive(Serialize, ToSchema)]
pub struct LoggedOut {
    pub operator: String,
    pub logged_out: bool,
}

#[derive(Serialize, ToSchema)]
pub struct Session {
    pub operator: String,
    /// The session's CSRF token (`null` when the call came with a Bearer token).
    #[schema(required = true)]
    pub csrf: Option<String>,
    /// Which calls need the operator credential: `operator` (operator calls only) or `all`.
    pub api_auth: ApiAuth,
}

/// One operator action as the audit log keeps it.
#[derive(Serialize, ToSchema)]
pub struct Audit {
    pub id: u64,
    pub at_ms: u64,
    /// The operator's name.
    pub who: String,
    /// What was done, e.g. `resolve restore_before`, `login`.
    pub action: String,
    /// What it was done to, e.g. `conflict 12`.
    pub target: String,
    /// `ok` or the refusal, in words.
    pub result: String,
}

impl From<&AuditEntry> for Audit {
    fn from(a: &AuditEntry) -> Self {
        Audit {
            id: a.id,
            at_ms: a.at_ms,
            who: a.who.clone(),
            action: a.action.clone(),
            target: a.target.clone(),
            result: a.result.clone(),
        }
    }
}

// ---- transactions -------------------------------------------------------------------

/// One primary-key column: text where the bytes are UTF-8 (the common case), hex
/// otherwise, so it is never lossy.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum PkPart {
    Text(String),
    Bytes {
        /// The column's bytes in lower-case hex.
        hex: String,
    },
}

pub fn pk(pk: &[Vec<u8>]) -> Vec<PkPart> {
    pk.iter()
        .map(|p| match std::str::from_utf8(p) {
            Ok(s) => PkPart::Text(s.to_string()),
            Err(_) => PkPart::Bytes {
                hex: p.iter().map(|b| format!("{b:02x}")).collect(),
            },
        })
        .collect()
}

/// A global row lock's key: a table and its primary-key columns.
#[derive(Serialize, ToSchema)]
pub struct LockKey {
    pub table: String,
    pub pk: Vec<PkPart>,
}

impl From<&RowKey> for LockKey {
    fn from(k: &RowKey) -> Self {
        LockKey {
            table: k.table.clone(),
            pk: pk(&k.pk),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct Transaction {
    #[schema(example = "rw-0000000000000042")]
    pub xid: String,
    pub name: String,
    pub status: GlobalStatus,
    /// The coordinator rolled it back because its timeout passed.
    pub timed_out: bool,
    pub timeout_ms: u64,
    pub created_ms: u64,
    pub deadline_ms: u64,
    pub updated_ms: u64,
    /// When it reached a final status (`null` before).
    #[schema(required = true)]
    pub finished_ms: Option<u64>,
    /// Status changes, oldest first.
    pub history: Vec<StatusChange>,
    /// In registration order.
    pub branches: Vec<Branch>,
}

#[derive(Serialize, ToSchema)]
pub struct StatusChange {
    pub status: GlobalStatus,
    pub at_ms: u64,
}

impl From<&GlobalRecord> for Transaction {
    fn from(s: &GlobalRecord) -> Self {
        Transaction {
            xid: xid_text(s.xid),
            name: s.name.clone(),
            status: s.status,
            timed_out: s.timed_out,
            timeout_ms: s.deadline_ms.saturating_sub(s.created_ms),
            created_ms: s.created_ms,
            deadline_ms: s.deadline_ms,
            updated_ms: s.updated_ms,
            finished_ms: s.finished_ms,
            history: s
                .history
                .iter()
                .map(|h| StatusChange {
                    status: h.status,
                    at_ms: h.at_ms,
                })
                .collect(),
            branches: s.branches.iter().map(Branch::from).collect(),
        }
    }
}

/// A branch of a global transaction. `name`, `confirm_url`, `cancel_url` and `payload`
/// come with TCC branches only, `message_id` with message branches, `xa_bqual` with
/// XA branches.
#[derive(Serialize, ToSchema)]
pub struct Branch {
    pub branch_id: u64,
    #[serde(rename = "type")]
    pub branch_type: BranchType,
    /// The proxy's resource (AT, XA), or the TCC branch's name.
    pub resource_id: String,
    pub status: BranchStatus,
    /// The global row locks it registered (AT).
    pub lock_keys: Vec<LockKey>,
    pub locks_held: bool,
    pub registered_ms: u64,
    pub phase_two_attempts: u32,
    /// The last phase-two failure (`null` when none).
    #[schema(required = true)]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirm_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_url: Option<String>,
    /// TCC: the payload given at registration, as JSON (`null` when none was given).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    pub payload: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// XA: the branch qualifier; `XA RECOVER` in the resource's database shows the
    /// transaction as (gtrid = xid, bqual).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xa_bqual: Option<String>,
}

impl From<&BranchRecord> for Branch {
    fn from(b: &BranchRecord) -> Self {
        debug_assert_eq!(b.tcc.is_some(), b.branch_type == BranchType::Tcc);
        let tcc = b.tcc.as_ref();
        Branch {
            branch_id: b.branch_id,
            branch_type: b.branch_type,
            resource_id: b.resource_id.clone(),
            status: b.status,
            lock_keys: b.lock_keys.iter().map(LockKey::from).collect(),
            locks_held: b.locks_held,
            registered_ms: b.registered_ms,
            phase_two_attempts: b.phase_two_attempts,
            last_error: b.last_error.clone(),
            name: tcc.map(|_| b.resource_id.clone()),
            confirm_url: tcc.map(|t| t.confirm_url.clone()),
            cancel_url: tcc.map(|t| t.cancel_url.clone()),
            payload: tcc.map(|t| {
                t.payload
                    .as_deref()
                    .and_then(|p| serde_json::from_str::<Value>(p).ok())
                    .unwrap_or(Value::Null)
            }),
            message_id: b.message_id.clone(),
            xa_bqual: (b.branch_type == BranchType::Xa).then(|| b.request_id.clone()),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct Begun {
    pub xid: String,
    /// Always `begin`.
    pub status: GlobalStatus,
}

/// A decision's outcome: the transaction's status once the decision is durable.
#[derive(Serialize, ToSchema)]
pub struct Decided {
    /// The xid as the call named it.
    pub xid: String,
    pub status: GlobalStatus,
}

#[derive(Serialize, ToSchema)]
pub struct TccRegistered {
    pub xid: String,
    pub branch_id: u64,
    /// Always `tcc`.
    #[serde(rename = "type")]
    pub branch_type: BranchType,
}

#[derive(Serialize, ToSchema)]
pub struct BranchOperated {
    pub xid: String,
    pub branch_id: u64,
    /// The branch's status after the action.
    pub status: BranchStatus,
}

/// A held global row lock.
#[derive(Serialize, ToSchema)]
pub struct Lock {
    pub resource_id: String,
    pub table: String,
    pub pk: Vec<PkPart>,
    pub xid: String,
    pub branch_id: u64,
    pub since_ms: u64,
    /// The holding transaction's status.
    pub status: GlobalStatus,
}

impl From<HeldLock> for Lock {
    fn from(l: HeldLock) -> Self {
        Lock {
            resource_id: l.resource_id,
            pk: pk(&l.key.pk),
            table: l.key.table,
            xid: xid_text(l.xid),
            branch_id: l.branch_id,
            since_ms: l.since_ms,
            status: l.status,
        }
    }
}

/// A dirty-write conflict: the row's before, after and current images side by side,
/// and where its resolution stands (`state`, with the `action` chosen once resolving).
#[derive(Serialize, ToSchema)]
pub struct ConflictBody {
    pub id: u64,
    pub xid: String,
    pub branch_id: u64,
    pub resource_id: String,
    pub table: String,
    pub pk: Vec<PkPart>,
    /// Column name → value, as JSON (the raw text where it is not JSON).
    #[schema(value_type = Value)]
    pub before: Value,
    #[schema(value_type = Value)]
    pub after: Value,
    #[schema(value_type = Value)]
    pub current: Value,
    /// The last resolve attempt's failure (`null` when none).
    #[schema(required = true)]
    pub last_error: Option<String>,
    pub updated_ms: u64,
    #[serde(flatten)]
    pub state: ConflictState,
}

impl From<&Conflict> for ConflictBody {
    fn from(c: &Conflict) -> Self {
        let parse = |s: &str| {
            serde_json::from_str::<Value>(s).unwrap_or_else(|_| Value::String(s.to_string()))
        };
        ConflictBody {
            id: c.id,
            xid: xid_text(c.xid),
            branch_id: c.branch_id,
            resource_id: c.resource_id.clone(),
            table: c.table.clone(),
            pk: pk(&c.pk),
            before: parse(&c.before),
            after: parse(&c.after),
            current: parse(&c.current),
            last_error: c.last_error.clone(),
            updated_ms: c.updated_ms,
            state: c.state.clone(),
        }
    }
}

// ---- XA ------------------------------------------------------------------------------

#[derive(Serialize, ToSchema)]
pub struct PreparedXaList {
    /// Oldest first.
    pub branches: Vec<PreparedXaBranch>,
}

/// A prepared XA branch and the database sessions waiting on its row locks.
#[derive(Serialize, ToSchema)]
pub struct PreparedXaBranch {
    pub xid: String,
    pub branch_id: u64,
    pub resource_id: String,
    pub xa_bqual: String,
    pub registered_ms: u64,
    pub age_ms: u64,
    /// The global transaction's status.
    pub status: GlobalStatus,
    pub branch_status: BranchStatus,
    pub waiters: Vec<XaWaiterBody>,
}

#[derive(Serialize, ToSchema)]
pub struct XaWaiterBody {
    /// The waiting session's thread id in the backend.
    pub thread_id: u64,
    /// What it runs (at most 200 characters).
    pub query: String,
    pub waiting_ms: u64,
}

impl PreparedXaBranch {
    pub fn new(p: &PreparedXa, waiters: &[XaWaiter], now_ms: u64) -> Self {
        PreparedXaBranch {
            xid: xid_text(p.xid),
            branch_id: p.branch_id,
            resource_id: p.resource_id.clone(),
            xa_bqual: p.bqual.clone(),
            registered_ms: p.registered_ms,
            age_ms: now_ms.saturating_sub(p.registered_ms),
            status: p.status,
            branch_status: p.branch_status,
            waiters: waiters
                .iter()
                .map(|w| XaWaiterBody {
                    thread_id: w.thread_id,
                    query: w.query.clone(),
                    waiting_ms: w.waiting_ms,
                })
                .collect(),
        }
    }
}

// ---- outbox --------------------------------------------------------------------------

/// A resource's latest outbox report (as its proxy read the backend).
#[derive(Serialize, ToSchema)]
pub struct Outbox {
    pub resource_id: String,
    pub proxy_id: String,
    /// The relay's broker, password removed; empty without a relay.
    pub broker: String,
    /// Rows waiting to be published, held and backing-off ones included.
    pub new: u64,
    /// Of those, rows held until their global transaction commits.
    pub held: u64,
    pub oldest_new_age_ms: u64,
    pub dead: u64,
    /// Since the reporting proxy started.
    pub published_total: u64,
    pub failed_total: u64,
    pub last_error: String,
    pub barrier_rows: u64,
    pub barrier_duplicates: u64,
    /// When the proxy read these figures (its clock).
    pub read_at_ms: u64,
    /// When the report arrived (this coordinator's clock).
    pub received_at_ms: u64,
    /// No report for three report intervals: the proxy is gone or cannot read.
    pub stale: bool,
}

impl From<&ResourceOutbox> for Outbox {
    fn from(r: &ResourceOutbox) -> Self {
        let o = &r.report;
        Outbox {
            resource_id: o.resource_id.clone(),
            proxy_id: o.proxy_id.clone(),
            broker: o.broker.clone(),
            new: o.new_count,
            held: o.held_count,
            oldest_new_age_ms: o.oldest_new_age_ms,
            dead: o.dead_count,
            published_total: o.published_total,
            failed_total: o.failed_total,
            last_error: o.last_error.clone(),
            barrier_rows: o.barrier_rows,
            barrier_duplicates: o.barrier_duplicates,
            read_at_ms: o.read_at_ms,
            received_at_ms: r.received_at_ms,
            stale: r.stale,
        }
    }
}

/// An outbox message the relay gave up on.
#[derive(Serialize, ToSchema)]
pub struct DeadOutboxMessage {
    pub resource_id: String,
    pub message_id: String,
    pub topic: String,
    pub msg_key: String,
    pub attempts: u32,
    pub last_error: String,
    pub created_at_ms: u64,
}

impl DeadOutboxMessage {
    pub fn new(resource_id: &str, d: &DeadMessage) -> Self {
        DeadOutboxMessage {
            resource_id: resource_id.to_string(),
            message_id: d.message_id.clone(),
            topic: d.topic.clone(),
            msg_key: d.msg_key.clone(),
            attempts: d.attempts,
            last_error: d.last_error.clone(),
            created_at_ms: d.created_at_ms,
        }
    }
}

/// What an outbox message is after a redrive.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutboxStatus {
    New,
}

#[derive(Serialize, ToSchema)]
pub struct Redriven {
    pub resource_id: String,
    pub message_id: String,
    /// Always `new`: the relay publishes it again.
    pub status: OutboxStatus,
}

// ---- half messages ----------------------------------------------------------------------

/// A half message as lists show it.
#[derive(Serialize, ToSchema)]
pub struct Message {
    pub message_id: String,
    pub topic: String,
    #[schema(required = true)]
    pub key: Option<String>,
    pub status: MessageStatus,
    /// The resource the producer's local transaction runs on, once known.
    #[schema(required = true)]
    pub resource_id: Option<String>,
    /// The proxy that bound it.
    #[schema(required = true)]
    pub proxy_id: Option<String>,
    /// A message branch: its global transaction and branch.
    #[schema(required = true)]
    pub xid: Option<String>,
    #[schema(required = true)]
    pub branch_id: Option<u64>,
    pub check_after_ms: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Check-backs answered without a decision.
    pub checks: u32,
    pub publish_failures: u32,
    #[schema(required = true)]
    pub last_error: Option<String>,
    /// Consumers whose barrier with this message id committed.
    pub consumers: Vec<String>,
}

impl From<&MessageRecord> for Message {
    fn from(m: &MessageRecord) -> Self {
        Message {
            message_id: m.message_id.clone(),
            topic: m.topic.clone(),
            key: m.key.clone(),
            status: m.status,
            resource_id: m.resource_id.clone(),
            proxy_id: m.proxy_id.clone(),
            xid: m.xid.map(xid_text),
            branch_id: m.branch_id,
            check_after_ms: m.check_after_ms,
            created_ms: m.created_ms,
            updated_ms: m.updated_ms,
            checks: m.checks,
            publish_failures: m.publish_failures,
            last_error: m.last_error.clone(),
            consumers: m.consumers.clone(),
        }
    }
}

/// A half message's whole life: the list's fields, its payload and headers, and its
/// history.
#[derive(Serialize, ToSchema)]
pub struct MessageDetail {
    #[serde(flatten)]
    pub message: Message,
    /// Published as these bytes (UTF-8 text).
    pub payload: String,
    pub headers: BTreeMap<String, String>,
    pub history: Vec<MessageEvent>,
}

#[derive(Serialize, ToSchema)]
pub struct MessageEvent {
    pub at_ms: u64,
    /// `prepared`, `bound`, `confirmed`, `cancelled`, `checked`, `undecided`,
    /// `publish_failed`, `sent`, `dead`, `redriven`, `consumed`.
    pub event: String,
    /// A word on why (empty when there is none).
    pub detail: String,
}

impl From<&MessageRecord> for MessageDetail {
    fn from(m: &MessageRecord) -> Self {
        MessageDetail {
            message: Message::from(m),
            payload: m.payload.clone(),
            headers: m.headers.iter().cloned().collect(),
            history: m
                .history
                .iter()
                .map(|e| MessageEvent {
                    at_ms: e.at_ms,
                    event: e.event.clone(),
                    detail: e.detail.clone(),
                })
                .collect(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct MessageDecided {
    pub message_id: String,
    pub status: MessageStatus,
}

// ---- health ------------------------------------------------------------------------------

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Serving {
    Serving,
}

/// `status` is always `serving`; a single node says `role: standalone`, a cluster
/// member adds what `GET /api/v1/cluster` shows.
#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: Serving,
    #[serde(flatten)]
    pub node: Node,
}

#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum Node {
    Standalone(Standalone),
    Member(crate::cluster::ClusterStatus),
}

#[derive(Serialize, ToSchema)]
pub struct Standalone {
    pub role: StandaloneRole,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StandaloneRole {
    Standalone,
}
