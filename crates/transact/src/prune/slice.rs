//! Applying a plan: physically remove rows and columns (`slice`), or zero them in place (`mask`,
//! the reference the structural-exactness tests compare against).

use anyhow::Result;
use candle_core::Tensor;

use super::choose::LayerKeep;
use crate::model::config::LayerShape;
use crate::model::forward::Model;
use crate::model::weights::LayerWeights;

fn idx(v: &[usize], w: &Tensor) -> Result<Tensor> {
    Ok(Tensor::new(v.iter().map(|&i| i as u32).collect::<Vec<u32>>(), w.device())?)
}

/// Rows of the kept `heads` of a layer of `s`; in head-dim mode only the kept dims of each
/// head's KV group.
fn kept_rows(s: &LayerShape, heads: &[usize], group_of: impl Fn(usize) -> usize, dims: Option<&Vec<Vec<usize>>>) -> Vec<usize> {
    let d = s.head_dim;
    match dims {
        None => s.head_rows(heads),
        Some(dims) => heads.iter().flat_map(|&h| dims[group_of(h)].iter().map(move |&j| h * d + j)).collect(),
    }
}

/// The dense inner-attention indices (columns of `o_proj`) that `k` keeps of a layer of `s`, in
/// the sliced model's column order.
pub fn o_columns(s: &LayerShape, k: &LayerKeep) -> Vec<usize> {
    let gs = s.group_size();
    kept_rows(s, &k.q_heads, |h| h / gs, k.head_dims.as_ref())
}

/// The model with only the kept heads, head dims and channels of every layer.
pub fn slice(model: &Model, keep: &[LayerKeep]) -> Result<Model> {
    let mut config = model.config.clone();
    let mut weights = model.weights.clone();
    let mut inv_freq = Vec::with_capacity(keep.len());
    for (l, k) in keep.iter().enumerate() {
        let s = model.config.layers[l];
        let w = &model.weights.layers[l];
        let dims = k.head_dims.as_ref();
        let q = idx(&o_columns(&s, k), &w.q_proj)?;
        let kv = idx(&kept_rows(&s, &k.kv_heads, |g| g, dims), &w.k_proj)?;
        let head_dim = dims.map_or(s.head_dim, |d| d[0].len());
        // Attention scores are scaled by 1/√head_dim: fold √(new/old) into Q so the pruned
        // model keeps the original scale.
        let q_scale = (head_dim as f64 / s.head_dim as f64).sqrt();
        // A kept pair keeps its frequency; its first dim (2i, or i < d/2) names it.
        inv_freq.push(
            (0..s.n_kv_heads)
                .map(|g| {
                    let f = model.config.inv_freq(l, g);
                    match dims {
                        None => f,
                        Some(d) => d[g].iter().filter_map(|&j| model.config.rope_layout.pair_of(j, s.head_dim)).map(|i| f[i]).collect(),
                    }
                })
                .collect::<Vec<_>>(),
        );
        let m = idx(&k.mlp, &w.gate_proj)?;
        weights.layers[l] = LayerWeights {
            attn_norm: w.attn_norm.clone(),
            q_proj: (w.q_proj.index_select(&q, 0)? * q_scale)?,
            k_proj: w.k_proj.index_select(&kv, 0)?,
            v_proj: w.v_proj.index_select(&kv, 0)?,
            o_proj: w.o_proj.index_select(&q, 1)?.contiguous()?,
            mlp_norm: w.mlp_norm.clone(),
            gate_proj: w.gate_proj.index_select(&m, 0)?,
            up_proj: w.up_proj.index_select(&m, 0)?,
            down_proj: w.down_proj.index_select(&m, 1)?.contiguous()?,
        };
        config.layers[l] = LayerShape {
            n_heads: k.q_heads.len(),
            n_kv_heads: k.kv_heads.len(),
            head_dim,
            mlp_width: k.mlp.len(),
        };
    }
    if keep.iter().any(|k| k.head_dims.is_some()) || model.config.rope_inv_freq.is_some() {
        // Kept KV heads keep their own tables (head pruning after head-dim pruning).
        config.rope_inv_freq = Some(
            keep.iter().zip(inv_freq).map(|(k, f)| k.kv_heads.iter().map(|&g| f[g].clone()).collect()).collect(),
        );
    }
    config.validate().map_err(|e| anyhow::anyhow!("sliced model is inconsistent: {e}"))?;
    Ok(Model::new(config, weights))
}

/// 1 for kept columns, 0 for removed ones, as a `[1, n]` row to broadcast over weights.
fn column_mask(n: usize, kept: impl IntoIterator<Item = usize>, like: &Tensor) -> Result<Tensor> {
    let mut m = vec![0f32; n];
    for i in kept {
        m[i] = 1.0;
    }
    Ok(Tensor::from_vec(m, (1, n), like.device())?.to_dtype(like.dtype())?)
}

/// The dense model with the removed channels zeroed: a removed head's O columns and a removed
/// MLP channel's down column contribute nothing, which is exactly what slicing removes.
pub fn mask(model: &Model, keep: &[LayerKeep]) -> Result<Model> {
    let mut weights = model.weights.clone();
    for (l, k) in keep.iter().enumerate() {
        let s = model.config.layers[l];
        let w = &mut weights.layers[l];
        let dims = k.head_dims.as_ref();
        let q_rows = o_columns(&s, k);
        w.o_proj = w.o_proj.broadcast_mul(&column_mask(s.mha_width(), q_rows.iter().copied(), &w.o_proj)?)?;
        if dims.is_some() {
            // Dropped Q and K dims must not reach the attention scores either.
            let k_rows = kept_rows(&s, &k.kv_heads, |g| g, dims);
            w.q_proj = w.q_proj.broadcast_mul(&column_mask(s.mha_width(), q_rows, &w.q_proj)?.t()?)?;
            w.k_proj = w.k_proj.broadcast_mul(&column_mask(s.kv_width(), k_rows, &w.k_proj)?.t()?)?;
        }
        w.down_proj = w.down_proj.broadcast_mul(&column_mask(s.mlp_width, k.mlp.iter().copied(), &w.down_proj)?)?;
    }
    Ok(Model::new(model.config.clone(), weights))
}
