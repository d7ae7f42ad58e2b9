//! Hugging Face model directories: `config.json` ↔ [`ModelConfig`].

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use serde_json::json;

use crate::config::{LayerShape, ModelConfig, RopeLayout};
use crate::tokenizer::TokenizerMeta;

/// The fields of a `LlamaConfig` we read. Required fields have no default, so a missing one is
/// reported by name.
#[derive(Debug, Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    rope_theta: f64,
    #[serde(default = "default_ctx")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    hidden_act: Option<String>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
    #[serde(rename = "_name_or_path")]
    name_or_path: Option<String>,
    /// transact's own extension (model_type `transact-llama`): per-pair RoPE frequencies.
    transact_rope_inv_freq: Option<Vec<Vec<Vec<f64>>>>,
}

// LlamaConfig's own defaults.
fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_ctx() -> usize {
    2048
}

/// An id that may be written as a number or a list of numbers (first wins).
fn token_id(v: &Option<serde_json::Value>) -> Option<u32> {
    match v.as_ref()? {
        serde_json::Value::Number(n) => n.as_u64().map(|x| x as u32),
        serde_json::Value::Array(a) => a.first()?.as_u64().map(|x| x as u32),
        _ => None,
    }
}

pub struct HfConfigRead {
    pub config: ModelConfig,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// `_name_or_path`, where config.json has one.
    pub name_or_path: Option<String>,
}

pub fn read_config(dir: &Path) -> Result<HfConfigRead> {
    let path = dir.join("config.json");
    let p = path.display();
    let text = std::fs::read_to_string(&path).with_context(|| format!("{p}: cannot read"))?;
    let c: HfConfig = serde_json::from_str(&text).map_err(|e| anyhow!("{p}: {e}"))?;
    match c.model_type.as_deref() {
        Some("llama") => {}
        Some(NATIVE_MODEL_TYPE) if c.transact_rope_inv_freq.is_some() => {}
        Some(other) => bail!("{p}: unsupported architecture `{other}`: only `llama` models are supported"),
        None => bail!("{p}: missing field `model_type`"),
    }
    if let Some(rs) = &c.rope_scaling
        && !rs.is_null()
        && rs.get("rope_type").and_then(|t| t.as_str()) != Some("default")
    {
        bail!("{p}: rope_scaling {rs} is not supported");
    }
    if c.attention_bias || c.mlp_bias {
        bail!("{p}: attention or MLP biases are not supported");
    }
    if let Some(act) = &c.hidden_act
        && act != "silu"
    {
        bail!("{p}: hidden_act `{act}` is not supported (only silu)");
    }
    if c.num_attention_heads == 0 {
        bail!("{p}: num_attention_heads is 0");
    }
    // Bounded before the layers are allocated from it.
    if !(1..=crate::config::MAX_LAYERS).contains(&c.num_hidden_layers) {
        bail!("{p}: num_hidden_layers is {} (1 to {})", c.num_hidden_layers, crate::config::MAX_LAYERS);
    }
    let shape = LayerShape {
        n_heads: c.num_attention_heads,
        n_kv_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
        head_dim: c.head_dim.unwrap_or(c.hidden_size / c.num_attention_heads),
        mlp_width: c.intermediate_size,
    };
    let config = ModelConfig {
        name: c
            .name_or_path
            .clone()
            .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "llama".into()),
        hidden_size: c.hidden_size,
        vocab_size: c.vocab_size,
        layers: vec![shape; c.num_hidden_layers],
        rope_theta: c.rope_theta,
        rope_layout: RopeLayout::HalfSplit,
        rms_eps: c.rms_norm_eps,
        tied_embeddings: c.tie_word_embeddings,
        max_position: c.max_position_embeddings,
        rope_inv_freq: c.transact_rope_inv_freq.clone(),
    };
    config.validate().map_err(|e| anyhow!("{p}: {e}"))?;
    Ok(HfConfigRead { config, bos: token_id(&c.bos_token_id), eos: token_id(&c.eos_token_id), name_or_path: c.name_or_path })
}

/// Model type of transact's own directory format: HF files plus per-pair RoPE frequencies.
/// Stock `transformers` refuses the unknown type instead of silently running another model.
pub const NATIVE_MODEL_TYPE: &str = "transact-llama";

/// `config.json` for stock `transformers` (≥ 4.45 reads `head_dim`). Fails for non-uniform layers
/// and for head-dim-pruned models, which `LlamaConfig` cannot express, unless `native` asks for
/// transact's own format.
pub fn config_json(cfg: &ModelConfig, meta: &TokenizerMeta, torch_dtype: &str, native: bool) -> Result<serde_json::Value> {
    if cfg.rope_inv_freq.is_some() && !native {
        bail!(
            "this model was pruned inside heads and keeps each rotary pair's original frequency; \
             a stock Hugging Face LlamaConfig recomputes frequencies from head_dim and would run a \
             different model. Prune whole heads (`attn_unit` head) for a stock-loadable model, or keep this \
             one in transact's own format (prune writes it, model_type `{NATIVE_MODEL_TYPE}`)"
        );
    }
    let s = cfg.uniform_shape().ok_or_else(|| {
        anyhow!(
            "layers have different shapes; a stock Hugging Face LlamaConfig needs the same \
             heads, head dim and MLP width in every layer"
        )
    })?;
    Ok(json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg.hidden_size,
        "intermediate_size": s.mlp_width,
        "num_hidden_layers": cfg.n_layers(),
        "num_attention_heads": s.n_heads,
        "num_key_value_heads": s.n_kv_heads,
        "head_dim": s.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position,
        "rms_norm_eps": cfg.rms_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": null,
        "attention_bias": false,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "pretraining_tp": 1,
        "tie_word_embeddings": cfg.tied_embeddings,
        "vocab_size": cfg.vocab_size,
        "bos_token_id": meta.bos,
        "eos_token_id": meta.eos,
        "pad_token_id": meta.pad,
        "torch_dtype": torch_dtype,
        "use_cache": true,
        "transformers_version": "4.45.0",
    }))
    .map(|mut v| {
        if let Some(f) = &cfg.rope_inv_freq {
            v["model_type"] = NATIVE_MODEL_TYPE.into();
            v["architectures"] = serde_json::json!(["TransactLlamaForCausalLM"]);
            v["transact_rope_inv_freq"] = serde_json::json!(f);
        }
        v
    })
}

/// `tokenizer_config.json`: a plain fast tokenizer, with the BOS policy stated explicitly so
/// `transformers` does not fall back to LlamaTokenizer's default of prepending BOS.
pub fn tokenizer_config_json(meta: &TokenizerMeta, token: impl Fn(Option<u32>) -> Option<String>) -> serde_json::Value {
    json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        // Without this, transformers 4.x returns token_type_ids, which LlamaForCausalLM rejects.
        "model_input_names": ["input_ids", "attention_mask"],
        "add_bos_token": meta.add_bos,
        "add_eos_token": false,
        "bos_token": token(meta.bos),
        "eos_token": token(meta.eos),
        "pad_token": token(meta.pad),
        "unk_token": token(meta.unk),
        "chat_template": meta.chat_template,
        "clean_up_tokenization_spaces": false,
        "model_max_length": 1_000_000_000_000_000_000u64,
    })
}

/// `special_tokens_map.json`, as `save_pretrained` writes it beside the tokenizer.
pub fn special_tokens_map_json(meta: &TokenizerMeta, token: impl Fn(Option<u32>) -> Option<String>) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (k, id) in [("bos_token", meta.bos), ("eos_token", meta.eos), ("pad_token", meta.pad), ("unk_token", meta.unk)] {
        if let Some(t) = token(id) {
            m.insert(k.into(), serde_json::Value::String(t));
        }
    }
    serde_json::Value::Object(m)
}

pub fn generation_config_json(meta: &TokenizerMeta) -> serde_json::Value {
    json!({ "bos_token_id": meta.bos, "eos_token_id": meta.eos, "transformers_version": "4.45.0" })
}
