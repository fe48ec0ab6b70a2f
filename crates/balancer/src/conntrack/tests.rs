//! Unit tests of the table's behaviour through its public API, plus collision, tiny-table and churn cases that
//! reach into the index.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use packet::flow::ip_protocol;
use packet::FlowKey;

use super::*;
use crate::port_alloc::{LocalEndpoint, PortAllocator, PortError, PortPartition};
use crate::service::{BackendId, ForwardingMode};

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
    let ports = PortAllocator::with_seed(partition, 0, &[v4(200, 1)], 7).unwrap();
    ConnTable::with_local_ports(capacity, Timeouts::default(), ports).unwrap()
}

/// The removal callback of tests that keep nothing removed: checks that what a removed connection reads from its
/// entry agrees with the connection rebuilt.
fn verify(removed: &RemovedConn<'_>) {
    let conn = removed.conn();
    assert_eq!(removed.backend(), conn.backend);
    assert_eq!(removed.is_active(), conn.is_active());
}

/// What an insert hands back (the local endpoint, the activity) is what the table reads back for the connection,
/// in every mode, for TCP and UDP, and for DR and TUN to an IPv6 backend too (held in a second entry): the caller
/// forwards the first packet from it.
#[test]
fn an_insert_reports_what_the_table_holds() {
    let mut table = fullnat_table(64);
    let mut n = 0;
    for mode in ForwardingMode::ALL {
        for protocol in [ip_protocol::TCP, ip_protocol::UDP] {
            for v6_backend in [false, true] {
                let mut target = target(mode);
                if v6_backend {
                    // NAT keeps one family end to end; this table's local addresses are IPv4.
                    if !matches!(mode, ForwardingMode::Dr | ForwardingMode::Tun) {
                        continue;
                    }
                    target.addr = "fd01::9".parse().unwrap();
                }
                n += 1;
                let client = client_key(n, protocol);
                let key = ConnKey::from_flow(&client);
                let hash = table.hash(&key);
                let inserted = table
                    .insert_keyed(0, client, &key, hash, false, target, SYN, verify)
                    .unwrap();
                let forwarding = table.forwarding(inserted.id).unwrap();
                assert_eq!(inserted.local, forwarding.local, "{mode:?} {protocol}");
                assert_eq!(
                    (
                        forwarding.backend_endpoint.addr,
                        forwarding.backend_endpoint.port
                    ),
                    (target.addr, target.port)
                );
                assert_eq!(Some(inserted.active), table.is_active(inserted.id));
                assert_eq!(inserted.active, protocol != ip_protocol::TCP);
            }
        }
    }
}

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
        .insert(0, key, target(ForwardingMode::Nat), SYN, verify)
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
        .insert(0, key, target(ForwardingMode::FullNat), SYN, verify)
        .unwrap();
    let conn = table.get(id).unwrap();
    let local = conn.local.unwrap();
    assert_eq!(local.addr, v4(200, 1));
    assert!((10000..=10999).contains(&local.port), "{local:?}");
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
fn forwarding_endpoints_are_the_targets_in_every_mode_and_family() {
    // Read inline (DR, TUN and NAT to an IPv4 backend) or from the second entry (IPv6 backends, FULLNAT): the
    // same endpoints either way, and the wire form agrees with the plain one.
    let partition = PortPartition::new(10000, 10999, 1).unwrap();
    let v6 = |n: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 9, n));
    let locals = [
        v4(200, 1),
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 200, 1)),
    ];
    let ports = PortAllocator::with_seed(partition, 0, &locals, 7).unwrap();
    let mut table = ConnTable::with_local_ports(64, Timeouts::default(), ports).unwrap();
    for (n, mode) in ForwardingMode::ALL.into_iter().enumerate() {
        for ipv6 in [false, true] {
            let n = n as u16 * 2 + u16::from(ipv6);
            let mut client = client_key(n, ip_protocol::TCP);
            let mut backend = target(mode);
            if ipv6 {
                client.src_addr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, n));
                client.dst_addr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1));
                backend.addr = v6(n);
            }
            let id = table.insert(0, client, backend, SYN, verify).unwrap();
            let forwarding = table.forwarding(id).unwrap();
            assert_eq!(
                forwarding.backend_endpoint.addr, backend.addr,
                "{mode:?} v6 {ipv6}"
            );
            assert_eq!(
                forwarding.backend_endpoint.port, backend.port,
                "{mode:?} v6 {ipv6}"
            );
            assert_eq!(forwarding.local.is_some(), mode == ForwardingMode::FullNat);
            assert_eq!(
                table.wire_endpoints(id).unwrap(),
                WireEndpoints::from(&forwarding),
                "{mode:?} v6 {ipv6}"
            );
        }
    }
}

#[test]
fn the_linked_stage_prefetches_the_other_entry_a_packet_reads() {
    let mut table = fullnat_table(8);
    let address_of = |table: &ConnTable, key: &FlowKey, linked: bool| -> Vec<usize> {
        let hash = table.hash(&ConnKey::from_flow(key));
        let seen = std::cell::RefCell::new(Vec::new());
        let record = |line: *const u8| seen.borrow_mut().push(line as usize);
        let candidates = table.prefetch_candidates_with(hash, record);
        if linked {
            seen.borrow_mut().clear();
            table.prefetch_linked_with(hash, candidates, record);
        }
        seen.into_inner()
    };
    let fullnat = client_key(1, ip_protocol::TCP);
    let id = table
        .insert(0, fullnat, target(ForwardingMode::FullNat), SYN, verify)
        .unwrap();
    let reply = table.get(id).unwrap().reply_key().unwrap();
    // A FULLNAT client's packet reads the second entry (the reply key's), a reply the primary (the client key's).
    assert_eq!(
        address_of(&table, &fullnat, true),
        address_of(&table, &reply, false)
    );
    assert_eq!(
        address_of(&table, &reply, true),
        address_of(&table, &fullnat, false)
    );
    assert_eq!(address_of(&table, &fullnat, true).len(), 1);
    // A NAT connection to an IPv4 backend and a DR one read only their primary.
    for (n, mode) in [(2, ForwardingMode::Nat), (3, ForwardingMode::Dr)] {
        let key = client_key(n, ip_protocol::TCP);
        table.insert(0, key, target(mode), SYN, verify).unwrap();
        assert_eq!(
            address_of(&table, &key, true),
            Vec::<usize>::new(),
            "{mode:?}"
        );
    }
    // A key no entry holds has nothing to prefetch.
    assert!(address_of(&table, &client_key(4, ip_protocol::TCP), true).is_empty());
}

#[test]
fn dr_and_tun_have_no_reply_key() {
    let mut table = ConnTable::new(8, Timeouts::default()).unwrap();
    for (n, mode) in [(1, ForwardingMode::Dr), (2, ForwardingMode::Tun)] {
        let key = client_key(n, ip_protocol::TCP);
        let id = table.insert(0, key, target(mode), SYN, verify).unwrap();
        assert_eq!(table.get(id).unwrap().reply_key(), None);
        assert_eq!(table.lookup(&key, 0).unwrap().id, id);
    }
    assert_eq!(table.indexed_keys(), 2);
}

#[test]
fn fullnat_without_local_addresses_is_an_error() {
    let mut table = ConnTable::new(8, Timeouts::default()).unwrap();
    let result = table.insert(
        0,
        client_key(1, 6),
        target(ForwardingMode::FullNat),
        SYN,
        verify,
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
        table.insert(0, client_key(1, 6), six, SYN, verify),
        Err(InsertError::FamilyMismatch)
    );
}

#[test]
fn duplicate_live_key_is_refused_and_dead_key_is_replaced() {
    let mut table = ConnTable::new(8, Timeouts::default()).unwrap();
    let key = client_key(1, ip_protocol::UDP);
    let id = table
        .insert(0, key, target(ForwardingMode::Nat), 0, verify)
        .unwrap();
    assert_eq!(
        table.insert(10, key, target(ForwardingMode::Nat), 0, verify),
        Err(InsertError::Exists(id))
    );
    let later = Timeouts::default().udp;
    let mut removed = Vec::new();
    table
        .insert(later, key, target(ForwardingMode::Nat), 0, |c| {
            removed.push(c.conn())
        })
        .unwrap();
    assert_eq!(removed.len(), 1);
    assert_eq!(table.len(), 1);
    assert_eq!(table.stats().displaced, 1);
}

#[test]
fn a_finished_connection_gives_its_reply_key_to_a_client_that_reused_its_port() {
    // One NAT backend behind two VIPs: a client port reused for the second VIP has the first one's reply key.
    let mut table = ConnTable::new(8, Timeouts::default()).unwrap();
    let first = client_key(1, ip_protocol::TCP);
    let second = FlowKey {
        dst_addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
        ..first
    };
    let nat = target(ForwardingMode::Nat);
    let id = table.insert(0, first, nat, SYN, verify).unwrap();
    for (direction, flags) in [(Out, SYN_ACK), (In, ACK), (Out, ACK)] {
        table.touch(id, direction, flags, 1).unwrap();
    }
    assert_eq!(
        table.insert(2, second, nat, SYN, verify),
        Err(InsertError::ReplyKeyInUse(id)),
        "an established connection keeps its reply key"
    );
    // The backend closes first and the client answers: TIME_WAIT, two minutes of it.
    for (direction, flags) in [(Out, FIN_ACK), (In, ACK), (In, FIN_ACK), (Out, ACK)] {
        table.touch(id, direction, flags, 3).unwrap();
    }
    assert_eq!(table.get(id).unwrap().tcp_state, TcpState::TimeWait);
    let mut removed = Vec::new();
    let taken = table
        .insert(4, second, nat, SYN, |c| removed.push(c.conn().client))
        .unwrap();
    assert_eq!(removed, vec![first]);
    assert_eq!(table.stats().displaced, 1);
    let reply = table.get(taken).unwrap().reply_key().unwrap();
    assert_eq!(
        table.lookup(&reply, 4),
        Some(Hit {
            id: taken,
            direction: Direction::Reply
        })
    );
    // UDP has no end to see: a live holder keeps its reply key.
    let udp = client_key(2, ip_protocol::UDP);
    let held = table.insert(5, udp, nat, 0, verify).unwrap();
    assert_eq!(
        table.insert(
            6,
            FlowKey {
                dst_addr: second.dst_addr,
                ..udp
            },
            nat,
            0,
            verify
        ),
        Err(InsertError::ReplyKeyInUse(held))
    );
}

fn run(mode: ForwardingMode, steps: &[(Direction, u8)]) -> Vec<TcpState> {
    let mut table = ConnTable::new(4, Timeouts::default()).unwrap();
    let (first_dir, first_flags) = steps[0];
    assert_eq!(first_dir, Direction::Original);
    let id = table
        .insert(0, client_key(1, 6), target(mode), first_flags, verify)
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
    // secure_tcp: ESTABLISHED only once the backend sends after its SYN-ACK.
    assert_eq!(
        states,
        vec![
            SynRecv,
            SynAck,
            SynAck,
            SynAck,
            Established,
            CloseWait,
            CloseWait,
            TimeWait,
            TimeWait
        ]
    );
}

#[test]
fn two_spoofed_packets_leave_a_half_open_entry_that_a_new_client_evicts() {
    for mode in [ForwardingMode::Nat, ForwardingMode::FullNat] {
        let mut table = fullnat_table(1);
        // A SYN and an ACK from a client that never hears the backend (a spoofed source).
        let spoofed = table
            .insert(0, client_key(0, 6), target(mode), SYN, verify)
            .unwrap();
        table.touch(spoofed, In, ACK, 1).unwrap();
        assert_eq!(table.get(spoofed).unwrap().tcp_state, TcpState::SynRecv);
        assert_eq!(
            table.get(spoofed).unwrap().expires_at,
            1 + Timeouts::default().syn_recv
        );
        // The table is full of it, yet an honest client gets in.
        table
            .insert(2, client_key(1, 6), target(mode), SYN, verify)
            .unwrap();
        assert!(table.lookup(&client_key(0, 6), 2).is_none(), "{mode:?}");
    }
}

#[test]
fn nat_server_closes_first() {
    let states = run(
        ForwardingMode::Nat,
        &[
            (In, SYN),
            (Out, SYN_ACK),
            (In, ACK),
            (Out, ACK),
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
            SynAck,
            SynAck,
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

/// `ipvsadm --set` semantics: new timeouts reach a connection at its next packet. Until then it keeps the expiry
/// its last packet gave it, neither cut short nor lengthened (IPVS sets a connection's timeout from the table
/// when a packet moves it, and arms its timer then).
#[test]
fn new_timeouts_reach_a_connection_at_its_next_packet() {
    let timeouts = Timeouts::default();
    let mut table = ConnTable::new(4, timeouts).unwrap();
    let udp_key = client_key(1, ip_protocol::UDP);
    let udp = table
        .insert(0, udp_key, target(ForwardingMode::Nat), 0, verify)
        .unwrap();
    let tcp = table
        .insert(
            0,
            client_key(2, 6),
            target(ForwardingMode::Nat),
            SYN,
            verify,
        )
        .unwrap();
    table.touch(tcp, Out, SYN_ACK, 10).unwrap();
    table.touch(tcp, In, ACK, 20).unwrap();
    table.touch(tcp, Out, ACK, 30).unwrap();
    assert_eq!(table.get(tcp).unwrap().tcp_state, TcpState::Established);
    let shorter = Timeouts {
        udp: timeouts.udp / 10,
        established: timeouts.established / 10,
        ..timeouts
    };
    table.set_timeouts(shorter);
    assert_eq!(table.get(udp).unwrap().expires_at, timeouts.udp);
    assert_eq!(
        table.get(tcp).unwrap().expires_at,
        30 + timeouts.established
    );
    // Idle past the new timeout: still alive on its old expiry.
    assert!(table.lookup(&udp_key, shorter.udp + 1).is_some());
    // Its next packet gives it the new one.
    table.touch(udp, In, 0, 5000).unwrap();
    assert_eq!(table.get(udp).unwrap().expires_at, 5000 + shorter.udp);
    table.touch(tcp, In, ACK, 5000).unwrap();
    assert_eq!(
        table.get(tcp).unwrap().expires_at,
        5000 + shorter.established
    );
}

/// `set_timeouts` reaches the worker's path too: a client packet refreshed through `client_hit` takes the new
/// timeout of its state.
#[test]
fn new_timeouts_reach_a_packet_refreshed_through_client_hit() {
    let mut table = ConnTable::new(8, Timeouts::default()).unwrap();
    let key = client_key(1, ip_protocol::TCP);
    // Picked up mid-stream: CLOSE, as IPVS keeps it.
    let id = table
        .insert(0, key, target(ForwardingMode::Dr), ACK, verify)
        .unwrap();
    assert_eq!(table.get(id).unwrap().tcp_state, TcpState::Close);
    table.set_timeouts(Timeouts {
        close: 50_000,
        ..Timeouts::default()
    });
    let client = ConnKey::from_flow(&key);
    let hit = table.client_hit(&client, table.hash(&client), None, 1000, ACK);
    assert!(matches!(hit, ClientHit::Refreshed { .. }));
    assert_eq!(table.get(id).unwrap().expires_at, 51_000);
}

#[test]
fn expiry_follows_the_state_timeout() {
    let timeouts = Timeouts::default();
    let mut table = ConnTable::new(4, timeouts).unwrap();
    let key = client_key(1, 6);
    let id = table
        .insert(1000, key, target(ForwardingMode::Nat), SYN, verify)
        .unwrap();
    assert_eq!(table.get(id).unwrap().expires_at, 1000 + timeouts.syn_recv);
    table.touch(id, Out, SYN_ACK, 2000).unwrap();
    table.touch(id, In, ACK, 2500).unwrap();
    assert_eq!(table.get(id).unwrap().expires_at, 2500 + timeouts.synack);
    table.touch(id, Out, ACK, 3000).unwrap();
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
            verify,
        )
        .unwrap();
    assert_eq!(table.get(udp).unwrap().expires_at, timeouts.udp);
    let icmp = table
        .insert(
            0,
            client_key(3, ip_protocol::ICMP),
            target(ForwardingMode::Nat),
            0,
            verify,
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
        .insert(0, client_key(1, 6), target(ForwardingMode::Dr), SYN, verify)
        .unwrap();
    assert!(!table.get(id).unwrap().is_active());
    let t = table.touch(id, In, ACK, 1).unwrap();
    assert!(!t.was_active && t.is_active);
    let t = table.touch(id, In, FIN_ACK, 2).unwrap();
    assert!(t.was_active && !t.is_active);
    let udp = table
        .insert(0, client_key(2, 17), target(ForwardingMode::Dr), 0, verify)
        .unwrap();
    assert!(table.get(udp).unwrap().is_active());
}

#[test]
fn eviction_takes_half_open_and_closing_before_established() {
    let mut table = ConnTable::new(3, Timeouts::default()).unwrap();
    let established = table
        .insert(0, client_key(1, 6), target(ForwardingMode::Dr), SYN, verify)
        .unwrap();
    table.touch(established, In, ACK, 0).unwrap();
    let half_open = table
        .insert(0, client_key(2, 6), target(ForwardingMode::Dr), SYN, verify)
        .unwrap();
    let closing = table
        .insert(0, client_key(3, 6), target(ForwardingMode::Dr), SYN, verify)
        .unwrap();
    table.touch(closing, In, ACK, 0).unwrap();
    table.touch(closing, In, FIN_ACK, 0).unwrap();

    let mut evicted = Vec::new();
    table
        .insert(1, client_key(4, 6), target(ForwardingMode::Dr), SYN, |c| {
            evicted.push(c.conn().client)
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
            evicted.push(c.conn().client)
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
            .insert(0, client_key(n, 6), target(ForwardingMode::Dr), SYN, verify)
            .unwrap();
        table.touch(id, In, ACK, 0).unwrap();
    }
    assert_eq!(
        table.insert(0, client_key(9, 6), target(ForwardingMode::Dr), SYN, verify),
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
            verify,
        )
        .unwrap();
    table.touch(id, Out, SYN_ACK, 0).unwrap();
    table.touch(id, In, ACK, 0).unwrap();
    table.touch(id, Out, ACK, 0).unwrap();
    let before = table.ports().unwrap().available();
    let result = table.insert(
        0,
        client_key(1, 6),
        target(ForwardingMode::FullNat),
        SYN,
        verify,
    );
    assert_eq!(result, Err(InsertError::TableFull));
    assert_eq!(table.ports().unwrap().available(), before);
}

#[test]
fn port_exhaustion_is_an_error() {
    let partition = PortPartition::new(10000, 10001, 1).unwrap();
    let ports = PortAllocator::with_seed(partition, 0, &[v4(200, 1)], 7).unwrap();
    let mut table = ConnTable::with_local_ports(8, Timeouts::default(), ports).unwrap();
    for n in 0..2 {
        table
            .insert(
                0,
                client_key(n, 17),
                target(ForwardingMode::FullNat),
                0,
                verify,
            )
            .unwrap();
    }
    let result = table.insert(
        0,
        client_key(2, 17),
        target(ForwardingMode::FullNat),
        0,
        verify,
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
                verify,
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
            .insert(0, client_key(n, 17), target(ForwardingMode::Dr), 0, verify)
            .unwrap();
    }
    let dead = Timeouts::default().udp;
    assert_eq!(table.expire(dead, 7, verify), 7);
    assert_eq!(table.expire(dead, 0, verify), 0);
    assert_eq!(table.expire(dead, 1000, verify), 93);
}

#[test]
fn remove_frees_slot_index_and_port() {
    let mut table = fullnat_table(4);
    let key = client_key(1, 6);
    let id = table
        .insert(0, key, target(ForwardingMode::FullNat), SYN, verify)
        .unwrap();
    let reply = table.get(id).unwrap().reply_key().unwrap();
    let total = table.ports().unwrap().available();
    assert!(table.remove(id).is_some());
    assert!(table.remove(id).is_none());
    assert_eq!(table.lookup(&key, 0), None);
    assert_eq!(table.lookup(&reply, 0), None);
    assert_eq!(table.ports().unwrap().available(), total + 1);
    assert_eq!(table.indexed_keys(), 0);
}

#[test]
fn touch_on_a_vacant_or_foreign_id_is_none() {
    let mut table = ConnTable::new(4, Timeouts::default()).unwrap();
    assert_eq!(table.touch(ConnId(0), In, ACK, 0), None);
    assert_eq!(table.touch(ConnId(99), In, ACK, 0), None);
    assert!(table.get(ConnId(u32::MAX)).is_none());
}

/// A distinct UDP client key per `n`, spread over addresses and ports.
fn spread_key(n: u32) -> FlowKey {
    FlowKey {
        src_addr: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (n >> 12))),
        dst_addr: vip(),
        src_port: 1024 + (n & 0xfff) as u16,
        dst_port: 53,
        protocol: ip_protocol::UDP,
    }
}

fn nat_target() -> Target {
    target(ForwardingMode::Nat)
}

/// Every key of every connection in `table`, with the hit it must give.
fn expected_hits(table: &ConnTable) -> Vec<(FlowKey, Hit)> {
    let mut out = Vec::new();
    for (id, conn) in table.iter() {
        out.push((
            conn.client,
            Hit {
                id,
                direction: Direction::Original,
            },
        ));
        if let Some(reply) = conn.reply_key() {
            out.push((
                reply,
                Hit {
                    id,
                    direction: Direction::Reply,
                },
            ));
        }
    }
    out
}

fn assert_burst_agrees(table: &ConnTable, probes: &[FlowKey], now: u64) {
    let keys: Vec<ConnKey> = probes.iter().map(ConnKey::from).collect();
    let hashes: Vec<u32> = keys.iter().map(|k| table.hash(k)).collect();
    let mut out = vec![None; keys.len()];
    table.lookup_burst(&keys, &hashes, now, &mut out);
    for (probe, burst) in probes.iter().zip(out) {
        assert_eq!(burst, table.lookup(probe, now), "{probe:?}");
    }
}

#[test]
fn colliding_buckets_and_signatures_overflow_and_unwind() {
    // Every key in one bucket with one signature; then one bucket, many signatures; then many buckets, one
    // signature.
    for mask in [0, 0x0000_ffff, 0xffff_0000] {
        let mut table = ConnTable::new(64, Timeouts::default()).unwrap();
        table.set_hash_mask(mask);
        for n in 0..64 {
            table
                .insert(0, spread_key(n), nat_target(), 0, verify)
                .unwrap();
        }
        assert_eq!(table.indexed_keys(), 128);
        let hits = expected_hits(&table);
        assert_eq!(hits.len(), 128);
        for (key, hit) in &hits {
            assert_eq!(table.lookup(key, 1), Some(*hit), "mask {mask:#x}");
        }
        let probes: Vec<FlowKey> = hits
            .iter()
            .map(|(k, _)| *k)
            .chain((1000..1040).map(spread_key))
            .collect();
        assert_burst_agrees(&table, &probes, 1);
        // Remove every other connection; the rest stay found, the removed ones are gone.
        for n in (0..64).step_by(2) {
            let id = table.lookup(&spread_key(n), 1).unwrap().id;
            table.remove(id).unwrap();
        }
        for n in 0..64 {
            assert_eq!(table.lookup(&spread_key(n), 1).is_some(), n % 2 == 1);
        }
        assert_burst_agrees(&table, &probes, 1);
        for n in (1..64).step_by(2) {
            let id = table.lookup(&spread_key(n), 1).unwrap().id;
            table.remove(id).unwrap();
        }
        assert_eq!(table.indexed_keys(), 0);
        assert!(table.is_empty());
    }
}

#[test]
fn capacity_one_holds_one_connection_of_any_mode() {
    let mut table = fullnat_table(1);
    assert_eq!(table.index_capacity_reserved(), 8);
    for (round, mode) in [
        ForwardingMode::Nat,
        ForwardingMode::FullNat,
        ForwardingMode::Dr,
        ForwardingMode::Tun,
    ]
    .into_iter()
    .enumerate()
    {
        let key = client_key(round as u16, ip_protocol::UDP);
        let mut evicted = Vec::new();
        let id = table
            .insert(0, key, target(mode), 0, |c| evicted.push(c.conn().client))
            .unwrap();
        assert_eq!(evicted.len(), usize::from(round > 0), "{mode:?}");
        assert_eq!(table.len(), 1);
        let conn = table.get(id).unwrap();
        assert_eq!(conn.mode, mode);
        assert_eq!(conn.backend_endpoint.addr, v4(9, 1));
        assert_eq!(conn.backend_endpoint.port, 8080);
        if let Some(reply) = conn.reply_key() {
            assert_eq!(table.lookup(&reply, 0).unwrap().direction, Direction::Reply);
        }
        assert_eq!(
            table.indexed_keys(),
            1 + usize::from(conn.reply_key().is_some())
        );
    }
    let id = table
        .lookup(&client_key(3, ip_protocol::UDP), 0)
        .unwrap()
        .id;
    table.remove(id).unwrap();
    let established = table
        .insert(
            0,
            client_key(9, 6),
            target(ForwardingMode::Nat),
            SYN,
            verify,
        )
        .unwrap();
    table.touch(established, Out, SYN_ACK, 0).unwrap();
    table.touch(established, In, ACK, 0).unwrap();
    table.touch(established, Out, ACK, 0).unwrap();
    assert_eq!(
        table.insert(
            0,
            client_key(10, 6),
            target(ForwardingMode::Dr),
            SYN,
            verify
        ),
        Err(InsertError::TableFull)
    );
}

#[test]
fn tiny_tables_fill_empty_and_refill() {
    for capacity in 1..=9usize {
        let mut table = ConnTable::new(capacity, Timeouts::default()).unwrap();
        for round in 0..3u32 {
            for n in 0..capacity as u32 {
                let mode = [ForwardingMode::Nat, ForwardingMode::Dr][(n % 2) as usize];
                table
                    .insert(0, spread_key(round * 100 + n), target(mode), 0, verify)
                    .unwrap();
            }
            assert_eq!(table.len(), capacity);
            for (key, hit) in expected_hits(&table) {
                assert_eq!(table.lookup(&key, 1), Some(hit));
            }
            // One more evicts the oldest.
            let mut evicted = Vec::new();
            table
                .insert(0, spread_key(round * 100 + 99), nat_target(), 0, |c| {
                    evicted.push(c.conn().client)
                })
                .unwrap();
            assert_eq!(evicted, vec![spread_key(round * 100)]);
            let removed = table.expire(Timeouts::default().udp, capacity, verify);
            assert_eq!(removed, capacity);
            assert!(table.is_empty());
            assert_eq!(table.indexed_keys(), 0);
        }
    }
}

#[test]
fn churn_of_ten_times_capacity_keeps_lookups_exact() {
    const CAPACITY: usize = 512;
    let timeouts = Timeouts {
        udp: 100,
        ..Timeouts::default()
    };
    let mut table = ConnTable::new(CAPACITY, timeouts).unwrap();
    let mut live = std::collections::VecDeque::new();
    let mut gone = Vec::new();
    for n in 0..(10 * CAPACITY) as u32 {
        let now = u64::from(n) / 8;
        let mode = [ForwardingMode::Nat, ForwardingMode::Dr, ForwardingMode::Tun][n as usize % 3];
        let mut removed = Vec::new();
        table
            .insert(now, spread_key(n), target(mode), 0, |c| {
                removed.push(c.conn().client)
            })
            .unwrap();
        table.expire(now, 4, |c| removed.push(c.conn().client));
        // Removing some by hand as well.
        if n % 7 == 0 {
            let id = table.lookup(&spread_key(n), now).unwrap().id;
            removed.push(table.remove(id).unwrap().client);
        }
        live.push_back(spread_key(n));
        for key in removed {
            live.retain(|k| *k != key);
            gone.push(key);
        }
        if n % 97 == 0 {
            for key in &live {
                let alive = table.get(table.lookup(key, 0).unwrap().id).unwrap();
                assert_eq!(alive.client, *key);
            }
            for key in gone.iter().rev().take(64) {
                assert_eq!(table.lookup(key, 0), None);
            }
            let probes: Vec<FlowKey> = live
                .iter()
                .chain(gone.iter().rev().take(64))
                .copied()
                .collect();
            assert_burst_agrees(&table, &probes, now);
        }
    }
    let expected_keys: usize = table
        .iter()
        .map(|(_, c)| 1 + usize::from(c.reply_key().is_some()))
        .sum();
    assert_eq!(table.indexed_keys(), expected_keys);
    assert_eq!(table.len(), live.len());
}

#[test]
fn dead_connections_are_invisible_to_every_lookup() {
    let mut table = ConnTable::new(8, Timeouts::default()).unwrap();
    let key = client_key(1, ip_protocol::UDP);
    let id = table.insert(0, key, nat_target(), 0, verify).unwrap();
    let reply = table.get(id).unwrap().reply_key().unwrap();
    let dead = Timeouts::default().udp;
    for probe in [key, reply] {
        assert!(table.lookup(&probe, dead - 1).is_some());
        assert_eq!(table.lookup(&probe, dead), None);
    }
    assert_burst_agrees(&table, &[key, reply], dead);
    // A touch keeps both directions alive together.
    table.touch(id, Out, 0, 100).unwrap();
    assert!(table.lookup(&key, dead).is_some());
    assert!(table.lookup(&reply, dead).is_some());
}

/// The expiry lives in the primary entry only: a client packet refreshed through the worker's path keeps the reply
/// direction alive with it, and a reply key is missed once the connection is dead.
#[test]
fn a_client_packet_keeps_the_reply_direction_alive() {
    let mut table = ConnTable::new(8, Timeouts::default()).unwrap();
    let key = client_key(1, ip_protocol::UDP);
    let id = table.insert(0, key, nat_target(), 0, verify).unwrap();
    let reply = table.get(id).unwrap().reply_key().unwrap();
    let udp = Timeouts::default().udp;
    let client = ConnKey::from_flow(&key);
    let refreshed = table.client_hit(&client, table.hash(&client), None, udp - 1, 0);
    assert!(matches!(refreshed, ClientHit::Refreshed { .. }));
    let direction = |table: &ConnTable, now| table.lookup(&reply, now).map(|hit| hit.direction);
    assert_eq!(direction(&table, udp), Some(Direction::Reply));
    assert_eq!(direction(&table, 2 * udp - 1), None);
    let reply_key = ConnKey::from_flow(&reply);
    let hash = table.hash(&reply_key);
    assert!(matches!(
        table.client_hit(&reply_key, hash, None, udp, 0),
        ClientHit::Reply(_)
    ));
    assert!(matches!(
        table.client_hit(&reply_key, hash, None, 2 * udp - 1, 0),
        ClientHit::Missed
    ));
}

#[test]
fn ipv6_backends_of_dr_and_tun_take_a_second_entry() {
    let mut table = ConnTable::new(4, Timeouts::default()).unwrap();
    let backend = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9));
    for (n, mode) in [(1, ForwardingMode::Dr), (2, ForwardingMode::Tun)] {
        let client = FlowKey {
            src_addr: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, n)),
            dst_addr: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1)),
            src_port: 4000,
            dst_port: 443,
            protocol: ip_protocol::TCP,
        };
        let target = Target {
            backend: BackendId(3),
            addr: backend,
            port: 443,
            mode,
        };
        let id = table.insert(0, client, target, SYN, verify).unwrap();
        let conn = table.get(id).unwrap();
        assert_eq!(conn.client, client);
        assert_eq!(
            conn.backend_endpoint,
            Endpoint {
                addr: backend,
                port: 443
            }
        );
        assert_eq!(conn.reply_key(), None);
    }
    // The address entries are not indexed: only the two client keys are.
    assert_eq!(table.indexed_keys(), 2);
}

#[test]
fn a_table_without_two_entry_room_takes_ipv4_dr_only() {
    let mut table = ConnTable::with_two_entry_limit(4, 0, Timeouts::default(), None).unwrap();
    assert_eq!(table.two_entry_capacity(), 0);
    for n in 0..4 {
        table
            .insert(
                0,
                client_key(n, ip_protocol::UDP),
                target(ForwardingMode::Dr),
                0,
                verify,
            )
            .unwrap();
    }
    assert_eq!(
        table.insert(0, client_key(9, ip_protocol::UDP), nat_target(), 0, verify),
        Err(InsertError::TableFull)
    );
    // 64-byte entries, 16 bytes of half-full index, 8 bytes of list links and a bit of occupancy per connection.
    let big = ConnTable::with_two_entry_limit(1 << 16, 0, Timeouts::default(), None).unwrap();
    let per_connection = big.memory_bytes() as f64 / (1 << 16) as f64;
    assert!(per_connection <= 88.2, "{per_connection}");
    let default = ConnTable::new(1 << 16, Timeouts::default()).unwrap();
    let per_connection = default.memory_bytes() as f64 / (1 << 16) as f64;
    assert!(per_connection <= 168.2, "{per_connection}");
}

#[test]
fn secondary_shortage_evicts_a_connection_holding_one() {
    let mut table = ConnTable::with_two_entry_limit(4, 1, Timeouts::default(), None).unwrap();
    table
        .insert(
            0,
            client_key(1, ip_protocol::UDP),
            target(ForwardingMode::Dr),
            0,
            verify,
        )
        .unwrap();
    table
        .insert(0, client_key(2, ip_protocol::UDP), nat_target(), 0, verify)
        .unwrap();
    let mut evicted = Vec::new();
    table
        .insert(0, client_key(3, ip_protocol::UDP), nat_target(), 0, |c| {
            evicted.push(c.conn().client)
        })
        .unwrap();
    assert_eq!(evicted, vec![client_key(2, ip_protocol::UDP)]);
    assert!(table.lookup(&client_key(1, ip_protocol::UDP), 0).is_some());
    assert_eq!(table.stats().evicted, 1);

    // Full as well: the one eviction for the second entry frees a primary too, so the older DR flow stays.
    for n in [4, 5] {
        table
            .insert(
                0,
                client_key(n, ip_protocol::UDP),
                target(ForwardingMode::Dr),
                0,
                verify,
            )
            .unwrap();
    }
    assert_eq!(table.len(), 4);
    evicted.clear();
    table
        .insert(0, client_key(6, ip_protocol::UDP), nat_target(), 0, |c| {
            evicted.push(c.conn().client)
        })
        .unwrap();
    assert_eq!(evicted, vec![client_key(3, ip_protocol::UDP)]);
    assert_eq!(table.len(), 4);
    assert!(table.lookup(&client_key(1, ip_protocol::UDP), 0).is_some());
}

#[test]
fn an_idle_sweep_skips_free_entries_and_finds_the_one_left() {
    let mut table = ConnTable::new(1 << 12, Timeouts::default()).unwrap();
    assert_eq!(table.expire(u64::MAX, 1 << 12, verify), 0);
    // One connection near the end: the hand reaches it through free words without stopping.
    let mut id = None;
    for n in 0..(1 << 12) {
        let got = table
            .insert(
                0,
                client_key(n, ip_protocol::UDP),
                target(ForwardingMode::Dr),
                0,
                verify,
            )
            .unwrap();
        if n < (1 << 12) - 1 {
            continue;
        }
        id = Some(got);
    }
    for n in 0..(1 << 12) - 1 {
        let hit = table.lookup(&client_key(n, ip_protocol::UDP), 0).unwrap();
        table.remove(hit.id).unwrap();
    }
    assert_eq!(table.len(), 1);
    assert_eq!(table.expire(Timeouts::default().udp, 1 << 12, verify), 1);
    assert!(table.get(id.unwrap()).is_none());
}

mod colliding {
    //! The same random history on a table whose hashes are narrowed to a few bits (long overflow chains that
    //! wrap around the index) and on a normal one: every answer must be the same.

    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Insert {
            key: u32,
            mode: usize,
        },
        Touch {
            key: u32,
            flags: u8,
        },
        /// A client's packet: looked up and accounted by `lookup` and `touch` on the first table, by `client_hit`
        /// (and `touch` when it says the state changes) on the second.
        ClientPacket {
            key: u32,
            flags: u8,
        },
        /// A backend's packet on the connection of client key `key`: accounted by `touch` on the first table, by
        /// `refresh` (and `touch` when it says the state changes) on the second.
        ReplyPacket {
            key: u32,
            flags: u8,
        },
        Remove {
            key: u32,
        },
        Advance {
            ms: u64,
        },
        Expire {
            budget: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (0..80u32, 0..3usize).prop_map(|(key, mode)| Op::Insert { key, mode }),
            2 => (0..80u32, prop::sample::select(vec![0u8, 0x02, 0x10, 0x11, 0x04])).prop_map(|(key, flags)| Op::Touch { key, flags }),
            2 => (0..80u32, prop::sample::select(vec![0u8, 0x02, 0x10, 0x11, 0x04, 0x12])).prop_map(|(key, flags)| Op::ClientPacket { key, flags }),
            2 => (0..80u32, prop::sample::select(vec![0u8, 0x02, 0x10, 0x11, 0x04, 0x12])).prop_map(|(key, flags)| Op::ReplyPacket { key, flags }),
            2 => (0..80u32).prop_map(|key| Op::Remove { key }),
            1 => (0..400_000u64).prop_map(|ms| Op::Advance { ms }),
            1 => (0..16usize).prop_map(|budget| Op::Expire { budget }),
        ]
    }

    fn key(n: u32) -> FlowKey {
        let mut key = spread_key(n);
        if n.is_multiple_of(2) {
            key.protocol = ip_protocol::TCP;
        }
        key
    }

    fn all_probes(tables: &[ConnTable; 2]) -> Vec<FlowKey> {
        let mut probes: Vec<FlowKey> = (0..80).map(key).collect();
        for table in tables {
            for (_, conn) in table.iter() {
                probes.extend(conn.reply_key());
            }
        }
        probes
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn narrowed_hashes_change_no_answer(mask in prop::sample::select(vec![0u32, 0x3, 0xff, 0xc000_0003]), ops in proptest::collection::vec(op(), 1..150)) {
            let partition = PortPartition::new(10000, 10063, 1).unwrap();
            let make = || {
                let ports = PortAllocator::with_seed(partition, 0, &[v4(200, 1)], 7).unwrap();
                ConnTable::with_local_ports(24, Timeouts::default(), ports).unwrap()
            };
            let mut tables = [make(), make()];
            tables[1].set_hash_mask(mask);
            let mut now = 0u64;
            // Candidates as a staged burst reads them ahead of its lookups: an operation before, so that an insert
            // or removal in between must be noticed.
            let read_candidates = |table: &ConnTable| -> Vec<Candidates> {
                (0..80).map(|n| table.prefetch_candidates_with(table.hash(&ConnKey::from_flow(&key(n))), |_| ())).collect()
            };
            let mut staged_before = read_candidates(&tables[1]);
            for op in ops {
                let staged_now = read_candidates(&tables[1]);
                let mut removed: [Vec<Conn>; 2] = [Vec::new(), Vec::new()];
                let mut results = Vec::new();
                for (which, (table, removed)) in tables.iter_mut().zip(removed.iter_mut()).enumerate() {
                    let result = match op {
                        Op::ClientPacket { key: n, flags } if which == 0 => {
                            let hit = table.lookup(&key(n), now);
                            if let Some(hit) = hit.filter(|hit| hit.direction == Direction::Original) {
                                table.touch(hit.id, hit.direction, flags, now);
                            }
                            format!("{:?}", hit)
                        }
                        Op::ClientPacket { key: n, flags } => {
                            let key = ConnKey::from_flow(&key(n));
                            let hash = table.hash(&key);
                            let candidates = (flags & 1 == 0).then_some(staged_before[n as usize]);
                            let hit = match table.client_hit(&key, hash, candidates, now, flags) {
                                ClientHit::Refreshed { id, .. } => Some(Hit { id, direction: Direction::Original }),
                                ClientHit::Changing { id, .. } => {
                                    table.touch(id, Direction::Original, flags, now);
                                    Some(Hit { id, direction: Direction::Original })
                                }
                                ClientHit::Reply(hit) => Some(hit),
                                ClientHit::Missed | ClientHit::Absent => None,
                            };
                            format!("{:?}", hit)
                        }
                        Op::Insert { key: n, mode } => {
                            let mode = [ForwardingMode::Nat, ForwardingMode::FullNat, ForwardingMode::Dr][mode];
                            format!("{:?}", table.insert(now, key(n), target(mode), SYN, |c| removed.push(c.conn())))
                        }
                        Op::Touch { key: n, flags } => {
                            let hit = table.lookup(&key(n), now);
                            format!("{:?}", hit.and_then(|hit| table.touch(hit.id, hit.direction, flags, now)))
                        }
                        Op::ReplyPacket { key: n, flags } => {
                            let reply = table.lookup(&key(n), now).and_then(|hit| table.get(hit.id)).and_then(|conn| conn.reply_key());
                            let hit = reply.and_then(|reply| table.lookup(&reply, now)).filter(|hit| hit.direction == Direction::Reply);
                            if let Some(hit) = hit {
                                if which == 0 || !table.refresh(hit.id, hit.direction, flags, now) {
                                    table.touch(hit.id, hit.direction, flags, now);
                                }
                            }
                            format!("{:?}", hit)
                        }
                        Op::Remove { key: n } => {
                            let hit = table.lookup(&key(n), 0);
                            format!("{:?}", hit.and_then(|hit| table.remove(hit.id)))
                        }
                        Op::Advance { ms } => {
                            format!("{ms}")
                        }
                        Op::Expire { budget } => {
                            format!("{}", table.expire(now, budget, |c| removed.push(c.conn())))
                        }
                    };
                    results.push(result);
                }
                if let Op::Advance { ms } = op {
                    now += ms;
                }
                staged_before = staged_now;
                prop_assert_eq!(&results[0], &results[1]);
                prop_assert_eq!(&removed[0], &removed[1]);
                prop_assert_eq!(tables[0].len(), tables[1].len());
                prop_assert_eq!(tables[0].indexed_keys(), tables[1].indexed_keys());
                let probes = all_probes(&tables);
                for probe in &probes {
                    for at in [0, now] {
                        let answer = tables[0].lookup(probe, at);
                        prop_assert_eq!(answer, tables[1].lookup(probe, at));
                        if let Some(hit) = answer {
                            prop_assert_eq!(tables[0].get(hit.id), tables[1].get(hit.id));
                        }
                    }
                }
                assert_burst_agrees(&tables[1], &probes, now);
            }
        }
    }
}

/// The staged lookup's second pass pays only once the entries outgrow a core's cache: 8K lines, counting both
/// entries of a two-entry connection.
#[test]
fn entries_outgrow_the_cache_at_eight_thousand_lines() {
    let mut table = ConnTable::new(16 * 1024, Timeouts::default()).unwrap();
    for n in 0..8 * 1024 - 2 {
        table
            .insert(
                0,
                client_key(n, ip_protocol::TCP),
                target(ForwardingMode::Dr),
                SYN,
                verify,
            )
            .unwrap();
    }
    assert!(!table.entries_outgrow_cache());
    // A NAT connection to an IPv6 backend holds two lines: the last two of the 8K.
    let v6_backend = Target {
        addr: "fd00::9".parse().unwrap(),
        ..target(ForwardingMode::Nat)
    };
    let key = FlowKey {
        src_addr: "fd00::1".parse().unwrap(),
        dst_addr: "fd00::100".parse().unwrap(),
        ..client_key(1, ip_protocol::TCP)
    };
    table.insert(0, key, v6_backend, SYN, verify).unwrap();
    assert_eq!(table.len(), 8 * 1024 - 1);
    assert!(table.entries_outgrow_cache());
}
