//! Several sequences packed into one forward pass: each token has its own RoPE position and
//! attends to two ranges of the packed tokens (its own sequence up to itself, and optionally a
//! shared prefix packed once). Scoring many short requests this way gives the GEMMs hundreds of
//! rows instead of a few dozen, and no padding: lm-eval-style evaluation runs ~2× faster.

use candle_core::{Device, Result, Tensor};
use candle_nn::ops::{rms_norm, softmax_last_dim};

use transact_kernels::elementwise;

use crate::forward::{Model, bmm};
use crate::host::with_cpu_f32;
use crate::linear::linear;

/// Where each packed token sits and what it sees.
#[derive(Debug, Clone, Default)]
pub struct Packing {
    /// RoPE position of every token.
    pub positions: Vec<usize>,
    /// The packed tokens each token attends to: two half-open ranges of packed indices.
    pub spans: Vec<[(usize, usize); 2]>,
}

impl Packing {
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Appends a sequence of `n` tokens that continues `prefix` (packed indices `a..b` of an
    /// earlier sequence starting at position 0), or starts at position 0 without one; returns
    /// the packed index of its first token.
    pub fn push(&mut self, n: usize, prefix: Option<(usize, usize)>) -> usize {
        let start = self.len();
        let (a, b) = prefix.unwrap_or((0, 0));
        for u in 0..n {
            self.positions.push(b - a + u);
            self.spans.push([(a, b), (start, start + u + 1)]);
        }
        start
    }

    /// Every token sees only earlier packed tokens and itself, within the model's context.
    fn check(&self, tokens: usize, max_position: usize) -> Result<()> {
        if tokens != self.len() {
            candle_core::bail!("{tokens} tokens for a packing of {}", self.len());
        }
        for (i, (p, s)) in self.positions.iter().zip(&self.spans).enumerate() {
            if *p >= max_position {
                candle_core::bail!("packed token {i} sits at position {p}, beyond the model's context of {max_position}");
            }
            let [(a0, b0), (a1, b1)] = *s;
            let ordered = a0 <= b0 && a1 <= b1 && b0 <= i + 1 && b1 <= i + 1;
            let disjoint = a0 == b0 || a1 == b1 || b0 <= a1;
            if !(ordered && disjoint) {
                candle_core::bail!("packed token {i} attends to {s:?}: ranges must be ordered and end at the token itself");
            }
        }
        Ok(())
    }
}

/// Attention of `q` `[1, kv_heads, g, t, d]` over `k`, `v` `[1, kv_heads, t, d]` where packed
/// token `i` sees the keys of `packing.spans[i]`.
pub(crate) fn attend_packed(q: &Tensor, k: &Tensor, v: &Tensor, packing: &Packing) -> Result<Tensor> {
    let (b, hkv, g, t, d) = q.dims5()?;
    let att = bmm(&q.reshape((b, hkv, g * t, d))?, k, true)?;
    let p = match with_cpu_f32(&[&att], |x| elementwise::span_softmax(x[0], t, |r| packing.spans[r % t]))? {
        Some(p) => Tensor::from_vec(p, att.shape(), att.device())?,
        None => {
            let mut mask = vec![f32::NEG_INFINITY; t * t];
            for (i, s) in packing.spans.iter().enumerate() {
                for &(a, e) in s {
                    mask[i * t + a..i * t + e].fill(0.0);
                }
            }
            let mask = Tensor::from_vec(mask, (t, t), att.device())?;
            softmax_last_dim(&att.reshape((b, hkv, g, t, t))?.broadcast_add(&mask)?.reshape((b, hkv, g * t, t))?)?
        }
    };
    bmm(&p, v, false)?.reshape((b, hkv, g, t, d))
}

impl Model {
    /// Logits `[rows.len(), vocab]` at the packed indices `rows` of the sequences packed as
    /// `tokens` with `packing` (no KV cache).
    pub fn forward_packed(&self, tokens: &[u32], packing: &Packing, rows: &[usize]) -> Result<Tensor> {
        packing.check(tokens.len(), self.config.max_position)?;
        if let Some(r) = rows.iter().find(|&&r| r >= tokens.len()) {
            candle_core::bail!("row {r} of {} packed tokens", tokens.len());
        }
        if matches!(self.device, Device::Cpu) && rayon::current_thread_index().is_none() {
            return rayon::scope(|_| self.packed(tokens, packing, rows));
        }
        self.packed(tokens, packing, rows)
    }

    fn packed(&self, tokens: &[u32], packing: &Packing, rows: &[usize]) -> Result<Tensor> {
        let cfg = &self.config;
        let ids = Tensor::new(tokens, &self.device)?;
        let x = self.weights.embed.index_select(&ids, 0)?.reshape((1, tokens.len(), cfg.hidden_size))?;
        let x = self.run_layers_packed(x, packing)?;
        let picked = Tensor::new(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), &self.device)?;
        let x = rms_norm(&x.index_select(&picked, 1)?, &self.weights.final_norm, cfg.rms_eps as f32)?;
        linear(&x, self.weights.lm_head.as_ref().unwrap_or(&self.weights.embed))?.squeeze(0)
    }
}
