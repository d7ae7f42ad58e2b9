//! Hugging Face directories as stock `transformers` writes them: `config.json` (with `head_dim`),
//! `model.safetensors` with Q/K rows in HF's pair order, the tokenizer files.

use std::path::Path;

use anyhow::{Result, bail};

use super::load::LoadedModel;
use super::{atomic, hf_config, safetensors};
use crate::config::{ModelConfig, RopeLayout};
use crate::linear::WeightDtype;
use crate::tokenizer::Tokenizer;
use crate::weights::TensorRole;

/// The safetensors dtype and `torch_dtype` name of an HF export in `dtype`.
pub fn hf_dtype(dtype: WeightDtype) -> Result<(::safetensors::Dtype, &'static str)> {
    Ok(match dtype {
        WeightDtype::F32 => (::safetensors::Dtype::F32, "float32"),
        WeightDtype::F16 => (::safetensors::Dtype::F16, "float16"),
        WeightDtype::Bf16 => (::safetensors::Dtype::BF16, "bfloat16"),
        WeightDtype::Q8_0 => bail!("q8_0 is a GGUF block type; for a Hugging Face directory use f32, f16 or bf16"),
    })
}

/// Writes `lm` as the HF directory `out`, which appears only when complete.
pub fn export_hf(lm: &LoadedModel, out: &Path, dtype: WeightDtype, force: bool) -> Result<()> {
    // Check representability before creating anything.
    hf_config::config_json(&lm.model.config, &lm.tokenizer.meta, "float32", false)?;
    atomic::write_dir(out, force, |tmp| write_hf(lm, tmp, dtype))
}

/// Writes the HF files of `lm` into the existing directory `dir`; a head-dim-pruned model goes
/// into transact's own variant (see [`hf_config::NATIVE_MODEL_TYPE`]).
pub fn write_hf(lm: &LoadedModel, dir: &Path, dtype: WeightDtype) -> Result<()> {
    let (st_dtype, torch_dtype) = hf_dtype(dtype)?;
    let m = &lm.model;
    let mut tensors = Vec::new();
    for role in TensorRole::all(&m.config) {
        let t = m.weights.in_layout(&m.config, role, RopeLayout::HalfSplit)?;
        tensors.push((role.hf_name(), safetensors::LazyTensor::from_tensor(t, st_dtype)?));
    }
    safetensors::write(&dir.join("model.safetensors"), tensors, None)?;
    write_hf_metadata(&m.config, &lm.tokenizer, torch_dtype, dir)
}

/// The HF directory's JSON files and tokenizer, for `cfg` with weights in `torch_dtype`.
pub fn write_hf_metadata(cfg: &ModelConfig, tokenizer: &Tokenizer, torch_dtype: &str, dir: &Path) -> Result<()> {
    let meta = &tokenizer.meta;
    let config = hf_config::config_json(cfg, meta, torch_dtype, true)?;
    let tok = |id: Option<u32>| id.and_then(|i| tokenizer.token(i));
    let tokenizer_config = hf_config::tokenizer_config_json(meta, tok);
    let json = |v: &serde_json::Value| serde_json::to_string_pretty(v).expect("JSON values serialize");
    std::fs::write(dir.join("config.json"), json(&config))?;
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_json()?)?;
    std::fs::write(dir.join("tokenizer_config.json"), json(&tokenizer_config))?;
    std::fs::write(dir.join("generation_config.json"), json(&hf_config::generation_config_json(meta)))?;
    Ok(())
}
