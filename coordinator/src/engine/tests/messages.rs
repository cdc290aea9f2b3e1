//! Half messages in the state machine, with explicit time: decisions write-once,
//! check-back, undecided, delivery, dead and redrive, message branches, consumed, and
//! what survives a restore.

use super::*;

struct M {
    e: Engine,
    now: u64,
}

fn prepare(id: &str) -> PrepareMessage {
    PrepareMessage {
        message_id: id.into(),
        topic: "orders".into(),
        key: Some("k".into()),
        payload: "{}".into(),
        headers: vec![],
        resource_id: None,
        check_after_ms: 0,
        xid: None,
    }
}

impl M {
    fn new() -> M {
        M {
            e: Engine::new(cfg()),
            now: 10_000,
        }
    }
    fn apply(&mut self, c: Command) -> Result<Reply, CoordinatorError> {
        self.e.apply(c, self.now)
    }
    fn prepare(&mut self, id: &str) {
        self.apply(Command::PrepareMessage(prepare(id))).unwrap();
    }
    fn bind(&mut self, id: &str) -> Result<Reply, CoordinatorError> {
        self.apply(Command::BindMessage(BindMessage {
            message_id: id.into(),
            resource_id: "db".into(),
            proxy_id: "p1".into(),
        }))
    }
    fn decide(&mut self, id: &str, commit: bool) -> Result<Reply, CoordinatorError> {
        self.apply(Command::DecideMessage(DecideMessage {
            message_id: id.into(),
            commit,
            by: "producer".into(),
            operator: false,
        }))
    }
    fn status(&self, id: &str) -> MessageStatus {
        self.e.message(id).expect("in memory").status
    }
    fn tick(&mut self, ms: u64) {
        self.now += ms;
        self.apply(Command::Tick).unwrap();
    }
    /// Drained effects: ("check" | "publish", command id, message id).
    fn effects(&mut self) -> Vec<(&'static str, u64, String)> {
        self.e
            .take_effects()
            .into_iter()
            .filter_map(|e| match e {
                Effect::CheckMessage {
                    command_id,
                    message_id,
                    ..
                } => Some(("check", command_id, message_id)),
                Effect::PublishMessage {
                    command_id,
                    message,
                } => Some(("publish", command_id, message.message_id)),
                _ => None,
            })
            .collect()
    }
    fn checked(&mut self, id: &str, command_id: u64, outcome: CheckOutcome) {
        self.apply(Command::MessageChecked(MessageChecked {
            message_id: id.into(),
            command_id,
            outcome,
        }))
        .unwrap();
    }
    fn published(&mut self, id: &str, command_id: u64, outcome: PublishOutcome) {
        self.apply(Command::MessagePublished(MessagePublished {
            message_id: id.into(),
            command_id,
            outcome,
        }))
        .unwrap();
    }
}

#[test]
fn decisions_are_write_once() {
    let mut m = M::new();
    m.prepare("a");
    m.bind("a").unwrap();
    assert_eq!(
        m.decide("a", true).unwrap(),
        Reply::MessageStatus(MessageStatus::Confirmed)
    );
    // The same again: a no-op. The opposite: refused, nothing changes.
    assert!(m.decide("a", true).is_ok());
    let err = m.decide("a", false).unwrap_err();
    assert!(
        matches!(err, CoordinatorError::MessageDecided { .. }),
        "{err}"
    );
    assert_eq!(err.http_status(), axum::http::StatusCode::CONFLICT);
    assert_eq!(m.status("a"), MessageStatus::Confirmed);
    // A decided message refuses a later MSG tag.
    assert!(matches!(
        m.bind("a"),
        Err(CoordinatorError::MessageRefused(_))
    ));
    m.prepare("b");
    m.decide("b", false).unwrap();
    assert!(m.decide("b", false).is_ok());
    assert!(m.decide("b", true).is_err());
    assert_eq!(m.status("b"), MessageStatus::Cancelled);
    assert!(matches!(
        m.decide("nope", true),
        Err(CoordinatorError::MessageNotFound(_))
    ));
}

#[test]
fn confirmed_is_published_then_sent_and_consumed() {
    let mut m = M::new();
    m.prepare("a");
    m.bind("a").unwrap();
    m.decide("a", true).unwrap();
    let eff = m.effects();
    assert_eq!(eff.len(), 1, "{eff:?}");
    let (kind, cmd, _) = eff[0].clone();
    assert_eq!(kind, "publish");
    // A lost answer: published again after the command timeout, same message id.
    m.tick(600);
    let again = m.effects();
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].1, cmd);
    // The late confirmation of the first attempt still counts.
    m.published("a", cmd, PublishOutcome::Confirmed);
    assert_eq!(m.status("a"), MessageStatus::Sent);
    m.apply(Command::MessagesConsumed(MessagesConsumed {
        items: vec![ConsumedItem {
            message_id: "a".into(),
            consumer: "billing".into(),
            at_ms: m.now,
        }],
    }))
    .unwrap();
    assert_eq!(m.status("a"), MessageStatus::Consumed);
    assert_eq!(m.e.message("a").unwrap().consumers, vec!["billing"]);
    // Final: it leaves memory after the linger, written as no longer held.
    m.e.take_writes();
    m.tick(crate::engine::messages::LINGER_MS + 1);
    assert!(m.e.message("a").is_none());
    let w = m.e.take_writes();
    assert!(w
        .messages
        .iter()
        .any(|x| x.message_id == "a" && !x.in_memory));
    // A consumed report for it now goes to the store.
    m.apply(Command::MessagesConsumed(MessagesConsumed {
        items: vec![ConsumedItem {
            message_id: "a".into(),
            consumer: "audit".into(),
            at_ms: m.now,
        }],
    }))
    .unwrap();
    assert_eq!(m.e.take_writes().consumed.len(), 1);
}

#[test]
fn never_bound_is_cancelled_when_its_check_is_due() {
    let mut m = M::new();
    m.prepare("a");
    m.tick(999);
    assert_eq!(m.status("a"), MessageStatus::Prepared);
    m.tick(1);
    assert_eq!(m.status("a"), MessageStatus::Cancelled);
    assert!(m.effects().is_empty(), "nothing checked, nothing sent");
    // Too late for a MSG tag.
    assert!(m.bind("a").is_err());
}

#[test]
fn check_back_decides_or_goes_undecided() {
    let mut m = M::new();
    for id in ["c", "r", "u"] {
        m.prepare(id);
        m.bind(id).unwrap();
    }
    m.tick(1_000);
    let checks = m.effects();
    assert_eq!(checks.len(), 3, "{checks:?}");
    for (kind, cmd, id) in checks {
        assert_eq!(kind, "check");
        match id.as_str() {
            "c" => m.checked(&id, cmd, CheckOutcome::Committed),
            "r" => m.checked(&id, cmd, CheckOutcome::RolledBack),
            _ => m.checked(&id, cmd, CheckOutcome::Running),
        }
    }
    assert_eq!(m.status("c"), MessageStatus::Confirmed);
    assert_eq!(m.status("r"), MessageStatus::Cancelled);
    assert_eq!(m.status("u"), MessageStatus::Prepared);
    // The cancelled one can no longer be committed by a late producer report.
    assert!(m.decide("r", true).is_err());
    // Still running: checked again with a growing, capped wait; undecided at max_checks.
    for _ in 0..2 {
        let mut got = Vec::new();
        for _ in 0..10 {
            m.tick(1_000);
            got = m.effects().into_iter().filter(|e| e.2 == "u").collect();
            if !got.is_empty() {
                break;
            }
        }
        assert_eq!(got.len(), 1, "checked again");
        m.checked("u", got[0].1, CheckOutcome::Failed("backend down".into()));
    }
    assert_eq!(m.status("u"), MessageStatus::Undecided);
    assert_eq!(m.e.message("u").unwrap().checks, 3);
    // The application may not decide an undecided message on its own… the producer's
    // own report still may (its transaction ended), and so may an operator.
    m.apply(Command::DecideMessage(DecideMessage {
        message_id: "u".into(),
        commit: false,
        by: "operator alice".into(),
        operator: true,
    }))
    .unwrap();
    assert_eq!(m.status("u"), MessageStatus::Cancelled);
    let hist: Vec<String> =
        m.e.message("u")
            .unwrap()
            .history
            .iter()
            .map(|h| h.event.clone())
            .collect();
    assert_eq!(
        hist,
        ["prepared", "bound", "checked", "undecided", "cancelled"]
    );
}

#[test]
fn publish_failures_end_dead_until_redriven() {
    let mut m = M::new();
    m.prepare("a");
    m.decide("a", true).unwrap();
    for _ in 0..2 {
        let mut eff = m.effects();
        for _ in 0..20 {
            if !eff.is_empty() {
                break;
            }
            m.tick(100);
            eff = m.effects();
        }
        let (_, cmd, _) = eff[0].clone();
        m.published("a", cmd, PublishOutcome::Retryable("unroutable".into()));
    }
    assert_eq!(m.status("a"), MessageStatus::Dead);
    m.tick(60_000);
    assert!(
        m.effects().is_empty(),
        "a dead message waits for an operator"
    );
    // Dead still counts as decided for commit.
    assert!(m.decide("a", true).is_ok());
    assert!(m.decide("a", false).is_err());
    m.apply(Command::RedriveMessage(RedriveMessage {
        message_id: "a".into(),
        by: "alice".into(),
    }))
    .unwrap();
    assert_eq!(m.status("a"), MessageStatus::Confirmed);
    let eff = m.effects();
    assert_eq!(eff.len(), 1);
    m.published("a", eff[0].1, PublishOutcome::Confirmed);
    assert_eq!(m.status("a"), MessageStatus::Sent);
}

#[test]
fn message_branch_follows_its_transaction() {
    let mut m = M::new();
    for (commit, id) in [(true, "mc"), (false, "mr")] {
        let xid = match m
            .apply(Command::Begin(Begin {
                name: String::new(),
                timeout_ms: 10_000,
            }))
            .unwrap()
        {
            Reply::Begin(x) => x,
            r => panic!("{r:?}"),
        };
        let mut p = prepare(id);
        p.xid = Some(xid);
        m.apply(Command::PrepareMessage(p)).unwrap();
        let rec = m.e.record(xid).unwrap();
        assert_eq!(rec.branches.len(), 1);
        assert_eq!(rec.branches[0].branch_type, BranchType::Msg);
        // No MSG tag, no application decision: the transaction decides.
        assert!(m.bind(id).is_err());
        assert!(m.decide(id, true).is_err());
        // No check-back either.
        m.tick(5_000);
        assert_eq!(m.status(id), MessageStatus::Prepared);
        assert!(m.effects().iter().all(|e| e.2 != id));
        let c = if commit {
            Command::Commit(Commit { xid })
        } else {
            Command::Rollback(Rollback { xid })
        };
        m.apply(c).unwrap();
        assert_eq!(
            m.status(id),
            if commit {
                MessageStatus::Confirmed
            } else {
                MessageStatus::Cancelled
            }
        );
        assert!(m.e.status_of(xid).is_none(), "the transaction finished");
        let eff: Vec<_> = m.effects().into_iter().filter(|e| e.2 == id).collect();
        assert_eq!(eff.len(), usize::from(commit), "{eff:?}");
    }
}

#[test]
fn restore_keeps_what_was_decided_and_due_times_from_records() {
    let mut m = M::new();
    m.prepare("unbound");
    m.prepare("bound");
    m.bind("bound").unwrap();
    m.prepare("confirmed");
    m.decide("confirmed", true).unwrap();
    m.tick(10);
    let records = m.e.all_messages();
    let mut r = Engine::new(cfg());
    r.restore_messages(records);
    // The unbound one is cancelled at the same time as on the node that never stopped.
    let before = m.now;
    r.apply(Command::Tick, before + 989).unwrap();
    assert_eq!(
        r.message("unbound").unwrap().status,
        MessageStatus::Prepared
    );
    r.apply(Command::Tick, before + 990).unwrap();
    assert_eq!(
        r.message("unbound").unwrap().status,
        MessageStatus::Cancelled
    );
    assert_eq!(r.message("bound").unwrap().status, MessageStatus::Prepared);
    let eff: Vec<_> = r
        .take_effects()
        .into_iter()
        .filter(|e| matches!(e, Effect::PublishMessage { .. }))
        .collect();
    assert_eq!(eff.len(), 1, "the confirmed one is published again");
}
