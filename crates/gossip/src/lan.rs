//! A datacenter's LAN pool as the edges see it ([`atoll_cluster::LanPool`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use atoll_cluster::{Coordinate, LanMembers, LanPool};
use tokio::sync::watch;

use crate::Pool;

/// A [`Pool`] seen through [`LanPool`]: its members (kept current by a task that follows
/// the pool's view) and its coordinates.
#[derive(Debug, Clone)]
pub struct GossipLan {
    pool: Pool,
    members: watch::Receiver<LanMembers>,
}

impl GossipLan {
    /// Follows `pool`; must be called within a tokio runtime (it spawns the follower, which
    /// ends with the pool).
    pub fn new(pool: Pool) -> Self {
        let mut views = pool.subscribe();
        let first = Arc::new(views.borrow_and_update().pool_members());
        let (tx, members) = watch::channel(first);
        tokio::spawn(async move {
            while views.changed().await.is_ok() {
                let now = views.borrow_and_update().pool_members();
                tx.send_if_modified(|current| {
                    if **current == now {
                        false
                    } else {
                        *current = Arc::new(now);
                        true
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        GossipLan { pool, members }
    }

    /// The pool itself.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

impl LanPool for GossipLan {
    fn members(&self) -> watch::Receiver<LanMembers> {
        self.members.clone()
    }

    fn coordinate(&self) -> Coordinate {
        self.pool.coordinate()
    }

    fn coordinates(&self) -> BTreeMap<String, Coordinate> {
        let view = self.pool.view();
        let mut all = view.peer_coordinates.clone();
        all.insert(view.local.name.clone(), view.coordinate.clone());
        all
    }

    fn check_gone(&self, node: &str) {
        self.pool.check_gone(node);
    }
}
