//! `convert`: write a loaded (possibly pruned) model as a stock HF directory or a llama.cpp GGUF.

use std::path::Path;

use anyhow::{Result, bail};
use candle_core::Tensor;

use super::load::LoadedModel;
use super::{atomic, gguf_export, hf_dir, safetensors};
use crate::model::config::{ModelConfig, RopeLayout};
use crate::model::rope::permute_rows;
use crate::model::tokenizer::Tokenizer;
use crate::model::weights::TensorRole;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// Hugging Face directory: config.json, model.safetensors, tokenizer files.
    Hf,
    /// A single llama.cpp GGUF file.
    Gguf,
}

/// The file types an export can write are the types the forward can run in.
pub use crate::model::linear::WeightDtype as ExportDtype;

/// The safetensors dtype and `torch_dtype` name of an HF export in `dtype`.
pub fn hf_dtype(dtype: ExportDtype) -> Result<(::safetensors::Dtype, &'static str)> {
    Ok(match dtype {
        ExportDtype::F32 => (::safetensors::Dtype::F32, "float32"),
        ExportDtype::F16 => (::safetensors::Dtype::F16, "float16"),
        ExportDtype::Bf16 => (::safetensors::Dtype::BF16, "bfloat16"),
        ExportDtype::Q8_0 => bail!("q8_0 is a GGUF block type; for a Hugging Face directory use f32, f16 or bf16"),
    })
}

/// The weight of `role` with Q/K rows in the pair layout `to`.
pub(crate) fn weight_in_layout(lm: &LoadedModel, role: TensorRole, to: RopeLayout) -> Result<Tensor> {
    let m = &lm.model;
    let Some(t) = m.weights.get(role) else { bail!("model has no tensor for {role:?}") };
    let heads = match role {
        TensorRole::Q(l) => m.config.layers[l].n_heads,
        TensorRole::K(l) => m.config.layers[l].n_kv_heads,
        _ => return Ok(t.clone()),
    };
    if m.config.rope_layout == to { Ok(t.clone()) } else { Ok(permute_rows(t, heads, to)?) }
}

/// Writes `lm` to `out` in the given format; `out` appears only when complete.
pub fn export(lm: &LoadedModel, out: &Path, format: ExportFormat, dtype: ExportDtype, force: bool) -> Result<()> {
    match format {
        ExportFormat::Hf => export_hf(lm, out, dtype, force),
        ExportFormat::Gguf => gguf_export::export_gguf(lm, out, dtype, force),
    }
}

pub fn export_hf(lm: &LoadedModel, out: &Path, dtype: ExportDtype, force: bool) -> Result<()> {
    // Check representability before creating anything.
    hf_dir::config_json(&lm.model.config, &lm.tokenizer.meta, "float32", false)?;
    atomic::write_dir(out, force, |tmp| write_hf(lm, tmp, dtype))
}

/// Writes the HF files of `lm` into the existing directory `dir`; a head-dim-pruned model goes
/// into transact's own variant (see [`hf_dir::NATIVE_MODEL_TYPE`]).
pub fn write_hf(lm: &LoadedModel, dir: &Path, dtype: ExportDtype) -> Result<()> {
    let (st_dtype, torch_dtype) = hf_dtype(dtype)?;
    let cfg = &lm.model.config;
    let mut tensors = Vec::new();
    for role in TensorRole::all(cfg) {
        let t = weight_in_layout(lm, role, RopeLayout::HalfSplit)?;
        tensors.push((role.hf_name(), safetensors::LazyView::new(t, st_dtype)?));
    }
    safetensors::write(&dir.join("model.safetensors"), tensors)?;
    write_hf_metadata(cfg, &lm.tokenizer, torch_dtype, dir)
}

/// The HF directory's JSON files and tokenizer, for `cfg` with weights in `torch_dtype`.
pub fn write_hf_metadata(cfg: &ModelConfig, tokenizer: &Tokenizer, torch_dtype: &str, dir: &Path) -> Result<()> {
    let meta = &tokenizer.meta;
    let config = hf_dir::config_json(cfg, meta, torch_dtype, true)?;
    let tok = |id: Option<u32>| id.and_then(|i| tokenizer.token(i));
    let tokenizer_config = hf_dir::tokenizer_config_json(meta, tok);
    let json = |v: &serde_json::Value| serde_json::to_string_pretty(v).expect("JSON values serialize");
    std::fs::write(dir.join("config.json"), json(&config))?;
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_json()?)?;
    std::fs::write(dir.join("tokenizer_config.json"), json(&tokenizer_config))?;
    std::fs::write(dir.join("generation_config.json"), json(&hf_dir::generation_config_json(meta)))?;
    Ok(())
}
