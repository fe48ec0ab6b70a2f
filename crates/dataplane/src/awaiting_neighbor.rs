//! Frames whose next hop's MAC is not known yet: a few are kept (bounded in number and in time) while the worker
//! resolves it, and sent as soon as the answer is in the neighbour table, so that the first frames of a flow after
//! a start are not lost to a retransmission; what waits too long, or finds the queue full, is dropped and counted
//! (`neighbor_unresolved`) by the worker.

use arrayvec::ArrayVec;
use balancer::decision::Forward;
use packet::FrameLayout;

/// Frames one worker keeps waiting at most.
pub const AWAITING_FRAMES: usize = 64;

/// A frame decided and waiting for its next hop's MAC, not yet rewritten.
pub struct AwaitingFrame<F> {
    pub frame: F,
    pub layout: FrameLayout,
    pub forward: Forward,
    pub since_ms: u64,
}

/// The frames one worker keeps waiting.
pub struct AwaitingNeighbor<F> {
    frames: ArrayVec<AwaitingFrame<F>, AWAITING_FRAMES>,
    wait_ms: u64,
}

impl<F> AwaitingNeighbor<F> {
    /// A queue whose frames wait at most `wait_ms`.
    pub fn new(wait_ms: u64) -> AwaitingNeighbor<F> {
        AwaitingNeighbor {
            frames: ArrayVec::new(),
            wait_ms,
        }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Keeps `frame` waiting; gives the frame back when the queue is full.
    pub fn wait(&mut self, frame: AwaitingFrame<F>) -> Result<(), F> {
        self.frames
            .try_push(frame)
            .map_err(|full| full.element().frame)
    }

    /// Moves every waiting frame into `out`, in the order they came, with whether it has waited its time by
    /// `now_ms`; the caller sends them, drops them, or keeps them waiting again.
    pub fn take_all(
        &mut self,
        now_ms: u64,
        out: &mut ArrayVec<(AwaitingFrame<F>, bool), AWAITING_FRAMES>,
    ) {
        let wait_ms = self.wait_ms;
        for frame in self.frames.drain(..) {
            let expired = now_ms.saturating_sub(frame.since_ms) >= wait_ms;
            // `out` has the queue's capacity: this cannot fail.
            let _ = out.try_push((frame, expired));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn waiting(frame: u32, since_ms: u64) -> AwaitingFrame<u32> {
        AwaitingFrame {
            frame,
            layout: packet::EMPTY_LAYOUT,
            forward: Forward {
                port: 1,
                next_hop: IpAddr::from([10, 1, 0, 11]),
                next_hop_mac: packet::MacWord::NONE,
                rewrite: balancer::decision::Rewrite::MacsOnly,
                backend: None,
                untracked: false,
                reply: false,
                opened: false,
            },
            since_ms,
        }
    }

    #[test]
    fn frames_wait_in_order_bounded_and_timed() {
        let mut queue = AwaitingNeighbor::new(100);
        for frame in 0..AWAITING_FRAMES as u32 {
            assert!(queue.wait(waiting(frame, u64::from(frame) * 10)).is_ok());
        }
        assert_eq!(queue.wait(waiting(999, 0)), Err(999));
        let mut out = ArrayVec::new();
        queue.take_all(105, &mut out);
        assert!(queue.is_empty());
        let expired: Vec<bool> = out.iter().map(|(_, expired)| *expired).collect();
        assert!(expired[0] && !expired[1]);
        assert_eq!(out[AWAITING_FRAMES - 1].0.frame, AWAITING_FRAMES as u32 - 1);
    }
}
