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

/// Query rows per block of packed attention: each block scores only the keys from the first one
/// its queries see to its last query, so packed docs skip most of each other's keys.
const BLOCK: usize = 128;

/// Attention of `q` `[1, kv_heads, g, t, d]` over `k`, `v` `[1, kv_heads, t, d]` where packed
/// token `i` sees the keys of `packing.spans[i]`.
pub(crate) fn attend_packed(q: &Tensor, k: &Tensor, v: &Tensor, packing: &Packing) -> Result<Tensor> {
    let (b, hkv, g, t, d) = q.dims5()?;
    let mut blocks = Vec::with_capacity(t.div_ceil(BLOCK));
    for c0 in (0..t).step_by(BLOCK) {
        let c = BLOCK.min(t - c0);
        let spans = &packing.spans[c0..c0 + c];
        // Keys lo..hi cover every span of the block's queries.
        let lo = spans.iter().flat_map(|s| s.iter().filter(|r| r.0 < r.1).map(|r| r.0)).min().unwrap_or(c0);
        let hi = c0 + c;
        let narrow = |x: &Tensor, dim: usize, from: usize, n: usize| if n == x.dim(dim).unwrap_or(0) { Ok(x.clone()) } else { x.narrow(dim, from, n)?.contiguous() };
        let (qc, kc, vc) = (narrow(q, 3, c0, c)?, narrow(k, 2, lo, hi - lo)?, narrow(v, 2, lo, hi - lo)?);
        let keys = hi - lo;
        let att = bmm(&qc.reshape((b, hkv, g * c, d))?, &kc, true)?;
        let shifted = |r: usize| spans[r % c].map(|(a, e)| if a < e { (a - lo, e - lo) } else { (0, 0) });
        let p = match with_cpu_f32(&[&att], |x| elementwise::span_softmax(x[0], keys, shifted))? {
            Some(p) => Tensor::from_vec(p, att.shape(), att.device())?,
            None => {
                let mut mask = vec![f32::NEG_INFINITY; c * keys];
                for i in 0..c {
                    for (a, e) in shifted(i) {
                        mask[i * keys + a..i * keys + e].fill(0.0);
                    }
                }
                let mask = Tensor::from_vec(mask, (c, keys), att.device())?;
                softmax_last_dim(&att.reshape((b, hkv, g, c, keys))?.broadcast_add(&mask)?.reshape((b, hkv, g * c, keys))?)?
            }
        };
        blocks.push(bmm(&p, &vc, false)?.reshape((b, hkv, g, c, d))?);
    }
    if blocks.len() == 1 { Ok(blocks.pop().expect("one block")) } else { Tensor::cat(&blocks, 3) }
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
