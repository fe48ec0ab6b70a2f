//! `vip_owner = "vrrp"`: sluice follows the addresses keepalived puts on its kernel interfaces. A VIP is answered
//! (ARP/ND) and balanced only while it is on one of them; the others are withheld from the snapshot the workers
//! use, so that a node that is not VRRP MASTER neither claims the VIP nor forwards its traffic (frames for it then
//! go to the kernel, which does not have the address either, and are counted in `to_kernel`).
//!
//! The kernel's address events (rtnetlink groups `RTNLGRP_IPV4_IFADDR` and `RTNLGRP_IPV6_IFADDR`) say when to look;
//! each event, and a timer in case an event was lost (a full socket buffer), leads to one address dump, from which
//! the owned VIPs are read. Nothing here runs on a worker: the control thread publishes a new snapshot when the set
//! changes.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use balancer::snapshot::{Snapshot, SnapshotError, SnapshotSpec};
use control::config::Config;
use control::vip_owner::VipOwner;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::control_loop::ControlLoop;
use crate::exception::KernelInterface;

/// rtnetlink multicast groups of address changes (linux/rtnetlink.h).
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV6_IFADDR: u32 = 9;

/// How often the addresses are read even without an event.
const RESYNC: Duration = Duration::from_secs(1);

/// The VIPs keepalived owns in `config` (every VIP of a service when `vip_owner = "vrrp"`, none otherwise).
pub fn vrrp_vips(config: &Config) -> BTreeSet<IpAddr> {
    if config.network.vip_owner != VipOwner::Vrrp {
        return BTreeSet::new();
    }
    config
        .services
        .iter()
        .map(|service| service.key.vip)
        .collect()
}

/// Builds generation `generation` of `spec` without the `withheld` VIPs: their services are left out, so that
/// the workers neither answer ARP/ND for them nor balance their traffic, and they are marked so that their traffic
/// is dropped (counted as `not_ours`) rather than handed to the kernel.
pub fn build_snapshot(
    spec: &SnapshotSpec,
    generation: u64,
    withheld: &BTreeSet<IpAddr>,
) -> Result<Snapshot, SnapshotError> {
    if withheld.is_empty() {
        return Snapshot::build(spec, generation);
    }
    let mut owned = spec.clone();
    owned
        .services
        .retain(|service| !withheld.contains(&service.key.vip));
    Ok(Snapshot::build(&owned, generation)?.with_withheld(withheld.iter().copied()))
}

/// Follows which of the VRRP VIPs are on sluice's kernel interfaces.
pub struct TapAddressWatch {
    events: Socket,
    dump: Socket,
    sequence: u32,
    interfaces: BTreeSet<u32>,
    next_resync: Instant,
    buffer: Vec<u8>,
}

impl TapAddressWatch {
    pub fn open(interfaces: &[KernelInterface]) -> Result<TapAddressWatch, String> {
        let mut events =
            Socket::new(NETLINK_ROUTE).map_err(|error| format!("netlink socket: {error}"))?;
        events
            .bind_auto()
            .map_err(|error| format!("netlink bind: {error}"))?;
        for group in [RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR] {
            events
                .add_membership(group)
                .map_err(|error| format!("netlink address events: {error}"))?;
        }
        events
            .set_non_blocking(true)
            .map_err(|error| format!("netlink non-blocking: {error}"))?;
        let mut dump =
            Socket::new(NETLINK_ROUTE).map_err(|error| format!("netlink socket: {error}"))?;
        dump.bind_auto()
            .map_err(|error| format!("netlink bind: {error}"))?;
        dump.connect(&SocketAddr::new(0, 0))
            .map_err(|error| format!("netlink connect: {error}"))?;
        Ok(TapAddressWatch {
            events,
            dump,
            sequence: 0,
            interfaces: interfaces.iter().map(|interface| interface.index).collect(),
            next_resync: Instant::now(),
            buffer: vec![0; 64 * 1024],
        })
    }

    /// The addresses on the kernel interfaces now, when an address event arrived or the resync timer ran out since
    /// the last call; `None` when there is nothing new to look at.
    pub fn poll(&mut self, now: Instant) -> Option<Result<BTreeSet<IpAddr>, String>> {
        let mut look = now >= self.next_resync;
        loop {
            match self.events.recv(&mut &mut self.buffer[..], 0) {
                Ok(0) => break,
                Ok(_) => look = true,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                // ENOBUFS: events were lost; the dump below sees the truth.
                Err(_) => {
                    look = true;
                    break;
                }
            }
        }
        if !look {
            return None;
        }
        self.next_resync = now + RESYNC;
        Some(self.owned())
    }

    /// Dumps every address of the namespace and keeps those on the kernel interfaces.
    fn owned(&mut self) -> Result<BTreeSet<IpAddr>, String> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut packet = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::from(RouteNetlinkMessage::GetAddress(AddressMessage::default())),
        );
        packet.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        packet.header.sequence_number = self.sequence;
        packet.finalize();
        let mut request = vec![0; packet.header.length as usize];
        packet.serialize(&mut request[..]);
        self.dump
            .send(&request, 0)
            .map_err(|error| format!("address dump: {error}"))?;
        let mut owned = BTreeSet::new();
        loop {
            let size = self
                .dump
                .recv(&mut &mut self.buffer[..], 0)
                .map_err(|error| format!("address dump: {error}"))?;
            let mut offset = 0;
            while offset < size {
                let reply: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&self.buffer[offset..size])
                        .map_err(|error| format!("address dump: {error}"))?;
                let length = reply.header.length as usize;
                if reply.header.sequence_number == self.sequence {
                    match reply.payload {
                        NetlinkPayload::Done(_) => return Ok(owned),
                        NetlinkPayload::Error(error) => {
                            return Err(format!("address dump refused: {error}"))
                        }
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(message))
                            if self.interfaces.contains(&message.header.index) =>
                        {
                            for attribute in &message.attributes {
                                if let AddressAttribute::Local(addr)
                                | AddressAttribute::Address(addr) = attribute
                                {
                                    owned.insert(*addr);
                                }
                            }
                        }
                        _ => {}
                    }
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }
}

/// How long a VIP must have been on the kernel interface before sluice answers for it. When a node preempts, it
/// becomes MASTER and puts the VIP on before the old MASTER has heard its advert and stepped down; the grace lets
/// the old one go quiet first, so that no ARP request is answered by both nodes (measured in scripts/netns/vrrp.sh).
/// Losing a VIP takes effect at once.
pub const HANDOVER_GRACE: Duration = Duration::from_millis(100);

/// The VIPs that have been on the kernel interfaces for [`HANDOVER_GRACE`], from the addresses the watch reports.
#[derive(Default)]
pub struct Ownership {
    /// The addresses on the kernel interfaces, and since when.
    present: std::collections::BTreeMap<IpAddr, Instant>,
}

impl Ownership {
    /// Takes the addresses on the interfaces now (`at` is when they were read).
    pub fn update(&mut self, on_interfaces: &BTreeSet<IpAddr>, at: Instant) {
        self.present.retain(|addr, _| on_interfaces.contains(addr));
        for &addr in on_interfaces {
            self.present.entry(addr).or_insert(at);
        }
    }

    /// Of `vips`, those not owned at `now`: absent, or present for less than the grace.
    pub fn withheld(&self, vips: &BTreeSet<IpAddr>, now: Instant) -> BTreeSet<IpAddr> {
        vips.iter()
            .filter(|vip| {
                !matches!(self.present.get(vip),
                    Some(since) if now.duration_since(*since) >= HANDOVER_GRACE)
            })
            .copied()
            .collect()
    }
}

/// Stops the kernel answering ARP on the kernel interfaces (`arp_ignore = 8`): with VRRP it would answer for the VIP
/// from the moment keepalived puts it there, grace or not. sluice answers for the port's addresses itself.
pub fn quiet_kernel_arp(interfaces: &[KernelInterface]) -> Result<(), String> {
    for interface in interfaces {
        let path = format!("/proc/sys/net/ipv4/conf/{}/arp_ignore", interface.name);
        std::fs::write(&path, "8").map_err(|error| format!("{path}: {error}"))?;
    }
    Ok(())
}

/// Follows keepalived: reads the interfaces' addresses when they changed and publishes a new snapshot when the set
/// of owned VIPs changes.
pub fn follow(watch: &mut TapAddressWatch, ownership: &mut Ownership, control: &mut ControlLoop) {
    let now = Instant::now();
    match watch.poll(now) {
        None => {}
        Some(Ok(addresses)) => ownership.update(&addresses, now),
        Some(Err(error)) => {
            log::error!("following keepalived's VIPs: {error}");
            return;
        }
    }
    let withheld = ownership.withheld(&vrrp_vips(&control.config), now);
    if withheld == control.withheld {
        return;
    }
    let gained: Vec<_> = control.withheld.difference(&withheld).copied().collect();
    let lost: Vec<_> = withheld.difference(&control.withheld).copied().collect();
    match control.set_withheld(withheld) {
        Ok(took) => {
            let generation = control.generation;
            let took = took.map_or("not confirmed".into(), |took| {
                format!("in use after {} us", took.as_micros())
            });
            for vip in gained {
                log::info!("vrrp: {vip} is on the kernel interface: answering and balancing it (generation {generation}, {took})");
            }
            for vip in lost {
                log::info!("vrrp: {vip} left the kernel interface: no longer answering for it (generation {generation}, {took})");
            }
        }
        Err(error) => log::error!("vrrp: ownership change not applied: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[[port]]
name = "lan"
device = "net_null0"
addresses = ["10.0.0.1/24"]
[network]
kernel_exception_path = true
vip_owner = "vrrp"
[[service]]
vip = "10.0.0.100"
port = 80
mode = "dr"
[[service.backend]]
address = "10.0.0.11"
[[service]]
vip = "10.0.0.101"
port = 80
mode = "dr"
[[service.backend]]
address = "10.0.0.12"
"#;

    #[test]
    fn withheld_vips_are_not_owned_addresses_of_the_snapshot() {
        let config = Config::parse(CONFIG, "vrrp.toml").unwrap();
        let vips = vrrp_vips(&config);
        assert_eq!(vips.len(), 2);
        let mut registry = control::config::BackendIdRegistry::new();
        let spec = config
            .snapshot_spec(&[[2, 0, 0, 0, 0, 1]], &mut registry)
            .unwrap();
        let withheld: BTreeSet<IpAddr> = ["10.0.0.101".parse().unwrap()].into();
        let snapshot = build_snapshot(&spec, 1, &withheld).unwrap();
        assert!(snapshot.withheld("10.0.0.101".parse().unwrap()));
        assert!(!snapshot.withheld("10.0.0.100".parse().unwrap()));
        assert!(snapshot.owned("10.0.0.100".parse().unwrap()).unwrap().vip);
        assert!(snapshot.owned("10.0.0.101".parse().unwrap()).is_none());
        // The port's own address stays answered whatever keepalived does.
        assert!(snapshot.owned("10.0.0.1".parse().unwrap()).is_some());
    }

    #[test]
    fn a_vip_is_owned_after_the_grace_and_lost_at_once() {
        let vip: IpAddr = "10.0.0.100".parse().unwrap();
        let vips: BTreeSet<IpAddr> = [vip].into();
        let start = Instant::now();
        let mut ownership = Ownership::default();
        assert_eq!(ownership.withheld(&vips, start), vips);
        ownership.update(&vips, start);
        assert_eq!(ownership.withheld(&vips, start + HANDOVER_GRACE / 2), vips);
        assert!(ownership.withheld(&vips, start + HANDOVER_GRACE).is_empty());
        // Still there at the next read: the time it came stays.
        ownership.update(&vips, start + HANDOVER_GRACE * 2);
        assert!(ownership
            .withheld(&vips, start + HANDOVER_GRACE * 2)
            .is_empty());
        ownership.update(&BTreeSet::new(), start + HANDOVER_GRACE * 3);
        assert_eq!(ownership.withheld(&vips, start + HANDOVER_GRACE * 3), vips);
    }

    #[test]
    fn other_owners_withhold_nothing() {
        let config = Config::parse(&CONFIG.replace("\"vrrp\"", "\"bgp\""), "bgp.toml").unwrap();
        assert!(vrrp_vips(&config).is_empty());
    }
}
