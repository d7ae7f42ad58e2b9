//! The KV cache and the attention of a few new tokens against it (decode).
//!
//! On the CPU, keys and values live in growable host buffers `[b, kv_heads, capacity, d]`:
//! appending a token writes its rows in place (concatenating tensors would copy the whole cache
//! every token), and decode attention reads them straight from the buffers. On other devices
//! they stay tensors on the device, written in place by candle-nn's cache: host buffers there
//! would copy the whole cache to the device for every token.
//!
//! Keys and values are kept in f32 or, with [`KvDtype::F16`], in half precision (llama.cpp's
//! default): half the memory, and decode attention reads half the bytes. [`KvDtype::Q8`]
//! keeps 8-bit integers and one f32 scale per row (per position and KV head), a little over a
//! quarter of f32's bytes.

use candle_core::{DType, Device, Result, Tensor};
use half::f16;
use rayon::prelude::*;

use transact_kernels::attend::{self, KvElem, KvRows, QueryQ8};

use crate::choice::Choice;
use crate::config::ModelConfig;

/// The element type a KV cache stores keys and values in. Attention computes in f32 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KvDtype {
    /// Exact: decode reproduces the full forward up to summation order.
    #[default]
    F32,
    /// Half the memory and the bytes attention reads; keys and values round to f16. On a GPU
    /// only the memory halves: the general attention there widens a copy to f32 every step.
    F16,
    /// A little over a quarter of f32's memory and bytes: each key and value vector (one
    /// position of one KV head) becomes 8-bit integers times one f32 scale, its largest
    /// magnitude mapping to 127. CPU only.
    Q8,
}

impl KvDtype {
    /// The tensor type a cache of tensors stores keys and values as; `None` for a type only
    /// the CPU's host buffers keep.
    pub fn tensor_dtype(self) -> Option<DType> {
        match self {
            KvDtype::F32 => Some(DType::F32),
            KvDtype::F16 => Some(DType::F16),
            KvDtype::Q8 => None,
        }
    }

    /// Bytes one key or value vector of `d` elements takes, its scale included.
    pub fn bytes_per_vector(self, d: usize) -> usize {
        match self {
            KvDtype::F32 => 4 * d,
            KvDtype::F16 => 2 * d,
            KvDtype::Q8 => d + 4,
        }
    }
}

crate::impl_choice!(KvDtype {
    F32 => "f32", "exact: decode reproduces the full forward up to summation order";
    F16 => "f16", "half the memory and the bytes decode attention reads (llama.cpp's default)";
    Q8 => "q8", "8-bit integers and one f32 scale per key or value vector, ~0.27 of f32's bytes; CPU only";
});

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
    /// `[b, heads, len, d]` tensors, the batch size, and the type they are stored in.
    Tensors(candle_nn::kv_cache::KvCache, usize, KvDtype),
}

impl LayerKv {
    /// A copy that shares no storage: candle-nn's cache writes its tensors in place, so a
    /// derived clone would let two caches overwrite each other's new positions.
    fn deep_copy(&self, repeat: usize) -> Result<Self> {
        Ok(match self {
            LayerKv::Host(h) => {
                let data = match &h.data {
                    Data::F32(k, v) => Data::F32(k.repeat(repeat), v.repeat(repeat)),
                    Data::F16(k, v) => Data::F16(k.repeat(repeat), v.repeat(repeat)),
                    Data::Q8(k, v) => Data::Q8(k.repeat(repeat), v.repeat(repeat)),
                };
                let scales = (h.scales.0.repeat(repeat), h.scales.1.repeat(repeat));
                LayerKv::Host(HostKv { data, scales, b: h.b * repeat, heads: h.heads, d: h.d, cap: h.cap })
            }
            LayerKv::Tensors(kv, b, dtype) => {
                let mut out = candle_nn::kv_cache::KvCache::new(2, TENSOR_GROW);
                // `append` copies into buffers of its own.
                if let (Some(k), Some(v)) = (kv.k()?, kv.v()?) {
                    out.append(&k.repeat((repeat, 1, 1, 1))?.contiguous()?, &v.repeat((repeat, 1, 1, 1))?.contiguous()?)?;
                }
                LayerKv::Tensors(out, b * repeat, *dtype)
            }
        })
    }
}

/// One layer's keys and values in host memory, `[b, heads, cap, d]` each; the first `len`
/// positions are valid.
#[derive(Debug, Clone)]
pub struct HostKv {
    data: Data,
    /// The rows' scales of keys and values, `[b, heads, cap]` each, for a scaled type
    /// ([`KvElem::SCALED`]); empty otherwise.
    scales: (Vec<f32>, Vec<f32>),
    b: usize,
    heads: usize,
    d: usize,
    cap: usize,
}

/// Keys and values, in the cache's element type.
#[derive(Debug, Clone)]
enum Data {
    F32(Vec<f32>, Vec<f32>),
    F16(Vec<f16>, Vec<f16>),
    Q8(Vec<i8>, Vec<i8>),
}

/// Runs `$body` with `$k`, `$v` bound to the keys and values of `$data` in their own type.
macro_rules! with_kv {
    ($data:expr, |$k:ident, $v:ident| $body:expr) => {
        match $data {
            Data::F32($k, $v) => $body,
            Data::F16($k, $v) => $body,
            Data::Q8($k, $v) => $body,
        }
    };
}

impl HostKv {
    pub fn new(b: usize, heads: usize, d: usize, dtype: KvDtype) -> Self {
        let data = match dtype {
            KvDtype::F32 => Data::F32(Vec::new(), Vec::new()),
            KvDtype::F16 => Data::F16(Vec::new(), Vec::new()),
            KvDtype::Q8 => Data::Q8(Vec::new(), Vec::new()),
        };
        Self { data, scales: Default::default(), b, heads, d, cap: 0 }
    }

    pub fn dtype(&self) -> KvDtype {
        match self.data {
            Data::F32(..) => KvDtype::F32,
            Data::F16(..) => KvDtype::F16,
            Data::Q8(..) => KvDtype::Q8,
        }
    }

    /// All `[b · heads · cap]` rows of keys and values, with their scales.
    fn rows<'a, T: KvElem>(&'a self, k: &'a [T], v: &'a [T]) -> KvRows<'a, T> {
        KvRows { k, v, k_scale: &self.scales.0, v_scale: &self.scales.1 }
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
        // Doubling keeps appends amortised O(t); a quarter's headroom lets decode go on after a
        // prefill without copying the whole cache on its first token.
        let cap = if len + t > self.cap { (2 * self.cap).max((len + t + (len + t) / 4).next_multiple_of(64)) } else { self.cap };
        let rows = b * heads;
        let (ks, vs) = (&mut self.scales.0, &mut self.scales.1);
        with_kv!(&mut self.data, |kb, vb| {
            for (buf, scales, new) in [(kb, ks, k), (vb, vs, v)] {
                write_rows(buf, scales, new, rows, (self.cap, cap), len, t, d);
            }
        });
        self.cap = cap;
        Ok(())
    }

    /// Keys and values of positions `0 .. len` as f32 tensors `[b, heads, len, d]` (a copy).
    fn tensors(&self, len: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        fn take<T: KvElem>(buf: &[T], scales: &[f32], h: &HostKv, len: usize, device: &Device) -> Result<Tensor> {
            let d = h.d;
            let row = |r: usize| if T::SCALED { scales[r] } else { 1.0 };
            let data: Vec<f32> = (0..h.b * h.heads).flat_map(|bh| (0..len).flat_map(move |j| buf[(bh * h.cap + j) * d..][..d].iter().map(move |x| x.to_f32() * row(bh * h.cap + j)))).collect();
            Tensor::from_vec(data, (h.b, h.heads, len, d), device)
        }
        with_kv!(&self.data, |k, v| Ok((take(k, &self.scales.0, self, len, device)?, take(v, &self.scales.1, self, len, device)?)))
    }

    /// Causal attention of `q` (`[b, heads, g, t, d]`, scaled, for positions `len .. len + t`,
    /// already appended) over the cache; returns `[b, heads, g, t, d]`.
    pub fn attend(&self, q: &[f32], g: usize, t: usize, len: usize) -> Vec<f32> {
        with_kv!(&self.data, |k, v| self.attend_in(self.rows(k, v), q, g, t, len))
    }

    fn attend_in<T: KvElem>(&self, kv: KvRows<T>, q: &[f32], g: usize, t: usize, len: usize) -> Vec<f32> {
        let d = self.d;
        if t == 1 {
            return self.attend_split(kv, q, g, len + 1);
        }
        let mut out = vec![0f32; self.b * self.heads * g * t * d];
        // One task per query head: (batch, kv head) = idx / g.
        out.par_chunks_mut(t * d).enumerate().for_each(|(idx, o)| {
            let rows = kv.range((idx / g) * self.cap, len + t, d);
            attend::head(&q[idx * t * d..(idx + 1) * t * d], rows, o, d, len);
        });
        out
    }

    /// One new token's attention over `n` keys. Tasks are (KV head, range of keys) and attend
    /// all `g` query heads of the group in one pass ([`attend::group_partial`]), so each
    /// key and value is read from memory once, and a few KV heads still fill every thread.
    fn attend_split<T: KvElem>(&self, kv: KvRows<T>, q: &[f32], g: usize, n: usize) -> Vec<f32> {
        let (d, groups) = (self.d, self.b * self.heads);
        let ranges = (8 * rayon::current_num_threads()).div_ceil(groups).min(n.div_ceil(MIN_KEYS_PER_TASK)).max(1);
        let per = n.div_ceil(ranges);
        // Per (group, range, query head): max and sum, and the d unnormalised outputs.
        let mut ms = vec![(f32::NEG_INFINITY, 0f32); groups * ranges * g];
        let mut os = vec![0f32; groups * ranges * g * d];
        let tasks: Vec<_> = ms.chunks_mut(g).zip(os.chunks_mut(g * d)).enumerate().collect();
        // 8-bit keys are scored against the queries rounded to 8 bits, once for all tasks.
        let q8 = if T::SCALED { QueryQ8::rows(q, d) } else { Vec::new() };
        transact_kernels::spin_pool::for_each(tasks, |(idx, (ms, o))| {
            let (grp, r) = (idx / ranges, idx % ranges);
            let (j0, j1) = (r * per, ((r + 1) * per).min(n));
            if j1 > j0 {
                let rows = kv.range(grp * self.cap + j0, j1 - j0, d);
                let q8 = if T::SCALED { &q8[grp * g..][..g] } else { &[] };
                attend::group_partial(&q[grp * g * d..][..g * d], q8, rows, o, ms, d, j1 - j0);
            }
        });
        let mut out = vec![0f32; groups * g * d];
        for (h, o) in out.chunks_exact_mut(d).enumerate() {
            let (grp, i) = (h / g, h % g);
            let part = |r: usize| {
                let at = (grp * ranges + r) * g + i;
                (ms[at].0, ms[at].1, &os[at * d..][..d])
            };
            attend::combine((0..ranges).map(part), o);
        }
        out
    }
}

/// Writes `t` new positions of each of `rows` (batch, head) rows (`new`: `[rows, t, d]`) at
/// position `len` of `buf` (`[rows, cap, d]`) and, for a scaled type, their scales into
/// `scales` (`[rows, cap]`), first moving the valid `len` positions into buffers of `cap.1`
/// positions when they grow past `cap.0`.
#[allow(clippy::too_many_arguments)]
fn write_rows<T: KvElem>(buf: &mut Vec<T>, scales: &mut Vec<f32>, new: &[f32], rows: usize, cap: (usize, usize), len: usize, t: usize, d: usize) {
    let (old, cap) = cap;
    if cap != old {
        grow(buf, rows, (old * d, cap * d), len * d);
        if T::SCALED {
            grow(scales, rows, (old, cap), len);
        }
    }
    for r in 0..rows {
        let at = r * cap + len;
        let dst = buf[at * d..][..t * d].chunks_exact_mut(d);
        for (j, (src, dst)) in new[r * t * d..][..t * d].chunks_exact(d).zip(dst).enumerate() {
            let scale = T::narrow_row(src, dst);
            if T::SCALED {
                scales[at + j] = scale;
            }
        }
    }
}

/// Moves the first `len` elements of each of `rows` rows of `stride.0` into rows of `stride.1`.
fn grow<T: Copy + Default>(buf: &mut Vec<T>, rows: usize, stride: (usize, usize), len: usize) {
    let mut grown = vec![T::default(); rows * stride.1];
    for r in 0..rows {
        grown[r * stride.1..][..len].copy_from_slice(&buf[r * stride.0..][..len]);
    }
    *buf = grown;
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
/// caller's GEMM attention is faster, or when the cache keeps tensors. A new slot stores
/// `dtype`; an existing one keeps the type it was made with.
#[allow(clippy::too_many_arguments)]
pub(crate) fn append_and_attend(
    slot: &mut Option<LayerKv>,
    storage: KvStorage,
    dtype: KvDtype,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    len: usize,
    direct: bool,
) -> Result<std::result::Result<Tensor, (Tensor, Tensor)>> {
    let (b, heads, t, d) = k.dims4()?;
    let kv = slot.get_or_insert_with(|| match (storage, k.device()) {
        (KvStorage::Host, Device::Cpu) => LayerKv::Host(HostKv::new(b, heads, d, dtype)),
        _ => LayerKv::Tensors(candle_nn::kv_cache::KvCache::new(2, TENSOR_GROW), b, dtype),
    });
    let kv = match kv {
        LayerKv::Host(kv) => kv,
        LayerKv::Tensors(kv, _, dtype) => {
            let Some(stored) = dtype.tensor_dtype() else {
                candle_core::bail!("a {} KV cache is kept only in the CPU's host buffers, not on {:?} or as tensors; use f32 or f16", dtype.name(), k.device())
            };
            let store = |t: &Tensor| t.to_dtype(stored)?.contiguous();
            // Views into the grown buffers; attention wants them contiguous f32 (a device copy).
            let (k, v) = kv.append(&store(k)?, &store(v)?)?;
            return Ok(Err((k.to_dtype(DType::F32)?.contiguous()?, v.to_dtype(DType::F32)?.contiguous()?)));
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
    /// the whole cache into a larger buffer on the first one; appends keep every value, in
    /// each element type (the values are integers below 2048, exact in f16; 8 bits keep them
    /// to half a step of 2047 / 127).
    #[test]
    fn prefill_leaves_headroom_and_appends_keep_values() {
        for dtype in [KvDtype::F32, KvDtype::F16, KvDtype::Q8] {
            let tol = if dtype == KvDtype::Q8 { 0.5 * 2047.0 / 127.0 + 1e-3 } else { 0.0 };
            let same = |a: f32, b: f32| assert!((a - b).abs() <= tol, "{dtype:?}: {a} vs {b}");
            let (heads, d) = (2, 8);
            let mut kv = HostKv::new(1, heads, d, dtype);
            let rows = |t: usize, from: usize| -> Vec<f32> { (0..heads * t * d).map(|i| ((from * 37 + i) % 2048) as f32).collect() };
            let keys = |kv: &HostKv| with_kv!(&kv.data, |k, _v| k.as_ptr() as usize);
            kv.append_slice(&rows(256, 0), &rows(256, 0), 256, 0).unwrap();
            let (cap, ptr) = (kv.cap, keys(&kv));
            for pos in 256..256 + 32 {
                kv.append_slice(&rows(1, pos), &rows(1, pos), 1, pos).unwrap();
            }
            assert!(cap >= 256 + 32 && kv.cap == cap && keys(&kv) == ptr, "{dtype:?}: cap {cap} → {}", kv.cap);
            // Grow past the capacity: everything written so far survives the copy.
            let len = 256 + 32;
            kv.append_slice(&rows(cap, 7), &rows(cap, 7), cap, len).unwrap();
            assert_eq!(kv.dtype(), dtype);
            let (_, v) = kv.tensors(len + cap, &Device::Cpu).unwrap();
            let v = v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for h in 0..heads {
                let at = |pos: usize, c: usize| v[(h * (len + cap) + pos) * d + c];
                same(at(3, 5), rows(256, 0)[(h * 256 + 3) * d + 5]);
                same(at(270, 1), rows(1, 270)[h * d + 1]);
                same(at(len + 10, 2), rows(cap, 7)[(h * cap + 10) * d + 2]);
            }
        }
    }

    /// A narrow cache rounds what it stores once, and attention over it equals attention over
    /// an f32 cache holding the same rounded values; an 8-bit row stays within half a step of
    /// its largest magnitude / 127.
    #[test]
    fn narrow_caches_attend_as_f32_over_rounded_values() {
        let (heads, d, g, n) = (3, 64, 3, 300);
        let val = |i: usize| ((i * 7919) % 2003) as f32 / 1001.0 - 1.0 + 1e-4;
        let k: Vec<f32> = (0..heads * n * d).map(val).collect();
        let v: Vec<f32> = (0..heads * n * d).map(|i| val(i + 5)).collect();
        for dtype in [KvDtype::F16, KvDtype::Q8] {
            let mut narrow = HostKv::new(1, heads, d, dtype);
            narrow.append_slice(&k, &v, n, 0).unwrap();
            let (kr, vr) = narrow.tensors(n, &Device::Cpu).unwrap();
            let (kr, vr) = (kr.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vr.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            assert_ne!(kr, k, "{dtype:?}: the test values must round");
            for (x, r) in [(&k, &kr), (&v, &vr)] {
                for (x, r) in x.chunks_exact(d).zip(r.chunks_exact(d)) {
                    let step = if dtype == KvDtype::Q8 { x.iter().fold(0f32, |a, x| a.max(x.abs())) / 127.0 } else { 1e-3 };
                    assert!(x.iter().zip(r).all(|(x, r)| (x - r).abs() <= 0.5 * step * (1.0 + 1e-5)), "{dtype:?}: a value moved more than half a step");
                }
            }
            let mut exact = HostKv::new(1, heads, d, KvDtype::F32);
            exact.append_slice(&kr, &vr, n, 0).unwrap();
            // 8-bit keys are scored against queries rounded to 8 bits.
            let round = |q: &[f32]| if dtype == KvDtype::Q8 { q.chunks_exact(d).flat_map(QueryQ8::rounded).collect() } else { q.to_vec() };
            let q: Vec<f32> = (0..heads * g * d).map(|i| val(3 * i) * 0.2).collect();
            // One token (the split decode path), then a block of four (one task per query head).
            let (a, b) = (narrow.attend(&q, g, 1, n - 1), exact.attend(&round(&q), g, 1, n - 1));
            assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-5), "{dtype:?}: decode attention differs");
            let q4: Vec<f32> = (0..heads * g * 4 * d).map(|i| val(5 * i) * 0.2).collect();
            let (a, b) = (narrow.attend(&q4, g, 4, n - 4), exact.attend(&round(&q4), g, 4, n - 4));
            assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-5), "{dtype:?}: block attention differs");
        }
    }
}
