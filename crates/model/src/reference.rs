//! The LLaMA forward in plain, differentiable candle ops: the definition of the model.
//!
//! It reads top to bottom like llama2.c's `forward`: embed, then per layer RMSNorm → Q, K, V →
//! RoPE → causal softmax attention (GQA: each KV head serves its group of query heads) → O,
//! residual; RMSNorm → SwiGLU MLP, residual; then the final norm and the LM head.
//!
//! Every op has a backward in candle, so with the weights as `Var`s a loss's `backward()`
//! reaches each of them. candle's fused `rms_norm`, `softmax_last_dim` and `rotary_emb` kernels
//! have no backward (they would silently freeze everything upstream), so the norm, the softmax
//! and the rotation are written out here. It computes in the weights' dtype: f32, or f64 for
//! gradient checks. The fast forward ([`crate::forward`]) and decode are tested against it.

use candle_core::{D, DType, Result, Tensor};

use crate::config::{LayerShape, ModelConfig, RopeLayout};
use crate::weights::Weights;

/// The ops the forward is built from besides attention. [`Plain`] writes them in candle's
/// differentiable primitives: the definition. [`crate::fused::Fused`] computes the same with
/// hand-written backward passes, for training speed, and is tested against [`Plain`].
pub trait Ops {
    /// `x · Wᵀ` for `x` `[b, t, in]` and `W` `[out, in]`.
    fn linear(&self, x: &Tensor, w: &Tensor) -> Result<Tensor>;
    /// `x / √(mean(x²) + eps) · w` over the last axis.
    fn rms_norm(&self, x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor>;
    /// `silu(gate) ⊙ up`.
    fn swiglu(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor>;
    /// `x` (`[b, t, heads · d]`, positions 0 .. t) with each head's rotary pairs turned.
    fn rope(&self, x: &Tensor, r: &Rotation) -> Result<Tensor>;
    /// Causal attention of `q` (`[b, t, heads · d]`, rotated) over `k` and `v` (`[b, t,
    /// kv_heads · d]`), query head h reading KV head h / (heads / kv_heads); `[b, t, heads · d]`.
    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, kv_heads: usize) -> Result<Tensor>;
}

/// How one projection's heads rotate.
pub struct Rotation<'a> {
    pub heads: usize,
    pub head_dim: usize,
    /// Consecutive heads sharing a frequency table (the query heads of a KV group; 1 for keys).
    pub heads_per_group: usize,
    /// Each group's inverse frequency per rotary pair; one entry when all heads share it.
    pub inv_freq: &'a [Vec<f64>],
    pub layout: RopeLayout,
}

impl Rotation<'_> {
    /// The frequency table of head `h`.
    pub fn inv_freq_of(&self, h: usize) -> &[f64] {
        &self.inv_freq[if self.inv_freq.len() == 1 { 0 } else { h / self.heads_per_group }]
    }
}

/// The definition's ops, in candle primitives.
pub struct Plain;

impl Ops for Plain {
    fn linear(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let (b, t, n_in) = x.dims3()?;
        x.reshape((b * t, n_in))?.matmul(&w.t()?)?.reshape((b, t, w.dim(0)?))
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
        let rms = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?;
        x.broadcast_div(&rms)?.broadcast_mul(w)
    }

    fn swiglu(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        candle_nn::ops::silu(gate)? * up
    }

    fn rope(&self, x: &Tensor, r: &Rotation) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (n, d) = (r.heads, r.head_dim);
        let x = x.reshape((b, t, n, d))?.transpose(1, 2)?; // [b, n, t, d]
        let (dtype, device) = (x.dtype(), x.device());
        // Every head rotates with the same frequencies, unless head-dim pruning kept different
        // pairs in different KV groups: then each group rotates its own heads.
        let y = if r.inv_freq.len() == 1 {
            let (cos, sin) = rope_tables(&r.inv_freq[0], t, dtype, device)?;
            rope(&x, &cos, &sin, r.layout)?
        } else {
            let mut parts = Vec::with_capacity(r.inv_freq.len());
            for (grp, f) in r.inv_freq.iter().enumerate() {
                let (cos, sin) = rope_tables(f, t, dtype, device)?;
                parts.push(rope(&x.narrow(1, grp * r.heads_per_group, r.heads_per_group)?, &cos, &sin, r.layout)?);
            }
            Tensor::cat(&parts, 1)?
        };
        y.transpose(1, 2)?.reshape((b, t, n * d))
    }

    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, hq: usize, hkv: usize) -> Result<Tensor> {
        let (b, t, width) = q.dims3()?;
        let (d, g) = (width / hq, hq / hkv);
        let heads = |y: &Tensor, n: usize| y.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous(); // [b, n, t, d]
        // Query head h reads KV head h / g.
        let per_query = |y: &Tensor| heads(y, hkv)?.unsqueeze(2)?.expand((b, hkv, g, t, d))?.reshape((b, hq, t, d));
        let (q, k, v) = (heads(q, hq)?, per_query(k)?, per_query(v)?);
        // Query i sees keys 0 ..= i: −∞ above the diagonal.
        let mask: Vec<f64> = (0..t * t).map(|i| if i % t > i / t { f64::NEG_INFINITY } else { 0.0 }).collect();
        let mask = Tensor::from_vec(mask, (t, t), q.device())?.to_dtype(q.dtype())?;
        let att = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?.broadcast_add(&mask)?;
        let y = softmax(&att)?.matmul(&v)?; // [b, hq, t, d]
        y.transpose(1, 2)?.reshape((b, t, hq * d))
    }
}

/// Logits `[b, t, vocab]` of `tokens` (`[b, t]`, u32), every sequence starting at position 0.
pub fn forward(cfg: &ModelConfig, w: &Weights, tokens: &Tensor) -> Result<Tensor> {
    forward_with(&Plain, cfg, w, tokens)
}

/// [`forward`] built from `ops`.
pub fn forward_with(ops: &dyn Ops, cfg: &ModelConfig, w: &Weights, tokens: &Tensor) -> Result<Tensor> {
    let (linear, rms_norm) = (|x: &Tensor, w: &Tensor| ops.linear(x, w), |x: &Tensor, w: &Tensor, eps: f64| ops.rms_norm(x, w, eps));
    let (b, t) = tokens.dims2()?;
    if t > cfg.max_position {
        candle_core::bail!("sequence of {t} tokens exceeds the model's context of {}", cfg.max_position);
    }
    let eps = cfg.rms_eps;

    let mut x = w.embed.index_select(&tokens.flatten_all()?, 0)?.reshape((b, t, cfg.hidden_size))?;
    for (l, s) in cfg.layers.iter().enumerate() {
        let lw = &w.layers[l];
        let LayerShape { n_heads: hq, n_kv_heads: hkv, head_dim: d, .. } = *s;
        // One frequency table for all heads, or one per KV group (head-dim pruning).
        let inv_freq: Vec<Vec<f64>> = match cfg.rope_inv_freq {
            None => vec![cfg.inv_freq(l, 0)],
            Some(_) => (0..hkv).map(|grp| cfg.inv_freq(l, grp)).collect(),
        };
        let rotation = |heads, heads_per_group| Rotation { heads, head_dim: d, heads_per_group, inv_freq: &inv_freq, layout: cfg.rope_layout };

        // Attention.
        let xb = rms_norm(&x, &lw.attn_norm, eps)?;
        let q = ops.rope(&linear(&xb, &lw.q_proj)?, &rotation(hq, s.group_size()))?;
        let k = ops.rope(&linear(&xb, &lw.k_proj)?, &rotation(hkv, 1))?;
        let v = linear(&xb, &lw.v_proj)?;
        let y = ops.attention(&q, &k, &v, hq, hkv)?;
        x = (x + linear(&y, &lw.o_proj)?)?;

        // SwiGLU MLP.
        let xb = rms_norm(&x, &lw.mlp_norm, eps)?;
        let h = ops.swiglu(&linear(&xb, &lw.gate_proj)?, &linear(&xb, &lw.up_proj)?)?;
        x = (x + linear(&h, &lw.down_proj)?)?;
    }
    let x = rms_norm(&x, &w.final_norm, eps)?;
    linear(&x, w.lm_head.as_ref().unwrap_or(&w.embed))
}

/// Softmax over the last axis. The max only keeps `exp` in range: it cancels from the result,
/// so no gradient flows through it.
fn softmax(x: &Tensor) -> Result<Tensor> {
    let e = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// cos and sin `[t, d/2]` of position p times each pair's inverse frequency (angles in f64).
fn rope_tables(inv_freq: &[f64], t: usize, dtype: DType, device: &candle_core::Device) -> Result<(Tensor, Tensor)> {
    let angles: Vec<f64> = (0..t).flat_map(|p| inv_freq.iter().map(move |f| p as f64 * f)).collect();
    let cos = Tensor::from_vec(angles.iter().map(|a| a.cos()).collect::<Vec<_>>(), (t, inv_freq.len()), device)?;
    let sin = Tensor::from_vec(angles.iter().map(|a| a.sin()).collect::<Vec<_>>(), (t, inv_freq.len()), device)?;
    Ok((cos.to_dtype(dtype)?, sin.to_dtype(dtype)?))
}

/// Rotates each rotary pair (x₀, x₁) of every head of `x` (`[b, heads, t, d]`) at position p by
/// angle p·f: (x₀ cos − x₁ sin, x₀ sin + x₁ cos). Where the two members of a pair live is
/// `layout`'s business ([`RopeLayout::pair`]).
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, layout: RopeLayout) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let member = |m: usize| -> Result<Tensor> {
        let idx: Vec<u32> = (0..d / 2).map(|i| layout.pair(i, d)[m] as u32).collect();
        x.contiguous()?.index_select(&Tensor::new(idx, x.device())?, 3)
    };
    let (x0, x1) = (member(0)?, member(1)?);
    let y0 = (x0.broadcast_mul(cos)? - x1.broadcast_mul(sin)?)?;
    let y1 = (x0.broadcast_mul(sin)? + x1.broadcast_mul(cos)?)?;
    // [first members, second members] back into the layout's order.
    let mut back = vec![0u32; d];
    for i in 0..d / 2 {
        let [a, b] = layout.pair(i, d);
        back[a] = i as u32;
        back[b] = (d / 2 + i) as u32;
    }
    Tensor::cat(&[y0, y1], 3)?.index_select(&Tensor::new(back, x.device())?, 3)
}
