//! Timings of a pool.

use std::num::{NonZeroU32, NonZeroU8, NonZeroUsize};
use std::time::Duration;

/// How often a pool probes, gossips and exchanges state, and how long it waits before
/// declaring a member failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// A random member is probed (and its round trip measured) this often.
    pub probe_period: Duration,
    /// How long a direct probe may take before members are asked to probe indirectly.
    pub probe_rtt: Duration,
    /// Members asked to probe indirectly.
    pub indirect_probes: usize,
    /// How long a suspect member has to refute the suspicion before it is failed.
    pub suspect_to_down_after: Duration,
    /// Updates are also gossiped to `gossip_fanout` random members this often.
    pub gossip_period: Duration,
    /// Members gossiped to each `gossip_period`.
    pub gossip_fanout: usize,
    /// How often failed members are contacted again (so partitions heal by themselves).
    pub announce_down_period: Duration,
    /// The full state is exchanged over TCP with a random member this often.
    pub push_pull_period: Duration,
    /// Failed and left members are forgotten after this long.
    pub reap_after: Duration,
    /// The longest a TCP join or state exchange may take.
    pub exchange_timeout: Duration,
    /// When a direct probe goes unanswered, try a TCP connection to the member's gossip
    /// port: a refused one (nothing listens: the process is gone) fails the member at once,
    /// without waiting for the suspicion to run out. A stopped or cut-off member does not
    /// refuse (its kernel still completes the handshake, or nothing answers at all), so it
    /// goes through the suspicion as before. For pools on one network, where a refusal
    /// really comes from the member's host.
    pub fail_on_refused_connect: bool,
}

/// Consul forgets failed and left members after 72 hours.
pub const DEFAULT_REAP_AFTER: Duration = Duration::from_secs(72 * 3600);

impl Profile {
    /// Members on one network (a datacenter's LAN pool): a member whose process died is
    /// failed as soon as a probe of it goes unanswered and its gossip port refuses a
    /// connection (a few hundred milliseconds); a silent one (stopped, cut off) after a
    /// missed probe period and a second of suspicion, about 1.5 s in all. The suspicion
    /// is long enough for a member that was only slow (a busy machine) to refute it: it
    /// hears of it through gossip within a couple of gossip periods.
    pub fn lan() -> Self {
        Profile {
            probe_period: Duration::from_millis(300),
            probe_rtt: Duration::from_millis(150),
            indirect_probes: 3,
            suspect_to_down_after: Duration::from_millis(1000),
            gossip_period: Duration::from_millis(100),
            gossip_fanout: 3,
            announce_down_period: Duration::from_secs(5),
            push_pull_period: Duration::from_secs(30),
            reap_after: DEFAULT_REAP_AFTER,
            exchange_timeout: Duration::from_secs(5),
            fail_on_refused_connect: true,
        }
    }

    /// Servers across datacenters: round trips of hundreds of milliseconds and lost
    /// packets do not make a member suspect, the suspicion lasts long enough to be refuted
    /// over a lossy link, and a dead member is failed within about 10-20 s in a pool of a
    /// few servers (probe, 3 indirect probes, 8 s of suspicion).
    pub fn wan() -> Self {
        Profile {
            probe_period: Duration::from_secs(2),
            probe_rtt: Duration::from_secs(1),
            indirect_probes: 3,
            suspect_to_down_after: Duration::from_secs(8),
            gossip_period: Duration::from_millis(500),
            gossip_fanout: 4,
            announce_down_period: Duration::from_secs(30),
            push_pull_period: Duration::from_secs(30),
            reap_after: DEFAULT_REAP_AFTER,
            exchange_timeout: Duration::from_secs(10),
            fail_on_refused_connect: false,
        }
    }

    /// The WAN profile scaled down twenty times, for tests on loopback.
    pub fn fast() -> Self {
        Profile {
            probe_period: Duration::from_millis(100),
            probe_rtt: Duration::from_millis(50),
            indirect_probes: 3,
            suspect_to_down_after: Duration::from_millis(400),
            gossip_period: Duration::from_millis(50),
            gossip_fanout: 4,
            announce_down_period: Duration::from_millis(1500),
            push_pull_period: Duration::from_millis(1500),
            reap_after: DEFAULT_REAP_AFTER,
            exchange_timeout: Duration::from_secs(2),
            fail_on_refused_connect: false,
        }
    }

    /// foca's configuration for these timings.
    pub(crate) fn foca_config(&self) -> foca::Config {
        // The size only sets how often an update is retransmitted; 32 covers the pools of
        // servers this is for with room to spare.
        let size = NonZeroU32::new(32).unwrap_or(NonZeroU32::MIN);
        let mut config = foca::Config::new_wan(size);
        config.probe_period = self.probe_period;
        config.probe_rtt = self.probe_rtt.min(self.probe_period / 2);
        config.num_indirect_probes =
            NonZeroUsize::new(self.indirect_probes.max(1)).unwrap_or(NonZeroUsize::MIN);
        config.max_transmissions = config.max_transmissions.max(NonZeroU8::MIN);
        config.suspect_to_down_after = self.suspect_to_down_after;
        config.remove_down_after = self.reap_after;
        config.notify_down_members = true;
        config.periodic_gossip = Some(foca::PeriodicParams {
            frequency: self.gossip_period,
            num_members: NonZeroUsize::new(self.gossip_fanout.max(1)).unwrap_or(NonZeroUsize::MIN),
        });
        config.periodic_announce = Some(foca::PeriodicParams {
            frequency: self.push_pull_period,
            num_members: NonZeroUsize::MIN,
        });
        config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: self.announce_down_period,
            num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
        });
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lan_profile_fails_a_silent_member_within_two_seconds() {
        let lan = Profile::lan();
        // The longest path for a silent member: it is probed at most a period after it
        // went silent (several members probe it, so usually sooner), that probe period
        // runs out, then the suspicion.
        let worst = lan.probe_period * 2 + lan.suspect_to_down_after;
        assert!(worst < Duration::from_secs(2), "{worst:?}");
        // A suspected member hears of it through several gossip rounds before it is failed.
        assert!(lan.suspect_to_down_after >= lan.gossip_period * 5);
        // The direct probe gets half the period; the indirect ones the rest.
        assert!(lan.probe_rtt * 2 <= lan.probe_period);
        assert!(lan.fail_on_refused_connect);
        assert!(!Profile::wan().fail_on_refused_connect);
    }

    #[test]
    fn foca_gets_the_timings() {
        let lan = Profile::lan();
        let config = lan.foca_config();
        assert_eq!(config.probe_period, lan.probe_period);
        assert_eq!(config.probe_rtt, lan.probe_rtt);
        assert_eq!(config.suspect_to_down_after, lan.suspect_to_down_after);
        assert!(config.notify_down_members);
    }
}
