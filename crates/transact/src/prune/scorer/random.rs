use anyhow::Result;
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::{LayerInput, Scorer, Site};

/// Uniform scores from a generator seeded by (seed, layer, site): the floor any scorer must beat.
pub struct Random {
    pub seed: u64,
}

impl Scorer for Random {
    fn name(&self) -> &'static str {
        "random"
    }

    fn needs_stats(&self) -> bool {
        false
    }

    fn channels(&self, site: Site, input: &LayerInput) -> Result<Vec<f64>> {
        let n = match site {
            Site::Attn => input.weights.o_proj.dim(1)?,
            Site::Mlp => input.weights.down_proj.dim(1)?,
        };
        let stream = (input.layer as u64) << 1 | u64::from(site == Site::Mlp);
        let mut rng = StdRng::seed_from_u64(self.seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        Ok((0..n).map(|_| rng.random::<f64>()).collect())
    }
}
