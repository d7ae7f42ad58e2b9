//! `convert`: a loaded (possibly pruned) model written as a stock HF directory or a llama.cpp GGUF.

use std::path::Path;

use anyhow::Result;

use super::load::LoadedModel;
use super::{gguf_write, hf_write};
use crate::linear::WeightDtype;

/// A file format the model can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// Hugging Face directory: config.json, model.safetensors, tokenizer files.
    Hf,
    /// A single llama.cpp GGUF file.
    Gguf,
}

crate::impl_choice!(ExportFormat {
    Hf => "hf", "Hugging Face directory: config.json, model.safetensors, tokenizer files";
    Gguf => "gguf", "a single llama.cpp GGUF file";
});

/// Writes `lm` to `out` in the given format; `out` appears only when complete.
pub fn export(lm: &LoadedModel, out: &Path, format: ExportFormat, dtype: WeightDtype, force: bool) -> Result<()> {
    match format {
        ExportFormat::Hf => hf_write::export_hf(lm, out, dtype, force),
        ExportFormat::Gguf => gguf_write::export_gguf(lm, out, dtype, force),
    }
}
