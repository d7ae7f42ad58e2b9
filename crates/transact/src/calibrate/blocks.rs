//! Calibration blocks: text → tokens → N shuffled blocks of L tokens.
//!
//! The default source is a mix of text that is not an evaluation set (CoQA stories, SQuAD and
//! DROP contexts). The paper draws 128 × 4096 tokens of held-out RedPajama; we keep 128 samples
//! but default to 256 tokens each (32K tokens), which a 2-core CPU runs in about two minutes
//! for the bundled model and which already fixes the ranking of channels (see the closing note
//! of the pruning issue); raise `seq_len` on bigger machines.

use anyhow::Result;
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data::corpus::{self, Corpus};
use crate::model::tokenizer::Tokenizer;
use crate::progress::Progress;
use crate::SettingError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalibSpec {
    /// `mix` (CoQA + SQuAD + DROP), a built-in corpus name, or a text / JSONL file or folder.
    pub source: String,
    pub samples: usize,
    pub seq_len: usize,
    pub seed: u64,
}

impl Default for CalibSpec {
    fn default() -> Self {
        Self { source: "mix".into(), samples: 128, seq_len: 256, seed: 0 }
    }
}

pub struct CalibData {
    pub spec: CalibSpec,
    pub blocks: Vec<Vec<u32>>,
    /// SHA-256 of the source text, so a statistics file names the data it came from.
    pub data_sha256: String,
}

/// The source text of `spec.source`; calibrating on an evaluation corpus is allowed, with a note.
pub fn source_corpus(source: &str, progress: &dyn Progress) -> Result<Corpus> {
    if source == "mix" {
        let parts = ["coqa", "squad", "drop"].map(corpus::load);
        let mut docs = Vec::new();
        for p in parts {
            docs.extend(p?.docs);
        }
        return Ok(Corpus { name: "mix".into(), source: "CoQA stories + SQuAD contexts + DROP passages".into(), docs });
    }
    if source == "wiki" || source == "book" {
        progress.note(&format!("warning: calibrating on `{source}`, an evaluation corpus: its perplexity is no longer held out"));
    }
    corpus::load(source)
}

/// A calibration source tokenized once; each shot draws its own blocks from it.
pub struct TokenizedSource {
    pub source: String,
    pub ids: Vec<u32>,
    /// SHA-256 of the source text, so a statistics file names the data it came from.
    pub data_sha256: String,
}

pub fn tokenize_source(tok: &Tokenizer, source: &str, progress: &dyn Progress) -> Result<TokenizedSource> {
    let text = source_corpus(source, progress)?.text();
    Ok(TokenizedSource {
        source: source.to_string(),
        ids: tok.encode(&text)?,
        data_sha256: format!("{:x}", Sha256::digest(text.as_bytes())),
    })
}

impl TokenizedSource {
    /// Cuts the tokens into blocks of `seq_len` and draws `samples` of them with `seed` (a
    /// shuffled block order, so blocks never overlap).
    pub fn draw(&self, samples: usize, seq_len: usize, seed: u64) -> Result<CalibData> {
        if samples == 0 {
            return Err(SettingError::new("samples", "must be at least 1").into());
        }
        if seq_len < 2 {
            return Err(SettingError::new("seq_len", format!("must be at least 2 tokens, got {seq_len}")).into());
        }
        let n_blocks = self.ids.len() / seq_len;
        if n_blocks < samples {
            return Err(SettingError::new(
                "samples",
                format!(
                    "× `seq_len` = {samples} × {seq_len} = {} tokens is more than calibration source `{}` has ({} tokens); \
                     lower either or give more text",
                    samples * seq_len,
                    self.source,
                    self.ids.len()
                ),
            )
            .into());
        }
        let mut order: Vec<usize> = (0..n_blocks).collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        Ok(CalibData {
            spec: CalibSpec { source: self.source.clone(), samples, seq_len, seed },
            blocks: order[..samples].iter().map(|&b| self.ids[b * seq_len..(b + 1) * seq_len].to_vec()).collect(),
            data_sha256: self.data_sha256.clone(),
        })
    }
}

/// Tokenizes `spec.source` and draws its blocks.
pub fn prepare(tok: &Tokenizer, spec: &CalibSpec, progress: &dyn Progress) -> Result<CalibData> {
    tokenize_source(tok, &spec.source, progress)?.draw(spec.samples, spec.seq_len, spec.seed)
}
