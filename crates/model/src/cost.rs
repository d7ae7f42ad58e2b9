//! What a model costs: parameters, FLOPs per token and KV-cache bytes per token, in total.

use serde::Serialize;

use crate::config::{LayerShape, ModelConfig};

#[derive(Debug, Clone, Serialize)]
pub struct ModelCost {
    /// All parameters (a tied LM head counted once).
    pub params_total: u64,
    /// Without the token embedding and a separate LM head (the convention of scaling-law papers).
    pub params_non_embedding: u64,
    pub params_attention: u64,
    pub params_mlp: u64,
    /// Multiply-adds ×2 to produce one token's logits when it attends to `context` tokens.
    pub flops_per_token: u64,
    /// The LM head's share of `flops_per_token`. A prefill that keeps only the last position's
    /// logits computes it once, not per token ([`ModelCost::prefill_flops_per_token`]).
    pub flops_lm_head: u64,
    pub context: usize,
    /// Keys + values of one token over all layers, in f32 and in f16.
    pub kv_bytes_per_token_f32: u64,
    pub kv_bytes_per_token_f16: u64,
}

fn layer_attention_params(h: u64, s: &LayerShape) -> u64 {
    let (q, kv) = (s.mha_width() as u64, s.kv_width() as u64);
    h * q + 2 * h * kv + q * h
}

fn layer_mlp_params(h: u64, s: &LayerShape) -> u64 {
    3 * h * s.mlp_width as u64
}

impl ModelCost {
    pub fn new(cfg: &ModelConfig, context: usize) -> Self {
        let h = cfg.hidden_size as u64;
        let v = cfg.vocab_size as u64;
        let attn: u64 = cfg.layers.iter().map(|s| layer_attention_params(h, s)).sum();
        let mlp: u64 = cfg.layers.iter().map(|s| layer_mlp_params(h, s)).sum();
        let norms = (2 * cfg.n_layers() as u64 + 1) * h;
        let embed = v * h;
        let lm_head = if cfg.tied_embeddings { 0 } else { v * h };
        // Q·Kᵀ and att·V: 2 multiply-adds per head dim per attended token.
        let attn_scores: u64 =
            cfg.layers.iter().map(|s| 2 * 2 * (s.mha_width() as u64) * context as u64).sum();
        Self {
            params_total: attn + mlp + norms + embed + lm_head,
            params_non_embedding: attn + mlp + norms,
            params_attention: attn,
            params_mlp: mlp,
            flops_per_token: 2 * (attn + mlp + v * h) + attn_scores,
            flops_lm_head: 2 * v * h,
            context,
            kv_bytes_per_token_f32: Self::kv_bytes_per_token(cfg, crate::kv_cache::KvDtype::F32),
            kv_bytes_per_token_f16: Self::kv_bytes_per_token(cfg, crate::kv_cache::KvDtype::F16),
        }
    }

    /// Keys + values of one token over all layers in a cache of `dtype`, scales included.
    pub fn kv_bytes_per_token(cfg: &ModelConfig, dtype: crate::kv_cache::KvDtype) -> u64 {
        cfg.layers.iter().map(|s| (2 * s.n_kv_heads * dtype.bytes_per_vector(s.head_dim)) as u64).sum()
    }

    /// FLOPs per token of a `t`-token prefill that returns the last position's logits: every
    /// layer for every token, each token attending to `t/2` keys on average, and the LM head once.
    pub fn prefill_flops_per_token(cfg: &ModelConfig, t: usize) -> f64 {
        let st = Self::new(cfg, t / 2);
        (st.flops_per_token - st.flops_lm_head) as f64 + st.flops_lm_head as f64 / t as f64
    }
}

/// `123.4M`-style counts for tables.
pub fn human(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}G", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}
