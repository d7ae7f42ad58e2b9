//! Model configuration with per-layer shapes.
//!
//! Stock checkpoints are uniform, but pruning produces layers whose head counts, head dims and
//! MLP widths may differ, so every layer carries its own [`LayerShape`].

use serde::{Deserialize, Serialize};

/// Bounds on what a config may declare, far above any LLaMA-family model (Llama 3 405B: 126
/// layers, hidden 16384, 128 heads, MLP 53248, vocab 128256). A file beyond them is lying, and
/// checking them first keeps every product of dims below overflow.
pub const MAX_LAYERS: usize = 1 << 12;
const MAX_WIDTH: usize = 1 << 20;
const MAX_HEADS: usize = 1 << 12;
const MAX_HEAD_DIM: usize = 1 << 12;
const MAX_VOCAB: usize = 1 << 23;
const MAX_POSITION: usize = 1 << 26;

/// How rotary pairs are laid out inside a head's Q/K rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RopeLayout {
    /// Pairs (2i, 2i+1): llama.cpp's "normal" mode, the order GGUF files store.
    Adjacent,
    /// Pairs (i, i + d/2): Hugging Face `rotate_half`.
    HalfSplit,
}

impl RopeLayout {
    /// The two dims of rotary pair `i` in a head of `d` dims: the one place the layouts differ.
    pub fn pair(self, i: usize, d: usize) -> [usize; 2] {
        match self {
            RopeLayout::Adjacent => [2 * i, 2 * i + 1],
            RopeLayout::HalfSplit => [i, i + d / 2],
        }
    }

    /// The rotary pair whose first dim is `j` in a head of `d` dims, if `j` is a first dim.
    pub fn pair_of(self, j: usize, d: usize) -> Option<usize> {
        (0..d / 2).find(|&i| self.pair(i, d)[0] == j)
    }
}

/// The transitional widths of one decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerShape {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (GQA: query head h reads KV head h / (n_heads / n_kv_heads)).
    pub n_kv_heads: usize,
    /// Dimension of every Q, K and V head.
    pub head_dim: usize,
    /// SwiGLU intermediate width.
    pub mlp_width: usize,
}

impl LayerShape {
    /// Width of the attention output before `o_proj` (the paper's `mha_width`).
    pub fn mha_width(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_width(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Query heads that share one KV head.
    pub fn group_size(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// The rows of the given heads in a Q, K or V projection (columns of O), in order.
    pub fn head_rows(&self, heads: &[usize]) -> Vec<usize> {
        let d = self.head_dim;
        heads.iter().flat_map(|h| h * d..(h + 1) * d).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub name: String,
    pub hidden_size: usize,
    pub vocab_size: usize,
    pub layers: Vec<LayerShape>,
    pub rope_theta: f64,
    pub rope_layout: RopeLayout,
    pub rms_eps: f64,
    /// LM head shares the token embedding matrix.
    pub tied_embeddings: bool,
    pub max_position: usize,
    /// Rotary inverse frequencies per layer, per KV group, per kept pair, when head-dim pruning
    /// kept pairs whose original frequencies no longer follow from `head_dim`. `None`: the
    /// standard θ^(−2i/head_dim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_inv_freq: Option<Vec<Vec<Vec<f64>>>>,
}

impl ModelConfig {
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// The shape shared by every layer, or `None` when layers differ.
    pub fn uniform_shape(&self) -> Option<LayerShape> {
        let first = *self.layers.first()?;
        self.layers.iter().all(|l| *l == first).then_some(first)
    }

    /// The inverse frequencies of KV group `g` in layer `l`.
    pub fn inv_freq(&self, l: usize, g: usize) -> Vec<f64> {
        match &self.rope_inv_freq {
            Some(f) => f[l][g].clone(),
            None => {
                let d = self.layers[l].head_dim;
                (0..d / 2).map(|i| self.rope_theta.powf(-2.0 * i as f64 / d as f64)).collect()
            }
        }
    }

    /// Checks internal consistency; called by every loader so a bad file never reaches the forward.
    pub fn validate(&self) -> Result<(), String> {
        let within = |what: &str, v: usize, max: usize| {
            if (1..=max).contains(&v) { Ok(()) } else { Err(format!("{what} is {v} (1 to {max})")) }
        };
        within("the hidden size", self.hidden_size, MAX_WIDTH)?;
        within("the vocabulary size", self.vocab_size, MAX_VOCAB)?;
        within("the number of layers", self.layers.len(), MAX_LAYERS)?;
        within("the context length", self.max_position, MAX_POSITION)?;
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(format!("the RoPE base (rope theta) is {}; it must be a finite number above 1", self.rope_theta));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0 && self.rms_eps < 1.0) {
            return Err(format!("the RMSNorm epsilon is {}; it must lie in (0, 1)", self.rms_eps));
        }
        for (i, l) in self.layers.iter().enumerate() {
            within(&format!("layer {i}: the number of heads"), l.n_heads, MAX_HEADS)?;
            within(&format!("layer {i}: the number of KV heads"), l.n_kv_heads, MAX_HEADS)?;
            within(&format!("layer {i}: the head dim"), l.head_dim, MAX_HEAD_DIM)?;
            within(&format!("layer {i}: the MLP width"), l.mlp_width, MAX_WIDTH)?;
            if l.n_heads % l.n_kv_heads != 0 {
                return Err(format!(
                    "layer {i}: {} query heads are not divisible by {} KV heads",
                    l.n_heads, l.n_kv_heads
                ));
            }
            if l.head_dim % 2 != 0 {
                return Err(format!("layer {i}: head dim {} is odd; RoPE needs pairs", l.head_dim));
            }
        }
        if let Some(f) = &self.rope_inv_freq {
            let ok = f.len() == self.layers.len()
                && f.iter().zip(&self.layers).all(|(g, s)| g.len() == s.n_kv_heads && g.iter().all(|p| p.len() * 2 == s.head_dim))
                && f.iter().flatten().flatten().all(|x| x.is_finite() && *x >= 0.0);
            if !ok {
                return Err("rope_inv_freq does not match the layer shapes".into());
            }
        }
        Ok(())
    }
}
