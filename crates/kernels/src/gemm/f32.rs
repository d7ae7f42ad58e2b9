//! f32 products through the `gemm` crate, the one candle's CPU matmul calls, called directly.
//! candle looks up its thread count on every matmul, which on Linux without `RAYON_NUM_THREADS`
//! reads `/proc/cpuinfo` (`num_cpus::get_physical`), and zero-fills the output first. Calling
//! `gemm` directly skips both, which each of a 512-token prefill's ~450 matmuls would pay
//! (`bench/NOTES.md`).

use gemm::{Parallelism, gemm};

/// `y[i] = a[i] · b[i]` for each of `batch` pairs: `a` is `[batch, m, k]`, `b` is `[batch, n, k]`
/// when `b_rows_are_columns` (`y = a · bᵀ`, as for `x · Wᵀ`) and `[batch, k, n]` otherwise;
/// `y` is `[batch, m, n]`. All row-major and contiguous.
pub fn matmul(batch: usize, m: usize, n: usize, k: usize, a: &[f32], b: &[f32], b_rows_are_columns: bool) -> Vec<f32> {
    assert_eq!(a.len(), batch * m * k, "matmul: lhs is not [batch, m, k]");
    assert_eq!(b.len(), batch * n * k, "matmul: rhs is not [batch, n, k] or [batch, k, n]");
    let (b_rs, b_cs) = if b_rows_are_columns { (1, k as isize) } else { (n as isize, 1) };
    // gemm itself runs small products on one thread.
    let threads = Parallelism::Rayon(rayon::current_num_threads());
    let mut y: Vec<f32> = Vec::with_capacity(batch * m * n);
    for i in 0..batch {
        // SAFETY: the operands hold `batch` matrices of the stated shapes (asserted above) and
        // `y` has capacity for `batch · m · n`. With `read_dst` false, gemm zeroes alpha, so its
        // first pass over the depth writes every element of `dst` before a later pass adds to
        // it: nothing uninitialised is read.
        unsafe {
            gemm(
                m,
                n,
                k,
                y.as_mut_ptr().add(i * m * n),
                1,
                n as isize,
                false,
                a.as_ptr().add(i * m * k),
                1,
                k as isize,
                b.as_ptr().add(i * n * k),
                b_cs,
                b_rs,
                0.0,
                1.0,
                false,
                false,
                false,
                threads,
            )
        };
    }
    // SAFETY: every element was written above.
    unsafe { y.set_len(batch * m * n) };
    y
}

/// `y = aᵀ · b` for `a` `[k, m]` and `b` `[k, n]` (both row-major): `y` is `[m, n]`. The
/// weight gradient of a linear layer, `∂W = ∂yᵀ · x`, without transposing `∂y` first.
pub fn matmul_tn(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
    assert_eq!(a.len(), k * m, "matmul_tn: lhs is not [k, m]");
    assert_eq!(b.len(), k * n, "matmul_tn: rhs is not [k, n]");
    let threads = Parallelism::Rayon(rayon::current_num_threads());
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: `a` holds k·m and `b` k·n values (asserted above): element (i, kk) of aᵀ is
    // a[kk·m + i] (column stride m, row stride 1) and (kk, j) of b is b[kk·n + j]; `y` has
    // capacity for m·n. With `read_dst` false gemm writes every element of `dst` before reading it.
    unsafe {
        gemm(m, n, k, y.as_mut_ptr(), 1, n as isize, false, a.as_ptr(), m as isize, 1, b.as_ptr(), 1, n as isize, 0.0, 1.0, false, false, false, threads)
    };
    // SAFETY: every element was written above.
    unsafe { y.set_len(m * n) };
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposed_lhs_matches_a_reference() {
        let (m, n, k) = (37, 45, 77);
        let a: Vec<f32> = (0..k * m).map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0).collect();
        let y = matmul_tn(m, n, k, &a, &b);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|kk| a[kk * m + i] * b[kk * n + j]).sum();
                assert!((y[i * n + j] - want).abs() < 1e-4, "({i}, {j}): {} vs {want}", y[i * n + j]);
            }
        }
    }

    #[test]
    fn matches_a_reference_both_ways_round() {
        // Odd sizes: partial register blocks in every direction; large enough to run threaded.
        let (batch, m, n, k) = (2, 37, 45, 77);
        let a: Vec<f32> = (0..batch * m * k).map(|i| ((i * 104729) % 997) as f32 / 498.0 - 1.0).collect();
        let b: Vec<f32> = (0..batch * n * k).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        for rows_are_columns in [true, false] {
            let got = matmul(batch, m, n, k, &a, &b, rows_are_columns);
            for (bi, i, j) in (0..batch).flat_map(|bi| (0..m).flat_map(move |i| (0..n).map(move |j| (bi, i, j)))) {
                let bv = |c: usize| if rows_are_columns { b[(bi * n + j) * k + c] } else { b[(bi * k + c) * n + j] };
                let want: f64 = (0..k).map(|c| a[(bi * m + i) * k + c] as f64 * bv(c) as f64).sum();
                let g = got[(bi * m + i) * n + j] as f64;
                assert!((g - want).abs() <= 1e-4 * (1.0 + want.abs()), "y[{bi}, {i}, {j}] = {g}, want {want}");
            }
        }
    }
}
