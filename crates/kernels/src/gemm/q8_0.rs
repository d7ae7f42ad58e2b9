//! Q8_0 weights with AVX-512 VNNI: `vpdpbusd` adds four byte products into each of 16 i32
//! lanes, 64 multiply-adds per instruction. As in llama.cpp, the activations are quantized to
//! Q8 blocks of 32 (scale max|x|/127) like the decode GEMV's.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes, so the activations are stored as `q + 128`
//! and each block's sum is corrected by `128 · Σ w`, computed when the panel is packed. A
//! panel block (32 `k` × 32 columns) holds the bytes as `[8 quads][32 columns][4]`, then the
//! columns' scales and corrections.

use rayon::prelude::*;

use crate::q8::{self, Q8_BLOCK, Q8_BYTES};
use super::{NR, Out, by_panels};

/// Activation rows per register block: 4 rows × 2 registers of i32 block sums and of f32
/// totals, with the loads, fit the 32 registers.
const MR: usize = 4;
/// Bytes of one packed block: 32 × 32 weights, 32 f32 scales, 32 i32 corrections.
const BLOCK: usize = Q8_BLOCK * NR + 2 * 4 * NR;

pub fn available() -> bool {
    crate::cpu::avx512_vnni()
}

/// `y[m, n] = q8(x)[m, k] · W[n, k]ᵀ` for Q8_0 matrices `ws` (`k` a multiple of 32); the
/// activations are quantized once for all of them. Call only where [`available`] holds.
pub fn gemm_many(x: &[f32], m: usize, k: usize, ws: &[(&[u8], usize)]) -> Vec<Vec<f32>> {
    assert!(available(), "the Q8_0 GEMM needs AVX-512 VNNI");
    assert!(x.len() == m * k && k.is_multiple_of(Q8_BLOCK));
    let nb = k / Q8_BLOCK;
    let mp = m.next_multiple_of(MR);
    // Padding rows hold q = 0 (stored 128) with scale 0.
    let mut xu = vec![128u8; mp * k];
    let mut xd = vec![0f32; mp * nb];
    xu.par_chunks_mut(k).zip(xd.par_chunks_mut(nb)).zip(x.par_chunks(k)).for_each(|((u, d), x)| {
        for ((u, d), x) in u.chunks_exact_mut(Q8_BLOCK).zip(d.iter_mut()).zip(x.chunks_exact(Q8_BLOCK)) {
            let (s, values) = q8::block(x);
            u.iter_mut().zip(values).for_each(|(u, q)| *u = (q as i32 + 128) as u8);
            *d = s;
        }
    });
    ws.iter()
        .map(|&(w, n)| {
            assert_eq!(w.len(), n * nb * Q8_BYTES);
            by_panels(m, n, nb * BLOCK, |j0, panel| pack(w, nb, j0, n, panel), |panel, out, j0| {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `available()` was asserted above (AVX-512 F, BW, VNNI). `xu` and `xd`
                // hold `m.next_multiple_of(MR)` rows of `k` bytes and `nb` scales, `panel` is
                // `by_panels`' buffer of `nb` packed blocks, `out` is `y` of `m × n`, and
                // `by_panels` gives each task its own panel, so columns `j0 .. j0 + NR` are its
                // alone.
                unsafe {
                    avx512::panel(&xu, &xd, m, k, panel, out, n, j0)
                }
            })
        })
        .collect()
}

/// Weight rows `j0 .. j0 + NR` as packed blocks (rows past `n` as zeros).
fn pack(w: &[u8], nb: usize, j0: usize, n: usize, panel: &mut [u8]) {
    panel.fill(0);
    for c in 0..NR.min(n - j0) {
        let row = &w[(j0 + c) * nb * Q8_BYTES..(j0 + c + 1) * nb * Q8_BYTES];
        for (b, src) in row.chunks_exact(Q8_BYTES).enumerate() {
            let dst = &mut panel[b * BLOCK..(b + 1) * BLOCK];
            let q = &src[2..];
            for quad in 0..Q8_BLOCK / 4 {
                dst[(quad * NR + c) * 4..][..4].copy_from_slice(&q[quad * 4..quad * 4 + 4]);
            }
            let scale = q8::scale(src);
            let corr: i32 = 128 * q.iter().map(|&v| v as i8 as i32).sum::<i32>();
            dst[Q8_BLOCK * NR + 4 * c..][..4].copy_from_slice(&scale.to_le_bytes());
            dst[Q8_BLOCK * NR + 4 * NR + 4 * c..][..4].copy_from_slice(&corr.to_le_bytes());
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::super::avx512::store_rows;
    use super::super::store_masks;
    use super::{BLOCK, MR, NR, Out, Q8_BLOCK};

    /// Columns `j0 .. j0 + NR` (those below `n`) of all `m` rows of `y` `[m, n]`, from one
    /// packed panel.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VNNI; `xu` holds `m` rounded up to [`MR`] rows of
    /// `k` offset bytes and `xd` their block scales, `panel` `k / 32` packed blocks, `y` `m × n`
    /// values of which no other thread writes these columns.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn panel(xu: &[u8], xd: &[f32], m: usize, k: usize, panel: &[u8], y: &Out, n: usize, j0: usize) {
        let nb = k / Q8_BLOCK;
        let masks = store_masks(n, j0);
        for i0 in (0..m).step_by(MR) {
            let mut total = [[_mm512_setzero_ps(); 2]; MR];
            for b in 0..nb {
                let blk = &panel[b * BLOCK..(b + 1) * BLOCK];
                let mut sums = [[_mm512_setzero_si512(); 2]; MR];
                let xp = xu[i0 * k + b * Q8_BLOCK..(i0 + MR - 1) * k + (b + 1) * Q8_BLOCK].as_ptr();
                for quad in 0..Q8_BLOCK / 4 {
                    // SAFETY: `blk` is a checked slice of `BLOCK` bytes and `quad < 8`, so the
                    // two 64-byte loads read bytes `128 · quad .. 128 · (quad + 1)`, inside its
                    // first `Q8_BLOCK * NR` = 1024. AVX-512 F is enabled here.
                    let w = unsafe {
                        let p = blk.as_ptr().add(quad * NR * 4) as *const __m512i;
                        [_mm512_loadu_si512(p), _mm512_loadu_si512(p.add(1))]
                    };
                    for (r, s) in sums.iter_mut().enumerate() {
                        // Four activation bytes, broadcast to every lane.
                        // SAFETY: `xp` starts a checked slice of `(MR - 1) · k + 32` bytes (rows
                        // `i0 .. i0 + MR`, block `b`); with `r < MR` and `quad < 8` the four bytes
                        // at `r · k + 4 · quad` end by `(MR - 1) · k + 32`, inside it.
                        let x = _mm512_set1_epi32(unsafe { (xp.add(r * k + quad * 4) as *const i32).read_unaligned() });
                        s[0] = _mm512_dpbusd_epi32(s[0], x, w[0]);
                        s[1] = _mm512_dpbusd_epi32(s[1], x, w[1]);
                    }
                }
                // SAFETY: `blk` holds `BLOCK` = 1024 + 2 · 128 bytes: the scales are the 128 bytes
                // from 1024 (two loads of 16 f32) and the corrections the 128 from 1152 (two of
                // 16 i32), all inside it; the loads are unaligned ones.
                let (scale, corr) = unsafe {
                    let p = blk.as_ptr().add(Q8_BLOCK * NR);
                    let c = p.add(4 * NR) as *const __m512i;
                    (
                        [_mm512_loadu_ps(p as *const f32), _mm512_loadu_ps((p as *const f32).add(16))],
                        [_mm512_loadu_si512(c), _mm512_loadu_si512(c.add(1))],
                    )
                };
                for (r, (t, s)) in total.iter_mut().zip(&sums).enumerate() {
                    let d = _mm512_set1_ps(xd[(i0 + r) * nb + b]);
                    for h in 0..2 {
                        let exact = _mm512_cvtepi32_ps(_mm512_sub_epi32(s[h], corr[h]));
                        t[h] = _mm512_fmadd_ps(exact, _mm512_mul_ps(scale[h], d), t[h]);
                    }
                }
            }
            // SAFETY: AVX-512 F is among this function's features. `y` holds the `m` rows, so
            // rows `i0 .. i0 + (m - i0)` are in it, and columns `j0 .. j0 + NR` are this call's
            // alone (the caller's guarantee); `masks` comes from `store_masks(n, j0)`.
            unsafe { store_rows(y, &total, m - i0, i0, n, j0, masks) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_decode_gemv_on_the_same_quantized_inputs() {
        if !available() {
            eprintln!("this CPU has no AVX-512 VNNI: the Q8_0 GEMM is not used here and not tested");
            return;
        }
        // m = 6 (a block of 4 and a tail), n = 45 (a panel and a partial one), 3 blocks of k.
        let (m, n, k) = (6, 45, 96);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let q = crate::q8::encode(&w);
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 104729) % 997) as f32 / 498.0 - 1.0).collect();
        let got = gemm_many(&x, m, k, &[(&q, n)]).remove(0);
        // The GEMV quantizes the activations the same way; rows one at a time.
        for i in 0..m {
            let want = crate::gemv::gemv(&x[i * k..(i + 1) * k], 1, k, crate::WeightData::Q8_0(&q), n);
            for j in 0..n {
                let (g, w) = (got[i * n + j], want[j]);
                assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "y[{i}, {j}] = {g}, GEMV {w}");
            }
        }
    }
}
