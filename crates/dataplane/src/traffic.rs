//! A pktgen-style traffic source for benchmarks: client-to-VIP TCP or UDP frames over many flows, generated on the
//! fly into recycled frames so that what is measured is the worker, not the generator's memory.
//!
//! Frames are built independently of the `packet` crate (plain byte writes and a ones'-complement sum) so that a
//! mistake there cannot hide in a benchmark or test that uses both.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::io::memory::MemoryFrame;
use balancer::conntrack::{EdgeHooks, Timeouts};
use balancer::decision::WorkerPlace;
use balancer::maglev::TableSize;
use balancer::neighbor::NeighborTable;
use balancer::port_alloc::{PortAllocator, PortPartition};
use balancer::service::{Backend, BackendId, ForwardingMode, SchedulerKind, ServiceKey};
use balancer::snapshot::{GatewaySpec, PortSpec, ServiceSpec, Snapshot, SnapshotSpec};

use crate::build::WorkerPlan;
use crate::io::{Burst, Frame, RxQueue, TxQueue};
use crate::worker::{HandoffLinks, PortQueues, Worker, WorkerConfig};

/// What to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrafficSpec {
    /// Client addresses count up from here; each holds up to `PORTS_PER_CLIENT` flows.
    pub client_base: IpAddr,
    pub vip: IpAddr,
    pub vip_port: u16,
    /// 6 (TCP) or 17 (UDP).
    pub protocol: u8,
    /// Concurrent flows the frames cycle through.
    pub flows: u32,
    /// Ethernet frame length without FCS (60 for the 64-byte minimum, up to 1514).
    pub frame_len: usize,
    /// Every frame a SYN of a new flow (connections per second), instead of ACKs of established flows.
    pub new_connections: bool,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

/// Flows per client address before the next address is used.
pub const PORTS_PER_CLIENT: u32 = 50_000;
const FIRST_PORT: u32 = 10_000;

/// The wire form of one flow's frame.
pub struct FrameTemplate {
    bytes: Vec<u8>,
    /// Offsets of the source address, source port and transport checksum.
    src_offset: usize,
    port_offset: usize,
    checksum_offset: usize,
    ip_checksum_offset: Option<usize>,
    /// Sums of the template with source address and port zeroed, to patch checksums per frame.
    transport_sum: u32,
    ip_sum: u32,
    flags_offset: Option<usize>,
}

fn sum_words(bytes: &[u8]) -> u32 {
    let mut sum = 0u32;
    let mut chunks = bytes.chunks_exact(2);
    for chunk in &mut chunks {
        sum += u32::from(u16::from_be_bytes([chunk[0], chunk[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

impl FrameTemplate {
    /// The template of `spec`'s frames.
    pub fn new(spec: &TrafficSpec) -> FrameTemplate {
        let ip_len = if spec.vip.is_ipv6() { 40 } else { 20 };
        let l4_len = if spec.protocol == 6 { 20 } else { 8 };
        let minimum = 14 + ip_len + l4_len;
        let frame_len = spec.frame_len.clamp(minimum.max(60), 1514);
        // The IP datagram fills the frame except for Ethernet's minimum-size padding.
        let ip_total = (frame_len - 14).max(ip_len + l4_len);
        let mut bytes = vec![0u8; frame_len];
        bytes[0..6].copy_from_slice(&spec.dst_mac);
        bytes[6..12].copy_from_slice(&spec.src_mac);
        let l3 = 14;
        let l4 = l3 + ip_len;
        let payload_len = ip_total - ip_len - l4_len;
        let transport_len = l4_len + payload_len;
        for (i, byte) in bytes[l4 + l4_len..l3 + ip_total].iter_mut().enumerate() {
            *byte = (i % 251) as u8;
        }
        let (src_offset, ip_checksum_offset, pseudo_sum);
        match spec.vip {
            IpAddr::V4(vip) => {
                bytes[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
                bytes[l3] = 0x45;
                bytes[l3 + 2..l3 + 4].copy_from_slice(&(ip_total as u16).to_be_bytes());
                bytes[l3 + 6] = 0x40; // DF
                bytes[l3 + 8] = 64;
                bytes[l3 + 9] = spec.protocol;
                bytes[l3 + 16..l3 + 20].copy_from_slice(&vip.octets());
                src_offset = l3 + 12;
                ip_checksum_offset = Some(l3 + 10);
                pseudo_sum =
                    sum_words(&vip.octets()) + u32::from(spec.protocol) + transport_len as u32;
            }
            IpAddr::V6(vip) => {
                bytes[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
                bytes[l3] = 0x60;
                bytes[l3 + 4..l3 + 6].copy_from_slice(&(transport_len as u16).to_be_bytes());
                bytes[l3 + 6] = spec.protocol;
                bytes[l3 + 7] = 64;
                bytes[l3 + 24..l3 + 40].copy_from_slice(&vip.octets());
                src_offset = l3 + 8;
                ip_checksum_offset = None;
                pseudo_sum =
                    sum_words(&vip.octets()) + u32::from(spec.protocol) + transport_len as u32;
            }
        }
        bytes[l4 + 2..l4 + 4].copy_from_slice(&spec.vip_port.to_be_bytes());
        let (checksum_offset, flags_offset) = if spec.protocol == 6 {
            bytes[l4 + 4..l4 + 8].copy_from_slice(&1u32.to_be_bytes()); // sequence
            bytes[l4 + 12] = 5 << 4;
            bytes[l4 + 13] = 0x10; // ACK
            bytes[l4 + 14..l4 + 16].copy_from_slice(&65535u16.to_be_bytes());
            (l4 + 16, Some(l4 + 13))
        } else {
            bytes[l4 + 4..l4 + 6].copy_from_slice(&(transport_len as u16).to_be_bytes());
            (l4 + 6, None)
        };
        let transport_sum = pseudo_sum + sum_words(&bytes[l4..l4 + transport_len]);
        let ip_sum = ip_checksum_offset.map_or(0, |_| sum_words(&bytes[l3..l3 + 20]));
        FrameTemplate {
            bytes,
            src_offset,
            port_offset: l4,
            checksum_offset,
            ip_checksum_offset,
            transport_sum,
            ip_sum,
            flags_offset,
        }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Writes flow `flow`'s frame into `out` (which must be `len()` long), as a SYN when `syn`.
    pub fn write(&self, out: &mut [u8], client_base: IpAddr, flow: u32, syn: bool) {
        out.copy_from_slice(&self.bytes);
        let host = flow / PORTS_PER_CLIENT;
        let port = (FIRST_PORT + flow % PORTS_PER_CLIENT) as u16;
        let mut flag_delta = 0u32;
        if let (true, Some(offset)) = (syn, self.flags_offset) {
            out[offset] = 0x02;
            // The flags byte is the low byte of its 16-bit word: ACK (0x10) became SYN (0x02).
            flag_delta = 0x02 + 0xffff - 0x10;
        }
        let src_sum = match client_base {
            IpAddr::V4(base) => {
                let addr = u32::from(base).wrapping_add(host).to_be_bytes();
                out[self.src_offset..self.src_offset + 4].copy_from_slice(&addr);
                sum_words(&addr)
            }
            IpAddr::V6(base) => {
                let addr = u128::from(base)
                    .wrapping_add(u128::from(host))
                    .to_be_bytes();
                out[self.src_offset..self.src_offset + 16].copy_from_slice(&addr);
                sum_words(&addr)
            }
        };
        out[self.port_offset..self.port_offset + 2].copy_from_slice(&port.to_be_bytes());
        let transport = !fold(self.transport_sum + src_sum + u32::from(port) + flag_delta);
        let transport = if transport == 0 && self.flags_offset.is_none() {
            0xffff
        } else {
            transport
        };
        out[self.checksum_offset..self.checksum_offset + 2]
            .copy_from_slice(&transport.to_be_bytes());
        if let Some(offset) = self.ip_checksum_offset {
            let ip = !fold(self.ip_sum + src_sum);
            out[offset..offset + 2].copy_from_slice(&ip.to_be_bytes());
        }
    }
}

/// Frames that circulate between the source and the sink: taken and given back a burst at a time, the last given
/// back first, as a DPDK mempool's per-core cache hands out the buffers it got back most recently (still in the
/// cache). The source and the sink are two queues of one worker, so the lock is never contended; it is taken once
/// per burst, not once per frame.
#[derive(Clone)]
pub struct FramePool {
    frames: Arc<Mutex<Vec<MemoryFrame>>>,
    capacity: usize,
}

impl FramePool {
    fn frames(&self) -> MutexGuard<'_, Vec<MemoryFrame>> {
        self.frames.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One frame, if the pool has any.
    pub fn pop(&self) -> Option<MemoryFrame> {
        self.frames().pop()
    }

    /// Gives `frame` back; a full pool drops it.
    pub fn push(&self, frame: MemoryFrame) {
        let mut frames = self.frames();
        if frames.len() < self.capacity {
            frames.push(frame);
        }
    }

    /// Moves up to `count` frames into `burst` (as room allows); returns how many.
    pub fn take_into(&self, count: usize, burst: &mut Burst<MemoryFrame>) -> usize {
        let mut frames = self.frames();
        let count = count.min(frames.len()).min(burst.capacity() - burst.len());
        let from = frames.len() - count;
        burst.extend(frames.drain(from..));
        count
    }

    /// Gives back every frame of `burst`, leaving it empty; beyond the pool's capacity frames are dropped.
    pub fn give_all(&self, burst: &mut Burst<MemoryFrame>) {
        let mut frames = self.frames();
        let room = self.capacity.saturating_sub(frames.len());
        frames.extend(burst.drain(..).take(room));
        burst.clear();
    }

    /// Frames in the pool now.
    pub fn len(&self) -> usize {
        self.frames().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A pool of `frames` empty frames.
pub fn frame_pool(frames: usize) -> FramePool {
    FramePool {
        frames: Arc::new(Mutex::new(
            (0..frames).map(|_| MemoryFrame::empty()).collect(),
        )),
        capacity: frames.max(1),
    }
}

/// A receive queue that produces `spec`'s traffic into frames taken from a pool.
pub struct TrafficSource {
    spec: TrafficSpec,
    template: FrameTemplate,
    pool: FramePool,
    /// Position in the flow sequence; flows are visited in a scattered order so caches do not flatter.
    position: u64,
    stride: u64,
    pub generated: u64,
    /// Frames allocated because the pool was empty (the worker dropped or kept that many).
    pub replenished: u64,
    /// Stop after this many frames (`u64::MAX`: never).
    pub limit: u64,
}

impl TrafficSource {
    pub fn new(spec: TrafficSpec, pool: FramePool) -> TrafficSource {
        let flows = u64::from(spec.flows.max(1));
        // A stride coprime with the flow count visits every flow once per cycle in a scattered order.
        let mut stride = 2_654_435_761 % flows;
        while stride == 0 || gcd(stride, flows) != 1 {
            stride += 1;
        }
        TrafficSource {
            template: FrameTemplate::new(&spec),
            spec,
            pool,
            position: 0,
            stride,
            generated: 0,
            replenished: 0,
            limit: u64::MAX,
        }
    }

    /// The flow index of the `n`th frame.
    fn flow_of(&self, n: u64) -> u32 {
        if self.spec.new_connections {
            // A fresh flow per frame, cycling over the whole client space.
            return (n % (u64::from(PORTS_PER_CLIENT) * 4096)) as u32;
        }
        ((n.wrapping_mul(self.stride)) % u64::from(self.spec.flows.max(1))) as u32
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl RxQueue for TrafficSource {
    type Frame = MemoryFrame;

    fn rx_burst(&mut self, burst: &mut Burst<MemoryFrame>, max: usize) -> usize {
        let first = burst.len();
        let wanted = max
            .min(burst.capacity() - first)
            .min(usize::try_from(self.limit - self.generated).unwrap_or(usize::MAX));
        // The frames for the whole burst in one take; frames the worker dropped are freed, not given back, so the
        // shortfall is made anew and the source never runs dry.
        let taken = self.pool.take_into(wanted, burst);
        for _ in taken..wanted {
            self.replenished += 1;
            burst.push(MemoryFrame::empty());
        }
        let mut produced = 0;
        for frame in burst[first..].iter_mut() {
            frame.reset();
            if !frame.resize(self.template.len()) {
                break;
            }
            let flow = self.flow_of(self.position);
            self.template.write(
                frame.data_mut(),
                self.spec.client_base,
                flow,
                self.spec.new_connections,
            );
            self.position += 1;
            self.generated += 1;
            produced += 1;
        }
        // Frames too short for the template (none with the pool's room) go back unused.
        if burst.len() > first + produced {
            let mut unused: Burst<MemoryFrame> = burst.drain(first + produced..).collect();
            self.pool.give_all(&mut unused);
        }
        produced
    }
}

/// A transmit queue that counts frames and bytes and returns the frames to the pool.
pub struct CountingSink {
    pool: FramePool,
    pub frames: u64,
    pub bytes: u64,
}

impl CountingSink {
    pub fn new(pool: FramePool) -> CountingSink {
        CountingSink {
            pool,
            frames: 0,
            bytes: 0,
        }
    }
}

impl TxQueue for CountingSink {
    type Frame = MemoryFrame;

    fn tx_burst(&mut self, burst: &mut Burst<MemoryFrame>) -> usize {
        let sent = burst.len();
        self.frames += sent as u64;
        self.bytes += burst
            .iter()
            .map(|frame| frame.data().len() as u64)
            .sum::<u64>();
        self.pool.give_all(burst);
        sent
    }

    fn alloc(&mut self) -> Option<MemoryFrame> {
        let mut frame = self.pool.pop()?;
        frame.reset();
        Some(frame)
    }
}

/// A single worker over two in-process ports for benchmarks: port 0 receives `flows` flows of client traffic
/// to one service of eight backends in `mode` (Maglev), port 1 receives nothing; both transmit into counting
/// sinks. Ports have a 9000-byte MTU, so that TUN encapsulates even full-size frames. Returns the worker ready to
/// poll.
pub fn bench_worker(
    mode: ForwardingMode,
    v6: bool,
    flows: u32,
    frame_len: usize,
    new_connections: bool,
    burst: usize,
    hooks: EdgeHooks,
) -> Result<Worker<TrafficSource, CountingSink>, String> {
    let (vip, client, backend_net) = if v6 {
        (ip("fd00::100"), ip("2001:db8::1"), "fd01::")
    } else {
        (ip("10.0.0.100"), ip("198.18.0.1"), "10.1.0.")
    };
    let backend_port = if matches!(mode, ForwardingMode::Nat | ForwardingMode::FullNat) {
        8080
    } else {
        80
    };
    let backends = (0..8u32)
        .map(|i| Backend {
            id: BackendId(i),
            addr: ip(&format!("{backend_net}{}", 11 + i)),
            port: backend_port,
            weight: 1,
            mac: Some([2, 0xbe, 0, 0, 0, 11 + i as u8]),
        })
        .collect();
    let spec = SnapshotSpec {
        ports: vec![
            PortSpec {
                mac: [2, 0, 0, 0, 0, 1],
                mtu: 9000,
                addresses: vec![(ip("10.0.0.1"), 24), (ip("fd00::1"), 64)],
            },
            PortSpec {
                mac: [2, 0, 0, 0, 0, 2],
                mtu: 9000,
                addresses: vec![(ip("10.1.0.1"), 24), (ip("fd01::1"), 64)],
            },
        ],
        gateways: vec![
            GatewaySpec {
                port: 0,
                addr: ip("10.0.0.254"),
                mac: Some([2, 0, 0, 0, 0, 0xfe]),
            },
            GatewaySpec {
                port: 0,
                addr: ip("fd00::fe"),
                mac: Some([2, 0, 0, 0, 0, 0xfe]),
            },
        ],
        tunnel_source_v4: Some(ip("10.1.0.1")),
        tunnel_source_v6: Some(ip("fd01::1")),
        // 32 addresses: 2M local ports, more than a new-connection run's table of 1M holds, so that a full table
        // evicts (and frees a port) before the ports run out (16 ran out first: FULLNAT forwarded 7 % of frames).
        local_addresses: (0..32)
            .map(|i| ip(&format!("{backend_net}{}", 200 + i)))
            .collect(),
        local_ports: PortPartition::new(1024, 65535, 1).map_err(|e| e.to_string())?,
        maglev_size: TableSize::default(),
        services: vec![ServiceSpec {
            key: ServiceKey {
                vip,
                port: 80,
                protocol: 6,
            },
            mode,
            scheduler: SchedulerKind::Mh,
            persistence: None,
            backends,
        }],
        kernel_exception_path: false,
    };
    let snapshot = Arc::new(Snapshot::build(&spec, 1).map_err(|e| e.to_string())?);
    let capacity = if new_connections {
        1 << 20
    } else {
        (flows as usize * 2).max(1 << 16)
    };
    let local_ports = PortAllocator::new(spec.local_ports, 0, &spec.local_addresses)
        .map_err(|e| e.to_string())?;
    let pool = frame_pool(4096);
    let traffic = TrafficSpec {
        client_base: client,
        vip,
        vip_port: 80,
        protocol: 6,
        flows: flows.max(1),
        frame_len,
        new_connections,
        src_mac: [2, 0, 0, 0, 0, 0xfe],
        dst_mac: [2, 0, 0, 0, 0, 1],
    };
    let mut idle_source = TrafficSource::new(traffic, pool.clone());
    idle_source.limit = 0;
    let ports = vec![
        PortQueues {
            rx: TrafficSource::new(traffic, pool.clone()),
            tx: CountingSink::new(pool.clone()),
            mac: [2, 0, 0, 0, 0, 1],
            vlan: None,
        },
        PortQueues {
            rx: idle_source,
            tx: CountingSink::new(pool.clone()),
            mac: [2, 0, 0, 0, 0, 2],
            vlan: None,
        },
    ];
    let plan = WorkerPlan {
        place: WorkerPlace {
            index: 0,
            workers: 1,
            software_steering: false,
        },
        conntrack_capacity: capacity,
        two_entry_connections: capacity,
        timeouts: Timeouts::default(),
        local_ports: Some(local_ports),
        hooks,
        backend_ids: 64,
        persistence_entries: 16,
        neighbors: Arc::new(NeighborTable::new(64)),
        exceptions: balancer::exceptions::ExceptionTable::disabled(),
        config: WorkerConfig {
            burst,
            ..WorkerConfig::default()
        },
    };
    // The control ends are dropped: a benchmark worker never gets new tables.
    let (worker, _control) = plan.build(snapshot, ports, HandoffLinks::alone())?;
    Ok(worker)
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("literal address")
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    fn spec(vip: &str, client: &str, protocol: u8, frame_len: usize) -> TrafficSpec {
        TrafficSpec {
            client_base: client.parse().unwrap(),
            vip: vip.parse().unwrap(),
            vip_port: 80,
            protocol,
            flows: 1000,
            frame_len,
            new_connections: false,
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
        }
    }

    /// The frames carry what the spec says, with checksums an independent parser accepts.
    #[test]
    fn generated_frames_are_valid() {
        for (vip, client) in [("10.0.0.100", "198.18.0.1"), ("fd00::100", "2001:db8::1")] {
            for protocol in [6u8, 17] {
                for len in [60usize, 64, 128, 1514] {
                    for syn in [false, true] {
                        let spec = spec(vip, client, protocol, len);
                        let template = FrameTemplate::new(&spec);
                        let mut out = vec![0; template.len()];
                        for flow in [0u32, 1, 49_999, 50_000, 123_456] {
                            template.write(&mut out, spec.client_base, flow, syn);
                            let packet = SlicedPacket::from_ethernet(&out).unwrap();
                            let (src, payload_len) = match packet.net.as_ref().unwrap() {
                                NetSlice::Ipv4(v4) => {
                                    let header = v4.header();
                                    let mut copy = header.to_header();
                                    copy.header_checksum = copy.calc_header_checksum();
                                    assert_eq!(copy.header_checksum, header.header_checksum());
                                    (IpAddr::V4(header.source_addr()), v4.payload().payload.len())
                                }
                                NetSlice::Ipv6(v6) => (
                                    IpAddr::V6(v6.header().source_addr()),
                                    v6.payload().payload.len(),
                                ),
                                _ => panic!("not IP"),
                            };
                            let expected_src = match spec.client_base {
                                IpAddr::V4(base) => {
                                    IpAddr::V4((u32::from(base) + flow / PORTS_PER_CLIENT).into())
                                }
                                IpAddr::V6(base) => IpAddr::V6(
                                    (u128::from(base) + u128::from(flow / PORTS_PER_CLIENT)).into(),
                                ),
                            };
                            assert_eq!(src, expected_src);
                            let ip_header = &out[14..];
                            match packet.transport.as_ref().unwrap() {
                                TransportSlice::Tcp(tcp) => {
                                    assert_eq!(
                                        tcp.source_port(),
                                        (FIRST_PORT + flow % PORTS_PER_CLIENT) as u16
                                    );
                                    assert_eq!(tcp.syn(), syn);
                                    assert_eq!(tcp.ack(), !syn);
                                    let computed = match packet.net.as_ref().unwrap() {
                                        NetSlice::Ipv4(v4) => tcp
                                            .to_header()
                                            .calc_checksum_ipv4(
                                                &v4.header().to_header(),
                                                tcp.payload(),
                                            )
                                            .unwrap(),
                                        NetSlice::Ipv6(v6) => tcp
                                            .to_header()
                                            .calc_checksum_ipv6(
                                                &v6.header().to_header(),
                                                tcp.payload(),
                                            )
                                            .unwrap(),
                                        _ => unreachable!(),
                                    };
                                    assert_eq!(
                                        computed,
                                        tcp.checksum(),
                                        "{vip} len {len} flow {flow}"
                                    );
                                }
                                TransportSlice::Udp(udp) => {
                                    let computed = match packet.net.as_ref().unwrap() {
                                        NetSlice::Ipv4(v4) => udp
                                            .to_header()
                                            .calc_checksum_ipv4(
                                                &v4.header().to_header(),
                                                udp.payload(),
                                            )
                                            .unwrap(),
                                        NetSlice::Ipv6(v6) => udp
                                            .to_header()
                                            .calc_checksum_ipv6(
                                                &v6.header().to_header(),
                                                udp.payload(),
                                            )
                                            .unwrap(),
                                        _ => unreachable!(),
                                    };
                                    assert_eq!(computed, udp.checksum());
                                }
                                _ => panic!("no transport"),
                            }
                            assert!(payload_len + 14 <= out.len());
                            let _ = ip_header;
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_pool_hands_out_the_frames_given_back_last_a_burst_at_a_time() {
        let pool = frame_pool(4);
        let mut burst = Burst::new();
        assert_eq!(pool.take_into(3, &mut burst), 3);
        assert_eq!(pool.len(), 1);
        // Mark the frames by length, give them back, and take two: the last two given come back.
        for (len, frame) in burst.iter_mut().enumerate() {
            assert!(frame.resize(len + 1));
        }
        pool.give_all(&mut burst);
        assert!(burst.is_empty());
        assert_eq!(pool.take_into(2, &mut burst), 2);
        let lens: Vec<usize> = burst.iter().map(|frame| frame.data().len()).collect();
        assert_eq!(lens, [2, 3]);
        // Beyond its capacity the pool drops what it is given.
        pool.give_all(&mut burst);
        pool.push(MemoryFrame::empty());
        assert_eq!(pool.len(), 4);
        assert_eq!(pool.take_into(64, &mut burst), 4);
        assert!(pool.is_empty());
    }

    #[test]
    fn the_source_visits_every_flow_and_recycles_frames() {
        let pool = frame_pool(64);
        let mut source = TrafficSource::new(spec("10.0.0.100", "198.18.0.1", 6, 60), pool.clone());
        let mut sink = CountingSink::new(pool.clone());
        let mut seen = std::collections::HashSet::new();
        let mut burst = Burst::new();
        for _ in 0..1000 / 32 + 1 {
            source.rx_burst(&mut burst, 32);
            for frame in &burst {
                seen.insert(
                    frame.data()[26..30]
                        .iter()
                        .copied()
                        .chain(frame.data()[34..36].iter().copied())
                        .collect::<Vec<_>>(),
                );
            }
            sink.tx_burst(&mut burst);
        }
        assert_eq!(seen.len(), 1000);
        assert_eq!(pool.len(), 64);
        assert_eq!(sink.frames, 1024);
    }
}
