//! Per-channel statistics of the transitional activations (the attention output before
//! `o_proj`, the SwiGLU product before `down_proj`), accumulated in f64 over the calibration
//! tokens and saved as safetensors, so one calibration serves many pruning targets.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use candle_core::{DType, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::blocks::CalibData;
use crate::model::LayerShape;
use crate::model::forward::{Logits, Model, Observer};
use crate::model::host::with_cpu_f32;
use crate::model::io::safetensors::{self, LazyTensor};
use crate::progress::Progress;

/// Sums over all calibration tokens, one entry per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelStats {
    pub sum_sq: Vec<f64>,
    pub sum: Vec<f64>,
    pub sum_abs: Vec<f64>,
}

impl ChannelStats {
    pub fn zeros(n: usize) -> Self {
        Self { sum_sq: vec![0.0; n], sum: vec![0.0; n], sum_abs: vec![0.0; n] }
    }

    pub fn width(&self) -> usize {
        self.sum_sq.len()
    }

    /// ‖a_j‖₂ over all tokens: the TransAct salience.
    pub fn l2(&self) -> Vec<f64> {
        self.sum_sq.iter().map(|s| s.sqrt()).collect()
    }

    /// Sample variance over `n` tokens: FLAP's fluctuation.
    pub fn variance(&self, n: u64) -> Vec<f64> {
        let n = n as f64;
        self.sum_sq.iter().zip(&self.sum).map(|(q, s)| ((q - s * s / n) / (n - 1.0).max(1.0)).max(0.0)).collect()
    }

    pub(crate) fn add(&mut self, x: &Tensor) -> candle_core::Result<()> {
        let d = x.dim(candle_core::D::Minus1)?;
        // On the CPU, one pass over the f32 data on rayon's threads. candle's path below (an f64
        // copy, then three reductions over the rows) ran on one thread while the other idled.
        if with_cpu_f32(&[x], |xs| self.add_rows(xs[0], d))?.is_some() {
            return Ok(());
        }
        let x = x.reshape(((), d))?.to_dtype(DType::F64)?;
        for (acc, v) in [
            (&mut self.sum_sq, x.sqr()?.sum(0)?),
            (&mut self.sum, x.sum(0)?),
            (&mut self.sum_abs, x.abs()?.sum(0)?),
        ] {
            for (a, b) in acc.iter_mut().zip(v.to_vec1::<f64>()?) {
                *a += b;
            }
        }
        Ok(())
    }

    /// [`ChannelStats::add`] of row-major `[tokens, d]` data. Rows are summed in fixed blocks
    /// whose sums are added in order, so the result does not depend on the thread count.
    fn add_rows(&mut self, x: &[f32], d: usize) {
        const ROWS: usize = 64;
        let parts: Vec<[Vec<f64>; 3]> = x
            .par_chunks(ROWS * d)
            .map(|rows| {
                let [mut sq, mut s, mut a] = [vec![0f64; d], vec![0f64; d], vec![0f64; d]];
                for row in rows.chunks_exact(d) {
                    for (((sq, s), a), &v) in sq.iter_mut().zip(&mut s).zip(&mut a).zip(row) {
                        let v = v as f64;
                        *sq += v * v;
                        *s += v;
                        *a += v.abs();
                    }
                }
                [sq, s, a]
            })
            .collect();
        for part in parts {
            for (acc, p) in [&mut self.sum_sq, &mut self.sum, &mut self.sum_abs].into_iter().zip(part) {
                acc.iter_mut().zip(p).for_each(|(acc, p)| *acc += p);
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LayerStats {
    pub attn: ChannelStats,
    pub mlp: ChannelStats,
}

impl LayerStats {
    /// No tokens seen yet, for a layer of `shape`.
    pub fn zeros(shape: &LayerShape) -> Self {
        Self { attn: ChannelStats::zeros(shape.mha_width()), mlp: ChannelStats::zeros(shape.mlp_width) }
    }
}

/// Where the statistics came from; saved with them and checked before reuse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsMeta {
    pub model_sha256: String,
    pub data_sha256: String,
    pub source: String,
    pub samples: usize,
    pub seq_len: usize,
    pub seed: u64,
    pub tokens: u64,
}

impl StatsMeta {
    /// `tokens` of the blocks of `data` seen by the model whose file hashes to `model_sha256`.
    pub fn of(data: &CalibData, model_sha256: &str, tokens: u64) -> Self {
        Self {
            model_sha256: model_sha256.to_string(),
            data_sha256: data.data_sha256.clone(),
            source: data.spec.source.clone(),
            samples: data.spec.samples,
            seq_len: data.spec.seq_len,
            seed: data.spec.seed,
            tokens,
        }
    }
}

/// Every layer's statistics and where they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivationStats {
    pub layers: Vec<LayerStats>,
    pub meta: StatsMeta,
}

struct Collector {
    layers: Vec<LayerStats>,
}

impl Observer for Collector {
    fn attn_inner(&mut self, layer: usize, y: &Tensor) -> candle_core::Result<()> {
        self.layers[layer].attn.add(y)
    }
    fn mlp_inner(&mut self, layer: usize, h: &Tensor) -> candle_core::Result<()> {
        self.layers[layer].mlp.add(h)
    }
}

/// Runs the calibration blocks through `model` in batches and sums the statistics.
pub fn collect(model: &Model, data: &CalibData, model_sha256: &str, batch: usize, label: &str, progress: &dyn Progress) -> Result<ActivationStats> {
    let mut c = Collector { layers: model.config.layers.iter().map(LayerStats::zeros).collect() };
    progress.start(label, data.blocks.len() as u64);
    let mut tokens = 0u64;
    for chunk in data.blocks.chunks(batch.max(1)) {
        let flat: Vec<u32> = chunk.iter().flatten().copied().collect();
        let x = Tensor::from_vec(flat, (chunk.len(), data.spec.seq_len), &model.device)?;
        model.forward_observed(&x, None, Logits::None, Some(&mut c))?;
        tokens += (chunk.len() * data.spec.seq_len) as u64;
        progress.advance(chunk.len() as u64);
    }
    progress.finish();
    Ok(ActivationStats { layers: c.layers, meta: StatsMeta::of(data, model_sha256, tokens) })
}

const FIELDS: [&str; 3] = ["sum_sq", "sum", "sum_abs"];

fn fields(c: &ChannelStats) -> [&Vec<f64>; 3] {
    [&c.sum_sq, &c.sum, &c.sum_abs]
}

impl ActivationStats {
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = Vec::new();
        for (l, ls) in self.layers.iter().enumerate() {
            for (site, c) in [("attn", &ls.attn), ("mlp", &ls.mlp)] {
                for (name, v) in FIELDS.iter().zip(fields(c)) {
                    let bytes = move || Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect());
                    tensors.push((format!("layers.{l}.{site}.{name}"), LazyTensor::new(::safetensors::Dtype::F64, vec![v.len()], bytes)));
                }
            }
        }
        let meta = HashMap::from([
            ("format".to_string(), "transact-stats-v1".to_string()),
            ("meta".to_string(), serde_json::to_string(&self.meta)?),
        ]);
        safetensors::write(path, tensors, Some(meta)).with_context(|| format!("{}: cannot write statistics", path.display()))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let p = path.display();
        let bytes = std::fs::read(path).with_context(|| format!("{p}: cannot read"))?;
        let st = ::safetensors::SafeTensors::deserialize(&bytes).map_err(|e| anyhow!("{p}: not a statistics file: {e}"))?;
        let (_, md) = ::safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| anyhow!("{p}: {e}"))?;
        let md = md.metadata().clone().unwrap_or_default();
        if md.get("format").map(String::as_str) != Some("transact-stats-v1") {
            bail!("{p}: not a transact statistics file (write one with `transact calibrate`)");
        }
        let meta: StatsMeta = serde_json::from_str(md.get("meta").map_or("", String::as_str))
            .map_err(|e| anyhow!("{p}: bad metadata: {e}"))?;
        if meta.tokens == 0 {
            bail!("{p}: the statistics cover 0 tokens");
        }
        let read = |name: String| -> Result<Vec<f64>> {
            let t = st.tensor(&name).map_err(|_| anyhow!("{p}: missing tensor `{name}`"))?;
            if t.dtype() != ::safetensors::Dtype::F64 || t.shape().len() != 1 {
                bail!("{p}: tensor `{name}` is not a vector of f64 (dtype {:?}, shape {:?})", t.dtype(), t.shape());
            }
            let v: Vec<f64> = t.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
            // Sums of squares and of absolute values are never negative; no sum is NaN or infinite.
            let signed = name.ends_with(".sum");
            if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| !x.is_finite() || (!signed && **x < 0.0)) {
                bail!("{p}: tensor `{name}` holds {x} at channel {i}; statistics are finite{} sums", if signed { "" } else { ", non-negative" });
            }
            Ok(v)
        };
        let n_layers = st.names().iter().filter(|n| n.ends_with(".attn.sum_sq")).count();
        let mut layers = Vec::with_capacity(n_layers);
        for l in 0..n_layers {
            let site = |s: &str| -> Result<ChannelStats> {
                let c = ChannelStats {
                    sum_sq: read(format!("layers.{l}.{s}.sum_sq"))?,
                    sum: read(format!("layers.{l}.{s}.sum"))?,
                    sum_abs: read(format!("layers.{l}.{s}.sum_abs"))?,
                };
                if c.sum.len() != c.sum_sq.len() || c.sum_abs.len() != c.sum_sq.len() {
                    bail!("{p}: layer {l} {s}: the three sums have different widths");
                }
                Ok(c)
            };
            layers.push(LayerStats { attn: site("attn")?, mlp: site("mlp")? });
        }
        Ok(Self { layers, meta })
    }

    /// Fails unless these statistics describe `model` (same file hash and widths).
    pub fn check_matches(&self, model: &Model, model_sha256: &str, path: &Path) -> Result<()> {
        if self.meta.model_sha256 != model_sha256 {
            bail!(
                "{}: statistics were collected on another model (sha256 {}…, this model {}…); run `transact calibrate` on it",
                path.display(),
                self.meta.model_sha256.chars().take(12).collect::<String>(),
                model_sha256.chars().take(12).collect::<String>()
            );
        }
        let widths_ok = self.layers.len() == model.config.n_layers()
            && self.layers.iter().zip(&model.config.layers).all(|(s, l)| s.attn.width() == l.mha_width() && s.mlp.width() == l.mlp_width);
        if !widths_ok {
            bail!("{}: statistics do not match the model's layer widths", path.display());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU pass and candle's path (taken for a non-contiguous tensor) agree with plain f64
    /// sums, over more rows than one block and a width that fills no vector evenly.
    #[test]
    fn both_paths_sum_every_channel() {
        let (t, d) = (200, 37);
        let x: Vec<f32> = (0..t * d).map(|i| ((i * 7919) % 1009) as f32 / 100.0 - 5.0).collect();
        let want = |f: fn(f64) -> f64| -> Vec<f64> { (0..d).map(|j| (0..t).map(|r| f(x[r * d + j] as f64)).sum()).collect() };
        let contiguous = Tensor::from_vec(x.clone(), (2, t / 2, d), &candle_core::Device::Cpu).unwrap();
        let transposed: Vec<f32> = (0..d * t).map(|i| x[(i % t) * d + i / t]).collect();
        let strided = Tensor::from_vec(transposed, (d, t), &candle_core::Device::Cpu).unwrap().t().unwrap();
        assert!(!strided.is_contiguous());
        for input in [contiguous, strided] {
            let mut s = ChannelStats::zeros(d);
            s.add(&input).unwrap();
            s.add(&input).unwrap();
            for (got, f) in [(&s.sum_sq, (|v| v * v) as fn(f64) -> f64), (&s.sum, |v| v), (&s.sum_abs, f64::abs)] {
                for (g, w) in got.iter().zip(want(f)) {
                    assert!((g - 2.0 * w).abs() <= 1e-9 * w.abs().max(1.0), "{g} vs {}", 2.0 * w);
                }
            }
        }
    }
}
