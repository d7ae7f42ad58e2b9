//! AdamW with f32 master weights, written out rather than taken from candle-nn so that its state
//! (both moments, the step) can be checkpointed and restored bit for bit, gradients can be
//! accumulated over micro-batches in place, and the update is PyTorch's `torch.optim.AdamW`
//! formula exactly (decoupled decay first, then the bias-corrected step), for parity runs.

use anyhow::{Result, bail};
use candle_core::{Tensor, Var};
use rayon::prelude::*;

use super::options::{ADAM_EPS, BETAS};
use crate::model::host::with_cpu_f32;
use crate::model::weights::TensorRole;

/// Elements per parallel chunk of the update: large enough that a chunk outweighs scheduling.
const CHUNK: usize = 1 << 16;

/// One trainable tensor: the weight (a candle `Var` the forward reads), its accumulated gradient
/// and its two moments.
pub struct Param {
    pub role: TensorRole,
    pub var: Var,
    /// Matrices decay, norms do not (as in every LLaMA recipe).
    pub decay: bool,
    pub grad: Vec<f32>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

impl Param {
    pub fn new(role: TensorRole, var: Var) -> Self {
        let n = var.elem_count();
        Self { role, decay: !role.is_norm(), var, grad: vec![0.0; n], m: vec![0.0; n], v: vec![0.0; n] }
    }

    pub fn values(&self) -> Result<Vec<f32>> {
        Ok(self.var.as_tensor().flatten_all()?.to_vec1::<f32>()?)
    }

    /// Adds `g` (this tensor's gradient from one micro-batch) to the accumulated gradient,
    /// straight from the tensor's memory where it is a contiguous CPU f32 tensor.
    pub fn accumulate(&mut self, g: &Tensor) -> Result<()> {
        if g.elem_count() != self.grad.len() {
            bail!("gradient of {:?} has {} elements, the weight {}", self.role, g.elem_count(), self.grad.len());
        }
        let add = |acc: &mut [f32], g: &[f32]| {
            acc.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(a, b)| {
                a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
            });
        };
        if with_cpu_f32(&[g], |d| add(&mut self.grad, d[0]))?.is_none() {
            add(&mut self.grad, &g.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(())
    }
}

/// The optimizer: its step count and the parameters it owns.
pub struct AdamW {
    /// Updates done so far (PyTorch's `state['step']`).
    pub step: u64,
    pub params: Vec<Param>,
}

impl AdamW {
    pub fn new(params: Vec<Param>) -> Self {
        Self { step: 0, params }
    }

    /// L2 norm of all accumulated gradients (f64 sums in a fixed order: reproducible).
    pub fn grad_norm(&self) -> f64 {
        let sq: f64 = self
            .params
            .iter()
            .map(|p| p.grad.par_chunks(CHUNK).map(|c| c.iter().map(|&g| (g as f64) * (g as f64)).sum::<f64>()).collect::<Vec<_>>().iter().sum::<f64>())
            .sum();
        sq.sqrt()
    }

    /// One update with learning rate `lr`: gradients are multiplied by `grad_scale` (the clip
    /// factor) first, then cleared.
    pub fn update(&mut self, lr: f64, weight_decay: f64, grad_scale: f64) -> Result<()> {
        self.step += 1;
        let (b1, b2) = BETAS;
        let t = self.step as i32;
        let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        let step_size = (lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let (b1, b2, eps, scale) = (b1 as f32, b2 as f32, ADAM_EPS as f32, grad_scale as f32);
        for p in &mut self.params {
            let mut w = p.values()?;
            let keep = if p.decay { (1.0 - lr * weight_decay) as f32 } else { 1.0 };
            w.par_chunks_mut(CHUNK)
                .zip(p.grad.par_chunks_mut(CHUNK))
                .zip(p.m.par_chunks_mut(CHUNK).zip(p.v.par_chunks_mut(CHUNK)))
                .for_each(|((w, g), (m, v))| {
                    for i in 0..w.len() {
                        let gi = g[i] * scale;
                        m[i] = b1 * m[i] + (1.0 - b1) * gi;
                        v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                        let denom = v[i].sqrt() / bc2_sqrt + eps;
                        w[i] = w[i] * keep - step_size * m[i] / denom;
                        g[i] = 0.0;
                    }
                });
            let shape = p.var.shape().clone();
            p.var.set(&Tensor::from_vec(w, shape, p.var.device())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two steps of the PyTorch formula by hand, in f64.
    #[test]
    fn matches_torch_adamw() -> Result<()> {
        let var = Var::new(&[1.0f32, -2.0], &Device::Cpu)?;
        let mut opt = AdamW::new(vec![Param::new(TensorRole::Q(0), var)]);
        let (lr, wd) = (0.1, 0.01);
        let grads = [[0.5f64, -1.0], [0.25, 2.0]];
        let (mut w, mut m, mut v) = ([1.0f64, -2.0], [0.0f64; 2], [0.0f64; 2]);
        for (t, g) in grads.iter().enumerate() {
            opt.params[0].accumulate(&Tensor::new(&[g[0] as f32, g[1] as f32], &Device::Cpu)?)?;
            opt.update(lr, wd, 1.0)?;
            let t = (t + 1) as i32;
            for i in 0..2 {
                w[i] *= 1.0 - lr * wd;
                m[i] = 0.9 * m[i] + 0.1 * g[i];
                v[i] = 0.95 * v[i] + 0.05 * g[i] * g[i];
                let denom = v[i].sqrt() / (1.0 - 0.95f64.powi(t)).sqrt() + 1e-8;
                w[i] -= lr / (1.0 - 0.9f64.powi(t)) * m[i] / denom;
            }
        }
        let got = opt.params[0].values()?;
        for i in 0..2 {
            assert!((got[i] as f64 - w[i]).abs() < 1e-6, "{got:?} vs {w:?}");
        }
        assert!(opt.params[0].grad.iter().all(|&g| g == 0.0), "gradients are cleared");
        Ok(())
    }
}
