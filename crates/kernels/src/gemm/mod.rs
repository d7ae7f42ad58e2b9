//! Prefill GEMMs that multiply weights in the type they are kept in, on CPUs with the AVX-512
//! extensions for it: bf16 pairs (`vdpbf16ps`) and Q8_0 bytes (VNNI `vpdpbusd`). Elsewhere,
//! and for f16, the model's linear layer widens the weights to f32 for the f32 GEMM, which caps every
//! small type at the f32 rate; llama.cpp multiplies in the small type (`bench/NOTES.md`).
//!
//! Both kernels follow one plan. The weights are re-laid one panel of [`NR`] output columns at
//! a time into a per-thread buffer, so one 64-byte load holds 16 columns' next few `k` values;
//! a few activation rows × `NR` columns of sums stay in registers while `k` runs; the panels
//! are spread over rayon's threads, each writing only its own columns of `y`.
//!
//! f32 products (and f16 weights, widened) go to the `gemm` crate directly ([`f32::matmul`]),
//! or, for a few rows, to [`f32_small::matmul`], which reads the weights in place.

mod bf16;
pub mod f32;
pub mod f32_small;
mod q8_0;

use rayon::prelude::*;

use crate::matrix::WeightData;

/// Output columns (weight rows) per panel: two 16-lane registers.
const NR: usize = 32;

/// `y[m, n] = x[m, k] · W[n, k]ᵀ` for each `(W, n)` of `ws`, when all are bf16 or all Q8_0
/// and this CPU has the instructions for them; `None` otherwise (the caller widens).
pub fn gemm_many(x: &[f32], m: usize, k: usize, ws: &[(WeightData, usize)]) -> Option<Vec<Vec<f32>>> {
    let bf: Option<Vec<_>> = ws.iter().map(|(w, n)| if let WeightData::BF16(w) = w { Some((*w, *n)) } else { None }).collect();
    if let Some(bf) = bf.filter(|_| bf16::available()) {
        return Some(bf16::gemm_many(x, m, k, &bf));
    }
    let q8: Option<Vec<_>> = ws.iter().map(|(w, n)| if let WeightData::Q8_0(w) = w { Some((*w, *n)) } else { None }).collect();
    if let Some(q8) = q8.filter(|_| q8_0::available()) {
        return Some(q8_0::gemm_many(x, m, k, &q8));
    }
    None
}

/// `y`'s data, shared by the panel tasks: each writes only its own columns.
struct Out(*mut f32);
// SAFETY: an `Out` lives only for one parallel loop over `y` (`by_panels`,
// `f32_small::matmul`), which neither moves nor touches `y` until every task has returned. The
// tasks write through the pointer only inside the `unsafe` kernels, whose contracts give each
// task columns of its own, so no two threads write one element, and none reads `y`.
unsafe impl Sync for Out {}

/// `y[m, n]` from one task per panel: `pack(j0, buf)` lays weight rows `j0 .. j0 + NR` into a
/// per-thread buffer of `panel_len` elements, then `kernel(buf, out, j0)` writes those columns.
fn by_panels<P: Copy + Default + Send>(
    m: usize,
    n: usize,
    panel_len: usize,
    pack: impl Fn(usize, &mut [P]) + Sync,
    kernel: impl Fn(&[P], &Out, usize) + Sync,
) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    let out = Out(y.as_mut_ptr());
    (0..n.div_ceil(NR)).into_par_iter().for_each_init(
        || vec![P::default(); panel_len],
        |buf, j| {
            pack(j * NR, buf);
            kernel(buf, &out, j * NR);
        },
    );
    y
}

/// Lanes of the two 16-lane output registers that fall inside `n` for the panel at `j0`.
fn store_masks(n: usize, j0: usize) -> [u16; 2] {
    let cols = NR.min(n - j0);
    std::array::from_fn(|h| (((1u32 << cols.saturating_sub(16 * h).min(16)) - 1) & 0xffff) as u16)
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::Out;

    /// Writes the sums of rows `i0 ..` (at most `rows`) into `y` `[_, n]` at columns `j0 ..`,
    /// the lanes of `masks` only.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F; `y` must hold those rows and no other thread write
    /// these columns.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn store_rows(y: &Out, sums: &[[__m512; 2]], rows: usize, i0: usize, n: usize, j0: usize, masks: [u16; 2]) {
        for (r, s) in sums.iter().enumerate().take(rows) {
            // SAFETY: AVX-512 F is enabled here and the caller has checked the CPU for it. Row
            // `i0 + r` is one of the `rows` that the caller guarantees `y` holds, and `j0 < n`,
            // so `o` points into that row. The masked stores write only the lanes of `masks`:
            // columns `j0 ..` below `n` (`store_masks`) of that row, which the caller guarantees
            // no other thread writes; masked-off lanes are neither written nor able to fault.
            // The second half is addressed with `wrapping_add`: on `y`'s last row with
            // `n - j0 < 16` it points past `y`, where its mask is 0 and nothing is stored.
            unsafe {
                let o = y.0.add((i0 + r) * n + j0);
                _mm512_mask_storeu_ps(o, masks[0], s[0]);
                _mm512_mask_storeu_ps(o.wrapping_add(16), masks[1], s[1]);
            }
        }
    }
}
