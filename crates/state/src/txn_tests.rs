use super::*;
use crate::command::Command;
use crate::model::SessionBehavior;
use crate::Change;

fn kv(verb: KvVerb, key: &str) -> TxnOp {
    TxnOp::Kv(TxnKv {
        verb,
        key: key.into(),
        value: Vec::new(),
        flags: 0,
        index: 0,
        session: String::new(),
    })
}

fn with(op: TxnOp, edit: impl FnOnce(&mut TxnKv)) -> TxnOp {
    match op {
        TxnOp::Kv(mut inner) => {
            edit(&mut inner);
            TxnOp::Kv(inner)
        }
        other => other,
    }
}

fn set(key: &str, value: &str) -> TxnOp {
    with(kv(KvVerb::Set, key), |op| op.value = value.into())
}

fn indexed(verb: KvVerb, key: &str, index: u64) -> TxnOp {
    with(kv(verb, key), |op| op.index = index)
}

fn with_session(verb: KvVerb, key: &str, session: &str) -> TxnOp {
    with(kv(verb, key), |op| {
        op.session = session.into();
        op.value = b"locked".to_vec();
    })
}

fn txn(state: &mut State, index: u64, ops: Vec<TxnOp>) -> (TxnOutcome, Vec<Change>) {
    match state.apply(index, &Command::Txn(ops)) {
        (Outcome::Txn(outcome), changes) => (outcome, changes),
        (other, _) => panic!("not a transaction's outcome: {other:?}"),
    }
}

fn errors(outcome: &TxnOutcome) -> Vec<(usize, &str)> {
    outcome
        .errors
        .iter()
        .map(|e| (e.op_index, e.what.as_str()))
        .collect()
}

fn kv_result(result: &TxnResult) -> &KvEntry {
    match result {
        TxnResult::Kv(entry) => entry,
        other => panic!("not a KV result: {other:?}"),
    }
}

fn node(name: &str) -> Registration {
    Registration {
        node: name.into(),
        address: "10.0.0.1".into(),
        datacenter: "dc1".into(),
        ..Default::default()
    }
}

fn session(id: &str, node: &str) -> Session {
    Session {
        id: id.into(),
        name: String::new(),
        node: node.into(),
        checks: Vec::new(),
        node_checks: Vec::new(),
        service_checks: Vec::new(),
        lock_delay_ns: 0,
        behavior: SessionBehavior::Release,
        ttl: String::new(),
        ttl_ns: 0,
        create_index: 0,
        modify_index: 0,
    }
}

/// A state with the node `n1`, the key `k` (written at 2) and the sessions `a` and `b`.
fn seeded() -> State {
    let mut state = State::default();
    state.apply(1, &Command::Register(Box::new(node("n1"))));
    let (outcome, _) = txn(&mut state, 2, vec![set("k", "v")]);
    assert!(outcome.errors.is_empty());
    for id in ["a", "b"] {
        state.apply(3, &Command::SessionCreate(Box::new(session(id, "n1"))));
    }
    state
}

#[test]
fn a_failing_operation_leaves_the_state_as_it_was() {
    let mut state = seeded();
    let before = state.clone();
    let (outcome, changes) = txn(
        &mut state,
        10,
        vec![
            set("x", "1"),
            kv(KvVerb::Delete, "k"),
            with_session(KvVerb::Lock, "y", "a"),
            TxnOp::Node {
                verb: CatalogVerb::Set,
                node: node("n2"),
                index: 0,
            },
            indexed(KvVerb::CheckIndex, "k", 99),
            kv(KvVerb::DeleteTree, ""),
        ],
    );
    assert_eq!(
        errors(&outcome),
        vec![(4, "failed to check index, key \"k\" doesn't exist")]
    );
    assert!(outcome.results.is_empty());
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(state, before);
    assert_eq!(state.keys_held_by("a").count(), 0);
    assert!(state.instances_of("web").is_empty());
    // What the failed entry did not write, a later entry sees as before.
    let (outcome, _) = txn(&mut state, 11, vec![indexed(KvVerb::CheckIndex, "k", 2)]);
    assert!(outcome.errors.is_empty(), "{outcome:?}");
}

#[test]
fn every_failing_operation_is_reported_and_later_ones_still_run() {
    let mut state = seeded();
    let (outcome, _) = txn(
        &mut state,
        10,
        vec![
            kv(KvVerb::Get, "missing"),
            set("x", "1"),
            kv(KvVerb::CheckNotExists, "x"),
            indexed(KvVerb::Cas, "k", 1),
        ],
    );
    assert_eq!(
        errors(&outcome),
        vec![
            (0, "key \"missing\" doesn't exist"),
            (2, "key \"x\" exists"),
            (3, "failed to set key \"k\", index is stale"),
        ]
    );
    assert!(!state.kv.contains_key("x"));
}

#[test]
fn operations_run_in_order_and_see_earlier_ones() {
    let mut state = seeded();
    let (outcome, changes) = txn(
        &mut state,
        10,
        vec![
            kv(KvVerb::CheckNotExists, "x"),
            set("x", "1"),
            kv(KvVerb::Get, "x"),
            indexed(KvVerb::CheckIndex, "x", 10),
            indexed(KvVerb::Cas, "x", 10),
            kv(KvVerb::GetTree, ""),
            kv(KvVerb::Delete, "k"),
            kv(KvVerb::CheckNotExists, "k"),
            kv(KvVerb::GetOrEmpty, "k"),
        ],
    );
    assert!(outcome.errors.is_empty(), "{outcome:?}");
    let results: Vec<&KvEntry> = outcome.results.iter().map(kv_result).collect();
    // set, get, check-index, cas, the tree (k and x: k is deleted later), get-or-empty.
    assert_eq!(results.len(), 7);
    assert!(results[0].value.is_empty(), "a write returns no value");
    assert_eq!(results[1].value, b"1");
    assert_eq!(results[2].modify_index, 10);
    let tree: Vec<&str> = results[4..6].iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        tree,
        ["k", "x"],
        "the tree read before the delete still lists k"
    );
    assert_eq!((results[6].key.as_str(), results[6].create_index), ("k", 0));
    assert!(!state.kv.contains_key("k"));
    assert_eq!(state.kv["x"].value, b"");
    assert_eq!(state.indexes.kv, 10);
    assert!(!changes.is_empty());
}

#[test]
fn the_tree_verbs_and_delete_cas_follow_consul() {
    let mut state = seeded();
    txn(&mut state, 4, vec![set("t/a", "1"), set("t/b", "2")]);
    let (outcome, _) = txn(&mut state, 5, vec![kv(KvVerb::GetTree, "t/")]);
    let keys: Vec<&str> = outcome
        .results
        .iter()
        .map(|r| kv_result(r).key.as_str())
        .collect();
    assert_eq!(keys, ["t/a", "t/b"]);
    assert_eq!(kv_result(&outcome.results[0]).value, b"1");
    let (outcome, _) = txn(
        &mut state,
        6,
        vec![
            indexed(KvVerb::DeleteCas, "t/a", 3),
            indexed(KvVerb::DeleteCas, "gone", 3),
        ],
    );
    assert_eq!(
        errors(&outcome),
        vec![(0, "failed to delete key \"t/a\", index is stale")]
    );
    let (outcome, _) = txn(
        &mut state,
        7,
        vec![
            indexed(KvVerb::DeleteCas, "t/a", 4),
            kv(KvVerb::DeleteTree, "t/"),
        ],
    );
    assert!(outcome.errors.is_empty() && outcome.results.is_empty());
    assert!(state.kv_prefix("t/").next().is_none());
    assert_eq!(state.kv_tombstones["t/b"], 7);
}

#[test]
fn lock_verbs_obey_sessions_as_acquire_and_release_do() {
    let mut state = seeded();
    let (outcome, _) = txn(&mut state, 10, vec![with_session(KvVerb::Lock, "l", "a")]);
    let entry = kv_result(&outcome.results[0]);
    assert_eq!(
        (
            entry.lock_index,
            entry.session.as_deref(),
            entry.value.len()
        ),
        (1, Some("a"), 0)
    );
    let (outcome, _) = txn(
        &mut state,
        11,
        vec![
            with_session(KvVerb::Lock, "l", "b"),
            with_session(KvVerb::Lock, "l", "nobody"),
            with_session(KvVerb::Lock, "l", ""),
            with_session(KvVerb::Unlock, "l", "b"),
        ],
    );
    assert_eq!(
        errors(&outcome),
        vec![
            (0, "failed to lock key \"l\", lock is already held"),
            (1, "invalid session \"nobody\""),
            (2, "missing session"),
            (
                3,
                "failed to unlock key \"l\", lock isn't held, or is held by another session"
            ),
        ]
    );
    let (outcome, _) = txn(
        &mut state,
        12,
        vec![
            with_session(KvVerb::CheckSession, "l", "a"),
            with_session(KvVerb::Unlock, "l", "a"),
            with_session(KvVerb::Lock, "l", "b"),
        ],
    );
    assert!(outcome.errors.is_empty(), "{outcome:?}");
    assert_eq!(state.kv["l"].lock_index, 2);
    assert_eq!(state.keys_held_by("b").collect::<Vec<_>>(), ["l"]);
    assert_eq!(state.keys_held_by("a").count(), 0);
}

/// Vault's storage writes: `check-session` on its lock key, then the write. Once the
/// session no longer holds the lock, the check fails and the write is not applied.
#[test]
fn a_write_guarded_by_check_session_fails_once_the_lock_is_lost() {
    let mut state = seeded();
    txn(
        &mut state,
        10,
        vec![with_session(KvVerb::Lock, "vault/lock", "a")],
    );
    let guarded = |value: &str| {
        vec![
            with_session(KvVerb::CheckSession, "vault/lock", "a"),
            set("vault/data", value),
        ]
    };
    let (outcome, _) = txn(&mut state, 11, guarded("1"));
    assert!(outcome.errors.is_empty(), "{outcome:?}");
    state.apply(12, &Command::SessionDestroy { id: "a".into() });
    let (outcome, _) = txn(&mut state, 13, guarded("2"));
    assert_eq!(
        errors(&outcome),
        vec![(
            0,
            "failed session check for key \"vault/lock\", current session \"\" != \"a\""
        )]
    );
    assert_eq!(state.kv["vault/data"].value, b"1");
}

#[test]
fn catalog_verbs_follow_consul() {
    let mut state = seeded();
    let service = |verb, id: &str, index| TxnOp::Service {
        verb,
        node: "n2".into(),
        service: ServiceSpec {
            id: id.into(),
            name: "web".into(),
            port: 80,
            ..Default::default()
        },
        index,
    };
    let check = |verb, index| TxnOp::Check {
        verb,
        node: "n2".into(),
        check: Box::new(CheckSpec {
            check_id: "c".into(),
            name: "c".into(),
            service_id: "w1".into(),
            ..Default::default()
        }),
        index,
    };
    let node_op = |verb, index| TxnOp::Node {
        verb,
        node: node("n2"),
        index,
    };
    // Without the node first, the service cannot be written.
    let (outcome, _) = txn(
        &mut state,
        10,
        vec![
            service(CatalogVerb::Set, "w1", 0),
            node_op(CatalogVerb::Get, 0),
        ],
    );
    assert_eq!(
        errors(&outcome),
        vec![
            (0, "Missing node registration"),
            (1, "node \"n2\" doesn't exist")
        ]
    );
    let (outcome, _) = txn(
        &mut state,
        11,
        vec![
            node_op(CatalogVerb::Cas, 0),
            service(CatalogVerb::Set, "w1", 0),
            check(CatalogVerb::Set, 0),
            service(CatalogVerb::Get, "w1", 0),
            check(CatalogVerb::Get, 0),
        ],
    );
    assert!(outcome.errors.is_empty(), "{outcome:?}");
    assert_eq!(outcome.results.len(), 5);
    match &outcome.results[4] {
        TxnResult::Check(c) => {
            assert_eq!(
                (c.status, c.service_name.as_str()),
                (CheckStatus::Critical, "web")
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(state.instances_of("web").len(), 1);
    let (outcome, _) = txn(
        &mut state,
        12,
        vec![
            node_op(CatalogVerb::Cas, 3),
            service(CatalogVerb::Cas, "w1", 0),
            check(CatalogVerb::DeleteCas, 5),
            service(CatalogVerb::DeleteCas, "w2", 11),
            service(CatalogVerb::Get, "w2", 0),
        ],
    );
    assert_eq!(
        errors(&outcome),
        vec![
            (0, "failed to set node \"n2\", index is stale"),
            (
                1,
                "failed to set service \"w1\" on node \"n2\", index is stale"
            ),
            (
                2,
                "failed to delete check \"c\" on node \"n2\", index is stale"
            ),
            (
                3,
                "failed to delete service \"w2\" on node \"n2\", index is stale"
            ),
            (4, "service \"w2\" on node \"n2\" doesn't exist"),
        ]
    );
    let (outcome, _) = txn(
        &mut state,
        13,
        vec![
            check(CatalogVerb::DeleteCas, 11),
            service(CatalogVerb::Cas, "w1", 11),
            service(CatalogVerb::Delete, "w1", 0),
            service(CatalogVerb::Delete, "never", 0),
            node_op(CatalogVerb::DeleteCas, 11),
            node_op(CatalogVerb::Delete, 0),
        ],
    );
    assert!(outcome.errors.is_empty(), "{outcome:?}");
    assert!(!state.nodes.contains_key("n2"));
    assert!(state.instances_of("web").is_empty());
}

#[test]
fn a_failed_transaction_in_a_batch_keeps_the_commands_before_it() {
    let mut state = seeded();
    let batch = Command::Batch(vec![
        Command::KvSet {
            key: "before".into(),
            value: b"1".to_vec(),
            flags: 0,
            cas: None,
        },
        Command::Txn(vec![
            set("before", "2"),
            set("inside", "1"),
            kv(KvVerb::Get, "missing"),
        ]),
    ]);
    let (outcome, changes) = state.apply(10, &batch);
    let Outcome::Each(outcomes) = outcome else {
        panic!("{outcome:?}")
    };
    assert!(matches!(&outcomes[1], Outcome::Txn(t) if t.errors.len() == 1));
    assert_eq!(state.kv["before"].value, b"1");
    assert!(!state.kv.contains_key("inside"));
    let keys: Vec<String> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Kv(row) => Some(row.key.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(keys, ["before"]);
}

#[test]
fn a_read_only_transaction_reads_without_applying() {
    let state = seeded();
    let outcome = state.read_txn(&[
        kv(KvVerb::Get, "k"),
        kv(KvVerb::GetOrEmpty, "none"),
        indexed(KvVerb::CheckIndex, "k", 2),
    ]);
    assert!(outcome.errors.is_empty());
    assert_eq!(kv_result(&outcome.results[0]).value, b"v");
    assert!(kv_result(&outcome.results[1]).value.is_empty());
    let outcome = state.read_txn(&[set("k", "w")]);
    assert_eq!(outcome.errors.len(), 1);
    assert_eq!(state.kv["k"].value, b"v");
}
