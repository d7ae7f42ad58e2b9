//! What each layer keeps: salience scores in, kept heads (or head dims) and channels out. The
//! in-memory and the streaming paths both choose through [`score_and_choose`].

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::plan::{AttnUnit, GqaMode, Units, Widths, shape_for};
use super::scorer::{LayerInput, Scorer, Site};
use crate::model::config::{LayerShape, RopeLayout};

/// What one layer keeps, as ascending indices into its heads and channels: those of the layer
/// a shot starts from ([`choose`]), or of the dense model ([`LayerKeep::then`] over the shots).
/// Query heads are listed group by group, so query head i of the result reads KV head
/// i / group size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerKeep {
    pub q_heads: Vec<usize>,
    pub kv_heads: Vec<usize>,
    pub mlp: Vec<usize>,
    /// Head-dim mode: kept dims (ascending, whole rotary pairs) of each KV group's heads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dims: Option<Vec<Vec<usize>>>,
}

impl LayerKeep {
    /// Everything of a layer of `shape`.
    pub fn all(shape: &LayerShape) -> Self {
        Self { q_heads: (0..shape.n_heads).collect(), kv_heads: (0..shape.n_kv_heads).collect(), mlp: (0..shape.mlp_width).collect(), head_dims: None }
    }

    /// `next` (indices into the layer this keeps, of shape `shape`) as indices into what this
    /// indexes: composing the shots' choices gives the dense model's indices.
    pub fn then(&self, next: &LayerKeep, shape: &LayerShape) -> LayerKeep {
        let head_dims = next.head_dims.as_ref().map(|dims| {
            let prev = self.head_dims.clone().unwrap_or_else(|| vec![(0..shape.head_dim).collect(); shape.n_kv_heads]);
            dims.iter().zip(&prev).map(|(d, p)| d.iter().map(|&j| p[j]).collect()).collect()
        });
        LayerKeep {
            q_heads: next.q_heads.iter().map(|&i| self.q_heads[i]).collect(),
            kv_heads: next.kv_heads.iter().map(|&i| self.kv_heads[i]).collect(),
            mlp: next.mlp.iter().map(|&i| self.mlp[i]).collect(),
            head_dims: head_dims.or_else(|| self.head_dims.clone()),
        }
    }
}

/// Range and kept minimum of one layer's channel scores.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub min: f64,
    pub mean: f64,
    pub max: f64,
    /// Lowest score that was kept.
    pub kept_min: f64,
}

pub fn summary(all: &[f64], kept: &[usize]) -> Summary {
    let n = all.len().max(1) as f64;
    Summary {
        min: all.iter().copied().fold(f64::INFINITY, f64::min),
        mean: all.iter().sum::<f64>() / n,
        max: all.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        kept_min: kept.iter().map(|&i| all[i]).fold(f64::INFINITY, f64::min),
    }
}

/// One layer's scores as the report keeps them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerScores {
    /// Score of every query head of the layer before this shot.
    pub heads: Vec<f64>,
    pub mlp: Summary,
}

/// Scores one layer's channels at both sites with `scorer` and chooses what it keeps at widths `w`.
pub fn score_and_choose(scorer: &dyn Scorer, input: &LayerInput, shape: &LayerShape, layout: RopeLayout, w: Widths, u: Units) -> Result<(LayerKeep, LayerScores)> {
    let attn = scorer.channels(Site::Attn, input)?;
    let mlp = scorer.channels(Site::Mlp, input)?;
    let heads = head_scores(shape, &attn, scorer);
    let keep = choose(shape, layout, &attn, &heads, &mlp, w, u);
    let scores = LayerScores { heads, mlp: summary(&mlp, &keep.mlp) };
    Ok((keep, scores))
}

/// The `k` highest scores' indices, ascending; ties keep the lower index.
pub fn top_k(scores: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut keep = order[..k.min(order.len())].to_vec();
    keep.sort_unstable();
    keep
}

/// Per-head scores from per-channel attention scores.
pub fn head_scores(s: &LayerShape, channels: &[f64], scorer: &dyn Scorer) -> Vec<f64> {
    channels.chunks(s.head_dim).map(|c| scorer.head(c)).collect()
}

/// Chooses the kept heads (or head dims) and channels of one layer from per-channel scores
/// (`attn`, `mlp`) and the heads' scores (`heads`, [`head_scores`]).
pub fn choose(s: &LayerShape, layout: RopeLayout, attn: &[f64], heads: &[f64], mlp: &[f64], w: Widths, u: Units) -> LayerKeep {
    let gs = s.group_size();
    let target = shape_for(s, w, u);
    if u.attn == AttnUnit::HeadDim {
        // A pair's score sums both of its dims over every query head of the group: Q and K dims
        // must agree across the group because K is shared, and V/O keep the same dims.
        let d = s.head_dim;
        let head_dims = (0..s.n_kv_heads)
            .map(|g| {
                let pairs: Vec<f64> = (0..d / 2)
                    .map(|i| {
                        let [a, b] = layout.pair(i, d);
                        (g * gs..(g + 1) * gs).map(|h| attn[h * d + a] + attn[h * d + b]).sum()
                    })
                    .collect();
                let mut dims: Vec<usize> =
                    top_k(&pairs, target.head_dim / 2).into_iter().flat_map(|i| layout.pair(i, d)).collect();
                dims.sort_unstable();
                dims
            })
            .collect();
        return LayerKeep {
            q_heads: (0..s.n_heads).collect(),
            kv_heads: (0..s.n_kv_heads).collect(),
            mlp: top_k(mlp, w.mlp),
            head_dims: Some(head_dims),
        };
    }
    let (q_heads, kv_heads) = match u.gqa {
        GqaMode::Groups => {
            let group: Vec<f64> = heads.chunks(gs).map(|h| h.iter().sum()).collect();
            let kept = top_k(&group, target.n_kv_heads);
            (kept.iter().flat_map(|g| g * gs..(g + 1) * gs).collect(), kept)
        }
        GqaMode::Queries => {
            let per_group = target.n_heads / s.n_kv_heads;
            let q = (0..s.n_kv_heads)
                .flat_map(|g| top_k(&heads[g * gs..(g + 1) * gs], per_group).into_iter().map(move |h| g * gs + h))
                .collect();
            (q, (0..s.n_kv_heads).collect())
        }
    };
    LayerKeep { q_heads, kv_heads, mlp: top_k(mlp, w.mlp), head_dims: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_sorted_and_stable() {
        assert_eq!(top_k(&[0.1, 0.9, 0.5, 0.9], 2), [1, 3]);
        assert_eq!(top_k(&[1.0, 1.0, 1.0], 2), [0, 1]);
    }

    #[test]
    fn composed_choices_index_the_dense_layer() {
        let shape = LayerShape { n_heads: 6, n_kv_heads: 3, head_dim: 4, mlp_width: 10 };
        let first = LayerKeep { q_heads: vec![0, 1, 4, 5], kv_heads: vec![0, 2], mlp: vec![1, 3, 5, 7, 9], head_dims: None };
        let second = LayerKeep { q_heads: vec![2, 3], kv_heads: vec![1], mlp: vec![0, 4], head_dims: None };
        let both = LayerKeep::all(&shape).then(&first, &shape).then(&second, &shape);
        assert_eq!((both.q_heads, both.kv_heads, both.mlp), (vec![4, 5], vec![2], vec![1, 9]));
    }
}
