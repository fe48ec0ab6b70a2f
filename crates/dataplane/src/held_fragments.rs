//! Later fragments that arrived before their datagram's first: held a short while (bounded in number and in time)
//! until the first fragment is decided, then decided again with the datagram's fate; what waits too long, or finds
//! the store full, is dropped and counted by the worker.
//!
//! A fixed array searched from end to end: it is touched only by fragments that came out of order, and holds few.

use arrayvec::ArrayVec;
use balancer::decision::DatagramKey;
use packet::FrameLayout;

/// Frames one worker holds at most.
pub const HELD_FRAGMENTS: usize = 64;

/// One held fragment, with what its decision needs again.
pub struct HeldFragment<F> {
    pub datagram: DatagramKey,
    pub frame: F,
    pub layout: FrameLayout,
    pub ingress: u16,
    pub handed_off: bool,
    pub since_ms: u64,
}

/// The fragments one worker holds.
pub struct HeldFragments<F> {
    held: ArrayVec<HeldFragment<F>, HELD_FRAGMENTS>,
    hold_ms: u64,
}

impl<F> HeldFragments<F> {
    /// A store whose fragments wait at most `hold_ms` for their first.
    pub fn new(hold_ms: u64) -> HeldFragments<F> {
        HeldFragments {
            held: ArrayVec::new(),
            hold_ms,
        }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Holds `fragment`; gives its frame back when the store is full.
    pub fn hold(&mut self, fragment: HeldFragment<F>) -> Result<(), F> {
        self.held
            .try_push(fragment)
            .map_err(|full| full.element().frame)
    }

    /// Moves the fragments of `datagram` into `out`, in the order they arrived.
    pub fn take_datagram(
        &mut self,
        datagram: &DatagramKey,
        out: &mut ArrayVec<HeldFragment<F>, HELD_FRAGMENTS>,
    ) {
        self.take_where(|held| held.datagram == *datagram, out);
    }

    /// Moves the fragments that have waited `hold_ms` or longer by `now_ms` into `out`.
    pub fn take_expired(
        &mut self,
        now_ms: u64,
        out: &mut ArrayVec<HeldFragment<F>, HELD_FRAGMENTS>,
    ) {
        let hold_ms = self.hold_ms;
        self.take_where(|held| now_ms.saturating_sub(held.since_ms) >= hold_ms, out);
    }

    /// Moves every held fragment into `out` (the worker is stopping).
    pub fn take_all(&mut self, out: &mut ArrayVec<HeldFragment<F>, HELD_FRAGMENTS>) {
        self.take_where(|_| true, out);
    }

    fn take_where(
        &mut self,
        mut taken: impl FnMut(&HeldFragment<F>) -> bool,
        out: &mut ArrayVec<HeldFragment<F>, HELD_FRAGMENTS>,
    ) {
        let mut index = 0;
        while index < self.held.len() {
            if taken(&self.held[index]) {
                // `out` has the store's capacity and the store holds what is taken: this cannot fail.
                let _ = out.try_push(self.held.remove(index));
            } else {
                index += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn held(id: u32, since_ms: u64) -> HeldFragment<u32> {
        HeldFragment {
            datagram: DatagramKey {
                src: IpAddr::from([198, 51, 100, 1]),
                dst: IpAddr::from([10, 0, 0, 100]),
                id,
                protocol: 17,
            },
            frame: id * 100 + since_ms as u32,
            layout: packet::EMPTY_LAYOUT,
            ingress: 0,
            handed_off: false,
            since_ms,
        }
    }

    #[test]
    fn fragments_are_released_by_datagram_in_order_and_expire() {
        let mut store = HeldFragments::new(100);
        for (id, since) in [(1, 0), (2, 10), (1, 20), (3, 50)] {
            assert!(store.hold(held(id, since)).is_ok());
        }
        let mut out = ArrayVec::new();
        store.take_datagram(&held(1, 0).datagram, &mut out);
        let frames: Vec<u32> = out.drain(..).map(|held| held.frame).collect();
        assert_eq!(frames, [100, 120]);
        store.take_expired(110, &mut out);
        let frames: Vec<u32> = out.drain(..).map(|held| held.frame).collect();
        assert_eq!(frames, [210]);
        store.take_all(&mut out);
        assert_eq!(out.len(), 1);
        assert!(store.is_empty());
    }

    #[test]
    fn a_full_store_gives_the_fragment_back() {
        let mut store = HeldFragments::new(100);
        for id in 0..HELD_FRAGMENTS as u32 {
            assert!(store.hold(held(id, 0)).is_ok());
        }
        assert!(store.hold(held(999, 0)).is_err());
    }
}
