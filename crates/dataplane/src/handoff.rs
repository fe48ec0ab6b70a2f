//! Handoff between workers: a frame that reached a worker other than its flow's owner travels to the owner over
//! a single-producer single-consumer ring, one per ordered pair of workers, so neither side ever contends with a
//! third. Frames are sent in bulk when the sender flushes, received in bulk on the owner's next poll, and an empty
//! ring costs its owner one load.

use arrayvec::ArrayVec;
use rtrb::{Consumer, Producer, RingBuffer};

use crate::io::MAX_BURST;

/// A frame passed to the worker that owns its flow, with the port it arrived on.
pub struct Handoff<F> {
    pub frame: F,
    pub ingress: u16,
}

/// One worker's ends of the handoff rings: what it receives from each peer, and what it sends to each.
pub struct HandoffLinks<F> {
    inbound: Vec<Consumer<Handoff<F>>>,
    /// Indexed by the receiving worker; `None` for this worker itself.
    outbound: Vec<Option<Outbound<F>>>,
    /// Frames the rings took since the last [`HandoffLinks::flush`].
    delivered: usize,
}

struct Outbound<F> {
    ring: Producer<Handoff<F>>,
    /// Frames decided this poll, sent together at the flush.
    pending: ArrayVec<Handoff<F>, MAX_BURST>,
}

/// The rings between `workers` workers, each holding `capacity` frames: element i holds worker i's ends.
pub fn handoff_mesh<F>(workers: usize, capacity: usize) -> Vec<HandoffLinks<F>> {
    let mut links: Vec<HandoffLinks<F>> = (0..workers)
        .map(|_| HandoffLinks {
            inbound: Vec::new(),
            outbound: (0..workers).map(|_| None).collect(),
            delivered: 0,
        })
        .collect();
    for sender in 0..workers {
        for receiver in (0..workers).filter(|&receiver| receiver != sender) {
            let (producer, consumer) = RingBuffer::new(capacity.max(1));
            links[sender].outbound[receiver] = Some(Outbound {
                ring: producer,
                pending: ArrayVec::new(),
            });
            links[receiver].inbound.push(consumer);
        }
    }
    links
}

impl<F> HandoffLinks<F> {
    /// The links of a worker without peers.
    pub fn alone() -> HandoffLinks<F> {
        HandoffLinks {
            inbound: Vec::new(),
            outbound: vec![None],
            delivered: 0,
        }
    }

    /// Queues `handoff` for `worker`; gives it back when `worker` is not a peer or its batch and ring are full.
    #[inline]
    pub fn send(&mut self, worker: usize, handoff: Handoff<F>) -> Result<(), Handoff<F>> {
        let Some(Some(outbound)) = self.outbound.get_mut(worker) else {
            return Err(handoff);
        };
        if outbound.pending.is_full() {
            self.delivered += outbound.flush();
        }
        outbound
            .pending
            .try_push(handoff)
            .map_err(|full| full.element())
    }

    /// Sends every queued batch; returns how many frames the rings took since the last flush. Frames a full ring
    /// would not take are passed to `refused`.
    pub fn flush(&mut self, mut refused: impl FnMut(Handoff<F>)) -> usize {
        let mut delivered = std::mem::take(&mut self.delivered);
        for outbound in self.outbound.iter_mut().flatten() {
            delivered += outbound.flush();
            for handoff in outbound.pending.drain(..) {
                refused(handoff);
            }
        }
        delivered
    }

    /// Receives at most `max` frames from the peers, in bulk, passing each to `receive`; returns how many.
    #[inline]
    pub fn receive(&mut self, max: usize, mut receive: impl FnMut(Handoff<F>)) -> usize {
        let mut received = 0;
        for ring in &mut self.inbound {
            let ready = ring.slots().min(max - received);
            if ready == 0 {
                continue;
            }
            if let Ok(chunk) = ring.read_chunk(ready) {
                for handoff in chunk {
                    receive(handoff);
                }
                received += ready;
            }
        }
        received
    }
}

impl<F> Outbound<F> {
    /// Moves as much of the batch into the ring as it has room for, in one chunk; the rest stays queued. Returns
    /// how many it moved.
    fn flush(&mut self) -> usize {
        let room = self.ring.slots().min(self.pending.len());
        if room == 0 {
            return 0;
        }
        match self.ring.write_chunk_uninit(room) {
            Ok(chunk) => chunk.fill_from_iter(self.pending.drain(..room)),
            Err(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_reach_their_owner_in_order_and_only_it() {
        let mut links = handoff_mesh::<u32>(3, 8);
        for frame in 0..5 {
            links[0]
                .send(2, Handoff { frame, ingress: 1 })
                .unwrap_or_else(|_| panic!("queued"));
        }
        links[0].flush(|_| panic!("the ring has room"));
        let mut got = vec![];
        assert_eq!(links[1].receive(32, |h| got.push(h.frame)), 0);
        assert_eq!(links[2].receive(32, |h| got.push(h.frame)), 5);
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_full_ring_refuses_the_rest_and_self_is_no_peer() {
        let mut links = handoff_mesh::<u32>(2, 4);
        assert!(links[0]
            .send(
                0,
                Handoff {
                    frame: 9,
                    ingress: 0
                }
            )
            .is_err());
        for frame in 0..6 {
            assert!(links[0].send(1, Handoff { frame, ingress: 0 }).is_ok());
        }
        let mut refused = vec![];
        assert_eq!(links[0].flush(|h| refused.push(h.frame)), 4);
        assert_eq!(refused, vec![4, 5]);
        let mut got = vec![];
        assert_eq!(links[1].receive(2, |h| got.push(h.frame)), 2);
        assert_eq!(links[1].receive(32, |h| got.push(h.frame)), 2);
        assert_eq!(got, vec![0, 1, 2, 3]);
    }
}
