//! `train_log.jsonl`: one JSON object per optimizer step, appended as the run goes (so a crash
//! keeps what was done, and `tail -f` follows a run).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// 1-based: the number of optimizer steps done after this one.
    pub step: u64,
    /// Training tokens seen after this step.
    pub tokens: u64,
    /// The optimised loss, averaged over the step's micro-batches.
    pub loss: f64,
    /// Its KD part (forward KL to the teacher, nats per position), when the loss has one.
    pub kd: Option<f64>,
    /// Its CE part (nats per predicted token), when the loss has one.
    pub ce: Option<f64>,
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Wall time of the step, the teacher's forward included.
    pub seconds: f64,
    /// Of which the teacher's forward,
    pub teacher_seconds: f64,
    /// the student's forward and loss,
    pub forward_seconds: f64,
    /// the backward pass and gradient accumulation,
    pub backward_seconds: f64,
    /// and the clip and AdamW update.
    pub optimizer_seconds: f64,
    pub tokens_per_s: f64,
    /// Held-out wiki perplexity after this step, on steps that evaluate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_perplexity: Option<f64>,
}

pub fn append(path: &Path, r: &StepRecord) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("{}: cannot open for appending", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(r)?).with_context(|| format!("{}: cannot write", path.display()))
}

pub fn read(path: &Path) -> Result<Vec<StepRecord>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{}: line {}: not a step record", path.display(), i + 1)))
        .collect()
}
