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

use balancer::snapshot::SnapshotSpec;
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

/// Leaves the services of the `withheld` VIPs out of `spec`: without a service a VIP is not an owned address of the
/// snapshot, so the workers neither answer ARP/ND for it nor balance its traffic.
pub fn withhold(spec: &mut SnapshotSpec, withheld: &BTreeSet<IpAddr>) {
    if !withheld.is_empty() {
        spec.services
            .retain(|service| !withheld.contains(&service.key.vip));
    }
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

/// Publishes a new snapshot when keepalived put a VIP on the kernel interface or took one off.
pub fn follow(watch: &mut TapAddressWatch, control: &mut ControlLoop) {
    let Some(owned) = watch.poll(Instant::now()) else {
        return;
    };
    let on_interfaces = match owned {
        Ok(addresses) => addresses,
        Err(error) => {
            log::error!("following keepalived's VIPs: {error}");
            return;
        }
    };
    let withheld: BTreeSet<IpAddr> = vrrp_vips(&control.config)
        .difference(&on_interfaces)
        .copied()
        .collect();
    let gained: Vec<_> = control.withheld.difference(&withheld).copied().collect();
    let lost: Vec<_> = withheld.difference(&control.withheld).copied().collect();
    match control.set_withheld(withheld) {
        Ok(took) => {
            for vip in gained {
                log::info!("vrrp: {vip} is on the kernel interface: answering and balancing it (generation {})", control.generation);
            }
            for vip in lost {
                log::info!("vrrp: {vip} left the kernel interface: no longer answering for it (generation {})", control.generation);
            }
            if let Some(took) = took {
                log::info!(
                    "vrrp: ownership change in use after {} us",
                    took.as_micros()
                );
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
        let mut spec = config
            .snapshot_spec(&[[2, 0, 0, 0, 0, 1]], &mut registry)
            .unwrap();
        let withheld: BTreeSet<IpAddr> = ["10.0.0.101".parse().unwrap()].into();
        withhold(&mut spec, &withheld);
        let snapshot = balancer::snapshot::Snapshot::build(&spec, 1).unwrap();
        assert!(snapshot.owned("10.0.0.100".parse().unwrap()).unwrap().vip);
        assert!(snapshot.owned("10.0.0.101".parse().unwrap()).is_none());
        // The port's own address stays answered whatever keepalived does.
        assert!(snapshot.owned("10.0.0.1".parse().unwrap()).is_some());
    }

    #[test]
    fn other_owners_withhold_nothing() {
        let config = Config::parse(&CONFIG.replace("\"vrrp\"", "\"bgp\""), "bgp.toml").unwrap();
        assert!(vrrp_vips(&config).is_empty());
    }
}
