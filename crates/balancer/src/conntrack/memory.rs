//! The table's large arrays, allocated once at construction, and the hooks through which the I/O edge (the only
//! place allowed to make system calls and `unsafe` calls) shapes them: advice on fresh memory (transparent huge
//! pages, so that a lookup's two random cache misses do not also miss the TLB) and a prefetch instruction.

/// What the I/O edge lends the table; every hook is optional and only a hint.
#[derive(Clone, Copy, Debug, Default)]
pub struct EdgeHooks {
    /// Called with `(start, bytes)` of each large allocation before it is first touched.
    pub advise_memory: Option<fn(*mut u8, usize)>,
    /// Starts loading the cache line at an address (never faults).
    pub prefetch: Option<fn(*const u8)>,
}

/// A slice of `len` values made by `init`, allocated once; `advise` sees the memory before it is written.
pub(super) fn boxed_slice<T>(
    len: usize,
    advise: Option<fn(*mut u8, usize)>,
    init: impl FnMut(usize) -> T,
) -> Box<[T]> {
    let mut values: Vec<T> = Vec::with_capacity(len);
    if let Some(advise) = advise {
        advise(
            values.as_mut_ptr().cast::<u8>(),
            len.saturating_mul(std::mem::size_of::<T>()),
        );
    }
    values.extend((0..len).map(init));
    values.into_boxed_slice()
}
