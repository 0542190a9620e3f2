//! Pools on loopback addresses, with the fast profile.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use atoll_cluster::MemberStatus;
use atoll_gossip::{Pool, PoolConfig, Profile};

async fn start(name: &str, bind: &str) -> Pool {
    start_advertising(name, bind, None).await
}

async fn start_advertising(name: &str, bind: &str, advertise: Option<&str>) -> Pool {
    let mut tags = BTreeMap::new();
    tags.insert("dc".to_string(), "dc1".to_string());
    Pool::start(PoolConfig {
        name: name.to_string(),
        bind: bind.parse().expect("address"),
        advertise: advertise.map(|a| a.parse().expect("address")),
        tags,
        profile: Profile::fast(),
        default_port: 8302,
        encryption: None,
        datacenter: None,
    })
    .await
    .expect("pool starts")
}

/// Waits until `check` holds, failing after `limit`; returns how long it took.
async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = tokio::time::Instant::now();
    loop {
        if check() {
            return started.elapsed();
        }
        if started.elapsed() > limit {
            panic!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn status_of(pool: &Pool, name: &str) -> Option<MemberStatus> {
    pool.members()
        .into_iter()
        .find(|m| m.name == name)
        .map(|m| m.status)
}

fn all_alive(pools: &[&Pool], names: &[&str]) -> bool {
    pools.iter().all(|pool| {
        let members = pool.members();
        members.len() == names.len()
            && names.iter().all(|name| {
                members
                    .iter()
                    .any(|m| m.name == *name && m.status == MemberStatus::Alive)
            })
    })
}

/// Starts `n` pools on 127.0.`net`.1.. and joins them in a chain (each to the previous).
async fn chain(net: u8, n: u8) -> (Vec<Pool>, Vec<String>) {
    let mut pools: Vec<Pool> = Vec::new();
    let mut names = Vec::new();
    for i in 1..=n {
        let name = format!("s{i}.dc1");
        let pool = start(&name, &format!("127.0.{net}.{i}:0")).await;
        if let Some(previous) = pools.last() {
            let joined = pool
                .join(&[previous.local_addr().to_string()])
                .await
                .expect("join");
            assert_eq!(joined, 1);
        }
        pools.push(pool);
        names.push(name);
    }
    (pools, names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_spread_to_every_member() {
    let (pools, names) = chain(61, 5).await;
    let refs: Vec<&Pool> = pools.iter().collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    eventually(Duration::from_secs(5), "everyone knows everyone", || {
        all_alive(&refs, &names)
    })
    .await;
    // The tags travel with the identity.
    let seen = pools[4].members();
    let first = seen.iter().find(|m| m.name == "s1.dc1").expect("s1 known");
    assert_eq!(first.tags.get("dc").map(String::as_str), Some("dc1"));
    assert_eq!(first.addr, pools[0].local_addr());
    // Everyone remembers the others' addresses.
    let mut peers = pools[0].known_peers();
    peers.sort();
    let mut expected: Vec<SocketAddr> = pools[1..].iter().map(Pool::local_addr).collect();
    expected.sort();
    assert_eq!(peers, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_told_the_advertised_address() {
    let relayed = start_advertising("relayed.dc1", "127.0.64.1:0", Some("127.0.64.9:7302")).await;
    assert_eq!(
        relayed.advertised_addr(),
        "127.0.64.9:7302".parse::<SocketAddr>().unwrap()
    );
    assert_ne!(relayed.local_addr(), relayed.advertised_addr());
    let plain = start("plain.dc1", "127.0.64.2:0").await;
    assert_eq!(plain.advertised_addr(), plain.local_addr());
    // A join reaches the address bound; the state exchanged names the advertised one.
    plain
        .join(&[relayed.local_addr().to_string()])
        .await
        .expect("join");
    let seen = plain.members();
    let member = seen
        .iter()
        .find(|m| m.name == "relayed.dc1")
        .expect("relayed known");
    assert_eq!(member.addr, relayed.advertised_addr());
    assert_eq!(plain.known_peers(), [relayed.advertised_addr()]);
    assert_eq!(relayed.members()[0].addr, relayed.advertised_addr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_an_address_nobody_listens_on_fails_with_the_reason() {
    let pool = start("lonely.dc1", "127.0.62.1:0").await;
    let error = pool
        .join(&["127.0.62.2:9".to_string(), "not an address".to_string()])
        .await
        .expect_err("nobody there");
    let text = error.to_string();
    assert!(text.contains("127.0.62.2:9"), "{text}");
    assert!(text.contains("not an address"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_member_is_failed_and_a_restart_brings_it_back() {
    let (pools, names) = chain(63, 4).await;
    let refs: Vec<&Pool> = pools.iter().collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    eventually(Duration::from_secs(5), "everyone knows everyone", || {
        all_alive(&refs, &names)
    })
    .await;
    let dead_addr = pools[2].local_addr();
    let old_start = pools[1]
        .view()
        .members
        .iter()
        .find(|(id, _)| id.name == "s3.dc1")
        .map(|(id, _)| id.started)
        .expect("s3 known");
    pools[2].shutdown();
    // Fast profile: probes every 100 ms, 400 ms of suspicion.
    let took = eventually(Duration::from_secs(4), "s3 failed everywhere", || {
        [0, 1, 3]
            .iter()
            .all(|&i| status_of(&pools[i], "s3.dc1") == Some(MemberStatus::Failed))
    })
    .await;
    assert!(
        took >= Duration::from_millis(300),
        "failed too soon: {took:?}"
    );
    // The others stay alive.
    for i in [0, 1, 3] {
        for name in ["s1.dc1", "s2.dc1", "s4.dc1"] {
            assert_eq!(
                status_of(&pools[i], name),
                Some(MemberStatus::Alive),
                "{name}"
            );
        }
    }
    // The same member starts again on the same address and joins one member.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let restarted = start("s3.dc1", &dead_addr.to_string()).await;
    restarted
        .join(&[pools[0].local_addr().to_string()])
        .await
        .expect("rejoin");
    eventually(Duration::from_secs(5), "s3 alive again everywhere", || {
        [0, 1, 3].iter().all(|&i| {
            pools[i].view().members.iter().any(|(id, status)| {
                id.name == "s3.dc1" && id.started > old_start && *status == MemberStatus::Alive
            })
        }) && restarted.members().len() == 4
            && restarted
                .members()
                .iter()
                .all(|m| m.status == MemberStatus::Alive)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_leave_shows_left_not_failed() {
    let (pools, names) = chain(64, 3).await;
    let refs: Vec<&Pool> = pools.iter().collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    eventually(Duration::from_secs(5), "everyone knows everyone", || {
        all_alive(&refs, &names)
    })
    .await;
    pools[1].leave().await.expect("leave");
    assert_eq!(status_of(&pools[1], "s2.dc1"), Some(MemberStatus::Left));
    eventually(Duration::from_secs(2), "s2 left everywhere", || {
        [0, 2]
            .iter()
            .all(|&i| status_of(&pools[i], "s2.dc1") == Some(MemberStatus::Left))
    })
    .await;
    pools[1].shutdown();
    // Well past the failure bound, it is still shown as left.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in [0, 2] {
        assert_eq!(status_of(&pools[i], "s2.dc1"), Some(MemberStatus::Left));
        assert!(!pools[i].known_peers().contains(&pools[1].local_addr()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinates_move_and_stay_finite() {
    let (pools, _) = chain(65, 3).await;
    eventually(Duration::from_secs(8), "coordinates measured", || {
        pools.iter().all(|pool| {
            let own = pool.coordinate();
            own.is_valid()
                && own.vec.iter().any(|x| *x != 0.0)
                && own.error < 1.5
                && pool.peer_coordinates().len() == 2
        })
    })
    .await;
    for pool in &pools {
        let own = pool.coordinate();
        for other in pool.peer_coordinates().values() {
            let distance = own.distance(other);
            assert!(distance.is_finite() && distance >= 0.0, "{distance}");
            // Loopback round trips are far below a second.
            assert!(distance < 1.0, "{distance}");
        }
    }
}

/// A LAN-style pool: members of `dc` only, a failed member's refused port noticed, and a
/// suspicion so long that only the refused connection can fail a member within the test.
async fn start_lan(name: &str, bind: &str, dc: &str) -> Pool {
    let mut tags = BTreeMap::new();
    tags.insert("dc".to_string(), dc.to_string());
    Pool::start(PoolConfig {
        name: name.to_string(),
        bind: bind.parse().expect("address"),
        tags,
        profile: Profile {
            suspect_to_down_after: Duration::from_secs(60),
            fail_on_refused_connect: true,
            ..Profile::fast()
        },
        default_port: 8301,
        encryption: None,
        datacenter: Some(dc.to_string()),
        advertise: None,
    })
    .await
    .expect("pool starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_port_refuses_connections_is_failed_without_suspicion() {
    let mut pools = Vec::new();
    for i in 1..=3 {
        let pool = start_lan(&format!("n{i}"), &format!("127.0.66.{i}:0"), "dc1").await;
        if let Some(first) = pools.first() {
            let first: &Pool = first;
            pool.join(&[first.local_addr().to_string()])
                .await
                .expect("join");
        }
        pools.push(pool);
    }
    let refs: Vec<&Pool> = pools.iter().collect();
    eventually(Duration::from_secs(5), "everyone knows everyone", || {
        all_alive(&refs, &["n1", "n2", "n3"])
    })
    .await;
    // The process is gone: its sockets are closed, so a connection to its port is refused.
    pools[2].shutdown();
    // The suspicion alone would take a minute.
    eventually(Duration::from_secs(5), "n3 failed by the others", || {
        [0, 1]
            .iter()
            .all(|&i| status_of(&pools[i], "n3") == Some(MemberStatus::Failed))
    })
    .await;
    assert_eq!(status_of(&pools[0], "n2"), Some(MemberStatus::Alive));
}

/// A hint (a compute node's stream closed on its server) fails a member whose process is gone
/// at once, where neither a probe (every minute here) nor the suspicion would within the test;
/// the same hint about a member that still listens changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_that_a_member_is_gone_fails_it_at_once_when_its_port_refuses() {
    let slow = Profile {
        probe_period: Duration::from_secs(60),
        suspect_to_down_after: Duration::from_secs(60),
        fail_on_refused_connect: true,
        ..Profile::fast()
    };
    let mut pools = Vec::new();
    for name in ["s1", "c1"] {
        let pool = Pool::start(PoolConfig {
            name: name.to_string(),
            bind: "127.0.68.1:0".parse().expect("address"),
            tags: BTreeMap::new(),
            profile: slow.clone(),
            default_port: 8301,
            encryption: None,
            datacenter: None,
            advertise: None,
        })
        .await
        .expect("pool starts");
        pools.push(pool);
    }
    pools[1]
        .join(&[pools[0].local_addr().to_string()])
        .await
        .expect("join");
    let refs: Vec<&Pool> = pools.iter().collect();
    eventually(Duration::from_secs(5), "both know both", || {
        all_alive(&refs, &["s1", "c1"])
    })
    .await;
    // Still listening: the hint is checked and dropped.
    pools[0].check_gone("c1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status_of(&pools[0], "c1"), Some(MemberStatus::Alive));
    // Gone: once its port refuses (the pool's tasks end soon after `shutdown`), one hint
    // fails it.
    let port = pools[1].local_addr();
    pools[1].shutdown();
    eventually(Duration::from_secs(5), "c1's port refusing", || {
        std::net::TcpStream::connect_timeout(&port, Duration::from_secs(1))
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    })
    .await;
    pools[0].check_gone("c1");
    eventually(Duration::from_secs(5), "c1 failed on the hint", || {
        status_of(&pools[0], "c1") == Some(MemberStatus::Failed)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_of_another_datacenter_cannot_join() {
    let dc1 = start_lan("a", "127.0.67.1:0", "dc1").await;
    let dc2 = start_lan("b", "127.0.67.2:0", "dc2").await;
    let error = dc2
        .join(&[dc1.local_addr().to_string()])
        .await
        .expect_err("another datacenter");
    assert!(error.to_string().contains("datacenter"), "{error}");
    let error = dc1
        .join(&[dc2.local_addr().to_string()])
        .await
        .expect_err("another datacenter");
    assert!(error.to_string().contains("dc2"), "{error}");
    // Neither took the other in, whoever asked.
    tokio::task::yield_now().await;
    assert_eq!(dc1.members().len(), 1);
    assert_eq!(dc2.members().len(), 1);
}
