use anyhow::Result;

use super::{LayerInput, Scorer, Site, stats_of};

/// The paper's salience: s_j = ‖A[:, :, j]‖₂; a head scores mean(s) + α·max(s), α = 10/d_h unless set.
pub struct TransAct {
    pub alpha: Option<f64>,
}

impl Scorer for TransAct {
    fn name(&self) -> &'static str {
        "transact"
    }

    fn channels(&self, site: Site, input: &LayerInput) -> Result<Vec<f64>> {
        Ok(stats_of(site, input).l2())
    }

    fn head(&self, ch: &[f64]) -> f64 {
        let alpha = self.alpha.unwrap_or(10.0 / ch.len() as f64);
        let mean = ch.iter().sum::<f64>() / ch.len() as f64;
        let max = ch.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        mean + alpha * max
    }
}
