//! The x86-64 kernels behind [`super::gemv`]: AVX2/FMA/F16C row dots for every weight type,
//! and AVX-512 VNNI's byte dot product on 256-bit registers for Q8_0.

use std::arch::x86_64::*;

use super::{Act, Q8_BLOCK, Q8_BYTES, WeightData};
use crate::simd::hsum;

/// `$block(b, acc)` over blocks `0 .. $nb` in four accumulator chains, returned as a tuple:
/// blocks 4i .. 4i + 3 feed chains 0–3, the tail feeds chain 0. Named chains stay in
/// registers: with one, each block waited on the previous block's FMA (and an indexed array
/// went through the stack).
macro_rules! four_chains {
    ($nb:expr, $zero:expr, $block:expr) => {{
        let z = $zero;
        let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
        let mut b = 0;
        while b + 4 <= $nb {
            a0 = $block(b, a0);
            a1 = $block(b + 1, a1);
            a2 = $block(b + 2, a2);
            a3 = $block(b + 3, a3);
            b += 4;
        }
        while b < $nb {
            a0 = $block(b, a0);
            b += 1;
        }
        (a0, a1, a2, a3)
    }};
}

/// The total of [`four_chains!`]'s four accumulators, in one fixed order.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn sum_chains((a0, a1, a2, a3): (__m256, __m256, __m256, __m256)) -> f32 {
    hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)))
}

/// `acc` plus one Q8_0 block `blk` times activation block `b`, scaled (AVX2): `maddubs`
/// multiplies unsigned by signed bytes, so w's sign moves onto x.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn avx2_block(blk: &[u8], act: &Act, b: usize, acc: __m256) -> __m256 {
    // SAFETY: the load reads the 32 bytes of the checked slice `blk[2..Q8_BYTES]` (a block's
    // weights after its 2-byte scale); AVX is enabled by this function's target features.
    let qw = unsafe { _mm256_loadu_si256(blk[2..Q8_BYTES].as_ptr() as *const __m256i) };
    // SAFETY: the load reads the 32 bytes of activation block `b`, a checked slice.
    let qx = unsafe { _mm256_loadu_si256(act.q[b * Q8_BLOCK..(b + 1) * Q8_BLOCK].as_ptr() as *const __m256i) };
    let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(qw, qw), _mm256_sign_epi8(qx, qw));
    let dot = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
    _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(f16_scale(blk) * act.d[b]), acc)
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` must hold row `r` of `k` columns (a shorter
/// one panics) and `x`, that is `act.f`, exactly `k` values: it is read through raw pointers.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn row_dot(w: WeightData, r: usize, k: usize, act: &Act) -> f32 {
    let x = act.f;
    let xp = x.as_ptr();
    // Sum over columns of `load(i)` (eight weights from column i, as f32) times x; a macro,
    // not a closure, so the loads compile inside this function's target features.
    macro_rules! body {
        (|$i:ident| $load:expr) => {{
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut $i = 0;
            while $i + 32 <= k {
                let base = $i;
                for (a, acc) in acc.iter_mut().enumerate() {
                    $i = base + 8 * a;
                    // SAFETY: `$i + 8 <= base + 32 <= k` (the loop's condition, `a < 4`) and `x`
                    // holds `k` values (this function's contract), so the read stays in `x`.
                    let xv = unsafe { _mm256_loadu_ps(xp.add($i)) };
                    *acc = _mm256_fmadd_ps($load, xv, *acc);
                }
                $i = base + 32;
            }
            while $i + 8 <= k {
                // SAFETY: `$i + 8 <= k` (the loop's condition) and `x` holds `k` values (this
                // function's contract), so the read stays in `x`.
                let xv = unsafe { _mm256_loadu_ps(xp.add($i)) };
                acc[0] = _mm256_fmadd_ps($load, xv, acc[0]);
                $i += 8;
            }
            (hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]))), $i)
        }};
    }
    match w {
        WeightData::F32(a) => {
            let p = a[r * k..(r + 1) * k].as_ptr();
            // SAFETY: `p` is a checked slice of `k` values and `body!` loads only at `i` with
            // `i + 8 <= k`: eight f32 inside the row.
            let (s, i) = body!(|i| unsafe { _mm256_loadu_ps(p.add(i)) });
            s + (i..k).map(|j| a[r * k + j] * x[j]).sum::<f32>()
        }
        WeightData::F16(a) => {
            let p = a[r * k..(r + 1) * k].as_ptr();
            // SAFETY: `p` is a checked slice of `k` f16 and `body!` loads only at `i` with
            // `i + 8 <= k`: 16 bytes, eight f16 inside the row; F16C is enabled here.
            let (s, i) = body!(|i| unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.add(i) as *const __m128i)) });
            s + (i..k).map(|j| a[r * k + j].to_f32() * x[j]).sum::<f32>()
        }
        WeightData::BF16(a) => {
            let p = a[r * k..(r + 1) * k].as_ptr();
            // bf16 is the top half of an f32: widen to 32 bits and shift into place.
            // SAFETY: `p` is a checked slice of `k` bf16 and `body!` loads only at `i` with
            // `i + 8 <= k`: 16 bytes, eight bf16 inside the row.
            let (s, i) = body!(|i| unsafe {
                let h = _mm_loadu_si128(p.add(i) as *const __m128i);
                _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
            });
            s + (i..k).map(|j| a[r * k + j].to_f32() * x[j]).sum::<f32>()
        }
        WeightData::Q8_0(a) => {
            let nb = k / Q8_BLOCK;
            let row = &a[r * nb * Q8_BYTES..(r + 1) * nb * Q8_BYTES];
            let block = |b: usize, acc: __m256| avx2_block(&row[b * Q8_BYTES..(b + 1) * Q8_BYTES], act, b, acc);
            sum_chains(four_chains!(nb, _mm256_setzero_ps(), block))
        }
    }
}

/// Row `r` of a Q8_0 matrix times Q8 activations, with VNNI's unsigned × signed byte dot
/// (one instruction where AVX2 needs two multiply-adds).
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F/VL/BW and VNNI; `w` must hold row `r`
/// of `k` columns (a multiple of 32) and `act` its Q8 form.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
pub unsafe fn q8_row_dot_vnni(w: &[u8], r: usize, k: usize, act: &Act) -> f32 {
    let nb = k / Q8_BLOCK;
    let row = &w[r * nb * Q8_BYTES..(r + 1) * nb * Q8_BYTES];
    let block = |b: usize, acc: __m256| vnni_block(&row[b * Q8_BYTES..(b + 1) * Q8_BYTES], act, b, acc);
    sum_chains(four_chains!(nb, _mm256_setzero_ps(), block))
}

/// `acc` plus one Q8_0 block `blk` times activation block `b`, scaled: (w + 128) as unsigned
/// times x, started from −128 · Σx ([`super::vnni_corrections`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
fn vnni_block(blk: &[u8], act: &Act, b: usize, acc: __m256) -> __m256 {
    // SAFETY: the load reads the 32 bytes of the checked slice `blk[2..Q8_BYTES]` (a block's
    // weights after its 2-byte scale); AVX is enabled by this function's target features.
    let qw = unsafe { _mm256_loadu_si256(blk[2..Q8_BYTES].as_ptr() as *const __m256i) };
    // SAFETY: the load reads the 32 bytes of activation block `b`, a checked slice.
    let qx = unsafe { _mm256_loadu_si256(act.q[b * Q8_BLOCK..(b + 1) * Q8_BLOCK].as_ptr() as *const __m256i) };
    let init = _mm256_zextsi128_si256(_mm_cvtsi32_si128(act.c[b]));
    let dot = _mm256_dpbusd_epi32(init, _mm256_xor_si256(qw, _mm256_set1_epi8(-128)), qx);
    _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(f16_scale(blk) * act.d[b]), acc)
}

/// [`row_dot`] of rows `r0 .. r0 + out.len()` into `out`, in one call.
///
/// # Safety
/// As [`row_dot`], for every row.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn rows(w: WeightData, r0: usize, k: usize, act: &Act, out: &mut [f32]) {
    for (i, y) in out.iter_mut().enumerate() {
        // SAFETY: this function's contract is `row_dot`'s for every row `r0 + i`, and its
        // target features include `row_dot`'s.
        *y = unsafe { row_dot(w, r0 + i, k, act) };
    }
}

/// [`q8_row_dot_vnni`] of rows `r0 .. r0 + out.len()` into `out`, in one call: two rows per
/// pass ([`q8_row_pair_vnni`]), an odd last row alone.
///
/// # Safety
/// As [`q8_row_dot_vnni`], for every row.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
pub unsafe fn q8_rows_vnni(w: &[u8], r0: usize, k: usize, act: &Act, out: &mut [f32]) {
    let paired = out.len() / 2 * 2;
    let (pairs, last) = out.split_at_mut(paired);
    for (i, y) in pairs.chunks_exact_mut(2).enumerate() {
        // SAFETY: rows `r0 + 2i` and `r0 + 2i + 1` are rows of `out`'s range, which this
        // function's contract covers; the target features are the same.
        (y[0], y[1]) = unsafe { q8_row_pair_vnni(w, r0 + 2 * i, k, act) };
    }
    if let Some(y) = last.first_mut() {
        // SAFETY: row `r0 + paired` is the last row of `out`'s range, which this function's
        // contract covers; the target features are the same.
        *y = unsafe { q8_row_dot_vnni(w, r0 + paired, k, act) };
    }
}

/// How far ahead of the row pair being read [`q8_row_pair_vnni`] prefetches its weights.
/// The hardware prefetcher does not follow two rows read in step, though they are adjacent:
/// without this, q8_0 decode ran at half speed. Any distance of 3–6 KiB keeps the pair fed;
/// 4 KiB sits inside that range (`bench/NOTES.md`).
const PAIR_PREFETCH_BYTES: usize = 4096;

/// Rows `r` and `r + 1` of a Q8_0 matrix times the Q8 activations, each exactly as
/// [`q8_row_dot_vnni`] computes it; each activation block is loaded once for both rows.
///
/// # Safety
/// As [`q8_row_dot_vnni`], for both rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
unsafe fn q8_row_pair_vnni(w: &[u8], r: usize, k: usize, act: &Act) -> (f32, f32) {
    let nb = k / Q8_BLOCK;
    let (row0, row1) = w[r * nb * Q8_BYTES..(r + 2) * nb * Q8_BYTES].split_at(nb * Q8_BYTES);
    let ahead = row0.as_ptr().wrapping_add(PAIR_PREFETCH_BYTES);
    let block = |b: usize, acc: (__m256, __m256)| {
        // The pair reads 2 · 34 bytes per block: two prefetches keep every line covered.
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(2 * b * Q8_BYTES).cast());
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(2 * b * Q8_BYTES + 64).cast());
        let at = b * Q8_BYTES..(b + 1) * Q8_BYTES;
        (vnni_block(&row0[at.clone()], act, b, acc.0), vnni_block(&row1[at], act, b, acc.1))
    };
    // The chains the one-row kernel uses, one set per row, so each row sums in its order.
    let (a0, a1, a2, a3) = four_chains!(nb, (_mm256_setzero_ps(), _mm256_setzero_ps()), block);
    (sum_chains((a0.0, a1.0, a2.0, a3.0)), sum_chains((a0.1, a1.1, a2.1, a3.1)))
}

/// A Q8_0 block's f16 scale (its first two bytes) as f32, inline: `half`'s conversion is a
/// call with a run-time feature check, once per 32 weights.
#[target_feature(enable = "f16c")]
fn f16_scale(blk: &[u8]) -> f32 {
    let bits = u16::from_le_bytes([blk[0], blk[1]]) as i32;
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)))
}
