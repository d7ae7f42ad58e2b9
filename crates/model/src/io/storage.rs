//! How a checkpoint is stored: each tensor's type and bytes on disk, the files, and the model's
//! identity on the Hugging Face Hub. `inspect` and `compare` show it; `--dtype auto` writes in
//! the source's type; a model card names its base model.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{Content, Value};
use serde::Serialize;

use super::safetensors::SafetensorsFiles;
use crate::config::ModelConfig;
use crate::weights::TensorRole;

/// One weight tensor as stored.
#[derive(Debug, Clone, Serialize)]
pub struct StoredTensor {
    pub name: String,
    /// `embeddings`, `attention`, `mlp`, `norms` or `lm head`.
    pub group: &'static str,
    /// llama.cpp's type name (`F32`, `BF16`, `Q4_1`, `Q6_K`, …).
    pub dtype: String,
    pub elements: u64,
    pub bytes: u64,
}

/// The stored form of a checkpoint.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Storage {
    /// GGUF `general.file_type` (llama.cpp's `LLAMA_FTYPE_*`), when the file states one.
    pub file_type: Option<u32>,
    pub tensors: Vec<StoredTensor>,
    /// The model's Hub id (`organization/name`) where the file says it, for a card's `base_model`.
    pub hub_id: Option<String>,
    /// The license the file states (GGUF `general.license`).
    pub license: Option<String>,
}

/// A file of an output and its size.
#[derive(Debug, Clone, Serialize)]
pub struct FileBytes {
    pub name: String,
    pub bytes: u64,
}

/// One row of [`Storage::groups`]: a tensor group's types and bytes.
#[derive(Debug, Clone, Serialize)]
pub struct GroupStorage {
    pub group: &'static str,
    /// `type × count`, most elements first (`Q4_1 ×90, Q8_0 ×1`).
    pub dtypes: String,
    pub tensors: usize,
    pub elements: u64,
    pub bytes: u64,
}

/// llama.cpp's name of a GGML type.
pub fn ggml_name(t: GgmlDType) -> &'static str {
    use GgmlDType::*;
    match t {
        F32 => "F32",
        F16 => "F16",
        BF16 => "BF16",
        Q4_0 => "Q4_0",
        Q4_1 => "Q4_1",
        Q5_0 => "Q5_0",
        Q5_1 => "Q5_1",
        Q8_0 => "Q8_0",
        Q8_1 => "Q8_1",
        Q2K => "Q2_K",
        Q3K => "Q3_K",
        Q4K => "Q4_K",
        Q5K => "Q5_K",
        Q6K => "Q6_K",
        Q8K => "Q8_K",
    }
}

/// Bytes of `elements` values of `t` (whole blocks).
pub fn ggml_bytes(t: GgmlDType, elements: u64) -> u64 {
    elements / t.block_size() as u64 * t.type_size() as u64
}

impl TensorRole {
    /// The group `inspect` reports this tensor under.
    pub fn group(self) -> &'static str {
        use TensorRole::*;
        match self {
            Embed => "embeddings",
            LmHead => "lm head",
            FinalNorm | AttnNorm(_) | MlpNorm(_) => "norms",
            Q(_) | K(_) | V(_) | O(_) => "attention",
            Gate(_) | Up(_) | Down(_) => "mlp",
        }
    }
}

impl Storage {
    /// A GGUF file's tensors (the roles of `cfg`) and identity.
    pub fn of_gguf(content: &Content, cfg: &ModelConfig) -> Self {
        let tensors = TensorRole::all(cfg)
            .into_iter()
            .filter_map(|role| {
                let name = role.gguf_name();
                let info = content.tensor_infos.get(&name)?;
                let elements = info.shape.elem_count() as u64;
                Some(StoredTensor { group: role.group(), dtype: ggml_name(info.ggml_dtype).into(), elements, bytes: ggml_bytes(info.ggml_dtype, elements), name })
            })
            .collect();
        let md = &content.metadata;
        let s = |k: &str| match md.get(k) {
            Some(Value::String(v)) if !v.trim().is_empty() => Some(v.trim().to_string()),
            _ => None,
        };
        let file_type = match md.get("general.file_type") {
            Some(Value::U32(x)) => Some(*x),
            Some(Value::I32(x)) => u32::try_from(*x).ok(),
            _ => None,
        };
        // Only what the file states as its source: `general.name`/`basename` are often a training
        // run's internal name (the bundled SmolLM2 says `smollm2-135M-8k-lc100k-mix1-ep2`).
        let hub_id = s("general.source.huggingface.repository")
            .or_else(|| s("general.source.url").and_then(|u| u.strip_prefix("https://huggingface.co/").map(|r| r.trim_end_matches('/').to_string())));
        Self { file_type, tensors, hub_id: hub_id.filter(|id| is_hub_id(id)), license: s("general.license") }
    }

    /// A Hugging Face directory's tensors (the roles of `cfg`) and identity (`_name_or_path` of
    /// its config.json, as [`super::hf_config::read_config`] read it, when that names a Hub model).
    pub fn of_hf(dir: &Path, files: &SafetensorsFiles, cfg: &ModelConfig, name_or_path: Option<&str>) -> Self {
        let tensors = TensorRole::all(cfg)
            .into_iter()
            .filter_map(|role| {
                let name = role.hf_name();
                let info = files.info(&name).ok()?;
                let elements = info.shape.iter().product::<usize>() as u64;
                let dtype = format!("{:?}", info.dtype);
                let bytes = (info.data_offsets.1 - info.data_offsets.0) as u64;
                Some(StoredTensor { group: role.group(), dtype, elements, bytes, name })
            })
            .collect();
        let hub_id = name_or_path.filter(|id| is_hub_id(id) && !dir.join(id).exists()).map(str::to_string);
        Self { file_type: None, tensors, hub_id, license: None }
    }

    /// Names the model `id` on the Hub when given (a user's `--base-model` over what the file says).
    pub fn name_hub_id(&mut self, id: Option<&str>) {
        if let Some(id) = id {
            self.hub_id = Some(id.to_string());
        }
    }

    /// The type holding most of the non-norm weights (what "the source's type" means).
    pub fn dominant_dtype(&self) -> Option<&str> {
        let mut by: HashMap<&str, u64> = HashMap::new();
        for t in self.tensors.iter().filter(|t| t.group != "norms") {
            *by.entry(t.dtype.as_str()).or_default() += t.elements;
        }
        by.into_iter().max_by_key(|(name, n)| (*n, std::cmp::Reverse(*name))).map(|(name, _)| name)
    }

    /// Types and bytes per tensor group, in the order embeddings, attention, mlp, norms, lm head.
    pub fn groups(&self) -> Vec<GroupStorage> {
        ["embeddings", "attention", "mlp", "norms", "lm head"]
            .into_iter()
            .filter_map(|g| {
                let ts: Vec<&StoredTensor> = self.tensors.iter().filter(|t| t.group == g).collect();
                if ts.is_empty() {
                    return None;
                }
                let mut types: Vec<(&str, usize, u64)> = Vec::new();
                for t in &ts {
                    match types.iter_mut().find(|(d, _, _)| *d == t.dtype) {
                        Some(e) => {
                            e.1 += 1;
                            e.2 += t.elements;
                        }
                        None => types.push((&t.dtype, 1, t.elements)),
                    }
                }
                types.sort_by_key(|t| std::cmp::Reverse(t.2));
                Some(GroupStorage {
                    group: g,
                    dtypes: types.iter().map(|(d, n, _)| format!("{d} ×{n}")).collect::<Vec<_>>().join(", "),
                    tensors: ts.len(),
                    elements: ts.iter().map(|t| t.elements).sum(),
                    bytes: ts.iter().map(|t| t.bytes).sum(),
                })
            })
            .collect()
    }
}

/// Why `id` cannot be a model card's `base_model`, if it cannot.
pub fn hub_id_problem(id: &str) -> Option<String> {
    (!is_hub_id(id)).then(|| format!("`{id}` is not a Hub id of the form organization/name"))
}

/// `organization/name` with the characters the Hub allows.
pub fn is_hub_id(id: &str) -> bool {
    let ok = |s: &str| !s.is_empty() && s.len() <= 96 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && !s.starts_with(['.', '-']);
    matches!(id.split('/').collect::<Vec<_>>().as_slice(), [org, name] if ok(org) && ok(name))
}

/// Every regular file of an output (a directory's files, sorted, or the file itself) with its bytes.
pub fn files_on_disk(path: &Path) -> Vec<FileBytes> {
    if path.is_dir() {
        let mut v: Vec<FileBytes> = std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                m.is_file().then(|| FileBytes { name: e.file_name().to_string_lossy().into_owned(), bytes: m.len() })
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    } else {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        vec![FileBytes { name, bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids() {
        assert!(is_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct"));
        assert!(!is_hub_id("/tmp/model"));
        assert!(!is_hub_id("out/a/b"));
        assert!(!is_hub_id("a b/c"));
        assert!(!is_hub_id("../x"));
    }

    #[test]
    fn block_bytes() {
        assert_eq!(ggml_bytes(GgmlDType::Q4_1, 64), 40);
        assert_eq!(ggml_bytes(GgmlDType::Q6K, 256), 210);
        assert_eq!(ggml_bytes(GgmlDType::F32, 3), 12);
    }
}
