//! Hugging Face directories as stock `transformers` writes them: `config.json` (with `head_dim`),
//! `model.safetensors` with Q/K rows in HF's pair order, the tokenizer files.

use std::path::Path;

use anyhow::Result;

use super::export::{ExportFormat, Written, resolve_dtype};
use super::load::LoadedModel;
use super::save_dtype::SaveDtype;
use super::{atomic, hf_config, safetensors};
use crate::config::{ModelConfig, RopeLayout};
use crate::tokenizer::Tokenizer;
use crate::weights::TensorRole;

/// Writes `lm` as the HF directory `out`, which appears only when complete.
pub fn export_hf(lm: &LoadedModel, out: &Path, dtype: SaveDtype, force: bool) -> Result<Written> {
    // Check representability before creating anything.
    hf_config::config_json(&lm.model.config, &lm.tokenizer.meta, "float32", false)?;
    resolve_dtype(lm, ExportFormat::Hf, dtype).0.hf()?;
    let mut written = None;
    atomic::write_dir(out, force, |tmp| {
        written = Some(write_hf(lm, tmp, dtype)?);
        Ok(())
    })?;
    Ok(written.expect("the writer ran"))
}

/// Writes the HF files of `lm` into the existing directory `dir` (weights in shards of at most
/// 5 GB, as `save_pretrained`); a head-dim-pruned model goes into transact's own variant (see
/// [`hf_config::NATIVE_MODEL_TYPE`]).
pub fn write_hf(lm: &LoadedModel, dir: &Path, dtype: SaveDtype) -> Result<Written> {
    write_hf_sharded(lm, dir, dtype, safetensors::MAX_SHARD_BYTES)
}

/// [`write_hf`] with shards of at most `max_shard_bytes`.
pub fn write_hf_sharded(lm: &LoadedModel, dir: &Path, dtype: SaveDtype, max_shard_bytes: u64) -> Result<Written> {
    let (dtype, auto) = resolve_dtype(lm, ExportFormat::Hf, dtype);
    let (st_dtype, torch_dtype) = dtype.hf()?;
    let m = &lm.model;
    let mut tensors = Vec::new();
    for role in TensorRole::all(&m.config) {
        let t = m.weights.in_layout(&m.config, role, RopeLayout::HalfSplit)?;
        tensors.push((role.hf_name(), safetensors::LazyTensor::from_tensor(t, st_dtype)?));
    }
    let mut files = safetensors::write_model(dir, tensors, max_shard_bytes)?;
    files.extend(write_hf_metadata(&m.config, &lm.tokenizer, torch_dtype, lm.storage.hub_id.as_deref(), dir)?);
    Ok(Written::new(ExportFormat::Hf, dtype, auto, &[], files))
}

/// The HF directory's JSON files and tokenizer, for `cfg` with weights in `torch_dtype`.
/// `hub_id` names the model it descends from (`_name_or_path`, as `save_pretrained` writes it), so
/// a model card written later still knows its base model.
pub fn write_hf_metadata(cfg: &ModelConfig, tokenizer: &Tokenizer, torch_dtype: &str, hub_id: Option<&str>, dir: &Path) -> Result<Vec<String>> {
    let meta = &tokenizer.meta;
    let mut config = hf_config::config_json(cfg, meta, torch_dtype, true)?;
    if let (Some(id), Some(obj)) = (hub_id, config.as_object_mut()) {
        obj.insert("_name_or_path".into(), serde_json::Value::String(id.into()));
    }
    let tok = |id: Option<u32>| id.and_then(|i| tokenizer.token(i));
    let tokenizer_config = hf_config::tokenizer_config_json(meta, tok);
    let json = |v: &serde_json::Value| serde_json::to_string_pretty(v).expect("JSON values serialize");
    std::fs::write(dir.join("config.json"), json(&config))?;
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_json()?)?;
    std::fs::write(dir.join("tokenizer_config.json"), json(&tokenizer_config))?;
    std::fs::write(dir.join("generation_config.json"), json(&hf_config::generation_config_json(meta)))?;
    std::fs::write(dir.join("special_tokens_map.json"), json(&hf_config::special_tokens_map_json(meta, tok)))?;
    Ok(["config.json", "generation_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"].map(String::from).to_vec())
}
