//! State-machine tests with explicit time: every transition, timeout and retry path.

use super::*;

mod messages;

fn cfg() -> EngineConfig {
    EngineConfig {
        default_timeout_ms: 1_000,
        max_timeout_ms: 10_000,
        backoff_base_ms: 100,
        backoff_cap_ms: 1_000,
        command_timeout_ms: 500,
        tcc_max_attempts: 3,
        msg_check_after_ms: 1_000,
        msg_max_checks: 3,
        msg_check_cap_ms: 4_000,
        msg_max_publish_attempts: 2,
    }
}

fn key(t: &str, pk: &str) -> RowKey {
    RowKey {
        table: t.into(),
        pk: vec![pk.as_bytes().to_vec()],
    }
}

struct T {
    e: Engine,
    now: u64,
    reqs: u64,
}

impl T {
    fn new() -> T {
        T {
            e: Engine::new(cfg()),
            now: 10_000,
            reqs: 0,
        }
    }
    fn begin(&mut self) -> XidNum {
        match self
            .e
            .apply(
                Command::Begin(Begin {
                    name: "t".into(),
                    timeout_ms: 0,
                }),
                self.now,
            )
            .unwrap()
        {
            Reply::Begin(x) => x,
            r => panic!("{r:?}"),
        }
    }
    fn register(&mut self, xid: XidNum, res: &str, keys: &[(&str, &str)]) -> Reply {
        let keys = keys.iter().map(|(t, p)| key(t, p)).collect();
        self.reqs += 1;
        let req = format!("req-{}", self.reqs);
        self.e
            .apply(
                Command::Register(Register {
                    xid,
                    resource_id: res.into(),
                    keys,
                    request_id: req,
                    xa: false,
                    owner: String::new(),
                }),
                self.now,
            )
            .unwrap()
    }
    fn branch(&mut self, xid: XidNum, res: &str, keys: &[(&str, &str)]) -> BranchId {
        match self.register(xid, res, keys) {
            Reply::Register(Registration::Registered(b)) => b,
            r => panic!("{r:?}"),
        }
    }
    fn status(&self, xid: XidNum) -> Option<GlobalStatus> {
        self.e.status_of(xid)
    }
    /// Drains effects as (command_id, branch_id, action).
    fn sends(&mut self) -> Vec<(u64, BranchId, Decision)> {
        self.e
            .take_effects()
            .into_iter()
            .filter_map(|e| match e {
                Effect::SendBranch {
                    command_id,
                    branch_id,
                    action,
                    ..
                } => Some((command_id, branch_id, action)),
                _ => None,
            })
            .collect()
    }
    fn result(
        &mut self,
        xid: XidNum,
        (cmd, b, _): (u64, BranchId, Decision),
        outcome: ProxyAnswer,
    ) {
        self.e
            .apply(
                Command::BranchResult(BranchResult {
                    xid,
                    branch_id: b,
                    command_id: cmd,
                    outcome,
                }),
                self.now,
            )
            .unwrap();
    }
    fn tick(&mut self, advance: u64) {
        self.now += advance;
        self.e.apply(Command::Tick, self.now).unwrap();
    }
    fn finished_status(&mut self) -> Vec<GlobalStatus> {
        self.e
            .take_writes()
            .finished
            .iter()
            .map(|(_, _, b)| serde_json::from_slice::<GlobalRecord>(b).unwrap().status)
            .collect()
    }
}

#[test]
fn t10_begin_commit_without_branches_finishes_at_once() {
    let mut t = T::new();
    let x = t.begin();
    assert_eq!(t.status(x), Some(GlobalStatus::Begin));
    let r =
        t.e.apply(Command::Commit(Commit { xid: x }), t.now)
            .unwrap();
    assert_eq!(r, Reply::Commit(GlobalStatus::Committed));
    assert_eq!(t.status(x), None, "finished transactions leave memory");
    assert_eq!(t.finished_status(), vec![GlobalStatus::Committed]);
}

#[test]
fn t11_commit_releases_locks_at_once_then_branches_commit_in_parallel() {
    let mut t = T::new();
    let x = t.begin();
    t.branch(x, "db1", &[("t", "1"), ("t", "2")]);
    t.branch(x, "db2", &[("u", "1")]);
    assert_eq!(t.e.lock_count(), 3);
    t.e.apply(Command::Commit(Commit { xid: x }), t.now)
        .unwrap();
    assert_eq!(t.status(x), Some(GlobalStatus::Committing));
    assert_eq!(
        t.e.lock_count(),
        0,
        "commit releases locks before undo deletion"
    );
    let sends = t.sends();
    assert_eq!(sends.len(), 2);
    assert!(sends.iter().all(|s| s.2 == Decision::Commit));
    t.result(x, sends[0], ProxyAnswer::Done);
    assert_eq!(t.status(x), Some(GlobalStatus::Committing));
    t.result(x, sends[1], ProxyAnswer::Done);
    assert_eq!(t.status(x), None);
    assert_eq!(t.finished_status(), vec![GlobalStatus::Committed]);
}

#[test]
fn t12_rollback_runs_in_reverse_registration_order_releasing_locks_per_branch() {
    let mut t = T::new();
    let x = t.begin();
    let b1 = t.branch(x, "db1", &[("t", "1")]);
    let b2 = t.branch(x, "db1", &[("t", "2")]);
    let b3 = t.branch(x, "db2", &[("t", "3")]);
    t.e.apply(Command::Rollback(Rollback { xid: x }), t.now)
        .unwrap();
    assert_eq!(t.status(x), Some(GlobalStatus::RollingBack));
    let mut order = Vec::new();
    for expected_locks in [2, 1, 0] {
        let s = t.sends();
        assert_eq!(s.len(), 1, "one branch at a time");
        assert_eq!(s[0].2, Decision::Rollback);
        order.push(s[0].1);
        t.result(x, s[0], ProxyAnswer::Done);
        assert_eq!(t.e.lock_count(), expected_locks);
    }
    assert_eq!(order, vec![b3, b2, b1]);
    assert_eq!(t.finished_status(), vec![GlobalStatus::RolledBack]);
}

#[test]
fn t13_commit_after_rollback_and_reverse_are_refused_repeats_are_idempotent() {
    let mut t = T::new();
    let x = t.begin();
    t.branch(x, "db1", &[("t", "1")]);
    t.e.apply(Command::Rollback(Rollback { xid: x }), t.now)
        .unwrap();
    let err =
        t.e.apply(Command::Commit(Commit { xid: x }), t.now)
            .unwrap_err();
    assert!(
        matches!(err, CoordinatorError::AlreadyDecided { .. }),
        "{err}"
    );
    assert_eq!(
        t.e.apply(Command::Rollback(Rollback { xid: x }), t.now)
            .unwrap(),
        Reply::Rollback(GlobalStatus::RollingBack)
    );

    let y = t.begin();
    t.branch(y, "db1", &[("t", "9")]);
    t.e.apply(Command::Commit(Commit { xid: y }), t.now)
        .unwrap();
    assert!(t
        .e
        .apply(Command::Rollback(Rollback { xid: y }), t.now)
        .is_err());
    assert_eq!(
        t.e.apply(Command::Commit(Commit { xid: y }), t.now)
            .unwrap(),
        Reply::Commit(GlobalStatus::Committing)
    );
}

#[test]
fn t20_lock_conflict_is_all_or_nothing_and_says_if_holder_rolls_back() {
    let mut t = T::new();
    let a = t.begin();
    let b = t.begin();
    t.branch(a, "db1", &[("t", "1")]);
    match t.register(b, "db1", &[("t", "2"), ("t", "1")]) {
        Reply::Register(Registration::LockConflict {
            holder,
            holder_rolling_back,
            key,
        }) => {
            assert_eq!(holder, a);
            assert!(!holder_rolling_back);
            assert_eq!(key.1, self::key("t", "1"));
        }
        r => panic!("{r:?}"),
    }
    assert_eq!(
        t.e.lock_count(),
        1,
        "nothing of the refused branch was taken"
    );
    t.e.apply(Command::Rollback(Rollback { xid: a }), t.now)
        .unwrap();
    match t.register(b, "db1", &[("t", "1")]) {
        Reply::Register(Registration::LockConflict {
            holder_rolling_back,
            ..
        }) => assert!(holder_rolling_back),
        r => panic!("{r:?}"),
    }
    // Different resource, same table and pk: no conflict.
    t.branch(b, "db2", &[("t", "1")]);
}

#[test]
fn t21_register_is_idempotent_by_request_id_and_refused_when_not_begin() {
    let mut t = T::new();
    let x = t.begin();
    let cmd = |x| {
        Command::Register(Register {
            xid: x,
            resource_id: "db1".into(),
            keys: vec![key("t", "1")],
            request_id: "r1".into(),
            xa: false,
            owner: String::new(),
        })
    };
    let first = t.e.apply(cmd(x), t.now).unwrap();
    let again = t.e.apply(cmd(x), t.now).unwrap();
    assert_eq!(first, again);
    assert_eq!(t.e.lock_count(), 1);
    t.e.apply(Command::Commit(Commit { xid: x }), t.now)
        .unwrap();
    // The retry of an already registered branch still answers its id...
    assert_eq!(t.e.apply(cmd(x), t.now).unwrap(), first);
    // ...but a new branch is refused.
    let new = Command::Register(Register {
        xid: x,
        resource_id: "db1".into(),
        keys: vec![],
        request_id: "r2".into(),
        xa: false,
        owner: String::new(),
    });
    assert!(matches!(
        t.e.apply(new, t.now),
        Err(CoordinatorError::NotActive { .. })
    ));
}

#[test]
fn t22_empty_keys_and_ids_are_invalid() {
    let mut t = T::new();
    let x = t.begin();
    for (res, k, req) in [
        (
            "db",
            RowKey {
                table: "".into(),
                pk: vec![b"1".to_vec()],
            },
            "r",
        ),
        (
            "db",
            RowKey {
                table: "t".into(),
                pk: vec![],
            },
            "r",
        ),
        ("", key("t", "1"), "r"),
        ("db", key("t", "1"), ""),
    ] {
        let r = t.e.apply(
            Command::Register(Register {
                xid: x,
                resource_id: res.into(),
                keys: vec![k],
                request_id: req.into(),
                xa: false,
                owner: String::new(),
            }),
            t.now,
        );
        assert!(
            matches!(r, Err(CoordinatorError::InvalidArgument(_))),
            "{r:?}"
        );
    }
    assert!(matches!(
        t.e.apply(Command::Commit(Commit { xid: 999 }), t.now),
        Err(CoordinatorError::NotFound(999))
    ));
}

#[test]
fn t30_timeout_rolls_back_and_ends_timeout_rolled_back() {
    let mut t = T::new();
    let x = t.begin();
    t.branch(x, "db1", &[("t", "1")]);
    t.tick(999);
    assert_eq!(t.status(x), Some(GlobalStatus::Begin));
    t.tick(1);
    assert_eq!(t.status(x), Some(GlobalStatus::TimeoutRollingBack));
    let s = t.sends();
    assert_eq!(s.len(), 1);
    // Late commit after the timeout decision is refused.
    assert!(t
        .e
        .apply(Command::Commit(Commit { xid: x }), t.now)
        .is_err());
    t.result(x, s[0], ProxyAnswer::Done);
    assert_eq!(t.finished_status(), vec![GlobalStatus::TimeoutRolledBack]);
}

#[test]
fn t31_timeout_is_capped_by_max() {
    let mut t = T::new();
    let x = match t
        .e
        .apply(
            Command::Begin(Begin {
                name: String::new(),
                timeout_ms: u64::MAX,
            }),
            t.now,
        )
        .unwrap()
    {
        Reply::Begin(x) => x,
        r => panic!("{r:?}"),
    };
    t.tick(9_999);
    assert_eq!(t.status(x), Some(GlobalStatus::Begin));
    t.tick(1);
    // No branches: the timeout rollback has nothing to undo.
    assert_eq!(t.status(x), None);
    assert_eq!(t.finished_status(), vec![GlobalStatus::TimeoutRolledBack]);
}

#[test]
fn t40_retryable_commit_failure_backs_off_with_jitter_and_never_gives_up() {
    let mut t = T::new();
    let x = t.begin();
    t.branch(x, "db1", &[("t", "1")]);
    t.e.apply(Command::Commit(Commit { xid: x }), t.now)
        .unwrap();
    let mut s = t.sends();
    let mut delays = Vec::new();
    for _ in 0..12 {
        t.result(x, s[0], ProxyAnswer::Retryable("backend down".into()));
        assert_eq!(t.status(x), Some(GlobalStatus::CommitRetrying));
        // Step time until it is resent; the delay is within [cap/2, cap].
        let start = t.now;
        loop {
            t.tick(10);
            s = t.sends();
            if !s.is_empty() {
                break;
            }
            assert!(t.now - start <= 1_000 + 10, "never later than the cap");
        }
        delays.push(t.now - start);
    }
    assert!(delays[0] >= 50 && delays[0] <= 110, "{delays:?}");
    assert!(
        delays.iter().skip(6).all(|d| *d >= 500),
        "capped, not shrinking: {delays:?}"
    );
    t.result(x, s[0], ProxyAnswer::Done);
    assert_eq!(t.finished_status(), vec![GlobalStatus::Committed]);
}

#[test]
fn t41_lost_answer_is_resent_after_command_timeout_and_stale_results_ignored() {
    let mut t = T::new();
    let x = t.begin();
    t.branch(x, "db1", &[("t", "1")]);
    t.e.apply(Command::Rollback(Rollback { xid: x }), t.now)
        .unwrap();
    let first = t.sends()[0];
    t.tick(499);
    assert!(t.sends().is_empty());
    t.tick(1);
    assert_eq!(t.status(x), Some(GlobalStatus::RollbackRetrying));
    t.tick(200);
    let second = t.sends();
    assert_eq!(second.len(), 1);
    assert_ne!(second[0].0, first.0);
    // A stale failure for the old command does not disturb the new one.
    t.result(x, first, ProxyAnswer::Retryable("late".into()));
    assert!(t.sends().is_empty());
    t.result(x, second[0], ProxyAnswer::Done);
    assert_eq!(t.finished_status(), vec![GlobalStatus::RolledBack]);
}

#[test]
fn t42_resource_available_resends_at_once() {
    let mut t = T::new();
    let x = t.begin();
    t.branch(x, "db1", &[("t", "1")]);
    t.e.apply(Command::Commit(Commit { xid: x }), t.now)
        .unwrap();
    let s = t.sends();
    t.result(x, s[0], ProxyAnswer::Retryable("no proxy attached".into()));
    assert!(t.sends().is_empty());
    t.e.apply(
        Command::ResourceAvailable(ResourceAvailable {
            resource_id: "db1".into(),
        }),
        t.now,
    )
    .unwrap();
    let resent = t.sends();
    assert_eq!(resent.len(), 1);
    // A proxy re-attaching while a command is in flight gets it again at once; the
    // answer to the older command still counts.
    t.e.apply(
        Command::ResourceAvailable(ResourceAvailable {
            resource_id: "db1".into(),
        }),
        t.now,
    )
    .unwrap();
    assert_eq!(t.sends().len(), 1);
    t.result(x, resent[0], ProxyAnswer::Done);
    assert_eq!(t.finished_status(), vec![GlobalStatus::Committed]);
}

#[test]
fn t53_keep_current_and_restart_reopens_in_flight_resolve() {
    let mut t = T::new();
    let x = t.begin();
    t.branch(x, "db1", &[("t", "2")]);
    t.e.apply(Command::Rollback(Rollback { xid: x }), t.now)
        .unwrap();
    let s = t.sends();
    t.result(x, s[0], dirty());
    let id = t.e.conflicts().next().unwrap().id;
    t.e.apply(
        Command::Resolve(Resolve {
            conflict_id: id,
            action: ResolveAction::KeepCurrent,
        }),
        t.now,
    )
    .unwrap();
    let w = t.e.take_writes();
    let active: Vec<GlobalRecord> = w
        .active
        .iter()
        .map(|(_, b)| serde_json::from_slice(b).unwrap())
        .collect();
    let conflicts: Vec<Conflict> = w
        .conflicts
        .iter()
        .map(|(_, b)| serde_json::from_slice(b).unwrap())
        .collect();
    assert!(matches!(
        conflicts[0].state,
        ConflictState::Resolving { .. }
    ));
    // Restart: the resolve's answer can never come, so the conflict is open again and
    // the transaction still holds its lock, rollback_failed.
    let mut r = T {
        e: Engine::restore(cfg(), w.counters.unwrap(), active, conflicts),
        now: t.now,
        reqs: 100,
    };
    assert_eq!(r.e.conflict(id).unwrap().state, ConflictState::Open);
    assert_eq!(r.status(x), Some(GlobalStatus::RollbackFailed));
    assert_eq!(r.e.lock_count(), 1);
    r.e.apply(
        Command::Resolve(Resolve {
            conflict_id: id,
            action: ResolveAction::KeepCurrent,
        }),
        r.now,
    )
    .unwrap();
    let Some(Effect::SendResolve {
        command_id,
        conflict,
    }) = r.e.take_effects().pop()
    else {
        panic!()
    };
    assert_eq!(conflict.action, ResolveAction::KeepCurrent);
    r.e.apply(
        Command::ResolveResult(ResolveResult {
            conflict_id: id,
            command_id,
            outcome: ProxyAnswer::Done,
        }),
        r.now,
    )
    .unwrap();
    let s = r.sends();
    r.result(x, s[0], ProxyAnswer::Done);
    assert_eq!(r.finished_status(), vec![GlobalStatus::RolledBack]);
}

fn dirty() -> ProxyAnswer {
    ProxyAnswer::DirtyWrite(vec![DirtyRow {
        table: "t".into(),
        pk: vec![b"2".to_vec()],
        before: r#"{"v":1}"#.into(),
        after: r#"{"v":2}"#.into(),
        current: r#"{"v":3}"#.into(),
    }])
}

#[test]
fn t50_dirty_write_keeps_locks_records_conflict_and_stops() {
    let mut t = T::new();
    let x = t.begin();
    let b1 = t.branch(x, "db1", &[("t", "1")]);
    let b2 = t.branch(x, "db1", &[("t", "2")]);
    t.e.apply(Command::Rollback(Rollback { xid: x }), t.now)
        .unwrap();
    let s = t.sends();
    assert_eq!(s[0].1, b2);
    t.result(x, s[0], dirty());
    assert_eq!(t.status(x), Some(GlobalStatus::RollbackFailed));
    assert_eq!(
        t.e.lock_count(),
        2,
        "the conflicted branch and the ones before it keep their locks"
    );
    let c: Vec<_> = t.e.conflicts().cloned().collect();
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c[0].xid, c[0].branch_id, c[0].table.as_str()),
        (x, b2, "t")
    );
    assert_eq!(c[0].state, ConflictState::Open);
    // Ticks do not retry a failed rollback by themselves.
    t.tick(60_000);
    assert!(t.sends().is_empty());
    assert_eq!(t.status(x), Some(GlobalStatus::RollbackFailed));
    let _ = b1;
}

#[test]
fn t51_resolve_restore_before_then_rollback_resumes() {
    let mut t = T::new();
    let x = t.begin();
    let b1 = t.branch(x, "db1", &[("t", "1")]);
    let _b2 = t.branch(x, "db1", &[("t", "2")]);
    t.e.apply(Command::Rollback(Rollback { xid: x }), t.now)
        .unwrap();
    let s = t.sends();
    t.result(x, s[0], dirty());
    let id = t.e.conflicts().next().unwrap().id;
    t.e.apply(
        Command::Resolve(Resolve {
            conflict_id: id,
            action: ResolveAction::RestoreBefore,
        }),
        t.now,
    )
    .unwrap();
    let cmd = match t.e.take_effects().pop() {
        Some(Effect::SendResolve {
            command_id,
            conflict,
        }) => {
            assert_eq!(conflict.action, ResolveAction::RestoreBefore);
            assert_eq!(conflict.current, r#"{"v":3}"#);
            command_id
        }
        e => panic!("{e:?}"),
    };
    // A second resolve while the first is in flight is refused.
    assert!(t
        .e
        .apply(
            Command::Resolve(Resolve {
                conflict_id: id,
                action: ResolveAction::Retry
            }),
            t.now
        )
        .is_err());
    // The proxy failed once: conflict reopens with the message.
    t.e.apply(
        Command::ResolveResult(ResolveResult {
            conflict_id: id,
            command_id: cmd,
            outcome: ProxyAnswer::Retryable("db down".into()),
        }),
        t.now,
    )
    .unwrap();
    assert_eq!(t.e.conflict(id).unwrap().state, ConflictState::Open);
    assert_eq!(
        t.e.conflict(id).unwrap().last_error.as_deref(),
        Some("db down")
    );
    t.e.apply(
        Command::Resolve(Resolve {
            conflict_id: id,
            action: ResolveAction::RestoreBefore,
        }),
        t.now,
    )
    .unwrap();
    let Some(Effect::SendResolve { command_id, .. }) = t.e.take_effects().pop() else {
        panic!()
    };
    t.e.apply(
        Command::ResolveResult(ResolveResult {
            conflict_id: id,
            command_id,
            outcome: ProxyAnswer::Done,
        }),
        t.now,
    )
    .unwrap();
    assert_eq!(
        t.e.conflict(id).unwrap().state,
        ConflictState::Resolved {
            action: ResolveAction::RestoreBefore
        }
    );
    assert_eq!(t.status(x), Some(GlobalStatus::RollbackRetrying));
    let s = t.sends();
    t.result(x, s[0], ProxyAnswer::Done);
    let s = t.sends();
    assert_eq!(s[0].1, b1);
    t.result(x, s[0], ProxyAnswer::Done);
    assert_eq!(t.finished_status(), vec![GlobalStatus::RolledBack]);
    assert_eq!(t.e.lock_count(), 0);
}

#[test]
fn t52_resolve_retry_that_is_dirty_again_supersedes() {
    let mut t = T::new();
    let x = t.begin();
    t.branch(x, "db1", &[("t", "2")]);
    t.e.apply(Command::Rollback(Rollback { xid: x }), t.now)
        .unwrap();
    let s = t.sends();
    t.result(x, s[0], dirty());
    let id = t.e.conflicts().next().unwrap().id;
    t.e.apply(
        Command::Resolve(Resolve {
            conflict_id: id,
            action: ResolveAction::Retry,
        }),
        t.now,
    )
    .unwrap();
    let s = t.sends();
    assert_eq!(s.len(), 1);
    t.result(x, s[0], dirty());
    assert_eq!(t.status(x), Some(GlobalStatus::RollbackFailed));
    let states: Vec<_> = t.e.conflicts().map(|c| c.state.clone()).collect();
    assert_eq!(
        states,
        vec![
            ConflictState::Resolved {
                action: ResolveAction::Retry
            },
            ConflictState::Open
        ]
    );
}

#[test]
fn t60_restore_rederives_locks_and_resumes_phase_two() {
    let mut t = T::new();
    let a = t.begin();
    t.branch(a, "db1", &[("t", "1"), ("t", "2")]);
    let b = t.begin();
    t.branch(b, "db1", &[("t", "3")]);
    t.e.apply(Command::Commit(Commit { xid: b }), t.now)
        .unwrap();
    let c = t.begin();
    t.branch(c, "db1", &[("t", "4")]);
    t.branch(c, "db2", &[("t", "4")]);
    t.e.apply(Command::Rollback(Rollback { xid: c }), t.now)
        .unwrap();
    let s = t.sends();
    let s = s.into_iter().find(|s| s.2 == Decision::Rollback).unwrap();
    t.result(c, s, ProxyAnswer::Done);
    let w = t.e.take_writes();
    let active: Vec<GlobalRecord> = w
        .active
        .iter()
        .map(|(_, b)| serde_json::from_slice(b).unwrap())
        .collect();
    let counters = w.counters.unwrap();
    let mut r = T {
        e: Engine::restore(cfg(), counters, active, vec![]),
        now: t.now,
        reqs: 100,
    };
    assert_eq!(r.status(a), Some(GlobalStatus::Begin));
    assert_eq!(r.status(b), Some(GlobalStatus::Committing));
    assert_eq!(r.status(c), Some(GlobalStatus::RollingBack));
    // a holds 2, b none (committed), c only its first branch (second was undone).
    assert_eq!(r.e.lock_count(), 3);
    r.tick(1);
    let s = r.sends();
    assert_eq!(s.len(), 2, "b's commit and c's next rollback resume: {s:?}");
    // Ids keep growing across restarts.
    assert!(r.begin() > c);
}

#[test]
fn t61_query_locks_is_exact_and_skips_own() {
    let mut t = T::new();
    let a = t.begin();
    t.branch(a, "db1", &[("t", "1")]);
    let q = |k: RowKey| vec![("db1".to_string(), k)];
    assert_eq!(
        t.e.query_locks(&q(key("t", "1")), None),
        vec![(0, a, false)]
    );
    assert!(t.e.query_locks(&q(key("t", "1")), Some(a)).is_empty());
    assert!(t.e.query_locks(&q(key("t", "10")), None).is_empty());
    assert!(t.e.query_locks(&q(key("t2", "1")), None).is_empty());
    assert!(t
        .e
        .query_locks(&[("db9".into(), key("t", "1"))], None)
        .is_empty());
}

#[test]
fn t62_phase_one_report_updates_branch_and_failed_branches_need_no_commit() {
    let mut t = T::new();
    let x = t.begin();
    let b1 = t.branch(x, "db1", &[("t", "1")]);
    let b2 = t.branch(x, "db1", &[("t", "2")]);
    t.e.apply(
        Command::Report(Report {
            xid: x,
            branch_id: b1,
            committed: true,
        }),
        t.now,
    )
    .unwrap();
    t.e.apply(
        Command::Report(Report {
            xid: x,
            branch_id: b2,
            committed: false,
        }),
        t.now,
    )
    .unwrap();
    let rec = t.e.record(x).unwrap();
    assert_eq!(rec.branches[0].status, BranchStatus::PhaseOneDone);
    assert_eq!(rec.branches[1].status, BranchStatus::PhaseOneFailed);
    t.e.apply(Command::Commit(Commit { xid: x }), t.now)
        .unwrap();
    let s = t.sends();
    assert_eq!(s.len(), 1);
    t.result(x, s[0], ProxyAnswer::Done);
    assert_eq!(t.finished_status(), vec![GlobalStatus::Committed]);
}

#[test]
fn t63_backoff_is_capped_and_jittered() {
    let c = cfg();
    for attempts in 0..40 {
        for seed in 0..50 {
            let d = backoff(&c, seed, attempts);
            assert!(d <= c.backoff_cap_ms, "{d}");
            let exp =
                (c.backoff_base_ms << attempts.saturating_sub(1).min(20)).min(c.backoff_cap_ms);
            assert!(d >= exp / 2);
        }
    }
    let spread: HashSet<u64> = (0..50).map(|s| backoff(&c, s, 5)).collect();
    assert!(spread.len() > 10, "jitter spreads retries");
}

// ---- TCC branches ----------------------------------------------------------------------

impl T {
    fn tcc(&mut self, xid: XidNum, name: &str) -> BranchId {
        let call = TccCall {
            confirm_url: format!("http://{name}/confirm"),
            cancel_url: format!("http://{name}/cancel"),
            payload: Some(r#"{"amount":5}"#.into()),
        };
        match self
            .e
            .apply(
                Command::RegisterTcc(RegisterTcc {
                    xid,
                    name: name.into(),
                    call,
                    request_id: String::new(),
                }),
                self.now,
            )
            .unwrap()
        {
            Reply::RegisterTcc(b) => b,
            r => panic!("{r:?}"),
        }
    }
    fn operate(&mut self, xid: XidNum, branch_id: BranchId, action: BranchAction) -> BranchStatus {
        match self
            .e
            .apply(
                Command::OperateBranch(OperateBranch {
                    xid,
                    branch_id,
                    action,
                }),
                self.now,
            )
            .unwrap()
        {
            Reply::OperateBranch(s) => s,
            r => panic!("{r:?}"),
        }
    }
    fn branch_status(&self, xid: XidNum, b: BranchId) -> BranchStatus {
        let rec = self.e.record(xid).expect("unfinished");
        rec.branches
            .iter()
            .find(|x| x.branch_id == b)
            .unwrap()
            .status
    }
}

#[test]
fn tcc_branches_call_their_participant_and_mix_with_at_in_reverse_order() {
    let mut t = T::new();
    let x = t.begin();
    let at = t.branch(x, "db1", &[("t", "1")]);
    let c1 = t.tcc(x, "pay");
    let c2 = t.tcc(x, "stock");
    let rec = t.e.record(x).unwrap();
    let types: Vec<BranchType> = rec.branches.iter().map(|b| b.branch_type).collect();
    assert_eq!(types, [BranchType::At, BranchType::Tcc, BranchType::Tcc]);
    assert!(rec.branches[1].lock_keys.is_empty() && !rec.branches[1].locks_held);
    t.e.apply(Command::Rollback(Rollback { xid: x }), t.now)
        .unwrap();
    // Newest first, one at a time: stock's Cancel, then pay's, then the AT undo.
    let mut order = Vec::new();
    for _ in 0..3 {
        let effects = t.e.take_effects();
        assert_eq!(effects.len(), 1, "{effects:?}");
        let Effect::SendBranch {
            command_id,
            branch_id,
            action,
            tcc,
            ..
        } = effects.into_iter().next().unwrap()
        else {
            panic!()
        };
        assert_eq!(action, Decision::Rollback);
        assert_eq!(tcc.is_some(), branch_id != at);
        order.push(branch_id);
        t.result(x, (command_id, branch_id, action), ProxyAnswer::Done);
    }
    assert_eq!(order, [c2, c1, at]);
    assert_eq!(t.status(x), None, "finished");
}

#[test]
fn a_tcc_branch_that_keeps_failing_waits_for_an_operator() {
    let mut t = T::new();
    let x = t.begin();
    let b = t.tcc(x, "pay");
    t.e.apply(Command::Commit(Commit { xid: x }), t.now)
        .unwrap();
    for attempt in 1..=3 {
        let s = t.sends();
        assert_eq!(s.len(), 1, "attempt {attempt}");
        t.result(x, s[0], ProxyAnswer::Retryable("503".into()));
        t.now += 10_000;
        t.e.apply(Command::Tick, t.now).unwrap();
    }
    assert_eq!(t.branch_status(x, b), BranchStatus::Stalled);
    assert_eq!(t.status(x), Some(GlobalStatus::CommitRetrying));
    t.now += 100_000;
    t.e.apply(Command::Tick, t.now).unwrap();
    assert!(t.sends().is_empty(), "a stalled branch is not called");
    // Retry: called again at once, and its success finishes the transaction.
    assert_eq!(
        t.operate(x, b, BranchAction::Retry),
        BranchStatus::Registered
    );
    let s = t.sends();
    assert_eq!(s.len(), 1);
    t.result(x, s[0], ProxyAnswer::Retryable("503".into()));
    assert_eq!(
        t.branch_status(x, b),
        BranchStatus::Registered,
        "attempts start over"
    );
    t.now += 10_000;
    t.e.apply(Command::Tick, t.now).unwrap();
    let s = t.sends();
    t.result(x, s[0], ProxyAnswer::Done);
    assert_eq!(t.status(x), None);
}

#[test]
fn an_operator_marks_a_stalled_cancel_done_and_the_rollback_goes_on() {
    let mut t = T::new();
    let x = t.begin();
    let at = t.branch(x, "db1", &[("t", "1")]);
    let b = t.tcc(x, "pay");
    // Not decided yet: nothing to operate on.
    assert!(matches!(
        t.e.apply(
            Command::OperateBranch(OperateBranch {
                xid: x,
                branch_id: b,
                action: BranchAction::MarkDone
            }),
            t.now
        ),
        Err(CoordinatorError::NotDecided(_))
    ));
    t.e.apply(Command::Rollback(Rollback { xid: x }), t.now)
        .unwrap();
    for _ in 0..3 {
        let s = t.sends();
        assert_eq!(s, vec![(s[0].0, b, Decision::Rollback)]);
        t.result(x, s[0], ProxyAnswer::Retryable("down".into()));
        t.now += 10_000;
        t.e.apply(Command::Tick, t.now).unwrap();
    }
    assert_eq!(t.branch_status(x, b), BranchStatus::Stalled);
    assert!(t.sends().is_empty(), "the older AT branch waits behind it");
    // An AT branch is not the operator's to mark.
    assert!(t
        .e
        .apply(
            Command::OperateBranch(OperateBranch {
                xid: x,
                branch_id: at,
                action: BranchAction::MarkDone
            }),
            t.now
        )
        .is_err());
    assert_eq!(
        t.operate(x, b, BranchAction::MarkDone),
        BranchStatus::RolledBack
    );
    let s = t.sends();
    assert_eq!(s, vec![(s[0].0, at, Decision::Rollback)]);
    t.result(x, s[0], ProxyAnswer::Done);
    assert_eq!(t.status(x), None);
}

#[test]
fn tcc_registration_is_refused_once_decided_and_repeats_by_request_id() {
    let mut t = T::new();
    let x = t.begin();
    let reg = |id: &str| {
        Command::RegisterTcc(RegisterTcc {
            xid: x,
            name: String::new(),
            call: TccCall {
                confirm_url: "http://h:1/c".into(),
                cancel_url: "http://h:1/x".into(),
                payload: None,
            },
            request_id: id.into(),
        })
    };
    let a = t.e.apply(reg("r1"), t.now).unwrap();
    assert_eq!(t.e.apply(reg("r1"), t.now).unwrap(), a);
    let rec = t.e.record(x).unwrap();
    assert_eq!(rec.branches.len(), 1);
    assert_eq!(
        rec.branches[0].resource_id, "h:1",
        "named by the confirm URL's host"
    );
    t.e.apply(Command::Commit(Commit { xid: x }), t.now)
        .unwrap();
    assert!(matches!(
        t.e.apply(reg("r2"), t.now),
        Err(CoordinatorError::NotActive { .. })
    ));
}

#[test]
fn tcc_records_survive_a_restart() {
    let mut t = T::new();
    let x = t.begin();
    t.tcc(x, "pay");
    let w = t.e.take_writes();
    let rec: GlobalRecord = serde_json::from_slice(&w.active[0].1).unwrap();
    let e = Engine::restore(cfg(), Counters::default(), vec![rec.clone()], vec![]);
    assert_eq!(e.record(x).unwrap(), rec);
    assert_eq!(
        rec.branches[0].tcc.as_ref().unwrap().payload.as_deref(),
        Some(r#"{"amount":5}"#)
    );
    // Records written before TCC existed read as AT branches.
    let old = r#"{"branch_id":1,"resource_id":"db","status":"registered","request_id":"r","lock_keys":[],"locks_held":false}"#;
    let b: BranchRecord = serde_json::from_str(old).unwrap();
    assert_eq!((b.branch_type, b.tcc), (BranchType::At, None));
}

#[test]
fn an_xa_branch_is_prepared_when_it_registers_and_carries_its_qualifier() {
    let mut t = T::new();
    let x = t.begin();
    let xa = |keys: Vec<RowKey>, req: &str| {
        Command::Register(Register {
            xid: x,
            resource_id: "db1".into(),
            keys,
            request_id: req.into(),
            xa: true,
            owner: "proxy-1".into(),
        })
    };
    assert!(matches!(
        t.e.apply(xa(vec![key("t", "1")], "q0"), t.now),
        Err(CoordinatorError::InvalidArgument(_))
    ));
    let Reply::Register(Registration::Registered(id)) = t.e.apply(xa(vec![], "q1"), t.now).unwrap()
    else {
        panic!()
    };
    // The same qualifier again answers the same branch (a retried registration).
    let Reply::Register(Registration::Registered(again)) =
        t.e.apply(xa(vec![], "q1"), t.now).unwrap()
    else {
        panic!()
    };
    assert_eq!(again, id);
    let rec = t.e.record(x).unwrap();
    let b = &rec.branches[0];
    assert_eq!(
        (b.branch_type, b.status, b.locks_held),
        (BranchType::Xa, BranchStatus::PhaseOneDone, false)
    );
    t.e.apply(Command::Commit(Commit { xid: x }), t.now)
        .unwrap();
    let Some(Effect::SendBranch {
        command_id,
        branch_id,
        action,
        xa: Some(target),
        ..
    }) = t.e.take_effects().pop()
    else {
        panic!()
    };
    assert_eq!((branch_id, action), (id, Decision::Commit));
    assert_eq!(
        (target.bqual.as_str(), target.owner.as_str()),
        ("q1", "proxy-1")
    );
    t.result(x, (command_id, branch_id, action), ProxyAnswer::Done);
    assert!(t.e.record(x).is_none(), "finished");
}

#[test]
fn prepared_xa_lists_the_xa_branches_until_their_phase_two_is_done() {
    let mut t = T::new();
    let x = t.begin();
    let other = t.begin();
    let register = |xid, req: &str, xa| {
        Command::Register(Register {
            xid,
            resource_id: "db1".into(),
            keys: vec![],
            request_id: req.into(),
            xa,
            owner: "proxy-1".into(),
        })
    };
    let Reply::Register(Registration::Registered(id)) =
        t.e.apply(register(x, "q1", true), t.now).unwrap()
    else {
        panic!()
    };
    // An AT branch is no XA branch.
    t.e.apply(register(other, "r1", false), t.now).unwrap();
    let listed = t.e.prepared_xa();
    assert_eq!(
        listed,
        [PreparedXa {
            xid: x,
            status: GlobalStatus::Begin,
            branch_id: id,
            branch_status: BranchStatus::PhaseOneDone,
            resource_id: "db1".into(),
            bqual: "q1".into(),
            registered_ms: t.now,
        }]
    );
    t.e.apply(Command::Rollback(Rollback { xid: x }), t.now)
        .unwrap();
    let Some(Effect::SendBranch {
        command_id,
        branch_id,
        action,
        ..
    }) = t.e.take_effects().pop()
    else {
        panic!()
    };
    assert_eq!(
        t.e.prepared_xa()[0].status,
        GlobalStatus::RollingBack,
        "listed while its rollback runs"
    );
    t.result(x, (command_id, branch_id, action), ProxyAnswer::Done);
    assert!(t.e.prepared_xa().is_empty(), "gone once rolled back");
}
