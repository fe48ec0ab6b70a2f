//! The kernel exception path as a worker sees it: for each data port, the queues of a kernel interface (a DPDK
//! `net_tap` in the binary) that shares the port's MAC and addresses.
//!
//! - Frames the balancer has no use for (`Action::ToKernel`: BGP and BFD to the node's address, traffic for a VIP
//!   port without a service, multicast) are queued to the port's kernel interface and flushed once per poll.
//! - ARP and IPv6 neighbour solicitations and advertisements are *copied* to the kernel before the decision uses
//!   them: the balancer still answers and learns from them, and the kernel can resolve its own peers (its BGP
//!   neighbour) through frames that the balancer would otherwise consume.
//! - What the kernel sends out of the interface leaves through the port. It is polled first in every turn and sent
//!   straight to the port's transmit queue, ahead of the turn's data, so that control traffic never waits behind
//!   a burst of data frames.
//!
//! Nothing is routed here: a frame from the kernel interface of port p only ever leaves through port p, and the
//! binary turns IP forwarding off on the kernel interfaces so that the kernel does not route between ports either.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use balancer::snapshot::Snapshot;
use packet::{FrameLayout, IcmpKind, L3};

use crate::io::{Burst, Frame, RxQueue, TxQueue, MAX_BURST};

/// One data port's kernel interface: `rx` is what the kernel sends, `tx` goes to the kernel.
pub struct KernelQueues<R, T> {
    pub rx: R,
    pub tx: T,
}

/// Counters of one worker's exception path, written only by that worker.
#[derive(Debug, Default)]
pub struct KernelStats {
    /// Frames handed to the kernel (`ToKernel`).
    pub to_kernel: AtomicU64,
    /// ARP and neighbour-discovery frames copied to the kernel.
    pub copied: AtomicU64,
    /// Frames the kernel sent, transmitted on the port.
    pub from_kernel: AtomicU64,
    /// Frames for the kernel that its interface did not take, or that could not be copied (pool empty).
    pub to_kernel_dropped: AtomicU64,
    /// Frames from the kernel that the port did not take after every attempt.
    pub from_kernel_dropped: AtomicU64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    to_kernel: u64,
    copied: u64,
    from_kernel: u64,
    to_kernel_dropped: u64,
    from_kernel_dropped: u64,
}

/// A worker's exception path over every data port (index = port number; `None` where a port has no kernel
/// interface).
pub struct KernelPath<R: RxQueue, T: TxQueue<Frame = R::Frame>> {
    queues: Vec<Option<KernelQueues<R, T>>>,
    pending: Vec<Burst<R::Frame>>,
    received: Burst<R::Frame>,
    counts: Counts,
    stats: Arc<KernelStats>,
    /// Transmit attempts for frames from the kernel before they are dropped and counted.
    attempts: u32,
}

/// Whether the kernel needs a copy of this frame to resolve its own neighbours.
pub fn kernel_wants_copy(layout: &FrameLayout) -> bool {
    layout.l3 == L3::Arp
        || matches!(
            layout.icmp,
            IcmpKind::NeighborSolicitation { .. } | IcmpKind::NeighborAdvertisement { .. }
        )
}

/// Whether a frame is the node's own control traffic, which keeps its place when the worker sheds data under
/// overload (`crate::worker::overload`): ARP and neighbour discovery, and IP to one of the ports' own addresses:
/// BGP and BFD sessions, ICMP to the node, the health checks' answers. A VIP, a FULLNAT local address or anyone
/// else's address is data.
pub fn is_control(layout: &FrameLayout, snapshot: &Snapshot) -> bool {
    kernel_wants_copy(layout)
        || (matches!(layout.l3, L3::Ipv4 | L3::Ipv6)
            && snapshot
                .owned(layout.flow.dst_addr)
                .is_some_and(|owned| owned.port_address && !owned.vip))
}

impl<R: RxQueue, T: TxQueue<Frame = R::Frame>> KernelPath<R, T> {
    pub fn new(queues: Vec<Option<KernelQueues<R, T>>>) -> KernelPath<R, T> {
        KernelPath {
            pending: queues.iter().map(|_| Burst::new()).collect(),
            queues,
            received: Burst::new(),
            counts: Counts::default(),
            stats: Arc::new(KernelStats::default()),
            attempts: 8,
        }
    }

    pub fn stats(&self) -> Arc<KernelStats> {
        Arc::clone(&self.stats)
    }

    /// Whether `port` has a kernel interface.
    pub fn serves(&self, port: u16) -> bool {
        matches!(self.queues.get(usize::from(port)), Some(Some(_)))
    }

    /// Queues `frame`, which arrived on `port`, for the port's kernel interface; gives it back when the port has
    /// none.
    pub fn queue_for_kernel(&mut self, frame: R::Frame, port: u16) -> Result<(), R::Frame> {
        let index = usize::from(port);
        if !self.serves(port) {
            return Err(frame);
        }
        if self.pending[index].is_full() {
            self.flush_port(index);
        }
        match self.pending[index].try_push(frame) {
            Ok(()) => self.counts.to_kernel += 1,
            Err(_) => self.counts.to_kernel_dropped += 1,
        }
        Ok(())
    }

    /// Copies `frame` (ARP or neighbour discovery that arrived on `port`) to the port's kernel interface. Out of
    /// line: the frame handler calls it for few frames.
    #[inline(never)]
    pub fn copy_to_kernel(&mut self, frame: &R::Frame, port: u16) {
        let index = usize::from(port);
        let Some(Some(queues)) = self.queues.get_mut(index) else {
            return;
        };
        let data = frame.data();
        let Some(mut copy) = queues.tx.alloc() else {
            self.counts.to_kernel_dropped += 1;
            return;
        };
        if !copy.resize(data.len()) {
            self.counts.to_kernel_dropped += 1;
            return;
        }
        copy.data_mut().copy_from_slice(data);
        if self.pending[index].is_full() {
            self.flush_port(index);
        }
        match self.pending[index].try_push(copy) {
            Ok(()) => self.counts.copied += 1,
            Err(_) => self.counts.to_kernel_dropped += 1,
        }
    }

    /// Receives what the kernel sent on port `index`'s interface (up to a burst) and transmits it on `port_tx`,
    /// retrying; returns how many frames it received.
    pub fn send_port_frames(&mut self, index: usize, port_tx: &mut T, vlan: Option<u16>) -> usize {
        let Some(Some(queues)) = self.queues.get_mut(index) else {
            return 0;
        };
        let got = queues.rx.rx_burst(&mut self.received, MAX_BURST);
        if got == 0 {
            return 0;
        }
        self.counts.from_kernel += got as u64;
        if let Some(vlan) = vlan {
            // The kernel interface is the port's VLAN: what it sends is tagged on the wire.
            self.counts.from_kernel_dropped +=
                crate::vlan::tag_or_drop(&mut self.received, vlan) as u64;
        }
        for _ in 0..self.attempts {
            if self.received.is_empty() {
                break;
            }
            port_tx.tx_burst(&mut self.received);
        }
        if !self.received.is_empty() {
            self.counts.from_kernel_dropped += self.received.len() as u64;
            self.received.clear();
        }
        got
    }

    fn flush_port(&mut self, index: usize) {
        let Some(Some(queues)) = self.queues.get_mut(index) else {
            return;
        };
        let pending = &mut self.pending[index];
        for _ in 0..self.attempts {
            if pending.is_empty() {
                break;
            }
            queues.tx.tx_burst(pending);
        }
        if !pending.is_empty() {
            self.counts.to_kernel_dropped += pending.len() as u64;
            pending.clear();
        }
    }

    /// Sends everything queued for the kernel and publishes the counters. Call once per turn.
    pub fn flush(&mut self) {
        for index in 0..self.pending.len() {
            if !self.pending[index].is_empty() {
                self.flush_port(index);
            }
        }
        let counts = self.counts;
        let stats = &self.stats;
        stats.to_kernel.store(counts.to_kernel, Ordering::Relaxed);
        stats.copied.store(counts.copied, Ordering::Relaxed);
        stats
            .from_kernel
            .store(counts.from_kernel, Ordering::Relaxed);
        stats
            .to_kernel_dropped
            .store(counts.to_kernel_dropped, Ordering::Relaxed);
        stats
            .from_kernel_dropped
            .store(counts.from_kernel_dropped, Ordering::Relaxed);
    }
}
