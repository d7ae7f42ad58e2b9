//! One decode step (one new token per sequence) on plain slices.
//!
//! A decode step reads every weight once, so its floor is memory bandwidth; what the general
//! forward adds on top is ~25 small tensor ops per layer (allocation, dispatch, layout copies),
//! a fixed ~2.5 ms per token that dominated small weight types and pruned models
//! (`bench/NOTES.md`). Here each layer is the GEMVs plus a handful of loops over `Vec<f32>`;
//! the arithmetic is the general forward's (same RMSNorm, rotation, scale and softmax order).

use candle_core::{Device, Result, Tensor};
use transact_kernels::{elementwise, gemv};

use crate::config::{ModelConfig, RopeLayout};
use crate::host::with_cpu_f32;
use crate::linear;
use crate::kv_cache::{HostKv, KvCache, KvDtype, LayerKv};
use crate::weights::Weights;

/// `x` `[m, k]` through each of `ws` on the CPU kernels.
fn linear_rows(x: &[f32], m: usize, k: usize, ws: &[&Tensor]) -> Result<Vec<Vec<f32>>> {
    linear::linear_rows(x, m, k, ws)?.ok_or_else(|| candle_core::Error::Msg("decode: weights must be contiguous CPU tensors".into()))
}

/// candle's RMSNorm, row by row: `x / sqrt(mean(x²) + eps) · w`, reading the norm's weights in
/// place. The sum of squares runs in eight lanes so it vectorises (one running sum is a chain
/// of dependent adds); its order differs from candle's only by rounding.
fn rms_norm(x: &[f32], w: &Tensor, eps: f32) -> Result<Vec<f32>> {
    let norm = |w: &[f32]| {
        let n = w.len();
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks_exact(n) {
            let mut acc = [0f32; 8];
            for (i, v) in row.iter().enumerate() {
                acc[i % 8] += v * v;
            }
            let m = (acc.iter().sum::<f32>() / n as f32 + eps).sqrt();
            out.extend(row.iter().zip(w).map(|(v, a)| v / m * a));
        }
        out
    };
    with_cpu_f32(&[w], |ws| norm(ws[0]))?.ok_or_else(|| candle_core::Error::Msg("decode: norm weights must be f32 on the CPU".into()))
}

/// Rotates every head of `x` (`[rows, heads, d]`, heads of group g use `tables[g]`) at one
/// position; `tables[g]` holds (cos, sin) per pair.
fn rope(x: &mut [f32], d: usize, heads_per_table: usize, tables: &[Angles], layout: RopeLayout) {
    let per_row = tables.len() * heads_per_table * d;
    for row in x.chunks_exact_mut(per_row) {
        for (h, head) in row.chunks_exact_mut(d).enumerate() {
            let cs = &tables[h / heads_per_table];
            for (i, &(c, s)) in cs.iter().enumerate() {
                let [a, b] = layout.pair(i, d);
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * c - x1 * s;
                head[b] = x0 * s + x1 * c;
            }
        }
    }
}

/// (cos, sin) of one position's angle for each rotary pair.
type Angles = Vec<(f32, f32)>;

/// Whether [`step`] can run `b` sequences of `t` new tokens on `device`.
pub(crate) fn can_step(b: usize, t: usize, device: &Device) -> bool {
    t == 1 && b <= gemv::MAX_ROWS && matches!(device, Device::Cpu)
}

/// Logits `[b, 1, vocab]` (with `head`; else the final normalised hidden states `[b, 1,
/// hidden]`) for one new token per sequence, appending its keys and values to `cache`, whose
/// new layers store `kv_dtype`.
pub(crate) fn step(cfg: &ModelConfig, weights: &Weights, kv_dtype: KvDtype, tokens: &[u32], cache: &mut KvCache, head: bool) -> Result<Tensor> {
    step_caches(cfg, weights, kv_dtype, tokens, &mut [cache], head)
}

/// [`step`] for sequences in separate caches, each at its own position (a server's running
/// batch): the products read each weight once for all rows; RoPE, the cache append and
/// attention run per cache. `tokens` splits evenly over `caches` (every cache holds the same
/// batch size). Logits `[tokens.len(), 1, vocab]`, rows in the order of `caches`.
pub(crate) fn step_caches(cfg: &ModelConfig, weights: &Weights, kv_dtype: KvDtype, tokens: &[u32], caches: &mut [&mut KvCache], head: bool) -> Result<Tensor> {
    let device = weights.embed.device();
    let (m, hidden) = (tokens.len(), cfg.hidden_size);
    if caches.is_empty() || m % caches.len() != 0 {
        candle_core::bail!("decode step: {m} tokens do not split over {} caches", caches.len());
    }
    let per = m / caches.len();
    let eps = cfg.rms_eps as f32;
    // RoPE angles per cache position, for the head dim they were made for.
    let mut shared: Vec<Option<(usize, Angles)>> = vec![None; caches.len()];
    let mut x = Vec::with_capacity(m * hidden);
    for &tok in tokens {
        x.extend(weights.embed.get(tok as usize)?.to_vec1::<f32>()?);
    }
    for (l, s) in cfg.layers.iter().enumerate() {
        let w = &weights.layers[l];
        let (hq, hkv, d, g) = (s.n_heads, s.n_kv_heads, s.head_dim, s.group_size());
        let xb = rms_norm(&x, &w.attn_norm, eps)?;
        let [mut q, mut k, v]: [Vec<f32>; 3] =
            linear_rows(&xb, m, hidden, &[&w.q_proj, &w.k_proj, &w.v_proj])?.try_into().expect("three outputs");
        let scale = (1.0 / (d as f64).sqrt()) as f32;
        let mut y = Vec::with_capacity(m * hq * d);
        for (c, cache) in caches.iter_mut().enumerate() {
            let pos = cache.len;
            // Angles in f64, as in `RopeTables`; one table per KV group only when head-dim
            // pruning gave groups their own frequencies.
            let angles = |f: Vec<f64>| f.iter().map(|f| ((pos as f64 * f).cos() as f32, (pos as f64 * f).sin() as f32)).collect();
            let tables: Vec<Angles> = match cfg.rope_inv_freq {
                Some(_) => (0..hkv).map(|grp| angles(cfg.inv_freq(l, grp))).collect(),
                None => {
                    if shared[c].as_ref().is_none_or(|(hd, _)| *hd != d) {
                        shared[c] = Some((d, angles(cfg.inv_freq(l, 0))));
                    }
                    vec![shared[c].as_ref().map(|(_, t)| t.clone()).unwrap_or_default()]
                }
            };
            let per_table = if tables.len() == 1 { (hq, hkv) } else { (g, 1) };
            let (q, k, v) = (&mut q[c * per * hq * d..][..per * hq * d], &mut k[c * per * hkv * d..][..per * hkv * d], &v[c * per * hkv * d..][..per * hkv * d]);
            rope(q, d, per_table.0, &tables, cfg.rope_layout);
            rope(k, d, per_table.1, &tables, cfg.rope_layout);
            q.iter_mut().for_each(|v| *v *= scale);
            // `[b, heads · d]` rows are `[b, heads, 1, d]`: the cache's and attention's layout.
            let slot = match cache.layers[l].get_or_insert_with(|| LayerKv::Host(HostKv::new(per, hkv, d, kv_dtype))) {
                LayerKv::Host(h) => h,
                LayerKv::Tensors(..) => candle_core::bail!("decode step: the cache keeps tensors, not host buffers"),
            };
            slot.append_slice(k, v, 1, pos)?;
            y.extend(slot.attend(q, g, 1, pos));
        }
        let o = linear_rows(&y, m, hq * d, &[&w.o_proj])?.remove(0);
        x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
        let xb = rms_norm(&x, &w.mlp_norm, eps)?;
        let [gate, up]: [Vec<f32>; 2] = linear_rows(&xb, m, hidden, &[&w.gate_proj, &w.up_proj])?.try_into().expect("two outputs");
        let h = elementwise::silu_mul(&gate, &up);
        let down = linear_rows(&h, m, s.mlp_width, &[&w.down_proj])?.remove(0);
        x.iter_mut().zip(&down).for_each(|(x, o)| *x += o);
    }
    for cache in caches.iter_mut() {
        cache.len += 1;
    }
    let x = rms_norm(&x, &weights.final_norm, eps)?;
    if !head {
        return Tensor::from_vec(x, (m, 1, hidden), device);
    }
    let lm_head = weights.lm_head.as_ref().unwrap_or(&weights.embed);
    let y = linear_rows(&x, m, hidden, &[lm_head])?.remove(0);
    Tensor::from_vec(y, (m, 1, lm_head.dim(0)?), device)
}
