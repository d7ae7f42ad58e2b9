//! Throughput measurements: prefill and decode speed, against this machine's roofs.

pub mod roof;

use std::time::Instant;

use anyhow::Result;
use candle_core::{D, Tensor};

use crate::model::forward::{KvCache, Logits, Model};

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Speed {
    pub prefill_tokens: usize,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens: usize,
    pub decode_tokens_per_s: f64,
}

/// Prefills `prompt` and then decodes `n` tokens greedily with the KV cache; best of `repeats`.
pub fn prefill_decode(model: &Model, prompt: &[u32], n: usize, repeats: usize) -> Result<Speed> {
    let mut best = Speed { prefill_tokens: prompt.len(), prefill_tokens_per_s: 0.0, decode_tokens: n, decode_tokens_per_s: 0.0 };
    for _ in 0..repeats.max(1) {
        let mut cache = KvCache::new(&model.config);
        let t0 = Instant::now();
        let x = Tensor::new(prompt, &model.device)?.unsqueeze(0)?;
        let mut logits = model.forward(&x, Some(&mut cache), Logits::Last)?;
        let mut next = logits.flatten_all()?.argmax(0)?.to_scalar::<u32>()?;
        let prefill = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for _ in 0..n {
            let x = Tensor::new(&[next], &model.device)?.unsqueeze(0)?;
            logits = model.forward(&x, Some(&mut cache), Logits::Last)?;
            next = logits.flatten_all()?.argmax(0)?.to_scalar::<u32>()?;
        }
        let decode = t1.elapsed().as_secs_f64();
        best.prefill_tokens_per_s = best.prefill_tokens_per_s.max(prompt.len() as f64 / prefill);
        best.decode_tokens_per_s = best.decode_tokens_per_s.max(n as f64 / decode);
    }
    Ok(best)
}

/// A synthetic prompt of `n` token ids (speed does not depend on which tokens).
pub fn prompt(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| 100 + i % 1000).collect()
}

/// Tokens per second decoding `n` tokens after a context of `context` tokens; best of `repeats`.
pub fn decode_at(model: &Model, context: usize, n: usize, repeats: usize) -> Result<f64> {
    Ok(prefill_decode(model, &prompt(context), n, repeats)?.decode_tokens_per_s)
}

/// Bytes of weights one decode step reads: every layer tensor, the final norm and the LM head
/// (one embedding row is negligible).
pub fn weight_bytes_per_token(m: &Model) -> u64 {
    let w = &m.weights;
    let bytes = |t: &Tensor| (t.elem_count() * t.dtype().size_in_bytes()) as u64;
    let layers: u64 = w
        .layers
        .iter()
        .flat_map(|l| [&l.attn_norm, &l.q, &l.k, &l.v, &l.o, &l.mlp_norm, &l.gate, &l.up, &l.down])
        .map(bytes)
        .sum();
    layers + bytes(&w.final_norm) + bytes(w.lm_head.as_ref().unwrap_or(&w.embed))
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Drift {
    /// Largest |logit − reference logit| over all positions and the vocabulary.
    pub max_abs: f64,
    /// Largest |reference logit|, for scale.
    pub max_ref: f64,
    /// Positions whose argmax agrees with the reference.
    pub top1_agree: usize,
    pub positions: usize,
}

/// Logits of `m` against `reference` over the same tokens.
pub fn drift(m: &Model, reference: &Model, ids: &[u32]) -> Result<Drift> {
    let (a, r) = (m.logits(ids)?, reference.logits(ids)?);
    let max = |t: &Tensor| -> Result<f64> { Ok(t.abs()?.max_all()?.to_scalar::<f32>()? as f64) };
    let agree = a.argmax(D::Minus1)?.eq(&r.argmax(D::Minus1)?)?.to_dtype(candle_core::DType::F32)?;
    Ok(Drift {
        max_abs: max(&(&a - &r)?)?,
        max_ref: max(&r)?,
        top1_agree: agree.sum_all()?.to_scalar::<f32>()? as usize,
        positions: ids.len(),
    })
}
