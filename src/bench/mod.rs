//! Throughput measurements: prefill and decode speed, against this machine's roofs.

pub mod roof;

use std::time::Instant;

use anyhow::Result;
use candle_core::Tensor;

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

/// Tokens per second decoding `n` tokens after a context of `context` tokens; best of `repeats`.
pub fn decode_at(model: &Model, context: usize, n: usize, repeats: usize) -> Result<f64> {
    let prompt: Vec<u32> = (0..context as u32).map(|i| 100 + i % 1000).collect();
    Ok(prefill_decode(model, &prompt, n, repeats)?.decode_tokens_per_s)
}
