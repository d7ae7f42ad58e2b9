//! bf16 weights with AVX-512 BF16: `vdpbf16ps` multiplies pairs of bf16 and accumulates in
//! f32, twice the multiply-adds per instruction of f32 FMA. As in llama.cpp, the activations
//! are rounded to bf16 (nearest even); sums stay f32. A panel holds `k/2` pairs × 32 columns;
//! 8 activation rows × 32 columns of sums live in 16 registers.

use half::bf16;
use rayon::prelude::*;

use super::{NR, Out, by_panels};

/// Activation rows per register block.
const MR: usize = 8;

/// Whether this CPU runs [`gemm_many`].
pub fn available() -> bool {
    crate::cpu::avx512_bf16()
}

/// `y[m, n] = bf16(x)[m, k] · W[n, k]ᵀ` for each `(W, n)` of `ws`; the activations are
/// converted once for all of them. Call only where [`available`] holds.
pub fn gemm_many(x: &[f32], m: usize, k: usize, ws: &[(&[bf16], usize)]) -> Vec<Vec<f32>> {
    assert!(available(), "gemm_bf16 needs AVX-512 BF16");
    assert_eq!(x.len(), m * k);
    let kp = k.div_ceil(2);
    let mp = m.next_multiple_of(MR);
    // Activations as bf16 pairs, one u32 per pair: row i's pair p is what the kernel broadcasts.
    let mut a = vec![0u32; mp * kp];
    a.par_chunks_mut(kp).zip(x.par_chunks(k)).for_each(|(row, x)| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `available()` was asserted above: the CPU has AVX-512 F, BW and BF16. `x` is
        // one row of `k` values (`x.len() == m * k`, asserted) and `row` holds `k.div_ceil(2)`
        // pairs, what `to_pairs` writes; each task has its own `row`.
        unsafe {
            avx512::to_pairs(x, row)
        }
    });
    ws.iter().map(|&(w, n)| gemm(&a, m, kp, k, w, n)).collect()
}

fn gemm(a: &[u32], m: usize, kp: usize, k: usize, w: &[bf16], n: usize) -> Vec<f32> {
    assert_eq!(w.len(), n * k);
    by_panels(m, n, kp * NR, |j0, panel| pack(w, k, j0, n, panel), |panel, out, j0| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `gemm` runs only from `gemm_many`, after `available()` was asserted (AVX-512
        // F, BW, BF16). `a` holds `m.next_multiple_of(MR)` rows of `kp` pairs, `panel` is
        // `by_panels`' buffer of `kp * NR` pairs, `out` is `y` of `m × n`, and `by_panels` gives
        // each task its own panel, so the columns `j0 .. j0 + NR` it writes are its alone.
        unsafe {
            avx512::panel(a, m, kp, panel, out, n, j0)
        }
    })
}

/// Weight rows `j0 .. j0 + NR` as `[kp][NR]` pairs (rows past `n` and the odd column as 0).
fn pack(w: &[bf16], k: usize, j0: usize, n: usize, panel: &mut [u32]) {
    panel.fill(0);
    for c in 0..NR.min(n - j0) {
        let row = &w[(j0 + c) * k..(j0 + c + 1) * k];
        for (p, pair) in row.chunks(2).enumerate() {
            let lo = pair[0].to_bits() as u32;
            let hi = pair.get(1).map_or(0, |v| v.to_bits() as u32);
            panel[p * NR + c] = lo | hi << 16;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::super::avx512::store_rows;
    use super::super::store_masks;
    use super::{MR, NR, Out};

    /// `x` rounded to bf16 (nearest even) as pairs; an odd last element pairs with 0.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and BF16; `out` must hold `x.len().div_ceil(2)`
    /// pairs (the vector stores are not bounds-checked).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn to_pairs(x: &[f32], out: &mut [u32]) {
        let mut i = 0;
        while i + 32 <= x.len() {
            // SAFETY: `i + 32 <= x.len()` (the loop's condition): both loads of 16 f32 read
            // inside `x`. AVX-512 F and BF16 are enabled here; the caller checked the CPU.
            let v = unsafe { _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x.as_ptr().add(i + 16)), _mm512_loadu_ps(x.as_ptr().add(i))) };
            // SAFETY: the store writes 16 u32 at `out[i / 2]`, and `i / 2 + 16 = (i + 32) / 2 <=
            // x.len() / 2 <= out.len()` (the caller's bound); `out` is this call's `&mut`. The
            // transmute is between two 64-byte vectors, and any bits are a valid `__m512i`.
            unsafe { _mm512_storeu_si512(out.as_mut_ptr().add(i / 2) as *mut __m512i, std::mem::transmute::<__m512bh, __m512i>(v)) };
            i += 32;
        }
        for (p, pair) in x[i..].chunks(2).enumerate() {
            let lo = half::bf16::from_f32(pair[0]).to_bits() as u32;
            let hi = pair.get(1).map_or(0, |&v| half::bf16::from_f32(v).to_bits() as u32);
            out[i / 2 + p] = lo | hi << 16;
        }
    }

    /// Columns `j0 .. j0 + NR` (those below `n`) of all `m` rows of `y` `[m, n]`, from one
    /// packed panel.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and BF16; `a` holds `m` rounded up to [`MR`] rows of
    /// `kp` pairs, `panel` `kp × NR` pairs, `y` `m × n` values of which no other thread writes
    /// these columns.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn panel(a: &[u32], m: usize, kp: usize, panel: &[u32], y: &Out, n: usize, j0: usize) {
        let masks = store_masks(n, j0);
        for i0 in (0..m).step_by(MR) {
            let mut acc = [[_mm512_setzero_ps(); 2]; MR];
            let rows: [&[u32]; MR] = std::array::from_fn(|r| &a[(i0 + r) * kp..(i0 + r + 1) * kp]);
            // `p` indexes the panel as well as each row.
            #[allow(clippy::needless_range_loop)]
            for p in 0..kp {
                // SAFETY: `p < kp` and `panel` holds `kp × NR` pairs (the caller's bound), so the
                // two 64-byte loads read pairs `p * NR .. (p + 1) * NR` inside it. AVX-512 F is
                // enabled here. The transmutes are between 64-byte vectors: any bits are valid.
                let w: [__m512bh; 2] = unsafe {
                    let wp = panel.as_ptr().add(p * NR) as *const __m512i;
                    [std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(wp)), std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(wp.add(1)))]
                };
                for (r, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: a transmute between two 64-byte vectors; any bits are a valid
                    // `__m512bh` (16 pairs of bf16).
                    let x = unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(rows[r][p] as i32)) };
                    acc[0] = _mm512_dpbf16_ps(acc[0], x, w[0]);
                    acc[1] = _mm512_dpbf16_ps(acc[1], x, w[1]);
                }
            }
            // SAFETY: AVX-512 F is among this function's features. `y` holds the `m` rows, so
            // rows `i0 .. i0 + (m - i0)` are in it, and columns `j0 .. j0 + NR` are this call's
            // alone (the caller's guarantee); `masks` comes from `store_masks(n, j0)`.
            unsafe { store_rows(y, &acc, m - i0, i0, n, j0, masks) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_reference_on_bf16_rounded_inputs() {
        if !available() {
            eprintln!("this CPU has no AVX-512 BF16: the bf16 GEMM is not used here and not tested");
            return;
        }
        // m = 11 (one full block and a tail), n = 45 (a panel and a partial one), odd k.
        let (m, n, k) = (11, 45, 77);
        let w: Vec<bf16> = (0..n * k).map(|i| bf16::from_f32(((i * 7919) % 1000) as f32 / 500.0 - 1.0)).collect();
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 104729) % 997) as f32 / 498.0 - 1.0).collect();
        let got = gemm_many(&x, m, k, &[(&w, n)]).remove(0);
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k).map(|c| bf16::from_f32(x[i * k + c]).to_f64() * w[j * k + c].to_f64()).sum();
                let g = got[i * n + j] as f64;
                assert!((g - want).abs() <= 1e-4 * (1.0 + want.abs()), "y[{i}, {j}] = {g}, want {want}");
            }
        }
    }
}
