//! Pruning checkpoints larger than memory (`transact prune --stream`).
//!
//! All calibration samples pass one decoder layer at a time: layer l's weights are read from the
//! memory-mapped safetensors, its statistics collected, its output hidden states kept for layer
//! l + 1, and the layer (and the mapping) dropped. Peak memory is one layer in f32 plus the
//! hidden states, not the model. Scoring layer l needs only layer l's statistics and weights, so
//! its heads and channels are chosen right there; a second pass writes the sliced tensors one
//! at a time, straight from the source bytes.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, anyhow, bail};
use candle_core::{DType, Device, Tensor};
use safetensors::Dtype;

use super::pipeline::{LayerScores, PruneOptions, summary};
use super::plan::{LayerKeep, Widths, choose, head_scores};
use super::scorer::{self, LayerInput, Site};
use crate::calib::data::CalibData;
use crate::calib::stats::{ChannelStats, LayerStats};
use crate::eval::metrics::progress_bar;
use crate::io::safetensors::{SafetensorsFiles, decode, encode};
use crate::model::config::{LayerShape, ModelConfig};
use crate::model::forward::{Model, Observer};
use crate::model::weights::{LayerWeights, TensorRole, Weights};

/// Row indices of the given heads of dimension `d`.
fn head_rows(heads: &[usize], d: usize) -> Vec<usize> {
    heads.iter().flat_map(|h| h * d..(h + 1) * d).collect()
}

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
    let pb = progress_bar(cfg.n_layers(), "stream layers");
    let (mut keeps, mut scores) = (Vec::new(), Vec::new());
    for (l, &shape) in cfg.layers.iter().enumerate() {
        let mut one = cfg.clone();
        one.layers = vec![shape];
        one.rope_inv_freq = None;
        let weights = Weights {
            // The one-layer model runs on hidden states: no embedding lookup, no final norm.
            embed: Tensor::zeros((1, cfg.hidden_size), DType::F32, device)?,
            layers: vec![load_layer(src, cfg, l, device)?],
            final_norm: Tensor::ones(cfg.hidden_size, DType::F32, device)?,
            lm_head: None,
        };
        let model = Model::new(one, weights);
        let mut obs = LayerObserver(LayerStats {
            attn: ChannelStats::zeros(shape.mha_width()),
            mlp: ChannelStats::zeros(shape.mlp_width),
        });
        let batch = o.calib_batch.max(1);
        let mut outs = Vec::with_capacity(n.div_ceil(batch));
        for i in (0..n).step_by(batch) {
            outs.push(model.forward_layers(&h.narrow(0, i, batch.min(n - i))?, Some(&mut obs))?);
        }
        h = Tensor::cat(&outs, 0)?;
        let input = LayerInput { layer: l, stats: &obs.0, weights: &model.weights.layers[0], tokens };
        let attn = scorer.channels(Site::Attn, &input)?;
        let mlp = scorer.channels(Site::Mlp, &input)?;
        let k = choose(&shape, cfg.rope_layout, &attn, &mlp, scorer.as_ref(), target, o.units());
        scores.push(LayerScores { mlp: summary(&mlp, &k.mlp), heads: head_scores(&shape, &attn, scorer.as_ref()) });
        keeps.push(k);
        pb.inc(1);
    }
    pb.finish_and_clear();
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

/// One output tensor: the kept rows and/or columns of a source tensor, read and converted when
/// the writer asks for its bytes. A read error is kept and reported after writing (the writer's
/// `View` cannot fail), and the output is then discarded.
struct SlicedView {
    file: PathBuf,
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    rows: Option<Vec<usize>>,
    cols: Option<Vec<usize>>,
    error: Mutex<Option<String>>,
}

fn dtype_size(d: Dtype) -> usize {
    d.bitsize() / 8
}

impl SlicedView {
    fn read(&self) -> Result<Vec<u8>> {
        let f = std::fs::File::open(&self.file).with_context(|| format!("{}: cannot open", self.file.display()))?;
        // SAFETY: read-only mapping of a file we do not modify; dropped before returning.
        let map = unsafe { memmap2::Mmap::map(&f)? };
        let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| anyhow!("{}: {e}", self.file.display()))?;
        let t = st.tensor(&self.name).map_err(|e| anyhow!("{}: `{}`: {e}", self.file.display(), self.name))?;
        let es = dtype_size(t.dtype());
        let cols = t.shape().get(1).copied().unwrap_or(t.shape()[0]);
        let rows_all = if t.shape().len() == 2 { t.shape()[0] } else { 1 };
        let bytes = t.data();
        let mut out = Vec::with_capacity(self.shape.iter().product::<usize>() * es);
        let rows: Box<dyn Iterator<Item = usize>> = match &self.rows {
            Some(r) => Box::new(r.iter().copied()),
            None => Box::new(0..rows_all),
        };
        for i in rows {
            let row = &bytes[i * cols * es..(i + 1) * cols * es];
            match &self.cols {
                None => out.extend_from_slice(row),
                Some(c) => c.iter().for_each(|&j| out.extend_from_slice(&row[j * es..(j + 1) * es])),
            }
        }
        Ok(if t.dtype() == self.dtype { out } else { encode(&decode(&out, t.dtype()), self.dtype) })
    }
}

impl safetensors::View for SlicedView {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match self.read() {
            Ok(b) => Cow::Owned(b),
            Err(e) => {
                *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{e:#}"));
                Cow::Owned(vec![0; self.data_len()])
            }
        }
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * dtype_size(self.dtype)
    }
}

/// Writes the sliced checkpoint as `model.safetensors` in `dir`, one tensor in memory at a time.
pub fn write_sliced(src: &Path, cfg: &ModelConfig, keeps: &[LayerKeep], dtype: Dtype, dir: &Path) -> Result<()> {
    use TensorRole::*;
    let files = SafetensorsFiles::open_dir(src)?;
    let new_cfg = pruned_config(cfg, keeps);
    let mut views = Vec::new();
    for role in TensorRole::all(cfg) {
        let name = role.hf_name();
        let file = files.file_of(&name).ok_or_else(|| anyhow!("{}: missing tensor `{name}`", src.display()))?.to_path_buf();
        let (rows, cols) = match role {
            Q(l) => (Some(head_rows(&keeps[l].q_heads, cfg.layers[l].head_dim)), None),
            K(l) | V(l) => (Some(head_rows(&keeps[l].kv_heads, cfg.layers[l].head_dim)), None),
            O(l) => (None, Some(head_rows(&keeps[l].q_heads, cfg.layers[l].head_dim))),
            Gate(l) | Up(l) => (Some(keeps[l].mlp.clone()), None),
            Down(l) => (None, Some(keeps[l].mlp.clone())),
            _ => (None, None),
        };
        let shape = role.shape(&new_cfg);
        views.push((name.clone(), SlicedView { file, name, dtype, shape, rows, cols, error: Mutex::new(None) }));
    }
    drop(files);
    let path = dir.join("model.safetensors");
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let pb = progress_bar(views.len(), "write tensors");
    let views: Vec<_> = views.into_iter().map(|(n, v)| (n, Progress(v, &pb))).collect();
    safetensors::serialize_to_file(views.iter().map(|(n, v)| (n.as_str(), v)), Some(meta), &path)
        .map_err(|e| anyhow!("{}: cannot write safetensors: {e}", path.display()))?;
    pb.finish_and_clear();
    for (name, v) in &views {
        if let Some(e) = v.0.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            bail!("reading `{name}` for the output failed: {e}");
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// A view that ticks the progress bar when its bytes are taken.
struct Progress<'a>(SlicedView, &'a indicatif::ProgressBar);

impl safetensors::View for &Progress<'_> {
    fn dtype(&self) -> Dtype {
        self.0.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        self.1.inc(1);
        self.0.data()
    }
    fn data_len(&self) -> usize {
        self.0.data_len()
    }
}
