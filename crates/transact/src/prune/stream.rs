//! Pruning checkpoints larger than memory (`prune` with streaming).
//!
//! All calibration samples pass one decoder layer at a time: layer l's weights are read from the
//! memory-mapped safetensors, its statistics collected, its output hidden states kept for layer
//! l + 1, and the layer (and the mapping) dropped. Peak memory is one layer in f32 plus the
//! hidden states, not the model. Scoring layer l needs only layer l's statistics and weights, so
//! its heads and channels are chosen right there ([`score_and_choose`], as the in-memory path
//! does); a second pass writes the sliced tensors one at a time, straight from the source bytes.

use std::path::Path;

use anyhow::{Result, anyhow};
use candle_core::{Device, Tensor};
use safetensors::Dtype;

use super::choose::{LayerKeep, LayerScores, score_and_choose};
use super::plan::Widths;
use super::scorer::{self, LayerInput};
use super::shots::PruneOptions;
use crate::calibrate::activations::LayerStats;
use crate::calibrate::blocks::CalibData;
use crate::model::config::{LayerShape, ModelConfig};
use crate::model::forward::{Model, Observer};
use crate::model::io::safetensors::{self as st, LazyTensor, SafetensorsFiles, decode, encode, with_tensor};
use crate::model::weights::{LayerWeights, TensorRole};
use crate::progress::Progress;

/// Layer `l` as f32, through a mapping that is dropped on return so its pages leave this
/// process's resident set.
fn load_layer(src: &Path, cfg: &ModelConfig, l: usize, device: &Device) -> Result<LayerWeights> {
    let files = SafetensorsFiles::open_dir(src)?;
    LayerWeights::from_roles(l, |role| files.load_f32(&role.hf_name(), &role.shape(cfg), device))
}

/// Statistics of the single layer being streamed.
struct LayerObserver(LayerStats);

impl Observer for LayerObserver {
    fn attn_inner(&mut self, _: usize, y: &Tensor) -> candle_core::Result<()> {
        self.0.attn.add(y)
    }
    fn mlp_inner(&mut self, _: usize, h: &Tensor) -> candle_core::Result<()> {
        self.0.mlp.add(h)
    }
}

/// What the streaming pass decided.
pub struct Choice {
    pub keeps: Vec<LayerKeep>,
    pub scores: Vec<LayerScores>,
    pub tokens: u64,
}

/// Streams the calibration blocks through the checkpoint in `src` and chooses every layer's
/// kept heads and channels for `target`.
pub fn calibrate_and_choose(
    src: &Path,
    cfg: &ModelConfig,
    data: &CalibData,
    o: &PruneOptions,
    target: Widths,
    device: &Device,
    progress: &dyn Progress,
) -> Result<Choice> {
    let scorer = scorer::build(o.scorer, o.alpha, o.seed);
    let (n, len) = (data.blocks.len(), data.spec.seq_len);
    let tokens = (n * len) as u64;
    let mut h = {
        let files = SafetensorsFiles::open_dir(src)?;
        let embed = files.load_f32(&TensorRole::Embed.hf_name(), &TensorRole::Embed.shape(cfg), device)?;
        let ids: Vec<u32> = data.blocks.iter().flatten().copied().collect();
        embed.index_select(&Tensor::new(ids, device)?, 0)?.reshape((n, len, cfg.hidden_size))?
    };
    progress.start("stream layers", cfg.n_layers() as u64);
    let (mut keeps, mut scores) = (Vec::new(), Vec::new());
    for (l, shape) in cfg.layers.iter().enumerate() {
        let model = Model::single_layer(cfg, l, load_layer(src, cfg, l, device)?)?;
        let mut obs = LayerObserver(LayerStats::zeros(shape));
        let batch = o.calib_batch.max(1);
        let mut outs = Vec::with_capacity(n.div_ceil(batch));
        for i in (0..n).step_by(batch) {
            outs.push(model.forward_layers(&h.narrow(0, i, batch.min(n - i))?, Some(&mut obs))?);
        }
        h = Tensor::cat(&outs, 0)?;
        let input = LayerInput { layer: l, stats: &obs.0, weights: &model.weights.layers[0], tokens };
        let (k, s) = score_and_choose(scorer.as_ref(), &input, shape, cfg.rope_layout, target, o.units())?;
        keeps.push(k);
        scores.push(s);
        progress.advance(1);
    }
    progress.finish();
    Ok(Choice { keeps, scores, tokens })
}

/// The pruned configuration (whole heads only: streaming does not do head-dim pruning).
pub fn pruned_config(cfg: &ModelConfig, keeps: &[LayerKeep]) -> ModelConfig {
    let mut c = cfg.clone();
    for (s, k) in c.layers.iter_mut().zip(keeps) {
        *s = LayerShape { n_heads: k.q_heads.len(), n_kv_heads: k.kv_heads.len(), head_dim: s.head_dim, mlp_width: k.mlp.len() };
    }
    c
}

/// The kept `rows` (all when `None`) and, of each, the kept `cols` (all when `None`) of a
/// row-major tensor's bytes, `es` bytes per element, converted to `dtype`.
fn sliced_bytes(t: &safetensors::tensor::TensorView, rows: Option<&[usize]>, cols: Option<&[usize]>, dtype: Dtype) -> Vec<u8> {
    let es = t.dtype().bitsize() / 8;
    let width = t.shape().get(1).copied().unwrap_or(t.shape()[0]);
    let all_rows = if t.shape().len() == 2 { t.shape()[0] } else { 1 };
    let bytes = t.data();
    let mut out = Vec::new();
    let mut take_row = |i: usize| {
        let row = &bytes[i * width * es..(i + 1) * width * es];
        match cols {
            None => out.extend_from_slice(row),
            Some(c) => c.iter().for_each(|&j| out.extend_from_slice(&row[j * es..(j + 1) * es])),
        }
    };
    match rows {
        Some(r) => r.iter().for_each(|&i| take_row(i)),
        None => (0..all_rows).for_each(take_row),
    }
    if t.dtype() == dtype { out } else { encode(&decode(&out, t.dtype()), dtype) }
}

/// Writes the sliced checkpoint into `dir` (`model.safetensors`, or 5 GB shards with an index),
/// one tensor in memory at a time; returns the files written.
pub fn write_sliced(src: &Path, cfg: &ModelConfig, keeps: &[LayerKeep], dtype: Dtype, dir: &Path, progress: &dyn Progress) -> Result<Vec<String>> {
    use TensorRole::*;
    let files = SafetensorsFiles::open_dir(src)?;
    let new_cfg = pruned_config(cfg, keeps);
    let roles = TensorRole::all(cfg);
    let mut tensors = Vec::with_capacity(roles.len());
    for role in roles {
        let name = role.hf_name();
        let file = files.path_of(&name).ok_or_else(|| anyhow!("{}: missing tensor `{name}`", src.display()))?.to_path_buf();
        let (rows, cols) = match role {
            Q(l) => (Some(cfg.layers[l].head_rows(&keeps[l].q_heads)), None),
            K(l) | V(l) => (Some(cfg.layers[l].head_rows(&keeps[l].kv_heads)), None),
            O(l) => (None, Some(cfg.layers[l].head_rows(&keeps[l].q_heads))),
            Gate(l) | Up(l) => (Some(keeps[l].mlp.clone()), None),
            Down(l) => (None, Some(keeps[l].mlp.clone())),
            _ => (None, None),
        };
        let source = name.clone();
        let bytes = move || {
            let b = with_tensor(&file, &source, |t| sliced_bytes(t, rows.as_deref(), cols.as_deref(), dtype));
            progress.advance(1);
            b
        };
        tensors.push((name, LazyTensor::new(dtype, role.shape(&new_cfg), bytes)));
    }
    drop(files);
    progress.start("write tensors", tensors.len() as u64);
    let files = st::write_model(dir, tensors, st::MAX_SHARD_BYTES)?;
    progress.finish();
    Ok(files)
}
