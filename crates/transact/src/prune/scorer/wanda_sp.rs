use anyhow::Result;

use super::{LayerInput, Scorer, Site, column_sums, stats_of, w_out};

/// Wanda-sp: Σ_i |W_out[i, j]| · ‖X_j‖₂, with X the input of `o_proj` / `down_proj`.
pub struct WandaSp;

impl Scorer for WandaSp {
    fn name(&self) -> &'static str {
        "wanda-sp"
    }

    fn channels(&self, site: Site, input: &LayerInput) -> Result<Vec<f64>> {
        let abs = column_sums(w_out(site, input.weights), |t| t.abs())?;
        Ok(abs.iter().zip(stats_of(site, input).l2()).map(|(a, x)| a * x).collect())
    }
}
