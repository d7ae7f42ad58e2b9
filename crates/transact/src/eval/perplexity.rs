//! Perplexity over a corpus in fixed windows, with the protocol stated in the result.
//!
//! The corpus (documents joined by blank lines) is tokenized once without BOS and cut into
//! windows of `seq_len` tokens; window w starts at token w·(seq_len − 1), so consecutive windows
//! share exactly one token and every token but the first is scored once, with up to
//! seq_len − 1 tokens of context from its own window. Token perplexity, word perplexity and bits
//! per byte are lm-eval's definitions over the scored text.

use anyhow::{Result, bail};
use candle_core::{D, Tensor};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::data::corpus::Corpus;
use crate::model::forward::{Model, log_softmax};
use crate::model::tokenizer::Tokenizer;
use crate::progress::Progress;
use crate::SettingError;

/// Sum of −log p(token) over positions 1.. of `ids` (the first token has no context) and how
/// many tokens were scored.
pub fn sequence_nll(model: &Model, ids: &[u32]) -> Result<(f64, usize)> {
    if ids.len() < 2 {
        return Ok((0.0, 0));
    }
    let logits = model.logits(&ids[..ids.len() - 1])?;
    let logp = log_softmax(&logits)?;
    let targets = Tensor::new(&ids[1..], &model.device)?.unsqueeze(1)?;
    let picked = logp.gather(&targets, D::Minus1)?.squeeze(1)?.to_vec1::<f32>()?;
    let nll = crate::model::finite::check_value(-picked.iter().map(|&x| x as f64).sum::<f64>(), "a window's negative log-likelihood")?;
    Ok((nll, picked.len()))
}

#[derive(Debug, Clone, Serialize)]
pub struct PplResult {
    pub corpus: String,
    pub source: String,
    /// SHA-256 of the corpus text (documents joined by "\n\n", UTF-8).
    pub sha256: String,
    pub documents: usize,
    pub seq_len: usize,
    /// Tokens between window starts (seq_len − 1: windows share one token).
    pub stride: usize,
    pub windows: usize,
    pub tokens_total: usize,
    pub tokens_scored: usize,
    pub bos: &'static str,
    pub nll: f64,
    pub token_perplexity: f64,
    /// `None` when the scored text has too few words for it to be a number (a run of letters
    /// without spaces: exp(nll / 1) overflows).
    pub word_perplexity: Option<f64>,
    pub bits_per_byte: f64,
    pub words: usize,
    pub bytes: usize,
    pub seconds: f64,
}

/// Start and end of each window over `n` tokens (see the module docs).
pub fn windows(n: usize, seq_len: usize) -> Vec<(usize, usize)> {
    let stride = seq_len - 1;
    let mut out = Vec::new();
    let mut start = 0;
    while start + 1 < n {
        out.push((start, (start + seq_len).min(n)));
        start += stride;
    }
    out
}

/// Perplexity of `corpus`; `max_windows` scores only a prefix of the corpus.
pub fn corpus_perplexity(
    model: &Model,
    tok: &Tokenizer,
    corpus: &Corpus,
    seq_len: usize,
    max_windows: Option<usize>,
    progress: &dyn Progress,
) -> Result<PplResult> {
    if seq_len < 2 {
        return Err(SettingError::new("seq_len", format!("must be at least 2 tokens, got {seq_len}")).into());
    }
    if seq_len > model.config.max_position {
        return Err(SettingError::new("seq_len", format!("{seq_len} exceeds the model's context of {}", model.config.max_position)).into());
    }
    let t0 = std::time::Instant::now();
    let text = corpus.text();
    let ids = tok.encode(&text)?;
    let mut wins = windows(ids.len(), seq_len);
    if let Some(m) = max_windows {
        wins.truncate(m);
    }
    if wins.is_empty() {
        bail!("corpus `{}` has fewer than 2 tokens", corpus.name);
    }
    progress.start(&corpus.name, wins.len() as u64);
    let (mut nll, mut scored) = (0.0, 0);
    for &(s, e) in &wins {
        let (n, c) = sequence_nll(model, &ids[s..e])?;
        nll += n;
        scored += c;
        progress.advance(1);
    }
    progress.finish();
    // Words and bytes of exactly the scored tokens.
    let scored_text = tok.decode(&ids[1..wins.last().map_or(1, |w| w.1)])?;
    let words = scored_text.split_whitespace().count();
    let bytes = scored_text.len();
    // Finite log-likelihoods can still overflow exp(): a perplexity of inf is no result either.
    let token_perplexity = crate::model::finite::check_value((nll / scored as f64).exp(), &format!("the token perplexity of corpus `{}`", corpus.name))?;
    let word_perplexity = Some((nll / words.max(1) as f64).exp()).filter(|w| w.is_finite());
    Ok(PplResult {
        corpus: corpus.name.clone(),
        source: corpus.source.clone(),
        sha256: format!("{:x}", Sha256::digest(text.as_bytes())),
        documents: corpus.docs.len(),
        seq_len,
        stride: seq_len - 1,
        windows: wins.len(),
        tokens_total: ids.len(),
        tokens_scored: scored,
        bos: if tok.meta.add_bos { "tokenizer adds BOS" } else { "no BOS" },
        nll,
        token_perplexity,
        word_perplexity,
        bits_per_byte: nll / (bytes.max(1) as f64 * std::f64::consts::LN_2),
        words,
        bytes,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
