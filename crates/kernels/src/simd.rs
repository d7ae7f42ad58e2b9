//! AVX2 building blocks shared by the kernels: the vector `exp`, padded loads and stores, the
//! softmax numerators and SiLU over slices, horizontal reductions. Every function needs AVX2
//! and FMA, which its caller has detected ([`crate::cpu::avx2`]).
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

/// e^x (Cephes' `expf`: x = n·ln2 + r, a degree-6 polynomial in r, times 2^n), within
/// 2 ulp of libm on [-87, 88]; inputs are clamped there, so -inf gives ~1.6e-38, and NaN stays
/// NaN (a NaN score must surface as NaN, not as a probability).
#[inline]
#[target_feature(enable = "avx2,fma")]
pub fn exp(x: __m256) -> __m256 {
    // `max_ps`/`min_ps` return their second operand when either is NaN: `x` goes second.
    let x = _mm256_min_ps(_mm256_set1_ps(88.0), _mm256_max_ps(_mm256_set1_ps(-87.0), x));
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
        // SAFETY: `i + 8 <= x.len()` (just checked), so the eight f32 read from `x[i]` lie
        // inside `x`; AVX is enabled by this function's target features.
        return unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) };
    }
    let mut buf = [pad; 8];
    buf[..x.len() - i].copy_from_slice(&x[i..]);
    // SAFETY: `buf` is a local `[f32; 8]`: exactly the eight values the load reads.
    unsafe { _mm256_loadu_ps(buf.as_ptr()) }
}

/// Stores the lanes of `v` that fall inside `o` from `i` on.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn store8(o: &mut [f32], i: usize, v: __m256) {
    if i + 8 <= o.len() {
        // SAFETY: `i + 8 <= o.len()` (just checked), so the eight f32 written from `o[i]` lie
        // inside `o`, which the `&mut` borrow gives this call alone.
        return unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(i), v) };
    }
    let mut buf = [0f32; 8];
    // SAFETY: `buf` is a local `[f32; 8]`: exactly the eight values the store writes.
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

/// [`super::log_sum_exp_argmax`].
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn log_sum_exp_argmax(s: &[f32]) -> (f64, u32) {
    let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
    for i in (0..s.len()).step_by(8) {
        m = _mm256_max_ps(m, load8(s, i, f32::NEG_INFINITY));
    }
    let max = hmax(m);
    let mv = _mm256_set1_ps(max);
    let mut arg = None;
    // The terms in f32 (each within 2 ulp), their sum in f64: a vocabulary of 49K terms summed
    // in f32 would lose ~1e-5 of the total.
    let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    for i in (0..s.len()).step_by(8) {
        let v = load8(s, i, f32::NEG_INFINITY);
        if arg.is_none() {
            let hits = _mm256_movemask_ps(_mm256_cmp_ps(v, mv, _CMP_EQ_OQ));
            if hits != 0 {
                arg = Some(i as u32 + hits.trailing_zeros());
            }
        }
        let e = exp(_mm256_sub_ps(v, mv));
        lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    let mut lanes = [0f64; 4];
    // SAFETY: `lanes` is a local `[f64; 4]`: exactly the four values the store writes.
    unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), _mm256_add_pd(lo, hi)) };
    (max as f64 + lanes.iter().sum::<f64>().ln(), arg.unwrap_or(0))
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
    // SAFETY: `lanes` is a local `[f32; 8]`: exactly the eight values the store writes.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
    lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

#[target_feature(enable = "avx2,fma")]
pub fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
}
