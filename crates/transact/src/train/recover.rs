//! Recovery as a step of another job (`prune --recover`): train a model in memory for one
//! budget and hand back the trained weights with a summary. No files: the caller checkpoints
//! the result (prune does after every shot).

use std::time::Instant;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::job::{mean_loss, status};
use super::options::TrainOptions;
use super::teacher::Teacher;
use super::text::TrainText;
use super::trainer::Trainer;
use crate::model::forward::Model;
use crate::progress::Progress;

/// What one in-memory recovery did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryRecord {
    pub loss: String,
    /// Where in the training text it started (sequences of `seq_len`).
    pub first_sequence: u64,
    pub seq_len: usize,
    pub tokens: u64,
    pub steps: u64,
    /// Peak learning rate of this run.
    pub lr: f64,
    /// Mean loss of the first and the last 10 % of the steps (at least one step each).
    pub loss_start: f64,
    pub loss_end: f64,
    /// The loss of every step, for the curves of `transact report`.
    #[serde(default)]
    pub loss_by_step: Vec<f64>,
    pub seconds: f64,
    pub tokens_per_s: f64,
}

/// Trains `student` with `options` (their budget, from a fresh optimizer) against `teacher` on
/// `text`, from its sequence `first_sequence` on, and returns the trained model.
pub fn train_in_memory(
    student: &Model,
    teacher: Option<&Teacher>,
    text: &TrainText,
    first_sequence: u64,
    options: &TrainOptions,
    label: &str,
    progress: &dyn Progress,
) -> Result<(Model, RecoveryRecord)> {
    let t0 = Instant::now();
    let mut trainer = Trainer::new(student, teacher, text, options)?;
    trainer.first_sequence = first_sequence;
    let total = options.total_steps();
    let mut records = Vec::with_capacity(total as usize);
    progress.start(label, total);
    while trainer.opt.step < total {
        let r = trainer.step()?;
        progress.advance(1);
        progress.message(&status(&r, None));
        records.push(r);
    }
    progress.finish();
    let seconds = t0.elapsed().as_secs_f64();
    let tokens = total * options.tokens_per_step();
    let record = RecoveryRecord {
        loss: transact_model::choice::Choice::name(options.loss).to_string(),
        first_sequence,
        seq_len: options.seq_len,
        tokens,
        steps: total,
        lr: options.lr,
        loss_start: mean_loss(&records, true),
        loss_end: mean_loss(&records, false),
        loss_by_step: records.iter().map(|r| r.loss).collect(),
        seconds,
        tokens_per_s: tokens as f64 / seconds.max(1e-9),
    };
    Ok((Model::new(student.config.clone(), trainer.snapshot()?), record))
}
