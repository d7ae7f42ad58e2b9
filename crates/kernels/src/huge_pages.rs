//! One buffer backed by transparent huge pages, for the inference weights.
//!
//! Decode streams every weight once per token, and small pages slow such a stream: the
//! hardware prefetcher stops at each 4 KiB page boundary, and under virtualisation a TLB miss
//! costs a two-level (nested paging) walk. In a virtual machine a 512 MiB stream ran at
//! 20–22 GB/s in 4 KiB pages against 27–29 GB/s in 2 MiB pages (`bench/NOTES.md`). With
//! transparent huge pages in `madvise` mode (a common default) Linux backs memory with huge
//! pages only where it is asked to, and only in aligned 2 MiB runs, so the matrices are copied
//! into one aligned buffer rather than advised one small allocation at a time. The model
//! copies every matrix into one such buffer and takes views of it.
//!
//! End to end, f32 decode runs level from this buffer and from 4 KiB pages (1.02× at context
//! 256, 0.99× at 1024; the `transact` crate's `huge_pages_ab` example). The bandwidth probe
//! allocates the same way, so the roof it reports is the higher one.

use half::{bf16, f16};

const HUGE_PAGE: usize = 1 << 21;

/// An element type whose all-zero bit pattern is zero, allocated zeroed without touching the
/// pages (`vec![0; n]` comes from `calloc`, which leaves fresh pages unfaulted, so they fault in
/// as huge pages only when written).
pub trait Zeroed: Copy + Send + Sync + 'static {
    fn zeroed(n: usize) -> Vec<Self>;
}

impl Zeroed for f32 {
    fn zeroed(n: usize) -> Vec<Self> {
        vec![0f32; n]
    }
}

impl Zeroed for u8 {
    fn zeroed(n: usize) -> Vec<Self> {
        vec![0u8; n]
    }
}

impl Zeroed for f16 {
    fn zeroed(n: usize) -> Vec<Self> {
        reinterpret_u16(vec![0u16; n])
    }
}

impl Zeroed for bf16 {
    fn zeroed(n: usize) -> Vec<Self> {
        reinterpret_u16(vec![0u16; n])
    }
}

/// A zeroed `Vec<u16>` as 16-bit floats, keeping its `calloc`'d allocation.
fn reinterpret_u16<T: Copy>(v: Vec<u16>) -> Vec<T> {
    // f16 and bf16 are `repr(transparent)` over u16: same size and alignment.
    assert!(size_of::<T>() == 2 && align_of::<T>() == 2);
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: the allocation came from a `Vec<u16>`; `T` has u16's size and alignment (asserted),
    // so length, capacity and layout carry over, and every u16 bit pattern (here all zero) is a
    // valid f16 or bf16. `ManuallyDrop` keeps the original from freeing the allocation.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr() as *mut T, v.len(), v.capacity()) }
}

/// A zeroed buffer with room for `len` values starting on a 2 MiB boundary, advised as huge
/// pages; returns it and the index of that first value. Copy the data into `buf[start..]`.
pub fn aligned<T: Zeroed>(len: usize) -> (Vec<T>, usize) {
    let slack = HUGE_PAGE / size_of::<T>();
    let buf = T::zeroed(len + slack);
    let addr = buf.as_ptr() as usize;
    let start = (addr.next_multiple_of(HUGE_PAGE) - addr) / size_of::<T>();
    advise(&buf[start..]);
    (buf, start)
}

/// Asks Linux to back the whole 2 MiB pages inside `buf` with huge pages; a no-op elsewhere
/// and where the kernel refuses (the memory then simply stays in small pages).
pub fn advise<T>(buf: &[T]) {
    #[cfg(target_os = "linux")]
    {
        let lo = (buf.as_ptr() as usize).next_multiple_of(HUGE_PAGE);
        let hi = (buf.as_ptr() as usize + std::mem::size_of_val(buf)) / HUGE_PAGE * HUGE_PAGE;
        if hi > lo {
            // SAFETY: `lo .. hi` lies inside `buf`'s allocation; MADV_HUGEPAGE only changes how
            // the kernel backs those pages, never their contents, and its failure is harmless.
            unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_value_sits_on_a_huge_page_and_the_buffer_is_zero() {
        for len in [1, 1000, 3 << 20] {
            let (buf, start) = aligned::<f16>(len);
            assert_eq!((buf[start..].as_ptr() as usize) % HUGE_PAGE, 0);
            assert!(buf.len() >= start + len);
            assert!(buf.iter().all(|v| v.to_f32() == 0.0));
        }
    }
}
