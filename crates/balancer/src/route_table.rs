//! Where a destination is sent: the longest of the ports' connected subnets that holds it, else its family's first
//! gateway. Built once per snapshot as masked words per family, most specific first, so that a lookup (on every
//! reply a backend sends through NAT or FULLNAT) is a few compares with no address enum to take apart.

use std::net::IpAddr;

use packet::MacWord;

use crate::snapshot::{GatewaySpec, PortSpec, Route};

/// A connected subnet of one family: `addr & mask == network` on port `port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Subnet<W> {
    network: W,
    mask: W,
    port: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTable {
    /// Longest prefix first; among equal prefixes, in the order of the configuration (ports, then addresses).
    connected_v4: Vec<Subnet<u32>>,
    connected_v6: Vec<Subnet<u128>>,
    gateway_v4: Option<Route>,
    gateway_v6: Option<Route>,
}

impl RouteTable {
    pub fn new(ports: &[PortSpec], gateways: &[GatewaySpec]) -> RouteTable {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (port, spec) in ports.iter().enumerate() {
            let port = port as u16;
            for &(own, prefix) in &spec.addresses {
                match own {
                    IpAddr::V4(own) => {
                        let mask = u32::MAX
                            .checked_shl(32 - u32::from(prefix.min(32)))
                            .unwrap_or(0);
                        let network = u32::from(own) & mask;
                        v4.push((
                            prefix,
                            Subnet {
                                network,
                                mask,
                                port,
                            },
                        ));
                    }
                    IpAddr::V6(own) => {
                        let mask = u128::MAX
                            .checked_shl(128 - u32::from(prefix.min(128)))
                            .unwrap_or(0);
                        let network = u128::from(own) & mask;
                        v6.push((
                            prefix,
                            Subnet {
                                network,
                                mask,
                                port,
                            },
                        ));
                    }
                }
            }
        }
        // Stable: equal prefixes keep the configuration's order, whose first match wins.
        v4.sort_by_key(|&(prefix, _)| std::cmp::Reverse(prefix));
        v6.sort_by_key(|&(prefix, _)| std::cmp::Reverse(prefix));
        let gateway = |v4: bool| {
            gateways
                .iter()
                .find(|gateway| gateway.addr.is_ipv4() == v4)
                .map(|gateway| Route {
                    port: gateway.port,
                    next_hop: gateway.addr,
                    mac: MacWord::from_option(gateway.mac),
                })
        };
        RouteTable {
            connected_v4: v4.into_iter().map(|(_, subnet)| subnet).collect(),
            connected_v6: v6.into_iter().map(|(_, subnet)| subnet).collect(),
            gateway_v4: gateway(true),
            gateway_v6: gateway(false),
        }
    }

    /// The route to `addr`: on a connected subnet, to `addr` itself (its MAC left to resolution); else through
    /// the gateway of its family; `None` when there is neither.
    #[inline]
    pub fn route(&self, addr: IpAddr) -> Option<Route> {
        let (connected, gateway) = match addr {
            IpAddr::V4(v4) => (
                connected_port(&self.connected_v4, u32::from(v4)),
                &self.gateway_v4,
            ),
            IpAddr::V6(v6) => (
                connected_port(&self.connected_v6, u128::from(v6)),
                &self.gateway_v6,
            ),
        };
        match connected {
            Some(port) => Some(Route {
                port,
                next_hop: addr,
                mac: MacWord::NONE,
            }),
            None => *gateway,
        }
    }
}

/// The port of the first subnet of `subnets` that holds `addr`.
#[inline]
fn connected_port<W>(subnets: &[Subnet<W>], addr: W) -> Option<u16>
where
    W: Copy + PartialEq + std::ops::BitAnd<Output = W>,
{
    subnets
        .iter()
        .find(|subnet| addr & subnet.mask == subnet.network)
        .map(|subnet| subnet.port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// Whether `addr` is inside `network/prefix` (same family only).
    fn prefix_contains(network: IpAddr, prefix: u8, addr: IpAddr) -> bool {
        match (network, addr) {
            (IpAddr::V4(network), IpAddr::V4(addr)) => {
                let prefix = u32::from(prefix.min(32));
                let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
                u32::from(network) & mask == u32::from(addr) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(addr)) => {
                let prefix = u32::from(prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
                u128::from(network) & mask == u128::from(addr) & mask
            }
            _ => false,
        }
    }

    /// Routing as a scan of every port's every address, keeping the longest prefix that holds `addr` (the first
    /// among equals), else the first gateway of its family: what the table must answer.
    fn route_by_scan(ports: &[PortSpec], gateways: &[GatewaySpec], addr: IpAddr) -> Option<Route> {
        let mut best: Option<(u8, u16)> = None;
        for (port_index, port) in ports.iter().enumerate() {
            for &(own, prefix) in &port.addresses {
                if prefix_contains(own, prefix, addr) && best.is_none_or(|(len, _)| prefix > len) {
                    best = Some((prefix, port_index as u16));
                }
            }
        }
        if let Some((_, port)) = best {
            return Some(Route {
                port,
                next_hop: addr,
                mac: MacWord::NONE,
            });
        }
        gateways
            .iter()
            .find(|gateway| gateway.addr.is_ipv4() == addr.is_ipv4())
            .map(|gateway| Route {
                port: gateway.port,
                next_hop: gateway.addr,
                mac: MacWord::from_option(gateway.mac),
            })
    }

    /// Addresses from a small space, so that subnets overlap and hold the destinations often.
    fn address() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u8>().prop_map(|low| IpAddr::V4(Ipv4Addr::new(10, 0, low >> 4, low))),
            any::<u8>().prop_map(|low| IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                0,
                0,
                0,
                0,
                0,
                u16::from(low >> 4),
                u16::from(low)
            ))),
        ]
    }

    fn prefix_of(addr: IpAddr) -> impl Strategy<Value = (IpAddr, u8)> {
        let most = if addr.is_ipv4() { 32u8 } else { 128 };
        prop_oneof![Just(most), 0..=most, (most - 12)..=most].prop_map(move |prefix| (addr, prefix))
    }

    fn port() -> impl Strategy<Value = PortSpec> {
        proptest::collection::vec(address().prop_flat_map(prefix_of), 0..4).prop_map(|addresses| {
            PortSpec {
                mac: [2, 0, 0, 0, 0, 1],
                mtu: 1500,
                addresses,
            }
        })
    }

    fn gateway() -> impl Strategy<Value = GatewaySpec> {
        (0u16..3, address(), any::<bool>()).prop_map(|(port, addr, known)| GatewaySpec {
            port,
            addr,
            mac: known.then_some([2, 0, 0, 0, 0, 0xfe]),
        })
    }

    proptest! {
        #[test]
        fn routes_as_a_scan_of_every_subnet_does(
            ports in proptest::collection::vec(port(), 1..4),
            gateways in proptest::collection::vec(gateway(), 0..3),
            destinations in proptest::collection::vec(address(), 1..16),
        ) {
            let table = RouteTable::new(&ports, &gateways);
            for addr in destinations {
                prop_assert_eq!(table.route(addr), route_by_scan(&ports, &gateways, addr), "{}", addr);
            }
        }
    }

    #[test]
    fn the_scans_prefix_test() {
        let addr: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(prefix_contains("10.0.0.0".parse().unwrap(), 8, addr));
        assert!(!prefix_contains("10.0.0.0".parse().unwrap(), 16, addr));
        assert!(prefix_contains(
            "::".parse().unwrap(),
            0,
            "fd00::1".parse().unwrap()
        ));
        assert!(!prefix_contains("::".parse().unwrap(), 0, addr));
    }

    #[test]
    fn the_longest_prefix_wins_and_the_gateway_takes_the_rest() {
        let port = |addresses: Vec<(IpAddr, u8)>| PortSpec {
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
            addresses,
        };
        let ip = |text: &str| -> IpAddr { text.parse().unwrap() };
        let ports = [
            port(vec![(ip("10.0.0.1"), 16)]),
            port(vec![(ip("10.0.1.1"), 24), (ip("fd00::1"), 64)]),
        ];
        let gateways = [GatewaySpec {
            port: 0,
            addr: ip("10.0.0.254"),
            mac: None,
        }];
        let table = RouteTable::new(&ports, &gateways);
        assert_eq!(table.route(ip("10.0.1.9")).unwrap().port, 1);
        assert_eq!(table.route(ip("10.0.2.9")).unwrap().port, 0);
        assert_eq!(
            table.route(ip("198.51.100.7")).unwrap().next_hop,
            ip("10.0.0.254")
        );
        assert_eq!(table.route(ip("fd00::9")).unwrap().port, 1);
        assert_eq!(table.route(ip("2001:db8::9")), None);
    }
}
