//! f32 products of a few activation rows, reading the weights where they lie. For every call
//! the `gemm` crate re-lays the whole weight matrix into panels, which a short input (an eval
//! doc's choices, a short prompt) cannot amortise: in `transact eval` that packing took as many
//! samples as the multiply itself (`bench/NOTES.md`). Here a 4 × 4 block of
//! (activation row, weight row) dot products runs in sixteen 16-lane registers over `k`, each
//! load of four weight rows and four activation rows feeding sixteen FMAs; a task's four weight
//! rows stay in L1 while every block of activation rows passes them.

use rayon::prelude::*;

use super::Out;

/// Activation rows up to which [`matmul`] is used instead of the `gemm` crate. The crate's
/// re-laying of the whole weight matrix is shared by every row of a product, so it pays off
/// only for enough rows: a 128-token prefill still runs ~1.1× faster through [`matmul`], at
/// 256 tokens the two are level (`bench/NOTES.md`).
pub const MAX_M: usize = 128;

/// Whether this CPU runs [`matmul`] (AVX-512 F).
pub fn available() -> bool {
    crate::cpu::avx512f()
}

/// `y[m, n] = x[m, k] · W[n, k]ᵀ`, all row-major. Call only where [`available`] holds.
pub fn matmul(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    assert!(available(), "f32_small::matmul needs AVX-512 F");
    assert!(x.len() == m * k && w.len() == n * k, "f32_small::matmul: operands are not [m, k] and [n, k]");
    let mut y = vec![0f32; m * n];
    let out = Out(y.as_mut_ptr());
    // Weight rows per task: a multiple of four, a few tasks per thread.
    let per = (n / (4 * rayon::current_num_threads())).clamp(4, 64).next_multiple_of(4);
    (0..n.div_ceil(per)).into_par_iter().for_each(|t| {
        let (r0, r1) = (t * per, ((t + 1) * per).min(n));
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 F is available (asserted); the operands have the asserted lengths,
        // `r0 < r1 <= n` (`t < n.div_ceil(per)`), and this task writes only columns r0 .. r1 of
        // y, which no other task's range overlaps.
        unsafe {
            avx512::rows(x, m, k, w, n, r0, r1, &out)
        }
    });
    y
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::Out;

    /// Columns `r0 .. r1` of `y` (weight rows), for every activation row.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F; `x` is `[m, k]`, `w` `[n, k]`, `y` `[m, n]`,
    /// `r0 <= r1 <= n`, and no other thread writes these columns.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn rows(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, r0: usize, r1: usize, y: &Out) {
        let tail = (1u32 << (k % 16)) as u16 - 1;
        let (x, w) = (x.as_ptr(), w.as_ptr());
        for r in (r0..r1).step_by(4) {
            let b = (r1 - r).min(4);
            for j in (0..m).step_by(4) {
                let a = (m - j).min(4);
                // SAFETY: `j < m` and `r < r1 <= n`, so the offsets stay inside `x` (`[m, k]`),
                // `w` (`[n, k]`) and `y` (`[m, n]`), the caller's bounds.
                let at = Tile { x: unsafe { x.add(j * k) }, w: unsafe { w.add(r * k) }, k, tail, y: unsafe { y.0.add(j * n + r) }, n };
                // One instance per block shape, so every block's sums live in registers.
                // SAFETY: AVX-512 F is enabled here (the caller checked the CPU). `a = min(m - j,
                // 4)` rows of `k` start at `at.x` and `b = min(r1 - r, 4)` at `at.w`, and `y` has
                // those `a` rows × `b` columns from `at.y`, all columns in `r0 .. r1`, which no
                // other thread writes; each arm runs the instance of exactly that shape (`a`, `b`
                // are 1 to 4, so `_` is (1, 1)).
                unsafe {
                    match (a, b) {
                        (4, 4) => at.run::<4, 4>(),
                        (4, 3) => at.run::<4, 3>(),
                        (4, 2) => at.run::<4, 2>(),
                        (4, 1) => at.run::<4, 1>(),
                        (3, 4) => at.run::<3, 4>(),
                        (3, 3) => at.run::<3, 3>(),
                        (3, 2) => at.run::<3, 2>(),
                        (3, 1) => at.run::<3, 1>(),
                        (2, 4) => at.run::<2, 4>(),
                        (2, 3) => at.run::<2, 3>(),
                        (2, 2) => at.run::<2, 2>(),
                        (2, 1) => at.run::<2, 1>(),
                        (1, 4) => at.run::<1, 4>(),
                        (1, 3) => at.run::<1, 3>(),
                        (1, 2) => at.run::<1, 2>(),
                        _ => at.run::<1, 1>(),
                    }
                }
            }
        }
    }

    /// One block: `A` activation rows from `x`, `B` weight rows from `w`, sums to `y` (row
    /// stride `n`).
    struct Tile {
        x: *const f32,
        w: *const f32,
        k: usize,
        /// Lanes of the last, partial 16 of `k`.
        tail: u16,
        y: *mut f32,
        n: usize,
    }

    impl Tile {
        /// # Safety
        /// AVX-512 F; `A` rows of `k` at `x`, `B` at `w`, and `y` writable at `A` rows × `B`,
        /// which no other thread writes.
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn run<const A: usize, const B: usize>(&self) {
            let k = self.k;
            let mut acc = [[_mm512_setzero_ps(); B]; A];
            let mut c = 0;
            while c + 16 <= k {
                // SAFETY: `b < B` and `c + 16 <= k`: 16 values of weight row `b`, one of the `B`
                // rows of `k` at `w` (this function's contract).
                let wv: [__m512; B] = std::array::from_fn(|b| unsafe { _mm512_loadu_ps(self.w.add(b * k + c)) });
                for (a, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: `a < A` and `c + 16 <= k`: 16 values of activation row `a`, one of
                    // the `A` rows of `k` at `x` (this function's contract).
                    let xv = unsafe { _mm512_loadu_ps(self.x.add(a * k + c)) };
                    for (acc, wv) in acc.iter_mut().zip(&wv) {
                        *acc = _mm512_fmadd_ps(xv, *wv, *acc);
                    }
                }
                c += 16;
            }
            if c < k {
                // SAFETY: `c < k`, so the pointer is inside weight row `b < B`; `tail` sets the
                // low `k % 16 = k - c` lanes, so the load reads only the row's last values, and
                // masked-off lanes neither read nor fault.
                let wv: [__m512; B] = std::array::from_fn(|b| unsafe { _mm512_maskz_loadu_ps(self.tail, self.w.add(b * k + c)) });
                for (a, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: as for the weights: the last `k - c` values of activation row
                    // `a < A`, the other lanes masked off.
                    let xv = unsafe { _mm512_maskz_loadu_ps(self.tail, self.x.add(a * k + c)) };
                    for (acc, wv) in acc.iter_mut().zip(&wv) {
                        *acc = _mm512_fmadd_ps(xv, *wv, *acc);
                    }
                }
            }
            for (a, acc) in acc.iter().enumerate() {
                for (b, acc) in acc.iter().enumerate() {
                    // SAFETY: `a < A`, `b < B`: one of the `A` rows × `B` columns that the caller
                    // guarantees writable at `y` (row stride `n`) and written by no other thread.
                    unsafe { *self.y.add(a * self.n + b) = _mm512_reduce_add_ps(*acc) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_reference_in_every_block_shape() {
        if !available() {
            eprintln!("this CPU has no AVX-512 F: f32_small is not used here and not tested");
            return;
        }
        // m and n cover every remainder of 4; k a partial 16 and a full one.
        for (m, n, k) in [(7, 11, 37), (4, 8, 32), (13, 70, 576), (1, 5, 15)] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 104729) % 997) as f32 / 498.0 - 1.0).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
            let got = matmul(&x, m, k, &w, n);
            for (i, j) in (0..m).flat_map(|i| (0..n).map(move |j| (i, j))) {
                let want: f64 = (0..k).map(|c| x[i * k + c] as f64 * w[j * k + c] as f64).sum();
                let g = got[i * n + j] as f64;
                assert!((g - want).abs() <= 1e-4 * (1.0 + want.abs()), "y[{i}, {j}] = {g}, want {want} (m {m}, n {n}, k {k})");
            }
        }
    }
}
