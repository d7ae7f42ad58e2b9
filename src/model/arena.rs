//! Inference weights in one buffer backed by transparent huge pages.
//!
//! Decode streams every weight once per token. With 4 KiB pages this VM sustained 20–22 GB/s
//! over 512 MiB, with 2 MiB pages 27–29 GB/s (`bench/NOTES.md`): the hardware prefetcher stops
//! at each page boundary, and a TLB miss under nested paging costs a two-level walk. Linux only
//! backs memory with huge pages where it is asked to (`madvise`, this machine's default), and
//! only in aligned 2 MiB runs, so the matrices are copied into one aligned buffer rather than
//! advised one small allocation at a time. Each weight becomes a view into it.
//!
//! End to end, f32 decode from the arena and from 4 KiB pages measured the same (1.02× at
//! context 256, 0.99× at 1024; `examples/huge_pages_ab.rs`). The bandwidth probe allocates
//! the same way, so the roof it reports is the higher one.

use candle_core::{DType, Device, Result, Tensor, WithDType};
use half::{bf16, f16};

const HUGE_PAGE: usize = 1 << 21;

/// `tensors` (one dtype, on the CPU) copied into one huge-page buffer, as views of their own
/// shapes; anything else comes back unchanged.
pub fn into_arena(tensors: &[Tensor]) -> Result<Vec<Tensor>> {
    let Some(first) = tensors.first() else { return Ok(Vec::new()) };
    let dtype = first.dtype();
    if !matches!(first.device(), Device::Cpu) || tensors.iter().any(|t| t.dtype() != dtype) {
        return Ok(tensors.to_vec());
    }
    match dtype {
        DType::F32 => arena(tensors, |n| vec![0f32; n]),
        DType::U8 => arena(tensors, |n| vec![0u8; n]),
        DType::F16 => arena(tensors, |n| reinterpret::<f16>(vec![0u16; n])),
        DType::BF16 => arena(tensors, |n| reinterpret::<bf16>(vec![0u16; n])),
        _ => Ok(tensors.to_vec()),
    }
}

/// A zeroed `Vec<u16>` as 16-bit floats: `vec![0u16; n]` comes from `calloc`, which leaves
/// fresh pages untouched, so they fault in (as huge pages) only when the weights are written.
fn reinterpret<T: Copy>(v: Vec<u16>) -> Vec<T> {
    // f16 and bf16 are `repr(transparent)` over u16: same size and alignment.
    assert!(size_of::<T>() == 2 && align_of::<T>() == 2);
    let mut v = std::mem::ManuallyDrop::new(v);
    unsafe { Vec::from_raw_parts(v.as_mut_ptr() as *mut T, v.len(), v.capacity()) }
}

fn arena<T: WithDType>(tensors: &[Tensor], zeroed: impl Fn(usize) -> Vec<T>) -> Result<Vec<Tensor>> {
    let total: usize = tensors.iter().map(|t| t.elem_count()).sum();
    let slack = HUGE_PAGE / size_of::<T>();
    let mut buf = zeroed(total + slack);
    let addr = buf.as_ptr() as usize;
    let start = (addr.next_multiple_of(HUGE_PAGE) - addr) / size_of::<T>();
    advise_huge_pages(&buf[start..]);
    let mut spans = Vec::with_capacity(tensors.len());
    let mut at = start;
    for t in tensors {
        let n = t.elem_count();
        buf[at..at + n].copy_from_slice(&t.flatten_all()?.to_vec1::<T>()?);
        spans.push((at, n, t.shape().clone()));
        at += n;
    }
    let len = buf.len();
    let all = Tensor::from_vec(buf, len, &Device::Cpu)?;
    spans.into_iter().map(|(at, n, shape)| all.narrow(0, at, n)?.reshape(shape)).collect()
}

/// Asks Linux to back the whole 2 MiB pages inside `buf` with huge pages; a no-op elsewhere
/// and where the kernel refuses (the weights then simply stay in small pages).
pub fn advise_huge_pages<T>(buf: &[T]) {
    #[cfg(target_os = "linux")]
    {
        let lo = (buf.as_ptr() as usize).next_multiple_of(HUGE_PAGE);
        let hi = (buf.as_ptr() as usize + std::mem::size_of_val(buf)) / HUGE_PAGE * HUGE_PAGE;
        if hi > lo {
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
    fn views_keep_values_and_shapes_in_one_storage() {
        let dev = Device::Cpu;
        let a = Tensor::arange(0f32, 6000.0, &dev).unwrap().reshape((60, 100)).unwrap();
        let b = Tensor::arange(0f32, 35.0, &dev).unwrap().reshape((5, 7)).unwrap();
        for dtype in [DType::F32, DType::F16, DType::BF16, DType::U8] {
            let (a, b) = (a.to_dtype(dtype).unwrap(), b.to_dtype(dtype).unwrap());
            let out = into_arena(&[a.clone(), b.clone()]).unwrap();
            for (got, want) in out.iter().zip([&a, &b]) {
                assert_eq!(got.dims(), want.dims());
                let diff = (got.to_dtype(DType::F32).unwrap() - want.to_dtype(DType::F32).unwrap()).unwrap();
                assert_eq!(diff.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
            }
            // Both are views into one buffer: b starts where a ends.
            let (_, la) = out[0].storage_and_layout();
            let (_, lb) = out[1].storage_and_layout();
            let (lo_a, hi_a) = la.contiguous_offsets().unwrap();
            assert_eq!(lb.contiguous_offsets().unwrap().0, hi_a);
            assert_eq!(hi_a - lo_a, 6000);
        }
    }
}
