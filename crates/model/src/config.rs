//! Model configuration with per-layer shapes.
//!
//! Stock checkpoints are uniform, but pruning produces layers whose head counts, head dims and
//! MLP widths may differ, so every layer carries its own [`LayerShape`].

use serde::{Deserialize, Serialize};

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
        if self.hidden_size == 0 || self.vocab_size == 0 {
            return Err("hidden size and vocab size must be positive".into());
        }
        if self.layers.is_empty() {
            return Err("the model has no layers".into());
        }
        // Written to reject NaN too.
        if self.rope_theta.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
            || self.rms_eps.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
        {
            return Err(format!(
                "rope theta ({}) and RMSNorm eps ({}) must be positive",
                self.rope_theta, self.rms_eps
            ));
        }
        for (i, l) in self.layers.iter().enumerate() {
            if l.n_heads == 0 || l.n_kv_heads == 0 || l.head_dim == 0 || l.mlp_width == 0 {
                return Err(format!("layer {i}: zero-sized shape {l:?}"));
            }
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
                && f.iter().zip(&self.layers).all(|(g, s)| g.len() == s.n_kv_heads && g.iter().all(|p| p.len() * 2 == s.head_dim));
            if !ok {
                return Err("rope_inv_freq does not match the layer shapes".into());
            }
        }
        Ok(())
    }
}
