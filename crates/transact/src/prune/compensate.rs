//! `compensate ls`: after slicing, every layer's `o_proj` and `down_proj` get their kept
//! columns refit in closed form ([`super::ridge`]) so that the module's output on the
//! calibration tokens matches what the unpruned module gives on the same input.
//!
//! Layer by layer on the pruned model's own inputs (sequential): the calibration tokens' hidden
//! states pass the already compensated layers, so each refit also sees the drift of the layers
//! before it. Per layer, four passes of one residual block each: the unpruned attention, up to its
//! transitional activation, gives the attention's Gram matrix; the pruned, refit attention gives
//! the MLP's input, on which the unpruned MLP (up to its transitional activation) gives the MLP's
//! Gram matrix and the pruned, refit MLP the next layer's input (`bench/NOTES.md`).

use anyhow::Result;
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::choose::LayerKeep;
use super::ridge::{self, Gram};
use super::slice::o_columns;
use crate::calibrate::blocks::CalibData;
use crate::model::config::ModelConfig;
use crate::model::forward::{Block, Model};
use crate::model::weights::LayerWeights;
use crate::progress::Progress;

/// What happens to the kept weights after slicing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compensate {
    /// Nothing: the kept rows and columns as they were.
    #[default]
    None,
    /// Closed-form least-squares refit of `o_proj` and `down_proj` (sequential, ridge toward the
    /// sliced weights).
    Ls,
    /// `ls` where it applies and can help: the transitional axis, and a calibration of at least
    /// [`MIN_TOKENS_PER_INPUT`] tokens per refit input (fewer overfit: held-out perplexity of
    /// SmolLM2 at 50 % went 319 → 1986 with 512 tokens); `none` otherwise, with a note.
    Auto,
}

transact_model::impl_choice!(Compensate {
    None => "none", "keep the sliced weights as they are";
    Ls => "ls", "refit o_proj and down_proj by least squares so each module's output matches the unpruned one on the calibration tokens";
    Auto => "auto", "ls where it applies (transitional axis) and the calibration holds at least 2 tokens per refit input, none otherwise";
});

impl Compensate {
    /// Whether a run of `config` that prunes the transitional activations (or not) on `tokens`
    /// calibration tokens compensates.
    pub fn applies(self, config: &ModelConfig, transitional: bool, tokens: usize, progress: &dyn Progress) -> bool {
        match self {
            Compensate::None => false,
            Compensate::Ls => true,
            Compensate::Auto => {
                let needed = tokens_needed(config);
                let enough = tokens >= needed;
                if transitional && !enough {
                    progress.note(&format!(
                        "note: no compensation (`auto`): {tokens} calibration tokens, below the {needed} it needs not to overfit (raise `samples` or `seq_len`, or ask for `ls`)"
                    ));
                }
                transitional && enough
            }
        }
    }
}

/// Calibration tokens below which the refits of `config` overfit: [`MIN_TOKENS_PER_INPUT`] for
/// each input of the widest refit (the widest attention or MLP).
fn tokens_needed(config: &ModelConfig) -> usize {
    MIN_TOKENS_PER_INPUT * config.layers.iter().map(|s| s.mha_width().max(s.mlp_width)).max().unwrap_or(0)
}

/// Below this many calibration tokens per refit input the least squares overfit (measured on
/// SmolLM2 at 50 %: 512 tokens for 1536 MLP inputs raised held-out perplexity 52 → 60; 4096
/// cut it).
const MIN_TOKENS_PER_INPUT: usize = 2;

/// The kept rows `X_Sᵀ X` of the Gram matrix of `block`'s transitional activations `X` (`width`
/// wide) as the one-layer `model` computes them over hidden states `h` (`[n, t, hidden]`) in
/// batches: each batch's product in f32 by the GEMM, the sum in f64.
fn gram(model: &Model, block: Block, h: &Tensor, batch: usize, kept: &[usize], width: usize) -> Result<Gram> {
    let idx = Tensor::new(kept.iter().map(|&i| i as u32).collect::<Vec<_>>(), h.device())?;
    let mut gram = Gram::zeros(kept, width);
    let n = h.dim(0)?;
    for i in (0..n).step_by(batch) {
        let x = model.transitional(0, block, &h.narrow(0, i, batch.min(n - i))?)?;
        let x = x.to_dtype(DType::F32)?.contiguous()?.reshape(((), width))?;
        let p = x.index_select(&idx, 1)?.t()?.contiguous()?.matmul(&x)?.flatten_all()?.to_vec1::<f32>()?;
        gram.rows.iter_mut().zip(p).for_each(|(a, b)| *a += b as f64);
    }
    Ok(gram)
}

/// The outputs of `block` of the one-layer `model` over hidden states `h` in batches.
fn outputs(model: &Model, block: Block, h: &Tensor, batch: usize) -> Result<Tensor> {
    let n = h.dim(0)?;
    let outs = (0..n).step_by(batch).map(|i| model.forward_block(0, block, &h.narrow(0, i, batch.min(n - i))?)).collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&outs, 0)?)
}

/// `w` (`[out, n]`) refit to the kept input columns of `g`, the kept Gram rows of its inputs.
fn refit_weight(g: Gram, w: &Tensor) -> Result<Tensor> {
    let (out, n) = w.dims2()?;
    anyhow::ensure!(g.n == n, "compensate: activations are {} wide, the weight takes {n}", g.n);
    let data = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let refit = ridge::refit(&g, &data, out, ridge::DAMP)?;
    Ok(Tensor::from_vec(refit, (out, g.kept.len()), w.device())?.to_dtype(w.dtype())?)
}

/// `sliced` (what [`super::slice::slice`] made of `before` with `keeps`) with the kept columns
/// of every `o_proj` and `down_proj` refit on the calibration blocks of `data`.
pub fn compensate(before: &Model, sliced: &Model, keeps: &[LayerKeep], data: &CalibData, batch: usize, label: &str, progress: &dyn Progress) -> Result<Model> {
    let device = &before.device;
    let (n, len) = (data.blocks.len(), data.spec.seq_len);
    let batch = batch.max(1);
    let ids: Vec<u32> = data.blocks.iter().flatten().copied().collect();
    let embed = before.weights.embed.to_dtype(DType::F32)?;
    let mut h = embed.index_select(&Tensor::new(ids, device)?, 0)?.reshape((n, len, before.config.hidden_size))?;
    let needed = tokens_needed(&before.config);
    if n * len < needed {
        progress.note(&format!(
            "note: compensation fits up to {} inputs per output from {} calibration tokens; below {needed} it tends to overfit and can hurt (raise `samples` or `seq_len`)",
            needed / MIN_TOKENS_PER_INPUT,
            n * len
        ));
    }
    let mut weights = sliced.weights.clone();
    let layers = before.config.n_layers();
    anyhow::ensure!(keeps.len() == layers, "compensate: {} layer choices for {layers} layers", keeps.len());
    progress.start(label, layers as u64);
    for (l, keep) in keeps.iter().enumerate() {
        let whole = before.weights.layers[l].clone();
        let shape = before.config.layers[l];
        let mut layer = weights.layers[l].clone();

        // The attention's refit wants what the unpruned attention makes of this layer's input.
        let o_cols = o_columns(&shape, keep);
        let unpruned = Model::single_layer(&before.config, l, whole.clone())?;
        layer.o_proj = refit_weight(gram(&unpruned, Block::Attention, &h, batch, &o_cols, shape.mha_width())?, &whole.o_proj)?;

        // The MLP's wants what the unpruned MLP makes of what the pruned, refit attention leaves.
        let mlp_whole = LayerWeights {
            gate_proj: whole.gate_proj.clone(),
            up_proj: whole.up_proj.clone(),
            down_proj: whole.down_proj.clone(),
            ..layer.clone()
        };
        let mlp_whole = Model::single_layer(&sliced.config, l, mlp_whole)?;
        let mid = outputs(&mlp_whole, Block::Attention, &h, batch)?;
        layer.down_proj = refit_weight(gram(&mlp_whole, Block::Mlp, &mid, batch, &keep.mlp, shape.mlp_width)?, &whole.down_proj)?;

        if l + 1 < layers {
            h = outputs(&Model::single_layer(&sliced.config, l, layer.clone())?, Block::Mlp, &mid, batch)?;
        }
        weights.layers[l] = layer;
        progress.advance(1);
    }
    progress.finish();
    Ok(Model::new(sliced.config.clone(), weights))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::model::config::{LayerShape, RopeLayout};

    #[derive(Default)]
    struct Notes(Mutex<Vec<String>>);

    impl Progress for Notes {
        fn note(&self, message: &str) {
            self.0.lock().unwrap().push(message.to_string());
        }
    }

    #[test]
    fn auto_compensates_only_the_transitional_axis_with_enough_calibration() {
        let config = ModelConfig {
            name: "t".into(),
            hidden_size: 576,
            vocab_size: 64,
            layers: vec![LayerShape { n_heads: 9, n_kv_heads: 3, head_dim: 64, mlp_width: 1536 }; 2],
            rope_theta: 1e4,
            rope_layout: RopeLayout::Adjacent,
            rms_eps: 1e-5,
            tied_embeddings: true,
            max_position: 2048,
            rope_inv_freq: None,
        };
        let notes = Notes::default();
        // 2 tokens per input of the widest refit (1536 MLP channels).
        assert!(Compensate::Auto.applies(&config, true, 3072, &notes));
        assert!(notes.0.lock().unwrap().is_empty());
        assert!(!Compensate::Auto.applies(&config, true, 3071, &notes));
        assert!(notes.0.lock().unwrap().pop().is_some_and(|n| n.contains("3071 calibration tokens") && n.contains("3072")));
        // The hidden axis has no compensation: nothing to say.
        assert!(!Compensate::Auto.applies(&config, false, 1 << 20, &notes));
        assert!(notes.0.lock().unwrap().is_empty());
        // Explicit choices are kept.
        assert!(Compensate::Ls.applies(&config, true, 10, &notes));
        assert!(!Compensate::None.applies(&config, true, 1 << 20, &notes));
    }
}
