//! One sequence being generated: its KV cache and the logits of its next token. Generation,
//! `compare`, `bench` and a server all step sequences through this.

use anyhow::{Result, ensure};
use candle_core::Tensor;

use crate::forward::{Logits, Model};
use crate::kv_cache::KvCache;

pub struct Session<'m> {
    model: &'m Model,
    cache: KvCache,
    /// `[vocab]`: the logits after the last token.
    logits: Tensor,
}

impl<'m> Session<'m> {
    /// Prefills `prompt` (at least one token, at most the model's context) into a new KV cache.
    pub fn start(model: &'m Model, prompt: &[u32]) -> Result<Self> {
        ensure!(!prompt.is_empty(), "the prompt is empty");
        let mut cache = KvCache::new(&model.config);
        let x = Tensor::new(prompt, &model.device)?.unsqueeze(0)?;
        let logits = model.forward(&x, Some(&mut cache), Logits::Last)?.flatten_all()?;
        Ok(Self { model, cache, logits })
    }

    /// The next token's logits `[vocab]`.
    pub fn logits(&self) -> &Tensor {
        &self.logits
    }

    /// The most likely next token.
    pub fn greedy(&self) -> Result<u32> {
        Ok(self.logits.argmax(0)?.to_scalar::<u32>()?)
    }

    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// Whether the context is full: no further token can be pushed.
    pub fn is_full(&self) -> bool {
        self.cache.len() >= self.model.config.max_position
    }

    /// Appends `token` (one decode step) and computes the logits after it.
    pub fn push(&mut self, token: u32) -> Result<()> {
        let x = Tensor::new(&[token], &self.model.device)?.unsqueeze(0)?;
        self.logits = self.model.forward(&x, Some(&mut self.cache), Logits::Last)?.flatten_all()?;
        Ok(())
    }

    /// An independent copy: pushing to one does not change the other.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(Self { model: self.model, cache: self.cache.try_clone()?, logits: self.logits.clone() })
    }
}
