//! The engine: one thread owns the model and runs every request's sequence in one batch.
//!
//! Continuous batching: a request joins the running batch between decode steps and leaves it
//! when it finishes or its client goes away (its KV cache is dropped then). Each turn of the
//! loop prefills at most [`PREFILL_CHUNK`] prompt tokens of joining sequences (several short
//! prompts whole, or one chunk of a long one), then runs one decode step for every running sequence together ([`Session::push_many`]: each weight is read
//! once for the whole batch), so a long prompt delays the running streams by one chunk per
//! token, not by its whole prefill.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use anyhow::Result;
use candle_core::Tensor;
use tokio::sync::mpsc::UnboundedSender;
use transact_model::forward::Model;
use transact_model::generate::{Finish, StopText};
use transact_model::sample::Sampler;
use transact_model::session::Session;
use transact_model::tokenizer::{TextStream, Tokenizer};

/// Prompt tokens prefilled per turn of the loop: long enough that prefill runs on the GEMM
/// kernels, short enough that running streams wait at most one chunk between tokens.
pub const PREFILL_CHUNK: usize = 128;

/// How long an idle engine waits for a job before it checks for shutdown.
const IDLE_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// One sequence to generate: one prompt of a completion request (a request with several
/// prompts sends one each, sharing `events`), or a chat.
pub struct Job {
    /// The choice this sequence answers (its position among the request's prompts).
    pub index: usize,
    pub prompt: Vec<u32>,
    /// New tokens at most (0: only the prompt's log-probabilities, with `echo`).
    pub max_tokens: usize,
    pub sampler: Sampler,
    /// Texts that end the generation (not part of it).
    pub stop: Vec<String>,
    /// Log-probabilities of the chosen tokens, with this many most likely alternatives each.
    pub logprobs: Option<usize>,
    /// Report the prompt's tokens with their log-probabilities.
    pub echo: bool,
    pub events: UnboundedSender<Event>,
}

/// A token with its log-probability under the model (temperature 1) and the most likely
/// alternatives at its position.
#[derive(Debug, Clone)]
pub struct TokenLogprob {
    pub id: u32,
    pub text: String,
    /// None for a prompt's first token, which nothing predicts.
    pub logprob: Option<f32>,
    pub top: Vec<(String, f32)>,
}

/// What the engine tells a request, per choice (`index`).
#[derive(Debug)]
pub enum Event {
    /// The prompt's tokens (`echo`), with log-probabilities when asked for.
    Prompt { index: usize, tokens: Vec<TokenLogprob> },
    /// One generated token: the text it released (may be empty while a stop string or a
    /// multi-byte character is pending) and, when asked for, its log-probability.
    Token { index: usize, text: String, logprob: Option<TokenLogprob> },
    Done { index: usize, finish: Finish, prompt_tokens: usize, completion_tokens: usize },
    Error { index: usize, message: String },
}

/// The bound on waiting sequences, shared by the HTTP side (which reserves) and the engine
/// (which releases when a sequence joins the batch).
pub struct Admission {
    waiting: AtomicUsize,
    max_waiting: usize,
    /// Set on shutdown: nothing new is admitted.
    closed: AtomicBool,
}

impl Admission {
    pub fn new(max_waiting: usize) -> Arc<Self> {
        Arc::new(Self { waiting: AtomicUsize::new(0), max_waiting, closed: AtomicBool::new(false) })
    }

    /// Reserves `n` places in the queue; false when that would pass the bound or the server
    /// is shutting down.
    pub fn reserve(&self, n: usize) -> bool {
        !self.closed.load(Ordering::SeqCst)
            && self.waiting.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| (w + n <= self.max_waiting).then_some(w + n)).is_ok()
    }

    fn release(&self, n: usize) {
        self.waiting.fetch_sub(n, Ordering::SeqCst);
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

/// How the engine runs.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Sequences decoded together at most.
    pub max_batch: usize,
    /// Tokens a sequence may hold (prompt and generated), at most the model's context.
    pub ctx: usize,
}

/// A sequence in the batch.
struct Seq<'m, 't> {
    job: Job,
    session: Session<'m>,
    /// Prompt tokens in the cache so far.
    fed: usize,
    /// The prompt's tokens with log-probabilities (`echo`), gathered chunk by chunk.
    echoed: Vec<TokenLogprob>,
    /// The logits before the next prompt chunk's first token (`echo` across chunks).
    carry: Option<Tensor>,
    /// Sampled and reported, not yet in the cache.
    pending: Option<u32>,
    generated: usize,
    stream: TextStream<'t>,
    text: StopText,
}

/// Runs jobs from `jobs` until it disconnects (or `admission` is closed) and every running
/// sequence has finished.
pub fn run(model: &Model, tok: &Tokenizer, jobs: mpsc::Receiver<Job>, admission: &Admission, limits: Limits) {
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut running: Vec<Seq> = Vec::new();
    let mut open = true;
    loop {
        if open && running.is_empty() && waiting.is_empty() {
            match jobs.recv_timeout(IDLE_POLL) {
                Ok(j) => waiting.push_back(j),
                Err(mpsc::RecvTimeoutError::Timeout) if admission.is_closed() => return,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => open = false,
            }
        }
        loop {
            match jobs.try_recv() {
                Ok(j) => waiting.push_back(j),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if admission.is_closed() {
            for j in waiting.drain(..) {
                admission.release(1);
                let _ = j.events.send(Event::Error { index: j.index, message: "the server is shutting down".into() });
            }
        }
        // A client that went away frees its place and its KV cache.
        let before = waiting.len();
        waiting.retain(|j| !j.events.is_closed());
        admission.release(before - waiting.len());
        running.retain(|s| !s.job.events.is_closed());
        if running.is_empty() && waiting.is_empty() {
            if !open {
                return;
            }
            continue;
        }
        // Admit while there is room: prefill starts this turn for as many as the budget allows.
        while running.len() < limits.max_batch
            && let Some(job) = waiting.pop_front()
        {
            admission.release(1);
            running.push(Seq {
                session: Session::empty(model),
                fed: 0,
                echoed: Vec::new(),
                carry: None,
                pending: None,
                generated: 0,
                stream: tok.text_stream(),
                text: StopText::new(job.stop.clone()),
                job,
            });
        }
        let mut finished: Vec<usize> = Vec::new();
        // At most PREFILL_CHUNK prompt tokens per turn, oldest first: one chunk of a long
        // prompt, or several short prompts whole.
        let mut budget = PREFILL_CHUNK;
        for (i, s) in running.iter_mut().enumerate() {
            let take = (s.job.prompt.len() - s.fed).min(budget);
            if take == 0 {
                continue;
            }
            budget -= take;
            let r = prefill_chunk(s, tok, take).and_then(|()| if s.fed == s.job.prompt.len() { after_prefill(s, tok, limits) } else { Ok(false) });
            if over(&s.job, r) {
                finished.push(i);
            }
        }
        // One token for every sequence with one pending (a finished one has none).
        let tokens: Vec<u32> = running.iter().filter_map(|s| s.pending).collect();
        if !tokens.is_empty() {
            let mut sessions: Vec<&mut Session> = running.iter_mut().filter(|s| s.pending.is_some()).map(|s| &mut s.session).collect();
            let stepped = Session::push_many(&mut sessions, &tokens);
            for (i, s) in running.iter_mut().enumerate().filter(|(_, s)| s.pending.is_some()) {
                s.pending = None;
                let r = match &stepped {
                    Ok(()) => next_token(s, tok, limits),
                    Err(e) => Err(anyhow::anyhow!("{e}")),
                };
                if over(&s.job, r) {
                    finished.push(i);
                }
            }
        }
        // Prefill and decode finish different sequences: no index twice.
        finished.sort_unstable();
        for i in finished.into_iter().rev() {
            running.swap_remove(i);
        }
    }
}

/// Whether a step ended the sequence: it finished, or it failed (the client is told why).
fn over(job: &Job, step: Result<bool>) -> bool {
    step.unwrap_or_else(|e| {
        let _ = job.events.send(Event::Error { index: job.index, message: format!("{e:#}") });
        true
    })
}

/// Feeds the next `take` tokens of the prompt; with `echo`, gathers their log-probabilities.
fn prefill_chunk(s: &mut Seq, tok: &Tokenizer, take: usize) -> Result<()> {
    let prompt = &s.job.prompt;
    let end = (s.fed + take).min(prompt.len());
    let chunk = &prompt[s.fed..end];
    let logits = s.session.extend(chunk, s.job.echo)?;
    if let Some(logits) = logits {
        let k = s.job.logprobs.unwrap_or(0);
        for (j, &id) in chunk.iter().enumerate() {
            // Token `fed + j` is predicted by the logits before it: the previous chunk's last
            // row for the first token of a chunk, none for the prompt's first token.
            let before = if j == 0 { s.carry.take() } else { Some(logits.get(j - 1)?) };
            let entry = match (&before, s.job.logprobs) {
                (Some(row), Some(_)) => token_logprob(tok, row, id, k)?,
                _ => TokenLogprob { id, text: tok.decode(&[id])?, logprob: None, top: Vec::new() },
            };
            s.echoed.push(entry);
        }
        s.carry = Some(logits.get(chunk.len() - 1)?);
    }
    s.fed = end;
    Ok(())
}

/// The prompt is in: reports the echo, then samples the first token. Returns whether the
/// sequence is finished.
fn after_prefill(s: &mut Seq, tok: &Tokenizer, limits: Limits) -> Result<bool> {
    if s.job.echo {
        let tokens = std::mem::take(&mut s.echoed);
        let _ = s.job.events.send(Event::Prompt { index: s.job.index, tokens });
    }
    next_token(s, tok, limits)
}

/// Samples a token from the session's logits and reports it, or finishes. Returns whether the
/// sequence is finished.
fn next_token(s: &mut Seq, tok: &Tokenizer, limits: Limits) -> Result<bool> {
    let job = &mut s.job;
    if s.generated == job.max_tokens {
        return finish(s, Finish::Length);
    }
    let logits = s.session.logits();
    let id = job.sampler.sample(logits)?;
    s.generated += 1;
    let logprob = match job.logprobs {
        Some(k) => Some(token_logprob(tok, logits, id, k)?),
        None => None,
    };
    if Some(id) == tok.meta.eos {
        // Counted in usage, so listed with the log-probabilities too (clients such as lm-eval
        // take the last entry to be the generated token), with no text: it ends the text.
        if let Some(mut lp) = logprob {
            lp.text.clear();
            let _ = job.events.send(Event::Token { index: job.index, text: String::new(), logprob: Some(lp) });
        }
        return finish(s, Finish::Eos);
    }
    let mut released = String::new();
    let stopped = match s.stream.step(id)? {
        Some(piece) => s.text.push(&piece, &mut |t: &str| {
            released.push_str(t);
            Ok(())
        })?,
        None => false,
    };
    let _ = job.events.send(Event::Token { index: job.index, text: released, logprob });
    if stopped {
        return finish(s, Finish::Stop);
    }
    if s.generated == job.max_tokens {
        return finish(s, Finish::Length);
    }
    if s.session.len() >= limits.ctx {
        return finish(s, Finish::Context);
    }
    s.pending = Some(id);
    Ok(false)
}

/// Releases withheld text (unless a stop string ended it) and reports the end.
fn finish(s: &mut Seq, finish: Finish) -> Result<bool> {
    let text = std::mem::replace(&mut s.text, StopText::new(Vec::new()));
    let mut released = String::new();
    text.finish(finish != Finish::Stop, &mut |t: &str| {
        released.push_str(t);
        Ok(())
    })?;
    let job = &s.job;
    if !released.is_empty() {
        let _ = job.events.send(Event::Token { index: job.index, text: released, logprob: None });
    }
    let _ = job.events.send(Event::Done { index: job.index, finish, prompt_tokens: job.prompt.len(), completion_tokens: s.generated });
    Ok(true)
}

/// `id`'s log-probability in the distribution of `logits` `[vocab]` (temperature 1), with the
/// `k` most likely tokens.
fn token_logprob(tok: &Tokenizer, logits: &Tensor, id: u32, k: usize) -> Result<TokenLogprob> {
    let l = logits.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
    let max = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + l.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
    let lp = |i: usize| (l[i] - lse) as f32;
    let mut top: Vec<usize> = Vec::new();
    if k > 0 {
        let mut order: Vec<usize> = (0..l.len()).collect();
        let k = k.min(l.len());
        order.select_nth_unstable_by(k - 1, |&a, &b| l[b].total_cmp(&l[a]).then(a.cmp(&b)));
        order.truncate(k);
        order.sort_unstable_by(|&a, &b| l[b].total_cmp(&l[a]).then(a.cmp(&b)));
        top = order;
    }
    Ok(TokenLogprob {
        id,
        text: tok.decode(&[id])?,
        logprob: Some(lp(id as usize)),
        top: top.into_iter().map(|i| Ok((tok.decode(&[i as u32])?, lp(i)))).collect::<Result<_>>()?,
    })
}
