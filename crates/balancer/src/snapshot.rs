//! The immutable picture workers forward with: services with their backends and Maglev tables, the addresses the
//! balancer owns, connected subnets and gateways. The control thread builds it off the data path and shares it
//! read-only (`Arc<Snapshot>`); a worker swaps to a newer one between bursts and never sees a half-built table.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hashbrown::HashMap;
use packet::{MacWord, TunnelHeader, WireAddr};
use thiserror::Error;

use crate::maglev::{MaglevError, MaglevTable, TableSize};
use crate::port_alloc::PortPartition;
use crate::route_table::RouteTable;
use crate::service::{Backend, BackendId, ForwardingMode, SchedulerKind, ServiceKey};

/// Backend ids must be below this (per-backend tables are indexed by id).
pub const MAX_BACKEND_ID: usize = 1 << 20;

/// Client-address affinity of a service (keepalived's `persistence_timeout`, ipvsadm `-p`/`-M`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PersistenceSpec {
    pub timeout_ms: u64,
    /// Prefix length applied to IPv4 client addresses (32 = per address).
    pub prefix_v4: u8,
    /// Prefix length applied to IPv6 client addresses (128 = per address).
    pub prefix_v6: u8,
}

/// One virtual service as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub key: ServiceKey,
    pub mode: ForwardingMode,
    pub scheduler: SchedulerKind,
    pub persistence: Option<PersistenceSpec>,
    pub backends: Vec<Backend>,
}

/// One of the balancer's ports as the forwarding decision sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub mac: [u8; 6],
    pub mtu: u16,
    /// The port's own addresses with their prefix lengths; the prefixes are its connected subnets.
    pub addresses: Vec<(IpAddr, u8)>,
}

/// Where traffic for addresses outside every connected subnet goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatewaySpec {
    pub port: u16,
    pub addr: IpAddr,
    /// Configured MAC; resolved by ARP/ND when absent.
    pub mac: Option<[u8; 6]>,
}

/// Everything a snapshot is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotSpec {
    pub ports: Vec<PortSpec>,
    pub gateways: Vec<GatewaySpec>,
    pub tunnel_source_v4: Option<IpAddr>,
    pub tunnel_source_v6: Option<IpAddr>,
    /// FULLNAT local addresses (the sources backends see).
    pub local_addresses: Vec<IpAddr>,
    /// How FULLNAT local ports are split between workers; replies are steered by it.
    pub local_ports: PortPartition,
    pub maglev_size: TableSize,
    pub services: Vec<ServiceSpec>,
    /// Hand traffic that is not ours to the kernel instead of dropping it.
    pub kernel_exception_path: bool,
}

/// Why a snapshot cannot be built. The running snapshot stays in place.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("service {0}: {1}")]
    Maglev(String, MaglevError),
    #[error("service {0} is configured twice")]
    DuplicateService(String),
    #[error("backend id {0} is used twice")]
    DuplicateBackendId(u32),
    #[error("backend id {0} is too large (ids are dense, below {MAX_BACKEND_ID})")]
    BackendIdTooLarge(u32),
    #[error("gateway {addr} names port {port}, but there are only {ports} ports")]
    GatewayPort {
        addr: IpAddr,
        port: u16,
        ports: usize,
    },
    #[error("no route to backend {backend} of service {service}: it is in no connected subnet and there is no {family} gateway")]
    NoRoute {
        backend: String,
        service: String,
        family: &'static str,
    },
    #[error("service {service} is in {mode:?} mode and backend {backend} is of the other address family")]
    FamilyMismatch {
        service: String,
        backend: String,
        mode: ForwardingMode,
    },
    #[error("TUN service {0} needs a tunnel source address of its backends' family")]
    NoTunnelSource(String),
    #[error("FULLNAT service {0} needs local addresses of its backends' family")]
    NoLocalAddress(String),
}

/// How to reach an address: out of which port, to which next hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub port: u16,
    /// The address whose MAC the frame is sent to: the destination itself on a connected subnet, else the gateway.
    pub next_hop: IpAddr,
    /// The next hop's configured MAC, when there is one (one word: the verdict copies it on every frame).
    pub mac: MacWord,
}

/// A TUN backend's tunnel, prepared with the snapshot: its outer header, and the longest inner packet that fits
/// the egress port's MTU once wrapped in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tunnel {
    pub header: TunnelHeader,
    pub max_inner_len: u16,
}

/// A service as workers use it.
#[derive(Debug)]
pub struct Service {
    pub key: ServiceKey,
    pub mode: ForwardingMode,
    pub scheduler: SchedulerKind,
    pub persistence: Option<PersistenceSpec>,
    pub backends: Vec<Backend>,
    /// Route to each backend, in the order of `backends`.
    pub routes: Vec<Route>,
    /// Built for every service: it is the scheduler of `mh` services.
    pub maglev: MaglevTable,
    /// Outer source for TUN encapsulation, in the form the rewrite takes (every TUN frame carries it).
    pub tunnel_source: Option<WireAddr>,
}

/// What an address the balancer owns is used for (several may hold at once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnedAddress {
    pub vip: bool,
    pub port_address: bool,
    pub local_address: bool,
    pub tunnel_source: bool,
}

/// Where a backend sits in the snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendPlace {
    pub service: u32,
    pub index: u32,
}

/// The key of the snapshot's per-packet maps: an address as 128 bits with port, protocol and family packed in one
/// word, so that a probe hashes two integers instead of walking `IpAddr` enums.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PlaceKey {
    addr: u128,
    /// port << 16 | protocol << 8 | 1 for IPv6.
    rest: u32,
}

impl PlaceKey {
    #[inline]
    fn new(addr: IpAddr, port: u16, protocol: u8) -> PlaceKey {
        let (bits, v6) = match addr {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 0),
            IpAddr::V6(v6) => (u128::from(v6), 1),
        };
        PlaceKey {
            addr: bits,
            rest: u32::from(port) << 16 | u32::from(protocol) << 8 | v6,
        }
    }

    /// The key of an address alone (port and protocol zero).
    #[inline]
    fn address(addr: IpAddr) -> PlaceKey {
        PlaceKey::new(addr, 0, 0)
    }

    fn ip(&self) -> IpAddr {
        if self.rest & 1 == 1 {
            IpAddr::V6(Ipv6Addr::from(self.addr))
        } else {
            IpAddr::V4(Ipv4Addr::from(self.addr as u32))
        }
    }
}

/// The hasher of [`PlaceKey`]s: one folded multiply over the key's words. The maps are filled from the
/// configuration only; traffic merely probes them, so no client can choose keys that collide on insert.
#[derive(Clone, Copy, Debug, Default)]
struct PlaceHasher(u64);

impl std::hash::Hasher for PlaceHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    #[inline]
    fn write_u128(&mut self, value: u128) {
        self.0 ^= (value as u64) ^ ((value >> 64) as u64).rotate_left(29);
    }

    #[inline]
    fn write_u32(&mut self, value: u32) {
        self.0 ^= u64::from(value) << 32;
    }

    #[inline]
    fn finish(&self) -> u64 {
        let product = u128::from(self.0 ^ 0x243f_6a88_85a3_08d3) * 0x9e37_79b9_7f4a_7c15;
        (product as u64) ^ ((product >> 64) as u64)
    }
}

type PlaceMap<V> = HashMap<PlaceKey, V, std::hash::BuildHasherDefault<PlaceHasher>>;

/// The read-only forwarding state of one configuration generation.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    services: Vec<Service>,
    by_key: PlaceMap<u32>,
    /// Indexed by backend id: ids are small and dense (the control plane hands them out in order), and this
    /// lookup is on every packet of every tracked flow.
    by_backend: Vec<Option<BackendPlace>>,
    /// Each backend's route, by backend id: all an established DR flow asks of the snapshot, one load away.
    routes_by_backend: Vec<Option<Route>>,
    /// Each TUN backend's tunnel, by backend id: an established TUN flow's encapsulation, one load away.
    tunnels_by_backend: Vec<Option<Tunnel>>,
    /// NAT backends' (address, port, protocol) -> service index, to recognise their replies.
    nat_backends: PlaceMap<u32>,
    /// NAT backends that serve several services (as IPVS allows) -> those services' indices: a reply is mapped by
    /// its connection, and looked up here only after `nat_backends` missed, so that other replies pay nothing.
    shared_nat_backends: PlaceMap<Vec<u32>>,
    owned: PlaceMap<OwnedAddress>,
    ports: Vec<PortSpec>,
    gateways: Vec<GatewaySpec>,
    routes: RouteTable,
    local_ports: PortPartition,
    kernel_exception_path: bool,
    max_backend_id: u32,
    /// VIPs another node owns now (VRRP BACKUP): no service, not answered, and their traffic dropped rather than
    /// given to the kernel (which may already hold the address and would reset the connections).
    withheld: PlaceMap<()>,
}

impl Snapshot {
    /// Builds generation `generation` from `spec`. Maglev tables are built here: call it off the data path.
    pub fn build(spec: &SnapshotSpec, generation: u64) -> Result<Snapshot, SnapshotError> {
        let mut owned: PlaceMap<OwnedAddress> = PlaceMap::default();
        for port in &spec.ports {
            for &(addr, _) in &port.addresses {
                owned
                    .entry(PlaceKey::address(addr))
                    .or_default()
                    .port_address = true;
            }
        }
        for &addr in &spec.local_addresses {
            owned
                .entry(PlaceKey::address(addr))
                .or_default()
                .local_address = true;
        }
        for addr in [spec.tunnel_source_v4, spec.tunnel_source_v6]
            .into_iter()
            .flatten()
        {
            owned
                .entry(PlaceKey::address(addr))
                .or_default()
                .tunnel_source = true;
        }
        for gateway in &spec.gateways {
            if usize::from(gateway.port) >= spec.ports.len() {
                return Err(SnapshotError::GatewayPort {
                    addr: gateway.addr,
                    port: gateway.port,
                    ports: spec.ports.len(),
                });
            }
        }

        let mut snapshot = Snapshot {
            generation,
            services: Vec::with_capacity(spec.services.len()),
            by_key: PlaceMap::default(),
            by_backend: Vec::new(),
            routes_by_backend: Vec::new(),
            tunnels_by_backend: Vec::new(),
            nat_backends: PlaceMap::default(),
            shared_nat_backends: PlaceMap::default(),
            owned,
            ports: spec.ports.clone(),
            gateways: spec.gateways.clone(),
            routes: RouteTable::new(&spec.ports, &spec.gateways),
            local_ports: spec.local_ports,
            kernel_exception_path: spec.kernel_exception_path,
            max_backend_id: 0,
            withheld: PlaceMap::default(),
        };

        for service_spec in &spec.services {
            let service_index = snapshot.services.len() as u32;
            let name = describe_service(&service_spec.key);
            let key = service_spec.key;
            if snapshot
                .by_key
                .insert(
                    PlaceKey::new(key.vip, key.port, key.protocol),
                    service_index,
                )
                .is_some()
            {
                return Err(SnapshotError::DuplicateService(name));
            }
            snapshot
                .owned
                .entry(PlaceKey::address(key.vip))
                .or_default()
                .vip = true;
            let vip_is_v4 = service_spec.key.vip.is_ipv4();
            let tunnel_source = if vip_is_v4 {
                spec.tunnel_source_v4
            } else {
                spec.tunnel_source_v6
            };

            let mut routes = Vec::with_capacity(service_spec.backends.len());
            for (index, backend) in service_spec.backends.iter().enumerate() {
                let backend_name = describe_endpoint(backend.addr, backend.port);
                if backend.addr.is_ipv4() != vip_is_v4 {
                    return Err(SnapshotError::FamilyMismatch {
                        service: name,
                        backend: backend_name,
                        mode: service_spec.mode,
                    });
                }
                let route = snapshot
                    .route(backend.addr)
                    .ok_or_else(|| SnapshotError::NoRoute {
                        backend: backend_name.clone(),
                        service: name.clone(),
                        family: if vip_is_v4 { "IPv4" } else { "IPv6" },
                    })?;
                // A MAC configured on the backend wins over resolution, for the connected-subnet case.
                let route = match (backend.mac, route.next_hop == backend.addr) {
                    (Some(mac), true) => Route {
                        mac: MacWord::new(mac),
                        ..route
                    },
                    _ => route,
                };
                routes.push(route);
                let place = BackendPlace {
                    service: service_index,
                    index: index as u32,
                };
                let slot = backend.id.0 as usize;
                if slot >= MAX_BACKEND_ID {
                    return Err(SnapshotError::BackendIdTooLarge(backend.id.0));
                }
                if snapshot.by_backend.len() <= slot {
                    snapshot.by_backend.resize(slot + 1, None);
                }
                if snapshot.by_backend[slot].replace(place).is_some() {
                    return Err(SnapshotError::DuplicateBackendId(backend.id.0));
                }
                if snapshot.routes_by_backend.len() <= slot {
                    snapshot.routes_by_backend.resize(slot + 1, None);
                }
                snapshot.routes_by_backend[slot] = Some(route);
                if service_spec.mode == ForwardingMode::Tun {
                    let tunnel = snapshot.tunnel_to(tunnel_source, backend.addr, route.port);
                    if snapshot.tunnels_by_backend.len() <= slot {
                        snapshot.tunnels_by_backend.resize(slot + 1, None);
                    }
                    snapshot.tunnels_by_backend[slot] = tunnel;
                }
                snapshot.max_backend_id = snapshot.max_backend_id.max(backend.id.0);
                if service_spec.mode == ForwardingMode::Nat {
                    let key = PlaceKey::new(backend.addr, backend.port, service_spec.key.protocol);
                    if let Some(sharing) = snapshot.shared_nat_backends.get_mut(&key) {
                        sharing.push(service_index);
                    } else if let Some(first) = snapshot.nat_backends.remove(&key) {
                        snapshot
                            .shared_nat_backends
                            .insert(key, vec![first, service_index]);
                    } else {
                        snapshot.nat_backends.insert(key, service_index);
                    }
                }
            }

            if service_spec.mode == ForwardingMode::Tun && tunnel_source.is_none() {
                return Err(SnapshotError::NoTunnelSource(name));
            }
            if service_spec.mode == ForwardingMode::FullNat
                && !spec
                    .local_addresses
                    .iter()
                    .any(|addr| addr.is_ipv4() == vip_is_v4)
            {
                return Err(SnapshotError::NoLocalAddress(name));
            }
            let maglev = MaglevTable::build(&service_spec.backends, spec.maglev_size)
                .map_err(|error| SnapshotError::Maglev(name.clone(), error))?;
            snapshot.services.push(Service {
                key: service_spec.key,
                mode: service_spec.mode,
                scheduler: service_spec.scheduler,
                persistence: service_spec.persistence,
                backends: service_spec.backends.clone(),
                routes,
                maglev,
                tunnel_source: tunnel_source.map(WireAddr::from),
            });
        }
        Ok(snapshot)
    }

    /// The service a client reaches at `vip:port` over `protocol`: an exact match, else the VIP's all-ports service.
    #[inline]
    pub fn service_for(&self, vip: IpAddr, port: u16, protocol: u8) -> Option<(u32, &Service)> {
        let index = self
            .by_key
            .get(&PlaceKey::new(vip, port, protocol))
            .or_else(|| self.by_key.get(&PlaceKey::new(vip, 0, protocol)))?;
        Some((*index, &self.services[*index as usize]))
    }

    #[inline]
    pub fn service(&self, index: u32) -> Option<&Service> {
        self.services.get(index as usize)
    }

    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// Where backend `id` is in this snapshot; `None` once it has been removed.
    #[inline(always)]
    pub fn backend(&self, id: BackendId) -> Option<(&Service, &Backend, &Route)> {
        let place = self.by_backend.get(id.0 as usize).copied().flatten()?;
        let service = &self.services[place.service as usize];
        let index = place.index as usize;
        Some((service, &service.backends[index], &service.routes[index]))
    }

    /// The route to backend `id` (what [`Snapshot::backend`] gives with it); `None` once it has been removed.
    #[inline(always)]
    pub fn backend_route(&self, id: BackendId) -> Option<&Route> {
        self.routes_by_backend.get(id.0 as usize)?.as_ref()
    }

    /// The tunnel to TUN backend `id`; `None` once it has been removed, or for a backend of another mode.
    #[inline(always)]
    pub fn tunnel(&self, id: BackendId) -> Option<&Tunnel> {
        self.tunnels_by_backend.get(id.0 as usize)?.as_ref()
    }

    /// The tunnel from `source` to `backend` out of `port`; `None` without a source of the backend's family.
    fn tunnel_to(&self, source: Option<IpAddr>, backend: IpAddr, port: u16) -> Option<Tunnel> {
        let header = TunnelHeader::new(&WireAddr::from(source?), &WireAddr::from(backend))?;
        let mtu = self.port(port).map_or(u16::MAX, |port| port.mtu);
        Some(Tunnel {
            header,
            max_inner_len: mtu.saturating_sub(header.len() as u16),
        })
    }

    /// The NAT service whose backend `addr:port` sends a reply over `protocol`.
    #[inline]
    pub fn nat_service_of_backend(
        &self,
        addr: IpAddr,
        port: u16,
        protocol: u8,
    ) -> Option<&Service> {
        let index = self
            .nat_backends
            .get(&PlaceKey::new(addr, port, protocol))?;
        Some(&self.services[*index as usize])
    }

    /// The NAT services that share backend `addr:port` over `protocol`, when more than one does (see
    /// [`Snapshot::nat_service_of_backend`] for a backend of one service).
    #[inline(never)]
    pub fn nat_services_of_shared_backend(
        &self,
        addr: IpAddr,
        port: u16,
        protocol: u8,
    ) -> Option<&[u32]> {
        if self.shared_nat_backends.is_empty() {
            return None;
        }
        self.shared_nat_backends
            .get(&PlaceKey::new(addr, port, protocol))
            .map(Vec::as_slice)
    }

    /// Marks `vips` as owned by another node now (their services are left out of the spec by the caller).
    pub fn with_withheld(mut self, vips: impl IntoIterator<Item = IpAddr>) -> Snapshot {
        self.withheld = vips
            .into_iter()
            .map(|vip| (PlaceKey::address(vip), ()))
            .collect();
        self
    }

    /// Whether `addr` is a VIP another node owns now.
    #[inline]
    pub fn withheld(&self, addr: IpAddr) -> bool {
        !self.withheld.is_empty() && self.withheld.contains_key(&PlaceKey::address(addr))
    }

    /// Whether, and as what, the balancer owns `addr`.
    #[inline]
    pub fn owned(&self, addr: IpAddr) -> Option<OwnedAddress> {
        self.owned.get(&PlaceKey::address(addr)).copied()
    }

    /// Every address the balancer answers ARP/ND for.
    pub fn owned_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.owned.keys().map(PlaceKey::ip)
    }

    /// The route to `addr`: the longest matching connected subnet, else the gateway of its family.
    #[inline]
    pub fn route(&self, addr: IpAddr) -> Option<Route> {
        self.routes.route(addr)
    }

    /// The next hops whose MAC the configuration does not give, which the workers resolve ahead of traffic:
    /// every backend's (itself on a connected subnet, or the gateway) and every gateway's, as (port, address); an
    /// address may come more than once.
    pub fn next_hops_to_resolve(&self) -> impl Iterator<Item = (u16, IpAddr)> + '_ {
        let backends = self
            .services
            .iter()
            .flat_map(|service| service.routes.iter())
            .filter(|route| !route.mac.is_known())
            .map(|route| (route.port, route.next_hop));
        let gateways = self
            .gateways
            .iter()
            .filter(|gateway| gateway.mac.is_none())
            .map(|gateway| (gateway.port, gateway.addr));
        backends.chain(gateways)
    }

    /// The port with index `port`.
    #[inline]
    pub fn port(&self, port: u16) -> Option<&PortSpec> {
        self.ports.get(usize::from(port))
    }

    pub fn ports(&self) -> &[PortSpec] {
        &self.ports
    }

    /// An address of port `port` of `addr`'s family, to source ARP/ND requests and ICMP errors from.
    pub fn port_address(&self, port: u16, v4: bool) -> Option<IpAddr> {
        self.ports
            .get(usize::from(port))?
            .addresses
            .iter()
            .map(|&(addr, _)| addr)
            .find(|addr| addr.is_ipv4() == v4)
    }

    #[inline]
    pub fn local_ports(&self) -> &PortPartition {
        &self.local_ports
    }

    #[inline]
    pub fn kernel_exception_path(&self) -> bool {
        self.kernel_exception_path
    }

    /// The largest backend id in use, to size per-core tables indexed by id.
    pub fn max_backend_id(&self) -> u32 {
        self.max_backend_id
    }
}

/// `addr` with everything past `prefix` bits cleared.
pub fn mask_address(addr: IpAddr, prefix_v4: u8, prefix_v6: u8) -> IpAddr {
    match addr {
        IpAddr::V4(addr) => {
            let prefix = u32::from(prefix_v4.min(32));
            let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
            IpAddr::V4((u32::from(addr) & mask).into())
        }
        IpAddr::V6(addr) => {
            let prefix = u32::from(prefix_v6.min(128));
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            IpAddr::V6((u128::from(addr) & mask).into())
        }
    }
}

/// `tcp://10.0.0.1:80`, `udp://[2001:db8::1]:53`: how services are named in errors and logs.
pub fn describe_service(key: &ServiceKey) -> String {
    let protocol = match key.protocol {
        packet::flow::ip_protocol::TCP => "tcp",
        packet::flow::ip_protocol::UDP => "udp",
        _ => "ip",
    };
    format!("{protocol}://{}", describe_endpoint(key.vip, key.port))
}

/// `10.0.0.1:80` or `[2001:db8::1]:80`.
pub fn describe_endpoint(addr: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(addr, port).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use packet::flow::ip_protocol;

    fn backend(id: u32, addr: &str, weight: u32) -> Backend {
        Backend {
            id: BackendId(id),
            addr: addr.parse().unwrap(),
            port: 80,
            weight,
            mac: None,
        }
    }

    pub(crate) fn spec(mode: ForwardingMode) -> SnapshotSpec {
        SnapshotSpec {
            ports: vec![
                PortSpec {
                    mac: [2, 0, 0, 0, 0, 1],
                    mtu: 1500,
                    addresses: vec![
                        ("10.0.0.1".parse().unwrap(), 24),
                        ("fd00::1".parse().unwrap(), 64),
                    ],
                },
                PortSpec {
                    mac: [2, 0, 0, 0, 0, 2],
                    mtu: 1500,
                    addresses: vec![("10.1.0.1".parse().unwrap(), 24)],
                },
            ],
            gateways: vec![GatewaySpec {
                port: 0,
                addr: "10.0.0.254".parse().unwrap(),
                mac: Some([2, 0, 0, 0, 0, 0xfe]),
            }],
            tunnel_source_v4: Some("10.1.0.1".parse().unwrap()),
            tunnel_source_v6: None,
            local_addresses: vec!["10.1.0.5".parse().unwrap()],
            local_ports: PortPartition::new(1024, 65535, 1).unwrap(),
            maglev_size: TableSize::new(251).unwrap(),
            services: vec![ServiceSpec {
                key: ServiceKey {
                    vip: "10.0.0.100".parse().unwrap(),
                    port: 80,
                    protocol: ip_protocol::TCP,
                },
                mode,
                scheduler: SchedulerKind::Mh,
                persistence: None,
                backends: vec![backend(1, "10.1.0.11", 1), backend(2, "10.1.0.12", 1)],
            }],
            kernel_exception_path: false,
        }
    }

    #[test]
    fn routes_prefer_the_longest_connected_subnet_then_the_gateway() {
        let snapshot = Snapshot::build(&spec(ForwardingMode::Nat), 1).unwrap();
        let to_backend = snapshot.route("10.1.0.11".parse().unwrap()).unwrap();
        assert_eq!(to_backend.port, 1);
        assert_eq!(to_backend.next_hop, "10.1.0.11".parse::<IpAddr>().unwrap());
        let far = snapshot.route("192.0.2.1".parse().unwrap()).unwrap();
        assert_eq!(far.port, 0);
        assert_eq!(far.next_hop, "10.0.0.254".parse::<IpAddr>().unwrap());
        assert_eq!(far.mac.get(), Some([2, 0, 0, 0, 0, 0xfe]));
        // The per-backend route a tracked flow reads is the one the backend's place gives.
        for id in [BackendId(1), BackendId(2)] {
            assert_eq!(
                snapshot.backend_route(id),
                snapshot.backend(id).map(|(_, _, route)| route)
            );
            assert!(snapshot.backend_route(id).is_some());
        }
        assert_eq!(snapshot.backend_route(BackendId(3)), None);
        // No IPv6 gateway: only the connected IPv6 subnet is reachable.
        assert!(snapshot.route("2001:db8::1".parse().unwrap()).is_none());
        assert_eq!(snapshot.route("fd00::9".parse().unwrap()).unwrap().port, 0);
    }

    #[test]
    fn services_match_exactly_or_on_the_all_ports_service() {
        let mut spec = spec(ForwardingMode::Dr);
        let mut all_ports = spec.services[0].clone();
        all_ports.key.port = 0;
        all_ports.backends = vec![backend(7, "10.1.0.20", 1)];
        spec.services.push(all_ports);
        let snapshot = Snapshot::build(&spec, 1).unwrap();
        let vip = "10.0.0.100".parse().unwrap();
        assert_eq!(
            snapshot.service_for(vip, 80, ip_protocol::TCP).unwrap().0,
            0
        );
        assert_eq!(
            snapshot.service_for(vip, 443, ip_protocol::TCP).unwrap().0,
            1
        );
        assert!(snapshot.service_for(vip, 443, ip_protocol::UDP).is_none());
        assert!(snapshot.owned(vip).unwrap().vip);
        assert!(
            snapshot
                .owned("10.1.0.5".parse().unwrap())
                .unwrap()
                .local_address
        );
    }

    #[test]
    fn a_nat_backend_may_serve_several_services() {
        let mut shared = spec(ForwardingMode::Nat);
        let mut second = shared.services[0].clone();
        second.key.port = 8080;
        second.backends[0].id = BackendId(10);
        second.backends[1].id = BackendId(11);
        shared.services.push(second);
        let snapshot = Snapshot::build(&shared, 1).unwrap();
        let backend = &shared.services[0].backends[0];
        assert!(snapshot
            .nat_service_of_backend(backend.addr, backend.port, 6)
            .is_none());
        assert_eq!(
            snapshot.nat_services_of_shared_backend(backend.addr, backend.port, 6),
            Some(&[0, 1][..])
        );
    }

    #[test]
    fn invalid_specs_are_typed_errors() {
        let mut no_route = spec(ForwardingMode::Nat);
        no_route.gateways.clear();
        no_route.services[0].backends[0].addr = "192.0.2.1".parse().unwrap();
        assert!(matches!(
            Snapshot::build(&no_route, 1),
            Err(SnapshotError::NoRoute { .. })
        ));

        let mut tun_v6 = spec(ForwardingMode::Tun);
        tun_v6.services[0].key.vip = "fd00::100".parse().unwrap();
        tun_v6.services[0].backends = vec![backend(1, "fd00::11", 1)];
        assert_eq!(
            Snapshot::build(&tun_v6, 1).unwrap_err(),
            SnapshotError::NoTunnelSource("tcp://[fd00::100]:80".into())
        );

        let mut mixed = spec(ForwardingMode::Dr);
        mixed.services[0].backends[1].addr = "fd00::12".parse().unwrap();
        assert!(matches!(
            Snapshot::build(&mixed, 1),
            Err(SnapshotError::FamilyMismatch { .. })
        ));
    }

    #[test]
    fn masks() {
        let addr: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(
            mask_address(addr, 24, 128),
            "10.1.2.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            mask_address(addr, 0, 128),
            "0.0.0.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(mask_address(addr, 32, 128), addr);
    }
}
