//! GGML's Q8_0 block format: 32 values as signed bytes and one f16 scale, max|x| / 127. Q8_0
//! weights are stored this way (34 bytes per block), and activations meet them quantized by the
//! same rule (as llama.cpp does), so their dot products become integer multiply-adds.

/// Values per block.
pub const Q8_BLOCK: usize = 32;
/// Bytes per stored block: the f16 scale, then 32 signed bytes.
pub const Q8_BYTES: usize = 34;

/// One block of 32 values under the Q8_0 rule: its scale and its values (rounded half away
/// from zero, as `f32::round`).
pub fn block(x: &[f32]) -> (f32, impl Iterator<Item = i8> + '_) {
    let s = x.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
    let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
    (s, x.iter().map(move |v| (v * inv).round() as i8))
}

/// `x` in blocks of 32, as values and one scale per block ([`block`] for each).
///
/// Decode quantizes every GEMV's input on the calling thread before the parallel region, where
/// libm's `roundf` per element costs a few µs per call; the vector path computes the same values.
pub fn quantize(x: &[f32]) -> (Vec<i8>, Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::avx2() {
        let mut q = vec![0i8; x.len() / Q8_BLOCK * Q8_BLOCK];
        // SAFETY: `cpu::avx2` detected AVX2 and FMA, the block kernel's features; both chunks
        // hold exactly 32 values (`chunks_exact`).
        let d = x.chunks_exact(Q8_BLOCK).zip(q.chunks_exact_mut(Q8_BLOCK)).map(|(x, q)| unsafe { avx2::block(x, q) }).collect();
        return (q, d);
    }
    let mut q = Vec::with_capacity(x.len());
    let mut d = Vec::with_capacity(x.len() / Q8_BLOCK);
    for blk in x.chunks_exact(Q8_BLOCK) {
        let (s, values) = block(blk);
        q.extend(values);
        d.push(s);
    }
    (q, d)
}

/// `x` (rows whose lengths are multiples of 32) as stored Q8_0 blocks: each block's f16 scale,
/// then its 32 values; the rule of GGML's (and candle's) Q8_0 quantizer, which the model uses to
/// store weights. The kernels' tests make their Q8_0 matrices with it.
#[cfg(test)]
pub fn encode(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / Q8_BLOCK * Q8_BYTES);
    for blk in x.chunks_exact(Q8_BLOCK) {
        let (s, values) = block(blk);
        out.extend(half::f16::from_f32(s).to_le_bytes());
        out.extend(values.map(|v| v as u8));
    }
    out
}

/// A stored block's f16 scale (its first two bytes) as f32.
pub fn scale(blk: &[u8]) -> f32 {
    half::f16::from_le_bytes([blk[0], blk[1]]).to_f32()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Q8_BLOCK;

    /// [`super::block`] of 32 values into `q`, returning the scale; the same values
    /// (rounding half away from zero, as `f32::round`).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `x` and `q` must hold 32 values (shorter ones panic).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn block(x: &[f32], q: &mut [i8]) -> f32 {
        let x = &x[..Q8_BLOCK];
        let q = &mut q[..Q8_BLOCK];
        let sign = _mm256_set1_ps(-0.0);
        // SAFETY: `x` was re-sliced to exactly 32 values above (a checked slice) and `i < 4`, so
        // each load reads `x[8i .. 8i + 8]`, inside it.
        let v: [__m256; 4] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * i)) });
        let a = v.map(|v| _mm256_andnot_ps(sign, v));
        let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let max = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
        let s = max / 127.0;
        let inv = _mm256_set1_ps(if s > 0.0 { 1.0 / s } else { 0.0 });
        let r = v.map(|v| {
            let y = _mm256_mul_ps(v, inv);
            // Nearest-even, except that exact halves go away from zero.
            let t = _mm256_round_ps(y, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            let away = _mm256_add_ps(t, _mm256_or_ps(_mm256_and_ps(y, sign), _mm256_set1_ps(1.0)));
            let half = _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_sub_ps(y, t)), _mm256_set1_ps(0.5), _CMP_EQ_OQ);
            let even = _mm256_round_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            _mm256_cvtps_epi32(_mm256_blendv_ps(even, away, half))
        });
        // i32 → i8; the packs interleave 128-bit lanes, the permute restores the order.
        let p = _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3]));
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: `q` was re-sliced to exactly 32 bytes above (a checked slice of the caller's
        // `&mut`), the 32 bytes this store writes.
        unsafe { _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, p) };
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_quantization_rounds_as_the_scalar_rule() {
        // A block with max 127 has scale 1, so these values land on exact halves and their
        // neighbours; the others are a sweep of ordinary values.
        let ties = [127.0, -2.5, 2.5, 0.5, -0.5, 1.5, -1.5, 126.5, -126.5, 3.4999998, -3.4999998, 0.49999997, 0.0, -0.0, 64.5, -63.5];
        let mut x: Vec<f32> = ties.iter().copied().chain((0..16).map(|i| i as f32 * 7.3 - 50.0)).collect();
        x.extend((0..32 * 20).map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0));
        x.extend([0.0; 32]);
        let (q, d) = quantize(&x);
        for (b, blk) in x.chunks_exact(Q8_BLOCK).enumerate() {
            let (s, v) = block(blk);
            assert_eq!((s, v.collect::<Vec<_>>()), (d[b], q[b * Q8_BLOCK..(b + 1) * Q8_BLOCK].to_vec()), "block {b}");
        }
    }
}
