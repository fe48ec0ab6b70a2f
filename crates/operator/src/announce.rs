//! VIP announcement that shares fate with the data plane. The control thread keeps each VIP on the kernel
//! interfaces (as a /32 or /128) while every worker is turning and at least one service of that VIP has a backend
//! that can take traffic, and takes it off otherwise. A routing daemon (BIRD's `protocol direct`, see
//! `config/bird.conf`) announces what is on the interface to the routers; when sluice dies the interfaces go, and
//! the routes with them.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use balancer::snapshot::Snapshot;

use crate::exception::KernelInterface;
use crate::netlink::Netlink;

/// A worker whose loop has not turned for this long is taken for stuck: its VIPs are withdrawn.
pub const STALL: Duration = Duration::from_millis(500);

/// The VIPs of `snapshot` that have a service with a backend of weight above zero.
pub fn servable_vips(snapshot: &Snapshot) -> BTreeSet<IpAddr> {
    snapshot
        .services()
        .iter()
        .filter(|service| service.backends.iter().any(|backend| backend.weight > 0))
        .map(|service| service.key.vip)
        .collect()
}

/// Watches the workers' loop counters; a worker is alive while its counter moves.
pub struct Liveness {
    beats: Vec<Arc<AtomicU64>>,
    seen: Vec<(u64, Instant)>,
}

impl Liveness {
    pub fn new(beats: Vec<Arc<AtomicU64>>) -> Liveness {
        let now = Instant::now();
        let seen = beats
            .iter()
            .map(|beat| (beat.load(Ordering::Relaxed), now))
            .collect();
        Liveness { beats, seen }
    }

    /// Whether every worker's loop turned within [`STALL`] of `now`.
    pub fn all_alive(&mut self, now: Instant) -> bool {
        let mut alive = true;
        for (beat, seen) in self.beats.iter().zip(self.seen.iter_mut()) {
            let value = beat.load(Ordering::Relaxed);
            if value != seen.0 {
                *seen = (value, now);
            } else if now.duration_since(seen.1) >= STALL {
                alive = false;
            }
        }
        alive
    }
}

/// Puts VIPs on and takes them off the kernel interfaces.
pub struct Announcer {
    netlink: Netlink,
    interfaces: Vec<KernelInterface>,
    announced: BTreeSet<IpAddr>,
    /// The ports' own addresses: never touched, even when a VIP is one of them.
    reserved: BTreeSet<IpAddr>,
}

fn host_prefix(vip: IpAddr) -> u8 {
    if vip.is_ipv4() {
        32
    } else {
        128
    }
}

impl Announcer {
    pub fn new(
        netlink: Netlink,
        interfaces: Vec<KernelInterface>,
        reserved: BTreeSet<IpAddr>,
    ) -> Announcer {
        Announcer {
            netlink,
            interfaces,
            announced: BTreeSet::new(),
            reserved,
        }
    }

    /// The VIPs on the interfaces now.
    pub fn announced(&self) -> &BTreeSet<IpAddr> {
        &self.announced
    }

    /// Makes the announced set `wanted`; returns what changed, for the log. A VIP that could not be added is not
    /// counted as announced (it is tried again on the next call); one that could not be removed stays counted.
    pub fn update(&mut self, wanted: &BTreeSet<IpAddr>) -> Vec<String> {
        let wanted: BTreeSet<IpAddr> = wanted.difference(&self.reserved).copied().collect();
        let wanted = &wanted;
        let mut changes = Vec::new();
        let withdraw: Vec<IpAddr> = self.announced.difference(wanted).copied().collect();
        for vip in withdraw {
            let mut ok = true;
            for interface in &self.interfaces {
                if let Err(error) =
                    self.netlink
                        .remove_address(interface.index, vip, host_prefix(vip))
                {
                    changes.push(format!("withdrawing {vip}: {}: {error}", interface.name));
                    ok = false;
                }
            }
            if ok {
                self.announced.remove(&vip);
                changes.push(format!("withdrew {vip}"));
            }
        }
        for &vip in wanted.difference(&self.announced.clone()) {
            let mut ok = true;
            for interface in &self.interfaces {
                if let Err(error) = self
                    .netlink
                    .add_address(interface.index, vip, host_prefix(vip))
                {
                    changes.push(format!("announcing {vip}: {}: {error}", interface.name));
                    ok = false;
                }
            }
            if ok {
                self.announced.insert(vip);
                changes.push(format!("announced {vip}"));
            }
        }
        changes
    }

    /// Takes every VIP off (on a clean stop, before the interfaces go).
    pub fn withdraw_all(&mut self) -> Vec<String> {
        self.update(&BTreeSet::new())
    }
}
