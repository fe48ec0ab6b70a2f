//! One worker's poll loop: receive a burst on each port, parse, decide, rewrite in place, and transmit in bursts;
//! frames another worker owns go over a lock-free ring; a newer snapshot is picked up between bursts and the old
//! one handed back so that nothing is freed here.
//!
//! Per frame there is no allocation, lock or system call: bursts are fixed arrays, rings and channels are bounded
//! and preallocated, and a counter is a shared atomic only this worker writes (a relaxed load and store: one add).

use std::hint::cold_path;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arrayvec::ArrayVec;
use balancer::decision::{
    Action, DatagramKey, DropReason, EntryRewrite, Established, FastForward, Forward,
    FragmentAction, FragmentTable, Rewrite, StagedKey, WorkerState, WorkerTables,
};
use balancer::expiry::ExpiryPacer;
use balancer::neighbor::{Neighbor, ResolutionThrottle};
use balancer::snapshot::Snapshot;
use crossbeam::channel::{Receiver, Sender};
use packet::{Fragment, FrameLayout, IpHeaders, MacWord, PlainFrame, L3};

use crate::awaiting_neighbor::{AwaitingFrame, AwaitingNeighbor, AWAITING_FRAMES};
use crate::held_fragments::{HeldFragment, HeldFragments, HELD_FRAGMENTS};
use crate::io::{Burst, Frame, RxQueue, TxQueue, MAX_BURST};
use crate::kernel::{kernel_wants_copy, KernelPath};

pub use crate::handoff::{handoff_mesh, Handoff, HandoffLinks};

pub mod overload;

pub use crate::per_reason::PerReason;

/// A worker's queues on one port.
pub struct PortQueues<R, T> {
    pub rx: R,
    pub tx: T,
    /// The port's MAC: the source of everything sent from it.
    pub mac: [u8; 6],
    /// The 802.1Q VLAN the port is on: it takes only frames tagged with it and tags all it sends (`crate::vlan`).
    pub vlan: Option<u16>,
}

/// Tunables of the loop.
#[derive(Clone, Copy, Debug)]
pub struct WorkerConfig {
    /// Frames received per port per poll (at most [`MAX_BURST`]).
    pub burst: usize,
    /// Transmit attempts for a burst before the rest is dropped and counted.
    pub tx_attempts: u32,
    /// Every connection-table slot passes under the expiry hand once in this many milliseconds; the sweep runs
    /// at most once per millisecond, so idle polls cost nothing.
    pub expire_sweep_ms: u64,
    /// Minimum interval between two resolution requests for one address; worker 0 also asks for the configured
    /// next hops without a fresh MAC this often.
    pub resolve_interval_ms: u64,
    /// How long a frame waits for its next hop's MAC before it is dropped (`crate::awaiting_neighbor`).
    pub neighbor_wait_ms: u64,
    /// After a Maglev table changes, how long the previous tables answer for non-SYN frames without a connection
    /// (`crate::previous_table`); 0: not at all.
    pub previous_table_grace_ms: u64,
    /// Fragmented datagrams whose fate the worker remembers at once, each for `fragment_lifetime_ms`
    /// (`balancer::decision::FragmentTable`).
    pub fragment_datagrams: usize,
    pub fragment_lifetime_ms: u64,
    /// How long a later fragment that came before its first is held (`crate::held_fragments`).
    pub fragment_hold_ms: u64,
    /// Bursts a worker behind on a port with a kernel interface reads on in one turn, keeping the control frames
    /// and shedding the data (`overload`); 0: never shed.
    pub overload_bursts: usize,
    /// Turns in a row whose burst came back full before a port counts as behind (`overload`): one full burst is
    /// traffic that arrived in a clump, which the next turns drain; a queue full turn after turn is one the worker
    /// does not keep up with.
    pub overload_after_full_turns: u32,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            burst: 32,
            tx_attempts: 4,
            expire_sweep_ms: 10_000,
            resolve_interval_ms: 1000,
            neighbor_wait_ms: 3000,
            previous_table_grace_ms: 0,
            fragment_datagrams: 4096,
            fragment_lifetime_ms: 5000,
            fragment_hold_ms: 500,
            overload_bursts: overload::OVERLOAD_BURSTS,
            overload_after_full_turns: overload::OVERLOAD_AFTER_FULL_TURNS,
        }
    }
}

/// Backends whose traffic is counted per worker (ids at or above are not).
pub const COUNTED_BACKENDS: usize = 4096;

/// One backend's traffic through one worker, as ipvsadm --stats shows it.
#[derive(Debug, Default)]
pub struct BackendCounters {
    pub connections: AtomicU64,
    pub packets_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

/// Adds to a counter only this worker writes: a plain load and store, no locked instruction.
#[inline]
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

/// Counters of one worker, written only by it and read by anyone.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub rx: AtomicU64,
    pub tx: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub forwarded: AtomicU64,
    pub answered: AtomicU64,
    pub handed_off: AtomicU64,
    pub handoffs_received: AtomicU64,
    pub to_kernel: AtomicU64,
    pub untracked: AtomicU64,
    pub resolutions_sent: AtomicU64,
    /// Later fragments held until their first came (or they were dropped).
    pub fragments_held: AtomicU64,
    pub drops: PerReason<AtomicU64>,
    pub connections: AtomicU64,
    pub generation: AtomicU64,
    /// Indexed by backend id, below [`COUNTED_BACKENDS`].
    pub backends: Box<[BackendCounters]>,
}

impl WorkerStats {
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()].load(Ordering::Relaxed)
    }

    pub fn total_drops(&self) -> u64 {
        self.drops
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .sum()
    }
}

/// The channels a worker receives new tables on and returns retired ones through.
pub struct TableUpdates {
    pub incoming: Receiver<WorkerTables>,
    pub retired: Sender<WorkerTables>,
}

/// A question about one flow, for `sluice ctl trace`: the flow as it reaches us, and the persistence key (masked
/// client, service) when its service is persistent.
#[derive(Clone, Copy, Debug)]
pub struct TraceQuery {
    pub flow: packet::FlowKey,
    pub persistence: Option<(IpAddr, balancer::service::ServiceKey)>,
}

/// What one worker knows about a traced flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceAnswer {
    pub worker: u16,
    /// The connection entry: its backend, TCP state name and milliseconds left.
    pub connection: Option<(balancer::service::BackendId, &'static str, u64)>,
    pub persistent_backend: Option<balancer::service::BackendId>,
}

/// The channels a worker answers trace queries on, between bursts.
pub struct TraceChannel {
    pub queries: Receiver<TraceQuery>,
    pub answers: Sender<TraceAnswer>,
}

/// Everything one worker owns.
pub struct Worker<R: RxQueue, T: TxQueue<Frame = R::Frame>> {
    engine: Engine<R, T>,
    updates: TableUpdates,
    trace: Option<TraceChannel>,
    /// Where `sluice ctl connections` asks, when the worker answers it.
    listing: Option<crate::listing::ListingChannel>,
    /// Connection exceptions shared with the cluster's other nodes (`crate::exceptions`), when configured.
    exceptions: Option<crate::exceptions::ExceptionSync>,
    previous: crate::previous_table::PreviousTable,
    stats: Arc<WorkerStats>,
    /// The burst being worked on, and its frames' layouts: fields of their own so that handling the frames can
    /// borrow the engine.
    received: Burst<R::Frame>,
    layouts: Box<[FrameLayout; MAX_BURST]>,
    /// Frames other workers handed over, received in bulk.
    handed: ArrayVec<Handoff<R::Frame>, MAX_BURST>,
    /// What the burst's first pass made of frame i: whether `layouts[i]` holds a good parse of it, addressed to
    /// the port.
    admissions: [Admission; MAX_BURST],
    /// The staged connection lookup of frame i, for IP frames.
    staged: [Option<StagedKey>; MAX_BURST],
    /// The verdict on the frame being handled, written in place by the decision.
    verdict: Action,
}

/// What handles one frame: the balancing state, the ports' transmit side and the counters.
struct Engine<R: RxQueue, T: TxQueue<Frame = R::Frame>> {
    state: WorkerState,
    tables: WorkerTables,
    ports: Vec<PortQueues<R, T>>,
    /// Each port's MAC as [`addressed_to`] compares it, formed once.
    port_mac_words: Vec<u64>,
    /// Per port, what a forward writes: the source MAC and the frames waiting to leave (one bounds check).
    outputs: Vec<PortOutput<R::Frame>>,
    handoffs: HandoffLinks<R::Frame>,
    /// The per-port kernel exception path (`crate::kernel`), when attached.
    exception: Option<KernelPath<R, T>>,
    stats: Arc<WorkerStats>,
    throttle: ResolutionThrottle,
    /// The fate of each fragmented datagram's first fragment, and the later fragments that came before it.
    fragments: FragmentTable,
    held: HeldFragments<R::Frame>,
    /// Frames waiting for their next hop's MAC, and when worker 0 last asked for the configured next hops.
    awaiting: AwaitingNeighbor<R::Frame>,
    next_hops_resolved_ms: Option<u64>,
    /// The identification of the next outer packet a tunnel sends in fragments.
    tunnel_fragment_id: u16,
    expiry: ExpiryPacer,
    /// Frames dropped this poll, freed together.
    dropped: Burst<R::Frame>,
    /// Per port, how many turns in a row its burst came back full.
    full_turns: Vec<u32>,
    config: WorkerConfig,
}

impl<R: RxQueue, T: TxQueue<Frame = R::Frame>> Worker<R, T> {
    /// A worker over `ports` (index = port number in the snapshot), exchanging frames with its peers over
    /// `handoffs` (its element of [`handoff_mesh`], or [`HandoffLinks::alone`]).
    pub fn new(
        state: WorkerState,
        tables: WorkerTables,
        ports: Vec<PortQueues<R, T>>,
        handoffs: HandoffLinks<R::Frame>,
        updates: TableUpdates,
        config: WorkerConfig,
    ) -> Worker<R, T> {
        let outputs = ports
            .iter()
            .map(|queues| PortOutput {
                source_mac: queues.mac,
                pending: Burst::new(),
            })
            .collect();
        let port_mac_words = ports.iter().map(|queues| mac_word(queues.mac)).collect();
        let full_turns = vec![0; ports.len()];
        let first_tunnel_fragment_id = state.place.index;
        let expiry = ExpiryPacer::new(state.conns.capacity(), config.expire_sweep_ms);
        let stats = Arc::new(WorkerStats {
            backends: (0..COUNTED_BACKENDS)
                .map(|_| BackendCounters::default())
                .collect(),
            ..WorkerStats::default()
        });
        stats
            .generation
            .store(tables.snapshot.generation, Ordering::Relaxed);
        Worker {
            engine: Engine {
                state,
                tables,
                ports,
                port_mac_words,
                outputs,
                handoffs,
                exception: None,
                stats: Arc::clone(&stats),
                throttle: ResolutionThrottle::new(1024, config.resolve_interval_ms),
                fragments: FragmentTable::new(
                    config.fragment_datagrams,
                    config.fragment_lifetime_ms,
                ),
                held: HeldFragments::new(config.fragment_hold_ms),
                awaiting: AwaitingNeighbor::new(config.neighbor_wait_ms),
                next_hops_resolved_ms: None,
                tunnel_fragment_id: first_tunnel_fragment_id,
                expiry,
                dropped: Burst::new(),
                full_turns,
                config: WorkerConfig {
                    burst: config.burst.clamp(1, MAX_BURST),
                    ..config
                },
            },
            updates,
            trace: None,
            listing: None,
            exceptions: None,
            previous: crate::previous_table::PreviousTable::new(config.previous_table_grace_ms),
            stats,
            received: Burst::new(),
            layouts: Box::new([packet::EMPTY_LAYOUT; MAX_BURST]),
            handed: ArrayVec::new(),
            admissions: [Admission::Malformed; MAX_BURST],
            staged: [None; MAX_BURST],
            verdict: Action::Consumed,
        }
    }

    /// This worker's counters.
    /// Answers trace queries from `channel` (checked once per poll).
    pub fn answer_traces(&mut self, channel: TraceChannel) {
        self.trace = Some(channel);
    }

    /// Answers connection listings from `channel`, one query per poll.
    pub fn answer_listings(&mut self, channel: crate::listing::ListingChannel) {
        self.listing = Some(channel);
    }

    /// Shares connection exceptions over `links` (between bursts); returns the counters of it.
    pub fn share_exceptions(
        &mut self,
        links: crate::exceptions::ExceptionLinks,
    ) -> Arc<crate::exceptions::ExceptionStats> {
        let sync = crate::exceptions::ExceptionSync::new(links);
        let stats = sync.stats();
        self.exceptions = Some(sync);
        stats
    }

    pub fn stats(&self) -> Arc<WorkerStats> {
        Arc::clone(&self.stats)
    }

    /// Hands frames that are not balancer traffic to each port's kernel interface, copies ARP and neighbour
    /// discovery to it, and sends what the kernel sends out of the port (see [`crate::kernel`]).
    pub fn attach_kernel_path(&mut self, path: KernelPath<R, T>) {
        self.engine.exception = Some(path);
    }

    /// The exception path's counters, when one is attached.
    pub fn kernel_stats(&self) -> Option<Arc<crate::kernel::KernelStats>> {
        self.engine.exception.as_ref().map(KernelPath::stats)
    }

    /// The worker's balancing state (connection table, counts), for inspection.
    pub fn state(&self) -> &WorkerState {
        &self.engine.state
    }

    /// The tables the worker forwards with now.
    pub fn tables(&self) -> &WorkerTables {
        &self.engine.tables
    }

    /// Polls until `stop` is set, then flushes what is pending. `clock` gives milliseconds.
    pub fn run(&mut self, stop: &AtomicBool, mut clock: impl FnMut() -> u64) {
        while !stop.load(Ordering::Relaxed) {
            self.poll(clock());
        }
        self.engine.flush_all();
        self.drop_waiting_frames(clock());
    }

    /// Drops (and counts) the fragments still held for a first that did not come and the frames still waiting for
    /// a neighbour (those whose neighbour is resolved by now are sent), and publishes the counters: for a worker
    /// that stops, after its last poll.
    pub fn drop_waiting_frames(&mut self, now_ms: u64) {
        self.engine.drop_held_fragments(None);
        self.engine.send_awaiting(now_ms, true);
        self.engine.flush_all();
        R::Frame::free_burst(&mut self.engine.dropped);
        self.publish();
    }

    /// One turn of the loop at time `now_ms`; returns how many frames it received from the ports.
    pub fn poll(&mut self, now_ms: u64) -> usize {
        self.before_bursts(now_ms);
        let received = self.receive_bursts(now_ms);
        self.after_bursts(now_ms);
        received
    }

    /// The turn's work ahead of the ports' bursts: new tables, queries, exception sync, next-hop resolution. Out
    /// of line, like [`Worker::after_bursts`], so that the code the frames run through stays together and small.
    #[inline(never)]
    fn before_bursts(&mut self, now_ms: u64) {
        self.take_new_tables(now_ms);
        if let Some(kept) = self.previous.expired(&mut self.engine.state, now_ms) {
            let _ = self.updates.retired.try_send(kept);
        }
        self.answer_trace_queries(now_ms);
        if let Some(channel) = &self.listing {
            if let Some(query) = crate::control_queue::take_ready(&channel.queries) {
                let state = &mut self.engine.state;
                let answer = crate::listing::answer_query(
                    &mut state.conns,
                    &state.load,
                    state.place.index,
                    query,
                    now_ms,
                );
                let _ = channel.answers.try_send(answer);
            }
        }
        if let Some(sync) = &mut self.exceptions {
            let engine = &mut self.engine;
            sync.between_bursts(&mut engine.state, &engine.tables.snapshot, now_ms);
        }
        let engine = &mut self.engine;
        // Ask for the configured next hops first (from the first turn, and in the turn that brings new tables), so
        // that their answers, taken only for what was asked, find their entries.
        if engine.state.place.index == 0
            && engine
                .next_hops_resolved_ms
                .is_none_or(|last| now_ms.saturating_sub(last) >= engine.config.resolve_interval_ms)
        {
            engine.next_hops_resolved_ms = Some(now_ms);
            engine.resolve_next_hops(now_ms);
        }
    }

    /// Every port's burst, staged and handled; returns how many frames were received (the kernel's included).
    #[inline(always)]
    fn receive_bursts(&mut self, now_ms: u64) -> usize {
        let engine = &mut self.engine;
        // Control traffic first: what the kernel sends leaves ahead of this turn's data.
        let mut received_total = engine.send_kernel_frames();
        for port in 0..engine.ports.len() {
            let received = engine.ports[port]
                .rx
                .rx_burst(&mut self.received, engine.config.burst);
            received_total += received;
            bump(&engine.stats.rx, received as u64);
            if received == 0 {
                continue;
            }
            // A port on a VLAN keeps only frames of its tag, stripped: one branch per burst.
            let received = match engine.ports[port].vlan {
                None => received,
                Some(vlan) => engine.admit_tagged(&mut self.received, vlan),
            };
            // Stage the burst: bring every frame's headers in, parse them all, then decide and act on each.
            for frame in &self.received {
                frame.prefetch();
            }
            // Parse and admit every frame. A plain TCP or UDP frame (the established path's) is read into a
            // `PlainFrame`, with no layout written; any other frame is parsed whole into its layout. The ports are
            // promiscuous: a frame to another host's MAC is refused in this pass, with the port's MAC loaded once;
            // the bytes of the parsed frames are summed here.
            let port_mac = engine.port_mac_word(port);
            let mut received_bytes = 0;
            for ((frame, layout), admission) in self
                .received
                .iter()
                .zip(self.layouts.iter_mut())
                .zip(self.admissions.iter_mut())
            {
                let data = frame.data();
                let checksum_good = frame.ipv4_checksum_good();
                if let Some(plain) = packet::parse_plain(data, checksum_good) {
                    received_bytes += data.len() as u64;
                    // Stored whole, then replaced in the rare case: a branch, where choosing between the two
                    // values built both and selected them field by field.
                    *admission = Admission::Plain(plain);
                    if !addressed_to(data, port_mac) {
                        cold_path();
                        *admission = Admission::NotOurMac;
                    }
                    continue;
                }
                *admission = if packet::parse_frame_into(data, checksum_good, layout).is_err() {
                    Admission::Malformed
                } else {
                    received_bytes += data.len() as u64;
                    if addressed_to(data, port_mac) {
                        Admission::Accepted
                    } else {
                        Admission::NotOurMac
                    }
                };
            }
            bump(&engine.stats.rx_bytes, received_bytes);
            // Hash every IP frame's connection key and start loading its index bucket (a loop of its own: fewer
            // values live at once, and each frame's parse is done by the time it is read back): a plain frame's key
            // straight from its bytes, any other's from its layout...
            for (((frame, layout), admission), staged) in self
                .received
                .iter()
                .zip(self.layouts.iter())
                .zip(&self.admissions[..received])
                .zip(self.staged.iter_mut())
            {
                // The plain lane tested first, on its own: a test of the admission's niche, not a jump table.
                *staged = if let Admission::Plain(plain) = admission {
                    engine
                        .state
                        .stage_plain_with(frame.data(), plain, R::Frame::prefetch_address)
                } else if *admission == Admission::Accepted
                    && matches!(layout.l3, L3::Ipv4 | L3::Ipv6)
                {
                    Some(
                        engine
                            .state
                            .stage_with(&layout.flow, R::Frame::prefetch_address),
                    )
                } else {
                    None
                };
            }
            // ...then, with the buckets on their way, the entries they point at (in a table larger than a core's
            // cache)...
            let mut new_flows = false;
            if engine.state.stages_entries() {
                for staged in self.staged[..received].iter_mut().flatten() {
                    new_flows |= engine
                        .state
                        .stage_entries_with(staged, R::Frame::prefetch_address);
                }
            }
            // ...then, in a table of many connections of two entries, the other entry each frame needs (a FULLNAT
            // connection's second entry, a reply entry's primary)...
            if engine.state.stages_linked_entries() {
                for staged in self.staged[..received].iter().flatten() {
                    engine
                        .state
                        .stage_linked_with(staged, R::Frame::prefetch_address);
                }
            }
            // ...and for flows no entry holds, their services' Maglev slots (a burst of established traffic skips
            // this loop)...
            if new_flows {
                // These passes read the layouts of the frames no entry holds: the plain ones get theirs. (For the
                // other plain frames, whose layouts are left from earlier bursts, the passes do nothing: both act
                // only on keys no entry holds.)
                for (((frame, layout), admission), staged) in self
                    .received
                    .iter()
                    .zip(self.layouts.iter_mut())
                    .zip(self.admissions.iter_mut())
                    .zip(&self.staged)
                {
                    if let (Admission::Plain(plain), Some(staged)) = (*admission, staged) {
                        if staged.no_entry_holds_it() {
                            *layout = plain.layout(frame.data());
                            *admission = Admission::Accepted;
                        }
                    }
                }
                for (staged, layout) in self.staged[..received].iter_mut().zip(self.layouts.iter())
                {
                    if let Some(staged) = staged {
                        engine.state.stage_new_flow_with(
                            &engine.tables.snapshot,
                            layout,
                            staged,
                            R::Frame::prefetch_address,
                        );
                    }
                }
                // ...and, with those slots on their way, the buckets of the new NAT connections' reply keys...
                for (staged, layout) in self.staged[..received].iter().zip(self.layouts.iter()) {
                    if let Some(staged) = staged {
                        engine.state.stage_reply_with(
                            &engine.tables.snapshot,
                            &layout.flow,
                            staged,
                            R::Frame::prefetch_address,
                        );
                    }
                }
            }
            // ...and only then decide, frame by frame, in order.
            engine.handle_burst(
                &mut self.received,
                &mut self.layouts,
                &self.admissions,
                &self.staged,
                port as u16,
                now_ms,
                &mut self.verdict,
            );
            // A full burst on a port with control traffic to protect: drain the queue, shedding data (`overload`).
            if engine.behind_on_control_port(port, received) {
                received_total += overload::shed(
                    engine,
                    &mut self.received,
                    &mut self.layouts[0],
                    &mut self.verdict,
                    port,
                    now_ms,
                );
            }
        }
        received_total
    }

    /// The turn's work after the ports' bursts: frames handed off by other workers, held fragments, frames
    /// waiting for a neighbour, transmission, expiry and the counters.
    #[inline(never)]
    fn after_bursts(&mut self, now_ms: u64) {
        let engine = &mut self.engine;
        let handed = &mut self.handed;
        let received = engine
            .handoffs
            .receive(engine.config.burst, |handoff| handed.push(handoff));
        bump(&engine.stats.handoffs_received, received as u64);
        for handoff in self.handed.drain(..) {
            let layout = &mut self.layouts[0];
            let frame = handoff.frame;
            if packet::parse_frame_into(frame.data(), frame.ipv4_checksum_good(), layout).is_ok() {
                engine.handle_one(
                    frame,
                    layout,
                    handoff.ingress,
                    true,
                    now_ms,
                    &mut self.verdict,
                );
            } else {
                engine.drop_malformed(frame);
            }
        }
        if !engine.held.is_empty() {
            engine.drop_held_fragments(Some(now_ms));
        }
        if !engine.awaiting.is_empty() {
            engine.send_awaiting(now_ms, false);
        }
        engine.flush_all();
        R::Frame::free_burst(&mut engine.dropped);
        let budget = engine.expiry.budget(now_ms);
        engine.state.expire(now_ms, budget);
        self.publish();
    }

    fn answer_trace_queries(&mut self, now_ms: u64) {
        let Some(channel) = &self.trace else { return };
        while let Some(query) = crate::control_queue::take_ready(&channel.queries) {
            let state = &mut self.engine.state;
            let connection = state.conns.lookup(&query.flow, now_ms).and_then(|hit| {
                let conn = state.conns.get(hit.id)?;
                Some((
                    conn.backend,
                    conn.tcp_state.name(),
                    conn.expires_at.saturating_sub(now_ms),
                ))
            });
            let persistent_backend = query
                .persistence
                .and_then(|(client, service)| state.persistence.lookup(client, service, now_ms));
            let _ = channel.answers.try_send(TraceAnswer {
                worker: state.place.index,
                connection,
                persistent_backend,
            });
        }
    }

    fn take_new_tables(&mut self, now_ms: u64) {
        while let Some(tables) = crate::control_queue::take_ready(&self.updates.incoming) {
            let old = std::mem::replace(&mut self.engine.tables, tables);
            // New backends or gateways are asked for in this very turn.
            self.engine.next_hops_resolved_ms = None;
            if let Some(sync) = &mut self.exceptions {
                sync.tables_changed(&old.snapshot, &self.engine.tables.snapshot);
            }
            self.stats
                .generation
                .store(self.engine.tables.snapshot.generation, Ordering::Release);
            let engine = &mut self.engine;
            let retire = self
                .previous
                .replaced(old, &engine.tables, &mut engine.state, now_ms);
            // The control thread frees it; if it is gone we are shutting down and dropping here is fine.
            if let Some(old) = retire {
                let _ = self.updates.retired.try_send(old);
            }
        }
    }

    /// Publishes the connection count; every other counter is counted in place in the shared statistics.
    fn publish(&mut self) {
        self.stats
            .connections
            .store(self.engine.state.conns.len() as u64, Ordering::Relaxed);
    }
}

impl<R: RxQueue, T: TxQueue<Frame = R::Frame>> Engine<R, T> {
    /// Handles a staged burst from port `ingress`, in order: frame i with `staged[i]` and its `PlainFrame` or
    /// `layouts[i]` when `admissions[i]` accepted it, dropped for the reason it gives otherwise. One call per burst,
    /// with the plain lane ([`Engine::handle_plain`]) inlined: a call per frame spent as much on saving and
    /// restoring registers as on some whole steps of the decision. Every other frame takes
    /// [`Engine::handle_admitted`], out of line.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn handle_burst(
        &mut self,
        received: &mut Burst<R::Frame>,
        layouts: &mut [FrameLayout; MAX_BURST],
        admissions: &[Admission; MAX_BURST],
        staged: &[Option<StagedKey>; MAX_BURST],
        ingress: u16,
        now_ms: u64,
        verdict: &mut Action,
    ) {
        for (index, frame) in received.drain(..).enumerate() {
            // A burst holds at most MAX_BURST frames: the remainder is the index itself, and lets the compiler
            // see it in the arrays' range (one loop counter instead of four iterators and their end checks).
            let index = index % MAX_BURST;
            let (admission, staged) = (&admissions[index], &staged[index]);
            let layout = (&mut *layouts, index);
            if let Admission::Plain(plain) = admission {
                self.handle_plain(frame, layout, plain, staged, ingress, now_ms, verdict);
            } else {
                cold_path();
                self.handle_admitted(frame, layout, *admission, staged, ingress, now_ms, verdict);
            }
        }
    }

    /// A frame of the burst the plain lane did not take: parsed into its layout and decided, or dropped for the
    /// reason its admission gives. Out of line, so that the burst's loop is the plain lane's.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn handle_admitted(
        &mut self,
        frame: R::Frame,
        (layouts, index): (&mut [FrameLayout; MAX_BURST], usize),
        admission: Admission,
        staged: &Option<StagedKey>,
        ingress: u16,
        now_ms: u64,
        verdict: &mut Action,
    ) {
        let layout = &mut layouts[index % MAX_BURST];
        match admission {
            Admission::Accepted => self.handle(
                frame,
                layout,
                staged.as_ref(),
                ingress,
                false,
                now_ms,
                verdict,
            ),
            Admission::NotOurMac => self.drop_frame(frame, DropReason::NotOurMac),
            Admission::Malformed => self.drop_malformed(frame),
            Admission::Plain(plain) => self.handle_plain(
                frame,
                (layouts, index),
                &plain,
                staged,
                ingress,
                now_ms,
                verdict,
            ),
        }
    }

    /// Decides and acts on an accepted plain frame: an established connection's frame is forwarded from its
    /// `PlainFrame` alone; any other gets its layout, written into `layouts[index]`, and the full decision. The
    /// `PlainFrame` is read where the burst's first pass stored it (a copy spread its bytes over registers), and
    /// the layout's address is formed only off the established path.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn handle_plain(
        &mut self,
        frame: R::Frame,
        (layouts, index): (&mut [FrameLayout; MAX_BURST], usize),
        plain: &PlainFrame,
        staged: &Option<StagedKey>,
        ingress: u16,
        now_ms: u64,
        verdict: &mut Action,
    ) {
        let established = match staged {
            Some(key) => self.state.decide_plain_established(
                &self.tables.snapshot,
                plain,
                key,
                ingress,
                now_ms,
                verdict,
            ),
            None => Established::Other,
        };
        if let Established::Fast(fast) = established {
            return self.send_fast(frame, plain, fast);
        }
        cold_path();
        self.handle_plain_otherwise(
            frame,
            &mut layouts[index % MAX_BURST],
            *plain,
            staged.as_ref(),
            established,
            ingress,
            now_ms,
            verdict,
        );
    }

    /// A plain frame the established path did not forward itself, given its layout: acted on from the verdict
    /// the established path wrote, or decided in full. Out of line, so that the burst's loop stays small.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn handle_plain_otherwise(
        &mut self,
        frame: R::Frame,
        layout: &mut FrameLayout,
        plain: PlainFrame,
        staged: Option<&StagedKey>,
        established: Established,
        ingress: u16,
        now_ms: u64,
        verdict: &mut Action,
    ) {
        *layout = plain.layout(frame.data());
        let after_miss;
        let staged = match established {
            Established::Forwarded => return self.act(frame, layout, verdict, ingress, now_ms),
            Established::Missed { absent } => {
                after_miss = staged.map(|key| key.after_miss(absent));
                after_miss.as_ref()
            }
            Established::Fast(_) | Established::Other => staged,
        };
        self.state.decide_rest_into(
            &mut self.tables,
            layout,
            staged,
            ingress,
            false,
            now_ms,
            verdict,
        );
        self.act(frame, layout, verdict, ingress, now_ms);
    }

    /// [`Engine::handle`] out of line, for the frames that come one at a time (handed off, or shed under
    /// overload): its body is inlined once more, in [`Engine::handle_admitted`].
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn handle_one(
        &mut self,
        frame: R::Frame,
        layout: &FrameLayout,
        ingress: u16,
        handed_off: bool,
        now_ms: u64,
        verdict: &mut Action,
    ) {
        bump(&self.stats.rx_bytes, frame.data().len() as u64);
        // A handed-off frame passed this check on its own worker.
        if !handed_off && !addressed_to(frame.data(), self.port_mac_word(usize::from(ingress))) {
            cold_path();
            return self.drop_frame(frame, DropReason::NotOurMac);
        }
        self.handle(frame, layout, None, ingress, handed_off, now_ms, verdict);
    }

    /// Decides and acts on an accepted frame: parsed, counted, and addressed to the port (or handed off).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn handle(
        &mut self,
        frame: R::Frame,
        layout: &FrameLayout,
        staged: Option<&StagedKey>,
        ingress: u16,
        handed_off: bool,
        now_ms: u64,
        verdict: &mut Action,
    ) {
        if let Some(path) = &mut self.exception {
            if !handed_off && kernel_wants_copy(layout) {
                cold_path();
                path.copy_to_kernel(&frame, ingress);
            }
        }
        // One branch on a parsed fact: fragments are decided with the fragment table, out of line.
        if layout.fragment == Fragment::None {
            // The common case first, acted on where it was decided: a frame of an established connection.
            let after_miss;
            let staged = match staged {
                Some(key) => match self.state.decide_established(
                    &self.tables.snapshot,
                    layout,
                    key,
                    ingress,
                    now_ms,
                    true,
                    verdict,
                ) {
                    Established::Fast(fast) => return self.send_fast(frame, layout, fast),
                    Established::Forwarded => {
                        return self.act(frame, layout, verdict, ingress, now_ms)
                    }
                    Established::Missed { absent } => {
                        cold_path();
                        after_miss = key.after_miss(absent);
                        Some(&after_miss)
                    }
                    Established::Other => {
                        cold_path();
                        Some(key)
                    }
                },
                None => None,
            };
            self.state.decide_rest_into(
                &mut self.tables,
                layout,
                staged,
                ingress,
                handed_off,
                now_ms,
                verdict,
            );
        } else {
            cold_path();
            match self.decide_fragment(layout, staged, ingress, handed_off, now_ms) {
                FragmentAction::Act(action) => *verdict = action,
                FragmentAction::Hold(datagram) => {
                    return self.hold_fragment(frame, layout, datagram, ingress, handed_off, now_ms)
                }
            }
        }
        self.act(frame, layout, verdict, ingress, now_ms);
        if let Fragment::First { .. } = layout.fragment {
            cold_path();
            self.release_fragments(layout, now_ms);
        }
    }

    /// Carries out the decision about `frame` (taken by reference: the decision just wrote it, and copying it
    /// whole would wait on those stores).
    #[inline(always)]
    fn act(
        &mut self,
        frame: R::Frame,
        layout: &FrameLayout,
        action: &Action,
        ingress: u16,
        now_ms: u64,
    ) {
        match *action {
            Action::Forward(ref forward) => self.forward(frame, layout, forward, now_ms),
            _ => {
                cold_path();
                self.act_otherwise(frame, layout, action, ingress, now_ms)
            }
        }
    }

    /// Every verdict but a forward: answers, the kernel, handoffs and drops, out of line so that the frame
    /// handler the forwards run through stays small.
    #[inline(never)]
    fn act_otherwise(
        &mut self,
        mut frame: R::Frame,
        layout: &FrameLayout,
        action: &Action,
        ingress: u16,
        now_ms: u64,
    ) {
        match *action {
            // Taken by `act` before it calls this; kept whole here so that no verdict goes unanswered.
            Action::Forward(ref forward) => self.forward(frame, layout, forward, now_ms),
            Action::AnswerArp => {
                let mac = self.port_mac(ingress);
                match packet::answer_arp(frame.data_mut(), layout, mac) {
                    Ok(()) => self.answer(frame, ingress),
                    Err(_) => self.drop_frame(frame, DropReason::RewriteFailed),
                }
            }
            Action::AnswerEcho => {
                let mac = self.port_mac(ingress);
                match packet::answer_echo(frame.data_mut(), layout, mac) {
                    Ok(()) => self.answer(frame, ingress),
                    Err(_) => self.drop_frame(frame, DropReason::RewriteFailed),
                }
            }
            Action::AnswerNeighborSolicitation => {
                let mac = self.port_mac(ingress);
                let answered = packet::answer_neighbor_solicitation(frame.data_mut(), layout, mac);
                match answered {
                    Ok(len) if frame.resize(len) => self.answer(frame, ingress),
                    _ => self.drop_frame(frame, DropReason::RewriteFailed),
                }
            }
            Action::TooBig { from, mtu } => {
                self.too_big(&frame, layout, ingress, from, mtu);
                self.dropped_already_counted(frame);
            }
            Action::ToKernel => self.hand_to_kernel(frame, ingress),
            Action::Handoff { worker } => {
                if let Err(refused) = self
                    .handoffs
                    .send(usize::from(worker), Handoff { frame, ingress })
                {
                    self.drop_frame(refused.frame, DropReason::HandoffFull);
                }
            }
            Action::Consumed => {}
            Action::Drop(reason) => self.drop_frame(frame, reason),
        }
    }

    #[cold]
    #[inline(never)]
    fn decide_fragment(
        &mut self,
        layout: &FrameLayout,
        staged: Option<&StagedKey>,
        ingress: u16,
        handed_off: bool,
        now_ms: u64,
    ) -> FragmentAction {
        self.state.decide_fragment(
            &mut self.fragments,
            &mut self.tables,
            layout,
            staged,
            ingress,
            handed_off,
            now_ms,
        )
    }

    /// Holds a later fragment until its first is decided; a full store drops it.
    #[cold]
    #[inline(never)]
    fn hold_fragment(
        &mut self,
        frame: R::Frame,
        layout: &FrameLayout,
        datagram: DatagramKey,
        ingress: u16,
        handed_off: bool,
        now_ms: u64,
    ) {
        let held = HeldFragment {
            datagram,
            frame,
            layout: *layout,
            ingress,
            handed_off,
            since_ms: now_ms,
        };
        match self.held.hold(held) {
            Ok(()) => bump(&self.stats.fragments_held, 1),
            Err(refused) => self.drop_frame(refused, DropReason::FragmentHoldFull),
        }
    }

    /// Decides again, now that `first` was decided, the later fragments of its datagram that came before it.
    #[cold]
    #[inline(never)]
    fn release_fragments(&mut self, first: &FrameLayout, now_ms: u64) {
        if self.held.is_empty() {
            return;
        }
        let Some(datagram) = DatagramKey::of(first) else {
            return;
        };
        let mut released = ArrayVec::<_, HELD_FRAGMENTS>::new();
        self.held.take_datagram(&datagram, &mut released);
        for held in released {
            match self.decide_fragment(&held.layout, None, held.ingress, held.handed_off, now_ms) {
                FragmentAction::Act(action) => {
                    self.act(held.frame, &held.layout, &action, held.ingress, now_ms)
                }
                // The first's record is gone already (a table far too small): the fragment cannot be placed.
                FragmentAction::Hold(_) => {
                    self.drop_frame(held.frame, DropReason::FragmentWithoutFirst)
                }
            }
        }
    }

    /// Drops the held fragments whose first did not come in time (by `now_ms`), or all of them (`None`: the worker
    /// stops).
    #[cold]
    #[inline(never)]
    fn drop_held_fragments(&mut self, now_ms: Option<u64>) {
        let mut expired = ArrayVec::<_, HELD_FRAGMENTS>::new();
        match now_ms {
            Some(now_ms) => self.held.take_expired(now_ms, &mut expired),
            None => self.held.take_all(&mut expired),
        }
        for held in expired {
            self.drop_frame(held.frame, DropReason::FragmentWithoutFirst);
        }
    }

    #[inline(always)]
    fn forward(&mut self, frame: R::Frame, layout: &FrameLayout, forward: &Forward, now_ms: u64) {
        let port = usize::from(forward.port);
        if port >= self.ports.len() {
            cold_path();
            return self.drop_frame(frame, DropReason::NoRoute);
        }
        // A connection is counted when it is opened, even if this first frame waits for neighbour resolution.
        if forward.opened {
            cold_path();
            if let Some(backend) = forward
                .backend
                .and_then(|id| self.stats.backends.get(id.0 as usize))
            {
                bump(&backend.connections, 1);
            }
        }
        let next_hop_mac = if forward.next_hop_mac.is_known() {
            forward.next_hop_mac
        } else {
            cold_path();
            match self.neighbor_mac(forward.port, forward.next_hop, now_ms) {
                Some(mac) => MacWord::new(mac),
                None => return self.await_neighbor(frame, layout, forward, now_ms),
            }
        };
        self.send_forward(frame, layout, forward, next_hop_mac);
    }

    /// A frame of an established connection, forwarded as [`FastForward`] says (its next hop's MAC known): as
    /// [`Engine::forward`] would forward the [`Action`] it stands for.
    #[inline(always)]
    fn send_fast(&mut self, mut frame: R::Frame, layout: &impl IpHeaders, fast: FastForward) {
        if rewrite_from_entry(
            &mut frame,
            layout,
            fast.rewrite,
            &self.state,
            &self.tables.snapshot,
        )
        .is_err()
        {
            cold_path();
            return self.drop_frame(frame, DropReason::RewriteFailed);
        }
        self.send_rewritten(
            frame,
            usize::from(fast.port),
            fast.next_hop_mac,
            Some(fast.backend),
            fast.reply,
        );
    }

    /// The rest of a forward once the next hop's MAC is known: rewrite, MACs, counters, transmit queue.
    #[inline(always)]
    fn send_forward(
        &mut self,
        mut frame: R::Frame,
        layout: &FrameLayout,
        forward: &Forward,
        next_hop_mac: MacWord,
    ) {
        let port = usize::from(forward.port);
        if rewrite(
            &mut frame,
            layout,
            &forward.rewrite,
            &self.state,
            &self.tables.snapshot,
        )
        .is_err()
        {
            cold_path();
            return self.not_rewritten_in_place(frame, layout, forward, next_hop_mac);
        }
        if forward.untracked {
            cold_path();
            bump(&self.stats.untracked, 1);
        }
        self.send_rewritten(frame, port, next_hop_mac, forward.backend, forward.reply);
    }

    /// A rewritten frame on its way out of `port` to `next_hop_mac`: its MACs, the counters (of `backend`, in the
    /// direction `reply` says), the transmit queue. A port the worker does not have drops it (`no_route`).
    #[inline(always)]
    fn send_rewritten(
        &mut self,
        mut frame: R::Frame,
        port: usize,
        next_hop_mac: MacWord,
        backend: Option<balancer::service::BackendId>,
        reply: bool,
    ) {
        let Some(output) = self.outputs.get_mut(port) else {
            cold_path();
            return self.drop_frame(frame, DropReason::NoRoute);
        };
        if packet::set_macs_word(frame.data_mut(), output.source_mac, next_hop_mac).is_err() {
            cold_path();
            return self.drop_frame(frame, DropReason::RewriteFailed);
        }
        if let Some(backend) = backend.and_then(|id| self.stats.backends.get(id.0 as usize)) {
            let bytes = frame.data().len() as u64;
            if reply {
                bump(&backend.packets_out, 1);
                bump(&backend.bytes_out, bytes);
            } else {
                bump(&backend.packets_in, 1);
                bump(&backend.bytes_in, bytes);
            }
        }
        bump(&self.stats.forwarded, 1);
        // One check on the common path: a full burst is sent, then the frame is queued behind it.
        let Err(full) = output.pending.try_push(frame) else {
            return;
        };
        cold_path();
        self.enqueue_after_flush(port, full.element());
    }

    /// A frame the in-place rewrite refused: a tunnel that sends it in fragments, or a failure.
    #[cold]
    #[inline(never)]
    fn not_rewritten_in_place(
        &mut self,
        frame: R::Frame,
        layout: &FrameLayout,
        forward: &Forward,
        next_hop_mac: MacWord,
    ) {
        let Some(next_hop_mac) = next_hop_mac.get() else {
            return self.drop_frame(frame, DropReason::RewriteFailed);
        };
        match forward.rewrite {
            Rewrite::EncapsulateInFragments {
                outer_src,
                outer_dst,
                mtu,
            } => self.send_in_tunnel_fragments(
                frame,
                layout,
                forward,
                next_hop_mac,
                (outer_src, outer_dst, mtu),
            ),
            _ => self.drop_frame(frame, DropReason::RewriteFailed),
        }
    }

    /// Encapsulates `frame` and sends the outer packet in fragments that fit the egress MTU, each in a frame of
    /// its own; the original is freed. A fragment that cannot be built drops the rest (`rewrite_failed`).
    fn send_in_tunnel_fragments(
        &mut self,
        frame: R::Frame,
        layout: &FrameLayout,
        forward: &Forward,
        next_hop_mac: [u8; 6],
        (outer_src, outer_dst, mtu): (std::net::Ipv4Addr, std::net::Ipv4Addr, u16),
    ) {
        let port = usize::from(forward.port);
        let source_mac = self.ports[port].mac;
        // Identifications differ between workers: each steps by the number of workers from its own index.
        let id = self.tunnel_fragment_id;
        self.tunnel_fragment_id = id.wrapping_add(self.state.place.workers.max(1));
        let room = usize::from(layout.l2_len)
            + packet::IPV4_HEADER_LEN
            + packet::tunnel_fragment_payload(mtu).unwrap_or(0);
        for index in 0.. {
            let Some(mut piece) = self.ports[port].tx.alloc() else {
                self.count_drop(DropReason::RewriteFailed);
                break;
            };
            let built = if piece.resize(room) {
                packet::build_tunnel_fragment(
                    piece.data_mut(),
                    frame.data(),
                    layout,
                    (outer_src, outer_dst),
                    id,
                    mtu,
                    index,
                )
            } else {
                Err(packet::ParseError::Truncated)
            };
            match built {
                Ok(Some(len))
                    if piece.resize(len)
                        && packet::set_macs(piece.data_mut(), source_mac, next_hop_mac).is_ok() =>
                {
                    self.enqueue(port, piece);
                }
                Ok(None) => {
                    self.dropped_already_counted(piece);
                    if let Some(backend) = forward
                        .backend
                        .and_then(|id| self.stats.backends.get(id.0 as usize))
                    {
                        bump(&backend.packets_in, 1);
                        bump(&backend.bytes_in, frame.data().len() as u64);
                    }
                    bump(&self.stats.forwarded, 1);
                    break;
                }
                _ => {
                    self.drop_frame(piece, DropReason::RewriteFailed);
                    break;
                }
            }
        }
        self.dropped_already_counted(frame);
    }

    /// The MAC of `next_hop` on `port` from the neighbour table; a stale entry is used while it is asked again.
    #[inline(always)]
    fn neighbor_mac(&mut self, port: u16, next_hop: IpAddr, now_ms: u64) -> Option<[u8; 6]> {
        match self.state.neighbors.lookup(port, next_hop, now_ms) {
            Neighbor::Reachable(mac) => Some(mac),
            Neighbor::Stale(mac) => {
                self.resolve(port, next_hop, now_ms);
                Some(mac)
            }
            Neighbor::Unresolved => None,
        }
    }

    /// Keeps a decided frame until its next hop is resolved (asking for it now); a full queue drops it.
    #[cold]
    #[inline(never)]
    fn await_neighbor(
        &mut self,
        frame: R::Frame,
        layout: &FrameLayout,
        forward: &Forward,
        now_ms: u64,
    ) {
        self.resolve(forward.port, forward.next_hop, now_ms);
        // The frame outlives its decision: it keeps the rewrite itself, not a reference to its connection.
        let Some(rewrite) = self
            .state
            .concrete_rewrite(&self.tables.snapshot, forward.rewrite)
        else {
            return self.drop_frame(frame, DropReason::RewriteFailed);
        };
        let waiting = AwaitingFrame {
            frame,
            layout: *layout,
            forward: Forward {
                rewrite,
                ..*forward
            },
            since_ms: now_ms,
        };
        if let Err(refused) = self.awaiting.wait(waiting) {
            self.drop_frame(refused, DropReason::NeighborUnresolved);
        }
    }

    /// Sends the waiting frames whose next hop is now resolved, drops those that waited their time (all of them
    /// when `stopping`), and asks again for the others.
    #[cold]
    #[inline(never)]
    fn send_awaiting(&mut self, now_ms: u64, stopping: bool) {
        let mut waiting = ArrayVec::<_, AWAITING_FRAMES>::new();
        self.awaiting.take_all(now_ms, &mut waiting);
        for (frame, expired) in waiting {
            let (port, next_hop) = (frame.forward.port, frame.forward.next_hop);
            match self.state.neighbors.lookup(port, next_hop, now_ms) {
                Neighbor::Reachable(mac) | Neighbor::Stale(mac) => self.send_forward(
                    frame.frame,
                    &frame.layout,
                    &frame.forward,
                    MacWord::new(mac),
                ),
                Neighbor::Unresolved if expired || stopping => {
                    self.drop_frame(frame.frame, DropReason::NeighborUnresolved)
                }
                Neighbor::Unresolved => {
                    self.resolve(port, next_hop, now_ms);
                    // Room is certain: the queue was just emptied.
                    if let Err(refused) = self.awaiting.wait(frame) {
                        self.drop_frame(refused, DropReason::NeighborUnresolved);
                    }
                }
            }
        }
    }

    /// Asks, from worker 0, for every configured next hop without a fresh MAC: at start, after a reload, and
    /// whenever an entry went stale, so that answers keep the entries of backends and gateways reachable.
    #[cold]
    #[inline(never)]
    fn resolve_next_hops(&mut self, now_ms: u64) {
        let snapshot = Arc::clone(&self.tables.snapshot);
        for (port, next_hop) in snapshot.next_hops_to_resolve() {
            if !matches!(
                self.state.neighbors.lookup(port, next_hop, now_ms),
                Neighbor::Reachable(_)
            ) {
                self.resolve(port, next_hop, now_ms);
            }
        }
    }

    fn answer(&mut self, frame: R::Frame, ingress: u16) {
        bump(&self.stats.answered, 1);
        self.enqueue(usize::from(ingress), frame);
    }

    fn too_big(
        &mut self,
        original: &R::Frame,
        layout: &FrameLayout,
        ingress: u16,
        from: IpAddr,
        mtu: u16,
    ) {
        let port = usize::from(ingress);
        let Some(mut answer) = self
            .ports
            .get_mut(port)
            .and_then(|queues| queues.tx.alloc())
        else {
            return self.count_drop(DropReason::TooBig);
        };
        if !answer.resize(TOO_BIG_ROOM) {
            return self.count_drop(DropReason::TooBig);
        }
        let mac = self.port_mac(ingress);
        match packet::build_too_big(answer.data_mut(), original.data(), layout, from, mtu, mac) {
            Ok(len) if answer.resize(len) => {
                // The original is dropped (counted as too big); the sender learns the path MTU.
                self.count_drop(DropReason::TooBig);
                self.answer(answer, ingress);
            }
            _ => self.count_drop(DropReason::TooBig),
        }
    }

    /// Sends an ARP request or neighbour solicitation for `target` out of `port`, at most once per interval,
    /// with an entry in the neighbour table waiting for the answer (only answers for such entries are taken).
    fn resolve(&mut self, port: u16, target: IpAddr, now_ms: u64) {
        if !self.throttle.allow(target, now_ms) {
            return;
        }
        // A full table (every slot near the address live) leaves the frame to wait and, unanswered, be dropped.
        if self.state.neighbors.expect(port, target, now_ms).is_err() {
            return;
        }
        let Some(source) = self.tables.snapshot.port_address(port, target.is_ipv4()) else {
            return;
        };
        let index = usize::from(port);
        let mac = self.ports[index].mac;
        let Some(mut request) = self.ports[index].tx.alloc() else {
            return;
        };
        if !request.resize(RESOLUTION_ROOM) {
            return;
        }
        let built = match (source, target) {
            (IpAddr::V4(source), IpAddr::V4(target)) => {
                packet::build_arp_request(request.data_mut(), mac, source, target, None)
            }
            (IpAddr::V6(source), IpAddr::V6(target)) => {
                packet::build_neighbor_solicitation(request.data_mut(), mac, source, target, None)
            }
            _ => return,
        };
        if let Ok(len) = built {
            if request.resize(len) {
                bump(&self.stats.resolutions_sent, 1);
                self.enqueue(index, request);
            }
        }
    }

    /// Frames for the kernel go to the ingress port's kernel interface; a port without one drops them.
    fn hand_to_kernel(&mut self, frame: R::Frame, ingress: u16) {
        if let Some(path) = &mut self.exception {
            match path.queue_for_kernel(frame, ingress) {
                Ok(()) => bump(&self.stats.to_kernel, 1),
                Err(frame) => self.drop_frame(frame, DropReason::NotOurs),
            }
            return;
        }
        self.drop_frame(frame, DropReason::NotOurs);
    }

    /// Sends what the kernel interfaces have for each port straight out of the port; returns how many frames.
    fn send_kernel_frames(&mut self) -> usize {
        let Some(path) = &mut self.exception else {
            return 0;
        };
        let mut received = 0;
        for (index, queues) in self.ports.iter_mut().enumerate() {
            received += path.send_port_frames(index, &mut queues.tx, queues.vlan);
        }
        received
    }

    /// Port `port`'s MAC as [`addressed_to`] compares it ([`NO_PORT_MAC`] for a port the worker does not have).
    #[inline(always)]
    fn port_mac_word(&self, port: usize) -> u64 {
        self.port_mac_words
            .get(port)
            .copied()
            .unwrap_or(NO_PORT_MAC)
    }

    fn port_mac(&self, port: u16) -> [u8; 6] {
        self.ports
            .get(usize::from(port))
            .map_or([0; 6], |queues| queues.mac)
    }

    #[inline(always)]
    fn enqueue(&mut self, port: usize, frame: R::Frame) {
        // One check on the common path: a full burst is sent, then the frame is queued behind it.
        let Err(full) = self.outputs[port].pending.try_push(frame) else {
            return;
        };
        cold_path();
        self.enqueue_after_flush(port, full.element());
    }

    /// Queues `frame` for `port` after sending the full burst ahead of it.
    #[inline(never)]
    fn enqueue_after_flush(&mut self, port: usize, frame: R::Frame) {
        self.flush(port);
        if let Err(full) = self.outputs[port].pending.try_push(frame) {
            self.drop_frame(full.element(), DropReason::TxFull);
        }
    }

    /// A frame the parser refused: its bytes are counted as received, the frame as a malformed drop.
    fn drop_malformed(&mut self, frame: R::Frame) {
        bump(&self.stats.rx_bytes, frame.data().len() as u64);
        self.drop_frame(frame, DropReason::Malformed);
    }

    /// Counts `frame` as dropped for `reason` and keeps it to be freed with the others at the end of the poll.
    #[inline]
    fn drop_frame(&mut self, frame: R::Frame, reason: DropReason) {
        self.count_drop(reason);
        self.dropped_already_counted(frame);
    }

    #[inline]
    fn count_drop(&mut self, reason: DropReason) {
        bump(&self.stats.drops[reason.index()], 1);
    }

    /// Keeps a frame whose fate is already counted, to be freed in bulk.
    #[inline]
    fn dropped_already_counted(&mut self, frame: R::Frame) {
        if self.dropped.is_full() {
            R::Frame::free_burst(&mut self.dropped);
        }
        // Cannot fail: the burst was emptied when full.
        let _ = self.dropped.try_push(frame);
    }

    fn flush(&mut self, port: usize) {
        if let Some(vlan) = self.ports[port].vlan {
            self.tag_pending(port, vlan);
        }
        let pending = &mut self.outputs[port].pending;
        let tx = &mut self.ports[port].tx;
        let sent = transmit(tx, pending, self.config.tx_attempts, &self.stats.drops);
        bump(&self.stats.tx, sent);
    }

    /// Keeps the frames of `burst` tagged with the port's `vlan`, stripped; counts the others as `vlan_tagged`.
    /// Returns how many are kept.
    #[cold]
    #[inline(never)]
    fn admit_tagged(&mut self, burst: &mut Burst<R::Frame>, vlan: u16) -> usize {
        let refused = crate::vlan::admit(burst, vlan, &mut self.dropped);
        bump(
            &self.stats.drops[DropReason::VlanTagged.index()],
            refused as u64,
        );
        burst.len()
    }

    /// Tags what is about to leave port `port` with its `vlan`.
    #[cold]
    #[inline(never)]
    fn tag_pending(&mut self, port: usize, vlan: u16) {
        let refused = crate::vlan::tag(&mut self.outputs[port].pending, vlan, &mut self.dropped);
        bump(
            &self.stats.drops[DropReason::RewriteFailed.index()],
            refused as u64,
        );
    }

    fn flush_all(&mut self) {
        let (stats, dropped) = (&self.stats, &mut self.dropped);
        let handed_off = self.handoffs.flush(|refused| {
            bump(&stats.drops[DropReason::HandoffFull.index()], 1);
            if dropped.is_full() {
                R::Frame::free_burst(dropped);
            }
            let _ = dropped.try_push(refused.frame);
        });
        bump(&stats.handed_off, handed_off as u64);
        for port in 0..self.ports.len() {
            if !self.outputs[port].pending.is_empty() {
                self.flush(port);
            }
        }
        if let Some(path) = &mut self.exception {
            path.flush();
        }
    }
}

/// A port's output side, as a forward writes it.
struct PortOutput<F> {
    /// The port's MAC, the source of what leaves by it.
    source_mac: [u8; 6],
    /// Frames waiting for the next transmit burst.
    pending: Burst<F>,
}

/// Room asked for a frame that will hold an ICMP too-big answer (IPv6 quotes up to 1280 bytes in all).
const TOO_BIG_ROOM: usize = 1294 + 8;
/// Room for an ARP request or a neighbour solicitation (with up to two VLAN tags).
const RESOLUTION_ROOM: usize = 128;

/// Transmits `pending`, retrying at most `attempts` times; drops (and counts) what the device would not take.
fn transmit<T: TxQueue>(
    tx: &mut T,
    pending: &mut Burst<T::Frame>,
    attempts: u32,
    drops: &[AtomicU64; DropReason::COUNT],
) -> u64 {
    let mut sent = 0u64;
    for _ in 0..attempts.max(1) {
        if pending.is_empty() {
            break;
        }
        sent += tx.tx_burst(pending) as u64;
    }
    if !pending.is_empty() {
        bump(&drops[DropReason::TxFull.index()], pending.len() as u64);
        T::Frame::free_burst(pending);
    }
    sent
}

/// Applies `rewrite`, held by a connection entry or the snapshot, to `frame` in place.
#[inline(always)]
fn rewrite_from_entry<F: Frame>(
    frame: &mut F,
    layout: &impl IpHeaders,
    rewrite: EntryRewrite,
    state: &WorkerState,
    snapshot: &Snapshot,
) -> Result<(), packet::ParseError> {
    match rewrite {
        EntryRewrite::MacsOnly => Ok(()),
        EntryRewrite::Connection(id) => state.rewrite_client(id, frame.data_mut(), layout),
        EntryRewrite::Reply(id) => state.rewrite_reply(id, frame.data_mut(), layout),
        EntryRewrite::Tunnel(backend) => {
            let Some(tunnel) = snapshot.tunnel(backend) else {
                cold_path();
                return Err(packet::ParseError::Unsupported("tunnel gone"));
            };
            wrap(frame, layout, &tunnel.header)
        }
    }
}

/// Applies `rewrite` to `frame` in place (taken by reference: the verdict was just written, and copying it whole
/// would wait on those stores). Inlined: the common rewrites are a few stores, and a call cost more.
#[inline(always)]
fn rewrite<F: Frame>(
    frame: &mut F,
    layout: &FrameLayout,
    rewrite: &Rewrite,
    state: &WorkerState,
    snapshot: &Snapshot,
) -> Result<(), packet::ParseError> {
    let from_entry =
        |frame: &mut F, rewrite| rewrite_from_entry(frame, layout, rewrite, state, snapshot);
    match rewrite {
        Rewrite::MacsOnly => Ok(()),
        Rewrite::Connection(id) => from_entry(frame, EntryRewrite::Connection(*id)),
        Rewrite::Reply(id) => from_entry(frame, EntryRewrite::Reply(*id)),
        Rewrite::Tunnel(backend) => from_entry(frame, EntryRewrite::Tunnel(*backend)),
        Rewrite::Destination { addr, port } => {
            packet::rewrite_destination(frame.data_mut(), layout, addr, *port)
        }
        Rewrite::Source { addr, port } => {
            packet::rewrite_source(frame.data_mut(), layout, addr, *port)
        }
        Rewrite::SourceAndDestination {
            src,
            src_port,
            dst,
            dst_port,
        } => packet::rewrite_source_and_destination(
            frame.data_mut(),
            layout,
            src,
            *src_port,
            dst,
            *dst_port,
        ),
        // Several frames from one: the worker sends them (`Engine::send_in_tunnel_fragments`).
        Rewrite::EncapsulateInFragments { .. } => {
            Err(packet::ParseError::Unsupported("sent in fragments"))
        }
        Rewrite::Encapsulate {
            outer_src,
            outer_dst,
        } => match packet::TunnelHeader::new(outer_src, outer_dst) {
            Some(header) => wrap(frame, layout, &header),
            None => Err(packet::ParseError::Unsupported(
                "encapsulation between address families",
            )),
        },
        Rewrite::IcmpError {
            destination,
            source,
        } => {
            if let Some((addr, port)) = destination {
                packet::rewrite_icmp_error_destination(
                    frame.data_mut(),
                    layout,
                    *addr,
                    *addr,
                    *port,
                )?;
            }
            if let Some((addr, port)) = source {
                packet::rewrite_icmp_error_source(frame.data_mut(), layout, *addr, *addr, *port)?;
            }
            Ok(())
        }
    }
}

/// `frame` grown at the front by `header` and wrapped in it.
#[inline(always)]
fn wrap<F: Frame>(
    frame: &mut F,
    layout: &impl IpHeaders,
    header: &packet::TunnelHeader,
) -> Result<(), packet::ParseError> {
    if !frame.prepend(header.len()) {
        return Err(packet::ParseError::Truncated);
    }
    header.write(frame.data_mut(), layout)
}

/// What the burst's first pass made of a frame, before any decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admission {
    /// A plain TCP or UDP frame (`packet::parse_plain`), addressed to the port: decided, its layout not written.
    Plain(PlainFrame),
    /// Parsed into its layout, and addressed to the port: decided.
    Accepted,
    /// Parsed, but addressed to another host's MAC (the ports are promiscuous): dropped as `not_our_mac`.
    NotOurMac,
    /// Refused by the parser: dropped as malformed.
    Malformed,
}

/// Whether the frame starting `data` is addressed to the port whose MAC is `port_mac` (as [`mac_word`] forms it):
/// its MAC, or a group address (broadcast and multicast, which the decision sorts: ARP, neighbour discovery, and
/// what the kernel path serves).
#[inline(always)]
fn addressed_to(data: &[u8], port_mac: u64) -> bool {
    // The destination MAC as the high 48 bits of one word (a parsed frame has at least 14 bytes; the shift drops
    // the source MAC's first two bytes): one load, one shift and one compare instead of a six-byte comparison.
    let Some(head) = data.first_chunk::<8>() else {
        return false;
    };
    let word = u64::from_le_bytes(*head);
    if word & 1 != 0 {
        cold_path();
        return true;
    }
    port_mac == word << 16
}

/// What [`Engine::port_mac_word`] gives for a port the worker does not have: no destination equals it (a
/// shifted destination's low 16 bits are zero).
const NO_PORT_MAC: u64 = u64::MAX;

/// `mac` as the high 48 bits of a little-endian word, the form [`addressed_to`] compares.
#[inline(always)]
fn mac_word(mac: [u8; 6]) -> u64 {
    u64::from_le_bytes([0, 0, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]])
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{addressed_to, mac_word, NO_PORT_MAC};

    proptest! {
        /// A frame is the port's when its destination MAC (the first six bytes) is the port's MAC or a group
        /// address, whatever follows; a port the worker does not have takes only group addresses.
        #[test]
        fn a_frame_is_addressed_to_its_destination_mac(
            port in any::<[u8; 6]>(),
            differ_at in 0..7usize,
            flip in 1..=255u8,
            rest in any::<[u8; 8]>(),
        ) {
            // The port's MAC itself (differ_at 6), or it with one byte changed.
            let mut destination = port;
            if let Some(byte) = destination.get_mut(differ_at) {
                *byte ^= flip;
            }
            let mut frame = destination.to_vec();
            frame.extend_from_slice(&rest);
            let group = destination[0] & 1 != 0;
            prop_assert_eq!(addressed_to(&frame, mac_word(port)), group || destination == port);
            prop_assert_eq!(addressed_to(&frame, NO_PORT_MAC), group);
            prop_assert!(!addressed_to(&frame[..7], mac_word(port)));
        }
    }
}
