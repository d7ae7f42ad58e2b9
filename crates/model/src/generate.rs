//! Prompt text in, generated text out: BOS as the tokenizer says, sampling, stop conditions
//! (end of sequence, stop strings, a token budget, the context), and text streamed as it becomes
//! decodable.

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use crate::forward::Model;
use crate::sample::Sampler;
use crate::session::Session;
use crate::tokenizer::Tokenizer;

/// What to generate and when to stop.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// New tokens at most.
    pub max_tokens: usize,
    /// Stop at the tokenizer's end-of-sequence token (its text is not part of the output).
    pub stop_at_eos: bool,
    /// Strings that end the generation: the text stops right before the first one.
    pub stop: Vec<String>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// The end-of-sequence token.
    Eos,
    /// A stop string.
    Stop,
    /// `max_tokens` new tokens.
    Length,
    /// The model's context is full.
    Context,
}

/// A finished generation.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub prompt_tokens: usize,
    /// Every sampled token, an end-of-sequence token included.
    pub tokens: Vec<u32>,
    /// The generated text, without the end-of-sequence token and cut before a stop string.
    pub text: String,
    pub finish: Finish,
    /// From the start to the first token chosen (the prefill).
    pub prefill_seconds: f64,
    /// From the first token chosen to the last.
    pub decode_seconds: f64,
}

/// The token ids a prompt is run as: `text` encoded, with BOS first when the tokenizer asks for
/// it (SmolLM2's does not).
pub fn prompt_ids(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let mut ids = tok.encode(text)?;
    if tok.meta.add_bos
        && let Some(b) = tok.meta.bos
    {
        ids.insert(0, b);
    }
    Ok(ids)
}

/// Generates from `prompt` (token ids) until a stop condition; `on_text` sees the text as it
/// becomes final (never text a stop string could still cut).
pub fn generate(
    model: &Model,
    tok: &Tokenizer,
    prompt: &[u32],
    options: &GenerateOptions,
    sampler: &mut Sampler,
    mut on_text: impl FnMut(&str) -> Result<()>,
) -> Result<Generation> {
    let t0 = Instant::now();
    let mut session = Session::start(model, prompt)?;
    let mut stream = tok.text_stream();
    let mut text = StopText::new(options.stop.clone());
    let mut tokens = Vec::new();
    let mut first: Option<f64> = None;
    let finish = loop {
        if tokens.len() == options.max_tokens {
            break Finish::Length;
        }
        let next = sampler.sample(session.logits())?;
        tokens.push(next);
        first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
        if options.stop_at_eos && Some(next) == tok.meta.eos {
            break Finish::Eos;
        }
        if let Some(piece) = stream.step(next)?
            && text.push(&piece, &mut on_text)?
        {
            break Finish::Stop;
        }
        if tokens.len() == options.max_tokens {
            break Finish::Length;
        }
        if session.is_full() {
            break Finish::Context;
        }
        session.push(next)?;
    };
    let text = text.finish(finish != Finish::Stop, &mut on_text)?;
    let prefill_seconds = first.unwrap_or_else(|| t0.elapsed().as_secs_f64());
    Ok(Generation { prompt_tokens: prompt.len(), tokens, text, finish, prefill_seconds, decode_seconds: t0.elapsed().as_secs_f64() - prefill_seconds })
}

/// Generated text with stop strings: text is released only once no stop string can still begin
/// inside it.
pub struct StopText {
    stop: Vec<String>,
    text: String,
    /// Bytes of `text` already released.
    released: usize,
}

impl StopText {
    pub fn new(stop: Vec<String>) -> Self {
        Self { stop, text: String::new(), released: 0 }
    }

    /// Adds `piece`; releases what is final through `out`. Returns whether a stop string was
    /// found (the text then ends right before it).
    pub fn push(&mut self, piece: &str, out: &mut impl FnMut(&str) -> Result<()>) -> Result<bool> {
        self.text.push_str(piece);
        // A stop string may begin in text already seen but withheld, never in released text.
        let found = self.stop.iter().filter(|s| !s.is_empty()).filter_map(|s| self.text[self.released..].find(s.as_str())).min();
        if let Some(at) = found {
            self.text.truncate(self.released + at);
            self.release(self.text.len(), out)?;
            return Ok(true);
        }
        // Withhold the longest tail that is the start of some stop string.
        let tail = &self.text[self.released..];
        let held = self
            .stop
            .iter()
            .flat_map(|s| (1..s.len().min(tail.len() + 1)).rev().find(|&n| s.is_char_boundary(n) && tail.ends_with(&s[..n])))
            .max()
            .unwrap_or(0);
        self.release(self.text.len() - held, out)?;
        Ok(false)
    }

    fn release(&mut self, to: usize, out: &mut impl FnMut(&str) -> Result<()>) -> Result<()> {
        if to > self.released {
            out(&self.text[self.released..to])?;
            self.released = to;
        }
        Ok(())
    }

    /// The whole text, releasing what was withheld when `flush`.
    pub fn finish(mut self, flush: bool, out: &mut impl FnMut(&str) -> Result<()>) -> Result<String> {
        if flush {
            self.release(self.text.len(), out)?;
        }
        Ok(self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stop: &[&str], pieces: &[&str]) -> (String, String, bool) {
        let stop: Vec<String> = stop.iter().map(|s| s.to_string()).collect();
        let mut st = StopText::new(stop);
        let mut released = String::new();
        let mut out = |t: &str| {
            released.push_str(t);
            Ok(())
        };
        let mut stopped = false;
        for p in pieces {
            if st.push(p, &mut out).unwrap() {
                stopped = true;
                break;
            }
        }
        let text = st.finish(!stopped, &mut out).unwrap();
        (text, released, stopped)
    }

    #[test]
    fn stop_strings_cut_the_text_and_nothing_past_them_is_released() {
        // A stop string split across pieces: "\n\n" arrives as "\n" then "\nB".
        assert_eq!(run(&["\n\n"], &["Hello", " world", "\n", "\nBye"]), ("Hello world".into(), "Hello world".into(), true));
        // A prefix of a stop string that turns out not to be one is released later.
        assert_eq!(run(&["END"], &["a E", "N", "x"]), ("a ENx".into(), "a ENx".into(), false));
        // The earliest of several stop strings wins; multi-byte text is cut on a boundary.
        assert_eq!(run(&["ü!", "b"], &["aü", "!b"]), ("a".into(), "a".into(), true));
        // No stop strings: everything is released as it comes.
        assert_eq!(run(&[], &["x", "y"]), ("xy".into(), "xy".into(), false));
    }
}
