//! The per-core connection table: every flow a worker forwards, found from either direction, with its IPVS-style
//! TCP state, its timeout and, for FULLNAT, the local port it owns.
//!
//! Layout: a slab of fixed-size slots allocated at construction, and a hashbrown index holding, per connection,
//! one tagged slot number for the client's key and (NAT, FULLNAT) one for the reply key. The index is sized so
//! that it never grows: at most `2 × capacity` tags live in a table whose usable capacity is at least
//! `4 × capacity`, so it stays at most half full, where hashbrown reclaims deletion tombstones in place instead of
//! allocating. Nothing allocates after [`ConnTable::new`].
//!
//! Time is whatever the caller passes as `now`, in milliseconds from any fixed origin; the table never reads a
//! clock. An entry whose `expires_at <= now` is dead: lookups no longer see it, and it is removed by the budgeted
//! clock hand of [`ConnTable::expire`], by an insert of the same key, or by eviction, whichever comes first.
//! Every removal is reported to the caller (callback) so per-backend connection counts stay right, and frees the
//! FULLNAT local port.
//!
//! When the table is full, an insert evicts the connection that entered the sacrificable class (half-open or
//! closing TCP, any UDP or ICMP flow) longest ago; established TCP flows are never evicted, and when nothing else
//! is left the insert fails with [`InsertError::TableFull`].

use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr};

use hashbrown::{DefaultHashBuilder, HashTable};
use packet::flow::ip_protocol;
use packet::FlowKey;
use thiserror::Error;

use crate::port_alloc::{LocalEndpoint, PortAllocator, PortError};
use crate::service::{BackendId, ForwardingMode};

/// TCP header flag bits, as on the wire.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// The IPVS TCP connection states, in IPVS order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TcpState {
    None = 0,
    Established,
    SynSent,
    SynRecv,
    FinWait,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    SynAck,
}

/// Which way a packet travels relative to the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to service: the key the connection was created with (IPVS "input").
    Original,
    /// Backend to client, seen only in NAT and FULLNAT (IPVS "output").
    Reply,
}

/// The flag that drives a transition, by IPVS priority: RST over SYN over FIN over ACK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FlagEvent {
    Syn = 0,
    Fin = 1,
    Ack = 2,
    Rst = 3,
}

impl FlagEvent {
    fn from_flags(flags: u8) -> Option<FlagEvent> {
        if flags & tcp_flags::RST != 0 {
            Some(FlagEvent::Rst)
        } else if flags & tcp_flags::SYN != 0 {
            Some(FlagEvent::Syn)
        } else if flags & tcp_flags::FIN != 0 {
            Some(FlagEvent::Fin)
        } else if flags & tcp_flags::ACK != 0 {
            Some(FlagEvent::Ack)
        } else {
            None
        }
    }
}

/// Which of the three IPVS transition tables applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrackedPath {
    /// The balancer sees the client's packets: NAT and FULLNAT original direction.
    Input,
    /// The balancer sees the backend's packets: NAT and FULLNAT reply direction.
    Output,
    /// The balancer sees only the client's packets: DR and TUN.
    InputOnly,
}

use TcpState::{
    Close as CL, CloseWait as CW, Established as ES, FinWait as FW, LastAck as LA, Listen as LI,
    SynRecv as SR, SynSent as SS, TimeWait as TW,
};

/// Next state by [path][event][current state], the IPVS table (ip_vs_proto_tcp.c).
/// Columns: NONE, ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT, TIME_WAIT, CLOSE, CLOSE_WAIT, LAST_ACK, LISTEN, SYNACK.
const TRANSITIONS: [[[TcpState; 11]; 4]; 3] = [
    // Input.
    [
        [SR, ES, ES, SR, SR, SR, SR, SR, SR, SR, SR], // SYN
        [CL, CW, SS, TW, TW, TW, CL, CW, LA, LI, TW], // FIN
        [CL, ES, SS, ES, FW, TW, CL, CW, CL, LI, ES], // ACK
        [CL, CL, CL, SR, CL, CL, CL, CL, LA, LI, SR], // RST
    ],
    // Output.
    [
        [SS, ES, SS, SR, SS, SS, SS, SS, SS, LI, SR],
        [TW, FW, SS, TW, FW, TW, CL, TW, LA, LI, TW],
        [ES, ES, SS, ES, FW, TW, CL, CW, LA, ES, ES],
        [CL, CL, SS, CL, CL, TW, CL, CL, CL, CL, CL],
    ],
    // Input only.
    [
        [SR, ES, ES, SR, SR, SR, SR, SR, SR, SR, SR],
        [CL, FW, SS, TW, FW, TW, CL, CW, LA, LI, TW],
        [CL, ES, SS, ES, FW, TW, CL, CW, CL, LI, ES],
        [CL, CL, CL, SR, CL, CL, CL, CL, LA, LI, CL],
    ],
];

impl TcpState {
    /// The state after a segment with `flags` on `path`; flags that carry none of RST, SYN, FIN, ACK change
    /// nothing.
    #[inline]
    pub fn next(self, path: TrackedPath, flags: u8) -> TcpState {
        match FlagEvent::from_flags(flags) {
            Some(event) => TRANSITIONS[path as usize][event as usize][self as usize],
            None => self,
        }
    }

    /// Whether IPVS counts a connection in this state as active (only ESTABLISHED).
    #[inline]
    pub fn is_active(self) -> bool {
        self == TcpState::Established
    }

    /// Half-open states: the handshake is not complete.
    pub fn is_half_open(self) -> bool {
        matches!(
            self,
            TcpState::None
                | TcpState::SynSent
                | TcpState::SynRecv
                | TcpState::SynAck
                | TcpState::Listen
        )
    }

    /// Closing states: one side has finished or reset.
    pub fn is_closing(self) -> bool {
        matches!(
            self,
            TcpState::FinWait
                | TcpState::TimeWait
                | TcpState::Close
                | TcpState::CloseWait
                | TcpState::LastAck
        )
    }

    /// The name IPVS gives the state.
    pub fn name(self) -> &'static str {
        match self {
            TcpState::None => "NONE",
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::FinWait => "FIN_WAIT",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::SynAck => "SYNACK",
        }
    }
}

/// Idle timeouts in milliseconds, per TCP state and for UDP and ICMP. Defaults are the IPVS defaults; IPVS has
/// no ICMP timeout of its own, ours defaults to 60 s. Protocols other than TCP and ICMP use the UDP timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub none: u64,
    pub established: u64,
    pub syn_sent: u64,
    pub syn_recv: u64,
    pub fin_wait: u64,
    pub time_wait: u64,
    pub close: u64,
    pub close_wait: u64,
    pub last_ack: u64,
    pub listen: u64,
    pub synack: u64,
    pub udp: u64,
    pub icmp: u64,
}

const SECOND: u64 = 1000;
const MINUTE: u64 = 60 * SECOND;

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            none: 2 * SECOND,
            established: 15 * MINUTE,
            syn_sent: 2 * MINUTE,
            syn_recv: MINUTE,
            fin_wait: 2 * MINUTE,
            time_wait: 2 * MINUTE,
            close: 10 * SECOND,
            close_wait: MINUTE,
            last_ack: 30 * SECOND,
            listen: 2 * MINUTE,
            synack: 2 * MINUTE,
            udp: 5 * MINUTE,
            icmp: MINUTE,
        }
    }
}

impl Timeouts {
    /// The timeout of a TCP connection in `state`.
    pub fn tcp(&self, state: TcpState) -> u64 {
        match state {
            TcpState::None => self.none,
            TcpState::Established => self.established,
            TcpState::SynSent => self.syn_sent,
            TcpState::SynRecv => self.syn_recv,
            TcpState::FinWait => self.fin_wait,
            TcpState::TimeWait => self.time_wait,
            TcpState::Close => self.close,
            TcpState::CloseWait => self.close_wait,
            TcpState::LastAck => self.last_ack,
            TcpState::Listen => self.listen,
            TcpState::SynAck => self.synack,
        }
    }

    /// The timeout of a connection of `protocol` in `state` (the state matters for TCP only).
    pub fn for_protocol(&self, protocol: u8, state: TcpState) -> u64 {
        match protocol {
            ip_protocol::TCP => self.tcp(state),
            ip_protocol::ICMP | ip_protocol::ICMPV6 => self.icmp,
            _ => self.udp,
        }
    }
}

/// An address and port (for ICMP echo the port is the echo identifier, as in [`FlowKey`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
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
    /// Packets seen client to backend, saturating.
    pub packets_in: u32,
    /// Packets seen backend to client (NAT and FULLNAT), saturating.
    pub packets_out: u32,
    pub mode: ForwardingMode,
    /// TCP state; stays [`TcpState::None`] for other protocols.
    pub tcp_state: TcpState,
}

impl Conn {
    /// The key of the reply direction as it reaches the balancer, for the modes where replies come back through
    /// it: backend -> client (NAT), backend -> LIP:lport (FULLNAT).
    pub fn reply_key(&self) -> Option<FlowKey> {
        let destination = match self.mode {
            ForwardingMode::Nat => Endpoint {
                addr: self.client.src_addr,
                port: self.client.src_port,
            },
            ForwardingMode::FullNat => self.local?,
            ForwardingMode::Dr | ForwardingMode::Tun => return None,
        };
        Some(FlowKey {
            src_addr: self.backend_endpoint.addr,
            dst_addr: destination.addr,
            src_port: self.backend_endpoint.port,
            dst_port: destination.port,
            protocol: self.client.protocol,
        })
    }

    /// Whether IPVS would count the connection as active: TCP in ESTABLISHED, any other protocol always.
    #[inline]
    pub fn is_active(&self) -> bool {
        self.client.protocol != ip_protocol::TCP || self.tcp_state.is_active()
    }

    /// Whether the connection may be evicted to make room: anything but an established TCP flow.
    #[inline]
    pub fn is_evictable(&self) -> bool {
        self.client.protocol != ip_protocol::TCP || self.tcp_state != TcpState::Established
    }

    /// Whether the connection is dead at `now`.
    #[inline]
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_at <= now
    }

    fn path(&self, direction: Direction) -> TrackedPath {
        match (direction, self.mode) {
            (Direction::Reply, _) => TrackedPath::Output,
            (Direction::Original, ForwardingMode::Nat | ForwardingMode::FullNat) => {
                TrackedPath::Input
            }
            (Direction::Original, ForwardingMode::Dr | ForwardingMode::Tun) => {
                TrackedPath::InputOnly
            }
        }
    }

    const VACANT: Conn = Conn {
        client: FlowKey {
            src_addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dst_addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            src_port: 0,
            dst_port: 0,
            protocol: 0,
        },
        backend_endpoint: Endpoint {
            addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 0,
        },
        local: None,
        expires_at: 0,
        backend: BackendId(0),
        packets_in: 0,
        packets_out: 0,
        mode: ForwardingMode::Nat,
        tcp_state: TcpState::None,
    };
}

/// A connection's place in the table. Valid until the connection is removed (by expiry, eviction, an insert
/// displacing it or [`ConnTable::remove`]); use it within the handling of one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId(u32);

impl ConnId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A lookup hit: which connection, and which direction the key matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    pub id: ConnId,
    pub direction: Direction,
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

/// A table that cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum TableConfigError {
    #[error("a connection table needs a capacity of at least one")]
    ZeroCapacity,
    #[error("capacity {0} exceeds the largest supported ({max})", max = ConnTable::MAX_CAPACITY)]
    CapacityTooLarge(usize),
}

/// Why a connection was not inserted. Each is a counted drop in the data plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum InsertError {
    #[error("a live connection already has this key")]
    Exists(ConnId),
    #[error("the reply key is held by another live connection")]
    ReplyKeyInUse(ConnId),
    #[error("the reply key equals the client's key (backend and client share address and port)")]
    ReplyIsClientKey,
    #[error("table full of established connections")]
    TableFull,
    #[error("FULLNAT needs local addresses and this table has none")]
    NoLocalAddresses,
    #[error("FULLNAT local port: {0}")]
    LocalPort(#[from] PortError),
    #[error("NAT between address families: client and backend must both be IPv4 or both IPv6")]
    FamilyMismatch,
}

/// Cumulative counts of what the table removed and why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    pub inserted: u64,
    pub expired: u64,
    pub evicted: u64,
    /// Dead entries removed because a new insert needed their key.
    pub displaced: u64,
    pub removed: u64,
}

const NIL: u32 = u32::MAX;

/// Which list a slot is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ListId {
    Free,
    Evictable,
    Protected,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    conn: Conn,
    prev: u32,
    next: u32,
    list: ListId,
}

#[derive(Clone, Copy, Debug)]
struct List {
    head: u32,
    tail: u32,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
    };
}

/// The index tag of a slot and direction: slot number shifted left, direction in the low bit.
#[inline]
fn tag(slot: u32, direction: Direction) -> u32 {
    (slot << 1) | u32::from(direction == Direction::Reply)
}

#[inline]
fn tag_slot(tag: u32) -> u32 {
    tag >> 1
}

#[inline]
fn tag_direction(tag: u32) -> Direction {
    if tag & 1 == 0 {
        Direction::Original
    } else {
        Direction::Reply
    }
}

/// The key a tag stands for. A reply tag exists only for connections with a reply key.
#[inline]
fn key_of(slots: &[Slot], tag: u32) -> FlowKey {
    let conn = &slots[tag_slot(tag) as usize].conn;
    match tag_direction(tag) {
        Direction::Original => conn.client,
        Direction::Reply => conn.reply_key().unwrap_or(conn.client),
    }
}

/// One worker's connection table. See the module documentation for the layout and policies.
pub struct ConnTable {
    slots: Box<[Slot]>,
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    free: List,
    evictable: List,
    protected: List,
    len: usize,
    /// The next slot the expiry clock hand examines.
    hand: usize,
    timeouts: Timeouts,
    ports: Option<PortAllocator>,
    stats: TableStats,
}

impl std::fmt::Debug for ConnTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnTable")
            .field("len", &self.len)
            .field("capacity", &self.slots.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl ConnTable {
    /// The largest capacity: slot numbers and a direction bit share a `u32` tag.
    pub const MAX_CAPACITY: usize = (u32::MAX >> 1) as usize;

    /// A table of `capacity` connections without FULLNAT support.
    pub fn new(capacity: usize, timeouts: Timeouts) -> Result<Self, TableConfigError> {
        Self::build(capacity, timeouts, None)
    }

    /// A table of `capacity` connections that hands FULLNAT flows local ports from `ports`.
    pub fn with_local_ports(
        capacity: usize,
        timeouts: Timeouts,
        ports: PortAllocator,
    ) -> Result<Self, TableConfigError> {
        Self::build(capacity, timeouts, Some(ports))
    }

    fn build(
        capacity: usize,
        timeouts: Timeouts,
        ports: Option<PortAllocator>,
    ) -> Result<Self, TableConfigError> {
        if capacity == 0 {
            return Err(TableConfigError::ZeroCapacity);
        }
        if capacity > Self::MAX_CAPACITY {
            return Err(TableConfigError::CapacityTooLarge(capacity));
        }
        let mut slots: Box<[Slot]> = vec![
            Slot {
                conn: Conn::VACANT,
                prev: NIL,
                next: NIL,
                list: ListId::Free
            };
            capacity
        ]
        .into_boxed_slice();
        // Chain every slot into the free list, lowest first.
        for (i, slot) in slots.iter_mut().enumerate() {
            slot.prev = if i == 0 { NIL } else { i as u32 - 1 };
            slot.next = if i + 1 == capacity { NIL } else { i as u32 + 1 };
        }
        Ok(ConnTable {
            slots,
            index: HashTable::with_capacity(Self::index_capacity(capacity)),
            hasher: DefaultHashBuilder::default(),
            free: List {
                head: 0,
                tail: capacity as u32 - 1,
            },
            evictable: List::EMPTY,
            protected: List::EMPTY,
            len: 0,
            hand: 0,
            timeouts,
            ports,
            stats: TableStats::default(),
        })
    }

    /// Index capacity for `capacity` connections: twice the at most `2 × capacity` tags, so the index is never
    /// more than half full and never reallocates.
    fn index_capacity(capacity: usize) -> usize {
        capacity.saturating_mul(4)
    }

    /// Live and not yet removed connections (dead ones count until removed).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// How many tags the index can hold without reallocating (stays the same for the table's life).
    pub fn index_capacity_reserved(&self) -> usize {
        self.index.capacity()
    }

    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    pub fn stats(&self) -> TableStats {
        self.stats
    }

    /// The FULLNAT port allocator, if the table has one.
    pub fn ports(&self) -> Option<&PortAllocator> {
        self.ports.as_ref()
    }

    #[inline]
    fn hash(&self, key: &FlowKey) -> u64 {
        self.hasher.hash_one(key)
    }

    #[inline]
    fn find_tag(&self, key: &FlowKey, hash: u64) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(hash, |&tag| key_of(slots, tag) == *key)
            .copied()
    }

    /// The live connection `key` belongs to, in either direction.
    #[inline]
    pub fn lookup(&self, key: &FlowKey, now: u64) -> Option<Hit> {
        let tag = self.find_tag(key, self.hash(key))?;
        let slot = tag_slot(tag);
        if self.slots[slot as usize].conn.is_expired(now) {
            return None;
        }
        Some(Hit {
            id: ConnId(slot),
            direction: tag_direction(tag),
        })
    }

    /// The connection at `id`, if one is there (dead or alive).
    #[inline]
    pub fn get(&self, id: ConnId) -> Option<&Conn> {
        let slot = self.slots.get(id.index())?;
        (slot.list != ListId::Free).then_some(&slot.conn)
    }

    /// Accounts one packet of connection `id` travelling in `direction` with TCP `flags` (ignored for other
    /// protocols): advances the TCP state, counts the packet and pushes the expiry out by the new state's timeout.
    /// `None` when no connection is at `id`.
    #[inline]
    pub fn touch(
        &mut self,
        id: ConnId,
        direction: Direction,
        flags: u8,
        now: u64,
    ) -> Option<Transition> {
        let timeouts = self.timeouts;
        let slot = self.slots.get_mut(id.index())?;
        if slot.list == ListId::Free {
            return None;
        }
        let conn = &mut slot.conn;
        let from = conn.tcp_state;
        let was_active = conn.is_active();
        let was_evictable = conn.is_evictable();
        if conn.client.protocol == ip_protocol::TCP {
            conn.tcp_state = from.next(conn.path(direction), flags);
        }
        match direction {
            Direction::Original => conn.packets_in = conn.packets_in.saturating_add(1),
            Direction::Reply => conn.packets_out = conn.packets_out.saturating_add(1),
        }
        conn.expires_at =
            now.saturating_add(timeouts.for_protocol(conn.client.protocol, conn.tcp_state));
        let transition = Transition {
            from,
            to: conn.tcp_state,
            was_active,
            is_active: conn.is_active(),
        };
        if conn.is_evictable() != was_evictable {
            let target = if was_evictable {
                ListId::Protected
            } else {
                ListId::Evictable
            };
            self.unlink(id.0);
            self.push_back(target, id.0);
        }
        Some(transition)
    }

    /// Tracks a new connection from its first packet (`client` key, TCP `flags`) to `target`. For FULLNAT the
    /// table allocates the local port. Dead connections holding either key, and one evicted connection when the
    /// table is full, are removed first and passed to `on_removed`.
    pub fn insert(
        &mut self,
        now: u64,
        client: FlowKey,
        target: Target,
        flags: u8,
        mut on_removed: impl FnMut(&Conn),
    ) -> Result<ConnId, InsertError> {
        if target.mode == ForwardingMode::Nat && client.src_addr.is_ipv4() != target.addr.is_ipv4()
        {
            return Err(InsertError::FamilyMismatch);
        }
        let client_hash = self.hash(&client);
        if let Some(tag) = self.find_tag(&client, client_hash) {
            let slot = tag_slot(tag);
            if !self.slots[slot as usize].conn.is_expired(now) {
                return Err(InsertError::Exists(ConnId(slot)));
            }
            let dead = self.remove_slot(slot);
            self.stats.displaced += 1;
            on_removed(&dead);
        }

        let local = if target.mode == ForwardingMode::FullNat {
            let ports = self.ports.as_mut().ok_or(InsertError::NoLocalAddresses)?;
            let endpoint = ports.allocate(&target.addr)?;
            Some(Endpoint {
                addr: endpoint.addr,
                port: endpoint.port,
            })
        } else {
            None
        };
        let mut conn = Conn {
            client,
            backend_endpoint: Endpoint {
                addr: target.addr,
                port: target.port,
            },
            local,
            expires_at: 0,
            backend: target.backend,
            packets_in: 1,
            packets_out: 0,
            mode: target.mode,
            tcp_state: TcpState::None,
        };
        if client.protocol == ip_protocol::TCP {
            conn.tcp_state = TcpState::None.next(conn.path(Direction::Original), flags);
        }
        conn.expires_at =
            now.saturating_add(self.timeouts.for_protocol(client.protocol, conn.tcp_state));

        let reply = conn.reply_key().map(|key| (key, self.hash(&key)));
        if let Some((reply_key, reply_hash)) = reply {
            if reply_key == client {
                self.release_local(local);
                return Err(InsertError::ReplyIsClientKey);
            }
            if let Some(tag) = self.find_tag(&reply_key, reply_hash) {
                let slot = tag_slot(tag);
                if !self.slots[slot as usize].conn.is_expired(now) {
                    self.release_local(local);
                    return Err(InsertError::ReplyKeyInUse(ConnId(slot)));
                }
                let dead = self.remove_slot(slot);
                self.stats.displaced += 1;
                on_removed(&dead);
            }
        }

        if self.free.head == NIL {
            let victim = self.evictable.head;
            if victim == NIL {
                self.release_local(local);
                return Err(InsertError::TableFull);
            }
            let evicted = self.remove_slot(victim);
            self.stats.evicted += 1;
            on_removed(&evicted);
        }

        let slot = self.free.head;
        self.unlink(slot);
        self.slots[slot as usize].conn = conn;
        let list = if conn.is_evictable() {
            ListId::Evictable
        } else {
            ListId::Protected
        };
        self.push_back(list, slot);
        self.index_insert(client_hash, tag(slot, Direction::Original));
        if let Some((_, reply_hash)) = reply {
            self.index_insert(reply_hash, tag(slot, Direction::Reply));
        }
        self.len += 1;
        self.stats.inserted += 1;
        Ok(ConnId(slot))
    }

    /// Removes connection `id` now (for instance when its backend is removed with flushing), freeing its local
    /// port. Returns what was removed.
    pub fn remove(&mut self, id: ConnId) -> Option<Conn> {
        let slot = self.slots.get(id.index())?;
        if slot.list == ListId::Free {
            return None;
        }
        self.stats.removed += 1;
        Some(self.remove_slot(id.0))
    }

    /// Advances the expiry clock hand over at most `budget` slots, removing the dead connections it passes and
    /// handing each to `on_removed`. Returns how many were removed. A full sweep takes `capacity / budget` calls.
    pub fn expire(&mut self, now: u64, budget: usize, mut on_removed: impl FnMut(&Conn)) -> usize {
        let capacity = self.slots.len();
        let mut removed = 0;
        for _ in 0..budget.min(capacity) {
            let slot = self.hand;
            self.hand = if slot + 1 == capacity { 0 } else { slot + 1 };
            let entry = &self.slots[slot];
            if entry.list != ListId::Free && entry.conn.is_expired(now) {
                let dead = self.remove_slot(slot as u32);
                self.stats.expired += 1;
                removed += 1;
                on_removed(&dead);
            }
        }
        removed
    }

    /// Every connection in the table, dead or alive, in slot order (for the control plane; not for the hot path).
    pub fn iter(&self) -> impl Iterator<Item = (ConnId, &Conn)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.list != ListId::Free)
            .map(|(i, slot)| (ConnId(i as u32), &slot.conn))
    }

    fn release_local(&mut self, local: Option<Endpoint>) {
        if let (Some(local), Some(ports)) = (local, self.ports.as_mut()) {
            // The port came from this allocator a moment ago or with the connection, so it is allocated.
            let _ = ports.release(LocalEndpoint {
                addr: local.addr,
                port: local.port,
            });
        }
    }

    fn index_insert(&mut self, hash: u64, tag: u32) {
        let slots = &self.slots;
        let hasher = &self.hasher;
        // The rehash closure runs only if hashbrown rehashes in place after many tombstones; capacity is reserved.
        self.index
            .insert_unique(hash, tag, |&t| hasher.hash_one(key_of(slots, t)));
    }

    fn index_remove(&mut self, key: &FlowKey, tag: u32) {
        let hash = self.hash(key);
        if let Ok(entry) = self.index.find_entry(hash, |&t| t == tag) {
            entry.remove();
        }
    }

    /// Unindexes and frees `slot`, releasing its local port; returns the connection it held.
    fn remove_slot(&mut self, slot: u32) -> Conn {
        let conn = self.slots[slot as usize].conn;
        self.index_remove(&conn.client, tag(slot, Direction::Original));
        if let Some(reply_key) = conn.reply_key() {
            self.index_remove(&reply_key, tag(slot, Direction::Reply));
        }
        self.release_local(conn.local);
        self.unlink(slot);
        self.push_back(ListId::Free, slot);
        self.len -= 1;
        conn
    }

    fn list_mut(&mut self, list: ListId) -> &mut List {
        match list {
            ListId::Free => &mut self.free,
            ListId::Evictable => &mut self.evictable,
            ListId::Protected => &mut self.protected,
        }
    }

    fn unlink(&mut self, slot: u32) {
        let Slot {
            prev, next, list, ..
        } = self.slots[slot as usize];
        if prev == NIL {
            self.list_mut(list).head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NIL {
            self.list_mut(list).tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
    }

    fn push_back(&mut self, list: ListId, slot: u32) {
        let tail = self.list_mut(list).tail;
        {
            let entry = &mut self.slots[slot as usize];
            entry.prev = tail;
            entry.next = NIL;
            entry.list = list;
        }
        if tail == NIL {
            self.list_mut(list).head = slot;
        } else {
            self.slots[tail as usize].next = slot;
        }
        self.list_mut(list).tail = slot;
    }

    /// Bytes per connection slot in the slab.
    pub const SLOT_BYTES: usize = std::mem::size_of::<Slot>();

    /// Memory this table holds, in bytes: the slab plus hashbrown's buckets (one `u32` tag and one control byte
    /// each, plus one group of trailing control bytes).
    pub fn memory_bytes(&self) -> usize {
        let buckets = Self::buckets_for(self.index.capacity());
        self.slots.len() * Self::SLOT_BYTES + buckets * (std::mem::size_of::<u32>() + 1) + 16
    }

    /// hashbrown's bucket count for a usable capacity: 7/8 load for 8 buckets and more.
    fn buckets_for(usable: usize) -> usize {
        if usable < 8 {
            (usable + 1).next_power_of_two()
        } else {
            (usable / 7 * 8).next_power_of_two()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port_alloc::PortPartition;
    use std::net::Ipv6Addr;

    const SYN: u8 = tcp_flags::SYN;
    const ACK: u8 = tcp_flags::ACK;
    const FIN_ACK: u8 = tcp_flags::FIN | tcp_flags::ACK;
    const SYN_ACK: u8 = tcp_flags::SYN | tcp_flags::ACK;
    const RST: u8 = tcp_flags::RST;

    fn v4(a: u8, b: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, a, b))
    }

    fn vip() -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))
    }

    fn client_key(n: u16, protocol: u8) -> FlowKey {
        FlowKey {
            src_addr: v4(1, (n >> 8) as u8),
            dst_addr: vip(),
            src_port: 1024 + n,
            dst_port: 80,
            protocol,
        }
    }

    fn target(mode: ForwardingMode) -> Target {
        Target {
            backend: BackendId(7),
            addr: v4(9, 1),
            port: 8080,
            mode,
        }
    }

    fn fullnat_table(capacity: usize) -> ConnTable {
        let partition = PortPartition::new(10000, 10999, 1).unwrap();
        let ports = PortAllocator::new(partition, 0, &[v4(200, 1)]).unwrap();
        ConnTable::with_local_ports(capacity, Timeouts::default(), ports).unwrap()
    }

    fn ignore(_: &Conn) {}

    #[test]
    fn rejects_bad_capacity() {
        assert_eq!(
            ConnTable::new(0, Timeouts::default()).unwrap_err(),
            TableConfigError::ZeroCapacity
        );
    }

    #[test]
    fn nat_is_found_from_both_directions() {
        let mut table = ConnTable::new(8, Timeouts::default()).unwrap();
        let key = client_key(1, ip_protocol::TCP);
        let id = table
            .insert(0, key, target(ForwardingMode::Nat), SYN, ignore)
            .unwrap();
        assert_eq!(
            table.lookup(&key, 1),
            Some(Hit {
                id,
                direction: Direction::Original
            })
        );
        let reply = FlowKey {
            src_addr: v4(9, 1),
            dst_addr: key.src_addr,
            src_port: 8080,
            dst_port: key.src_port,
            protocol: 6,
        };
        assert_eq!(table.get(id).unwrap().reply_key(), Some(reply));
        assert_eq!(
            table.lookup(&reply, 1),
            Some(Hit {
                id,
                direction: Direction::Reply
            })
        );
        assert_eq!(table.lookup(&key.reversed(), 1), None);
    }

    #[test]
    fn fullnat_reply_is_keyed_by_local_endpoint() {
        let mut table = fullnat_table(8);
        let key = client_key(1, ip_protocol::TCP);
        let id = table
            .insert(0, key, target(ForwardingMode::FullNat), SYN, ignore)
            .unwrap();
        let conn = *table.get(id).unwrap();
        let local = conn.local.unwrap();
        assert_eq!(
            local,
            Endpoint {
                addr: v4(200, 1),
                port: 10000
            }
        );
        let reply = FlowKey {
            src_addr: v4(9, 1),
            dst_addr: local.addr,
            src_port: 8080,
            dst_port: local.port,
            protocol: 6,
        };
        assert_eq!(
            table.lookup(&reply, 1),
            Some(Hit {
                id,
                direction: Direction::Reply
            })
        );
        assert!(table.ports().unwrap().is_allocated(LocalEndpoint {
            addr: local.addr,
            port: local.port
        }));
    }

    #[test]
    fn dr_and_tun_have_no_reply_key() {
        let mut table = ConnTable::new(8, Timeouts::default()).unwrap();
        for (n, mode) in [(1, ForwardingMode::Dr), (2, ForwardingMode::Tun)] {
            let key = client_key(n, ip_protocol::TCP);
            let id = table.insert(0, key, target(mode), SYN, ignore).unwrap();
            assert_eq!(table.get(id).unwrap().reply_key(), None);
            assert_eq!(table.lookup(&key, 0).unwrap().id, id);
        }
        assert_eq!(table.index.len(), 2);
    }

    #[test]
    fn fullnat_without_local_addresses_is_an_error() {
        let mut table = ConnTable::new(8, Timeouts::default()).unwrap();
        let result = table.insert(
            0,
            client_key(1, 6),
            target(ForwardingMode::FullNat),
            SYN,
            ignore,
        );
        assert_eq!(result, Err(InsertError::NoLocalAddresses));
        assert!(table.is_empty());
    }

    #[test]
    fn nat_across_families_is_an_error() {
        let mut table = ConnTable::new(8, Timeouts::default()).unwrap();
        let mut six = target(ForwardingMode::Nat);
        six.addr = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(
            table.insert(0, client_key(1, 6), six, SYN, ignore),
            Err(InsertError::FamilyMismatch)
        );
    }

    #[test]
    fn duplicate_live_key_is_refused_and_dead_key_is_replaced() {
        let mut table = ConnTable::new(8, Timeouts::default()).unwrap();
        let key = client_key(1, ip_protocol::UDP);
        let id = table
            .insert(0, key, target(ForwardingMode::Nat), 0, ignore)
            .unwrap();
        assert_eq!(
            table.insert(10, key, target(ForwardingMode::Nat), 0, ignore),
            Err(InsertError::Exists(id))
        );
        let later = Timeouts::default().udp;
        let mut removed = Vec::new();
        table
            .insert(later, key, target(ForwardingMode::Nat), 0, |c| {
                removed.push(*c)
            })
            .unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(table.len(), 1);
        assert_eq!(table.stats().displaced, 1);
    }

    fn run(mode: ForwardingMode, steps: &[(Direction, u8)]) -> Vec<TcpState> {
        let mut table = ConnTable::new(4, Timeouts::default()).unwrap();
        let (first_dir, first_flags) = steps[0];
        assert_eq!(first_dir, Direction::Original);
        let id = table
            .insert(0, client_key(1, 6), target(mode), first_flags, ignore)
            .unwrap();
        let mut states = vec![table.get(id).unwrap().tcp_state];
        for &(direction, flags) in &steps[1..] {
            let transition = table.touch(id, direction, flags, 1).unwrap();
            states.push(transition.to);
        }
        states
    }

    use Direction::{Original as In, Reply as Out};

    #[test]
    fn nat_handshake_data_and_client_close() {
        let states = run(
            ForwardingMode::Nat,
            &[
                (In, SYN),
                (Out, SYN_ACK),
                (In, ACK),
                (In, ACK),
                (Out, ACK),
                (In, FIN_ACK),
                (Out, ACK),
                (Out, FIN_ACK),
                (In, ACK),
            ],
        );
        use TcpState::*;
        assert_eq!(
            states,
            vec![
                SynRecv,
                SynRecv,
                Established,
                Established,
                Established,
                CloseWait,
                CloseWait,
                TimeWait,
                TimeWait
            ]
        );
    }

    #[test]
    fn nat_server_closes_first() {
        let states = run(
            ForwardingMode::Nat,
            &[
                (In, SYN),
                (Out, SYN_ACK),
                (In, ACK),
                (Out, FIN_ACK),
                (In, ACK),
                (In, FIN_ACK),
                (Out, ACK),
            ],
        );
        use TcpState::*;
        assert_eq!(
            states,
            vec![
                SynRecv,
                SynRecv,
                Established,
                FinWait,
                FinWait,
                TimeWait,
                TimeWait
            ]
        );
    }

    #[test]
    fn dr_sees_only_the_client() {
        let states = run(
            ForwardingMode::Dr,
            &[(In, SYN), (In, ACK), (In, ACK), (In, FIN_ACK), (In, ACK)],
        );
        use TcpState::*;
        assert_eq!(
            states,
            vec![SynRecv, Established, Established, FinWait, FinWait]
        );
    }

    #[test]
    fn rst_closes_from_any_established_path() {
        use TcpState::*;
        assert_eq!(
            run(
                ForwardingMode::Nat,
                &[(In, SYN), (Out, SYN_ACK), (In, ACK), (In, RST)]
            )
            .last(),
            Some(&Close)
        );
        assert_eq!(
            run(
                ForwardingMode::Nat,
                &[(In, SYN), (Out, SYN_ACK), (In, ACK), (Out, RST)]
            )
            .last(),
            Some(&Close)
        );
        assert_eq!(
            run(ForwardingMode::Tun, &[(In, SYN), (In, ACK), (In, RST)]).last(),
            Some(&Close)
        );
        // The backend refusing the connection.
        assert_eq!(
            run(ForwardingMode::Nat, &[(In, SYN), (Out, RST | ACK)]).last(),
            Some(&Close)
        );
    }

    #[test]
    fn mid_flow_ack_without_handshake_is_close_as_in_ipvs() {
        assert_eq!(
            run(ForwardingMode::Nat, &[(In, ACK)]),
            vec![TcpState::Close]
        );
    }

    #[test]
    fn flags_without_syn_fin_ack_rst_change_nothing() {
        assert_eq!(
            TcpState::Established.next(TrackedPath::Input, 0x08),
            TcpState::Established
        );
    }

    #[test]
    fn rst_has_priority_over_syn() {
        assert_eq!(
            TcpState::Established.next(TrackedPath::Input, SYN | RST),
            TcpState::Close
        );
    }

    #[test]
    fn expiry_follows_the_state_timeout() {
        let timeouts = Timeouts::default();
        let mut table = ConnTable::new(4, timeouts).unwrap();
        let key = client_key(1, 6);
        let id = table
            .insert(1000, key, target(ForwardingMode::Nat), SYN, ignore)
            .unwrap();
        assert_eq!(table.get(id).unwrap().expires_at, 1000 + timeouts.syn_recv);
        table.touch(id, Out, SYN_ACK, 2000).unwrap();
        table.touch(id, In, ACK, 3000).unwrap();
        assert_eq!(
            table.get(id).unwrap().expires_at,
            3000 + timeouts.established
        );
        table.touch(id, In, RST, 4000).unwrap();
        assert_eq!(table.get(id).unwrap().expires_at, 4000 + timeouts.close);
        assert!(table.lookup(&key, 4000 + timeouts.close - 1).is_some());
        assert!(table.lookup(&key, 4000 + timeouts.close).is_none());

        let udp = table
            .insert(
                0,
                client_key(2, ip_protocol::UDP),
                target(ForwardingMode::Nat),
                0,
                ignore,
            )
            .unwrap();
        assert_eq!(table.get(udp).unwrap().expires_at, timeouts.udp);
        let icmp = table
            .insert(
                0,
                client_key(3, ip_protocol::ICMP),
                target(ForwardingMode::Nat),
                0,
                ignore,
            )
            .unwrap();
        assert_eq!(table.get(icmp).unwrap().expires_at, timeouts.icmp);
    }

    #[test]
    fn every_tcp_state_has_its_timeout() {
        let t = Timeouts::default();
        let expected = [
            (TcpState::None, 2_000),
            (TcpState::Established, 900_000),
            (TcpState::SynSent, 120_000),
            (TcpState::SynRecv, 60_000),
            (TcpState::FinWait, 120_000),
            (TcpState::TimeWait, 120_000),
            (TcpState::Close, 10_000),
            (TcpState::CloseWait, 60_000),
            (TcpState::LastAck, 30_000),
            (TcpState::Listen, 120_000),
            (TcpState::SynAck, 120_000),
        ];
        for (state, ms) in expected {
            assert_eq!(t.tcp(state), ms, "{}", state.name());
        }
        assert_eq!(t.udp, 300_000);
    }

    #[test]
    fn activity_changes_are_reported() {
        let mut table = ConnTable::new(4, Timeouts::default()).unwrap();
        let id = table
            .insert(0, client_key(1, 6), target(ForwardingMode::Dr), SYN, ignore)
            .unwrap();
        assert!(!table.get(id).unwrap().is_active());
        let t = table.touch(id, In, ACK, 1).unwrap();
        assert!(!t.was_active && t.is_active);
        let t = table.touch(id, In, FIN_ACK, 2).unwrap();
        assert!(t.was_active && !t.is_active);
        let udp = table
            .insert(0, client_key(2, 17), target(ForwardingMode::Dr), 0, ignore)
            .unwrap();
        assert!(table.get(udp).unwrap().is_active());
    }

    #[test]
    fn eviction_takes_half_open_and_closing_before_established() {
        let mut table = ConnTable::new(3, Timeouts::default()).unwrap();
        let established = table
            .insert(0, client_key(1, 6), target(ForwardingMode::Dr), SYN, ignore)
            .unwrap();
        table.touch(established, In, ACK, 0).unwrap();
        let half_open = table
            .insert(0, client_key(2, 6), target(ForwardingMode::Dr), SYN, ignore)
            .unwrap();
        let closing = table
            .insert(0, client_key(3, 6), target(ForwardingMode::Dr), SYN, ignore)
            .unwrap();
        table.touch(closing, In, ACK, 0).unwrap();
        table.touch(closing, In, FIN_ACK, 0).unwrap();

        let mut evicted = Vec::new();
        table
            .insert(1, client_key(4, 6), target(ForwardingMode::Dr), SYN, |c| {
                evicted.push(c.client)
            })
            .unwrap();
        assert_eq!(
            evicted,
            vec![client_key(2, 6)],
            "oldest sacrificable first: the half-open one"
        );
        assert!(table
            .get(half_open)
            .is_none_or(|c| c.client != client_key(2, 6)));
        table
            .insert(1, client_key(5, 6), target(ForwardingMode::Dr), SYN, |c| {
                evicted.push(c.client)
            })
            .unwrap();
        assert_eq!(evicted[1], client_key(3, 6), "then the closing one");
        assert!(
            table.lookup(&client_key(1, 6), 1).is_some(),
            "established survives"
        );
        assert_eq!(table.stats().evicted, 2);
    }

    #[test]
    fn full_of_established_refuses_inserts() {
        let mut table = ConnTable::new(2, Timeouts::default()).unwrap();
        for n in 0..2 {
            let id = table
                .insert(0, client_key(n, 6), target(ForwardingMode::Dr), SYN, ignore)
                .unwrap();
            table.touch(id, In, ACK, 0).unwrap();
        }
        assert_eq!(
            table.insert(0, client_key(9, 6), target(ForwardingMode::Dr), SYN, ignore),
            Err(InsertError::TableFull)
        );
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn full_table_with_fullnat_refusal_returns_the_port() {
        let mut table = fullnat_table(1);
        let id = table
            .insert(
                0,
                client_key(0, 6),
                target(ForwardingMode::FullNat),
                SYN,
                ignore,
            )
            .unwrap();
        table.touch(id, In, ACK, 0).unwrap();
        let before = table.ports().unwrap().available();
        let result = table.insert(
            0,
            client_key(1, 6),
            target(ForwardingMode::FullNat),
            SYN,
            ignore,
        );
        assert_eq!(result, Err(InsertError::TableFull));
        assert_eq!(table.ports().unwrap().available(), before);
    }

    #[test]
    fn port_exhaustion_is_an_error() {
        let partition = PortPartition::new(10000, 10001, 1).unwrap();
        let ports = PortAllocator::new(partition, 0, &[v4(200, 1)]).unwrap();
        let mut table = ConnTable::with_local_ports(8, Timeouts::default(), ports).unwrap();
        for n in 0..2 {
            table
                .insert(
                    0,
                    client_key(n, 17),
                    target(ForwardingMode::FullNat),
                    0,
                    ignore,
                )
                .unwrap();
        }
        let result = table.insert(
            0,
            client_key(2, 17),
            target(ForwardingMode::FullNat),
            0,
            ignore,
        );
        assert_eq!(result, Err(InsertError::LocalPort(PortError::Exhausted)));
    }

    #[test]
    fn expiry_frees_fullnat_ports_and_reports_entries() {
        let mut table = fullnat_table(16);
        let total = table.ports().unwrap().available();
        for n in 0..10 {
            table
                .insert(
                    0,
                    client_key(n, 17),
                    target(ForwardingMode::FullNat),
                    0,
                    ignore,
                )
                .unwrap();
        }
        assert_eq!(table.ports().unwrap().available(), total - 10);
        let mut reported = 0;
        let mut removed = 0;
        for _ in 0..4 {
            removed += table.expire(Timeouts::default().udp, 4, |_| reported += 1);
        }
        assert_eq!((removed, reported), (10, 10));
        assert!(table.is_empty());
        assert_eq!(table.ports().unwrap().available(), total);
        assert_eq!(table.stats().expired, 10);
    }

    #[test]
    fn expire_examines_at_most_the_budget() {
        let mut table = ConnTable::new(100, Timeouts::default()).unwrap();
        for n in 0..100 {
            table
                .insert(0, client_key(n, 17), target(ForwardingMode::Dr), 0, ignore)
                .unwrap();
        }
        let dead = Timeouts::default().udp;
        assert_eq!(table.expire(dead, 7, ignore), 7);
        assert_eq!(table.expire(dead, 0, ignore), 0);
        assert_eq!(table.expire(dead, 1000, ignore), 93);
    }

    #[test]
    fn remove_frees_slot_index_and_port() {
        let mut table = fullnat_table(4);
        let key = client_key(1, 6);
        let id = table
            .insert(0, key, target(ForwardingMode::FullNat), SYN, ignore)
            .unwrap();
        let reply = table.get(id).unwrap().reply_key().unwrap();
        let total = table.ports().unwrap().available();
        assert!(table.remove(id).is_some());
        assert!(table.remove(id).is_none());
        assert_eq!(table.lookup(&key, 0), None);
        assert_eq!(table.lookup(&reply, 0), None);
        assert_eq!(table.ports().unwrap().available(), total + 1);
        assert_eq!(table.index.len(), 0);
    }

    #[test]
    fn touch_on_a_vacant_or_foreign_id_is_none() {
        let mut table = ConnTable::new(4, Timeouts::default()).unwrap();
        assert_eq!(table.touch(ConnId(0), In, ACK, 0), None);
        assert_eq!(table.touch(ConnId(99), In, ACK, 0), None);
        assert!(table.get(ConnId(u32::MAX)).is_none());
    }
}
