//! Training text sampled from the teacher (`--data teacher:N`): beyond the few million tokens of
//! text on the package registries, the dense model itself is the only unlimited source of text
//! in its own distribution, which is what GPU-scale recovery distils on. Each document starts
//! from the first [`PROMPT_TOKENS`] tokens of a `mix` document (in a seeded order) and continues
//! with tokens sampled at temperature 1 from the full distribution until end-of-sequence or
//! `max_len` tokens. On a CPU this runs at decode speed: slow, but it works anywhere.

use anyhow::{Result, bail};
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};

use crate::calibrate::blocks::source_corpus;
use crate::model::forward::Model;
use crate::model::sample::Sampler;
use crate::model::session::Session;
use crate::model::tokenizer::Tokenizer;
use crate::progress::Progress;

/// Tokens of a `mix` document that seed each sampled document.
pub const PROMPT_TOKENS: usize = 16;

/// Parses `teacher:N` (N with an optional K/M suffix): the number of tokens to sample.
pub fn parse(source: &str) -> Option<Result<u64>> {
    let n = source.strip_prefix("teacher:")?;
    let (digits, mult) = match n.char_indices().last() {
        Some((i, 'k' | 'K')) => (&n[..i], 1_000),
        Some((i, 'm' | 'M')) => (&n[..i], 1_000_000),
        _ => (n, 1),
    };
    Some(match digits.parse::<u64>() {
        Ok(v) if v > 0 => v.checked_mul(mult).ok_or_else(|| anyhow::anyhow!("`{source}`: too many tokens")),
        _ => Err(anyhow::anyhow!("`{source}`: expected teacher:N with N ≥ 1 tokens (e.g. teacher:200K)")),
    })
}

/// `tokens` tokens of documents sampled from `teacher`, each at most `max_len` long and ended
/// by end-of-sequence when the tokenizer has one.
pub fn sample(teacher: &Model, tok: &Tokenizer, tokens: u64, max_len: usize, seed: u64, progress: &dyn Progress) -> Result<Vec<Vec<u32>>> {
    if max_len <= PROMPT_TOKENS {
        bail!("sampled documents need more than {PROMPT_TOKENS} tokens each, got {max_len}");
    }
    let mut prompts: Vec<Vec<u32>> = source_corpus("mix", progress)?
        .docs
        .iter()
        .map(|d| tok.encode(d).map(|ids| ids.into_iter().take(PROMPT_TOKENS).collect::<Vec<u32>>()))
        .collect::<Result<_>>()?;
    prompts.retain(|p| p.len() == PROMPT_TOKENS);
    prompts.shuffle(&mut StdRng::seed_from_u64(seed));
    let mut sampler = Sampler::new(1.0, 1.0, seed)?;
    let (mut docs, mut total) = (Vec::new(), 0u64);
    progress.start("sample text from the teacher", tokens);
    for prompt in prompts.iter().cycle() {
        if total >= tokens {
            break;
        }
        let mut ids = prompt.clone();
        let mut session = Session::start(teacher, prompt)?;
        while ids.len() < max_len && !session.is_full() {
            let next = sampler.sample(session.logits())?;
            ids.push(next);
            if Some(next) == tok.meta.eos {
                break;
            }
            session.push(next)?;
        }
        let new = (ids.len() - PROMPT_TOKENS) as u64;
        progress.advance(new.min(tokens - total));
        total += new;
        docs.push(ids);
    }
    progress.finish();
    Ok(docs)
}
