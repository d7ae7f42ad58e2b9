//! One query head's attention over cached keys and values: the decode (and short-block) kernel
//! behind [`super::kv_cache::HostKv::attend`].
//!
//! At context 1024 the plain loops cost ~20 ns per key (each score was one chain of dependent
//! FMAs, then a libm `exp` per key), a fifth of a q8_0 decode step. The AVX2 kernel scores eight
//! keys at once in independent chains, takes `exp` as a vector polynomial, and keeps the
//! output rows in registers while it accumulates the values (`bench/NOTES.md`). It returns the
//! softmax unnormalised ([`partial`]), so decode can split a head's keys across threads and
//! merge the pieces ([`combine`]). Keys and values are f32 or f16 ([`KvElem`]); f16 is widened
//! in registers (F16C), so it reads half the bytes and computes in f32 all the same.

use half::f16;
use half::slice::HalfFloatSliceExt;

/// What a KV cache stores keys and values as.
pub trait KvElem: Copy + Default + Send + Sync + std::fmt::Debug + 'static {
    /// Whether this is IEEE half precision (the kernels widen it with F16C).
    const F16: bool;
    fn to_f32(self) -> f32;
    /// `dst ← src`, rounded to this type.
    fn narrow_from(src: &[f32], dst: &mut [Self]);
}

impl KvElem for f32 {
    const F16: bool = false;
    fn to_f32(self) -> f32 {
        self
    }
    fn narrow_from(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
}

impl KvElem for f16 {
    const F16: bool = true;
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn narrow_from(src: &[f32], dst: &mut [Self]) {
        dst.convert_from_f32_slice(src);
    }
}

/// `t` queries (`q`, `o`: `[t, d]`, `q` already scaled) at positions `len ..` over keys and
/// values `[len + t, d]`: query `i` sees keys `0 ..= len + i`.
pub fn head<T: KvElem>(q: &[f32], k: &[T], v: &[T], o: &mut [f32], d: usize, len: usize) {
    for (ti, (qv, ov)) in q.chunks_exact(d).zip(o.chunks_exact_mut(d)).enumerate() {
        let (_, sum) = partial(qv, k, v, ov, d, len + ti + 1);
        ov.iter_mut().for_each(|o| *o /= sum);
    }
}

/// One query (`q`: `[d]`, scaled) over the first `n` keys and values, without the softmax's
/// division: writes `o = Σ_j e^(s_j − m) v_j` and returns `(m, Σ_j e^(s_j − m))` with `m` the
/// largest score. Partials over disjoint key ranges combine exactly ([`combine`]), which lets
/// decode split one head's keys across threads.
pub fn partial<T: KvElem>(q: &[f32], k: &[T], v: &[T], o: &mut [f32], d: usize, n: usize) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    // The kernel is compiled with F16C for both types (every AVX2 CPU has it).
    if d.is_multiple_of(8) && super::vmath::avx2() && is_x86_feature_detected!("f16c") {
        return unsafe { avx2::partial(q, &k[..n * d], &v[..n * d], o, d) };
    }
    portable(q, &k[..n * d], &v[..n * d], o, d)
}

/// [`partial`] for the `g` queries of one KV group at once (`q`, `o`: `[g, d]`, `ms`: `[g]`),
/// over the first `n` keys and values: decode's kernel. On AVX2 it reads each key and value
/// once for the whole group, in one pass.
pub fn group_partial<T: KvElem>(q: &[f32], k: &[T], v: &[T], o: &mut [f32], ms: &mut [(f32, f32)], d: usize, n: usize) {
    #[cfg(target_arch = "x86_64")]
    if d.is_multiple_of(8) && super::vmath::avx2() && is_x86_feature_detected!("f16c") {
        return unsafe { avx2::group_partial(q, &k[..n * d], &v[..n * d], o, ms, d) };
    }
    for ((q, o), ms) in q.chunks_exact(d).zip(o.chunks_exact_mut(d)).zip(ms) {
        *ms = portable(q, &k[..n * d], &v[..n * d], o, d);
    }
}

/// Merges [`partial`] results `(m, sum, o)` of one query over disjoint key ranges into the
/// normalised attention output `out`.
pub fn combine<'a>(parts: impl Iterator<Item = (f32, f32, &'a [f32])> + Clone, out: &mut [f32]) {
    let m = parts.clone().fold(f32::NEG_INFINITY, |a, (m, _, _)| a.max(m));
    out.fill(0.0);
    let mut sum = 0f32;
    for (pm, ps, po) in parts {
        // An empty range has m = -inf and weight 0.
        let w = if ps > 0.0 { (pm - m).exp() } else { 0.0 };
        sum += w * ps;
        out.iter_mut().zip(po).for_each(|(o, p)| *o += w * p);
    }
    out.iter_mut().for_each(|o| *o /= sum);
}

fn portable<T: KvElem>(q: &[f32], k: &[T], v: &[T], o: &mut [f32], d: usize) -> (f32, f32) {
    let mut p: Vec<f32> = k.chunks_exact(d).map(|kj| dot(q, kj)).collect();
    let (max, sum) = super::vmath::exp_minus_max(&mut p);
    o.fill(0.0);
    for (p, vj) in p.iter().zip(v.chunks_exact(d)) {
        o.iter_mut().zip(vj).for_each(|(o, v)| *o += p * v.to_f32());
    }
    (max, sum)
}

/// Eight partial sums, so the compiler can vectorise without reassociating one chain.
fn dot<T: KvElem>(a: &[f32], b: &[T]) -> f32 {
    let mut acc = [0f32; 8];
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i].to_f32();
        }
    }
    let tail = a.len() / 8 * 8;
    acc.iter().sum::<f32>() + a[tail..].iter().zip(&b[tail..]).map(|(x, y)| x * y.to_f32()).sum::<f32>()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::KvElem;
    use crate::model::vmath::avx2::{exp, exp_minus_max, hsum};

    /// Eight keys' or values' elements from `p`, as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8<T: KvElem>(p: *const T) -> __m256 {
        if T::F16 { _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.cast()) }) } else { unsafe { _mm256_loadu_ps(p.cast()) } }
    }

    /// [`super::partial`] over all of `k`, `v` (`[n, d]`) for `d` a multiple of 8.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn partial<T: KvElem>(q: &[f32], k: &[T], v: &[T], o: &mut [f32], d: usize) -> (f32, f32) {
        debug_assert!(d.is_multiple_of(8));
        let n = k.len() / d;
        let mut scores = vec![0f32; n];
        let qp = q.as_ptr();
        // Scores, eight keys per pass: eight independent FMA chains share each load of q.
        let mut j = 0;
        while j + 8 <= n {
            unsafe { _mm256_storeu_ps(scores[j..].as_mut_ptr(), scores8(qp, k[j * d..].as_ptr(), d)) };
            j += 8;
        }
        for (jj, kj) in k.chunks_exact(d).enumerate().skip(j) {
            scores[jj] = unsafe { dot(qp, kj.as_ptr(), d) };
        }
        let (max, sum) = unsafe { exp_minus_max(&mut scores) };
        weighted_sums(&scores, v, d, None, o);
        (max, sum)
    }

    /// [`super::group_partial`] for `d` a multiple of 8: one pass over the keys and values in
    /// blocks of eight, each block scored and accumulated by every query of the group while it
    /// is in L1 (an online softmax: each query's running max, and its sum and outputs rescaled
    /// when the max grows).
    ///
    /// Why one pass: from memory, the two-pass kernel ([`partial`]) cost about its time in cache
    /// plus its bytes at the bandwidth roof. Its phases (scores, exponentials, values, and the
    /// group's other queries again from L2) leave memory idle between them, while compute
    /// interleaved with a stream overlaps it (`bench/NOTES.md`, change 25).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn group_partial<T: KvElem>(q: &[f32], k: &[T], v: &[T], o: &mut [f32], ms: &mut [(f32, f32)], d: usize) {
        debug_assert!(d.is_multiple_of(8));
        let (n, g) = (k.len() / d, q.len() / d);
        o[..g * d].fill(0.0);
        let mut max = vec![_mm256_set1_ps(f32::NEG_INFINITY); g];
        let mut sum = vec![_mm256_setzero_ps(); g];
        let lanes = _mm256_setr_ps(0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0);
        let mut p = [0f32; 8];
        let bytes = 8 * d * size_of::<T>();
        for j in (0..n).step_by(8) {
            let b = (n - j).min(8);
            let (kp, vj) = (k[j * d..].as_ptr(), &v[j * d..(j + b) * d]);
            // The next block's keys and values, prefetched in a share per query: with the
            // group's compute between one block's loads and the next, the hardware prefetcher
            // alone left the scores waiting on memory (NOTES, change 25). Prefetching past the
            // end of `k` or `v` is harmless.
            let (knext, vnext) = (kp.wrapping_add(8 * d) as *const i8, vj.as_ptr().wrapping_add(8 * d) as *const i8);
            for h in 0..g {
                for at in (bytes * h / g..bytes * (h + 1) / g).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(knext.wrapping_add(at));
                    _mm_prefetch::<_MM_HINT_T0>(vnext.wrapping_add(at));
                }
                let qp = q[h * d..].as_ptr();
                let s = if b == 8 {
                    unsafe { scores8(qp, kp, d) }
                } else {
                    let mut s = [f32::NEG_INFINITY; 8];
                    for (i, s) in s[..b].iter_mut().enumerate() {
                        *s = unsafe { dot(qp, kp.add(i * d), d) };
                    }
                    unsafe { _mm256_loadu_ps(s.as_ptr()) }
                };
                let m = _mm256_max_ps(max[h], hmax(s));
                let mut e = exp(_mm256_sub_ps(s, m));
                if b < 8 {
                    // Missing keys' lanes would carry e^-87, not 0.
                    e = _mm256_and_ps(e, _mm256_cmp_ps::<_CMP_LT_OQ>(lanes, _mm256_set1_ps(b as f32)));
                }
                // The first block rescales zeros: e^-inf is clamped to ~1e-38, times 0.
                let scale = exp(_mm256_sub_ps(max[h], m));
                max[h] = m;
                sum[h] = _mm256_fmadd_ps(sum[h], scale, e);
                unsafe { _mm256_storeu_ps(p.as_mut_ptr(), e) };
                weighted_sums(&p[..b], vj, d, Some(scale), &mut o[h * d..(h + 1) * d]);
            }
        }
        for ((ms, m), s) in ms.iter_mut().zip(max).zip(sum) {
            *ms = (_mm256_cvtss_f32(m), hsum(s));
        }
    }

    /// The scores of eight keys (`k`: rows of `d` from `k`) against `q`: eight independent FMA
    /// chains share each load of q.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scores8<T: KvElem>(q: *const f32, k: *const T, d: usize) -> __m256 {
        let mut acc = [_mm256_setzero_ps(); 8];
        for c in (0..d).step_by(8) {
            let x = unsafe { _mm256_loadu_ps(q.add(c)) };
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(x, unsafe { load8(k.add(r * d + c)) }, *a);
            }
        }
        hsum8(acc)
    }

    /// One key's score.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot<T: KvElem>(q: *const f32, k: *const T, d: usize) -> f32 {
        let mut a = _mm256_setzero_ps();
        for c in (0..d).step_by(8) {
            a = _mm256_fmadd_ps(unsafe { _mm256_loadu_ps(q.add(c)) }, unsafe { load8(k.add(c)) }, a);
        }
        hsum(a)
    }

    /// `o ← Σ_j p_j v_j` (`v`: rows of `d`), or with `rescale`, `o ← rescale · o + Σ_j p_j v_j`;
    /// 64 columns at a time in eight registers.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn weighted_sums<T: KvElem>(p: &[f32], v: &[T], d: usize, rescale: Option<__m256>, o: &mut [f32]) {
        let mut c = 0;
        while c + 64 <= d {
            weighted_sum::<T, 8>(p, v, d, c, rescale, o);
            c += 64;
        }
        while c < d {
            weighted_sum::<T, 1>(p, v, d, c, rescale, o);
            c += 8;
        }
    }

    /// Columns `c .. c + 8W` of [`weighted_sums`]; a constant W so the accumulators unroll into
    /// registers.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn weighted_sum<T: KvElem, const W: usize>(p: &[f32], v: &[T], d: usize, c: usize, rescale: Option<__m256>, o: &mut [f32]) {
        assert!(c + 8 * W <= d && v.len() >= p.len() * d);
        let o = &mut o[c..c + 8 * W];
        let mut acc = [_mm256_setzero_ps(); W];
        if let Some(scale) = rescale {
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm256_mul_ps(scale, unsafe { _mm256_loadu_ps(o.as_ptr().add(8 * r)) });
            }
        }
        // Dereferenced only for rows that exist: row j's columns c .. c + 8W (asserted above).
        let vp = v.as_ptr().wrapping_add(c);
        for (j, &pj) in p.iter().enumerate() {
            let pj = _mm256_set1_ps(pj);
            let row = unsafe { vp.add(j * d) };
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(pj, unsafe { load8(row.add(8 * r)) }, *a);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(8 * r), *a) };
        }
    }

    /// The largest lane of `v`, in every lane.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hmax(v: __m256) -> __m256 {
        let v = _mm256_max_ps(v, _mm256_permute2f128_ps(v, v, 1));
        let v = _mm256_max_ps(v, _mm256_permute_ps(v, 0b01_00_11_10));
        _mm256_max_ps(v, _mm256_permute_ps(v, 0b10_11_00_01))
    }

    /// The eight horizontal sums of `a`, in order.
    #[target_feature(enable = "avx2,fma")]
    fn hsum8(a: [__m256; 8]) -> __m256 {
        let t0 = _mm256_hadd_ps(a[0], a[1]);
        let t1 = _mm256_hadd_ps(a[2], a[3]);
        let t2 = _mm256_hadd_ps(a[4], a[5]);
        let t3 = _mm256_hadd_ps(a[6], a[7]);
        let u0 = _mm256_hadd_ps(t0, t1);
        let u1 = _mm256_hadd_ps(t2, t3);
        _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Softmax attention of one query over `k`, `v` in f64.
    fn reference(q: &[f32], k: &[f32], v: &[f32], d: usize) -> Vec<f32> {
        let s: Vec<f64> = k.chunks_exact(d).map(|kj| q.iter().zip(kj).map(|(a, b)| *a as f64 * *b as f64).sum()).collect();
        let m = s.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        let p: Vec<f64> = s.iter().map(|s| (s - m).exp()).collect();
        let sum: f64 = p.iter().sum();
        (0..d).map(|c| (p.iter().zip(v.chunks_exact(d)).map(|(p, vj)| p * vj[c] as f64).sum::<f64>() / sum) as f32).collect()
    }

    fn close(got: &[f32], want: &[f32]) -> bool {
        got.iter().zip(want).all(|(g, w)| (g - w).abs() <= 1e-5 * (1.0 + w.abs()))
    }

    #[test]
    fn kernels_match_a_reference() {
        // 19 keys: two blocks of eight and a tail; t = 3 queries see 17, 18 and 19 keys;
        // d = 72 takes one 64-wide and one 8-wide pass over the values, d = 6 the portable loop.
        for d in [64, 72, 6] {
            let (len, t) = (16, 3);
            let val = |i: usize, m: usize| ((i * m) % 1009) as f32 / 504.0 - 1.0;
            let q: Vec<f32> = (0..t * d).map(|i| val(i, 7)).collect();
            let k: Vec<f32> = (0..(len + t) * d).map(|i| val(i, 13)).collect();
            let v: Vec<f32> = (0..(len + t) * d).map(|i| val(i, 31)).collect();
            check(&q, &k, &v, d, len, t);
            // An f16 cache: the kernels must compute exactly on the rounded keys and values.
            let (k16, v16): (Vec<f16>, Vec<f16>) = (k.iter().map(|&x| f16::from_f32(x)).collect(), v.iter().map(|&x| f16::from_f32(x)).collect());
            assert!(k16.iter().zip(&k).any(|(a, b)| a.to_f32() != *b), "the test values must round in f16");
            check(&q, &k16, &v16, d, len, t);
        }
    }

    fn check<T: KvElem>(q: &[f32], k: &[T], v: &[T], d: usize, len: usize, t: usize) {
        let what = format!("d = {d}, f16 {}", T::F16);
        let (kf, vf): (Vec<f32>, Vec<f32>) = (k.iter().map(|x| x.to_f32()).collect(), v.iter().map(|x| x.to_f32()).collect());
        let mut got = vec![0f32; t * d];
        head(q, k, v, &mut got, d, len);
        for ti in 0..t {
            let n = len + ti + 1;
            let want = reference(&q[ti * d..][..d], &kf[..n * d], &vf[..n * d], d);
            assert!(close(&got[ti * d..][..d], &want), "{what}, query {ti}");
        }
        // The last query's keys split into ranges of 5 (and an empty one), then combined.
        let qv = &q[(t - 1) * d..];
        let n = len + t;
        let mut parts = Vec::new();
        for j0 in (0..n).step_by(5).chain([n]) {
            let j1 = (j0 + 5).min(n);
            let mut o = vec![0f32; d];
            let (m, sum) = if j1 > j0 { partial(qv, &k[j0 * d..], &v[j0 * d..], &mut o, d, j1 - j0) } else { (f32::NEG_INFINITY, 0.0) };
            parts.push((m, sum, o));
        }
        let mut split = vec![0f32; d];
        combine(parts.iter().map(|(m, s, o)| (*m, *s, o.as_slice())), &mut split);
        assert!(close(&split, &reference(qv, &kf, &vf, d)), "{what}, split");
        // The t queries as one group over the same keys: ranges of 1 to 19 keys (the one-pass
        // kernel's tail, one block, blocks and a tail, empty), split and combined.
        for step in [1, 5, 8, 11, 19] {
            let mut parts = Vec::new();
            for j0 in (0..n).step_by(step).chain([n]) {
                let j1 = (j0 + step).min(n);
                let (mut o, mut ms) = (vec![f32::NAN; t * d], vec![(0.0, 0.0); t]);
                group_partial(q, &k[j0 * d..], &v[j0 * d..], &mut o, &mut ms, d, j1 - j0);
                if j1 == j0 {
                    assert!(ms.iter().all(|&(m, s)| m == f32::NEG_INFINITY && s == 0.0), "{what}: empty range");
                }
                parts.push((ms, o));
            }
            for ti in 0..t {
                let mut got = vec![0f32; d];
                combine(parts.iter().map(|(ms, o)| (ms[ti].0, ms[ti].1, &o[ti * d..][..d])), &mut got);
                assert!(close(&got, &reference(&q[ti * d..][..d], &kf, &vf, d)), "{what}, group query {ti}, ranges of {step}");
            }
        }
    }
}
