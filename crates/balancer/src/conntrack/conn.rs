//! What the table hands out: a connection as a plain value ([`Conn`], rebuilt from its entries), where it lives
//! ([`ConnId`]), what a lookup found ([`Hit`]), what a packet did to it ([`Transition`]) and what a removal took
//! ([`RemovedConn`]).

use std::net::IpAddr;

use packet::flow::ip_protocol;
use packet::{FlowKey, WireAddr};

use super::entry::Entry;
use super::key::{ipv4_from_bits, ConnKey};
use super::tcp_state::{Direction, TcpState};
use crate::service::{BackendId, ForwardingMode};

/// An address and port (for ICMP echo the port is the echo identifier, as in [`FlowKey`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
}

/// What a backend's reply needs to go back: the client's key (client to VIP), the backend and the mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyPath {
    pub client: ConnKey,
    pub backend: BackendId,
    pub mode: ForwardingMode,
}

/// A connection's backend endpoint (and FULLNAT local endpoint) in the form the rewrites take: read for every
/// forwarded frame of a NAT, FULLNAT or TUN connection, so built from the entry's words without a detour through
/// [`IpAddr`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireEndpoints {
    pub backend: WireAddr,
    pub backend_port: u16,
    pub local: Option<(WireAddr, u16)>,
}

impl From<&Forwarding> for WireEndpoints {
    fn from(forwarding: &Forwarding) -> WireEndpoints {
        WireEndpoints {
            backend: WireAddr::from(forwarding.backend_endpoint.addr),
            backend_port: forwarding.backend_endpoint.port,
            local: forwarding
                .local
                .map(|local| (WireAddr::from(local.addr), local.port)),
        }
    }
}

/// A connection's endpoints as its entry holds them ([`ConnTable::client_endpoints`](super::ConnTable::client_endpoints)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientEndpoints {
    /// An IPv4 backend held in the primary entry, with no local endpoint: the address's four bytes in network
    /// order as one word in memory order ([`WireAddr::from_v4_word`]).
    InlineV4 { backend: u32, port: u16 },
    /// Endpoints read from the connection's second entry.
    Linked(WireEndpoints),
}

impl From<ClientEndpoints> for WireEndpoints {
    #[inline(always)]
    fn from(endpoints: ClientEndpoints) -> WireEndpoints {
        match endpoints {
            ClientEndpoints::InlineV4 { backend, port } => WireEndpoints {
                backend: WireAddr::from_v4_word(backend),
                backend_port: port,
                local: None,
            },
            ClientEndpoints::Linked(endpoints) => endpoints,
        }
    }
}

/// Where a new connection goes: the scheduler's decision, fixed for the connection's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub backend: BackendId,
    pub addr: IpAddr,
    pub port: u16,
    pub mode: ForwardingMode,
}

/// One tracked connection: everything needed to rewrite its later packets without the scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conn {
    /// The client's key: client -> VIP:vport.
    pub client: FlowKey,
    /// The backend's address and port.
    pub backend_endpoint: Endpoint,
    /// FULLNAT only: the local address and port the backend sees as the source.
    pub local: Option<Endpoint>,
    /// When the connection dies, in the caller's milliseconds.
    pub expires_at: u64,
    pub backend: BackendId,
    pub mode: ForwardingMode,
    /// TCP state; stays [`TcpState::None`] for other protocols.
    pub tcp_state: TcpState,
}

/// What forwarding a client's packet needs from its connection: everything but the client's key and the expiry,
/// read without rebuilding the key (the hot path of a request that hits its connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forwarding {
    pub backend: BackendId,
    pub mode: ForwardingMode,
    /// The backend's address and port.
    pub backend_endpoint: Endpoint,
    /// FULLNAT only: the local address and port the backend sees as the source.
    pub local: Option<Endpoint>,
}

/// The reply key of a connection in `mode` from `client` to `backend` (through `local`, for FULLNAT): what
/// [`Conn::reply_key`] gives, for a connection not built yet.
#[inline]
pub fn reply_flow(
    mode: ForwardingMode,
    client: &FlowKey,
    backend: Endpoint,
    local: Option<Endpoint>,
) -> Option<FlowKey> {
    let destination = match mode {
        ForwardingMode::Nat => Endpoint {
            addr: client.src_addr,
            port: client.src_port,
        },
        ForwardingMode::FullNat => local?,
        ForwardingMode::Dr | ForwardingMode::Tun => return None,
    };
    Some(FlowKey {
        src_addr: backend.addr,
        dst_addr: destination.addr,
        src_port: backend.port,
        dst_port: destination.port,
        protocol: client.protocol,
    })
}

impl Conn {
    /// The key of the reply direction as it reaches the balancer, for the modes where replies come back through
    /// it: backend -> client (NAT), backend -> LIP:lport (FULLNAT).
    pub fn reply_key(&self) -> Option<FlowKey> {
        reply_flow(self.mode, &self.client, self.backend_endpoint, self.local)
    }

    /// Whether IPVS would count the connection as active: TCP in ESTABLISHED, any other protocol always.
    #[inline]
    pub fn is_active(&self) -> bool {
        is_active(self.client.protocol, self.tcp_state)
    }

    /// Whether the connection may be evicted to make room: anything but an established TCP flow.
    #[inline]
    pub fn is_evictable(&self) -> bool {
        is_evictable(self.client.protocol, self.tcp_state)
    }

    /// Whether the connection is dead at `now`.
    #[inline]
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_at <= now
    }
}

/// A connection the table has just removed (expired, evicted, displaced or removed on request), as its removal
/// callback sees it: its backend and activity are read from the entry it held, which is all that keeping the
/// per-backend counts needs on every eviction; the whole [`Conn`] is rebuilt only when asked for.
#[derive(Clone, Copy, Debug)]
pub struct RemovedConn<'a> {
    pub(super) primary: &'a Entry,
    /// The second entry, when the connection had one.
    pub(super) second: Option<&'a Entry>,
}

impl RemovedConn<'_> {
    #[inline]
    pub fn backend(&self) -> BackendId {
        BackendId(self.primary.backend)
    }

    /// Whether IPVS counted the connection as active ([`Conn::is_active`]).
    #[inline]
    pub fn is_active(&self) -> bool {
        is_active(self.primary.protocol(), self.primary.state())
    }

    /// The whole connection, rebuilt from its entries.
    pub fn conn(&self) -> Conn {
        // Every connection without an inline backend has a second entry.
        conn_of(self.primary, || self.second.unwrap_or(&Entry::FREE).key())
    }
}

/// The backend endpoint and (FULLNAT) local endpoint of a connection's `primary` entry; `second_key` gives its
/// second entry's key, read only when the backend is not inline.
#[inline(always)]
pub(super) fn endpoints_of(
    primary: &Entry,
    second_key: impl FnOnce() -> ConnKey,
) -> (Endpoint, Option<Endpoint>) {
    if primary.backend_inline {
        let backend = Endpoint {
            addr: ipv4_from_bits(primary.backend_v4),
            port: primary.backend_port,
        };
        (backend, None)
    } else {
        // The second entry's key runs from the backend (to the local endpoint, for FULLNAT).
        let second = second_key();
        let backend = Endpoint {
            addr: second.src_addr(),
            port: second.src_port(),
        };
        let local = (primary.mode() == ForwardingMode::FullNat).then(|| Endpoint {
            addr: second.dst_addr(),
            port: second.dst_port(),
        });
        (backend, local)
    }
}

/// The connection of `primary`, rebuilt; `second_key` as for [`endpoints_of`].
pub(super) fn conn_of(primary: &Entry, second_key: impl FnOnce() -> ConnKey) -> Conn {
    let (backend_endpoint, local) = endpoints_of(primary, second_key);
    Conn {
        client: primary.key().to_flow(),
        backend_endpoint,
        local,
        expires_at: primary.expires_at,
        backend: BackendId(primary.backend),
        mode: primary.mode(),
        tcp_state: primary.state(),
    }
}

#[inline]
pub(super) fn is_active(protocol: u8, state: TcpState) -> bool {
    protocol != ip_protocol::TCP || state.is_active()
}

#[inline]
pub(super) fn is_evictable(protocol: u8, state: TcpState) -> bool {
    protocol != ip_protocol::TCP || state != TcpState::Established
}

/// A connection's place in the table (its primary entry). Valid until the connection is removed (by expiry,
/// eviction, an insert displacing it or [`super::ConnTable::remove`]); use it within the handling of one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId(pub(super) u32);

impl ConnId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A connection just inserted ([`ConnTable::insert_keyed`](super::ConnTable::insert_keyed)): where it is, the
/// FULLNAT local endpoint the table drew for it, and whether IPVS counts it as active; with the caller's
/// [`Target`], all that forwarding its first packet and counting it need, without reading the entry back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inserted {
    pub id: ConnId,
    pub local: Option<Endpoint>,
    pub active: bool,
}

/// A lookup hit: which connection, and which direction the key matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    pub id: ConnId,
    pub direction: Direction,
}

/// A client's packet looked up and accounted in one pass over its entry ([`ConnTable::client_hit`](super::ConnTable::client_hit)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientHit {
    /// A live connection's client key, whose state the packet leaves as it was (every packet of an established
    /// flow but its last few): its expiry is pushed out already, nothing else changes.
    Refreshed {
        id: ConnId,
        backend: BackendId,
        mode: ForwardingMode,
    },
    /// A live connection's client key whose state the packet moves: nothing is changed yet, the caller accounts
    /// the packet with [`ConnTable::touch`](super::ConnTable::touch).
    Changing {
        id: ConnId,
        backend: BackendId,
        mode: ForwardingMode,
    },
    /// A live connection's reply key.
    Reply(Hit),
    /// No live connection has the key, and a dead one still holds it (removed when a new one is opened).
    Missed,
    /// No entry holds the key at all, live or dead: a new connection may be inserted without looking again.
    Absent,
}

/// What a packet did to a connection's state, so a worker can move it between its backend's active and inactive
/// counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: TcpState,
    pub to: TcpState,
    pub was_active: bool,
    pub is_active: bool,
}
