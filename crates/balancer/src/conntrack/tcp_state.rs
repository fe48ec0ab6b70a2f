//! IPVS TCP connection states, their transitions per tracked path and the idle timeouts per state and protocol.
//! Pure functions of their inputs: the table stores a state as one byte and asks this module what comes next.

use packet::flow::ip_protocol;

use crate::service::ForwardingMode;

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
    SynAck as SA, SynRecv as SR, SynSent as SS, TimeWait as TW,
};

/// Next state by [path][event][current state].
/// Columns: NONE, ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT, TIME_WAIT, CLOSE, CLOSE_WAIT, LAST_ACK, LISTEN, SYNACK.
///
/// Input and Output (NAT and FULLNAT, where both directions are seen) are IPVS's `secure_tcp` table
/// (`tcp_states_dos` in ip_vs_proto_tcp.c): the client alone never makes a connection ESTABLISHED. Its SYN gives
/// SYN_RECV, the backend's SYN-ACK SYNACK, and only the backend's next segment ESTABLISHED; so two spoofed packets
/// (a SYN, then an ACK) leave a half-open entry with a short timeout that new connections may evict, rather than
/// an established one that lives 15 minutes. Input only (DR and TUN, where the backend's answers bypass us) keeps
/// IPVS's normal table: there the client's ACK is all there is to see.
const TRANSITIONS: [[[TcpState; 11]; 4]; 3] = [
    // Input.
    [
        [SR, ES, ES, SR, SR, SR, SR, SR, SR, SR, SA], // SYN
        [CL, CW, SS, TW, TW, TW, CL, CW, LA, LI, SA], // FIN
        [CL, ES, SS, SR, FW, TW, CL, CW, CL, LI, SA], // ACK
        [CL, CL, CL, SR, CL, CL, CL, CL, LA, LI, CL], // RST
    ],
    // Output.
    [
        [SS, ES, SS, SA, SS, SS, SS, SS, SS, LI, SA],
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

/// Per path, a bit for each state that an ACK leaves unchanged (bit `state as u16`), read off [`TRANSITIONS`].
const STATES_AN_ACK_KEEPS: [u16; 3] = {
    let mut keeps = [0u16; 3];
    let mut path = 0;
    while path < 3 {
        let mut state = 0;
        while state < 11 {
            if TRANSITIONS[path][FlagEvent::Ack as usize][state] as usize == state {
                keeps[path] |= 1 << state;
            }
            state += 1;
        }
        path += 1;
    }
    keeps
};

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

    /// Whether a segment with `flags` certainly leaves this state as it is on `path`: it carries no SYN, FIN or
    /// RST, and an ACK keeps this state in `path`'s table. The bulk of traffic (ACKs of established flows, and of
    /// flows picked up mid-stream, which IPVS keeps in CLOSE) is decided by one bit test, without the table.
    #[inline]
    pub fn kept_by(self, path: TrackedPath, flags: u8) -> bool {
        kept_by_ack(self as u8, STATES_AN_ACK_KEEPS[path as usize], flags)
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

    /// Both sides are done: closed in both directions (TIME_WAIT) or reset (CLOSE). Such a connection carries no
    /// more data, and a new connection that needs its keys takes them (as IPVS's `conn_reuse_mode` expires it).
    pub fn is_finished(self) -> bool {
        matches!(self, TcpState::TimeWait | TcpState::Close)
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

/// The states an ACK leaves unchanged on `path`, a bit for each (bit `state as u8`).
pub(super) const fn states_an_ack_keeps(path: TrackedPath) -> u16 {
    STATES_AN_ACK_KEEPS[path as usize]
}

/// [`TcpState::kept_by`] on a state stored as `byte` (`state as u8`), with `keeps` from [`states_an_ack_keeps`]:
/// no conversion of the byte to a state. A byte no state has is never kept.
#[inline(always)]
pub(super) fn kept_by_ack(byte: u8, keeps: u16, flags: u8) -> bool {
    flags & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) == 0
        && (u32::from(keeps) >> (byte & 31)) & 1 != 0
}

impl TcpState {
    /// Every state, by its `repr(u8)` value.
    pub(super) const ALL: [TcpState; 11] = [
        TcpState::None,
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::SynAck,
    ];

    /// The state stored as `byte` by `state as u8`; bytes the table never writes read as `None`.
    #[inline]
    pub(crate) fn from_byte(byte: u8) -> TcpState {
        Self::ALL
            .get(usize::from(byte))
            .copied()
            .unwrap_or(TcpState::None)
    }
}

impl TrackedPath {
    /// The transition table a packet travelling in `direction` of a `mode` connection goes through.
    #[inline]
    pub const fn of(mode: ForwardingMode, direction: Direction) -> TrackedPath {
        match (direction, mode) {
            (Direction::Reply, _) => TrackedPath::Output,
            (Direction::Original, ForwardingMode::Nat | ForwardingMode::FullNat) => {
                TrackedPath::Input
            }
            (Direction::Original, ForwardingMode::Dr | ForwardingMode::Tun) => {
                TrackedPath::InputOnly
            }
        }
    }
}

/// Which way a packet travels relative to the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to service: the key the connection was created with (IPVS "input").
    Original,
    /// Backend to client, seen only in NAT and FULLNAT (IPVS "output").
    Reply,
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

/// Every TCP state's timeout, indexed by the state's `repr(u8)` value (16 slots: any state's value masked to four
/// bits is in range): one load on the hot path where the match of [`Timeouts::tcp`] compiles to a jump table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TcpTimeoutTable([u64; 16]);

impl TcpTimeoutTable {
    pub(crate) fn new(timeouts: &Timeouts) -> TcpTimeoutTable {
        let mut table = [0; 16];
        for state in TcpState::ALL {
            table[state as usize] = timeouts.tcp(state);
        }
        TcpTimeoutTable(table)
    }

    #[inline(always)]
    pub(crate) fn of(&self, state: TcpState) -> u64 {
        self.of_byte(state as u8)
    }

    /// The timeout of the state stored as `byte` (`state as u8`).
    #[inline(always)]
    pub(crate) fn of_byte(&self, byte: u8) -> u64 {
        self.0[usize::from(byte) & 15]
    }
}

impl Timeouts {
    /// The timeout of a TCP connection in `state`.
    #[inline]
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
    #[inline]
    pub fn for_protocol(&self, protocol: u8, state: TcpState) -> u64 {
        match protocol {
            ip_protocol::TCP => self.tcp(state),
            ip_protocol::ICMP | ip_protocol::ICMPV6 => self.icmp,
            _ => self.udp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table by state gives every state the timeout the named fields give it.
    #[test]
    fn the_timeout_table_agrees_with_the_fields() {
        // Distinct values, so that a state reading another's slot would show.
        let distinct = Timeouts {
            none: 1,
            established: 2,
            syn_sent: 3,
            syn_recv: 4,
            fin_wait: 5,
            time_wait: 6,
            close: 7,
            close_wait: 8,
            last_ack: 9,
            listen: 10,
            synack: 11,
            udp: 12,
            icmp: 13,
        };
        let table = TcpTimeoutTable::new(&distinct);
        for state in TcpState::ALL {
            assert_eq!(table.of(state), distinct.tcp(state), "{state:?}");
        }
    }

    /// The one-bit shortcut never claims a state is kept when the table moves it, and finds every state an ACK
    /// (or a segment with no flag the table reads) keeps.
    #[test]
    fn kept_by_agrees_with_the_transition_tables() {
        for path in [
            TrackedPath::Input,
            TrackedPath::Output,
            TrackedPath::InputOnly,
        ] {
            for state in TcpState::ALL {
                for flags in 0..=u8::MAX {
                    let stays = state.next(path, flags) == state;
                    let plain = flags & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) == 0;
                    assert_eq!(
                        state.kept_by(path, flags),
                        plain && stays && state.next(path, tcp_flags::ACK) == state,
                        "{path:?} {state:?} {flags:#04x}"
                    );
                    if state.kept_by(path, flags) {
                        assert!(stays);
                    }
                }
            }
        }
    }

    /// [`super::super::ConnTable::client_hit`] keeps ESTABLISHED without a table lookup for any segment without SYN,
    /// FIN or RST: every path's table must agree.
    #[test]
    fn established_stays_on_every_segment_without_syn_fin_or_rst() {
        for path in [
            TrackedPath::Input,
            TrackedPath::Output,
            TrackedPath::InputOnly,
        ] {
            for flags in 0..=u8::MAX {
                if flags & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) == 0 {
                    assert_eq!(
                        TcpState::Established.next(path, flags),
                        TcpState::Established,
                        "{path:?} {flags:#04x}"
                    );
                }
            }
        }
    }
}
