//! The engine's inputs and their answers, and the handlers that decide them.
//!
//! Every command is a struct of its own; [`Command`] wraps them for the log (its JSON is
//! the Raft log's payload and must stay readable: a variant holds its struct's fields
//! exactly as the former struct variants did). Each command a caller waits on names its
//! answer type through [`Request`], so no caller ever matches a reply it did not ask for.

use serde::{Deserialize, Serialize};

use super::messages::*;
use super::model::*;
use super::{Engine, AUDIT_IN_MEMORY};
use crate::error::CoordinatorError;
use crate::locks::{InternedKey, RowKey};

/// Begins a single node answers at most before a synced batch: how many XIDs a crash can
/// take with the log's unsynced tail, and so how far a restart moves the XID counter (see
/// [`Command::needs_sync`]).
pub const BEGINS_WITHOUT_SYNC: u64 = 4096;

/// With the `failpoints` feature, a transaction begun with this name panics in the state
/// machine (see the coordinator's crash tests).
#[cfg(feature = "failpoints")]
pub const PANIC_FAILPOINT: &str = "rewind-failpoint: panic in the state machine";

/// Start a global transaction (`timeout_ms` 0: the configured default).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Begin {
    pub name: String,
    pub timeout_ms: u64,
}

/// A proxy's branch asks for its row locks. `request_id` makes a retry idempotent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Register {
    pub xid: XidNum,
    pub resource_id: String,
    pub keys: Vec<RowKey>,
    pub request_id: String,
    /// An XA branch, prepared in the database under XA id (xid, request_id): no keys.
    /// (Both XA fields are left out of an AT registration's log entry, which stays as it
    /// was before XA existed.)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub xa: bool,
    /// The registering proxy's Announce id (empty: unknown).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
}

/// The initiator registers a TCC branch before it calls the participant's Try.
/// `request_id` (optional) makes a retried registration answer the same branch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegisterTcc {
    pub xid: XidNum,
    pub name: String,
    pub call: TccCall,
    #[serde(default)]
    pub request_id: String,
}

/// An operator acts on one branch of a decided transaction (a TCC branch).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OperateBranch {
    pub xid: XidNum,
    pub branch_id: BranchId,
    pub action: BranchAction,
}

/// What a new branch is, for [`Engine::add_branch`].
pub(super) enum NewBranch {
    At,
    Tcc(Box<TccCall>),
    Xa {
        owner: String,
    },
    /// A message branch of this message.
    Msg(String),
}

/// A proxy reports how the branch's local transaction ended (phase one).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub xid: XidNum,
    pub branch_id: BranchId,
    pub committed: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Commit {
    pub xid: XidNum,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rollback {
    pub xid: XidNum,
}

/// A proxy's answer to a phase-two command the engine sent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BranchResult {
    pub xid: XidNum,
    pub branch_id: BranchId,
    pub command_id: u64,
    pub outcome: ProxyAnswer,
}

/// An operator's decision on a dirty-write conflict.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Resolve {
    pub conflict_id: u64,
    pub action: ResolveAction,
}

/// A proxy's answer to a resolve command.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResolveResult {
    pub conflict_id: u64,
    pub command_id: u64,
    pub outcome: ProxyAnswer,
}

/// A proxy serving this resource attached: retry its pending work now.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResourceAvailable {
    pub resource_id: String,
}

/// An operator did something (see [`AuditEntry`]); the engine stamps id and time.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Audit {
    pub who: String,
    pub action: String,
    pub target: String,
    pub result: String,
}

/// The inputs of the state machine (in a cluster, the payload of the Raft log).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Command {
    Begin(Begin),
    Register(Register),
    Report(Report),
    Commit(Commit),
    Rollback(Rollback),
    BranchResult(BranchResult),
    Resolve(Resolve),
    ResolveResult(ResolveResult),
    ResourceAvailable(ResourceAvailable),
    /// Time passed: timeouts, retries, lost answers.
    Tick,
    Audit(Audit),
    RegisterTcc(RegisterTcc),
    OperateBranch(OperateBranch),
    PrepareMessage(PrepareMessage),
    BindMessage(BindMessage),
    DecideMessage(DecideMessage),
    RedriveMessage(RedriveMessage),
    MessageChecked(MessageChecked),
    MessagePublished(MessagePublished),
    MessagesConsumed(MessagesConsumed),
}

impl Command {
    /// Whether a batch holding this command must be durable before anyone hears of its
    /// results. Not for three: a phase-one report (informational: a branch without one is
    /// driven through phase two like any other), a proxy's phase-two answer (losing
    /// one is the lost-answer path phase two already takes: the command is sent again
    /// and every phase-two action is idempotent), and a begin on a single node (see
    /// below). Such a batch is written without a sync of its own; the next synced batch
    /// makes it durable, and a crash before that loses it together with everything after
    /// it, nothing that depended on it being durable.
    ///
    /// A begin lost that way was answered, but nothing durable names its XID: every
    /// registration, decision or message that would is itself a synced batch, written
    /// after it in the same log. So the application learns of the loss as an unknown XID
    /// (1397 from a proxy, 404 from the API), with nothing of it to undo. What must not
    /// happen is the XID being issued again to another transaction after the restart: the
    /// single node's writer syncs at least every [`BEGINS_WITHOUT_SYNC`] begins, and a
    /// restart moves the XID counter that far past what it recovered
    /// ([`crate::engine::Counters::after_restart`]). Under Raft a begin is an entry like
    /// any other (the cluster's log decides durability), so this is not used there.
    pub fn needs_sync(&self) -> bool {
        !matches!(
            self,
            Command::Report(_) | Command::BranchResult(_) | Command::Begin(_)
        )
    }
}

/// The answer to one command, one variant per command: [`Engine::apply`] builds each
/// from its own command's handler, and [`Request::from_reply`] takes it apart again.
/// Only the batch path (sequencer, Raft state machine) carries it untyped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Begin(XidNum),
    Register(Registration),
    Report,
    Commit(GlobalStatus),
    Rollback(GlobalStatus),
    Resolve(u64),
    Audit(u64),
    RegisterTcc(BranchId),
    OperateBranch(BranchStatus),
    Message(Box<MessageRecord>),
    MessageStatus(MessageStatus),
    /// The commands nobody waits on: proxies' answers, resource availability, ticks.
    Noted,
}

/// What a registration got: its branch, or the first key another transaction holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Registration {
    Registered(BranchId),
    LockConflict {
        key: (String, RowKey),
        holder: XidNum,
        holder_rolling_back: bool,
    },
}

/// A command a caller waits on, and the type of its answer.
pub trait Request: Into<Command> {
    type Reply;
    /// `None` only if the engine answered another command's reply (a bug).
    fn from_reply(reply: Reply) -> Option<Self::Reply>;
}

macro_rules! request {
    ($($cmd:ident => $reply:ty, |$r:pat_param| $take:expr;)*) => {$(
        impl From<$cmd> for Command {
            fn from(c: $cmd) -> Command {
                Command::$cmd(c)
            }
        }
        impl Request for $cmd {
            type Reply = $reply;
            fn from_reply(reply: Reply) -> Option<$reply> {
                match reply {
                    $r => Some($take),
                    _ => None,
                }
            }
        }
    )*};
}

request! {
    Begin => XidNum, |Reply::Begin(x)| x;
    Register => Registration, |Reply::Register(r)| r;
    Report => (), |Reply::Report| ();
    Commit => GlobalStatus, |Reply::Commit(s)| s;
    Rollback => GlobalStatus, |Reply::Rollback(s)| s;
    Resolve => u64, |Reply::Resolve(id)| id;
    Audit => u64, |Reply::Audit(id)| id;
    RegisterTcc => BranchId, |Reply::RegisterTcc(id)| id;
    OperateBranch => BranchStatus, |Reply::OperateBranch(st)| st;
    BranchResult => (), |Reply::Noted| ();
    ResolveResult => (), |Reply::Noted| ();
    ResourceAvailable => (), |Reply::Noted| ();
    PrepareMessage => MessageRecord, |Reply::Message(m)| *m;
    BindMessage => MessageStatus, |Reply::MessageStatus(s)| s;
    DecideMessage => MessageStatus, |Reply::MessageStatus(s)| s;
    RedriveMessage => MessageStatus, |Reply::MessageStatus(s)| s;
    MessageChecked => (), |Reply::Noted| ();
    MessagePublished => (), |Reply::Noted| ();
    MessagesConsumed => (), |Reply::Noted| ();
}

impl Engine {
    /// Applies one command at `now`. Refusals (unknown xid, a decision already taken,
    /// bad input) are errors and change nothing.
    pub fn apply(&mut self, cmd: Command, now: u64) -> Result<Reply, CoordinatorError> {
        match cmd {
            Command::Begin(c) => Ok(Reply::Begin(self.begin(c, now))),
            Command::Register(c) => self.register(c, now).map(Reply::Register),
            Command::Report(c) => self.report(c, now).map(|()| Reply::Report),
            Command::Commit(c) => self.commit(c.xid, now).map(Reply::Commit),
            Command::Rollback(c) => self.rollback(c.xid, now).map(Reply::Rollback),
            Command::BranchResult(c) => {
                self.branch_result(c.xid, c.branch_id, c.command_id, c.outcome, now);
                Ok(Reply::Noted)
            }
            Command::Resolve(c) => self
                .resolve(c.conflict_id, c.action, now)
                .map(Reply::Resolve),
            Command::ResolveResult(c) => {
                self.resolve_result(c.conflict_id, c.command_id, c.outcome, now);
                Ok(Reply::Noted)
            }
            Command::ResourceAvailable(c) => {
                self.resource_available(&c.resource_id, now);
                Ok(Reply::Noted)
            }
            Command::Tick => {
                self.tick(now);
                Ok(Reply::Noted)
            }
            Command::Audit(c) => Ok(Reply::Audit(self.audit_entry(c, now))),
            Command::RegisterTcc(c) => self.register_tcc(c, now).map(Reply::RegisterTcc),
            Command::OperateBranch(c) => self.operate_branch(c, now).map(Reply::OperateBranch),
            Command::PrepareMessage(c) => self
                .prepare_message(c, now)
                .map(|m| Reply::Message(Box::new(m))),
            Command::BindMessage(c) => self.bind_message(c, now).map(Reply::MessageStatus),
            Command::DecideMessage(c) => self.decide_message(c, now).map(Reply::MessageStatus),
            Command::RedriveMessage(c) => self.redrive_message(c, now).map(Reply::MessageStatus),
            Command::MessageChecked(c) => {
                self.message_checked(c, now);
                Ok(Reply::Noted)
            }
            Command::MessagePublished(c) => {
                self.message_published(c, now);
                Ok(Reply::Noted)
            }
            Command::MessagesConsumed(c) => {
                self.messages_consumed(c, now);
                Ok(Reply::Noted)
            }
        }
    }

    fn resource_available(&mut self, resource_id: &str, now: u64) {
        let xids: Vec<XidNum> = self
            .globals
            .values()
            .filter(|s| s.branches.iter().any(|b| b.resource_id == resource_id))
            .map(|s| s.xid)
            .collect();
        for xid in xids {
            let s = self.globals.get_mut(&xid).expect("listed");
            for b in s
                .branches
                .iter_mut()
                .filter(|b| b.resource_id == resource_id)
            {
                // Commands in flight went to a stream that may be gone: send them again
                // now rather than after the command timeout (they are idempotent;
                // answers to the old ones still count).
                b.delivery.in_flight = None;
                b.delivery.next_at = now;
            }
            self.drive(xid, now);
        }
    }

    fn audit_entry(&mut self, c: Audit, now: u64) -> u64 {
        let id = self.counters.next_audit;
        self.counters.next_audit += 1;
        self.counters_dirty = true;
        self.audit.push_back(AuditEntry {
            id,
            at_ms: now,
            who: c.who,
            action: c.action,
            target: c.target,
            result: c.result,
        });
        if self.audit.len() > AUDIT_IN_MEMORY {
            self.audit.pop_front();
        }
        self.new_audit.push(id);
        id
    }

    fn begin(&mut self, c: Begin, now: u64) -> XidNum {
        let Begin { name, timeout_ms } = c;
        // Test hook: a bug in the state machine, as the tests of the process's reaction
        // to one need it. Compiled in only with the `failpoints` feature.
        #[cfg(feature = "failpoints")]
        if name == PANIC_FAILPOINT {
            panic!("failpoint: a panic in the state machine");
        }
        let xid = self.counters.next_xid;
        self.counters.next_xid += 1;
        self.counters_dirty = true;
        let timeout = if timeout_ms == 0 {
            self.cfg.default_timeout_ms
        } else {
            timeout_ms
        };
        let timeout = timeout.min(self.cfg.max_timeout_ms);
        self.globals.insert(
            xid,
            GlobalTx {
                xid,
                name,
                status: GlobalStatus::Begin,
                timed_out: false,
                created_ms: now,
                deadline_ms: now.saturating_add(timeout),
                updated_ms: now,
                history: vec![StatusChange {
                    status: GlobalStatus::Begin,
                    at_ms: now,
                }],
                branches: Vec::new(),
            },
        );
        self.dirty.insert(xid);
        xid
    }

    fn register(&mut self, c: Register, now: u64) -> Result<Registration, CoordinatorError> {
        let Register {
            xid,
            resource_id,
            keys,
            request_id,
            xa,
            owner,
        } = c;
        if xa && !keys.is_empty() {
            return Err(CoordinatorError::InvalidArgument(
                "an XA branch takes no lock keys".into(),
            ));
        }
        if resource_id.is_empty() {
            return Err(CoordinatorError::InvalidArgument(
                "resource_id must not be empty".into(),
            ));
        }
        if request_id.is_empty() {
            return Err(CoordinatorError::InvalidArgument(
                "request_id must not be empty".into(),
            ));
        }
        for k in &keys {
            if k.table.is_empty() {
                return Err(CoordinatorError::InvalidArgument(
                    "lock key with empty table".into(),
                ));
            }
            if k.pk.is_empty() {
                return Err(CoordinatorError::InvalidArgument(format!(
                    "lock key on table {:?} with empty primary key",
                    k.table
                )));
            }
        }
        if let Some(id) = self.accepting_branches(xid, &request_id)? {
            return Ok(Registration::Registered(id));
        }
        let mut compact: Vec<InternedKey> = keys
            .iter()
            .map(|k| self.locks.compact(&resource_id, k))
            .collect();
        compact.sort_unstable();
        compact.dedup();
        if let Err((key, holder)) = self.locks.acquire_all(xid, &compact) {
            self.stats.lock_conflicts += 1;
            let holder_rolling_back = self
                .globals
                .get(&holder)
                .is_some_and(|h| h.status.is_rolling_back());
            return Ok(Registration::LockConflict {
                key: self.locks.expand(&key),
                holder,
                holder_rolling_back,
            });
        }
        let kind = if xa {
            NewBranch::Xa { owner }
        } else {
            NewBranch::At
        };
        let id = self.add_branch(xid, resource_id, request_id, kind, compact, now);
        Ok(Registration::Registered(id))
    }

    fn register_tcc(&mut self, c: RegisterTcc, now: u64) -> Result<BranchId, CoordinatorError> {
        let RegisterTcc {
            xid,
            name,
            call,
            request_id,
        } = c;
        if let Some(id) = self.accepting_branches(xid, &request_id)? {
            return Ok(id);
        }
        let resource_id = if name.is_empty() {
            crate::tcc::host_of(&call.confirm_url).to_string()
        } else {
            name
        };
        let request_id = if request_id.is_empty() {
            format!("tcc-{}", self.counters.next_branch)
        } else {
            request_id
        };
        Ok(self.add_branch(
            xid,
            resource_id,
            request_id,
            NewBranch::Tcc(Box::new(call)),
            Vec::new(),
            now,
        ))
    }

    /// The branch an earlier registration with `request_id` got (`Ok(Some)`), or `Ok(None)`
    /// when `xid` takes a new branch; refused once it is decided.
    pub(super) fn accepting_branches(
        &self,
        xid: XidNum,
        request_id: &str,
    ) -> Result<Option<BranchId>, CoordinatorError> {
        let s = self
            .globals
            .get(&xid)
            .ok_or(CoordinatorError::NotFound(xid))?;
        if !request_id.is_empty() {
            if let Some(b) = s.branches.iter().find(|b| b.request_id == request_id) {
                return Ok(Some(b.id));
            }
        }
        if s.status != GlobalStatus::Begin {
            return Err(CoordinatorError::NotActive {
                xid,
                status: s.status,
            });
        }
        Ok(None)
    }

    /// Adds a branch to `xid` (checked by [`Engine::accepting_branches`]); an AT branch's
    /// `keys` are already acquired.
    pub(super) fn add_branch(
        &mut self,
        xid: XidNum,
        resource_id: String,
        request_id: String,
        kind: NewBranch,
        keys: Vec<InternedKey>,
        now: u64,
    ) -> BranchId {
        let id = self.counters.next_branch;
        self.counters.next_branch += 1;
        self.counters_dirty = true;
        let s = self
            .globals
            .get_mut(&xid)
            .expect("checked by accepting_branches");
        let (tcc, xa, owner, msg) = match kind {
            NewBranch::At => (None, false, String::new(), None),
            NewBranch::Tcc(call) => (Some(call), false, String::new(), None),
            NewBranch::Xa { owner } => (None, true, owner, None),
            NewBranch::Msg(id) => (None, false, String::new(), Some(id)),
        };
        s.branches.push(BranchEntry {
            id,
            resource_id,
            // An XA branch registers once it is prepared: its phase one is done.
            status: if xa {
                BranchStatus::PhaseOneDone
            } else {
                BranchStatus::Registered
            },
            request_id,
            // An AT branch's keys were acquired by its registration; the others have none.
            locks_held: tcc.is_none() && !xa && msg.is_none(),
            msg,
            tcc,
            xa,
            owner,
            keys,
            registered_ms: now,
            sends: 0,
            last_error: None,
            delivery: Delivery::default(),
        });
        s.updated_ms = now;
        self.dirty.insert(xid);
        self.stats.branches_registered += 1;
        id
    }

    /// Retry or mark done one unfinished TCC branch of a decided transaction.
    fn operate_branch(
        &mut self,
        c: OperateBranch,
        now: u64,
    ) -> Result<BranchStatus, CoordinatorError> {
        let OperateBranch {
            xid,
            branch_id,
            action,
        } = c;
        let s = self
            .globals
            .get_mut(&xid)
            .ok_or(CoordinatorError::NotFound(xid))?;
        let committing = s.status.is_committing();
        if !committing && !s.status.is_rolling_back() {
            return Err(CoordinatorError::NotDecided(xid));
        }
        let b = s
            .branches
            .iter_mut()
            .find(|b| b.id == branch_id)
            .ok_or(CoordinatorError::BranchNotFound(branch_id))?;
        if b.msg.is_some() {
            return Err(CoordinatorError::InvalidArgument(format!(
                "branch {branch_id} is a message branch: the engine itself finishes it"
            )));
        }
        if b.tcc.is_none() {
            return Err(CoordinatorError::InvalidArgument(format!(
                "branch {branch_id} is an AT branch: its rollback conflicts are resolved in \
                 /api/v1/conflicts"
            )));
        }
        let done = if committing {
            BranchStatus::Committed
        } else {
            BranchStatus::RolledBack
        };
        if b.status == done {
            return Ok(done);
        }
        b.delivery = Delivery::default();
        b.status = match action {
            BranchAction::Retry => BranchStatus::Registered,
            BranchAction::MarkDone => done,
        };
        let status = b.status;
        s.updated_ms = now;
        self.dirty.insert(xid);
        self.drive(xid, now);
        Ok(status)
    }

    fn report(&mut self, c: Report, now: u64) -> Result<(), CoordinatorError> {
        let Report {
            xid,
            branch_id,
            committed,
        } = c;
        let s = self
            .globals
            .get_mut(&xid)
            .ok_or(CoordinatorError::NotFound(xid))?;
        let b = s
            .branches
            .iter_mut()
            .find(|b| b.id == branch_id)
            .ok_or(CoordinatorError::BranchNotFound(branch_id))?;
        if b.status == BranchStatus::Registered {
            b.status = if committed {
                BranchStatus::PhaseOneDone
            } else {
                BranchStatus::PhaseOneFailed
            };
            s.updated_ms = now;
            self.dirty.insert(xid);
        }
        Ok(())
    }

    fn commit(&mut self, xid: XidNum, now: u64) -> Result<GlobalStatus, CoordinatorError> {
        let s = self
            .globals
            .get_mut(&xid)
            .ok_or(CoordinatorError::NotFound(xid))?;
        match s.status {
            GlobalStatus::Begin => {}
            st if st.is_committing() => return Ok(st),
            st => {
                return Err(CoordinatorError::AlreadyDecided {
                    xid,
                    status: st,
                    wanted: "commit",
                })
            }
        }
        s.set_status(GlobalStatus::Committing, now);
        // Commit releases every lock at once: the data is final, only undo records remain.
        for b in s.branches.iter_mut() {
            if b.locks_held {
                self.locks.release_all(xid, &b.keys);
                b.locks_held = false;
            }
        }
        self.dirty.insert(xid);
        self.drive(xid, now);
        Ok(self.status_of(xid).unwrap_or(GlobalStatus::Committed))
    }

    fn rollback(&mut self, xid: XidNum, now: u64) -> Result<GlobalStatus, CoordinatorError> {
        let s = self
            .globals
            .get_mut(&xid)
            .ok_or(CoordinatorError::NotFound(xid))?;
        match s.status {
            GlobalStatus::Begin => {}
            st if st.is_rolling_back() => return Ok(st),
            st => {
                return Err(CoordinatorError::AlreadyDecided {
                    xid,
                    status: st,
                    wanted: "rollback",
                })
            }
        }
        s.set_status(GlobalStatus::RollingBack, now);
        self.dirty.insert(xid);
        self.drive(xid, now);
        Ok(self.status_of(xid).unwrap_or(GlobalStatus::RolledBack))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Raft log stores commands as JSON: the wrapped structs must read and write
    /// exactly what the former struct variants did.
    #[test]
    fn command_json_is_the_log_format() {
        let c: Command = Commit { xid: 5 }.into();
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"Commit":{"xid":5}}"#
        );
        assert_eq!(serde_json::to_string(&Command::Tick).unwrap(), r#""Tick""#);
        let old = r#"{"Register":{"xid":1,"resource_id":"db","keys":[{"table":"t","pk":[[49]]}],"request_id":"r"}}"#;
        let c: Command = serde_json::from_str(old).unwrap();
        assert_eq!(serde_json::to_string(&c).unwrap(), old);
        let xa = r#"{"Register":{"xid":1,"resource_id":"db","keys":[],"request_id":"q","xa":true,"owner":"p"}}"#;
        let c: Command = serde_json::from_str(xa).unwrap();
        assert_eq!(serde_json::to_string(&c).unwrap(), xa);
        let old = r#"{"BranchResult":{"xid":1,"branch_id":2,"command_id":3,"outcome":{"Retryable":"x"}}}"#;
        let c: Command = serde_json::from_str(old).unwrap();
        assert_eq!(serde_json::to_string(&c).unwrap(), old);
    }

    #[test]
    fn each_request_takes_only_its_own_reply() {
        assert_eq!(Begin::from_reply(Reply::Begin(7)), Some(7));
        assert_eq!(
            Commit::from_reply(Reply::Rollback(GlobalStatus::RolledBack)),
            None
        );
        assert_eq!(Report::from_reply(Reply::Noted), None);
    }
}
