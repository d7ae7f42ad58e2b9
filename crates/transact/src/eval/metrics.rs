//! Per-task metrics from scored docs, as lm-eval aggregates them.

use anyhow::Result;
use serde::Serialize;

use super::scorer::{Encoded, encode, packed_len, score_group, score_packed};
use super::task::{Task, TaskKind};
use crate::model::forward::Model;
use crate::model::tokenizer::Tokenizer;
use crate::progress::Progress;

#[derive(Debug, Clone, Serialize)]
pub struct TaskResult {
    pub task: String,
    pub kind: TaskKind,
    pub split: String,
    pub source: String,
    pub docs: usize,
    /// Continuation tokens scored.
    pub tokens: usize,
    pub acc: f64,
    pub acc_stderr: f64,
    /// Multiple choice only: argmax of log-likelihood ÷ choice length in characters.
    pub acc_norm: Option<f64>,
    pub acc_norm_stderr: Option<f64>,
    /// LAMBADA only: exp(−mean log-likelihood of the last word).
    pub perplexity: Option<f64>,
    pub seconds: f64,
    /// Every doc's scores, in doc order (`eval --samples` writes them; not in the report).
    #[serde(skip)]
    pub samples: Vec<DocSample>,
}

/// One doc's scores, as lm-eval's `--log_samples` keeps them.
#[derive(Debug, Clone, Serialize)]
pub struct DocSample {
    pub doc: usize,
    pub gold: usize,
    /// Log-likelihood of each request (choice) of the doc.
    pub logliks: Vec<f64>,
    /// Whether each request's continuation is the greedy one.
    pub greedy: Vec<bool>,
    pub acc: f64,
    /// Multiple choice only.
    pub acc_norm: Option<f64>,
}

/// Mean and its standard error (sample standard deviation / √n), as lm-eval's `mean_stderr`.
pub fn mean_stderr(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, f64::NAN);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// Index of the first maximum (numpy's argmax on ties).
fn argmax(xs: impl IntoIterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, x) in xs.into_iter().enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best.0
}

/// Tokens packed into one forward pass by default (see [`run_task`]).
pub const PACK_TOKENS: usize = 1024;

/// The most tokens one pack may hold: its scored rows' logits take up to `rows × vocab × 4`
/// bytes (1.6 GB at 8192 rows of a 49K vocabulary).
pub const MAX_PACK_TOKENS: usize = 8192;

/// Refuses a `pack_tokens` above [`MAX_PACK_TOKENS`] (front ends call it before loading a model).
pub fn check_pack_tokens(pack_tokens: usize) -> std::result::Result<(), crate::SettingError> {
    if pack_tokens > MAX_PACK_TOKENS {
        return Err(crate::SettingError::new("pack_tokens", format!("must be at most {MAX_PACK_TOKENS}, got {pack_tokens}")));
    }
    Ok(())
}

/// Scores every doc of `task` (contexts longer than `max_len` are left-truncated). Docs are
/// packed into forward passes of up to `pack_tokens` tokens ([`score_packed`]); a longer doc, or
/// every doc with `pack_tokens` 0, runs on its own with its prefix in a KV cache ([`score_group`]).
pub fn run_task(model: &Model, tok: &Tokenizer, task: &Task, max_len: usize, pack_tokens: usize, progress: &dyn Progress) -> Result<TaskResult> {
    check_pack_tokens(pack_tokens)?;
    let t0 = std::time::Instant::now();
    progress.start(&task.name, task.docs.len() as u64);
    let (mut acc, mut acc_norm, mut logliks) = (Vec::new(), Vec::new(), Vec::new());
    let mut tokens = 0;
    let mut scored_docs = Vec::with_capacity(task.docs.len());
    let encoded: Vec<Vec<Encoded>> =
        task.docs.iter().map(|d| d.requests.iter().map(|r| encode(tok, r, max_len)).collect::<Result<Vec<_>>>()).collect::<Result<_>>()?;
    let lens: Vec<usize> = encoded.iter().map(|e| packed_len(e)).collect();
    let mut i = 0;
    while i < encoded.len() {
        // The next docs that fit in one pack (at least one).
        let (mut j, mut len) = (i, 0);
        while j < encoded.len() && (j == i || len + lens[j] <= pack_tokens) {
            len += lens[j];
            j += 1;
        }
        let scored = if len > pack_tokens { vec![score_group(model, &encoded[i])?] } else { score_packed(model, &encoded[i..j])? };
        scored_docs.extend(task.docs[i..j].iter().zip(scored));
        progress.advance((j - i) as u64);
        i = j;
    }
    let mut samples = Vec::with_capacity(scored_docs.len());
    for (i, (doc, scored)) in scored_docs.into_iter().enumerate() {
        tokens += scored.iter().map(|s| s.tokens).sum::<usize>();
        let norm = match task.kind {
            TaskKind::MultipleChoice => {
                let pick = argmax(scored.iter().map(|s| s.loglik));
                let pick_norm = argmax(scored.iter().zip(&doc.norm_chars).map(|(s, &n)| s.loglik / n.max(1) as f64));
                acc.push(f64::from(pick == doc.gold));
                acc_norm.push(f64::from(pick_norm == doc.gold));
                acc_norm.last().copied()
            }
            TaskKind::Lambada => {
                acc.push(f64::from(scored[0].is_greedy));
                logliks.push(scored[0].loglik);
                None
            }
        };
        samples.push(DocSample {
            doc: i,
            gold: doc.gold,
            logliks: scored.iter().map(|s| s.loglik).collect(),
            greedy: scored.iter().map(|s| s.is_greedy).collect(),
            acc: *acc.last().expect("pushed above"),
            acc_norm: norm,
        });
    }
    progress.finish();
    let (acc_mean, acc_se) = mean_stderr(&acc);
    let norm = (task.kind == TaskKind::MultipleChoice).then(|| mean_stderr(&acc_norm));
    let perplexity = match task.kind {
        TaskKind::Lambada => Some(crate::model::finite::check_value((-mean_stderr(&logliks).0).exp(), &format!("the perplexity of task `{}`", task.name))?),
        TaskKind::MultipleChoice => None,
    };
    Ok(TaskResult {
        task: task.name.clone(),
        kind: task.kind,
        split: task.split.clone(),
        source: task.source.clone(),
        docs: task.docs.len(),
        tokens,
        acc: acc_mean,
        acc_stderr: acc_se,
        acc_norm: norm.map(|n| n.0),
        acc_norm_stderr: norm.map(|n| n.1),
        perplexity,
        seconds: t0.elapsed().as_secs_f64(),
        samples,
    })
}
