//! Scorers: one number per channel of a transitional activation, and how a head's channels
//! combine. `transact` is the paper's; the others are the ablations its peers run.

mod flap;
mod magnitude;
mod random;
mod transact;
mod wanda_sp;

use anyhow::Result;
use candle_core::Tensor;

use crate::calibrate::activations::{ChannelStats, LayerStats};
use crate::model::weights::LayerWeights;

pub use flap::Flap;
pub use magnitude::Magnitude;
pub use random::Random;
pub use transact::TransAct;
pub use wanda_sp::WandaSp;

/// Which transitional activation: attention output before `o_proj`, or the SwiGLU product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    Attn,
    Mlp,
}

/// What a scorer may look at for one layer.
pub struct LayerInput<'a> {
    pub layer: usize,
    pub stats: &'a LayerStats,
    pub weights: &'a LayerWeights,
    /// Calibration tokens behind `stats`.
    pub tokens: u64,
}

pub trait Scorer {
    fn name(&self) -> &'static str;

    /// Whether `channels` reads calibration statistics (else pruning needs no calibration).
    fn needs_stats(&self) -> bool {
        true
    }

    /// One salience per channel at `site`; higher is more important.
    fn channels(&self, site: Site, input: &LayerInput) -> Result<Vec<f64>>;

    /// A head's score from its channels' scores (default: their sum).
    fn head(&self, channels: &[f64]) -> f64 {
        channels.iter().sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScorerKind {
    /// Channel L2 norm of the activation; head = mean + α·max over its channels (the paper).
    Transact,
    /// Norm of the weights attached to each channel (no calibration).
    Magnitude,
    /// Seeded uniform random scores.
    Random,
    /// |W_out| column sums × activation L2 norm (Wanda structured).
    WandaSp,
    /// Activation variance × squared W_out column norm (FLAP's fluctuation metric).
    Flap,
}

transact_model::impl_choice!(ScorerKind {
    Transact => "transact", "channel L2 norm of the activation; head = mean + α·max over its channels (the paper)";
    Magnitude => "magnitude", "norm of the weights attached to each channel (no calibration)";
    Random => "random", "seeded uniform random scores";
    WandaSp => "wanda-sp", "|W_out| column sums × activation L2 norm (Wanda structured)";
    Flap => "flap", "activation variance × squared W_out column norm (FLAP's fluctuation metric)";
});

pub fn build(kind: ScorerKind, alpha: Option<f64>, seed: u64) -> Box<dyn Scorer> {
    match kind {
        ScorerKind::Transact => Box::new(TransAct { alpha }),
        ScorerKind::Magnitude => Box::new(Magnitude),
        ScorerKind::Random => Box::new(Random { seed }),
        ScorerKind::WandaSp => Box::new(WandaSp),
        ScorerKind::Flap => Box::new(Flap),
    }
}

/// The output projection whose columns are the channels at `site`: `o_proj` or `down_proj`.
pub(crate) fn w_out(site: Site, w: &LayerWeights) -> &Tensor {
    match site {
        Site::Attn => &w.o_proj,
        Site::Mlp => &w.down_proj,
    }
}

/// Per-column sums of `f(W)` for `W` of shape `[out, in]`: one value per input channel.
pub(crate) fn column_sums(w: &Tensor, f: impl Fn(&Tensor) -> candle_core::Result<Tensor>) -> Result<Vec<f64>> {
    Ok(f(w)?.sum(0)?.to_dtype(candle_core::DType::F64)?.to_vec1()?)
}

pub(crate) fn stats_of<'a>(site: Site, input: &'a LayerInput) -> &'a ChannelStats {
    match site {
        Site::Attn => &input.stats.attn,
        Site::Mlp => &input.stats.mlp,
    }
}
