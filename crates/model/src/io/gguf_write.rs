//! llama.cpp GGUF writer (candle's GGUF writer underneath): `llama` architecture metadata with
//! `key_length`/`value_length`, Q/K rows in llama.cpp's adjacent-pair order.

use std::path::Path;

use anyhow::{Result, anyhow, bail};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::QTensor;

use super::atomic;
use super::export::{ExportFormat, Written, resolve_dtype};
use super::load::LoadedModel;
use super::save_dtype::SaveDtype;
use super::storage::ggml_name;
use crate::config::{ModelConfig, RopeLayout};
use crate::tokenizer::Tokenizer;
use crate::weights::TensorRole;

/// A per-layer value as a scalar when uniform (what the `llama` loader expects), else an array.
fn per_layer(values: Vec<usize>) -> Value {
    if values.windows(2).all(|w| w[0] == w[1]) {
        Value::U32(values[0] as u32)
    } else {
        Value::Array(values.into_iter().map(|v| Value::U32(v as u32)).collect())
    }
}

fn model_metadata(cfg: &ModelConfig, file_type: u32) -> Result<Vec<(String, Value)>> {
    if cfg.rope_inv_freq.is_some() {
        bail!(
            "this model was pruned inside heads and its KV groups keep different rotary \
             frequencies; llama.cpp's `llama` graph has one frequency table for all heads, so a GGUF \
             would run a different model. Prune whole heads (`attn_unit` head) for a GGUF"
        );
    }
    let head_dim = cfg.layers[0].head_dim;
    if cfg.layers.iter().any(|l| l.head_dim != head_dim) {
        bail!("layers have different head dims; GGUF `llama` needs one key/value length");
    }
    let u = |x: usize| Value::U32(x as u32);
    let layers = &cfg.layers;
    Ok(vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("general.name".into(), Value::String(cfg.name.clone())),
        ("general.file_type".into(), Value::U32(file_type)),
        ("general.quantization_version".into(), Value::U32(2)),
        ("llama.context_length".into(), u(cfg.max_position)),
        ("llama.embedding_length".into(), u(cfg.hidden_size)),
        ("llama.block_count".into(), u(cfg.n_layers())),
        ("llama.feed_forward_length".into(), per_layer(layers.iter().map(|l| l.mlp_width).collect())),
        ("llama.attention.head_count".into(), per_layer(layers.iter().map(|l| l.n_heads).collect())),
        ("llama.attention.head_count_kv".into(), per_layer(layers.iter().map(|l| l.n_kv_heads).collect())),
        ("llama.attention.key_length".into(), u(head_dim)),
        ("llama.attention.value_length".into(), u(head_dim)),
        ("llama.rope.dimension_count".into(), u(head_dim)),
        ("llama.rope.freq_base".into(), Value::F32(cfg.rope_theta as f32)),
        ("llama.attention.layer_norm_rms_epsilon".into(), Value::F32(cfg.rms_eps as f32)),
        ("llama.vocab_size".into(), u(cfg.vocab_size)),
    ])
}

/// `tokenizer.ggml.*` metadata rebuilt from a byte-level BPE `tokenizer.json`.
fn tokenizer_metadata(tok: &Tokenizer) -> Result<Vec<(String, Value)>> {
    let json: serde_json::Value = serde_json::from_str(&tok.to_json()?)?;
    let model = &json["model"];
    if model["type"] != "BPE" {
        bail!("only BPE tokenizers can be written to GGUF (this one is {})", model["type"]);
    }
    let pre = json["pre_tokenizer"].to_string();
    if !pre.contains("ByteLevel") {
        bail!("only byte-level BPE tokenizers can be written to GGUF");
    }
    let n = tok.vocab_size();
    let mut tokens = vec![String::new(); n];
    let mut types = vec![1i32; n];
    let vocab = model["vocab"].as_object().ok_or_else(|| anyhow!("tokenizer.json: model.vocab is not an object"))?;
    for (t, id) in vocab {
        if let Some(slot) = id.as_u64().and_then(|i| tokens.get_mut(i as usize)) {
            *slot = t.clone();
        }
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str())
            && (id as usize) < n
        {
            tokens[id as usize] = content.to_string();
            types[id as usize] = if added["special"].as_bool() == Some(true) { 3 } else { 4 };
        }
    }
    for (i, t) in tokens.iter_mut().enumerate() {
        if t.is_empty() {
            *t = format!("[PAD{i}]");
            types[i] = 5; // unused
        }
    }
    let merges = model["merges"]
        .as_array()
        .ok_or_else(|| anyhow!("tokenizer.json: model.merges is not an array"))?
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Array(p) if p.len() == 2 => {
                Ok(format!("{} {}", p[0].as_str().unwrap_or(""), p[1].as_str().unwrap_or("")))
            }
            other => Err(anyhow!("tokenizer.json: malformed merge {other}")),
        })
        .collect::<Result<Vec<_>>>()?;
    let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    let mut md = vec![
        ("tokenizer.ggml.model".to_string(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(if pre.contains("Digits") { "smollm" } else { "gpt2" }.into())),
        ("tokenizer.ggml.tokens".into(), strings(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types.into_iter().map(Value::I32).collect())),
        ("tokenizer.ggml.merges".into(), strings(merges)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(tok.meta.add_bos)),
    ];
    let ids = [
        ("tokenizer.ggml.bos_token_id", tok.meta.bos),
        ("tokenizer.ggml.eos_token_id", tok.meta.eos),
        ("tokenizer.ggml.padding_token_id", tok.meta.pad),
        ("tokenizer.ggml.unknown_token_id", tok.meta.unk),
    ];
    md.extend(ids.into_iter().filter_map(|(k, v)| Some((k.to_string(), Value::U32(v?)))));
    if let Some(t) = &tok.meta.chat_template {
        md.push(("tokenizer.chat_template".into(), Value::String(t.clone())));
    }
    Ok(md)
}

pub fn export_gguf(lm: &LoadedModel, out: &Path, dtype: SaveDtype, force: bool) -> Result<Written> {
    let mut written = None;
    atomic::write_file(out, force, |tmp| {
        written = Some(write_gguf(lm, tmp, dtype)?);
        Ok(())
    })?;
    let mut w = written.expect("the writer ran");
    w.files = vec![out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()];
    Ok(w)
}

/// Writes `lm` as a GGUF file at `path` (not atomically: callers own the temporary), each tensor
/// in the type [`SaveDtype::tensor_type`] gives it (`auto` resolved against `lm`'s source).
pub fn write_gguf(lm: &LoadedModel, path: &Path, dtype: SaveDtype) -> Result<Written> {
    let m = &lm.model;
    let cfg = &m.config;
    let (dtype, auto) = resolve_dtype(lm, ExportFormat::Gguf, dtype);
    let mut metadata = model_metadata(cfg, dtype.file_type())?;
    metadata.extend(match &lm.gguf_tokenizer_metadata {
        Some(md) => md.clone(),
        None => tokenizer_metadata(&lm.tokenizer)?,
    });
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    let mut tensors = Vec::new();
    let mut fallbacks = Vec::new();
    for role in TensorRole::all(cfg) {
        let t = m.weights.in_layout(cfg, role, RopeLayout::Adjacent)?;
        let (ty, fallback) = dtype.tensor_type(role, cfg);
        fallbacks.extend(fallback);
        let q = QTensor::quantize(&t, ty).map_err(|e| anyhow!("tensor `{}` as {}: {}", role.gguf_name(), ggml_name(ty), super::msg(e)))?;
        tensors.push((role.gguf_name(), q));
    }
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut w, &md, &ts).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    std::io::Write::flush(&mut w)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(Written::new(ExportFormat::Gguf, dtype, auto, &fallbacks, vec![name]))
}
