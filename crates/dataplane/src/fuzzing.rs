//! The body of the whole-worker fuzz target (crates/dataplane/fuzz, `scripts/fuzz-worker.sh`), shared with the test
//! suite's smoke run: arbitrary bytes are read as a script that drives one or two workers on in-memory ports (each
//! port on a VLAN or not, as the script says) — frames
//! on either port (built from templates for every mode, family and protocol, replies and ICMP errors about what the
//! workers sent, answers to their ARP and neighbour solicitations, fragmented datagrams in any order, raw bytes),
//! each mutated and then given correct checksums, and time steps, table updates and polls between them. Every frame
//! the workers send must parse and carry valid checksums by the independent reading in [`check_frame`] (written
//! for this purpose: it shares no code with `packet`), and nothing may panic.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use balancer::conntrack::{ConnTable, Timeouts};
use balancer::decision::{WorkerPlace, WorkerState, WorkerTables};
use balancer::exceptions::ExceptionTable;
use balancer::maglev::TableSize;
use balancer::neighbor::NeighborTable;
use balancer::persistence::PersistenceTable;
use balancer::port_alloc::{PortAllocator, PortPartition};
use balancer::scheduler::LoadTable;
use balancer::service::{Backend, BackendId, ForwardingMode, SchedulerKind, ServiceKey};
use balancer::snapshot::{
    GatewaySpec, PersistenceSpec, PortSpec, ServiceSpec, Snapshot, SnapshotSpec,
};
use crossbeam::channel::{bounded, Sender};

use crate::io::memory::{Inbox, MemoryFrame, MemoryRx, MemoryTx, Outbox};
use crate::io::Frame;
use crate::worker::{handoff_mesh, PortQueues, TableUpdates, Worker, WorkerConfig};

const PORT_MACS: [[u8; 6]; 2] = [[2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]];
const MODES: [ForwardingMode; 4] = ForwardingMode::ALL;
/// Services: every mode, both families, TCP and UDP; two backends each.
const SERVICES: usize = 16;
/// Frames the workers sent that later operations may answer.
const SEEN: usize = 32;
/// Operations a script may hold (the rest of a longer input is ignored).
const MAX_OPERATIONS: usize = 64;
/// Polls at the end of a script, so that what waits is sent or dropped.
const FINAL_POLLS: usize = 8;

/// Service `index`: its mode, whether it is IPv6, its protocol.
fn service_of(index: usize) -> (ForwardingMode, bool, u8) {
    let index = index % SERVICES;
    (
        MODES[index / 4],
        index / 2 % 2 == 1,
        if index.is_multiple_of(2) { 6 } else { 17 },
    )
}

fn vip(index: usize) -> IpAddr {
    let (mode, v6, _) = service_of(index);
    let host = 100 + MODES.iter().position(|&m| m == mode).unwrap_or(0) as u8;
    if v6 {
        IpAddr::V6([0xfd00, 0, 0, 0, 0, 0, 0, u16::from(host)].into())
    } else {
        IpAddr::V4([10, 0, 0, host].into())
    }
}

fn backend_addr(service: usize, which: usize) -> IpAddr {
    let host = 10 + service * 2 + which;
    if service_of(service).1 {
        IpAddr::V6([0xfd01, 0, 0, 0, 0, 0, 0, host as u16].into())
    } else {
        IpAddr::V4([10, 1, 0, host as u8].into())
    }
}

fn backend_port(service: usize) -> u16 {
    match service_of(service).0 {
        ForwardingMode::Nat | ForwardingMode::FullNat => 8080,
        _ => 80,
    }
}

/// The configuration: a client port (0) and a backend port (1), a gateway per family on the client side, and
/// the sixteen services. `drained` gives the second backend of every service weight 0 (the other tables a script
/// may switch to).
fn spec(drained: bool) -> SnapshotSpec {
    let services = (0..SERVICES)
        .map(|index| {
            let (mode, _, protocol) = service_of(index);
            ServiceSpec {
                key: ServiceKey {
                    vip: vip(index),
                    port: 80,
                    protocol,
                },
                mode,
                scheduler: if index % 3 == 0 {
                    SchedulerKind::Rr
                } else {
                    SchedulerKind::Mh
                },
                persistence: (index % 5 == 1).then_some(PersistenceSpec {
                    timeout_ms: 60_000,
                    prefix_v4: 24,
                    prefix_v6: 64,
                }),
                backends: (0..2)
                    .map(|which| Backend {
                        id: BackendId((index * 2 + which + 1) as u32),
                        addr: backend_addr(index, which),
                        port: backend_port(index),
                        weight: if drained && which == 1 { 0 } else { 1 },
                        // One backend with a configured MAC, one resolved by ARP or neighbour discovery.
                        mac: (which == 0).then_some([2, 0xbe, 0, 0, index as u8, 0]),
                    })
                    .collect(),
            }
        })
        .collect();
    let ip = |text: &str| text.parse::<IpAddr>().expect("a literal address");
    SnapshotSpec {
        ports: vec![
            PortSpec {
                mac: PORT_MACS[0],
                mtu: 1500,
                addresses: vec![(ip("10.0.0.1"), 24), (ip("fd00::1"), 64)],
            },
            PortSpec {
                mac: PORT_MACS[1],
                mtu: 1500,
                addresses: vec![(ip("10.1.0.1"), 24), (ip("fd01::1"), 64)],
            },
        ],
        gateways: vec![
            GatewaySpec {
                port: 0,
                addr: ip("10.0.0.254"),
                mac: Some([2, 0x9a, 0, 0, 0, 4]),
            },
            GatewaySpec {
                port: 0,
                addr: ip("fd00::fe"),
                mac: None,
            },
        ],
        tunnel_source_v4: Some(ip("10.1.0.1")),
        tunnel_source_v6: Some(ip("fd01::1")),
        local_addresses: vec![ip("10.1.0.5"), ip("fd01::5")],
        local_ports: local_ports(),
        maglev_size: TableSize::new(251).expect("a prime table size"),
        services,
        kernel_exception_path: false,
    }
}

/// FULLNAT's local ports, split between two workers (a script runs one or two): few, so that a script can use
/// them up, and quick to shuffle for every script.
fn local_ports() -> PortPartition {
    PortPartition::new(1024, 1279, 2).expect("a valid partition")
}

/// The two snapshots a script switches between, built once per process.
fn snapshots() -> &'static [Arc<Snapshot>; 2] {
    static SNAPSHOTS: OnceLock<[Arc<Snapshot>; 2]> = OnceLock::new();
    SNAPSHOTS.get_or_init(|| {
        [false, true].map(|drained| {
            Arc::new(
                Snapshot::build(&spec(drained), 1 + u64::from(drained))
                    .expect("the fuzz snapshot builds"),
            )
        })
    })
}

/// The script being read: running out of bytes reads zeros.
struct Script<'a> {
    data: &'a [u8],
    at: usize,
}

impl Script<'_> {
    fn done(&self) -> bool {
        self.at >= self.data.len()
    }

    fn byte(&mut self) -> u8 {
        let byte = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        byte
    }

    fn word(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    fn bytes(&mut self, len: usize) -> &[u8] {
        let start = self.at.min(self.data.len());
        let end = (start + len).min(self.data.len());
        self.at = start + len;
        &self.data[start..end]
    }
}

struct Rig {
    workers: Vec<Worker<MemoryRx, MemoryTx>>,
    /// Per worker, per port.
    inboxes: Vec<[Inbox; 2]>,
    outboxes: Vec<[Outbox; 2]>,
    updates: Vec<Sender<WorkerTables>>,
    now_ms: u64,
    /// What the workers sent lately, with the port it left from.
    seen: VecDeque<(usize, MemoryFrame)>,
    /// The VLANs the two ports are on.
    vlans: [Option<u16>; 2],
    /// Frames done with, reused for the next ones sent in (a fresh frame costs an allocation and a clear).
    spare: Vec<MemoryFrame>,
    sent: usize,
}

impl Rig {
    fn new(flags: u8, seed: u64) -> Rig {
        let count: u16 = if flags & 1 != 0 { 2 } else { 1 };
        let neighbors = Arc::new(NeighborTable::new(64));
        let snapshot = Arc::clone(&snapshots()[0]);
        let mut mesh = handoff_mesh(usize::from(count), 64).into_iter();
        let mut rig = Rig {
            workers: Vec::new(),
            inboxes: Vec::new(),
            outboxes: Vec::new(),
            updates: Vec::new(),
            now_ms: 1_000,
            seen: VecDeque::new(),
            spare: Vec::new(),
            // Either port may be on a VLAN, as the script's seed says.
            vlans: [
                (seed & 0x4000 != 0).then_some(10),
                (seed & 0x8000 != 0).then_some(20),
            ],
            sent: 0,
        };
        for index in 0..count {
            let local_ports = PortAllocator::with_seed(
                local_ports(),
                index,
                &[
                    "10.1.0.5".parse().expect("literal"),
                    "fd01::5".parse().expect("literal"),
                ],
                seed,
            )
            .expect("local ports");
            // A small table, so that a script can fill it.
            let conns = ConnTable::with_two_entry_limit(
                if flags & 2 != 0 { 8 } else { 128 },
                if flags & 4 != 0 { 2 } else { 128 },
                Timeouts::default(),
                Some(local_ports),
            )
            .expect("a connection table");
            let state = WorkerState {
                place: WorkerPlace {
                    index,
                    workers: count,
                    software_steering: count > 1,
                },
                conns,
                load: LoadTable::new(64),
                persistence: PersistenceTable::new(if flags & 8 != 0 { 1 } else { 64 }),
                neighbors: Arc::clone(&neighbors),
                exceptions: ExceptionTable::disabled(),
            };
            let inboxes: [Inbox; 2] = Default::default();
            let outboxes: [Outbox; 2] = Default::default();
            let ports = (0..2)
                .map(|port| PortQueues {
                    rx: MemoryRx {
                        inbox: Arc::clone(&inboxes[port]),
                    },
                    tx: MemoryTx {
                        outbox: Arc::clone(&outboxes[port]),
                        // A device that takes few frames at a time, and a pool that runs dry, on demand.
                        capacity: if flags & 16 != 0 { 3 } else { 64 },
                        pool: if flags & 32 != 0 { 4 } else { 100_000 },
                    },
                    mac: PORT_MACS[port],
                    vlan: rig.vlans[port],
                })
                .collect();
            let (publish, incoming) = bounded(4);
            let (retired, _retired) = bounded(64);
            let config = WorkerConfig {
                burst: if flags & 64 != 0 { 4 } else { 32 },
                fragment_datagrams: if flags & 128 != 0 { 2 } else { 64 },
                ..WorkerConfig::default()
            };
            rig.workers.push(Worker::new(
                state,
                WorkerTables::new(Arc::clone(&snapshot)),
                ports,
                mesh.next().expect("links for every worker"),
                TableUpdates { incoming, retired },
                config,
            ));
            rig.inboxes.push(inboxes);
            rig.outboxes.push(outboxes);
            rig.updates.push(publish);
        }
        rig
    }

    /// Sends `frame` in on `port`, tagged with the port's VLAN if it is on one (and the frame carries no tag).
    fn send(&mut self, worker: u8, port: usize, frame: &[u8]) {
        match self.vlans[port % 2] {
            Some(vlan) if frame.len() >= 14 && frame[12..14] != [0x81, 0x00] => {
                let mut tagged = frame[..12].to_vec();
                tagged.extend_from_slice(&[0x81, 0x00]);
                tagged.extend_from_slice(&vlan.to_be_bytes());
                tagged.extend_from_slice(&frame[12..]);
                self.send_as_is(worker, port, &tagged);
            }
            _ => self.send_as_is(worker, port, frame),
        }
    }

    fn send_as_is(&mut self, worker: u8, port: usize, frame: &[u8]) {
        let worker = usize::from(worker) % self.workers.len();
        let bytes = frame;
        let mut frame = self.spare.pop().unwrap_or_else(MemoryFrame::empty);
        frame.reset();
        let len = bytes.len().min(crate::io::memory::ROOM);
        if !frame.resize(len) {
            return;
        }
        frame.data_mut().copy_from_slice(&bytes[..len]);
        frame.rss_hash = Some(u32::from(worker as u8));
        self.inboxes[worker][port % 2]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push_back(frame);
    }

    fn poll(&mut self, step_ms: u64) {
        self.now_ms += step_ms;
        for worker in &mut self.workers {
            worker.poll(self.now_ms);
        }
        self.collect();
    }

    /// Checks every frame the workers sent and keeps the last few for answers.
    fn collect(&mut self) {
        for outboxes in &self.outboxes {
            for (port, outbox) in outboxes.iter().enumerate() {
                let frames = std::mem::take(
                    &mut *outbox
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                );
                for frame in frames {
                    let bytes = frame.data();
                    if let Err(fault) = check_frame(bytes, PORT_MACS[port], self.vlans[port]) {
                        let head = &bytes[..bytes.len().min(128)];
                        panic!(
                            "port {port} sent a bad frame of {} bytes: {fault}: {head:02x?}",
                            bytes.len()
                        );
                    }
                    self.sent += 1;
                    if self.seen.len() == SEEN {
                        if let Some((_, old)) = self.seen.pop_front() {
                            self.spare.push(old);
                        }
                    }
                    self.seen.push_back((port, frame));
                }
            }
        }
    }

    fn inboxes_empty(&self) -> bool {
        self.inboxes.iter().flatten().all(|inbox| {
            inbox
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_empty()
        })
    }
}

/// What a script made the workers do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Frames sent on either port, every one checked.
    pub sent: usize,
    /// Frames forwarded to a backend or a client.
    pub forwarded: u64,
    /// Drops by reason (those that happened).
    pub drops: Vec<(balancer::decision::DropReason, u64)>,
}

/// Runs the script `data`: panics if a worker does or sends a bad frame.
pub fn exercise(data: &[u8]) -> Outcome {
    let mut script = Script { data, at: 0 };
    let flags = script.byte();
    let seed = u64::from(script.word());
    let mut rig = Rig::new(flags, seed);
    let mut operations = 0;
    while !script.done() && operations < MAX_OPERATIONS {
        operations += 1;
        let op = script.byte();
        let worker = op >> 7;
        match op & 0x0f {
            0..=3 => {
                let (port, frame) = template_frame(&mut script);
                let frame = finish(&mut script, frame);
                rig.send(worker, port, &frame);
            }
            4 => {
                if let Some((port, frame)) = pick_seen(&rig, &mut script) {
                    if let Some(reply) = reply_to(&frame, &mut script) {
                        let reply = finish(&mut script, reply);
                        rig.send(worker, port, &reply);
                    }
                }
            }
            5 => {
                if let Some((port, frame)) = pick_seen(&rig, &mut script) {
                    if let Some(error) = icmp_error_about(&frame, &mut script) {
                        let error = finish(&mut script, error);
                        rig.send(worker, port, &error);
                    }
                }
            }
            6 => {
                if let Some((port, frame)) = pick_seen(&rig, &mut script) {
                    if let Some(answer) = resolution_answer(&frame, &mut script) {
                        let answer = finish(&mut script, answer);
                        rig.send(worker, port, &answer);
                    }
                }
            }
            7 => {
                let port = usize::from(script.byte() & 1);
                let len = usize::from(script.word() % 2100);
                let frame = script.bytes(len).to_vec();
                let frame = if op & 0x10 != 0 {
                    finish(&mut script, frame)
                } else {
                    frame
                };
                rig.send_as_is(worker, port, &frame);
            }
            8 => {
                let (port, frame) = template_frame(&mut script);
                let frame = normalize(frame);
                for fragment in fragments(&frame, &mut script) {
                    rig.send(worker, port, &fragment);
                }
            }
            9 => {
                let step = u64::from(script.word());
                let shift = u32::from(script.byte() % 8) * 2;
                rig.poll(step << shift);
            }
            10 => {
                let which = usize::from(script.byte() & 1);
                let tables = WorkerTables::new(Arc::clone(&snapshots()[which]));
                let to = usize::from(worker) % rig.updates.len();
                let _ = rig.updates[to].try_send(tables);
            }
            11 => {
                if let Some((port, frame)) = pick_seen(&rig, &mut script) {
                    let frame = finish(&mut script, frame);
                    rig.send(worker, port ^ usize::from(op >> 4 & 1), &frame);
                }
            }
            _ => rig.poll(u64::from(op >> 4)),
        }
    }
    for _ in 0..FINAL_POLLS {
        rig.poll(1_000);
        if rig.inboxes_empty() {
            break;
        }
    }
    rig.now_ms += 10_000;
    for worker in &mut rig.workers {
        worker.drop_waiting_frames(rig.now_ms);
    }
    rig.collect();
    let stats: Vec<_> = rig.workers.iter().map(|worker| worker.stats()).collect();
    let count = |counter: fn(&crate::worker::WorkerStats) -> u64| {
        stats.iter().map(|s| counter(s)).sum::<u64>()
    };
    Outcome {
        sent: rig.sent,
        forwarded: count(|s| s.forwarded.load(std::sync::atomic::Ordering::Relaxed)),
        drops: balancer::decision::DropReason::ALL
            .iter()
            .map(|&reason| (reason, stats.iter().map(|s| s.drops(reason)).sum()))
            .filter(|&(_, count)| count > 0)
            .collect(),
    }
}

fn pick_seen(rig: &Rig, script: &mut Script) -> Option<(usize, Vec<u8>)> {
    let index = usize::from(script.byte());
    if rig.seen.is_empty() {
        return None;
    }
    // Counted from the newest.
    let at = rig.seen.len() - 1 - index % rig.seen.len();
    rig.seen.get(at).map(|(port, frame)| {
        let bytes = frame.data();
        // Answered untagged: sending it back in tags it again.
        if bytes.len() >= 18 && bytes[12..14] == [0x81, 0x00] {
            let mut untagged = bytes[..12].to_vec();
            untagged.extend_from_slice(&bytes[16..]);
            (*port, untagged)
        } else {
            (*port, bytes.to_vec())
        }
    })
}

/// A frame from a template: client to VIP (or, on demand, a backend to a client), of a service's family and
/// protocol or another, on the port it belongs to (or the other).
fn template_frame(script: &mut Script) -> (usize, Vec<u8>) {
    let service = usize::from(script.byte());
    let shape = script.byte();
    let client_choice = script.byte();
    let source_port = 40_000 + u16::from(script.byte() % 32);
    let tcp_flags = script.byte();
    // Mostly small payloads; the top of the range reaches past the MTU.
    let payload_len = match script.byte() {
        small @ 0..=191 => usize::from(small),
        large => usize::from(large - 191) * 32,
    };
    let ttl = match script.byte() % 8 {
        0 => 0,
        1 => 1,
        2 => 2,
        3 => 255,
        _ => 64,
    };
    let (_, v6, mut protocol) = service_of(service);
    if shape & 0x40 != 0 {
        protocol = [1, 58, 6, 17][usize::from(shape >> 4 & 3)];
    }
    let client: IpAddr = match (client_choice % 8, v6) {
        (0..=3, false) => IpAddr::V4([10, 0, 0, 2 + client_choice % 4].into()),
        (0..=3, true) => {
            IpAddr::V6([0xfd00, 0, 0, 0, 0, 0, 0, 2 + u16::from(client_choice % 4)].into())
        }
        (4..=6, false) => IpAddr::V4([203, 0, 113, client_choice].into()),
        (4..=6, true) => {
            IpAddr::V6([0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(client_choice)].into())
        }
        (_, false) => {
            let octets: [u8; 4] = std::array::from_fn(|_| script.byte());
            IpAddr::V4(octets.into())
        }
        (_, true) => {
            let octets: [u8; 16] = std::array::from_fn(|_| script.byte());
            IpAddr::V6(octets.into())
        }
    };
    let from_backend = shape & 1 != 0;
    let (source, destination, sport, dport, port) = if from_backend {
        let local = shape & 2 != 0;
        let destination = match (local, v6) {
            (true, false) => "10.1.0.5".parse().expect("literal"),
            (true, true) => "fd01::5".parse().expect("literal"),
            (false, _) => client,
        };
        (
            backend_addr(service % SERVICES, usize::from(shape >> 2 & 1)),
            destination,
            backend_port(service % SERVICES),
            source_port,
            1,
        )
    } else {
        let destination = if shape & 2 != 0 {
            backend_addr(service % SERVICES, 0)
        } else {
            vip(service)
        };
        (
            client,
            destination,
            source_port,
            if shape & 4 != 0 { 81 } else { 80 },
            0,
        )
    };
    let port = port ^ usize::from(shape >> 3 & 1);
    let payload = vec![0x5a; payload_len];
    let l4 = match protocol {
        6 => tcp_segment(sport, dport, u32::from(sport) << 8, tcp_flags, &payload),
        17 => udp_datagram(sport, dport, &payload),
        _ => {
            let mut echo = vec![if v6 { 128 } else { 8 }, 0, 0, 0, 0, 1, 0, 1];
            echo.extend_from_slice(&payload);
            echo
        }
    };
    let packet = ip_packet(source, destination, protocol, ttl, &l4);
    let destination_mac = match shape >> 7 {
        0 => PORT_MACS[port],
        _ => [0xff; 6],
    };
    (
        port,
        ethernet(destination_mac, [2, 0xc1, 0, 0, 0, client_choice], &packet),
    )
}

/// What the destination of a frame the workers sent would send back: addresses and ports swapped, TCP flags from
/// the script.
fn reply_to(frame: &[u8], script: &mut Script) -> Option<Vec<u8>> {
    let flags = script.byte();
    let (mut ethertype, mut at) = (u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]), 14);
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        ethertype = u16::from_be_bytes([*frame.get(at + 2)?, *frame.get(at + 3)?]);
        at += 4;
    }
    let mut reply = frame.to_vec();
    reply.copy_within(0..6, 6);
    reply[..6].copy_from_slice(&frame[6..12]);
    let (l4_at, protocol) = match ethertype {
        0x0800 => {
            let header = usize::from(*frame.get(at)? & 0x0f) * 4;
            let packet = reply.get_mut(at..)?;
            if packet.len() < 20 {
                return None;
            }
            let (src, dst) = (packet[12..16].to_vec(), packet[16..20].to_vec());
            packet[12..16].copy_from_slice(&dst);
            packet[16..20].copy_from_slice(&src);
            (at + header, packet[9])
        }
        0x86dd => {
            let packet = reply.get_mut(at..)?;
            if packet.len() < 40 {
                return None;
            }
            let (src, dst) = (packet[8..24].to_vec(), packet[24..40].to_vec());
            packet[8..24].copy_from_slice(&dst);
            packet[24..40].copy_from_slice(&src);
            (at + 40, packet[6])
        }
        _ => return None,
    };
    let l4 = reply.get_mut(l4_at..)?;
    if matches!(protocol, 6 | 17) && l4.len() >= 4 {
        let (sport, dport) = ([l4[0], l4[1]], [l4[2], l4[3]]);
        l4[0..2].copy_from_slice(&dport);
        l4[2..4].copy_from_slice(&sport);
        if protocol == 6 && l4.len() >= 14 {
            l4[13] = flags;
        }
    }
    Some(reply)
}

/// An ICMP error quoting the IP packet of `frame`, from its destination (or an address of the script's choosing)
/// back to its source.
fn icmp_error_about(frame: &[u8], script: &mut Script) -> Option<Vec<u8>> {
    let kind = script.byte();
    let quoted_len = usize::from(script.byte()) * 4;
    let packet = frame.get(14..)?;
    let quote = &packet[..quoted_len.min(packet.len())];
    match frame[12..14] {
        [0x08, 0x00] if packet.len() >= 20 => {
            let source: [u8; 4] = if kind & 0x80 != 0 {
                std::array::from_fn(|_| script.byte())
            } else {
                packet[16..20].try_into().ok()?
            };
            let destination: [u8; 4] = packet[12..16].try_into().ok()?;
            let (icmp_type, code) =
                [(3, 4), (3, 3), (11, 0), (12, 0), (3, 1)][usize::from(kind % 5)];
            let mut icmp = vec![icmp_type, code, 0, 0, 0, 0, 0x05, 0x00];
            icmp.extend_from_slice(quote);
            let ip = ip_packet(source.into(), destination.into(), 1, 64, &icmp);
            Some(ethernet(
                frame[6..12].try_into().ok()?,
                frame[0..6].try_into().ok()?,
                &ip,
            ))
        }
        [0x86, 0xdd] if packet.len() >= 40 => {
            let source: [u8; 16] = if kind & 0x80 != 0 {
                std::array::from_fn(|_| script.byte())
            } else {
                packet[24..40].try_into().ok()?
            };
            let destination: [u8; 16] = packet[8..24].try_into().ok()?;
            let (icmp_type, code) = [(2, 0), (1, 4), (3, 0), (4, 0), (1, 3)][usize::from(kind % 5)];
            let mut icmp = vec![icmp_type, code, 0, 0, 0, 0, 0x05, 0x00];
            icmp.extend_from_slice(quote);
            let ip = ip_packet(source.into(), destination.into(), 58, 64, &icmp);
            Some(ethernet(
                frame[6..12].try_into().ok()?,
                frame[0..6].try_into().ok()?,
                &ip,
            ))
        }
        _ => None,
    }
}

/// The answer to an ARP request or neighbour solicitation the workers sent (or, for any other frame, an
/// unsolicited one claiming its destination address), with a MAC of the script's choosing.
fn resolution_answer(frame: &[u8], script: &mut Script) -> Option<Vec<u8>> {
    let mac = [2, 0xbe, 0xaa, 0, 0, script.byte()];
    let hop_limit = if script.byte() & 1 == 0 { 255 } else { 64 };
    match frame.get(12..14)? {
        [0x08, 0x06] => {
            let arp = frame.get(14..42)?;
            let mut answer = vec![0, 1, 8, 0, 6, 4, 0, 2];
            answer.extend_from_slice(&mac);
            answer.extend_from_slice(&arp[24..28]);
            answer.extend_from_slice(&arp[8..14]);
            answer.extend_from_slice(&arp[14..18]);
            let mut out = ethernet(frame[6..12].try_into().ok()?, mac, &[]);
            out[12..14].copy_from_slice(&[0x08, 0x06]);
            out.extend_from_slice(&answer);
            Some(out)
        }
        [0x08, 0x00] => {
            // An unsolicited ARP reply for the frame's destination.
            let packet = frame.get(14..34)?;
            let mut answer = vec![0, 1, 8, 0, 6, 4, 0, 2];
            answer.extend_from_slice(&mac);
            answer.extend_from_slice(&packet[16..20]);
            answer.extend_from_slice(&frame[6..12]);
            answer.extend_from_slice(&packet[12..16]);
            let mut out = ethernet(frame[6..12].try_into().ok()?, mac, &[]);
            out[12..14].copy_from_slice(&[0x08, 0x06]);
            out.extend_from_slice(&answer);
            Some(out)
        }
        [0x86, 0xdd] => {
            let packet = frame.get(14..54)?;
            // A solicitation names its target after the ICMPv6 header; anything else: its destination.
            let target: [u8; 16] = if packet[6] == 58 && frame.get(54) == Some(&135) {
                frame.get(62..78)?.try_into().ok()?
            } else {
                packet[24..40].try_into().ok()?
            };
            let mut advert = vec![136, 0, 0, 0, 0x60, 0, 0, 0];
            advert.extend_from_slice(&target);
            advert.extend_from_slice(&[2, 1]);
            advert.extend_from_slice(&mac);
            let ip = ip_packet(
                target.into(),
                <[u8; 16]>::try_from(&packet[8..24]).ok()?.into(),
                58,
                hop_limit,
                &advert,
            );
            Some(ethernet(frame[6..12].try_into().ok()?, mac, &ip))
        }
        _ => None,
    }
}

/// Applies the script's byte edits to `frame`, then makes its checksums right (unless the script asks for a bad
/// IPv4 header checksum, which the workers must then refuse).
fn finish(script: &mut Script, mut frame: Vec<u8>) -> Vec<u8> {
    let edits = script.byte();
    for _ in 0..edits % 4 {
        let at = usize::from(script.word());
        let value = script.byte();
        if !frame.is_empty() {
            let at = at % frame.len();
            frame[at] = value;
        }
    }
    match edits >> 5 {
        0 => {
            // Trim or extend the tail.
            let len = usize::from(script.byte());
            frame.resize(frame.len().saturating_sub(len), 0);
        }
        1 => frame.extend_from_slice(&[0; 7]),
        _ => {}
    }
    let mut frame = normalize(frame);
    if edits & 0x10 != 0 {
        if let Some(at) = ipv4_at(&frame) {
            frame[at + 10] ^= 0x55;
        }
    }
    frame
}

/// Where an IPv4 packet starts in `frame`, past any VLAN tags.
fn ipv4_at(frame: &[u8]) -> Option<usize> {
    let (ethertype, at) = ethertype(frame)?;
    (ethertype == 0x0800 && frame.len() >= at + 20).then_some(at)
}

fn ethertype(frame: &[u8]) -> Option<(u16, usize)> {
    let mut at = 12;
    loop {
        let ethertype = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            return Some((ethertype, at + 2));
        }
        at += 4;
    }
}

/// Splits an IP packet (in an Ethernet frame) into fragments of a size the script chooses, in an order it chooses,
/// perhaps losing one.
fn fragments(frame: &[u8], script: &mut Script) -> Vec<Vec<u8>> {
    let size = 8 * (1 + usize::from(script.byte()) % 184);
    let order = script.byte();
    let identification = script.word();
    let Some((ethertype, at)) = ethertype(frame) else {
        return vec![frame.to_vec()];
    };
    let mut out = Vec::new();
    match ethertype {
        0x0800 if frame.len() >= at + 20 => {
            let header = usize::from(frame[at] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([frame[at + 2], frame[at + 3]]));
            let Some(payload) = frame.get(at + header..at + total.max(header)) else {
                return vec![frame.to_vec()];
            };
            for (index, piece) in payload.chunks(size).enumerate() {
                let offset = index * size / 8;
                let more = (index + 1) * size < payload.len();
                let mut fragment = frame[..at + header].to_vec();
                fragment.extend_from_slice(piece);
                let length = (header + piece.len()) as u16;
                fragment[at + 2..at + 4].copy_from_slice(&length.to_be_bytes());
                fragment[at + 4..at + 6].copy_from_slice(&identification.to_be_bytes());
                let field = offset as u16 | if more { 0x2000 } else { 0 };
                fragment[at + 6..at + 8].copy_from_slice(&field.to_be_bytes());
                ipv4_header_checksum(&mut fragment[at..at + header]);
                out.push(fragment);
            }
        }
        0x86dd if frame.len() >= at + 40 => {
            let next = frame[at + 6];
            let payload = &frame[at + 40..];
            for (index, piece) in payload.chunks(size).enumerate() {
                let offset = (index * size) as u16;
                let more = (index + 1) * size < payload.len();
                let mut fragment = frame[..at + 40].to_vec();
                fragment[at + 6] = 44;
                fragment.extend_from_slice(&[next, 0]);
                fragment.extend_from_slice(&(offset | u16::from(more)).to_be_bytes());
                fragment.extend_from_slice(&u32::from(identification).to_be_bytes());
                fragment.extend_from_slice(piece);
                let length = (8 + piece.len()) as u16;
                fragment[at + 4..at + 6].copy_from_slice(&length.to_be_bytes());
                out.push(fragment);
            }
        }
        _ => return vec![frame.to_vec()],
    }
    match order % 4 {
        1 => out.reverse(),
        2 if out.len() > 1 => {
            let lost = usize::from(order >> 2) % out.len();
            out.remove(lost);
        }
        3 => {
            let turn = usize::from(order >> 2) % out.len().max(1);
            out.rotate_left(turn);
        }
        _ => {}
    }
    out
}

// ---- Building frames ----

fn ethernet(destination: [u8; 6], source: [u8; 6], packet: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + packet.len());
    frame.extend_from_slice(&destination);
    frame.extend_from_slice(&source);
    let ethertype: u16 = match packet.first().map(|b| b >> 4) {
        Some(6) => 0x86dd,
        _ => 0x0800,
    };
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(packet);
    frame
}

/// An IP packet of `source`'s family (an address of the other family is cut or widened to fit); checksums are
/// left to [`normalize`].
fn ip_packet(
    source: IpAddr,
    destination: IpAddr,
    protocol: u8,
    ttl: u8,
    payload: &[u8],
) -> Vec<u8> {
    let v6_octets = |addr: IpAddr| match addr {
        IpAddr::V6(v6) => v6.octets(),
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
    };
    match source {
        IpAddr::V4(source) => {
            let destination = match destination {
                IpAddr::V4(v4) => v4.octets(),
                IpAddr::V6(v6) => v6.octets()[12..16].try_into().unwrap_or([0; 4]),
            };
            let mut packet = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, ttl, protocol, 0, 0];
            packet[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
            packet.extend_from_slice(&source.octets());
            packet.extend_from_slice(&destination);
            packet.extend_from_slice(payload);
            packet
        }
        IpAddr::V6(source) => {
            let mut packet = vec![0x60, 0, 0, 0, 0, 0, protocol, ttl];
            packet[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
            packet.extend_from_slice(&source.octets());
            packet.extend_from_slice(&v6_octets(destination));
            packet.extend_from_slice(payload);
            packet
        }
    }
}

fn tcp_segment(source: u16, destination: u16, sequence: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut segment = Vec::with_capacity(20 + payload.len());
    segment.extend_from_slice(&source.to_be_bytes());
    segment.extend_from_slice(&destination.to_be_bytes());
    segment.extend_from_slice(&sequence.to_be_bytes());
    segment.extend_from_slice(&1u32.to_be_bytes());
    segment.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    segment.extend_from_slice(payload);
    segment
}

fn udp_datagram(source: u16, destination: u16, payload: &[u8]) -> Vec<u8> {
    let mut datagram = Vec::with_capacity(8 + payload.len());
    datagram.extend_from_slice(&source.to_be_bytes());
    datagram.extend_from_slice(&destination.to_be_bytes());
    datagram.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    datagram.extend_from_slice(&[0, 0]);
    datagram.extend_from_slice(payload);
    datagram
}

// ---- The independent reading: checksums and structure ----

/// The Internet checksum's one's-complement sum of `data` added to `sum`, not yet folded: big-endian 32-bit words
/// summed (the end-around carry makes that the same as summing 16-bit words once folded), then what is left.
fn ones_sum(mut sum: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(8);
    for word in &mut words {
        let word = u64::from_be_bytes(word.try_into().unwrap_or_default());
        sum += (word >> 32) + (word & 0xffff_ffff);
    }
    let mut pairs = words.remainder().chunks_exact(2);
    for pair in &mut pairs {
        sum += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = pairs.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Whether `data` (a header or message with its checksum field in place) sums to all ones.
fn sums_to_ones(start: u64, data: &[u8]) -> bool {
    fold(ones_sum(start, data)) == 0xffff
}

fn pseudo_header_sum(source: &[u8], destination: &[u8], protocol: u8, length: usize) -> u64 {
    let sum = ones_sum(ones_sum(0, source), destination);
    sum + u64::from(protocol) + length as u64
}

fn ipv4_header_checksum(header: &mut [u8]) {
    header[10..12].fill(0);
    let sum = !fold(ones_sum(0, header));
    header[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// Where the checksum of an L4 header of `protocol` lies, and whether the pseudo-header is summed in.
fn checksum_field(protocol: u8, v6: bool) -> Option<(usize, usize, bool)> {
    match protocol {
        6 => Some((20, 16, true)),
        17 => Some((8, 6, true)),
        1 if !v6 => Some((8, 2, false)),
        58 if v6 => Some((8, 2, true)),
        _ => None,
    }
}

/// Gives `frame` valid checksums where this reading understands it: the IPv4 header, and TCP, UDP, ICMP and
/// ICMPv6 of unfragmented packets (with the quoted IPv4 header of an ICMP error); other frames are left alone.
fn normalize(mut frame: Vec<u8>) -> Vec<u8> {
    let Some((ethertype, at)) = ethertype(&frame) else {
        return frame;
    };
    let _ = match ethertype {
        0x0800 => normalize_ipv4(&mut frame[at..]),
        0x86dd => normalize_ipv6(&mut frame[at..]),
        _ => None,
    };
    frame
}

fn normalize_ipv4(packet: &mut [u8]) -> Option<()> {
    let header = usize::from(*packet.first()? & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]));
    if header < 20 || total < header || total > packet.len() {
        return None;
    }
    ipv4_header_checksum(&mut packet[..header]);
    let fragmented = u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0;
    let protocol = packet[9];
    let (source, destination) = (
        <[u8; 4]>::try_from(&packet[12..16]).ok()?,
        <[u8; 4]>::try_from(&packet[16..20]).ok()?,
    );
    if fragmented {
        return Some(());
    }
    let l4 = &mut packet[header..total];
    if protocol == 1 && l4.len() >= 28 && matches!(l4[0], 3 | 11 | 12) {
        let quoted = usize::from(l4[8] & 0x0f) * 4;
        if quoted >= 20 && l4.len() >= 8 + quoted {
            ipv4_header_checksum(&mut l4[8..8 + quoted]);
        }
    }
    fill_l4_checksum(l4, protocol, false, &source, &destination);
    Some(())
}

fn normalize_ipv6(packet: &mut [u8]) -> Option<()> {
    let payload = usize::from(u16::from_be_bytes([*packet.get(4)?, *packet.get(5)?]));
    if packet.len() < 40 + payload {
        return None;
    }
    let (l4_at, protocol, fragmented, _) = ipv6_upper_layer(&packet[..40 + payload])?;
    if fragmented {
        return Some(());
    }
    let (source, destination) = (
        <[u8; 16]>::try_from(&packet[8..24]).ok()?,
        <[u8; 16]>::try_from(&packet[24..40]).ok()?,
    );
    fill_l4_checksum(
        &mut packet[l4_at..40 + payload],
        protocol,
        true,
        &source,
        &destination,
    );
    Some(())
}

fn fill_l4_checksum(l4: &mut [u8], protocol: u8, v6: bool, source: &[u8], destination: &[u8]) {
    let Some((min_len, field, pseudo)) = checksum_field(protocol, v6) else {
        return;
    };
    if l4.len() < min_len {
        return;
    }
    if protocol == 17 && !v6 && l4[6..8] == [0, 0] {
        // No checksum: it stays so.
        return;
    }
    let end = covered(l4, protocol);
    let l4 = &mut l4[..end];
    l4[field..field + 2].fill(0);
    let start = if pseudo {
        pseudo_header_sum(source, destination, protocol, l4.len())
    } else {
        0
    };
    let mut sum = !fold(ones_sum(start, l4));
    if protocol == 17 && sum == 0 {
        sum = 0xffff;
    }
    l4[field..field + 2].copy_from_slice(&sum.to_be_bytes());
}

/// How many bytes of `l4` a checksum covers: a UDP datagram ends where its length says (what follows inside the
/// IP packet is padding, as receivers take it), when that length is sound.
fn covered(l4: &[u8], protocol: u8) -> usize {
    let length = match l4 {
        [_, _, _, _, high, low, ..] if protocol == 17 => {
            usize::from(u16::from_be_bytes([*high, *low]))
        }
        _ => return l4.len(),
    };
    if (8..=l4.len()).contains(&length) {
        length
    } else {
        l4.len()
    }
}

/// The upper layer of an IPv6 packet past its extension headers: where it starts, its protocol, whether the
/// packet is a fragment, and whether a routing header still has segments left (its pseudo-header then names
/// another destination).
fn ipv6_upper_layer(packet: &[u8]) -> Option<(usize, u8, bool, bool)> {
    let mut next = *packet.get(6)?;
    let mut at = 40;
    let mut fragmented = false;
    let mut routed = false;
    loop {
        match next {
            0 | 43 | 60 => {
                let len = (usize::from(*packet.get(at + 1)?) + 1) * 8;
                if next == 43 && *packet.get(at + 3)? != 0 {
                    routed = true;
                }
                next = *packet.get(at)?;
                at += len;
            }
            44 => {
                let field = u16::from_be_bytes([*packet.get(at + 2)?, *packet.get(at + 3)?]);
                fragmented |= field & 0xfff9 != 0;
                next = *packet.get(at)?;
                at += 8;
            }
            _ => break,
        }
        if at > packet.len() {
            return None;
        }
    }
    Some((at, next, fragmented, routed))
}

/// Reads a frame a worker sent on the port with MAC `port_mac`: it must come from that MAC, be ARP or IP with
/// consistent lengths, a nonzero TTL or hop limit and valid checksums (IPv4 header; TCP, UDP, ICMP, ICMPv6 of
/// whole packets; the inner packet of IP-in-IP).
pub fn check_frame(frame: &[u8], port_mac: [u8; 6], vlan: Option<u16>) -> Result<(), String> {
    if frame.len() < 14 {
        return Err(format!("a runt of {} bytes", frame.len()));
    }
    let tag = (frame[12..14] == [0x81, 0x00] && frame.len() >= 18).then(|| {
        (
            u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff,
            [frame[16], frame[17]],
        )
    });
    match (vlan, tag) {
        (None, None) => {}
        (Some(vlan), Some((id, inner)))
            if id == vlan && inner != [0x81, 0x00] && inner != [0x88, 0xa8] => {}
        _ => return Err(format!("tagged {tag:?} on a port on VLAN {vlan:?}")),
    }
    if frame[6..12] != port_mac {
        return Err("a source MAC that is not the port's".into());
    }
    let (ethertype, at) = ethertype(frame).ok_or("cut in its VLAN tags")?;
    match ethertype {
        0x0806 => {
            let arp = frame.get(at..at + 28).ok_or("a short ARP packet")?;
            if arp[..6] != [0, 1, 8, 0, 6, 4] || !matches!(arp[6..8], [0, 1] | [0, 2]) {
                return Err("an ARP packet that is not Ethernet/IPv4 request or reply".into());
            }
            if arp[8..14] != port_mac {
                return Err("an ARP packet whose sender is not the port".into());
            }
            Ok(())
        }
        0x0800 | 0x86dd => check_ip(&frame[at..], 0),
        other => Err(format!("ethertype {other:#06x}")),
    }
}

/// Checks the IP packet at the start of `data` (anything after its stated length is padding).
fn check_ip(data: &[u8], depth: usize) -> Result<(), String> {
    if depth > 2 {
        return Ok(());
    }
    match data.first().map(|b| b >> 4) {
        Some(4) => {
            let header = usize::from(data[0] & 0x0f) * 4;
            if header < 20 || data.len() < header {
                return Err(format!(
                    "an IPv4 header of {header} bytes in {}",
                    data.len()
                ));
            }
            let total = usize::from(u16::from_be_bytes([data[2], data[3]]));
            if total < header || total > data.len() {
                return Err(format!(
                    "IPv4 total length {total} (header {header}, {} present)",
                    data.len()
                ));
            }
            if !sums_to_ones(0, &data[..header]) {
                return Err("a bad IPv4 header checksum".into());
            }
            if data[8] == 0 {
                return Err("TTL 0".into());
            }
            let field = u16::from_be_bytes([data[6], data[7]]);
            if field & 0x3fff != 0 {
                if field & 0x2000 != 0 && !(total - header).is_multiple_of(8) {
                    return Err(
                        "a fragment with more to come that is not a multiple of 8 bytes".into(),
                    );
                }
                return Ok(());
            }
            check_l4(
                &data[header..total],
                data[9],
                &data[12..16],
                &data[16..20],
                depth,
            )
        }
        Some(6) => {
            if data.len() < 40 {
                return Err("a short IPv6 header".into());
            }
            let total = 40 + usize::from(u16::from_be_bytes([data[4], data[5]]));
            if total > data.len() {
                return Err(format!(
                    "IPv6 payload length {} with {} present",
                    total - 40,
                    data.len() - 40
                ));
            }
            if data[7] == 0 {
                return Err("hop limit 0".into());
            }
            let packet = &data[..total];
            let (l4_at, protocol, fragmented, routed) =
                ipv6_upper_layer(packet).ok_or("cut in its extension headers")?;
            if fragmented || routed || protocol == 59 {
                return Ok(());
            }
            check_l4(
                &packet[l4_at..],
                protocol,
                &packet[8..24],
                &packet[24..40],
                depth,
            )
        }
        _ => Err("neither IPv4 nor IPv6".into()),
    }
}

fn check_l4(
    l4: &[u8],
    protocol: u8,
    source: &[u8],
    destination: &[u8],
    depth: usize,
) -> Result<(), String> {
    let v6 = source.len() == 16;
    match protocol {
        4 | 41 => return check_ip(l4, depth + 1).map_err(|fault| format!("inner packet: {fault}")),
        _ => {}
    }
    let Some((min_len, field, pseudo)) = checksum_field(protocol, v6) else {
        return Ok(());
    };
    if l4.len() < min_len {
        return Err(format!("protocol {protocol}: {} bytes", l4.len()));
    }
    match protocol {
        6 => {
            let offset = usize::from(l4[12] >> 4) * 4;
            if offset < 20 || offset > l4.len() {
                return Err(format!("TCP data offset {offset} in {}", l4.len()));
            }
        }
        17 => {
            let length = usize::from(u16::from_be_bytes([l4[4], l4[5]]));
            if !(8..=l4.len()).contains(&length) {
                return Err(format!("UDP length {length} in {}", l4.len()));
            }
            if l4[field..field + 2] == [0, 0] {
                return if v6 {
                    Err("IPv6 UDP without a checksum".into())
                } else {
                    Ok(())
                };
            }
        }
        _ => {}
    }
    let l4 = &l4[..covered(l4, protocol)];
    let start = if pseudo {
        pseudo_header_sum(source, destination, protocol, l4.len())
    } else {
        0
    };
    if !sums_to_ones(start, l4) {
        return Err(format!("a bad protocol {protocol} checksum"));
    }
    if (protocol == 1 && matches!(l4[0], 3 | 11 | 12)) || (protocol == 58 && l4[0] < 128) {
        check_quote(&l4[8..])?;
    }
    Ok(())
}

/// The packet an ICMP error quotes: its IPv4 header checksum must be valid when the whole header is there.
fn check_quote(quote: &[u8]) -> Result<(), String> {
    if quote.first().map(|b| b >> 4) == Some(4) {
        let header = usize::from(quote[0] & 0x0f) * 4;
        if header >= 20 && quote.len() >= header && !sums_to_ones(0, &quote[..header]) {
            return Err("a quoted IPv4 header with a bad checksum".into());
        }
    }
    Ok(())
}

/// Scripts that reach every mode, family and protocol: for each service a client's first frame, answers to what
/// the worker asked to resolve, the backend's reply, more data, an ICMP error about the last frame sent and a
/// fragmented datagram; then one script (on two workers) that opens a flow to every service, answers, replies and
/// sends a fragmented datagram to each, with untagged ports and with both ports on VLANs. The fuzz target starts from these, and the smoke run checks that they make
/// the workers forward.
pub fn seeds() -> Vec<Vec<u8>> {
    const FINISH_AS_IS: u8 = 0x60;
    const POLL: [u8; 4] = [9, 0, 1, 0];
    const TTL_64: u8 = 4;
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const SYN_ACK: u8 = 0x12;
    let template = |service: u8, client: u8, flags: u8, payload: u8| {
        vec![
            0,
            service,
            0,
            client,
            client,
            flags,
            payload,
            TTL_64,
            FINISH_AS_IS,
        ]
    };
    let answer = |newest: u8| [6, newest, 0x11, 0, FINISH_AS_IS];
    let reply = |newest: u8| [4, newest, SYN_ACK, FINISH_AS_IS];
    // 2,048 bytes of UDP or TCP in fragments of 808, the last first.
    let fragmented = |service: u8, client: u8| {
        [
            8, service, 0, client, client, ACK, 255, TTL_64, 100, 1, 0, 7,
        ]
    };
    let mut seeds: Vec<Vec<u8>> = (0..SERVICES as u8)
        .map(|service| {
            let client = service % 4;
            let mut script = vec![0, 0, 1];
            script.extend(template(service, client, SYN, 4));
            script.extend(POLL);
            for newest in 0..10 {
                script.extend(answer(newest));
            }
            script.extend(POLL);
            script.extend(reply(0));
            script.extend(POLL);
            script.extend(template(service, client, ACK, 16));
            script.extend(POLL);
            script.extend([5, 0, 0, 30, FINISH_AS_IS]);
            script.extend(fragmented(service, client));
            script.extend(POLL);
            script
        })
        .collect();
    let mut all = vec![0x01, 0, 2];
    for service in 0..SERVICES as u8 {
        all.extend(template(service, service % 7, SYN, 4));
    }
    all.extend(POLL);
    for newest in 0..8 {
        all.extend(answer(newest));
    }
    all.extend(POLL);
    for newest in 0..16 {
        all.extend(reply(newest));
    }
    all.extend(POLL);
    for service in 0..SERVICES as u8 {
        all.extend(fragmented(service, service % 7));
    }
    all.extend(POLL);
    // The same with the client port on VLAN 10 and the backend port on VLAN 20.
    let mut on_vlans = all.clone();
    on_vlans[1] = 0xc0;
    seeds.push(all);
    seeds.push(on_vlans);
    seeds
}
