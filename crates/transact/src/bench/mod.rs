//! Throughput measurements: prefill and decode speed ([`prefill_decode`], [`decode_at`]), logit
//! drift against a reference ([`drift`]), this machine's roofs ([`roof`]), and models measured
//! side by side in each weight and KV-cache type ([`side_by_side`]).

pub mod roof;
pub mod side_by_side;

use std::time::Instant;

use anyhow::Result;
use candle_core::{D, Tensor};

use crate::model::forward::{Logits, Model};
use crate::model::kv_cache::KvCache;
use crate::model::session::Session;

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
        let t0 = Instant::now();
        let session = Session::start(model, prompt)?;
        session.greedy()?;
        best.prefill_tokens_per_s = best.prefill_tokens_per_s.max(prompt.len() as f64 / t0.elapsed().as_secs_f64());
        if n > 0 {
            best.decode_tokens_per_s = best.decode_tokens_per_s.max(decode_from(session, n)?);
        }
    }
    Ok(best)
}

/// Tokens per second of `n` greedy decode steps continuing `session`.
pub fn decode_from(mut session: Session, n: usize) -> Result<f64> {
    let t = Instant::now();
    for _ in 0..n {
        let next = session.greedy()?;
        session.push(next)?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// A synthetic prompt of `n` token ids (speed does not depend on which tokens).
pub fn prompt(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| 100 + i % 1000).collect()
}

/// Tokens per second decoding `n` tokens after a context of `context` tokens; best of `repeats`
/// runs from the same prefilled cache.
pub fn decode_at(model: &Model, context: usize, n: usize, repeats: usize) -> Result<f64> {
    let session = Session::start(model, &prompt(context))?;
    let mut best = 0f64;
    for _ in 0..repeats.max(1) {
        best = best.max(decode_from(session.try_clone()?, n)?);
    }
    Ok(best)
}

/// Bytes of weights one decode step reads: every layer tensor, the final norm and the LM head
/// (one embedding row is negligible).
pub fn weight_bytes_per_token(m: &Model) -> u64 {
    let w = &m.weights;
    let bytes = |t: &Tensor| (t.elem_count() * t.dtype().size_in_bytes()) as u64;
    let layers: u64 = w
        .layers
        .iter()
        .flat_map(|l| [&l.attn_norm, &l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.mlp_norm, &l.gate_proj, &l.up_proj, &l.down_proj])
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

/// Logits `[t, vocab]` of `ids` through the KV cache: `prefill` tokens at once (the GEMM
/// paths), then one token at a time (the decode paths).
pub fn cached_logits(m: &Model, ids: &[u32], prefill: usize) -> Result<Tensor> {
    let mut cache = KvCache::new(&m.config);
    let x = Tensor::new(&ids[..prefill], &m.device)?.unsqueeze(0)?;
    let mut rows = vec![m.forward(&x, Some(&mut cache), Logits::All)?.squeeze(0)?];
    for &id in &ids[prefill..] {
        let x = Tensor::new(&[id], &m.device)?.unsqueeze(0)?;
        rows.push(m.forward(&x, Some(&mut cache), Logits::Last)?.squeeze(0)?);
    }
    Ok(Tensor::cat(&rows, 0)?)
}

/// Logits of `m` against `reference` (which may live on another device) over the same tokens:
/// `m` prefills the first three quarters and decodes the rest, so both of its paths count;
/// the reference runs one full forward.
pub fn drift(m: &Model, reference: &Model, ids: &[u32]) -> Result<Drift> {
    let cpu = candle_core::Device::Cpu;
    let a = cached_logits(m, ids, ids.len() * 3 / 4)?.to_device(&cpu)?;
    let r = reference.logits(ids)?.to_device(&cpu)?;
    let max = |t: &Tensor| -> Result<f64> { Ok(t.abs()?.max_all()?.to_scalar::<f32>()? as f64) };
    let agree = a.argmax(D::Minus1)?.eq(&r.argmax(D::Minus1)?)?.to_dtype(candle_core::DType::F32)?;
    Ok(Drift {
        max_abs: max(&(&a - &r)?)?,
        max_ref: max(&r)?,
        top1_agree: agree.sum_all()?.to_scalar::<f32>()? as usize,
        positions: ids.len(),
    })
}
