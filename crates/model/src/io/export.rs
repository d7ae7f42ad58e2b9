//! `convert`: a loaded (possibly pruned) model written as a stock HF directory or a llama.cpp GGUF.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::load::{LoadedModel, SourceFormat};
use super::save_dtype::{Fallback, SaveDtype};
use super::storage::ggml_name;
use super::{gguf_write, hf_write};
use crate::choice::Choice;

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

/// What an export wrote: the weight type (with `auto` resolved and why) and the tensors that a
/// block type did not fit.
#[derive(Debug, Clone, Serialize)]
pub struct Written {
    pub format: &'static str,
    pub dtype: &'static str,
    /// Why `auto` chose `dtype`; none when the type was given.
    pub auto: Option<String>,
    /// Tensors written in another type than the rule asked for, one line per kind.
    pub fallbacks: Vec<String>,
    /// Files written (names relative to the output).
    pub files: Vec<String>,
}

impl Written {
    pub fn new(format: ExportFormat, dtype: SaveDtype, auto: Option<String>, fallbacks: &[Fallback], files: Vec<String>) -> Self {
        // One line per (row width, wanted, used): thirty layers' ffn_down are one fact.
        let mut kinds: Vec<(usize, &str, &str, Vec<&str>)> = Vec::new();
        for f in fallbacks {
            let (wanted, used) = (ggml_name(f.wanted), ggml_name(f.used));
            match kinds.iter_mut().find(|k| k.0 == f.row && k.1 == wanted && k.2 == used) {
                Some(k) => k.3.push(&f.tensor),
                None => kinds.push((f.row, wanted, used, vec![&f.tensor])),
            }
        }
        let fallbacks = kinds
            .into_iter()
            .map(|(row, wanted, used, names)| {
                let which = if names.len() == 1 { names[0].to_string() } else { format!("{} tensors ({} …)", names.len(), names[0]) };
                format!("{which}: rows of {row} fit no {wanted} block, written as {used}")
            })
            .collect();
        Self { format: format.name(), dtype: dtype.name(), auto, fallbacks, files }
    }

    /// One line for a command's summary.
    pub fn describe(&self) -> String {
        let weights: Vec<&str> = self.files.iter().map(String::as_str).filter(|f| f.ends_with(".safetensors") || f.ends_with(".gguf")).collect();
        let mut s = format!("{} in {}", if weights.is_empty() { self.files.join(" + ") } else { weights.join(" + ") }, self.dtype);
        if let Some(a) = &self.auto {
            s.push_str(&format!(" ({a})"));
        }
        for f in &self.fallbacks {
            s.push_str(&format!("; {f}"));
        }
        s
    }
}

/// `dtype` with `auto` resolved for writing `lm` as `format`.
pub fn resolve_dtype(lm: &LoadedModel, format: ExportFormat, dtype: SaveDtype) -> (SaveDtype, Option<String>) {
    dtype.resolve(format, &lm.storage, lm.format == SourceFormat::HfDir)
}

/// Writes `lm` to `out` in the given format; `out` appears only when complete.
pub fn export(lm: &LoadedModel, out: &Path, format: ExportFormat, dtype: SaveDtype, force: bool) -> Result<Written> {
    match format {
        ExportFormat::Hf => hf_write::export_hf(lm, out, dtype, force),
        ExportFormat::Gguf => gguf_write::export_gguf(lm, out, dtype, force),
    }
}
