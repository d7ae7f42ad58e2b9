//! The teacher of a distillation run, optionally with a folder of its final hidden states.
//!
//! The teacher's forward is about a quarter of a KD step (bench/NOTES.md, "Recovery training").
//! Runs that train on the same text against the same teacher see the same micro-batches: every
//! recovering row of a sweep, a `train` rerun at another learning rate. So the teacher's final
//! normalised hidden states (`[tokens, hidden]`: 2.3 KB per token for SmolLM2, against 197 KB of
//! logits) can be kept on disk, and a later run computes only the LM head on them. The logits
//! are bit for bit those of the full forward: the same LM head product on the same values.
//!
//! A file is named by the SHA-256 of everything that decides its contents: the teacher's file
//! hash, the device, this program's version, the micro-batch's shape and its token ids. It holds
//! the f32 values, then their SHA-256; a file that is short, long or fails that check is
//! recomputed and replaced, never used.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Tensor;
use sha2::{Digest, Sha256};

use crate::model::forward::{Logits, Model};
use crate::model::io::atomic;

pub struct Teacher<'a> {
    pub model: &'a Model,
    cache: Option<HiddenCache>,
}

struct HiddenCache {
    dir: PathBuf,
    /// What, besides the tokens, decides the hidden states.
    id: String,
    hits: Cell<u64>,
    misses: Cell<u64>,
}

impl<'a> Teacher<'a> {
    /// A teacher that runs its whole forward every time.
    pub fn new(model: &'a Model) -> Self {
        Self { model, cache: None }
    }

    /// A teacher whose final hidden states are kept in `dir` (created if missing), or computed
    /// every time without one. `sha256` is the teacher file's hash
    /// ([`crate::model::io::load::model_sha256`]).
    pub fn with_cache(model: &'a Model, sha256: &str, dir: Option<&Path>) -> Result<Self> {
        let Some(dir) = dir else { return Ok(Self::new(model)) };
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the teacher's cache folder", dir.display()))?;
        let id = format!("teacher {sha256} device {:?} transact {}", model.device.location(), env!("CARGO_PKG_VERSION"));
        let cache = HiddenCache { dir: dir.to_path_buf(), id, hits: Cell::new(0), misses: Cell::new(0) };
        Ok(Self { model, cache: Some(cache) })
    }

    /// Logits `[b, t, vocab]` of the sequences `tokens` (`[b, t]`, whose ids are `ids`).
    pub fn logits(&self, tokens: &Tensor, ids: &[u32]) -> Result<Tensor> {
        let Some(c) = &self.cache else {
            return Ok(self.model.forward(tokens, None, Logits::All)?);
        };
        let (b, t) = tokens.dims2()?;
        let hidden = self.model.config.hidden_size;
        let path = c.path(b, t, ids);
        let x = match read(&path, b * t * hidden) {
            Some(values) => {
                c.hits.set(c.hits.get() + 1);
                Tensor::from_vec(values, (b, t, hidden), &self.model.device)?
            }
            None => {
                c.misses.set(c.misses.get() + 1);
                let x = self.model.forward(tokens, None, Logits::None)?;
                write(&path, &x.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?)?;
                x
            }
        };
        Ok(self.model.head(&x)?)
    }

    /// Micro-batches whose hidden states were read from the cache and computed: `(hits, misses)`.
    pub fn cache_counts(&self) -> Option<(u64, u64)> {
        self.cache.as_ref().map(|c| (c.hits.get(), c.misses.get()))
    }
}

impl HiddenCache {
    fn path(&self, b: usize, t: usize, ids: &[u32]) -> PathBuf {
        let mut h = Sha256::new();
        h.update(self.id.as_bytes());
        h.update(format!(" batch {b} seq_len {t} ").as_bytes());
        for id in ids {
            h.update(id.to_le_bytes());
        }
        self.dir.join(format!("{:x}.f32", h.finalize()))
    }
}

/// The `n` values of the file at `path`, or `None` when it is missing or not exactly `n` values
/// followed by their checksum.
fn read(path: &Path, n: usize) -> Option<Vec<f32>> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() != n * 4 + 32 {
        return None;
    }
    let (data, sum) = bytes.split_at(n * 4);
    if Sha256::digest(data).as_slice() != sum {
        return None;
    }
    Some(data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

fn write(path: &Path, values: &[f32]) -> Result<()> {
    let mut bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let sum = Sha256::digest(&bytes);
    bytes.extend_from_slice(&sum);
    atomic::write_file(path, true, |tmp| Ok(std::fs::write(tmp, &bytes)?))
}
