//! One query head's attention over cached keys and values: the decode (and short-block) kernel
//! behind [`super::kv_cache::LayerKv::attend`].
//!
//! At context 1024 the plain loops cost ~20 ns per key (each score was one chain of dependent
//! FMAs, then a libm `exp` per key), a fifth of a q8_0 decode step. The AVX2 kernel scores eight
//! keys at once in independent chains, takes `exp` as a vector polynomial, and keeps the
//! output rows in registers while it accumulates the values (`bench/NOTES.md`).

/// `t` queries (`q`, `o`: `[t, d]`, `q` already scaled) at positions `len ..` over keys and
/// values `[len + t, d]`: query `i` sees keys `0 ..= len + i`.
pub fn head(q: &[f32], k: &[f32], v: &[f32], o: &mut [f32], d: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    if d % 8 == 0 && super::vmath::avx2() {
        return unsafe { avx2::head(q, k, v, o, d, len) };
    }
    portable(q, k, v, o, d, len)
}

fn portable(q: &[f32], k: &[f32], v: &[f32], o: &mut [f32], d: usize, len: usize) {
    let mut scores = Vec::with_capacity(k.len() / d);
    for (ti, (qv, ov)) in q.chunks_exact(d).zip(o.chunks_exact_mut(d)).enumerate() {
        let n = len + ti + 1;
        scores.clear();
        scores.extend(k.chunks_exact(d).take(n).map(|kj| dot(qv, kj)));
        let max = scores.iter().fold(f32::NEG_INFINITY, |a, &s| a.max(s));
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        for (p, vj) in scores.iter().zip(v.chunks_exact(d)) {
            let p = p / sum;
            for (o, v) in ov.iter_mut().zip(vj) {
                *o += p * v;
            }
        }
    }
}

/// Eight partial sums, so the compiler can vectorise without reassociating one chain.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail = a.len() / 8 * 8;
    acc.iter().sum::<f32>() + a[tail..].iter().zip(&b[tail..]).map(|(x, y)| x * y).sum::<f32>()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use crate::model::vmath::avx2::{exp, hsum};

    /// [`super::head`] for `d` a multiple of 8.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn head(q: &[f32], k: &[f32], v: &[f32], o: &mut [f32], d: usize, len: usize) {
        debug_assert!(d % 8 == 0);
        let mut scores = Vec::with_capacity(k.len() / d + 8);
        for (ti, (qv, ov)) in q.chunks_exact(d).zip(o.chunks_exact_mut(d)).enumerate() {
            let n = len + ti + 1;
            scores.clear();
            scores.resize(n.next_multiple_of(8), f32::NEG_INFINITY);
            let (k, v) = (&k[..n * d], &v[..n * d]);
            let qp = qv.as_ptr();
            // Scores, eight keys per pass: eight independent FMA chains share each load of q.
            let mut j = 0;
            while j + 8 <= n {
                let kp = k[j * d..].as_ptr();
                let mut acc = [_mm256_setzero_ps(); 8];
                for c in (0..d).step_by(8) {
                    let x = unsafe { _mm256_loadu_ps(qp.add(c)) };
                    for (r, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(x, unsafe { _mm256_loadu_ps(kp.add(r * d + c)) }, *a);
                    }
                }
                unsafe { _mm256_storeu_ps(scores[j..].as_mut_ptr(), hsum8(acc)) };
                j += 8;
            }
            for (jj, kj) in k.chunks_exact(d).enumerate().skip(j) {
                let mut a = _mm256_setzero_ps();
                for c in (0..d).step_by(8) {
                    a = _mm256_fmadd_ps(unsafe { _mm256_loadu_ps(qp.add(c)) }, unsafe { _mm256_loadu_ps(kj.as_ptr().add(c)) }, a);
                }
                scores[jj] = hsum(a);
            }
            // Softmax numerators. The padding (-inf) gives e^-87 ≈ 1.6e-38, below what the sum resolves,
            // and the values loop reads only the first n.
            let max = scores[..n].iter().fold(f32::NEG_INFINITY, |a, &s| a.max(s));
            let mut sum = _mm256_setzero_ps();
            for s in scores.chunks_exact_mut(8) {
                let e = exp(_mm256_sub_ps(unsafe { _mm256_loadu_ps(s.as_ptr()) }, _mm256_set1_ps(max)));
                sum = _mm256_add_ps(sum, e);
                unsafe { _mm256_storeu_ps(s.as_mut_ptr(), e) };
            }
            let inv = 1.0 / hsum(sum);
            // o = Σ p_j v_j / Σ p_j, 64 columns at a time in eight registers.
            let p = &scores[..n];
            let mut c = 0;
            while c + 64 <= d {
                weighted_sum::<8>(p, v, d, c, ov, inv);
                c += 64;
            }
            while c < d {
                weighted_sum::<1>(p, v, d, c, ov, inv);
                c += 8;
            }
        }
    }

    /// Columns `c .. c + 8W` of `o = inv · Σ_j p_j v_j` (`v`: rows of `d`); a constant W so
    /// the accumulators unroll into registers.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn weighted_sum<const W: usize>(p: &[f32], v: &[f32], d: usize, c: usize, o: &mut [f32], inv: f32) {
        let mut acc = [_mm256_setzero_ps(); W];
        for (j, &pj) in p.iter().enumerate() {
            let pj = _mm256_set1_ps(pj);
            let row = &v[j * d + c..j * d + c + 8 * W];
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(pj, unsafe { _mm256_loadu_ps(row.as_ptr().add(8 * r)) }, *a);
            }
        }
        let o = &mut o[c..c + 8 * W];
        for (r, a) in acc.iter().enumerate() {
            unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(8 * r), _mm256_mul_ps(*a, _mm256_set1_ps(inv))) };
        }
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

    #[test]
    fn kernel_matches_the_portable_loops() {
        // 19 keys: two blocks of eight and a tail; t = 3 queries see 17, 18 and 19 keys;
        // d = 72 takes one 64-wide and one 8-wide pass over the values.
        for d in [64, 72, 6] {
            let (len, t) = (16, 3);
            let val = |i: usize, m: usize| ((i * m) % 1009) as f32 / 504.0 - 1.0;
            let q: Vec<f32> = (0..t * d).map(|i| val(i, 7)).collect();
            let k: Vec<f32> = (0..(len + t) * d).map(|i| val(i, 13)).collect();
            let v: Vec<f32> = (0..(len + t) * d).map(|i| val(i, 31)).collect();
            let mut want = vec![0f32; t * d];
            portable(&q, &k, &v, &mut want, d, len);
            let mut got = vec![0f32; t * d];
            head(&q, &k, &v, &mut got, d, len);
            assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() <= 1e-5 * (1.0 + w.abs())), "d = {d}");
        }
    }
}
