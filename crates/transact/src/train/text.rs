//! Training text: a source tokenized once (or sampled from the teacher), documents separated by
//! end-of-sequence, cut into blocks of `seq_len` tokens that never overlap, drawn in a seeded
//! order that is reshuffled every epoch. Sequence number n of a run is a pure function of (seed, n), which is what makes
//! `--resume` continue on exactly the blocks an uninterrupted run would have seen.

use anyhow::Result;
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::SettingError;
use crate::calibrate::blocks::source_corpus;
use crate::data::overlap::{self, EvalIndex, OverlapReport};
use super::sampled;
use crate::model::forward::Model;
use crate::model::tokenizer::Tokenizer;
use crate::progress::Progress;

/// Built-in corpora that are evaluation sets: never training text.
const EVALUATION: [&str; 2] = ["wiki", "book"];

pub struct TrainText {
    pub source: String,
    /// Where the text came from, in words.
    pub description: String,
    pub documents: usize,
    /// All tokens, documents joined by end-of-sequence.
    ids: Vec<u32>,
    /// SHA-256 of the training documents (after the overlap check; UTF-8, joined by "\n\n").
    pub sha256: String,
    seq_len: usize,
    /// The 13-gram check against the evaluation sets, per source (`None`: not run).
    pub overlap: Option<Vec<OverlapReport>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TextSummary {
    pub source: String,
    pub description: String,
    pub sha256: String,
    pub documents: usize,
    pub tokens: usize,
    pub seq_len: usize,
    pub blocks: usize,
    /// Per source: documents sharing a 13-gram with an evaluation set, which were dropped.
    pub overlap: Option<Vec<OverlapReport>>,
}

impl TrainText {
    /// Tokenizes `source` (`mix`, a text or JSONL file, or a folder of them; or `teacher:N`,
    /// N tokens sampled from `teacher`) for blocks of `seq_len` tokens; refuses evaluation
    /// corpora and text shorter than one block.
    pub fn load(tok: &Tokenizer, source: &str, seq_len: usize, teacher: Option<&Model>, seed: u64, progress: &dyn Progress) -> Result<Self> {
        let text = if let Some(n) = sampled::parse(source) {
            let n = n.map_err(|e| SettingError::new("data", e.to_string()))?;
            let Some(teacher) = teacher else {
                return Err(SettingError::new("data", format!("`{source}` samples text from the teacher: give `teacher`")).into());
            };
            let docs = sampled::sample(teacher, tok, n, seq_len.max(sampled::PROMPT_TOKENS + 1), seed, progress)?;
            let mut hash = Sha256::new();
            docs.iter().flatten().for_each(|id| hash.update(id.to_le_bytes()));
            Self {
                source: source.to_string(),
                description: format!(
                    "{n} tokens sampled from the teacher at temperature 1, each document after the first {} tokens of a `mix` document",
                    sampled::PROMPT_TOKENS
                ),
                documents: docs.len(),
                sha256: format!("{:x}", hash.finalize()),
                ids: docs.concat(),
                seq_len,
                overlap: None,
            }
        } else {
            let Checked { docs, descriptions, overlap } = checked_documents(source, progress)?;
            let eos = tok.meta.eos;
            progress.start("tokenize training text", docs.len() as u64);
            let mut ids = Vec::new();
            for doc in &docs {
                ids.extend(tok.encode(doc)?);
                ids.extend(eos);
                progress.advance(1);
            }
            progress.finish();
            Self {
                source: source.to_string(),
                description: descriptions.join(" + "),
                documents: docs.len(),
                sha256: format!("{:x}", Sha256::digest(docs.join("\n\n").as_bytes())),
                ids,
                seq_len,
                overlap,
            }
        };
        if text.blocks() == 0 {
            return Err(SettingError::new(
                "seq_len",
                format!("{seq_len} is longer than training text `{source}` ({} tokens); lower it or give more text", text.ids.len()),
            )
            .into());
        }
        Ok(text)
    }

    pub fn blocks(&self) -> usize {
        self.ids.len() / self.seq_len
    }

    pub fn summary(&self) -> TextSummary {
        TextSummary {
            source: self.source.clone(),
            description: self.description.clone(),
            sha256: self.sha256.clone(),
            documents: self.documents,
            tokens: self.ids.len(),
            seq_len: self.seq_len,
            blocks: self.blocks(),
            overlap: self.overlap.clone(),
        }
    }

    /// Sequences `first .. first + n` of the run with `seed`, flattened `[n · seq_len]`.
    pub fn sequences(&self, seed: u64, first: u64, n: usize) -> Vec<u32> {
        let blocks = self.blocks() as u64;
        let mut out = Vec::with_capacity(n * self.seq_len);
        let mut cached: Option<(u64, Vec<usize>)> = None;
        for k in first..first + n as u64 {
            let epoch = k / blocks;
            if cached.as_ref().is_none_or(|(e, _)| *e != epoch) {
                cached = Some((epoch, self.order(seed, epoch)));
            }
            let b = cached.as_ref().expect("just set").1[(k % blocks) as usize];
            out.extend_from_slice(&self.ids[b * self.seq_len..(b + 1) * self.seq_len]);
        }
        out
    }

    /// The block order of `epoch`: a permutation, so no block repeats within an epoch.
    fn order(&self, seed: u64, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.blocks()).collect();
        let mixed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ epoch;
        order.shuffle(&mut StdRng::seed_from_u64(mixed));
        order
    }
}

/// The documents of every source in `sources` (comma-separated), each source's documents that
/// share a 13-gram with an evaluation set dropped ([`overlap`]); with their descriptions and the
/// check's reports. Without the evaluation sets on disk the check is skipped, with a note.
fn checked_documents(sources: &str, progress: &dyn Progress) -> Result<Checked> {
    let parts: Vec<&str> = sources.split(',').map(str::trim).collect();
    if let Some(bad) = parts.iter().find(|p| EVALUATION.contains(p) || p.is_empty()) {
        let problem = if bad.is_empty() {
            format!("`{sources}` names an empty source")
        } else {
            format!("`{bad}` is an evaluation corpus (its perplexity is what training is measured by); train on `mix`, `general` or your own text")
        };
        return Err(SettingError::new("data", problem).into());
    }
    let index = match EvalIndex::evaluation_sets() {
        Ok(i) => Some(i),
        Err(e) => {
            progress.note(&format!("warning: no overlap check against the evaluation sets ({e:#})"));
            None
        }
    };
    let (mut docs, mut descriptions, mut reports) = (Vec::new(), Vec::new(), Vec::new());
    for part in parts {
        let corpus = source_corpus(part, progress)?;
        descriptions.push(corpus.source.clone());
        let Some(index) = &index else {
            docs.extend(corpus.docs);
            continue;
        };
        let (kept, report) = overlap::filter(index, part, corpus.docs);
        if report.overlapping > 0 {
            progress.note(&format!(
                "overlap check: dropped {} of {} documents of `{part}` that share a 13-word run with an evaluation set",
                report.overlapping, report.documents
            ));
        }
        reports.push(report);
        docs.extend(kept);
    }
    Ok(Checked { docs, descriptions, overlap: index.map(|_| reports) })
}

/// The training documents of some sources after the overlap check.
struct Checked {
    docs: Vec<String>,
    descriptions: Vec<String>,
    overlap: Option<Vec<OverlapReport>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize, seq_len: usize) -> TrainText {
        TrainText {
            source: "t".into(),
            description: String::new(),
            documents: 1,
            ids: (0..n as u32).collect(),
            sha256: String::new(),
            seq_len,
            overlap: None,
        }
    }

    #[test]
    fn an_epoch_visits_every_block_once_and_draws_are_pure() {
        let t = text(103, 10);
        let all = t.sequences(7, 0, 10);
        let mut starts: Vec<u32> = all.chunks(10).map(|c| c[0]).collect();
        starts.sort();
        assert_eq!(starts, (0..10).map(|b| b * 10).collect::<Vec<_>>());
        // Any window of the stream is the same whether drawn alone or as part of a larger draw.
        assert_eq!(t.sequences(7, 3, 9), t.sequences(7, 0, 12)[30..]);
        assert_ne!(t.sequences(7, 0, 10), t.sequences(7, 10, 10), "a new epoch reshuffles");
        assert_ne!(t.sequences(7, 0, 10), t.sequences(8, 0, 10), "the seed matters");
    }
}
