//! The table's large arrays, allocated once at construction. On Linux the allocation is hinted for transparent
//! huge pages before it is first touched: a lookup's two random cache misses then do not also miss the TLB
//! (with 4 KiB pages every probe into a table of hundreds of megabytes does).

/// A slice of `len` values made by `init`, allocated once.
pub(super) fn boxed_slice<T>(len: usize, init: impl FnMut(usize) -> T) -> Box<[T]> {
    let mut values: Vec<T> = Vec::with_capacity(len);
    advise_huge_pages(
        values.as_mut_ptr().cast::<u8>(),
        len.saturating_mul(std::mem::size_of::<T>()),
    );
    values.extend((0..len).map(init));
    values.into_boxed_slice()
}

/// Asks the kernel to back the 2 MiB-aligned part of `bytes` bytes at `start` with huge pages. A hint: failure
/// (no THP support, `never` mode) changes nothing.
#[cfg(target_os = "linux")]
fn advise_huge_pages(start: *mut u8, bytes: usize) {
    const HUGE_PAGE: usize = 2 << 20;
    let first = (start as usize).next_multiple_of(HUGE_PAGE);
    let end = (start as usize).saturating_add(bytes) / HUGE_PAGE * HUGE_PAGE;
    if end <= first {
        return;
    }
    // SAFETY: MADV_HUGEPAGE only changes how the kernel backs pages of a range this process owns (inside the
    // vector's allocation); it never changes their contents or whether they are mapped.
    unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE) };
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_start: *mut u8, _bytes: usize) {}
