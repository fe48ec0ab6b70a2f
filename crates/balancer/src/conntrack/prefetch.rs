//! A cache prefetch hint: the one place the table touches `core::arch`.

/// Asks the CPU to start loading the cache line holding `value` into all cache levels. A hint only: no effect on
/// what the program computes, a no-op on targets without a prefetch instruction here.
#[inline(always)]
pub(super) fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: PREFETCHT0 never faults and never changes memory or architectural state; the pointer comes from
        // a live reference anyway. SSE is part of the x86_64 baseline.
        unsafe { _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
