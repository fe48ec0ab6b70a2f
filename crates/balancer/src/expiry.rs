//! Pacing of the connection table's expiry sweep by time, so that its cost per packet is bounded and does not
//! grow with idle polls: the sweep runs at most once per millisecond and examines just enough slots for the clock
//! hand to pass every slot once per sweep period, however often the worker polls.

/// How many slots the expiry hand examines, and when.
#[derive(Clone, Copy, Debug)]
pub struct ExpiryPacer {
    capacity: u64,
    sweep_period_ms: u64,
    last_ms: Option<u64>,
    /// Slot-milliseconds owed from earlier calls (the remainder of the division), so small tables still sweep.
    carry: u64,
}

impl ExpiryPacer {
    /// A pacer for a table of `capacity` slots that every slot should pass under the hand once per
    /// `sweep_period_ms` (at least 1 ms).
    pub fn new(capacity: usize, sweep_period_ms: u64) -> ExpiryPacer {
        ExpiryPacer {
            capacity: capacity as u64,
            sweep_period_ms: sweep_period_ms.max(1),
            last_ms: None,
            carry: 0,
        }
    }

    /// The number of slots to examine at `now_ms`: zero within the millisecond of the last sweep, otherwise the
    /// share of the table the elapsed time stands for (a long pause counts as at most one full sweep).
    #[inline]
    pub fn budget(&mut self, now_ms: u64) -> usize {
        let Some(last) = self.last_ms else {
            self.last_ms = Some(now_ms);
            return 0;
        };
        if now_ms <= last {
            return 0;
        }
        self.last_ms = Some(now_ms);
        let elapsed = (now_ms - last).min(self.sweep_period_ms);
        let owed = self.capacity * elapsed + self.carry;
        self.carry = owed % self.sweep_period_ms;
        (owed / self.sweep_period_ms) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nothing_within_one_millisecond() {
        let mut pacer = ExpiryPacer::new(1 << 20, 10_000);
        assert_eq!(pacer.budget(5), 0);
        assert_eq!(pacer.budget(5), 0);
        assert_eq!(pacer.budget(4), 0);
        assert!(pacer.budget(6) > 0);
        assert_eq!(pacer.budget(6), 0);
    }

    #[test]
    fn a_long_pause_is_one_sweep_at_most() {
        let mut pacer = ExpiryPacer::new(1000, 100);
        pacer.budget(0);
        assert_eq!(pacer.budget(1_000_000), 1000);
    }

    proptest! {
        /// Over a whole number of periods the hand passes every slot exactly that many times, whatever the
        /// polling pattern, and never more than the table per call.
        #[test]
        fn covers_the_table_once_per_period(
            capacity in 1usize..100_000,
            period in 1u64..20_000,
            steps in proptest::collection::vec(1u64..50, 1..400),
        ) {
            let mut pacer = ExpiryPacer::new(capacity, period);
            pacer.budget(0);
            let mut now = 0u64;
            let mut examined = 0u64;
            for step in steps {
                now += step.min(period);
                let budget = pacer.budget(now);
                prop_assert!(budget <= capacity);
                examined += budget as u64;
            }
            let expected = capacity as u64 * now / period;
            prop_assert_eq!(examined, expected);
        }
    }
}
