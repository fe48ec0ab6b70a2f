//! Loading lines ahead of use. The table makes no `unsafe` call itself: the I/O edge hands in a real prefetch
//! instruction ([`EdgeHooks::prefetch`](super::EdgeHooks)); without one (tests, benchmarks on plain memory) a line
//! is brought in by an ordinary read whose value is discarded, which the CPU overlaps with the work that follows.

/// Asks for the cache line holding `value`, through `hook` when the edge gave one.
#[inline(always)]
pub(super) fn prefetch<T: Copy>(hook: Option<fn(*const u8)>, value: &T) {
    match hook {
        Some(prefetch) => prefetch((value as *const T).cast::<u8>()),
        None => {
            std::hint::black_box(*value);
        }
    }
}
