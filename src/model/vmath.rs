//! The forward's element-wise work: softmax rows of causal attention and SwiGLU's
//! `silu(gate) ⊙ up` with a vector `exp`, and the residual adds; on slices, in parallel.
//!
//! candle's versions call libm's `expf` once per element on one thread (softmax also
//! exponentiates the masked half of each score block): 8% of a prefill profile.

use candle_core::{Result, Tensor};

use super::gemv::WeightData;
use super::linear::with_weight_data;
use rayon::prelude::*;

/// Elements per parallel task: enough work to pay for a task, small enough to spread.
const CHUNK: usize = 1 << 14;

/// Softmax of each row of `x` (rows of `keys`), where row `r` sees only its first
/// `visible(r)` keys (causal attention; the rest become 0).
pub fn causal_softmax(x: &[f32], keys: usize, visible: impl Fn(usize) -> usize + Sync) -> Vec<f32> {
    let mut out = x.to_vec();
    let rows_per_task = (CHUNK / keys.max(1)).max(1);
    out.par_chunks_mut(rows_per_task * keys).enumerate().for_each(|(c, o)| {
        for (i, o) in o.chunks_exact_mut(keys).enumerate() {
            let (seen, masked) = o.split_at_mut(visible(c * rows_per_task + i).min(keys));
            let (_, sum) = exp_minus_max(seen);
            let inv = 1.0 / sum;
            seen.iter_mut().for_each(|v| *v *= inv);
            masked.fill(0.0);
        }
    });
    out
}

/// `silu(g) · u = g / (1 + e^-g) · u`, element by element.
pub fn silu_mul(gate: &[f32], up: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; gate.len()];
    out.par_chunks_mut(CHUNK).zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK))).for_each(|(o, (g, u))| {
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            return unsafe { avx2::silu_mul(g, u, o) };
        }
        for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    });
    out
}

/// `a + b` for same-shape tensors: the residual adds. candle runs element-wise ops of 64K
/// elements and more on its own pool, whose thread then spins for a while after each op, on a
/// 2-core machine against rayon's two threads in the GEMM that follows: 2–3% of an f32 prefill
/// (`bench/NOTES.md`, change 27). This add runs on rayon's threads instead.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() == b.shape()
        && let Some(sum) = with_cpu_f32(&[a, b], |x| x[0].par_iter().zip(x[1]).with_min_len(CHUNK).map(|(a, b)| a + b).collect::<Vec<f32>>())?
    {
        return Tensor::from_vec(sum, a.shape(), a.device());
    }
    a + b
}

/// Softmax numerators in place: `s_j ← e^(s_j − m)`; returns `(m, Σ_j e^(s_j − m))` with `m`
/// the largest score. Causal softmax and decode attention share it.
pub(crate) fn exp_minus_max(s: &mut [f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        return unsafe { avx2::exp_minus_max(s) };
    }
    let max = s.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    let mut sum = 0f32;
    for v in s.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    (max, sum)
}

/// Whether the CPU runs the AVX2/FMA kernels here and in [`super::attend`].
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Whether the CPU also has AVX-512 VNNI on 256-bit registers (Q8_0 decode, the 8-bit KV
/// cache's scores).
#[cfg(target_arch = "x86_64")]
pub(crate) fn vnni() -> bool {
    avx2()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// `f` over the data of `ts`, when each is a contiguous f32 tensor on the CPU.
pub fn with_cpu_f32<R>(ts: &[&Tensor], f: impl FnOnce(&[&[f32]]) -> R) -> Result<Option<R>> {
    let r = with_weight_data(ts, |data| {
        let fs: Option<Vec<&[f32]>> = data.iter().map(|(d, _)| if let WeightData::F32(x) = d { Some(*x) } else { None }).collect();
        fs.map(|fs| f(&fs))
    })?;
    Ok(r.flatten())
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    /// e^x (Cephes' `expf`: x = n·ln2 + r, a degree-6 polynomial in r, times 2^n), within
    /// 2 ulp of libm on [-87, 88]; inputs are clamped there, so -inf gives ~1.6e-38.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub fn exp(x: __m256) -> __m256 {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0)), _mm256_set1_ps(88.0));
        let n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        // ln2 in two parts so r = x - n·ln2 stays exact.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5e-1] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        let scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        _mm256_mul_ps(p, _mm256_castsi256_ps(scale))
    }

    /// Elements `i .. i + 8` of `x`, past its end filled with `pad`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn load8(x: &[f32], i: usize, pad: f32) -> __m256 {
        if i + 8 <= x.len() {
            return unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) };
        }
        let mut buf = [pad; 8];
        buf[..x.len() - i].copy_from_slice(&x[i..]);
        unsafe { _mm256_loadu_ps(buf.as_ptr()) }
    }

    /// Stores the lanes of `v` that fall inside `o` from `i` on.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn store8(o: &mut [f32], i: usize, v: __m256) {
        if i + 8 <= o.len() {
            return unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(i), v) };
        }
        let mut buf = [0f32; 8];
        unsafe { _mm256_storeu_ps(buf.as_mut_ptr(), v) };
        let n = o.len() - i;
        o[i..].copy_from_slice(&buf[..n]);
    }

    /// [`super::exp_minus_max`].
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_minus_max(s: &mut [f32]) -> (f32, f32) {
        let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
        for i in (0..s.len()).step_by(8) {
            m = _mm256_max_ps(m, load8(s, i, f32::NEG_INFINITY));
        }
        let max = hmax(m);
        // Padding lanes give e^-87, far below what the sum resolves.
        let mut sum = _mm256_setzero_ps();
        for i in (0..s.len()).step_by(8) {
            let e = exp(_mm256_sub_ps(load8(s, i, f32::NEG_INFINITY), _mm256_set1_ps(max)));
            sum = _mm256_add_ps(sum, e);
            store8(s, i, e);
        }
        (max, hsum(sum))
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_mul(g: &[f32], u: &[f32], o: &mut [f32]) {
        let one = _mm256_set1_ps(1.0);
        for i in (0..g.len()).step_by(8) {
            let gv = load8(g, i, 0.0);
            let s = _mm256_div_ps(gv, _mm256_add_ps(one, exp(_mm256_sub_ps(_mm256_setzero_ps(), gv))));
            store8(o, i, _mm256_mul_ps(s, load8(u, i, 0.0)));
        }
    }

    #[target_feature(enable = "avx2,fma")]
    fn hmax(v: __m256) -> f32 {
        let mut lanes = [0f32; 8];
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
        lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(a, b)| (a - b).abs() <= tol * (1e-6 + b.abs()))
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn exp_is_within_a_few_ulp_of_libm() {
        if !avx2() {
            return;
        }
        let xs: Vec<f32> = (0..14_000).map(|i| -87.0 + i as f32 * 0.0125).collect();
        let mut got = vec![0f32; xs.len()];
        for i in (0..xs.len()).step_by(8) {
            unsafe { std::arch::x86_64::_mm256_storeu_ps(got[i..].as_mut_ptr(), avx2::exp(std::arch::x86_64::_mm256_loadu_ps(xs[i..].as_ptr()))) };
        }
        let want: Vec<f32> = xs.iter().map(|x| x.exp()).collect();
        assert!(close(&got, &want, 4.0 * f32::EPSILON));
    }

    #[test]
    fn softmax_and_silu_match_scalar_formulas() {
        // 13 keys: one full vector and a padded tail; row r sees r + 3 of them.
        let keys = 13;
        let x: Vec<f32> = (0..5 * keys).map(|i| ((i * 37) % 101) as f32 / 10.0 - 5.0).collect();
        let got = causal_softmax(&x, keys, |r| r + 3);
        let mut want = vec![0f32; x.len()];
        for (r, (row, w)) in x.chunks(keys).zip(want.chunks_mut(keys)).enumerate() {
            let n = r + 3;
            let max = row[..n].iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
            let sum: f32 = row[..n].iter().map(|v| (v - max).exp()).sum();
            for j in 0..n {
                w[j] = (row[j] - max).exp() / sum;
            }
        }
        assert!(close(&got, &want, 1e-5));
        let up: Vec<f32> = x.iter().map(|v| v * 0.5 + 1.0).collect();
        let want: Vec<f32> = x.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
        assert!(close(&silu_mul(&x, &up), &want, 1e-5));
    }
}
