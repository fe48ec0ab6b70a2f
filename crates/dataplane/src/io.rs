//! Packet I/O as the worker loop sees it: frames it can rewrite in place, and per-worker receive and transmit
//! queues that move fixed-size bursts. DPDK ports implement it in the binary; [`memory`] implements it on plain
//! memory for tests and benchmarks.

use arrayvec::ArrayVec;

/// The largest burst a worker moves at once.
pub const MAX_BURST: usize = 64;

/// A burst of frames: fixed capacity, never allocates.
pub type Burst<F> = ArrayVec<F, MAX_BURST>;

/// One frame owned by the worker.
pub trait Frame: Send {
    fn data(&self) -> &[u8];
    fn data_mut(&mut self) -> &mut [u8];
    /// Grows the frame by `len` bytes at the front (headroom); false when there is no room.
    fn prepend(&mut self, len: usize) -> bool;
    /// Sets the frame's length, growing or shrinking at the tail; false when it cannot grow that far.
    fn resize(&mut self, len: usize) -> bool;
    /// The device's RSS hash, when it computed one.
    fn rss_hash(&self) -> Option<u32> {
        None
    }
    /// Whether the device verified the IPv4 header checksum and found it good (the parser then skips it).
    #[inline]
    fn ipv4_checksum_good(&self) -> bool {
        false
    }
    /// Hint that the frame's first bytes will be read soon.
    #[inline]
    fn prefetch(&self) {}
    /// Hint that the cache line at `address` will be read soon (any address: a prefetch never faults). The I/O
    /// edge's own instruction, statically dispatched so that the staged lookups of a burst inline it.
    #[inline]
    fn prefetch_address(address: *const u8)
    where
        Self: Sized,
    {
        let _ = address;
    }
    /// Frees every frame of `frames` at once, leaving it empty (devices return buffers to their pool in bulk).
    fn free_burst(frames: &mut Burst<Self>)
    where
        Self: Sized,
    {
        frames.clear();
    }
}

/// A worker's receive queue on one port.
pub trait RxQueue: Send {
    type Frame: Frame;
    /// Receives up to `max` frames (and no more than `burst` has room for) into `burst`; returns how many.
    fn rx_burst(&mut self, burst: &mut Burst<Self::Frame>, max: usize) -> usize;
}

/// A worker's transmit queue on one port, and where it gets new frames from.
pub trait TxQueue: Send {
    type Frame: Frame;
    /// Sends frames from the front of `burst`, removing those the device took; returns how many. Frames it did
    /// not take stay in `burst` for a retry.
    fn tx_burst(&mut self, burst: &mut Burst<Self::Frame>) -> usize;
    /// A new, empty frame (for answers and resolution requests), or `None` when the pool is empty.
    fn alloc(&mut self) -> Option<Self::Frame>;
}

/// In-memory frames and queues: the same worker loop without a device.
pub mod memory {
    use super::{Burst, Frame, RxQueue, TxQueue};
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    /// Headroom reserved in front of every frame, as a DPDK mbuf has.
    pub const HEADROOM: usize = 128;
    /// Room for a frame, as a DPDK mbuf's data room.
    pub const ROOM: usize = 2048;

    /// A frame in a fixed buffer with headroom.
    #[derive(Clone)]
    pub struct MemoryFrame {
        buffer: Box<[u8]>,
        start: usize,
        len: usize,
        pub rss_hash: Option<u32>,
    }

    impl std::fmt::Debug for MemoryFrame {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("MemoryFrame")
                .field("len", &self.len)
                .finish()
        }
    }

    impl MemoryFrame {
        pub fn empty() -> MemoryFrame {
            MemoryFrame {
                buffer: vec![0; HEADROOM + ROOM].into_boxed_slice(),
                start: HEADROOM,
                len: 0,
                rss_hash: None,
            }
        }

        /// Empties the frame and restores its headroom, for reuse.
        pub fn reset(&mut self) {
            self.start = HEADROOM;
            self.len = 0;
            self.rss_hash = None;
        }

        /// A frame holding a copy of `bytes` (truncated to the room).
        pub fn from_bytes(bytes: &[u8]) -> MemoryFrame {
            let mut frame = MemoryFrame::empty();
            let len = bytes.len().min(ROOM);
            frame.buffer[HEADROOM..HEADROOM + len].copy_from_slice(&bytes[..len]);
            frame.len = len;
            frame
        }
    }

    impl Frame for MemoryFrame {
        fn data(&self) -> &[u8] {
            &self.buffer[self.start..self.start + self.len]
        }

        fn data_mut(&mut self) -> &mut [u8] {
            &mut self.buffer[self.start..self.start + self.len]
        }

        fn prepend(&mut self, len: usize) -> bool {
            if len > self.start {
                return false;
            }
            self.start -= len;
            self.len += len;
            true
        }

        fn resize(&mut self, len: usize) -> bool {
            if self.start + len > self.buffer.len() {
                return false;
            }
            self.len = len;
            true
        }

        fn rss_hash(&self) -> Option<u32> {
            self.rss_hash
        }
    }

    /// Frames waiting to be received, shared with the test that feeds them.
    pub type Inbox = Arc<Mutex<VecDeque<MemoryFrame>>>;
    /// Frames transmitted, shared with the test that reads them.
    pub type Outbox = Arc<Mutex<Vec<MemoryFrame>>>;

    /// A receive queue fed from an [`Inbox`].
    pub struct MemoryRx {
        pub inbox: Inbox,
    }

    impl RxQueue for MemoryRx {
        type Frame = MemoryFrame;

        fn rx_burst(&mut self, burst: &mut Burst<MemoryFrame>, max: usize) -> usize {
            let mut inbox = self
                .inbox
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            let mut received = 0;
            while !burst.is_full() && received < max {
                let Some(frame) = inbox.pop_front() else {
                    break;
                };
                burst.push(frame);
                received += 1;
            }
            received
        }
    }

    /// A transmit queue into an [`Outbox`], taking at most `capacity` frames per call (to exercise retries).
    pub struct MemoryTx {
        pub outbox: Outbox,
        pub capacity: usize,
        /// Frames `alloc` may still hand out (a pool that can run dry).
        pub pool: usize,
    }

    impl TxQueue for MemoryTx {
        type Frame = MemoryFrame;

        fn tx_burst(&mut self, burst: &mut Burst<MemoryFrame>) -> usize {
            let take = burst.len().min(self.capacity);
            let mut outbox = self
                .outbox
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            outbox.extend(burst.drain(..take));
            take
        }

        fn alloc(&mut self) -> Option<MemoryFrame> {
            self.pool = self.pool.checked_sub(1)?;
            Some(MemoryFrame::empty())
        }
    }
}
