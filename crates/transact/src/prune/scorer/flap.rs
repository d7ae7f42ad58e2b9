use anyhow::Result;

use super::{LayerInput, Scorer, Site, column_sums, stats_of, w_out};

/// FLAP's fluctuation metric: sample variance of channel j over the calibration tokens ×
/// ‖W_out[:, j]‖², i.e. how much the output moves when the channel is replaced by its mean.
pub struct Flap;

impl Scorer for Flap {
    fn name(&self) -> &'static str {
        "flap"
    }

    fn channels(&self, site: Site, input: &LayerInput) -> Result<Vec<f64>> {
        let sq = column_sums(w_out(site, input.weights), |t| t.sqr())?;
        let var = stats_of(site, input).variance(input.tokens);
        Ok(sq.iter().zip(var).map(|(w, v)| w * v).collect())
    }
}
