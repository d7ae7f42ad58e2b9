//! Log-likelihood of continuations, following lm-eval's `loglikelihood` rules.
//!
//! Tokenization (`_encode_pair`): trailing whitespace of the context (Python's `rstrip()`: spaces,
//! newlines, tabs, any Unicode space) moves onto the continuation;
//! `whole = enc(context + continuation)`, `ctx = enc(context)`, `cont = whole[len(ctx):]`. No BOS
//! unless the tokenizer asks for one. The choices of one doc share their common token prefix: it is
//! run once, and every choice's suffix attends to it. [`score_packed`] packs several docs this way
//! into one forward pass (no padding, a few hundred GEMM rows); [`score_group`] runs one doc with
//! its prefix in a KV cache and the suffixes as a padded batch on copies of it.

use anyhow::Result;
use candle_core::{D, Tensor};

use super::task::Request;
use crate::model::forward::{Logits, Model, log_softmax};
use crate::model::kv_cache::KvCache;
use crate::model::packed::Packing;
use crate::model::tokenizer::Tokenizer;

#[derive(Debug, Clone, Copy)]
pub struct Scored {
    /// Σ log p over the continuation tokens.
    pub loglik: f64,
    /// Every continuation token is the argmax at its position.
    pub is_greedy: bool,
    pub tokens: usize,
}

/// Token ids of one request and where its continuation starts.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub cont_start: usize,
}

/// Python's `str.isspace` for one character: Unicode White_Space plus the separators U+001C–U+001F.
fn python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

pub fn encode(tok: &Tokenizer, r: &Request, max_len: usize) -> Result<Encoded> {
    anyhow::ensure!(max_len >= 1, "the longest scored sequence must be at least 1 token");
    let trimmed = r.context.trim_end_matches(python_space);
    let moved = &r.context[trimmed.len()..];
    let (context, continuation) = (trimmed, format!("{moved}{}", r.continuation));
    let ctx = tok.encode(context)?;
    let whole = tok.encode(&format!("{context}{continuation}"))?;
    let cont = &whole[ctx.len().min(whole.len())..];
    anyhow::ensure!(!cont.is_empty(), "continuation {:?} has no tokens of its own", r.continuation);
    let mut ids = Vec::with_capacity(ctx.len() + cont.len() + 1);
    // An empty context is conditioned on the prefix token (BOS, else EOS), as in lm-eval.
    if ctx.is_empty() || tok.meta.add_bos {
        ids.extend(tok.meta.bos.or(tok.meta.eos));
    }
    ids.extend(&ctx);
    let cont_start = ids.len();
    ids.extend(cont);
    // Left-truncate to max_len + 1 tokens, as lm-eval does.
    let cut = ids.len().saturating_sub(max_len + 1);
    let cont_start = cont_start.saturating_sub(cut).max(1);
    Ok(Encoded { ids: ids[cut..].to_vec(), cont_start })
}

fn common_prefix(seqs: &[&[u32]]) -> usize {
    let first = seqs[0];
    (0..first.len()).take_while(|&i| seqs.iter().all(|s| s.get(i) == Some(&first[i]))).count()
}

/// Model inputs of a doc's requests (each drops its last token; targets are `ids[cont_start..]`)
/// and the length of their shared prefix: positions no request needs logits from except its
/// last one, leaving every suffix at least one token.
fn shared_prefix(encoded: &[Encoded]) -> (Vec<&[u32]>, usize) {
    let inputs: Vec<&[u32]> = encoded.iter().map(|e| &e.ids[..e.ids.len() - 1]).collect();
    let min_input = inputs.iter().map(|s| s.len()).min().unwrap_or(0);
    let min_cont = encoded.iter().map(|e| e.cont_start).min().unwrap_or(0);
    let p = common_prefix(&inputs).min(min_cont).min(min_input.saturating_sub(1));
    (inputs, p)
}

/// Tokens one doc takes in a packed forward: its shared prefix once, then every suffix.
pub fn packed_len(encoded: &[Encoded]) -> usize {
    let (inputs, p) = shared_prefix(encoded);
    p + inputs.iter().map(|s| s.len() - p).sum::<usize>()
}

/// Scores the requests of several docs in one forward pass: per doc, the shared prefix once and
/// each request's suffix attending to it (see [`Packing`]). Equals [`score_group`] per doc.
pub fn score_packed(model: &Model, docs: &[Vec<Encoded>]) -> Result<Vec<Vec<Scored>>> {
    let mut tokens = Vec::new();
    let mut packing = Packing::default();
    // Packed indices whose logits are needed, and per request the (row, target) pairs.
    let mut rows = Vec::new();
    let mut wanted: Vec<Vec<Vec<(usize, u32)>>> = Vec::with_capacity(docs.len());
    for encoded in docs {
        let (inputs, p) = shared_prefix(encoded);
        let prefix = (p > 0).then(|| {
            let a = packing.push(p, None);
            tokens.extend_from_slice(&inputs[0][..p]);
            (a, a + p)
        });
        let mut doc = Vec::with_capacity(encoded.len());
        for (e, input) in encoded.iter().zip(&inputs) {
            let start = packing.push(input.len() - p, prefix);
            tokens.extend_from_slice(&input[p..]);
            // Target t is predicted at input position t − 1: in the prefix only for its last token.
            let pairs = (e.cont_start..e.ids.len())
                .map(|t| {
                    let q = t - 1;
                    rows.push(if q < p { prefix.expect("q < p implies a prefix").0 + q } else { start + q - p });
                    (rows.len() - 1, e.ids[t])
                })
                .collect();
            doc.push(pairs);
        }
        wanted.push(doc);
    }
    let logits = model.forward_packed(&tokens, &packing, &rows)?.to_dtype(candle_core::DType::F32)?;
    let vocab = logits.dim(1)?;
    let logits = logits.flatten_all()?.to_vec1::<f32>()?;
    // Per needed row: log-sum-exp and argmax over the vocabulary.
    let stats: Vec<(f64, u32)> = {
        use rayon::prelude::*;
        logits.par_chunks(vocab).map(transact_kernels::elementwise::log_sum_exp_argmax).collect()
    };
    wanted
        .into_iter()
        .map(|doc| {
            doc.into_iter()
                .map(|pairs| {
                    let mut loglik = 0.0;
                    let mut is_greedy = true;
                    for &(row, target) in &pairs {
                        loglik += logits[row * vocab + target as usize] as f64 - stats[row].0;
                        is_greedy &= stats[row].1 == target;
                    }
                    let loglik = crate::model::finite::check_value(loglik, "a continuation's log-likelihood")?;
                    Ok(Scored { loglik, is_greedy, tokens: pairs.len() })
                })
                .collect()
        })
        .collect()
}

/// Scores all requests of one doc together.
pub fn score_group(model: &Model, encoded: &[Encoded]) -> Result<Vec<Scored>> {
    let dev = &model.device;
    let (inputs, p) = shared_prefix(encoded);

    let mut cache = KvCache::new(&model.config);
    let prefix_logp = if p > 0 {
        let x = Tensor::new(&inputs[0][..p], dev)?.unsqueeze(0)?;
        // The prefix's last log-probabilities and their argmax, shared by every choice.
        let lp = log_softmax(&model.forward(&x, Some(&mut cache), Logits::Last)?.flatten_to(1)?)?.squeeze(0)?;
        let best = lp.argmax(0)?.to_scalar::<u32>()?;
        Some((lp, best))
    } else {
        None
    };
    let s_len = inputs.iter().map(|s| s.len() - p).max().unwrap_or(0);
    let pad = 0u32; // padding sits after every real token, so the causal mask hides it
    let mut batch = Vec::with_capacity(inputs.len() * s_len);
    for s in &inputs {
        batch.extend_from_slice(&s[p..]);
        batch.extend(std::iter::repeat_n(pad, s_len - (s.len() - p)));
    }
    let x = Tensor::from_vec(batch, (inputs.len(), s_len), dev)?;
    let mut cache = cache.expand(inputs.len())?;
    let logits = model.forward(&x, if p > 0 { Some(&mut cache) } else { None }, Logits::All)?;
    let logp = log_softmax(&logits)?; // [k, s_len, vocab]
    let greedy = logp.argmax(D::Minus1)?.to_vec2::<u32>()?;

    let mut out = Vec::with_capacity(encoded.len());
    for (i, e) in encoded.iter().enumerate() {
        let targets = &e.ids[e.cont_start..];
        let mut loglik = 0.0;
        let mut is_greedy = true;
        // Target at position t is predicted by the logits at input position t - 1.
        let row = logp.get(i)?;
        let mut suffix_pos = Vec::new();
        let mut suffix_tok = Vec::new();
        for (j, &tgt) in targets.iter().enumerate() {
            let q = e.cont_start + j - 1;
            if q + 1 == p {
                let (lp, best) = prefix_logp.as_ref().expect("q < p implies a prefix");
                loglik += lp.get(tgt as usize)?.to_scalar::<f32>()? as f64;
                is_greedy &= *best == tgt;
            } else {
                suffix_pos.push((q - p) as u32);
                suffix_tok.push(tgt);
                is_greedy &= greedy[i][q - p] == tgt;
            }
        }
        if !suffix_pos.is_empty() {
            let pos = Tensor::new(suffix_pos.as_slice(), dev)?;
            let tok = Tensor::new(suffix_tok.as_slice(), dev)?.unsqueeze(1)?;
            let picked = row.index_select(&pos, 0)?.gather(&tok, 1)?.flatten_all()?.to_vec1::<f32>()?;
            loglik += picked.iter().map(|&x| x as f64).sum::<f64>();
        }
        let loglik = crate::model::finite::check_value(loglik, "a continuation's log-likelihood")?;
        out.push(Scored { loglik, is_greedy, tokens: targets.len() });
    }
    Ok(out)
}
