//! One optimizer step at a time: draw the step's sequences, run the teacher on the fast engine
//! (no graph), the student through the differentiable reference forward, back-propagate each
//! micro-batch's loss, accumulate, clip, and update with AdamW.

use std::time::Instant;

use anyhow::{Result, bail};
use candle_core::{Tensor, Var};

use super::adamw::{AdamW, Param};
use super::log::StepRecord;
use super::loss::{TeacherTargets, loss};
use super::options::TrainOptions;
use super::text::TrainText;
use crate::model::config::ModelConfig;
use crate::model::forward::{Logits, Model};
use crate::model::reference;
use crate::model::weights::{TensorRole, Weights};

pub struct Trainer<'a> {
    cfg: ModelConfig,
    /// The student's weights as the forward reads them: the trainable ones are the optimizer's
    /// `Var`s (updated in place), the frozen ones plain tensors outside any graph.
    weights: Weights,
    pub opt: AdamW,
    options: &'a TrainOptions,
    teacher: Option<&'a Model>,
    text: &'a TrainText,
    pub frozen_params: usize,
}

impl<'a> Trainer<'a> {
    /// A trainer for `student` (its weights are copied: the model passed in does not change).
    pub fn new(student: &Model, teacher: Option<&'a Model>, text: &'a TrainText, options: &'a TrainOptions) -> Result<Self> {
        let cfg = student.config.clone();
        let mut params = Vec::new();
        let mut frozen_params = 0;
        let weights = Weights::from_roles(&cfg, |role| -> Result<Tensor> {
            let w = student.weights.get(role).expect("every role of the config has a tensor");
            let w = w.to_dtype(candle_core::DType::F32)?.copy()?;
            if options.is_frozen(role) {
                frozen_params += w.elem_count();
                return Ok(w);
            }
            let var = Var::from_tensor(&w)?;
            let t = var.as_tensor().clone();
            params.push(Param::new(role, var));
            Ok(t)
        })?;
        if params.is_empty() {
            bail!("every parameter group is frozen: nothing to train");
        }
        Ok(Self { cfg, weights, opt: AdamW::new(params), options, teacher, text, frozen_params })
    }

    pub fn trainable_params(&self) -> usize {
        self.opt.params.iter().map(|p| p.var.elem_count()).sum()
    }

    /// The student as it is now, for the fast engine (sharing the weights' storage: use it
    /// before the next step).
    pub fn model(&self) -> Model {
        Model::new(self.cfg.clone(), self.weights.clone())
    }

    /// A copy of the current weights that later steps do not change.
    pub fn snapshot(&self) -> Result<Weights> {
        Weights::from_roles(&self.cfg, |role: TensorRole| -> Result<Tensor> {
            Ok(self.weights.get(role).expect("every role of the config has a tensor").detach().copy()?)
        })
    }

    /// Runs optimizer step number `self.opt.step + 1` and returns its record.
    pub fn step(&mut self) -> Result<StepRecord> {
        let o = self.options;
        let t0 = Instant::now();
        let step = self.opt.step;
        let device = self.weights.embed.device().clone();
        let (mut total, mut kd, mut ce) = (0.0, None::<f64>, None::<f64>);
        let (mut teacher_s, mut forward_s, mut backward_s) = (0.0, 0.0, 0.0);
        for micro in 0..o.grad_accum {
            let first = (step * o.grad_accum as u64 + micro as u64) * o.batch as u64;
            let ids = self.text.sequences(o.seed, first, o.batch);
            let tokens = Tensor::from_vec(ids, (o.batch, o.seq_len), &device)?;
            let targets = match (self.teacher, o.loss.needs_teacher()) {
                (Some(t), true) => {
                    let t1 = Instant::now();
                    let targets = TeacherTargets::new(&t.forward(&tokens, None, Logits::All)?, o.temperature)?;
                    teacher_s += t1.elapsed().as_secs_f64();
                    Some(targets)
                }
                _ => None,
            };
            let t1 = Instant::now();
            let logits = reference::forward(&self.cfg, &self.weights, &tokens)?;
            let l = loss(o.loss, &logits, &tokens, targets.as_ref(), o.kd_weight, o.temperature)?;
            drop(targets);
            let part = 1.0 / o.grad_accum as f64;
            let value = l.total.to_scalar::<f32>()? as f64;
            if !value.is_finite() {
                bail!("the loss is {value} at step {} (micro-batch {}): training diverged; lower `lr`", step + 1, micro + 1);
            }
            total += value * part;
            kd = l.kd.map(|x| kd.unwrap_or(0.0) + x * part);
            ce = l.ce.map(|x| ce.unwrap_or(0.0) + x * part);
            forward_s += t1.elapsed().as_secs_f64();
            let t2 = Instant::now();
            let grads = (l.total * part)?.backward()?;
            for p in &mut self.opt.params {
                if let Some(g) = grads.get(p.var.as_tensor()) {
                    p.accumulate(g)?;
                }
            }
            backward_s += t2.elapsed().as_secs_f64();
        }
        let grad_norm = self.opt.grad_norm();
        if !grad_norm.is_finite() {
            bail!("the gradient norm is {grad_norm} at step {}: training diverged; lower `lr`", step + 1);
        }
        let scale = if o.clip > 0.0 && grad_norm > o.clip { o.clip / grad_norm } else { 1.0 };
        let lr = o.lr_at(step);
        let t3 = Instant::now();
        self.opt.update(lr, o.weight_decay, scale)?;
        let optimizer_s = t3.elapsed().as_secs_f64();
        let seconds = t0.elapsed().as_secs_f64();
        Ok(StepRecord {
            step: step + 1,
            tokens: (step + 1) * o.tokens_per_step(),
            loss: total,
            kd,
            ce,
            lr,
            grad_norm,
            seconds,
            teacher_seconds: teacher_s,
            forward_seconds: forward_s,
            backward_seconds: backward_s,
            optimizer_seconds: optimizer_s,
            tokens_per_s: o.tokens_per_step() as f64 / seconds,
            eval_perplexity: None,
        })
    }
}
