//! Taking work from the control thread's queues between bursts, without a memory fence when there is none.
//!
//! crossbeam's `try_recv` on an empty bounded channel issues a sequentially consistent fence (a locked
//! instruction on x86), which drains the store buffer: a worker that asks three or four empty queues every poll
//! pays that many fences per burst. Whether a queue is empty is two plain loads; what arrives just after the look
//! is taken in the next poll.

use crossbeam::channel::Receiver;

/// The next message on `queue`, or `None` when it looks empty.
#[inline]
pub fn take_ready<T>(queue: &Receiver<T>) -> Option<T> {
    if queue.is_empty() {
        return None;
    }
    queue.try_recv().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam::channel::{bounded, unbounded};

    #[test]
    fn takes_what_is_queued_in_order_and_nothing_from_an_empty_queue() {
        for (send, receive) in [bounded(4), unbounded()] {
            assert_eq!(take_ready(&receive), None);
            send.send(1).unwrap();
            send.send(2).unwrap();
            assert_eq!(take_ready(&receive), Some(1));
            assert_eq!(take_ready(&receive), Some(2));
            assert_eq!(take_ready(&receive), None);
            drop(send);
            assert_eq!(take_ready(&receive), None);
        }
    }
}
