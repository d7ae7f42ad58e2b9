//! One optimizer step at a time: draw the step's sequences, run the teacher on the fast engine
//! (no graph), the student through the reference forward built from the fused ops (custom ops
//! with hand-written backward passes, `transact_model::fused`), the loss as one fused op,
//! back-propagate each micro-batch, accumulate, clip, and update with AdamW.

use std::time::Instant;

use anyhow::{Result, bail};
use candle_core::{Tensor, Var};

use super::adamw::{AdamW, Param};
use super::fused_loss::fused_loss;
use super::log::StepRecord;
use super::loss::{Loss, TeacherTargets, loss};
use super::options::TrainOptions;
use super::teacher::Teacher;
use super::text::TrainText;
use crate::model::config::ModelConfig;
use crate::model::forward::Model;
use crate::model::fused::Fused;
use crate::model::reference;
use crate::model::weights::{TensorRole, Weights};

pub struct Trainer<'a> {
    cfg: ModelConfig,
    /// The student's weights as the forward reads them: the trainable ones are the optimizer's
    /// `Var`s (updated in place), the frozen ones plain tensors outside any graph.
    weights: Weights,
    pub opt: AdamW,
    options: &'a TrainOptions,
    teacher: Option<&'a Teacher<'a>>,
    text: &'a TrainText,
    pub frozen_params: usize,
    /// Sequences of the text skipped before step 1 (a run that continues where another stopped).
    pub first_sequence: u64,
}

impl<'a> Trainer<'a> {
    /// A trainer for `student` (its weights are copied: the model passed in does not change).
    pub fn new(student: &Model, teacher: Option<&'a Teacher<'a>>, text: &'a TrainText, options: &'a TrainOptions) -> Result<Self> {
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
        Ok(Self { cfg, weights, opt: AdamW::new(params), options, teacher, text, frozen_params, first_sequence: 0 })
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

    /// Adds the gradients of `part` × the loss of sequences `first .. first + batch` to the
    /// accumulated ones (no update) and returns that micro-batch's measurements.
    pub fn accumulate(&mut self, first: u64, part: f64) -> Result<Micro> {
        let o = self.options;
        let device = self.weights.embed.device().clone();
        let ids = self.text.sequences(o.seed, first, o.batch);
        let tokens = Tensor::from_vec(ids.clone(), (o.batch, o.seq_len), &device)?;
        let mut m = Micro::default();
        let teacher_logits = match (self.teacher, o.loss.needs_teacher()) {
            (Some(t), true) => {
                let t1 = Instant::now();
                let logits = t.logits(&tokens, &ids)?;
                m.teacher_seconds = t1.elapsed().as_secs_f64();
                Some(logits)
            }
            _ => None,
        };
        let t1 = Instant::now();
        let logits = reference::forward_with(&Fused, &self.cfg, &self.weights, &tokens)?;
        let l = match fused_loss(o.loss, &logits, &ids, teacher_logits.as_ref(), o.kd_weight, o.temperature)? {
            Some(l) => Loss { total: l.total, kd: l.kd, ce: l.ce },
            None => {
                let targets = teacher_logits.as_ref().map(|x| TeacherTargets::new(x, o.temperature)).transpose()?;
                loss(o.loss, &logits, &tokens, targets.as_ref(), o.kd_weight, o.temperature)?
            }
        };
        drop(teacher_logits);
        (m.loss, m.kd, m.ce) = (l.total.to_scalar::<f32>()? as f64, l.kd, l.ce);
        m.forward_seconds = t1.elapsed().as_secs_f64();
        if !m.loss.is_finite() {
            return Ok(m);
        }
        let t2 = Instant::now();
        let grads = (l.total * part)?.backward()?;
        for p in &mut self.opt.params {
            if let Some(g) = grads.get(p.var.as_tensor()) {
                p.accumulate(g)?;
            }
        }
        m.backward_seconds = t2.elapsed().as_secs_f64();
        Ok(m)
    }

    /// Runs optimizer step number `self.opt.step + 1` and returns its record.
    pub fn step(&mut self) -> Result<StepRecord> {
        let o = self.options;
        let t0 = Instant::now();
        let step = self.opt.step;
        let part = 1.0 / o.grad_accum as f64;
        let mut sum = Micro::default();
        let (mut kd, mut ce) = (None::<f64>, None::<f64>);
        for micro in 0..o.grad_accum {
            let first = self.first_sequence + (step * o.grad_accum as u64 + micro as u64) * o.batch as u64;
            let m = self.accumulate(first, part)?;
            if !m.loss.is_finite() {
                bail!("the loss is {} at step {} (micro-batch {}): training diverged; lower `lr`", m.loss, step + 1, micro + 1);
            }
            sum.loss += m.loss * part;
            kd = m.kd.map(|x| kd.unwrap_or(0.0) + x * part);
            ce = m.ce.map(|x| ce.unwrap_or(0.0) + x * part);
            sum.teacher_seconds += m.teacher_seconds;
            sum.forward_seconds += m.forward_seconds;
            sum.backward_seconds += m.backward_seconds;
        }
        let grad_norm = self.opt.grad_norm();
        if !grad_norm.is_finite() {
            bail!("the gradient norm is {grad_norm} at step {}: training diverged; lower `lr`", step + 1);
        }
        let scale = if o.clip > 0.0 && grad_norm > o.clip { o.clip / grad_norm } else { 1.0 };
        let lr = o.lr_at(step);
        let t3 = Instant::now();
        self.opt.update(lr, o.weight_decay, scale)?;
        let optimizer_seconds = t3.elapsed().as_secs_f64();
        let seconds = t0.elapsed().as_secs_f64();
        Ok(StepRecord {
            step: step + 1,
            tokens: (step + 1) * o.tokens_per_step(),
            loss: sum.loss,
            kd,
            ce,
            lr,
            grad_norm,
            seconds,
            teacher_seconds: sum.teacher_seconds,
            forward_seconds: sum.forward_seconds,
            backward_seconds: sum.backward_seconds,
            optimizer_seconds,
            tokens_per_s: o.tokens_per_step() as f64 / seconds,
            eval_perplexity: None,
        })
    }
}

/// What one micro-batch measured.
#[derive(Debug, Clone, Default)]
pub struct Micro {
    pub loss: f64,
    pub kd: Option<f64>,
    pub ce: Option<f64>,
    pub teacher_seconds: f64,
    pub forward_seconds: f64,
    pub backward_seconds: f64,
}
