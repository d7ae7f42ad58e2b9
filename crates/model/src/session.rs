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
        let mut s = Self::empty(model);
        s.extend(prompt, false)?;
        Ok(s)
    }

    /// A session with nothing cached; its logits are empty until [`Session::extend`] feeds it.
    pub fn empty(model: &'m Model) -> Self {
        Self { model, cache: KvCache::new(&model.config), logits: Tensor::zeros(0, candle_core::DType::F32, &model.device).expect("an empty tensor") }
    }

    /// Appends `tokens` (a prompt, or the next chunk of one) to the cache. With `all`, returns
    /// the logits after each of them, `[tokens.len(), vocab]`.
    pub fn extend(&mut self, tokens: &[u32], all: bool) -> Result<Option<Tensor>> {
        ensure!(!tokens.is_empty(), "no tokens to append");
        let x = Tensor::new(tokens, &self.model.device)?.unsqueeze(0)?;
        let logits = self.model.forward(&x, Some(&mut self.cache), if all { Logits::All } else { Logits::Last })?.squeeze(0)?;
        self.logits = logits.get(logits.dim(0)? - 1)?;
        Ok(all.then_some(logits))
    }

    /// One decode step for several sessions of one model at once (a server's running batch):
    /// `tokens[i]` is appended to `sessions[i]`.
    pub fn push_many(sessions: &mut [&mut Session<'m>], tokens: &[u32]) -> Result<()> {
        let Some(first) = sessions.first() else { return Ok(()) };
        let model = first.model;
        ensure!(sessions.iter().all(|s| std::ptr::eq(s.model, model)), "sessions of different models cannot step together");
        let mut caches: Vec<&mut KvCache> = sessions.iter_mut().map(|s| &mut s.cache).collect();
        let logits = model.step_caches(tokens, &mut caches)?;
        for (i, s) in sessions.iter_mut().enumerate() {
            s.logits = logits.get(i)?;
        }
        Ok(())
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
