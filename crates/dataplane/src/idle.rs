//! What a worker does between polls that found nothing. `Poll` spins (a whole core per worker, the lowest
//! latency). `Adaptive` spins while there is traffic; after `polls` empty polls in a row it pauses the CPU once per
//! empty poll for as many polls again, then sleeps `sleep` between polls until a frame arrives. Under load a poll
//! always finds frames, so the loop never pauses or sleeps and full-load throughput is that of `Poll`.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdlePolicy {
    Poll,
    Adaptive { polls: u32, sleep: Duration },
}

/// Counts empty polls and backs off as the policy says.
#[derive(Debug)]
pub struct Idle {
    policy: IdlePolicy,
    empty: u32,
    /// Sleeps taken, for the statistics.
    pub sleeps: u64,
}

/// What [`Idle::after_poll`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backoff {
    None,
    Pause,
    Sleep,
}

impl Idle {
    pub fn new(policy: IdlePolicy) -> Idle {
        Idle {
            policy,
            empty: 0,
            sleeps: 0,
        }
    }

    /// Call after every poll with the number of frames it found (from any source).
    pub fn after_poll(&mut self, found: usize) -> Backoff {
        let IdlePolicy::Adaptive { polls, sleep } = self.policy else {
            return Backoff::None;
        };
        if found > 0 {
            self.empty = 0;
            return Backoff::None;
        }
        self.empty = self.empty.saturating_add(1);
        if self.empty <= polls {
            Backoff::None
        } else if self.empty <= polls.saturating_mul(2) {
            std::hint::spin_loop();
            Backoff::Pause
        } else {
            self.sleeps += 1;
            std::thread::sleep(sleep);
            Backoff::Sleep
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_never_backs_off() {
        let mut idle = Idle::new(IdlePolicy::Poll);
        for _ in 0..10_000 {
            assert_eq!(idle.after_poll(0), Backoff::None);
        }
    }

    #[test]
    fn adaptive_spins_then_pauses_then_sleeps_and_resets_on_traffic() {
        let mut idle = Idle::new(IdlePolicy::Adaptive {
            polls: 3,
            sleep: Duration::from_micros(1),
        });
        let seen: Vec<Backoff> = (0..8).map(|_| idle.after_poll(0)).collect();
        use Backoff::*;
        assert_eq!(seen, [None, None, None, Pause, Pause, Pause, Sleep, Sleep]);
        assert_eq!(idle.sleeps, 2);
        assert_eq!(idle.after_poll(5), None);
        assert_eq!(idle.after_poll(0), None);
        // Under load it never backs off.
        for _ in 0..1000 {
            assert_eq!(idle.after_poll(1), None);
        }
    }
}
