//! The training forward's heavy ops as candle custom ops with hand-written backward passes, on
//! contiguous f32 CPU tensors: the linear layer (both gradients through the `gemm` kernels,
//! without candle's transposed copies), RMSNorm and SwiGLU (one pass each way on rayon's
//! threads instead of a dozen candle element-wise ops, each a fresh allocation and a wake-up of
//! candle's own spinning thread pool next to rayon's). [`Fused`] hands them to
//! [`crate::reference::forward_with`]; anywhere else (a GPU, another dtype) it falls back to
//! [`Plain`], the definition they are tested against.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;
use transact_kernels::gemm::f32::{matmul, matmul_tn};

use crate::reference::{Ops, Plain, Rotation};

mod attention;

/// Rows per parallel task of the row-wise ops.
const ROWS: usize = 16;

/// The fused ops where the tensors allow, [`Plain`]'s otherwise.
pub struct Fused;

fn cpu_f32(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32)
}

impl Ops for Fused {
    fn linear(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        if !cpu_f32(&[x, w]) {
            return Plain.linear(x, w);
        }
        let (b, t, n_in) = x.dims3()?;
        x.reshape((b * t, n_in))?.contiguous()?.apply_op2(&w.contiguous()?, Linear)?.reshape((b, t, w.dim(0)?))
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
        if !cpu_f32(&[x, w]) {
            return Plain.rms_norm(x, w, eps);
        }
        x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32 })
    }

    fn swiglu(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        if !cpu_f32(&[gate, up]) || gate.dims() != up.dims() {
            return Plain.swiglu(gate, up);
        }
        gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
    }

    fn rope(&self, x: &Tensor, r: &Rotation) -> Result<Tensor> {
        if !cpu_f32(&[x]) {
            return Plain.rope(x, r);
        }
        let t = x.dim(1)?;
        x.contiguous()?.apply_op1(attention::Rope::new(r, t))
    }

    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, kv_heads: usize) -> Result<Tensor> {
        if !cpu_f32(&[q, k, v]) {
            return Plain.attention(q, k, v, heads, kv_heads);
        }
        q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, attention::Attention { heads, kv_heads })
    }
}

/// The contiguous f32 data of a CPU storage.
fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { bail!("fused ops take f32 tensors") };
    let Some((a, b)) = l.contiguous_offsets() else { bail!("fused ops take contiguous tensors") };
    Ok(&v[a..b])
}

/// `f` over the data of contiguous CPU f32 tensors.
fn with_data<R>(ts: &[&Tensor], f: impl FnOnce(&[&[f32]]) -> R) -> Result<R> {
    let ts: Vec<Tensor> = ts.iter().map(|t| t.contiguous()).collect::<Result<_>>()?;
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut data = Vec::with_capacity(ts.len());
    for (g, l) in &guards {
        let candle_core::Storage::Cpu(s) = &**g else { bail!("fused ops run on the CPU") };
        data.push(slice(s, l)?);
    }
    Ok(f(&data))
}

/// `y = x · Wᵀ` for `x` `[m, in]` and `W` `[out, in]`.
struct Linear;

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, n_in) = xl.shape().dims2()?;
        let (n_out, w_in) = wl.shape().dims2()?;
        if w_in != n_in {
            bail!("linear: x has {n_in} features, W {w_in}");
        }
        let y = matmul(1, m, n_out, n_in, slice(xs, xl)?, slice(ws, wl)?, true);
        Ok((CpuStorage::F32(y), Shape::from((m, n_out))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let ((m, n_in), n_out) = (x.dims2()?, w.dim(0)?);
        let (gx, gw) = with_data(&[x, w, g], |d| {
            let (x, w, g) = (d[0], d[1], d[2]);
            // ∂x = ∂y · W ([m, out] · [out, in]); ∂W = ∂yᵀ · x ([out, m] · [m, in]).
            (matmul(1, m, n_in, n_out, g, w, false), matmul_tn(n_out, n_in, m, g, x))
        })?;
        Ok((Some(Tensor::from_vec(gx, (m, n_in), x.device())?), Some(Tensor::from_vec(gw, (n_out, n_in), w.device())?)))
    }
}

/// `x / √(mean(x²) + eps) · w` over the last axis of `x` `[.., h]`.
struct RmsNorm {
    eps: f32,
}

/// 1 / √(mean(x²) + eps) of a row, in f64 sums.
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ms = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / row.len() as f64;
    (1.0 / (ms + eps as f64).sqrt()) as f32
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (slice(xs, xl)?, slice(ws, wl)?);
        let h = w.len();
        if xl.shape().dims().last() != Some(&h) {
            bail!("rms_norm: rows of {:?} do not match a weight of {h}", xl.shape());
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(h * ROWS).zip(x.par_chunks(h * ROWS)).for_each(|(y, x)| {
            for (y, x) in y.chunks_exact_mut(h).zip(x.chunks_exact(h)) {
                let r = inv_rms(x, self.eps);
                y.iter_mut().zip(x).zip(w).for_each(|((y, &x), &w)| *y = x * r * w);
            }
        });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let h = w.elem_count();
        let (gx, gw) = with_data(&[x, w, g], |d| {
            let (x, w, g) = (d[0], d[1], d[2]);
            let mut gx = vec![0f32; x.len()];
            // Per task: ∂x of its rows, and its part of ∂w = Σ_rows ∂y ⊙ x·r (summed in order).
            let parts: Vec<Vec<f64>> = gx
                .par_chunks_mut(h * ROWS)
                .zip(x.par_chunks(h * ROWS).zip(g.par_chunks(h * ROWS)))
                .map(|(gx, (x, g))| {
                    let mut gw = vec![0f64; h];
                    for ((gx, x), g) in gx.chunks_exact_mut(h).zip(x.chunks_exact(h)).zip(g.chunks_exact(h)) {
                        let r = inv_rms(x, self.eps);
                        // y = x·r·w: ∂x = r·(g⊙w) − x·r³·⟨g⊙w, x⟩/h.
                        let dot: f64 = g.iter().zip(w).zip(x).map(|((&g, &w), &x)| (g * w) as f64 * x as f64).sum();
                        let c = (dot / h as f64) as f32 * r * r * r;
                        for j in 0..h {
                            gx[j] = r * g[j] * w[j] - x[j] * c;
                            gw[j] += (g[j] * x[j] * r) as f64;
                        }
                    }
                    gw
                })
                .collect();
            let mut gw = vec![0f64; h];
            for p in &parts {
                gw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
            }
            (gx, gw.into_iter().map(|v| v as f32).collect::<Vec<f32>>())
        })?;
        Ok((Some(Tensor::from_vec(gx, x.shape(), x.device())?), Some(Tensor::from_vec(gw, w.shape(), w.device())?)))
    }
}

/// `silu(gate) ⊙ up`.
struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, us: &CpuStorage, ul: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = transact_kernels::elementwise::silu_mul(slice(gs, gl)?, slice(us, ul)?);
        Ok((CpuStorage::F32(y), gl.shape().clone()))
    }

    fn bwd(&self, gate: &Tensor, up: &Tensor, _: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        const CHUNK: usize = 1 << 14;
        let (dg, du) = with_data(&[gate, up, g], |d| {
            let (a, u, g) = (d[0], d[1], d[2]);
            let (mut dg, mut du) = (vec![0f32; a.len()], vec![0f32; a.len()]);
            dg.par_chunks_mut(CHUNK).zip(du.par_chunks_mut(CHUNK)).enumerate().for_each(|(c, (dg, du))| {
                let o = c * CHUNK;
                for i in 0..dg.len() {
                    let (a, u, g) = (a[o + i], u[o + i], g[o + i]);
                    let s = 1.0 / (1.0 + (-a).exp());
                    // silu(a) = a·σ(a); silu'(a) = σ(a)·(1 + a·(1 − σ(a))).
                    du[i] = g * a * s;
                    dg[i] = g * u * s * (1.0 + a * (1.0 - s));
                }
            });
            (dg, du)
        })?;
        Ok((Some(Tensor::from_vec(dg, gate.shape(), gate.device())?), Some(Tensor::from_vec(du, up.shape(), up.device())?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Var {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 500.0 - 1.0) * 1.5).collect();
        Var::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Each fused op's value and both gradients equal the plain composition's.
    #[test]
    fn fused_ops_match_the_definition() -> Result<()> {
        let (x, w, wn) = (rand(&[2, 7, 12], 1), rand(&[5, 12], 2), rand(&[12], 3));
        let up = rand(&[2, 7, 12], 4);
        // Attention: 4 query heads over 2 KV heads of dim 6 (3 rotary pairs).
        let (q, k, v) = (rand(&[2, 7, 24], 5), rand(&[2, 7, 12], 6), rand(&[2, 7, 12], 7));
        let one = vec![vec![1.0, 0.1, 0.01]];
        let per_group = vec![vec![1.0, 0.1, 0.01], vec![0.5, 0.05, 0.3]];
        let rot = |heads, per, f: &'static str| {
            let inv_freq = if f == "one" { &one } else { &per_group };
            let layout = if f == "one" { crate::config::RopeLayout::HalfSplit } else { crate::config::RopeLayout::Adjacent };
            Rotation { heads, head_dim: 6, heads_per_group: per, inv_freq, layout }
        };
        type Case<'a> = (&'a str, Box<dyn Fn(&dyn Ops) -> Result<Tensor> + 'a>, Vec<&'a Var>);
        let cases: Vec<Case> = vec![
            ("linear", Box::new(|o: &dyn Ops| o.linear(&x, &w)), vec![&x, &w]),
            ("rms_norm", Box::new(|o: &dyn Ops| o.rms_norm(&x, &wn, 1e-5)), vec![&x, &wn]),
            ("swiglu", Box::new(|o: &dyn Ops| o.swiglu(&x, &up)), vec![&x, &up]),
            ("rope, one table", Box::new(|o: &dyn Ops| o.rope(&q, &rot(4, 2, "one"))), vec![&q]),
            ("rope, a table per group", Box::new(|o: &dyn Ops| o.rope(&q, &rot(4, 2, "per"))), vec![&q]),
            ("rope of keys", Box::new(|o: &dyn Ops| o.rope(&k, &rot(2, 1, "per"))), vec![&k]),
            ("attention", Box::new(|o: &dyn Ops| o.attention(&q, &k, &v, 4, 2)), vec![&q, &k, &v]),
        ];
        for (name, f, vars) in cases {
            let (a, b) = (f(&Plain)?, f(&Fused)?);
            let diff = (&a - &b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "{name}: values differ by {diff}");
            // A loss that weighs every output differently, so each gradient is exercised.
            let weights = Tensor::arange(0f32, a.elem_count() as f32, &Device::Cpu)?.reshape(a.shape())?.sin()?;
            let (ga, gb) = ((a * &weights)?.sum_all()?.backward()?, (b * &weights)?.sum_all()?.backward()?);
            for v in vars {
                let (p, q) = (ga.get(v).expect("plain gradient"), gb.get(v).expect("fused gradient"));
                let diff = (p - q)?.abs()?.max_all()?.to_scalar::<f32>()?;
                let size = p.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff <= 1e-5 * size.max(1.0), "{name}: gradient of a {:?} input differs by {diff} (max {size})", v.dims());
            }
        }
        Ok(())
    }
}
