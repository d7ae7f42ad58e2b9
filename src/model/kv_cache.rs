//! The KV cache and the attention of a few new tokens against it (decode).
//!
//! Keys and values live in growable buffers `[b, kv_heads, capacity, d]`: appending a token
//! writes its rows in place (concatenating tensors would copy the whole cache every token), and
//! decode attention reads them straight from the buffers.

use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

use super::config::ModelConfig;

/// One layer's keys and values, `[b, heads, cap, d]` each; the first `len` positions are valid.
#[derive(Debug, Clone)]
pub struct LayerKv {
    k: Vec<f32>,
    v: Vec<f32>,
    b: usize,
    heads: usize,
    d: usize,
    cap: usize,
}

impl LayerKv {
    pub fn new(b: usize, heads: usize, d: usize) -> Self {
        Self { k: Vec::new(), v: Vec::new(), b, heads, d, cap: 0 }
    }

    /// Sequences in the batch.
    pub fn batch(&self) -> usize {
        self.b
    }

    /// Writes `k`, `v` (`[b, heads, t, d]`) at positions `len .. len + t`.
    pub fn append(&mut self, k: &Tensor, v: &Tensor, len: usize) -> Result<()> {
        let (b, heads, t, d) = k.dims4()?;
        if (b, heads, d) != (self.b, self.heads, self.d) {
            candle_core::bail!("KV cache holds [{}, {}, _, {}], got {:?}", self.b, self.heads, self.d, k.dims());
        }
        self.append_slice(&k.flatten_all()?.to_vec1::<f32>()?, &v.flatten_all()?.to_vec1::<f32>()?, t, len)
    }

    /// [`LayerKv::append`] of row-major `[b, heads, t, d]` data.
    pub fn append_slice(&mut self, k: &[f32], v: &[f32], t: usize, len: usize) -> Result<()> {
        let (b, heads, d) = (self.b, self.heads, self.d);
        if k.len() != b * heads * t * d || v.len() != k.len() {
            candle_core::bail!("KV cache holds [{b}, {heads}, _, {d}], got {} values for {t} positions", k.len());
        }
        if len + t > self.cap {
            // Doubling keeps appends amortised O(t).
            let cap = (2 * self.cap).max(len + t).max(64);
            for buf in [&mut self.k, &mut self.v] {
                let mut grown = vec![0f32; b * heads * cap * d];
                for bh in 0..b * heads {
                    grown[bh * cap * d..][..len * d].copy_from_slice(&buf[bh * self.cap * d..][..len * d]);
                }
                *buf = grown;
            }
            self.cap = cap;
        }
        for (buf, new) in [(&mut self.k, k), (&mut self.v, v)] {
            for bh in 0..b * heads {
                buf[(bh * self.cap + len) * d..][..t * d].copy_from_slice(&new[bh * t * d..][..t * d]);
            }
        }
        Ok(())
    }

    /// Keys and values of positions `0 .. len` as tensors `[b, heads, len, d]` (a copy).
    fn tensors(&self, len: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let d = self.d;
        let take = |buf: &[f32]| {
            let data: Vec<f32> =
                (0..self.b * self.heads).flat_map(|bh| buf[bh * self.cap * d..][..len * d].iter().copied()).collect();
            Tensor::from_vec(data, (self.b, self.heads, len, d), device)
        };
        Ok((take(&self.k)?, take(&self.v)?))
    }

    /// Causal attention of `q` (`[b, heads, g, t, d]`, scaled, for positions `len .. len + t`,
    /// already appended) over the cache; returns `[b, heads, g, t, d]`.
    pub fn attend(&self, q: &[f32], g: usize, t: usize, len: usize) -> Vec<f32> {
        let d = self.d;
        let mut out = vec![0f32; self.b * self.heads * g * t * d];
        // One task per query head: (batch, kv head) = idx / g.
        out.par_chunks_mut(t * d).enumerate().for_each(|(idx, o)| {
            let base = (idx / g) * self.cap * d;
            let (k, v) = (&self.k[base..base + (len + t) * d], &self.v[base..base + (len + t) * d]);
            super::attend::head(&q[idx * t * d..(idx + 1) * t * d], k, v, o, d, len);
        });
        out
    }
}

/// Per-layer keys and values of the tokens seen so far.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(crate) layers: Vec<Option<LayerKv>>,
    pub(crate) len: usize,
}

impl KvCache {
    pub fn new(cfg: &ModelConfig) -> Self {
        Self { layers: vec![None; cfg.n_layers()], len: 0 }
    }

    /// Tokens already in the cache (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The same cache repeated `b` times along the batch axis (a shared prompt prefix continued
    /// by `b` different suffixes).
    pub fn expand(&self, b: usize) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|kv| {
                kv.as_ref().map(|kv| LayerKv { k: kv.k.repeat(b), v: kv.v.repeat(b), b: kv.b * b, ..kv.clone() })
            })
            .collect();
        Ok(Self { layers, len: self.len })
    }
}

/// Appends this layer's new `k`, `v` (`[b, heads, t, d]`) to `slot` (holding `len` positions)
/// and attends `q` (`[b, heads, g, t, d]`, scaled) over everything cached. Returns `None` when
/// the block is long enough that the caller's GEMM attention is faster; then it also returns
/// the cached keys and values as tensors.
pub(crate) fn append_and_attend(
    slot: &mut Option<LayerKv>,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    len: usize,
    direct: bool,
) -> Result<std::result::Result<Tensor, (Tensor, Tensor)>> {
    let (b, heads, t, d) = k.dims4()?;
    let kv = slot.get_or_insert_with(|| LayerKv::new(b, heads, d));
    kv.append(k, v, len)?;
    if !direct {
        return Ok(Err(kv.tensors(len + t, k.device())?));
    }
    let g = q.dim(2)?;
    let y = kv.attend(&q.flatten_all()?.to_vec1::<f32>()?, g, t, len);
    Ok(Ok(Tensor::from_vec(y, (b, heads, g, t, d), q.device())?))
}
