//! The closed-form least squares behind `compensate ls`: refit the kept input columns of a
//! projection so that its output on the calibration tokens matches the unpruned projection's.
//!
//! With `X` the projection's full input over the tokens (`[tokens, n]`), `S` the kept columns and
//! `W` the weight (`[out, n]`), the refit weight `W'` (`[out, |S|]`) minimises
//! `‖X_S W'ᵀ − X Wᵀ‖² + λ‖W' − W_S‖²`. Only the kept rows of the Gram matrix,
//! `G_S· = X_Sᵀ X`, are needed: `(G_SS + λI) W'ᵀ = G_S· Wᵀ + λ W_Sᵀ`. The ridge pulls toward the
//! plainly sliced weight (not toward zero), so a large λ means "no compensation" rather than
//! "no output".

use anyhow::{Result, bail};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

/// `λ` as a fraction of the mean diagonal of `G_SS` (GPTQ's and SparseGPT's dampening).
pub const DAMP: f64 = 0.01;

/// The kept rows `X_Sᵀ X` (`[|S|, n]`, row-major f64) of a Gram matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Gram {
    pub kept: Vec<usize>,
    pub n: usize,
    pub rows: Vec<f64>,
}

impl Gram {
    pub fn zeros(kept: &[usize], n: usize) -> Self {
        Self { kept: kept.to_vec(), n, rows: vec![0.0; kept.len() * n] }
    }
}

/// Lower-triangular `L` with `L Lᵀ = a` (`a` is `[n, n]`, symmetric positive definite).
fn cholesky(a: &[f64], n: usize) -> Result<Vec<f64>> {
    let mut l = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let dot: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
            let v = a[i * n + j] - dot;
            if i == j {
                if !(v > 0.0 && v.is_finite()) {
                    bail!("the calibration activations' Gram matrix is not positive definite (pivot {i} is {v})");
                }
                l[i * n + i] = v.sqrt();
            } else {
                l[i * n + j] = v / l[j * n + j];
            }
        }
    }
    Ok(l)
}

/// Solves `L Lᵀ x = b` in place; `lt` is `Lᵀ`, so both substitutions read rows (reading `L`'s
/// columns instead made the back substitution cache-bound: 40 s of a 512-token compensation).
fn solve_in_place(l: &[f64], lt: &[f64], n: usize, x: &mut [f64]) {
    for i in 0..n {
        let s: f64 = l[i * n..i * n + i].iter().zip(&x[..i]).map(|(a, b)| a * b).sum();
        x[i] = (x[i] - s) / l[i * n + i];
    }
    for i in (0..n).rev() {
        let s: f64 = lt[i * n + i + 1..(i + 1) * n].iter().zip(&x[i + 1..]).map(|(a, b)| a * b).sum();
        x[i] = (x[i] - s) / l[i * n + i];
    }
}

/// The refit weight `W'` (`[out, |g.kept|]`, row-major f32) for weight `w` (`[out, g.n]`,
/// row-major) whose input's kept Gram rows are `g`.
pub fn refit(g: &Gram, w: &[f32], out: usize, damp: f64) -> Result<Vec<f32>> {
    let (n, s, kept) = (g.n, g.kept.len(), &g.kept);
    if w.len() != out * n || g.rows.len() != s * n {
        bail!("refit: weight has {} elements, expected {out} × {n}", w.len());
    }
    let mut a: Vec<f64> = (0..s).flat_map(|i| kept.iter().map(move |&j| g.rows[i * n + j])).collect();
    let mean_diag = (0..s).map(|i| a[i * s + i]).sum::<f64>() / s.max(1) as f64;
    // A channel that never fired leaves a zero pivot; the floor keeps the system solvable.
    let lambda = (damp * mean_diag).max(1e-12);
    for i in 0..s {
        a[i * s + i] += lambda;
    }
    let l = cholesky(&a, s)?;
    let lt: Vec<f64> = (0..s * s).map(|ij| l[(ij % s) * s + ij / s]).collect();
    // The right-hand sides, one per output row r: (G_S· Wᵀ)[:, r] + λ W[r, kept], by one GEMM.
    let gs = Tensor::from_slice(&g.rows, (s, n), &Device::Cpu)?;
    let wt = Tensor::from_slice(w, (out, n), &Device::Cpu)?.to_dtype(DType::F64)?.t()?;
    let b = gs.matmul(&wt)?.t()?.contiguous()?.flatten_all()?.to_vec1::<f64>()?;
    let rows: Vec<Vec<f32>> = (0..out)
        .into_par_iter()
        .map(|r| {
            let wr = &w[r * n..(r + 1) * n];
            let mut x: Vec<f64> = (0..s).map(|i| b[r * s + i] + lambda * wr[kept[i]] as f64).collect();
            solve_in_place(&l, &lt, s, &mut x);
            x.into_iter().map(|v| v as f32).collect()
        })
        .collect();
    let flat: Vec<f32> = rows.concat();
    if flat.iter().any(|v| !v.is_finite()) {
        bail!("refit: the least-squares solution is not finite");
    }
    Ok(flat)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gram_of(x: &[f64], tokens: usize, n: usize, kept: &[usize]) -> Gram {
        let mut g = Gram::zeros(kept, n);
        for t in 0..tokens {
            for (a, &i) in kept.iter().enumerate() {
                for j in 0..n {
                    g.rows[a * n + j] += x[t * n + i] * x[t * n + j];
                }
            }
        }
        g
    }

    /// Pseudo-random numbers in [-1, 1) without a dependency.
    fn noise(seed: u64, len: usize) -> Vec<f64> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    /// When the removed columns are exact linear combinations of the kept ones, the refit
    /// reproduces the full projection's output (λ → 0), which plain slicing does not.
    #[test]
    fn removed_columns_that_depend_on_kept_ones_are_folded_in() {
        let (tokens, n, out) = (64, 5, 3);
        let base = noise(1, tokens * 3);
        // Columns 0..3 free, column 3 = col0 + 2 col1, column 4 = −col2.
        let x: Vec<f64> = (0..tokens)
            .flat_map(|t| {
                let b = &base[t * 3..t * 3 + 3];
                [b[0], b[1], b[2], b[0] + 2.0 * b[1], -b[2]]
            })
            .collect();
        let w: Vec<f32> = noise(2, out * n).iter().map(|&v| v as f32).collect();
        let kept = [0, 1, 2];
        let g = gram_of(&x, tokens, n, &kept);
        let w2 = refit(&g, &w, out, 1e-9).unwrap();
        for t in 0..tokens {
            for r in 0..out {
                let full: f64 = (0..n).map(|j| x[t * n + j] * w[r * n + j] as f64).sum();
                let refit: f64 = kept.iter().enumerate().map(|(k, &j)| x[t * n + j] * w2[r * 3 + k] as f64).sum();
                assert!((full - refit).abs() < 1e-4, "token {t} row {r}: {full} vs {refit}");
            }
        }
        // Closed form for this construction: W'[:,0] = W0 + W3, W'[:,1] = W1 + 2 W3, W'[:,2] = W2 − W4.
        for r in 0..out {
            let wr = &w[r * n..(r + 1) * n];
            for (got, want) in w2[r * 3..r * 3 + 3].iter().zip([wr[0] + wr[3], wr[1] + 2.0 * wr[3], wr[2] - wr[4]]) {
                assert!((got - want).abs() < 1e-4, "{got} vs {want}");
            }
        }
    }

    /// A huge ridge leaves the sliced weight as it is; an uninformative (all-zero) input too.
    #[test]
    fn the_ridge_pulls_toward_plain_slicing() {
        let (tokens, n, out) = (32, 4, 2);
        let x = noise(3, tokens * n);
        let w: Vec<f32> = noise(4, out * n).iter().map(|&v| v as f32).collect();
        let kept = [1, 3];
        let sliced: Vec<f32> = (0..out).flat_map(|r| kept.iter().map(move |&j| (r, j))).map(|(r, j)| w[r * n + j]).collect();
        let w2 = refit(&gram_of(&x, tokens, n, &kept), &w, out, 1e9).unwrap();
        for (a, b) in w2.iter().zip(&sliced) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        let w0 = refit(&Gram::zeros(&kept, n), &w, out, DAMP).unwrap();
        for (a, b) in w0.iter().zip(&sliced) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}
