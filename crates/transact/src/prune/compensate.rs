//! `compensate ls`: after slicing, every layer's `o_proj` and `down_proj` get their kept
//! columns refit in closed form ([`super::ridge`]) so that the module's output on the
//! calibration tokens matches what the unpruned module gives on the same input.
//!
//! Layer by layer on the pruned model's own inputs (sequential): the calibration tokens' hidden
//! states pass the already compensated layers, so each refit also sees the drift of the layers
//! before it. Per layer, three passes of one layer: the unpruned layer gives the attention's
//! Gram matrix; the layer with its attention pruned and refit but its MLP whole gives the MLP's
//! (its input is what the pruned attention leaves); the finished layer gives the next layer's
//! inputs.

use anyhow::Result;
use candle_core::{D, DType, Tensor};
use serde::{Deserialize, Serialize};

use super::choose::LayerKeep;
use super::ridge::{self, Gram};
use super::slice::o_columns;
use crate::calibrate::blocks::CalibData;
use crate::model::forward::{Model, Observer};
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
}

transact_model::impl_choice!(Compensate {
    None => "none", "keep the sliced weights as they are";
    Ls => "ls", "refit o_proj and down_proj by least squares so each module's output matches the unpruned one on the calibration tokens";
});

/// Below this many calibration tokens per refit input the least squares overfit (measured on
/// SmolLM2 at 50 %: 512 tokens for 1536 MLP inputs raised held-out perplexity 52 → 60; 4096
/// cut it).
const MIN_TOKENS_PER_INPUT: usize = 2;

/// Which transitional activation a pass collects.
#[derive(Clone, Copy, PartialEq)]
enum Site {
    Attn,
    Mlp,
}

/// The kept rows `X_Sᵀ X` of the Gram matrix of one site's activations, summed over batches
/// (each batch's product in f32 by the GEMM, the sum in f64).
struct GramObserver {
    site: Site,
    gram: Gram,
    kept: Tensor,
}

impl GramObserver {
    fn new(site: Site, kept: &[usize], n: usize, device: &candle_core::Device) -> candle_core::Result<Self> {
        let idx = Tensor::new(kept.iter().map(|&i| i as u32).collect::<Vec<_>>(), device)?;
        Ok(Self { site, gram: Gram::zeros(kept, n), kept: idx })
    }

    fn add(&mut self, y: &Tensor) -> candle_core::Result<()> {
        let d = y.dim(D::Minus1)?;
        let x = y.to_dtype(DType::F32)?.contiguous()?.reshape(((), d))?;
        let xs = x.index_select(&self.kept, 1)?;
        let p = xs.t()?.contiguous()?.matmul(&x)?.flatten_all()?.to_vec1::<f32>()?;
        self.gram.rows.iter_mut().zip(p).for_each(|(a, b)| *a += b as f64);
        Ok(())
    }
}

impl Observer for GramObserver {
    fn attn_inner(&mut self, _: usize, y: &Tensor) -> candle_core::Result<()> {
        if self.site == Site::Attn { self.add(y) } else { Ok(()) }
    }
    fn mlp_inner(&mut self, _: usize, h: &Tensor) -> candle_core::Result<()> {
        if self.site == Site::Mlp { self.add(h) } else { Ok(()) }
    }
}

/// Runs the one-layer `model` over hidden states `h` (`[n, t, hidden]`) in batches; with a
/// site, returns the kept rows of that site's Gram matrix instead of the outputs.
fn pass(model: &Model, h: &Tensor, batch: usize, site: Option<(Site, &[usize], usize)>) -> Result<(Option<Tensor>, Option<Gram>)> {
    let n = h.dim(0)?;
    let mut obs = site.map(|(site, kept, width)| GramObserver::new(site, kept, width, h.device())).transpose()?;
    let mut outs = Vec::new();
    for i in (0..n).step_by(batch) {
        let x = h.narrow(0, i, batch.min(n - i))?;
        let y = model.forward_layers(&x, obs.as_mut().map(|o| o as &mut dyn Observer))?;
        if obs.is_none() {
            outs.push(y);
        }
    }
    match obs {
        Some(o) => Ok((None, Some(o.gram))),
        None => Ok((Some(Tensor::cat(&outs, 0)?), None)),
    }
}

/// `w` (`[out, n]`) refit to the kept input columns of `g`, the kept Gram rows of its inputs.
fn refit_weight(g: Option<Gram>, w: &Tensor) -> Result<Tensor> {
    let (out, n) = w.dims2()?;
    let g = g.ok_or_else(|| anyhow::anyhow!("compensate: no calibration tokens reached the layer"))?;
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
    let widest = before.config.layers.iter().map(|s| s.mha_width().max(s.mlp_width)).max().unwrap_or(0);
    if n * len < MIN_TOKENS_PER_INPUT * widest {
        progress.note(&format!(
            "note: compensation fits up to {widest} inputs per output from {} calibration tokens; below {} it tends to overfit and can hurt (raise `samples` or `seq_len`)",
            n * len,
            MIN_TOKENS_PER_INPUT * widest
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

        let o_cols = o_columns(&shape, keep);
        let site = Some((Site::Attn, o_cols.as_slice(), shape.mha_width()));
        let (_, g) = pass(&Model::single_layer(&before.config, l, whole.clone())?, &h, batch, site)?;
        layer.o_proj = refit_weight(g, &whole.o_proj)?;

        let mlp_whole = LayerWeights {
            gate_proj: whole.gate_proj.clone(),
            up_proj: whole.up_proj.clone(),
            down_proj: whole.down_proj.clone(),
            ..layer.clone()
        };
        let site = Some((Site::Mlp, keep.mlp.as_slice(), shape.mlp_width));
        let (_, g) = pass(&Model::single_layer(&sliced.config, l, mlp_whole)?, &h, batch, site)?;
        layer.down_proj = refit_weight(g, &whole.down_proj)?;

        if l + 1 < layers {
            let (out, _) = pass(&Model::single_layer(&sliced.config, l, layer.clone())?, &h, batch, None)?;
            h = out.expect("a pass without a site returns its outputs");
        }
        weights.layers[l] = layer;
        progress.advance(1);
    }
    progress.finish();
    Ok(Model::new(sliced.config.clone(), weights))
}
