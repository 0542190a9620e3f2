//! `GossipFederation` over real pools of two datacenters.

use std::collections::BTreeMap;
use std::time::Duration;

use atoll_cluster::{Federation, MemberStatus, Route};
use atoll_gossip::{GossipFederation, Pool, PoolConfig, Profile};

async fn server(node: &str, dc: &str, ip: &str, http: u16) -> Pool {
    let tags: BTreeMap<String, String> = [
        ("role", "consul".to_string()),
        ("dc", dc.to_string()),
        ("http", format!("{ip}:{http}")),
        ("dns", format!("{ip}:{}", http + 100)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Pool::start(PoolConfig {
        name: format!("{node}.{dc}"),
        bind: format!("{ip}:0").parse().expect("address"),
        advertise: None,
        tags,
        profile: Profile::fast(),
        default_port: 8302,
        encryption: None,
        datacenter: None,
    })
    .await
    .expect("pool starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_datacenters_see_and_route_to_each_other() {
    let a1 = server("a1", "dc1", "127.0.66.1", 8500).await;
    let b1 = server("b1", "dc2", "127.0.66.2", 8500).await;
    let b2 = server("b2", "dc2", "127.0.66.3", 8500).await;
    // join returns once the answer is applied.
    assert_eq!(
        b1.join(&[a1.local_addr().to_string()]).await.expect("join"),
        1
    );
    assert!(b1.members().iter().any(|m| m.name == "a1.dc1"));
    b2.join(&[b1.local_addr().to_string()]).await.expect("join");
    let dc1 = GossipFederation::new("dc1", a1.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Route::Via(relays) = dc1.route("dc2") {
            if relays.len() == 2 {
                let mut names: Vec<&str> = relays.iter().map(|r| r.name.as_str()).collect();
                names.sort();
                assert_eq!(names, ["b1.dc2", "b2.dc2"]);
                assert!(relays
                    .iter()
                    .any(|r| r.http_addr == "127.0.66.3:8500".parse().expect("address")));
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "dc2 never routable");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(dc1.datacenters(), ["dc1", "dc2"]);
    assert_eq!(dc1.route("dc1"), Route::Local);
    assert_eq!(dc1.route("dc9"), Route::Unknown);
    let members = dc1.wan_members().expect("a server has WAN members");
    assert_eq!(members[0].name, "a1.dc1");
    assert_eq!(members.len(), 3);
    // Both dc2 servers leave: dc2 is gone (no path, as one never seen) and no longer listed.
    b1.leave().await.expect("leave");
    b2.leave().await.expect("leave");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while dc1.route("dc2") != Route::Unknown || dc1.datacenters().len() != 1 {
        assert!(tokio::time::Instant::now() < deadline, "dc2 still routable");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(dc1
        .wan_members()
        .expect("members")
        .iter()
        .filter(|m| m.name.ends_with(".dc2"))
        .all(|m| m.status == MemberStatus::Left));
    // Joining through the seam reports a refusal with the reason.
    let error = dc1
        .join_wan(&["127.0.66.9:9".to_string()])
        .await
        .expect_err("nobody there");
    assert!(error.to_string().contains("127.0.66.9:9"), "{error}");
}
