//! The pruning granularity, the target widths, and the K-shot schedule.

use anyhow::{Result, bail};
use serde::Serialize;

use crate::SettingError;
use crate::model::config::{LayerShape, ModelConfig};
use crate::model::cost::ModelCost;

/// How attention heads are removed under grouped-query attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GqaMode {
    /// Whole KV groups: the query heads of a group go with their KV head (the KV cache shrinks).
    Groups,
    /// The same number of query heads inside every group; all KV heads stay.
    Queries,
}

transact_model::impl_choice!(GqaMode {
    Groups => "groups", "whole KV groups: a group's query heads go with their KV head (the KV cache shrinks)";
    Queries => "queries", "the same number of query heads inside every group; all KV heads stay";
});

/// What attention pruning removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttnUnit {
    /// Whole heads (the released configuration), grouped as the GQA mode says.
    Head,
    /// Rotary pairs of dimensions inside every head, the same pairs for all heads of a KV group,
    /// each pair keeping its original frequency.
    HeadDim,
}

transact_model::impl_choice!(AttnUnit {
    Head => "head", "whole heads (stock-loadable everywhere)";
    HeadDim => "head-dim", "rotary pairs of dims inside heads, each keeping its frequency (transact's own directory format only)";
});

/// The pruning granularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Units {
    pub attn: AttnUnit,
    pub gqa: GqaMode,
    /// Head-dim mode: the kept head dim is a multiple of this (even).
    pub head_dim_multiple: usize,
}

/// Target transitional widths, the same in every layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Widths {
    /// Attention width before `o_proj` (query heads × head dim).
    pub mha: usize,
    /// SwiGLU intermediate width.
    pub mlp: usize,
}

/// Attention width of one removable unit.
pub fn attn_unit(s: &LayerShape, u: Units) -> usize {
    match (u.attn, u.gqa) {
        (AttnUnit::HeadDim, _) => s.n_heads * u.head_dim_multiple,
        (AttnUnit::Head, GqaMode::Groups) => s.group_size() * s.head_dim,
        (AttnUnit::Head, GqaMode::Queries) => s.n_kv_heads * s.head_dim,
    }
}

/// The layer shape after pruning to `w` (which must be a multiple of [`attn_unit`]).
pub fn shape_for(s: &LayerShape, w: Widths, u: Units) -> LayerShape {
    let units = w.mha / attn_unit(s, u);
    let (n_heads, n_kv_heads, head_dim) = match (u.attn, u.gqa) {
        (AttnUnit::HeadDim, _) => (s.n_heads, s.n_kv_heads, w.mha / s.n_heads),
        (AttnUnit::Head, GqaMode::Groups) => (units * s.group_size(), units, s.head_dim),
        (AttnUnit::Head, GqaMode::Queries) => (units * s.n_kv_heads, s.n_kv_heads, s.head_dim),
    };
    LayerShape { n_heads, n_kv_heads, head_dim, mlp_width: w.mlp }
}

/// How the user states the target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TargetSpec {
    /// Absolute per-layer widths; `None` keeps the current one.
    Widths { mha: Option<usize>, mlp: Option<usize> },
    /// Fraction of non-embedding parameters to remove.
    Ratio(f64),
}

fn non_embedding(cfg: &ModelConfig, s: &LayerShape, w: Widths, u: Units) -> u64 {
    let mut c = cfg.clone();
    c.layers = vec![shape_for(s, w, u); cfg.n_layers()];
    ModelCost::new(&c, 0).params_non_embedding
}

fn refuse<T>(setting: &'static str, problem: String) -> Result<T> {
    Err(SettingError::new(setting, problem).into())
}

/// Resolves and validates the target before any work; errors say what would be possible.
pub fn resolve(cfg: &ModelConfig, spec: TargetSpec, u: Units, mlp_multiple: usize) -> Result<Widths> {
    let Some(s) = cfg.uniform_shape() else {
        bail!("the input model has layers of different shapes; TransAct prunes uniform models to uniform widths");
    };
    if u.attn == AttnUnit::HeadDim && (u.head_dim_multiple < 2 || !u.head_dim_multiple.is_multiple_of(2)) {
        return refuse("head_dim_multiple", format!("must be even (rotary dims come in pairs), got {}", u.head_dim_multiple));
    }
    let gqa = u.gqa;
    let unit = attn_unit(&s, u);
    let unit_what = match (u.attn, gqa) {
        (AttnUnit::HeadDim, _) => format!("{} heads × `head_dim_multiple` {}", s.n_heads, u.head_dim_multiple),
        (AttnUnit::Head, GqaMode::Groups) => format!("one KV group = {} query heads × head dim {}", s.group_size(), s.head_dim),
        (AttnUnit::Head, GqaMode::Queries) => {
            format!("one query head in each of the {} KV groups × head dim {}", s.n_kv_heads, s.head_dim)
        }
    };
    if mlp_multiple == 0 {
        return refuse("mlp_multiple", "must be at least 1".into());
    }
    let w = match spec {
        TargetSpec::Widths { mha, mlp } => Widths { mha: mha.unwrap_or(s.mha_width()), mlp: mlp.unwrap_or(s.mlp_width) },
        TargetSpec::Ratio(r) => {
            if !(r > 0.0 && r < 1.0) {
                return refuse("ratio", format!("must be strictly between 0 and 1 (fraction of non-embedding parameters to remove), got {r}"));
            }
            // Stated split: attention loses the same fraction as the whole, rounded up to whole
            // units (as TransAct rounds heads up); the MLP width then makes the total exact.
            let mha = ((s.mha_width() as f64 * (1.0 - r)) / unit as f64).ceil().max(1.0) as usize * unit;
            let dense = non_embedding(cfg, &s, Widths { mha: s.mha_width(), mlp: s.mlp_width }, u) as f64;
            let at_zero = non_embedding(cfg, &s, Widths { mha, mlp: 0 }, u) as f64;
            let per_channel = (3 * cfg.hidden_size * cfg.n_layers()) as f64;
            let mlp = ((dense * (1.0 - r) - at_zero) / per_channel / mlp_multiple as f64).round() as i64 * mlp_multiple as i64;
            if mlp < mlp_multiple as i64 {
                return refuse("ratio", format!("{r} removes more than the MLP can give after keeping {mha} attention width; use a smaller ratio"));
            }
            Widths { mha, mlp: (mlp as usize).min(s.mlp_width) }
        }
    };
    if w.mha == 0 || w.mha > s.mha_width() {
        return refuse("mha_width", format!("{} is impossible: it must be between {unit} and the current {}", w.mha, s.mha_width()));
    }
    if w.mha % unit != 0 {
        let lo = w.mha / unit * unit;
        let mode = match (u.attn, gqa) {
            (AttnUnit::HeadDim, _) => "",
            (_, GqaMode::Groups) => ", `gqa` groups",
            (_, GqaMode::Queries) => ", `gqa` queries",
        };
        let nearest = if lo == 0 { format!("{unit}") } else { format!("{lo} or {}", lo + unit) };
        return refuse("mha_width", format!("{} is not a multiple of {unit} ({unit_what}{mode}); nearest possible: {nearest}", w.mha));
    }
    if w.mlp == 0 || w.mlp > s.mlp_width {
        return refuse("mlp_width", format!("{} is impossible: it must be between 1 and the current {}", w.mlp, s.mlp_width));
    }
    if w.mlp % mlp_multiple != 0 {
        return refuse("mlp_width", format!("{} is not a multiple of `mlp_multiple` {mlp_multiple}", w.mlp));
    }
    Ok(w)
}

/// Widths after each of `shots` steps: `next = cur − ⌊(cur − target) / remaining⌋`, attention
/// then rounded up to whole units and the MLP up to `mlp_multiple` (the release's linear schedule).
pub fn schedule(start: Widths, target: Widths, shots: usize, unit: usize, mlp_multiple: usize) -> Vec<Widths> {
    let round_up = |x: usize, m: usize| x.div_ceil(m) * m;
    let mut cur = start;
    (1..=shots)
        .map(|i| {
            let r = shots - i + 1;
            let mha = round_up(cur.mha - (cur.mha - target.mha) / r, unit).min(cur.mha);
            let mlp = round_up(cur.mlp - (cur.mlp - target.mlp) / r, mlp_multiple).min(cur.mlp);
            cur = Widths { mha, mlp };
            cur
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_the_release_table() {
        // TRANSACT.md §3: LLaMA2-7B to a=768, f=1536 in 8 shots.
        let s = schedule(Widths { mha: 4096, mlp: 11008 }, Widths { mha: 768, mlp: 1536 }, 8, 128, 1);
        let mha: Vec<usize> = s.iter().map(|w| w.mha).collect();
        let mlp: Vec<usize> = s.iter().map(|w| w.mlp).collect();
        assert_eq!(mha, [3712, 3328, 2944, 2560, 2176, 1792, 1280, 768]);
        assert_eq!(mlp, [9824, 8640, 7456, 6272, 5088, 3904, 2720, 1536]);
        assert_eq!(schedule(Widths { mha: 576, mlp: 1536 }, Widths { mha: 192, mlp: 768 }, 1, 192, 1), [Widths { mha: 192, mlp: 768 }]);
    }

}
