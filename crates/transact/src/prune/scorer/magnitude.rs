use anyhow::Result;

use super::{LayerInput, Scorer, Site, column_sums};

/// L2 norm of the weights that exist only for a channel: Q row + O column (attention), gate row +
/// up row + down column (MLP). K and V rows are shared by a GQA group, so they are left out.
pub struct Magnitude;

impl Scorer for Magnitude {
    fn name(&self) -> &'static str {
        "magnitude"
    }

    fn needs_stats(&self) -> bool {
        false
    }

    fn channels(&self, site: Site, input: &LayerInput) -> Result<Vec<f64>> {
        let w = input.weights;
        let (rows, cols): (Vec<&candle_core::Tensor>, &candle_core::Tensor) = match site {
            Site::Attn => (vec![&w.q_proj], &w.o_proj),
            Site::Mlp => (vec![&w.gate_proj, &w.up_proj], &w.down_proj),
        };
        let mut sq = column_sums(cols, |t| t.sqr())?;
        for r in rows {
            for (a, b) in sq.iter_mut().zip(column_sums(&r.t()?, |t| t.sqr())?) {
                *a += b;
            }
        }
        Ok(sq.into_iter().map(f64::sqrt).collect())
    }
}
