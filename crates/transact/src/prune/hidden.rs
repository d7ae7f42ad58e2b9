//! Hidden-size pruning: the inter-module ablation the paper argues against. It removes channels
//! of the residual stream itself (as Minitron prunes its embedding axis) instead of the
//! transitional activations inside modules.
//!
//! A channel's salience is the L2 norm, over the calibration tokens and over every RMSNorm's
//! output (each layer's two and the final one), of the normalised hidden state in that channel.
//! Slicing keeps those channels in the embedding and the LM head, every norm weight, the input
//! columns of q/k/v/gate/up and the output rows of o/down. The result is a stock LLaMA with a
//! smaller `hidden_size`.
//!
//! RMSNorm divides by the root mean square over the hidden size, so keeping `h'` of `h` channels
//! changes it even when the removed channels were zero; the kept norm weights are multiplied by
//! `√(h/h')`, which makes the sliced model compute exactly what the dense model computes with the
//! removed channels zeroed everywhere they enter the residual stream ([`mask`]; up to ε, which
//! the norm adds inside the root).

use anyhow::{Result, bail};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::SettingError;
use crate::calibrate::activations::ChannelStats;
use crate::calibrate::blocks::CalibData;
use crate::model::config::ModelConfig;
use crate::model::forward::{Logits, Model, Norm, Observer};
use crate::model::weights::{LayerWeights, Weights};
use crate::progress::Progress;

/// What pruning removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Axis {
    /// TransAct: heads and MLP channels inside modules; the residual stream is kept.
    #[default]
    Transitional,
    /// Channels of the residual stream (hidden size), every module keeping its inner widths.
    Hidden,
}

transact_model::impl_choice!(Axis {
    Transitional => "transitional", "heads and MLP channels inside modules (TransAct; hidden size kept)";
    Hidden => "hidden", "channels of the residual stream: embedding, norms and every projection's hidden side (the ablation)";
});

/// Kept hidden widths are a multiple of this (kernel- and quantisation-friendly).
pub const HIDDEN_MULTIPLE: usize = 8;

/// The hidden width that removes the fraction `ratio` of non-embedding parameters: every
/// non-embedding tensor has exactly one hidden-sized dimension, so they scale with it.
pub fn hidden_width(cfg: &ModelConfig, ratio: f64) -> Result<usize> {
    if !(ratio > 0.0 && ratio < 1.0) {
        return Err(SettingError::new("ratio", format!("must be strictly between 0 and 1 (fraction of non-embedding parameters to remove), got {ratio}")).into());
    }
    let h = ((cfg.hidden_size as f64 * (1.0 - ratio)) / HIDDEN_MULTIPLE as f64).round() as usize * HIDDEN_MULTIPLE;
    if h == 0 || h >= cfg.hidden_size {
        return Err(SettingError::new("ratio", format!("{ratio} leaves a hidden size of {h} of {}; pick another ratio", cfg.hidden_size)).into());
    }
    Ok(h)
}

struct HiddenObserver(ChannelStats);

impl Observer for HiddenObserver {
    fn attn_inner(&mut self, _: usize, _: &Tensor) -> candle_core::Result<()> {
        Ok(())
    }
    fn mlp_inner(&mut self, _: usize, _: &Tensor) -> candle_core::Result<()> {
        Ok(())
    }
    fn normed(&mut self, _: usize, _: Norm, x: &Tensor) -> candle_core::Result<()> {
        self.0.add(x)
    }
}

/// Per-channel sums of the normalised hidden states over all norms and calibration tokens.
pub fn collect(model: &Model, data: &CalibData, batch: usize, label: &str, progress: &dyn Progress) -> Result<ChannelStats> {
    let mut obs = HiddenObserver(ChannelStats::zeros(model.config.hidden_size));
    progress.start(label, data.blocks.len() as u64);
    for chunk in data.blocks.chunks(batch.max(1)) {
        let flat: Vec<u32> = chunk.iter().flatten().copied().collect();
        let x = Tensor::from_vec(flat, (chunk.len(), data.spec.seq_len), &model.device)?;
        model.forward_observed(&x, None, Logits::None, Some(&mut obs))?;
        progress.advance(chunk.len() as u64);
    }
    progress.finish();
    Ok(obs.0)
}

/// The `width` channels of highest salience, ascending (ties: the lower index).
pub fn choose(stats: &ChannelStats, width: usize) -> Result<Vec<usize>> {
    let score = stats.l2();
    if score.iter().any(|s| !s.is_finite()) {
        bail!("hidden-state statistics hold NaN or infinite values: the model's activations overflow");
    }
    let mut order: Vec<usize> = (0..score.len()).collect();
    order.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
    let mut keep = order[..width.min(order.len())].to_vec();
    keep.sort_unstable();
    Ok(keep)
}

fn index(keep: &[usize], like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::new(keep.iter().map(|&i| i as u32).collect::<Vec<u32>>(), like.device())?)
}

/// The model with only the `keep` channels of its residual stream.
pub fn slice(model: &Model, keep: &[usize]) -> Result<Model> {
    let (h, kept) = (model.config.hidden_size, keep.len());
    let w = &model.weights;
    let k = index(keep, &w.embed)?;
    let norm_scale = (h as f64 / kept as f64).sqrt();
    let norm = |g: &Tensor| -> Result<Tensor> { Ok((g.index_select(&k, 0)? * norm_scale)?) };
    let cols = |t: &Tensor| -> Result<Tensor> { Ok(t.index_select(&k, 1)?.contiguous()?) };
    let rows = |t: &Tensor| -> Result<Tensor> { Ok(t.index_select(&k, 0)?) };
    let layers = w
        .layers
        .iter()
        .map(|l| -> Result<LayerWeights> {
            Ok(LayerWeights {
                attn_norm: norm(&l.attn_norm)?,
                q_proj: cols(&l.q_proj)?,
                k_proj: cols(&l.k_proj)?,
                v_proj: cols(&l.v_proj)?,
                o_proj: rows(&l.o_proj)?,
                mlp_norm: norm(&l.mlp_norm)?,
                gate_proj: cols(&l.gate_proj)?,
                up_proj: cols(&l.up_proj)?,
                down_proj: rows(&l.down_proj)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let weights = Weights {
        embed: cols(&w.embed)?,
        layers,
        final_norm: norm(&w.final_norm)?,
        lm_head: w.lm_head.as_ref().map(cols).transpose()?,
    };
    let mut config = model.config.clone();
    config.hidden_size = kept;
    config.validate().map_err(|e| anyhow::anyhow!("hidden-pruned model is inconsistent: {e}"))?;
    Ok(Model::new(config, weights))
}

/// The dense model with the removed channels zeroed wherever they enter the residual stream
/// (embedding columns, o/down rows), so the stream carries zeros there: what [`slice`] computes.
pub fn mask(model: &Model, keep: &[usize]) -> Result<Model> {
    let h = model.config.hidden_size;
    let mut m = vec![0f32; h];
    keep.iter().for_each(|&i| m[i] = 1.0);
    let w = &model.weights;
    let col = Tensor::from_vec(m.clone(), (1, h), w.embed.device())?.to_dtype(DType::F32)?;
    let row = col.t()?;
    let mut weights = w.clone();
    weights.embed = w.embed.broadcast_mul(&col)?;
    for l in &mut weights.layers {
        l.o_proj = l.o_proj.broadcast_mul(&row)?;
        l.down_proj = l.down_proj.broadcast_mul(&row)?;
    }
    Ok(Model::new(model.config.clone(), weights))
}
