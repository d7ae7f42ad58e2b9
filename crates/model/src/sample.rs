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
        // In f64 from the largest logit down, so a tiny temperature gives one-hot (the greedy
        // choice) instead of inf − inf = NaN, and a huge one the uniform distribution.
        let l = logits.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
        let max = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = l.iter().map(|x| ((x - max) / self.temperature).exp()).collect();
        let total: f64 = e.iter().sum();
        let probs: Vec<f64> = e.iter().map(|x| x / total).collect();
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_unstable_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        // Smallest prefix of the sorted distribution whose mass reaches top_p.
        let mut mass = 0.0f64;
        let mut keep = 0;
        for &i in &order {
            mass += probs[i];
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extreme_temperatures_stay_distributions() {
        let logits = Tensor::new(&[1.0f32, 3.0, -2.0, 2.5], &candle_core::Device::Cpu).unwrap();
        // A tiny temperature is greedy (1/T overflows f32 and made inf − inf = NaN before).
        let mut s = Sampler::new(1e-30, 1.0, 0).unwrap();
        assert!((0..20).all(|_| s.sample(&logits).unwrap() == 1));
        // A huge one is uniform: every token comes up.
        let mut s = Sampler::new(1e30, 1.0, 0).unwrap();
        let mut seen = [false; 4];
        (0..200).for_each(|_| seen[s.sample(&logits).unwrap() as usize] = true);
        assert_eq!(seen, [true; 4]);
        let nan = Tensor::new(&[1.0f32, f32::NAN], &candle_core::Device::Cpu).unwrap();
        assert!(Sampler::greedy().sample(&nan).is_err());
    }
}
