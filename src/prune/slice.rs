//! Applying a plan: physically remove rows and columns (`slice`), or zero them in place (`mask`,
//! the reference the structural-exactness tests compare against).

use anyhow::Result;
use candle_core::Tensor;

use super::plan::LayerKeep;
use crate::model::config::LayerShape;
use crate::model::forward::Model;
use crate::model::weights::LayerWeights;

/// Row indices of the given heads of dimension `d`.
fn head_rows(heads: &[usize], d: usize) -> Vec<u32> {
    heads.iter().flat_map(|h| (h * d..(h + 1) * d).map(|i| i as u32)).collect()
}

fn idx(v: &[u32], w: &Tensor) -> Result<Tensor> {
    Ok(Tensor::new(v, w.device())?)
}

/// The model with only the kept heads and channels of every layer.
pub fn slice(model: &Model, keep: &[LayerKeep]) -> Result<Model> {
    let mut config = model.config.clone();
    let mut weights = model.weights.clone();
    for (l, k) in keep.iter().enumerate() {
        let s = model.config.layers[l];
        let w = &model.weights.layers[l];
        let q = idx(&head_rows(&k.q_heads, s.head_dim), &w.q)?;
        let kv = idx(&head_rows(&k.kv_heads, s.head_dim), &w.k)?;
        let m = idx(&k.mlp.iter().map(|&i| i as u32).collect::<Vec<_>>(), &w.gate)?;
        weights.layers[l] = LayerWeights {
            attn_norm: w.attn_norm.clone(),
            q: w.q.index_select(&q, 0)?,
            k: w.k.index_select(&kv, 0)?,
            v: w.v.index_select(&kv, 0)?,
            o: w.o.index_select(&q, 1)?.contiguous()?,
            mlp_norm: w.mlp_norm.clone(),
            gate: w.gate.index_select(&m, 0)?,
            up: w.up.index_select(&m, 0)?,
            down: w.down.index_select(&m, 1)?.contiguous()?,
        };
        config.layers[l] = LayerShape {
            n_heads: k.q_heads.len(),
            n_kv_heads: k.kv_heads.len(),
            head_dim: s.head_dim,
            mlp_width: k.mlp.len(),
        };
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
        let q_cols = head_rows(&k.q_heads, s.head_dim).into_iter().map(|i| i as usize);
        w.o = w.o.broadcast_mul(&column_mask(s.mha_width(), q_cols, &w.o)?)?;
        w.down = w.down.broadcast_mul(&column_mask(s.mlp_width, k.mlp.iter().copied(), &w.down)?)?;
    }
    Ok(Model::new(model.config.clone(), weights))
}
