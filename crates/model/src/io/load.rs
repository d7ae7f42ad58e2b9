//! One entry point for every checkpoint format: `load_model(path)` detects GGUF or an HF directory.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use candle_core::Device;
use candle_core::quantized::gguf_file::Value;

use super::storage::Storage;
use super::{gguf, hf_config, safetensors::SafetensorsFiles};
use crate::forward::Model;
use crate::tokenizer::Tokenizer;
use crate::weights::Weights;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    Gguf,
    HfDir,
}

/// A model with its tokenizer and where it came from.
pub struct LoadedModel {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub path: PathBuf,
    pub format: SourceFormat,
    /// `tokenizer.*` metadata of a GGUF source, kept for a faithful GGUF export.
    pub gguf_tokenizer_metadata: Option<Vec<(String, Value)>>,
    /// How the source checkpoint stores its weights (what `--dtype auto` keeps) and its Hub id.
    pub storage: Storage,
}

pub fn detect_format(path: &Path) -> Result<SourceFormat> {
    if path.is_dir() {
        Ok(SourceFormat::HfDir)
    } else if path.is_file() {
        Ok(SourceFormat::Gguf)
    } else {
        bail!("{}: no such file or directory (expected a .gguf file or a Hugging Face model directory)", path.display())
    }
}

/// Loads a GGUF file or a Hugging Face directory into f32 weights on `device`.
pub fn load_model(path: &Path, device: &Device) -> Result<LoadedModel> {
    let format = detect_format(path)?;
    match format {
        SourceFormat::Gguf => {
            let g = gguf::load(path, device)?;
            Ok(LoadedModel {
                model: Model::new(g.config, g.weights),
                tokenizer: g.tokenizer,
                path: path.to_path_buf(),
                format,
                gguf_tokenizer_metadata: Some(g.tokenizer_metadata),
                storage: g.storage,
            })
        }
        SourceFormat::HfDir => {
            let read = hf_config::read_config(path)?;
            let config = read.config;
            let files = SafetensorsFiles::open_dir(path)?;
            check_layer_tensors(path, &files, config.n_layers())?;
            let weights = Weights::from_roles(&config, |role| {
                files.load_f32(&role.hf_name(), &role.shape(&config), device)
            })?;
            let tokenizer = Tokenizer::from_hf_dir(path, read.bos, read.eos)?;
            tokenizer.check_fits(config.vocab_size).map_err(|e| anyhow!("{}: {e}", path.display()))?;
            let storage = Storage::of_hf(path, &files, &config, read.name_or_path.as_deref());
            Ok(LoadedModel {
                model: Model::new(config, weights),
                tokenizer,
                path: path.to_path_buf(),
                format,
                gguf_tokenizer_metadata: None,
                storage,
            })
        }
    }
}

/// No tensor belongs to a layer beyond `num_hidden_layers`: a config that undercounts layers would
/// otherwise load a shallower model than the checkpoint holds.
fn check_layer_tensors(dir: &Path, files: &SafetensorsFiles, n_layers: usize) -> Result<()> {
    let beyond = files
        .names()
        .filter_map(|n| Some((n, n.strip_prefix("model.layers.")?.split('.').next()?.parse::<usize>().ok()?)))
        .filter(|&(_, l)| l >= n_layers)
        .min_by_key(|&(_, l)| l);
    if let Some((name, _)) = beyond {
        bail!("{}: tensor `{name}` belongs to a layer beyond num_hidden_layers = {n_layers} in config.json", dir.display());
    }
    Ok(())
}

/// SHA-256 identifying a checkpoint: the GGUF file, or an HF directory's config.json and
/// safetensors files (sorted by name, hashed in sequence).
pub fn model_sha256(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let files: Vec<PathBuf> = match detect_format(path)? {
        SourceFormat::Gguf => vec![path.to_path_buf()],
        SourceFormat::HfDir => {
            let mut f: Vec<PathBuf> = std::fs::read_dir(path)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors") || p.ends_with("config.json"))
                .collect();
            f.sort();
            f
        }
    };
    let mut h = Sha256::new();
    for f in files {
        // Read, not mapped: mapped pages would count toward resident memory for the whole
        // checkpoint, which `prune --stream` must stay far below.
        let mut file = std::fs::File::open(&f)?;
        std::io::copy(&mut file, &mut h)?;
    }
    Ok(format!("{:x}", h.finalize()))
}
