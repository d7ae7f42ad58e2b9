//! The KV cache and the attention of a few new tokens against it (decode).
//!
//! On the CPU, keys and values live in growable host buffers `[b, kv_heads, capacity, d]`:
//! appending a token writes its rows in place (concatenating tensors would copy the whole cache
//! every token), and decode attention reads them straight from the buffers. On other devices
//! they stay tensors on the device, written in place by candle-nn's cache: host buffers there
//! would copy the whole cache to the device for every token.

use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

use super::config::ModelConfig;

/// Where a cache keeps its keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvStorage {
    /// Host buffers the CPU decode kernels read in place; what the CPU uses. On any other
    /// device a cache asked for this keeps tensors instead.
    #[default]
    Host,
    /// Tensors on the model's device: what CUDA uses. On the CPU this runs the same code path
    /// (the general forward's attention), so tests can check it without a GPU.
    Tensors,
}

/// Positions a tensor cache grows by (candle-nn grows by concatenation, on the device).
const TENSOR_GROW: usize = 512;

/// One layer's keys and values.
#[derive(Debug)]
pub enum LayerKv {
    Host(HostKv),
    /// `[b, heads, len, d]` tensors and the batch size.
    Tensors(candle_nn::kv_cache::KvCache, usize),
}

impl LayerKv {
    /// A copy that shares no storage: candle-nn's cache writes its tensors in place, so a
    /// derived clone would let two caches overwrite each other's new positions.
    fn deep_copy(&self, repeat: usize) -> Result<Self> {
        Ok(match self {
            LayerKv::Host(h) => {
                let (k, v) = (h.k.repeat(repeat), h.v.repeat(repeat));
                LayerKv::Host(HostKv { k, v, b: h.b * repeat, heads: h.heads, d: h.d, cap: h.cap })
            }
            LayerKv::Tensors(kv, b) => {
                let mut out = candle_nn::kv_cache::KvCache::new(2, TENSOR_GROW);
                // `append` copies into buffers of its own.
                if let (Some(k), Some(v)) = (kv.k()?, kv.v()?) {
                    out.append(&k.repeat((repeat, 1, 1, 1))?.contiguous()?, &v.repeat((repeat, 1, 1, 1))?.contiguous()?)?;
                }
                LayerKv::Tensors(out, b * repeat)
            }
        })
    }
}

/// One layer's keys and values in host memory, `[b, heads, cap, d]` each; the first `len`
/// positions are valid.
#[derive(Debug, Clone)]
pub struct HostKv {
    k: Vec<f32>,
    v: Vec<f32>,
    b: usize,
    heads: usize,
    d: usize,
    cap: usize,
}

impl HostKv {
    pub fn new(b: usize, heads: usize, d: usize) -> Self {
        Self { k: Vec::new(), v: Vec::new(), b, heads, d, cap: 0 }
    }

    /// Writes `k`, `v` (`[b, heads, t, d]`) at positions `len .. len + t`.
    pub fn append(&mut self, k: &Tensor, v: &Tensor, len: usize) -> Result<()> {
        let (b, heads, t, d) = k.dims4()?;
        if (b, heads, d) != (self.b, self.heads, self.d) {
            candle_core::bail!("KV cache holds [{}, {}, _, {}], got {:?}", self.b, self.heads, self.d, k.dims());
        }
        self.append_slice(&k.flatten_all()?.to_vec1::<f32>()?, &v.flatten_all()?.to_vec1::<f32>()?, t, len)
    }

    /// [`HostKv::append`] of row-major `[b, heads, t, d]` data.
    pub fn append_slice(&mut self, k: &[f32], v: &[f32], t: usize, len: usize) -> Result<()> {
        let (b, heads, d) = (self.b, self.heads, self.d);
        if k.len() != b * heads * t * d || v.len() != k.len() {
            candle_core::bail!("KV cache holds [{b}, {heads}, _, {d}], got {} values for {t} positions", k.len());
        }
        if len + t > self.cap {
            // Doubling keeps appends amortised O(t); a quarter's headroom lets decode go on
            // after a prefill without copying the whole cache on its first token.
            let cap = (2 * self.cap).max((len + t + (len + t) / 4).next_multiple_of(64));
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
        if t == 1 {
            return self.attend_split(q, g, len + 1);
        }
        let mut out = vec![0f32; self.b * self.heads * g * t * d];
        // One task per query head: (batch, kv head) = idx / g.
        out.par_chunks_mut(t * d).enumerate().for_each(|(idx, o)| {
            let base = (idx / g) * self.cap * d;
            let (k, v) = (&self.k[base..base + (len + t) * d], &self.v[base..base + (len + t) * d]);
            super::attend::head(&q[idx * t * d..(idx + 1) * t * d], k, v, o, d, len);
        });
        out
    }

    /// One new token's attention over `n` keys. Tasks are (KV head, range of keys) and score all
    /// `g` query heads of the group, so each key and value is read from memory once (one task
    /// per query head read them g times) and a few KV heads still fill every thread.
    fn attend_split(&self, q: &[f32], g: usize, n: usize) -> Vec<f32> {
        let (d, groups) = (self.d, self.b * self.heads);
        let ranges = (8 * rayon::current_num_threads()).div_ceil(groups).min(n.div_ceil(MIN_KEYS_PER_TASK)).max(1);
        let per = n.div_ceil(ranges);
        // Per (group, range, query head): max, sum, then the d unnormalised outputs.
        let stride = d + 2;
        let mut parts = vec![0f32; groups * ranges * g * stride];
        parts.par_chunks_mut(g * stride).enumerate().for_each(|(idx, p)| {
            let (grp, r) = (idx / ranges, idx % ranges);
            let (j0, j1) = (r * per, ((r + 1) * per).min(n));
            let base = (grp * self.cap + j0.min(n)) * d;
            for (i, p) in p.chunks_exact_mut(stride).enumerate() {
                let (ms, o) = p.split_at_mut(2);
                let (m, sum) = if j1 > j0 {
                    super::attend::partial(&q[(grp * g + i) * d..][..d], &self.k[base..], &self.v[base..], o, d, j1 - j0)
                } else {
                    (f32::NEG_INFINITY, 0.0)
                };
                (ms[0], ms[1]) = (m, sum);
            }
        });
        let mut out = vec![0f32; groups * g * d];
        for (h, o) in out.chunks_exact_mut(d).enumerate() {
            let (grp, i) = (h / g, h % g);
            let part = |r: usize| {
                let p = &parts[((grp * ranges + r) * g + i) * stride..][..stride];
                (p[0], p[1], &p[2..])
            };
            super::attend::combine((0..ranges).map(part), o);
        }
        out
    }
}

/// Keys below which splitting a head's range across tasks costs more than it balances.
const MIN_KEYS_PER_TASK: usize = 64;

/// Per-layer keys and values of the tokens seen so far.
#[derive(Debug)]
pub struct KvCache {
    pub(crate) layers: Vec<Option<LayerKv>>,
    pub(crate) len: usize,
    storage: KvStorage,
}

impl KvCache {
    pub fn new(cfg: &ModelConfig) -> Self {
        Self::with_storage(cfg, KvStorage::Host)
    }

    pub fn with_storage(cfg: &ModelConfig, storage: KvStorage) -> Self {
        Self { layers: (0..cfg.n_layers()).map(|_| None).collect(), len: 0, storage }
    }

    /// Tokens already in the cache (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn storage(&self) -> KvStorage {
        self.storage
    }

    /// Whether every layer keeps host buffers of batch `b` (what the CPU decode step needs).
    pub(crate) fn is_host(&self, b: usize) -> bool {
        self.storage == KvStorage::Host && self.layers.iter().flatten().all(|kv| matches!(kv, LayerKv::Host(h) if h.b == b))
    }

    /// An independent copy (appending to one does not change the other).
    pub fn try_clone(&self) -> Result<Self> {
        self.expand(1)
    }

    /// The same cache repeated `b` times along the batch axis (a shared prompt prefix continued
    /// by `b` different suffixes).
    pub fn expand(&self, b: usize) -> Result<Self> {
        let layers = self.layers.iter().map(|kv| kv.as_ref().map(|kv| kv.deep_copy(b)).transpose()).collect::<Result<_>>()?;
        Ok(Self { layers, len: self.len, storage: self.storage })
    }
}

/// Appends this layer's new `k`, `v` (`[b, heads, t, d]`) to `slot` (holding `len` positions)
/// and attends `q` (`[b, heads, g, t, d]`, scaled) over everything cached. Returns instead
/// (`Err`) the cached keys and values as tensors when the block is long enough that the
/// caller's GEMM attention is faster, or when the cache keeps tensors.
pub(crate) fn append_and_attend(
    slot: &mut Option<LayerKv>,
    storage: KvStorage,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    len: usize,
    direct: bool,
) -> Result<std::result::Result<Tensor, (Tensor, Tensor)>> {
    let (b, heads, t, d) = k.dims4()?;
    let kv = slot.get_or_insert_with(|| match (storage, k.device()) {
        (KvStorage::Host, Device::Cpu) => LayerKv::Host(HostKv::new(b, heads, d)),
        _ => LayerKv::Tensors(candle_nn::kv_cache::KvCache::new(2, TENSOR_GROW), b),
    });
    let kv = match kv {
        LayerKv::Host(kv) => kv,
        LayerKv::Tensors(kv, _) => {
            // Views into the grown buffers; attention wants them contiguous (a device copy).
            let (k, v) = kv.append(&k.contiguous()?, &v.contiguous()?)?;
            return Ok(Err((k.contiguous()?, v.contiguous()?)));
        }
    };
    kv.append(k, v, len)?;
    if !direct {
        return Ok(Err(kv.tensors(len + t, k.device())?));
    }
    let g = q.dim(2)?;
    let y = kv.attend(&q.flatten_all()?.to_vec1::<f32>()?, g, t, len);
    Ok(Ok(Tensor::from_vec(y, (b, heads, g, t, d), q.device())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prefill leaves room, so the decode steps after it write in place instead of copying
    /// the whole cache into a larger buffer on the first one; appends keep every value.
    #[test]
    fn prefill_leaves_headroom_and_appends_keep_values() {
        let (heads, d) = (2, 8);
        let mut kv = HostKv::new(1, heads, d);
        let rows = |t: usize, from: usize| -> Vec<f32> { (0..heads * t * d).map(|i| (from * 1000 + i) as f32).collect() };
        kv.append_slice(&rows(256, 0), &rows(256, 0), 256, 0).unwrap();
        let (cap, ptr) = (kv.cap, kv.k.as_ptr());
        for pos in 256..256 + 32 {
            kv.append_slice(&rows(1, pos), &rows(1, pos), 1, pos).unwrap();
        }
        assert!(cap >= 256 + 32 && kv.cap == cap && kv.k.as_ptr() == ptr, "cap {cap} → {}", kv.cap);
        // Grow past the capacity: everything written so far survives the copy.
        let len = 256 + 32;
        kv.append_slice(&rows(cap, 7), &rows(cap, 7), cap, len).unwrap();
        let (k, _) = kv.tensors(len + cap, &Device::Cpu).unwrap();
        let k = k.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for h in 0..heads {
            let at = |pos: usize, c: usize| k[(h * (len + cap) + pos) * d + c];
            assert_eq!(at(3, 5), rows(256, 0)[(h * 256 + 3) * d + 5]);
            assert_eq!(at(270, 1), rows(1, 270)[h * d + 1]);
            assert_eq!(at(len + 10, 2), rows(cap, 7)[(h * cap + 10) * d + 2]);
        }
    }
}
