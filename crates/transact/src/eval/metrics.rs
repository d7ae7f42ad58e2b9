//! Per-task metrics from scored docs, as lm-eval aggregates them.

use anyhow::Result;
use serde::Serialize;

use super::scorer::{encode, score_group};
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

/// Scores every doc of `task` (contexts longer than `max_len` are left-truncated). The requests
/// of `batch_docs` docs run together: with 1, a doc's choices share their common prefix; with
/// more, docs rarely share one and the batch is simply padded.
pub fn run_task(model: &Model, tok: &Tokenizer, task: &Task, max_len: usize, batch_docs: usize, progress: &dyn Progress) -> Result<TaskResult> {
    let t0 = std::time::Instant::now();
    progress.start(&task.name, task.docs.len() as u64);
    let (mut acc, mut acc_norm, mut logliks) = (Vec::new(), Vec::new(), Vec::new());
    let mut tokens = 0;
    let mut scored_docs = Vec::with_capacity(task.docs.len());
    for chunk in task.docs.chunks(batch_docs.max(1)) {
        let encoded = chunk
            .iter()
            .flat_map(|d| d.requests.iter().map(|r| encode(tok, r, max_len)))
            .collect::<Result<Vec<_>>>()?;
        let mut scored = score_group(model, &encoded)?.into_iter();
        for d in chunk {
            scored_docs.push((d, scored.by_ref().take(d.requests.len()).collect::<Vec<_>>()));
        }
        progress.advance(chunk.len() as u64);
    }
    for (doc, scored) in scored_docs {
        tokens += scored.iter().map(|s| s.tokens).sum::<usize>();
        match task.kind {
            TaskKind::MultipleChoice => {
                let pick = argmax(scored.iter().map(|s| s.loglik));
                let pick_norm = argmax(scored.iter().zip(&doc.norm_chars).map(|(s, &n)| s.loglik / n.max(1) as f64));
                acc.push(f64::from(pick == doc.gold));
                acc_norm.push(f64::from(pick_norm == doc.gold));
            }
            TaskKind::Lambada => {
                acc.push(f64::from(scored[0].is_greedy));
                logliks.push(scored[0].loglik);
            }
        }
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
    })
}
