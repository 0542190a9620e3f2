//! Encrypted pools on loopback addresses, with the fast profile: who can join whom, and a
//! key rotation while the members keep seeing each other.

use std::collections::BTreeMap;
use std::time::Duration;

use atoll_cluster::MemberStatus;
use atoll_gossip::{Encryption, Key, Keyring, KeyringOp, Pool, PoolConfig, Profile};

fn key(byte: u8) -> Key {
    Key::from_bytes(&[byte; 32]).expect("a 32-byte key")
}

fn encrypted(keyring: Keyring) -> Option<Encryption> {
    Some(Encryption {
        keyring,
        verify_incoming: true,
        verify_outgoing: true,
        file: None,
    })
}

async fn start(name: &str, bind: &str, encryption: Option<Encryption>) -> Pool {
    Pool::start(PoolConfig {
        name: name.to_string(),
        bind: bind.parse().expect("address"),
        advertise: None,
        tags: BTreeMap::new(),
        profile: Profile::fast(),
        default_port: 8302,
        encryption,
        datacenter: None,
    })
    .await
    .expect("pool starts")
}

/// Waits until `check` holds, failing after `limit`.
async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let started = tokio::time::Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn alive(pool: &Pool) -> Vec<String> {
    pool.members()
        .into_iter()
        .filter(|m| m.status == MemberStatus::Alive)
        .map(|m| m.name)
        .collect()
}

fn outcomes(replies: &[atoll_gossip::KeyringReply]) -> Vec<(String, Result<Vec<String>, String>)> {
    replies
        .iter()
        .map(|r| (r.member.name.clone(), r.outcome.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_members_with_the_key_join() {
    let a = start("a", "127.0.77.1:0", encrypted(Keyring::new(key(1)))).await;
    let b = start("b", "127.0.77.2:0", encrypted(Keyring::new(key(1)))).await;
    let plain = start("plain", "127.0.77.3:0", None).await;
    let other = start("other", "127.0.77.4:0", encrypted(Keyring::new(key(2)))).await;
    b.join(&[a.local_addr().to_string()])
        .await
        .expect("same key joins");
    eventually(Duration::from_secs(5), "a and b see each other", || {
        alive(&a).len() == 2 && alive(&b).len() == 2
    })
    .await;
    assert!(plain.join(&[a.local_addr().to_string()]).await.is_err());
    assert!(other.join(&[a.local_addr().to_string()]).await.is_err());
    // Neither is let in by the datagrams it sends either.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(alive(&a), ["a", "b"]);
    assert_eq!(alive(&plain), ["plain"]);
    assert_eq!(alive(&other), ["other"]);
    let refused = atoll_metrics::node().gossip.refused.get();
    assert!(refused > 0, "refused frames are counted");
    // A pool without encryption has no keyring to operate on.
    assert!(plain.keyring(KeyringOp::List, false).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_reaches_every_member_and_nobody_is_lost() {
    let k1 = key(1).encoded();
    let k2 = key(2).encoded();
    let dir = tempfile::tempdir().expect("temporary dir");
    let file = dir.path().join("remote.keyring");
    let a = start(
        "a",
        "127.0.78.1:0",
        Some(Encryption {
            keyring: Keyring::new(key(1)),
            verify_incoming: true,
            verify_outgoing: true,
            file: Some(file.clone()),
        }),
    )
    .await;
    let b = start("b", "127.0.78.2:0", encrypted(Keyring::new(key(1)))).await;
    let c = start("c", "127.0.78.3:0", encrypted(Keyring::new(key(1)))).await;
    b.join(&[a.local_addr().to_string()])
        .await
        .expect("b joins");
    c.join(&[b.local_addr().to_string()])
        .await
        .expect("c joins");
    let pools = [&a, &b, &c];
    eventually(Duration::from_secs(5), "all see all", || {
        pools.iter().all(|p| alive(p).len() == 3)
    })
    .await;
    let steps = [
        KeyringOp::Install(k2.clone()),
        KeyringOp::Use(k2.clone()),
        KeyringOp::Remove(k1.clone()),
    ];
    let expected = [
        vec![k1.clone(), k2.clone()],
        vec![k2.clone(), k1.clone()],
        vec![k2.clone()],
    ];
    for (step, keys) in steps.into_iter().zip(expected) {
        let replies = b.keyring(step.clone(), false).await.expect("encrypted");
        let got = outcomes(&replies);
        assert_eq!(got.len(), 3, "{step:?}: {got:?}");
        assert_eq!(got[0].0, "b", "the asked member comes first");
        for (name, outcome) in &got {
            assert_eq!(outcome.as_ref(), Ok(&keys), "{step:?} on {name}");
        }
        // Between steps the members keep gossiping: nobody is failed.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for pool in pools {
            assert_eq!(alive(pool).len(), 3, "{step:?}: {:?}", pool.members());
        }
    }
    // The file follows the changes.
    assert_eq!(
        Keyring::load(&file).expect("readable"),
        Some(Keyring::new(key(2)))
    );
    // A member still on the old key is out.
    let late = start("late", "127.0.78.4:0", encrypted(Keyring::new(key(1)))).await;
    assert!(late.join(&[a.local_addr().to_string()]).await.is_err());
    // Consul's refusals, from every member.
    let replies = a
        .keyring(KeyringOp::Remove(k2.clone()), false)
        .await
        .expect("encrypted");
    for (name, outcome) in outcomes(&replies) {
        assert_eq!(
            outcome,
            Err("Removing the primary key is not allowed".to_string()),
            "{name}"
        );
    }
    let replies = a
        .keyring(KeyringOp::Use(k1), true)
        .await
        .expect("encrypted");
    assert_eq!(
        outcomes(&replies),
        [(
            "a".to_string(),
            Err("Requested key is not in the keyring".to_string())
        )]
    );
}

fn rolling(incoming: bool, outgoing: bool) -> Option<Encryption> {
    Some(Encryption {
        keyring: Keyring::new(key(1)),
        verify_incoming: incoming,
        verify_outgoing: outgoing,
        file: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_enable_keeps_the_pool_whole_at_every_step() {
    // Step 1: keys installed, nothing verified: plain members still gossip with them.
    let plain = start("plain", "127.0.79.1:0", None).await;
    let a = start("a", "127.0.79.2:0", rolling(false, false)).await;
    a.join(&[plain.local_addr().to_string()])
        .await
        .expect("plain state exchanges pass");
    // Step 2: one member sends sealed; the others (holding the key) open it.
    let b = start("b", "127.0.79.3:0", rolling(false, true)).await;
    b.join(&[a.local_addr().to_string()])
        .await
        .expect("a opens sealed state and b takes a's plain answer");
    eventually(Duration::from_secs(5), "a and b see each other", || {
        alive(&a).contains(&"b".to_string()) && alive(&b).contains(&"a".to_string())
    })
    .await;
    // Keyring operations stay sealed, so they work across a and b.
    let replies = a.keyring(KeyringOp::List, false).await.expect("encrypted");
    let named: Vec<(String, bool)> = replies
        .iter()
        .map(|r| (r.member.name.clone(), r.outcome.is_ok()))
        .collect();
    assert!(named.contains(&("b".to_string(), true)), "{named:?}");
    assert!(named.contains(&("plain".to_string(), false)), "{named:?}");
    // Step 3: a member verifying incoming traffic refuses the plain one.
    let c = start("c", "127.0.79.4:0", rolling(true, true)).await;
    assert!(plain.join(&[c.local_addr().to_string()]).await.is_err());
    c.join(&[b.local_addr().to_string()])
        .await
        .expect("b answers sealed");
}
