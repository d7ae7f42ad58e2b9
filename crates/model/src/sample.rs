//! Choosing the next token from logits: greedy at temperature 0, else temperature and nucleus
//! (top-p) sampling from a seeded generator.

use anyhow::Result;
use candle_core::{D, Tensor};
use rand::distr::{Distribution, weighted::WeightedIndex};
use rand::{SeedableRng, rngs::StdRng};

use crate::setting::SettingError;

pub struct Sampler {
    temperature: f64,
    top_p: f64,
    rng: StdRng,
}

impl Sampler {
    /// Greedy at `temperature` 0; otherwise softmax of logits / `temperature`, cut to the
    /// smallest set of tokens whose mass reaches `top_p`, drawn with a generator seeded by `seed`.
    pub fn new(temperature: f64, top_p: f64, seed: u64) -> Result<Self, SettingError> {
        if !(temperature >= 0.0 && temperature.is_finite()) {
            return Err(SettingError::new("temperature", format!("must be ≥ 0, got {temperature}")));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(SettingError::new("top_p", format!("must be in (0, 1], got {top_p}")));
        }
        Ok(Self { temperature, top_p, rng: StdRng::seed_from_u64(seed) })
    }

    /// The greedy sampler.
    pub fn greedy() -> Self {
        Self { temperature: 0.0, top_p: 1.0, rng: StdRng::seed_from_u64(0) }
    }

    /// Picks the next token from logits of shape `[vocab]`.
    pub fn sample(&mut self, logits: &Tensor) -> Result<u32> {
        // A NaN logit would pick an arbitrary token and go on as if it were text.
        crate::finite::check_tensor(logits, "the next-token logits")?;
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
