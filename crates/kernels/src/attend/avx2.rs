//! The AVX2 attention kernels behind [`super::partial`] and [`super::group_partial`], and
//! the VNNI scores of 8-bit keys.

use std::arch::x86_64::*;

use super::{KvElem, KvRows, QueryQ8};
use crate::simd::{exp, exp_minus_max, hsum};

/// Eight keys' or values' elements from `p`, as f32.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `p` must point at eight readable elements of `T`,
/// and `T` must be one of this crate's [`KvElem`] types, as the flags decide how many bytes
/// are read: f16 (`F16`, 16 bytes), i8 (`SCALED`, 8 bytes) or f32 (neither, 32 bytes).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8<T: KvElem>(p: *const T) -> __m256 {
    if T::F16 {
        // SAFETY: `T` is f16 (the contract), so the 16 bytes read are the eight elements at `p`
        // that the caller guarantees readable; F16C is enabled here.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.cast()) })
    } else if T::SCALED {
        // SAFETY: `T` is i8 (the contract), so the 8 bytes read are the eight elements at `p`
        // that the caller guarantees readable.
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(unsafe { _mm_loadl_epi64(p.cast()) }))
    } else {
        // SAFETY: `T` is f32 (the contract), so the 32 bytes read are the eight elements at `p`
        // that the caller guarantees readable.
        unsafe { _mm256_loadu_ps(p.cast()) }
    }
}

/// Eight rows' scales from `s` at `j`, or ones for a float type; `b` < 8 rows fill the
/// missing lanes with ones.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scales8<T: KvElem>(s: &[f32], j: usize, b: usize) -> __m256 {
    if !T::SCALED {
        return _mm256_set1_ps(1.0);
    }
    if b == 8 {
        // SAFETY: the load reads the eight f32 of the checked slice `s[j..j + 8]`.
        return unsafe { _mm256_loadu_ps(s[j..j + 8].as_ptr()) };
    }
    let mut x = [1f32; 8];
    x[..b].copy_from_slice(&s[j..j + b]);
    // SAFETY: `x` is a local `[f32; 8]`: exactly the eight values the load reads.
    unsafe { _mm256_loadu_ps(x.as_ptr()) }
}

/// [`super::partial`] over all of `k`, `v` (`[n, d]`) for `d` a multiple of 8.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `d` must be a multiple of 8, `q` must hold at
/// least `d` values (read through raw pointers), and `T` must be one of this crate's
/// [`KvElem`] types ([`load8`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn partial<T: KvElem>(q: &[f32], kv: KvRows<T>, o: &mut [f32], d: usize) -> (f32, f32) {
    debug_assert!(d.is_multiple_of(8));
    let (k, v) = (kv.k, kv.v);
    let n = k.len() / d;
    let mut scores = vec![0f32; n];
    let qp = q.as_ptr();
    if let Some(k8) = T::as_i8(k) {
        // SAFETY: `scores_q8` needs only this function's AVX2, FMA and F16C (its caller
        // checked the CPU); it reads `k8` and `out` through checked slices.
        unsafe { scores_q8(&QueryQ8::new(q), k8, d, &mut scores) };
    } else {
        // Scores, eight keys per pass: eight independent FMA chains share each load of q.
        let mut j = 0;
        while j + 8 <= n {
            // SAFETY: `j + 8 <= n = scores.len()`, so the store writes `scores[j..j + 8]`.
            // `scores8` reads `d` (a multiple of 8) values at `qp`, which `q` holds (the
            // contract), and keys `j .. j + 8`, which lie in `k` as `(j + 8) · d <= n · d <=
            // k.len()`; `T` is one of this crate's types (the contract).
            unsafe { _mm256_storeu_ps(scores[j..].as_mut_ptr(), scores8(qp, k[j * d..].as_ptr(), d)) };
            j += 8;
        }
        for (jj, kj) in k.chunks_exact(d).enumerate().skip(j) {
            // SAFETY: `kj` is one key of exactly `d` elements (`chunks_exact`), `q` holds `d`
            // values (the contract), and `d` is a multiple of 8.
            scores[jj] = unsafe { dot(qp, kj.as_ptr(), d) };
        }
    }
    if T::SCALED {
        scores.iter_mut().zip(kv.k_scale).for_each(|(s, ks)| *s *= ks);
    }
    // SAFETY: `exp_minus_max` needs AVX2 and FMA, among this function's features; it reads
    // and writes `scores` through checked slices.
    let (max, sum) = unsafe { exp_minus_max(&mut scores) };
    if T::SCALED {
        scores.iter_mut().zip(kv.v_scale).for_each(|(p, vs)| *p *= vs);
    }
    weighted_sums(&scores, v, d, Start::Zero, o);
    (max, sum)
}

/// [`super::group_partial`] for `d` a multiple of 8: one pass over the keys and values in
/// blocks of eight, each block scored and accumulated by every query of the group while it
/// is in L1 (an online softmax: each query's running max, and its sum and outputs rescaled
/// when a block's largest score passes that max by more than [`LAZY_RESCALE`]).
///
/// Why one pass: from memory, the two-pass kernel ([`partial`]) cost about its time in cache
/// plus its bytes at the bandwidth roof. Its phases (scores, exponentials, values, and the
/// group's other queries again from L2) leave memory idle between them, while compute
/// interleaved with a stream overlaps it (`bench/NOTES.md`).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `d` must be a multiple of 8, and `T` one of this
/// crate's [`KvElem`] types ([`load8`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn group_partial<T: KvElem>(q: &[f32], q8: &[QueryQ8], kv: KvRows<T>, o: &mut [f32], ms: &mut [(f32, f32)], d: usize) {
    // SAFETY: the body's contract is this function's (with `VNNI` false it needs no AVX-512),
    // and, inlined here, it is compiled with this function's features.
    unsafe { group_partial_with::<T, false>(q, q8, kv, o, ms, d) }
}

/// [`group_partial`] of 8-bit keys, scored eight at a time with VNNI ([`scores8_vnni`]).
/// Its own entry point so that the whole kernel, not only the scores, is compiled with
/// AVX-512's features, and the scores inline into it.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C and AVX-512 F/VL/BW/VNNI; `d` must be a multiple of 32.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
pub unsafe fn group_partial_vnni(q: &[f32], q8: &[QueryQ8], kv: KvRows<i8>, o: &mut [f32], ms: &mut [(f32, f32)], d: usize) {
    // SAFETY: the body's contract is this function's: the element type is i8 and `d` a
    // multiple of 32 (so of 8), and, inlined here, the body is compiled with these features,
    // which `VNNI` = true needs for `scores8_vnni`.
    unsafe { group_partial_with::<i8, true>(q, q8, kv, o, ms, d) }
}

/// The body of [`group_partial`] and [`group_partial_vnni`], inlined into each so that it
/// is compiled with that entry point's features (a function of its own would be compiled
/// with the smaller set and call the VNNI scores out of line).
///
/// # Safety
/// As the entry point's; only [`group_partial`] (`VNNI` false) and [`group_partial_vnni`]
/// (`VNNI` true, `T` = i8) may call it, so that it is compiled with their features.
#[inline(always)]
unsafe fn group_partial_with<T: KvElem, const VNNI: bool>(q: &[f32], q8: &[QueryQ8], kv: KvRows<T>, o: &mut [f32], ms: &mut [(f32, f32)], d: usize) {
    // SAFETY: inlined into an entry point, this body runs with that entry point's features
    // (AVX2, FMA, F16C, and AVX-512 F/VL/BW/VNNI when `VNNI`), which its caller has checked on
    // the CPU; that makes the intrinsics and the target-feature helpers sound to call. The raw
    // reads: a query `h < g = q.len() / d` has its `d` values at `qp`. Block `j` (`j < n =
    // k.len() / d`) has `b = min(n - j, 8)` keys at `kp`, inside `k`: `scores8` and
    // `scores8_vnni` run only when `b == 8` and read keys `j .. j + 8`, `dot` reads key
    // `j + i` for `i < b`, and `kp.add(i * d)` stays in `k`. `VNNI` is true only with `T` =
    // i8 and `d` a multiple of 32 (the VNNI entry point's contract), what `scores8_vnni`
    // needs; `d` is a multiple of 8 for `scores8` and `dot`, and `T` is one of this crate's
    // element types (the entry point's contract) for `load8`. The prefetches may point past
    // `k` or `v` (`wrapping_add`) but a prefetch never faults. The other loads and stores are
    // on local `[f32; 8]`s, and the rest goes through checked slices.
    unsafe {
        debug_assert!(d.is_multiple_of(8));
        let (k, v) = (kv.k, kv.v);
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
            let (ks, vs) = (scales8::<T>(kv.k_scale, j, b), scales8::<T>(kv.v_scale, j, b));
            // The next block's keys and values, prefetched in a share per query: with the
            // group's compute between one block's loads and the next, the hardware prefetcher
            // alone does not run far enough ahead, and the scores would wait on memory.
            // Prefetching past the end of `k` or `v` is harmless.
            let (knext, vnext) = (kp.wrapping_add(8 * d) as *const i8, vj.as_ptr().wrapping_add(8 * d) as *const i8);
            for h in 0..g {
                for at in (bytes * h / g..bytes * (h + 1) / g).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(knext.wrapping_add(at));
                    _mm_prefetch::<_MM_HINT_T0>(vnext.wrapping_add(at));
                }
                let qp = q[h * d..].as_ptr();
                let s = if VNNI && b == 8 {
                    scores8_vnni(&q8[h], kp.cast(), d)
                } else if let Some(k8) = T::as_i8(&k[j * d..(j + b) * d]) {
                    let mut s = [f32::NEG_INFINITY; 8];
                    scores_q8(&q8[h], k8, d, &mut s[..b]);
                    _mm256_loadu_ps(s.as_ptr())
                } else if b == 8 {
                    scores8(qp, kp, d)
                } else {
                    let mut s = [f32::NEG_INFINITY; 8];
                    for (i, s) in s[..b].iter_mut().enumerate() {
                        *s = dot(qp, kp.add(i * d), d);
                    }
                    _mm256_loadu_ps(s.as_ptr())
                };
                let s = if T::SCALED { _mm256_mul_ps(s, ks) } else { s };
                // The running max moves only when a block passes it by more than
                // `LAZY_RESCALE`: the rare rescale is a predicted branch, where an exponential
                // and a multiply of the outputs on every block chained each block to the last.
                let bm = hmax(s);
                let start = if _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(bm, _mm256_add_ps(max[h], _mm256_set1_ps(LAZY_RESCALE)))) != 0 {
                    // The first block rescales zeros: e^-inf is clamped to ~1e-38, times 0.
                    let scale = exp(_mm256_sub_ps(max[h], bm));
                    max[h] = bm;
                    sum[h] = _mm256_mul_ps(sum[h], scale);
                    Start::Scaled(scale)
                } else {
                    Start::Add
                };
                let mut e = exp(_mm256_sub_ps(s, max[h]));
                if b < 8 {
                    // Missing keys' lanes would carry e^-87, not 0.
                    e = _mm256_and_ps(e, _mm256_cmp_ps::<_CMP_LT_OQ>(lanes, _mm256_set1_ps(b as f32)));
                }
                sum[h] = _mm256_add_ps(sum[h], e);
                let e = if T::SCALED { _mm256_mul_ps(e, vs) } else { e };
                _mm256_storeu_ps(p.as_mut_ptr(), e);
                weighted_sums(&p[..b], vj, d, start, &mut o[h * d..(h + 1) * d]);
            }
        }
        for ((ms, m), s) in ms.iter_mut().zip(max).zip(sum) {
            *ms = (_mm256_cvtss_f32(m), hsum(s));
        }
    }
}

/// The scores of the 8-bit keys `k` (rows of `d`) into `out`: eight keys per pass with VNNI
/// where the CPU has it and `d` is a multiple of 32, one at a time otherwise.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_q8(q: &QueryQ8, k: &[i8], d: usize, out: &mut [f32]) {
    let mut j = 0;
    if d.is_multiple_of(32) && crate::cpu::vnni256() {
        while j + 8 <= out.len() {
            // SAFETY: `cpu::vnni256` found AVX-512 F/VL/BW/VNNI (and AVX2, FMA) and `d` is a
            // multiple of 32 (both checked above); the checked slice `k[j * d..(j + 8) * d]`
            // is the eight rows of `d` the kernel reads.
            let s = unsafe { scores8_vnni(q, k[j * d..(j + 8) * d].as_ptr(), d) };
            // SAFETY: `j + 8 <= out.len()` (the loop's condition), so the store writes
            // `out[j..j + 8]`.
            unsafe { _mm256_storeu_ps(out[j..].as_mut_ptr(), s) };
            j += 8;
        }
    }
    for (s, kj) in out[j..].iter_mut().zip(k[j * d..].chunks_exact(d)) {
        *s = q.score(kj);
    }
}

/// [`QueryQ8::score`] of eight keys: `(k + 128)` as unsigned bytes times `q`, eight
/// independent chains, less `128 · Σ q` once per key; integers, so the same sums.
///
/// # Safety
/// The CPU must support AVX2 and AVX-512 F/VL/BW/VNNI; `k` must hold eight rows of `d`, a
/// multiple of 32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
unsafe fn scores8_vnni(q: &QueryQ8, k: *const i8, d: usize) -> __m256 {
    let mut acc = [_mm256_setzero_si256(); 8];
    let flip = _mm256_set1_epi8(-128);
    for c in (0..d).step_by(32) {
        // SAFETY: the load reads the 32 bytes of the checked slice `q.q[c..c + 32]`.
        let x = unsafe { _mm256_loadu_si256(q.q[c..c + 32].as_ptr().cast()) };
        for (r, a) in acc.iter_mut().enumerate() {
            // SAFETY: `r < 8` and, `d` being a multiple of 32, `c + 32 <= d`: the 32 bytes read
            // are row `r`'s columns `c .. c + 32`, inside the eight rows of `d` at `k` (the
            // contract).
            let kr = unsafe { _mm256_loadu_si256(k.add(r * d + c).cast()) };
            *a = _mm256_dpbusd_epi32(*a, _mm256_xor_si256(kr, flip), x);
        }
    }
    // As `hsum8`, in integers (a closure here would not inherit the target features).
    let (t0, t1) = (_mm256_hadd_epi32(acc[0], acc[1]), _mm256_hadd_epi32(acc[2], acc[3]));
    let (t2, t3) = (_mm256_hadd_epi32(acc[4], acc[5]), _mm256_hadd_epi32(acc[6], acc[7]));
    let (u0, u1) = (_mm256_hadd_epi32(t0, t1), _mm256_hadd_epi32(t2, t3));
    let sums = _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20), _mm256_permute2x128_si256(u0, u1, 0x31));
    let sums = _mm256_sub_epi32(sums, _mm256_set1_epi32(q.bias));
    _mm256_mul_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(q.scale))
}

/// The scores of eight keys (`k`: rows of `d` from `k`) against `q`: eight independent FMA
/// chains share each load of q.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `d` must be a multiple of 8, `q` point at `d`
/// readable f32 and `k` at eight rows of `d` readable elements, `T` one of this crate's
/// [`KvElem`] types ([`load8`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores8<T: KvElem>(q: *const f32, k: *const T, d: usize) -> __m256 {
    let mut acc = [_mm256_setzero_ps(); 8];
    for c in (0..d).step_by(8) {
        // SAFETY: `d` is a multiple of 8, so `c + 8 <= d`: eight of the `d` values at `q`.
        let x = unsafe { _mm256_loadu_ps(q.add(c)) };
        for (r, a) in acc.iter_mut().enumerate() {
            // SAFETY: `r < 8` and `c + 8 <= d`: row `r`'s elements `c .. c + 8`, inside the
            // eight rows of `d` at `k`; `T` is one of this crate's types (the contract).
            *a = _mm256_fmadd_ps(x, unsafe { load8(k.add(r * d + c)) }, *a);
        }
    }
    hsum8(acc)
}

/// One key's score.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `d` must be a multiple of 8, `q` point at `d`
/// readable f32 and `k` at `d` readable elements, `T` one of this crate's [`KvElem`] types
/// ([`load8`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot<T: KvElem>(q: *const f32, k: *const T, d: usize) -> f32 {
    let mut a = _mm256_setzero_ps();
    for c in (0..d).step_by(8) {
        // SAFETY: `d` is a multiple of 8, so `c + 8 <= d`: both reads are eight of the `d`
        // values at `q` and at `k` (the contract).
        a = _mm256_fmadd_ps(unsafe { _mm256_loadu_ps(q.add(c)) }, unsafe { load8(k.add(c)) }, a);
    }
    hsum(a)
}

/// `o ← start + Σ_j p_j v_j` (`v`: rows of `d`), `start` being zero, `o` or `scale · o` as
/// [`Start`] says; 64 columns at a time in eight registers.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn weighted_sums<T: KvElem>(p: &[f32], v: &[T], d: usize, start: Start, o: &mut [f32]) {
    let mut c = 0;
    while c + 64 <= d {
        weighted_sum::<T, 8>(p, v, d, c, start, o);
        c += 64;
    }
    while c < d {
        weighted_sum::<T, 1>(p, v, d, c, start, o);
        c += 8;
    }
}

/// Columns `c .. c + 8W` of [`weighted_sums`]; a constant W so the accumulators unroll into
/// registers.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn weighted_sum<T: KvElem, const W: usize>(p: &[f32], v: &[T], d: usize, c: usize, start: Start, o: &mut [f32]) {
    assert!(c + 8 * W <= d && v.len() >= p.len() * d);
    let o = &mut o[c..c + 8 * W];
    let mut acc = [_mm256_setzero_ps(); W];
    match start {
        Start::Zero => {}
        Start::Add => {
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY: `o` was re-sliced to exactly `8W` values and `r < W`: the eight read
                // are `o[8r..8r + 8]`.
                *a = unsafe { _mm256_loadu_ps(o.as_ptr().add(8 * r)) };
            }
        }
        Start::Scaled(scale) => {
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY: as above: `o[8r..8r + 8]` of the `8W` values of `o`.
                *a = _mm256_mul_ps(scale, unsafe { _mm256_loadu_ps(o.as_ptr().add(8 * r)) });
            }
        }
    }
    // Dereferenced only for rows that exist: row j's columns c .. c + 8W (asserted above).
    let vp = v.as_ptr().wrapping_add(c);
    for (j, &pj) in p.iter().enumerate() {
        let pj = _mm256_set1_ps(pj);
        // SAFETY: `j < p.len()` and `c + 8W <= d` (asserted), so `c + j · d` is below
        // `p.len() · d <= v.len()` (asserted): `row` points at row `j`'s column `c`, in `v`.
        let row = unsafe { vp.add(j * d) };
        for (r, a) in acc.iter_mut().enumerate() {
            // SAFETY: `r < W`: columns `c + 8r .. c + 8r + 8` of row `j`, inside `v` as
            // `c + 8W <= d` (asserted). `T` is one of this crate's `KvElem` types, as every
            // caller's contract requires ([`load8`]); AVX2, FMA and F16C are enabled here.
            *a = _mm256_fmadd_ps(pj, unsafe { load8(row.add(8 * r)) }, *a);
        }
    }
    for (r, a) in acc.iter().enumerate() {
        // SAFETY: `o` was re-sliced to exactly `8W` values and `r < W`: the store writes
        // `o[8r..8r + 8]`, inside the caller's `&mut`.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(8 * r), *a) };
    }
}

/// How far a block's largest score may pass the running max before it moves and the outputs
/// are rescaled: weights up to e^8 ≈ 3000 keep every sum far from f32's range.
const LAZY_RESCALE: f32 = 8.0;

/// What [`weighted_sums`] starts each output from.
#[derive(Clone, Copy)]
enum Start {
    Zero,
    /// The outputs as they are.
    Add,
    /// The outputs times this.
    Scaled(__m256),
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
