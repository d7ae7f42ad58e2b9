//! The forward's element-wise work: softmax rows of causal attention and SwiGLU's
//! `silu(gate) ⊙ up` with a vector `exp`, and the residual adds; on slices, in parallel.
//!
//! candle's versions call libm's `expf` once per element on one thread (softmax also
//! exponentiates the masked half of each score block): 8% of a prefill profile.

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

/// Softmax of each row of `x` (rows of `keys`) over the keys in the two ranges `spans(r)` (half
/// open, not overlapping; either may be empty); every other key becomes 0. Packed sequences
/// attend this way: a token sees its own sequence's earlier tokens and a shared prefix.
pub fn span_softmax(x: &[f32], keys: usize, spans: impl Fn(usize) -> [(usize, usize); 2] + Sync) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    let rows_per_task = (CHUNK / keys.max(1)).max(1);
    out.par_chunks_mut(rows_per_task * keys).zip(x.par_chunks(rows_per_task * keys)).enumerate().for_each(|(c, (o, x))| {
        let mut seen = Vec::with_capacity(keys);
        for (i, (o, x)) in o.chunks_exact_mut(keys).zip(x.chunks_exact(keys)).enumerate() {
            let ranges = spans(c * rows_per_task + i).map(|(a, b)| a.min(keys)..b.min(keys));
            seen.clear();
            ranges.iter().for_each(|r| seen.extend_from_slice(&x[r.clone()]));
            if seen.is_empty() {
                continue;
            }
            let (_, sum) = exp_minus_max(&mut seen);
            let inv = 1.0 / sum;
            let mut from = seen.iter();
            for r in ranges {
                o[r].iter_mut().zip(from.by_ref()).for_each(|(o, v)| *o = v * inv);
            }
        }
    });
    out
}

/// `silu(g) · u = g / (1 + e^-g) · u`, element by element.
pub fn silu_mul(gate: &[f32], up: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; gate.len()];
    out.par_chunks_mut(CHUNK).zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK))).for_each(|(o, (g, u))| {
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::avx2() {
            // SAFETY: AVX2 and FMA were detected.
            return unsafe { crate::simd::silu_mul(g, u, o) };
        }
        for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    });
    out
}

/// `a + b` element by element: the residual adds. candle runs element-wise ops of 64K elements
/// and more on its own pool, whose thread then spins for a while after each op, against rayon's
/// threads in the GEMM that follows on a 2-core machine; this add runs on rayon's threads.
pub fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.par_iter().zip(b).with_min_len(CHUNK).map(|(a, b)| a + b).collect()
}

/// The index of the first NaN or infinite value of `x`, checked in parallel at memory speed
/// (sampling checks every token's logits with it).
pub fn first_non_finite(x: &[f32]) -> Option<usize> {
    // `v * 0` is 0 for a finite `v` and NaN otherwise; sixteen independent lanes vectorize.
    fn finite(c: &[f32]) -> bool {
        let mut acc = [0f32; 16];
        let mut blocks = c.chunks_exact(16);
        for b in &mut blocks {
            for (a, v) in acc.iter_mut().zip(b) {
                *a += v * 0.0;
            }
        }
        acc.iter().all(|a| *a == 0.0) && blocks.remainder().iter().all(|v| v.is_finite())
    }
    let chunk = x.par_chunks(CHUNK * 4).position_first(|c| !finite(c))?;
    let start = chunk * CHUNK * 4;
    x[start..].iter().position(|v| !v.is_finite()).map(|i| start + i)
}

/// Softmax numerators in place: `s_j ← e^(s_j − m)`; returns `(m, Σ_j e^(s_j − m))` with `m`
/// the largest score. Causal softmax and decode attention share it.
pub fn exp_minus_max(s: &mut [f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::avx2() {
        // SAFETY: AVX2 and FMA were detected.
        return unsafe { crate::simd::exp_minus_max(s) };
    }
    let max = s.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    let mut sum = 0f32;
    for v in s.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    (max, sum)
}

/// `(ln Σ_j e^(s_j), the first j with the largest s_j)` of one row of logits: a token's
/// log-probability is `s_t − ln Σ`. The terms are summed in f64. A NaN anywhere gives a NaN sum.
pub fn log_sum_exp_argmax(s: &[f32]) -> (f64, u32) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::avx2() {
        // SAFETY: AVX2 and FMA were detected.
        return unsafe { crate::simd::log_sum_exp_argmax(s) };
    }
    let (mut best, mut arg) = (f32::NEG_INFINITY, 0);
    for (i, &v) in s.iter().enumerate() {
        if v > best {
            (best, arg) = (v, i as u32);
        }
    }
    let sum: f64 = s.iter().map(|&v| ((v - best) as f64).exp()).sum();
    (best as f64 + sum.ln(), arg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(a, b)| (a - b).abs() <= tol * (1e-6 + b.abs()))
    }

    #[test]
    fn span_softmax_equals_causal_softmax_over_the_spans() {
        let keys = 7;
        let x: Vec<f32> = (0..3 * keys).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.7).collect();
        // One contiguous span is causal softmax.
        let causal = causal_softmax(&x, keys, |r| r + 3);
        let spans = span_softmax(&x, keys, |r| [(0, r + 3), (0, 0)]);
        assert!(close(&spans, &causal, 1e-5));
        // Two spans: keys 0..2 and 4..6 of row 0; the rest are 0 and the row sums to 1.
        let two = span_softmax(&x, keys, |_| [(0, 2), (4, 6)]);
        let row = &two[..keys];
        assert!(row[2] == 0.0 && row[3] == 0.0 && row[6] == 0.0);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let picked = [x[0], x[1], x[4], x[5]];
        let want = causal_softmax(&picked, 4, |_| 4);
        assert!(close(&[row[0], row[1], row[4], row[5]], &want, 1e-5));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn exp_is_within_a_few_ulp_of_libm() {
        use std::arch::x86_64::{_mm256_loadu_ps, _mm256_storeu_ps};
        if !crate::cpu::avx2() {
            return;
        }
        let xs: Vec<f32> = (0..14_000).map(|i| -87.0 + i as f32 * 0.0125).collect();
        let mut got = vec![0f32; xs.len()];
        for i in (0..xs.len()).step_by(8) {
            // SAFETY: AVX2 and FMA were detected; 14 000 is a multiple of 8, so both pointers
            // have 8 elements from `i` on.
            unsafe { _mm256_storeu_ps(got[i..].as_mut_ptr(), crate::simd::exp(_mm256_loadu_ps(xs[i..].as_ptr()))) };
        }
        let want: Vec<f32> = xs.iter().map(|x| x.exp()).collect();
        assert!(close(&got, &want, 4.0 * f32::EPSILON));
    }

    #[test]
    fn non_finite_values_are_found_and_exp_keeps_nan() {
        let mut x: Vec<f32> = (0..100_003).map(|i| (i % 7) as f32 - 3.0).collect();
        assert_eq!(first_non_finite(&x), None);
        for (i, bad) in [(5, f32::NAN), (70_001, f32::INFINITY), (100_002, f32::NEG_INFINITY)] {
            x[i] = bad;
            assert_eq!(first_non_finite(&x), Some(i));
            x[i] = 0.0;
        }
        // A NaN score must not turn into a probability (the vector exp used to clamp it).
        let mut s = vec![1.0, f32::NAN, 0.5, 0.0, -1.0, 2.0, 3.0, 4.0, 5.0];
        let (_, sum) = exp_minus_max(&mut s);
        assert!(sum.is_nan() && s[1].is_nan(), "{s:?}");
        let up = vec![1.0; 9];
        assert!(silu_mul(&[f32::NAN; 9], &up).iter().all(|v| v.is_nan()));
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

    #[test]
    fn log_sum_exp_and_argmax_match_f64() {
        let mut seed = 7u64;
        for n in [1, 7, 8, 9, 100, 49_152] {
            let row: Vec<f32> = (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 40.0
                })
                .collect();
            let best = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let want = best as f64 + row.iter().map(|&v| (v as f64 - best as f64).exp()).sum::<f64>().ln();
            let (got, arg) = log_sum_exp_argmax(&row);
            assert!((got - want).abs() < 1e-6 * want.abs().max(1.0), "{n}: {got} vs {want}");
            assert_eq!(arg as usize, row.iter().position(|&v| v == best).unwrap(), "{n}");
        }
        // Ties give the first; a NaN gives NaN; -inf everywhere but one place is that place.
        assert_eq!(log_sum_exp_argmax(&[1.0, 3.0, 3.0, 0.0, 3.0, 0.0, 0.0, 0.0, 3.0]).1, 1);
        assert!(log_sum_exp_argmax(&[1.0, f32::NAN, 2.0]).0.is_nan());
        let mut row = vec![f32::NEG_INFINITY; 20];
        row[13] = 2.5;
        assert_eq!(log_sum_exp_argmax(&row), (2.5, 13));
    }
}
