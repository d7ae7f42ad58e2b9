//! Token sampling for `generate`: greedy at temperature 0, else temperature + nucleus (top-p).

use anyhow::Result;
use candle_core::{D, Tensor};
use rand::distr::{Distribution, weighted::WeightedIndex};
use rand::{SeedableRng, rngs::StdRng};

pub struct Sampler {
    temperature: f64,
    top_p: f64,
    rng: StdRng,
}

impl Sampler {
    pub fn new(temperature: f64, top_p: f64, seed: u64) -> Self {
        Self { temperature, top_p, rng: StdRng::seed_from_u64(seed) }
    }

    /// Picks the next token from logits of shape `[vocab]`.
    pub fn sample(&mut self, logits: &Tensor) -> Result<u32> {
        if self.temperature <= 0.0 {
            return Ok(logits.argmax(D::Minus1)?.to_scalar::<u32>()?);
        }
        let probs = candle_nn::ops::softmax_last_dim(&(logits / self.temperature)?)?.to_vec1::<f32>()?;
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_unstable_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        // Smallest prefix of the sorted distribution whose mass reaches top_p.
        let mut mass = 0.0f64;
        let mut keep = 0;
        for &i in &order {
            mass += probs[i] as f64;
            keep += 1;
            if mass >= self.top_p {
                break;
            }
        }
        let kept = &order[..keep];
        let dist = WeightedIndex::new(kept.iter().map(|&i| probs[i]))?;
        Ok(kept[dist.sample(&mut self.rng)] as u32)
    }
}

/// Prefills `prompt` into a fresh KV cache, then produces up to `max_new` tokens, stopping after
/// `eos` or at the context limit. `on_token` sees each token as it is chosen.
pub fn generate(
    model: &crate::Model,
    prompt: &[u32],
    max_new: usize,
    sampler: &mut Sampler,
    eos: Option<u32>,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    use crate::{KvCache, Logits};
    anyhow::ensure!(!prompt.is_empty(), "the prompt is empty");
    let mut cache = KvCache::new(&model.config);
    let input = Tensor::new(prompt, &model.device)?.unsqueeze(0)?;
    let mut logits = model.forward(&input, Some(&mut cache), Logits::Last)?;
    let mut out = Vec::new();
    while out.len() < max_new {
        let next = sampler.sample(&logits.flatten_all()?)?;
        out.push(next);
        on_token(next)?;
        if Some(next) == eos || out.len() == max_new || cache.len() >= model.config.max_position {
            break;
        }
        let input = Tensor::new(&[next], &model.device)?.unsqueeze(0)?;
        logits = model.forward(&input, Some(&mut cache), Logits::Last)?;
    }
    Ok(out)
}
