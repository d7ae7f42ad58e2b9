//! What a training run does: loss, budget, batch shape, optimiser settings, frozen groups.
//! Every setting is checked here, before any model is loaded.

use serde::{Deserialize, Serialize};

use crate::SettingError;
use crate::model::weights::TensorRole;

/// What the student learns from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LossKind {
    /// Forward KL(teacher ‖ student) over the full vocabulary at every position.
    #[serde(rename = "kd")]
    Kd,
    /// Cross-entropy of the next token of the training text.
    #[serde(rename = "ce")]
    Ce,
    /// `kd_weight · kd + (1 − kd_weight) · ce`.
    #[serde(rename = "kd+ce")]
    KdCe,
}

transact_model::impl_choice!(LossKind {
    Kd => "kd", "distillation: forward KL(teacher ‖ student) over the full vocabulary (needs a teacher)";
    Ce => "ce", "cross-entropy of the next token of the training text";
    KdCe => "kd+ce", "kd-weight × kd + (1 − kd-weight) × ce (needs a teacher)";
});

impl LossKind {
    pub fn needs_teacher(self) -> bool {
        self != LossKind::Ce
    }
}

/// How the learning rate moves after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// Half a cosine from the peak down to [`MIN_LR_FRACTION`] of it at the last step.
    Cosine,
    /// The peak until the end.
    Constant,
}

transact_model::impl_choice!(Schedule {
    Cosine => "cosine", "half a cosine from the peak to 10% of it at the last step";
    Constant => "constant", "the peak learning rate until the end";
});

/// Where the cosine schedule ends, as a fraction of the peak (LLaMA's and Minitron's choice).
pub const MIN_LR_FRACTION: f64 = 0.1;

/// A group of parameters that can be frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ParamGroup {
    Embeddings,
    Norms,
    Attention,
    Mlp,
}

transact_model::impl_choice!(ParamGroup {
    Embeddings => "embeddings", "token embedding and LM head (tied or not): a third of a small model's parameters";
    Norms => "norms", "every RMSNorm weight";
    Attention => "attention", "q, k, v and o projections";
    Mlp => "mlp", "gate, up and down projections";
});

impl ParamGroup {
    pub fn of(role: TensorRole) -> ParamGroup {
        use TensorRole::*;
        match role {
            Embed | LmHead => ParamGroup::Embeddings,
            FinalNorm | AttnNorm(_) | MlpNorm(_) => ParamGroup::Norms,
            Q(_) | K(_) | V(_) | O(_) => ParamGroup::Attention,
            Gate(_) | Up(_) | Down(_) => ParamGroup::Mlp,
        }
    }
}

/// How long to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Budget {
    /// At least this many training tokens (rounded up to whole optimizer steps).
    Tokens(u64),
    /// Exactly this many optimizer steps.
    Steps(u64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    pub loss: LossKind,
    /// Weight of the KD term in `kd+ce` (0–1).
    pub kd_weight: f64,
    /// Softmax temperature of both distributions in the KD term (the term is scaled by T²).
    pub temperature: f64,
    pub budget: Budget,
    /// Sequences per forward/backward pass (a micro-batch).
    pub batch: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Micro-batches whose gradients add up to one optimizer step.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup steps from 0 to the peak; `None`: 10 % of the steps.
    pub warmup: Option<u64>,
    pub schedule: Schedule,
    /// Decoupled weight decay of AdamW, on matrices only (not norms).
    pub weight_decay: f64,
    /// Global gradient-norm clip; 0 turns it off.
    pub clip: f64,
    /// Seeds the order of the training blocks.
    pub seed: u64,
    pub freeze: Vec<ParamGroup>,
    /// Held-out wiki perplexity every this many steps (and after the last); `None`: never.
    pub eval_every: Option<u64>,
    /// Checkpoint every this many steps; `None`: never.
    pub checkpoint_every: Option<u64>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            loss: LossKind::Kd,
            kd_weight: 0.5,
            temperature: 1.0,
            budget: Budget::Tokens(100_000),
            batch: 4,
            seq_len: 256,
            grad_accum: 2,
            lr: 3e-4,
            warmup: None,
            schedule: Schedule::Cosine,
            weight_decay: 0.0,
            clip: 1.0,
            seed: 0,
            freeze: Vec::new(),
            eval_every: None,
            checkpoint_every: None,
        }
    }
}

/// AdamW's moment decay rates (LLaMA's and the 0.9 / 0.95) and its epsilon.
pub const BETAS: (f64, f64) = (0.9, 0.95);
pub const ADAM_EPS: f64 = 1e-8;

impl TrainOptions {
    pub fn tokens_per_step(&self) -> u64 {
        (self.batch * self.seq_len * self.grad_accum) as u64
    }

    /// Optimizer steps the budget buys.
    pub fn total_steps(&self) -> u64 {
        match self.budget {
            Budget::Steps(s) => s,
            Budget::Tokens(t) => t.div_ceil(self.tokens_per_step()),
        }
    }

    pub fn warmup_steps(&self) -> u64 {
        self.warmup.unwrap_or_else(|| self.total_steps().div_ceil(10))
    }

    /// The learning rate of step `step` (0-based): linear warmup to the peak over steps
    /// 0 .. warmup (the first step already moves), then the schedule.
    pub fn lr_at(&self, step: u64) -> f64 {
        let (warm, total) = (self.warmup_steps(), self.total_steps());
        if step < warm {
            return self.lr * (step + 1) as f64 / warm as f64;
        }
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Cosine => {
                let span = total.saturating_sub(warm).max(1);
                let progress = ((step - warm) as f64 / span as f64).min(1.0);
                let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                self.lr * (MIN_LR_FRACTION + (1.0 - MIN_LR_FRACTION) * cos)
            }
        }
    }

    pub fn is_frozen(&self, role: TensorRole) -> bool {
        self.freeze.contains(&ParamGroup::of(role))
    }

    /// Refuses settings that cannot train, before anything is loaded.
    pub fn check(&self) -> Result<(), SettingError> {
        let bad = |setting: &'static str, problem: String| Err(SettingError::new(setting, problem));
        let finite_in = |x: f64, lo: f64, hi: f64| x.is_finite() && x >= lo && x <= hi;
        if !finite_in(self.kd_weight, 0.0, 1.0) {
            return bad("kd_weight", format!("must be a number from 0 to 1, got {}", self.kd_weight));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0 && self.temperature <= 100.0) {
            return bad("temperature", format!("must be a number above 0 and at most 100, got {}", self.temperature));
        }
        match self.budget {
            Budget::Tokens(0) => return bad("tokens", "must be at least 1".into()),
            Budget::Steps(0) => return bad("steps", "must be at least 1".into()),
            _ => {}
        }
        for (name, v) in [("batch", self.batch), ("grad_accum", self.grad_accum)] {
            if v == 0 {
                return bad(name, "must be at least 1".into());
            }
        }
        if self.seq_len < 2 {
            return bad("seq_len", format!("must be at least 2 tokens, got {}", self.seq_len));
        }
        if self.batch.saturating_mul(self.seq_len).saturating_mul(self.grad_accum) > 1 << 30 {
            return bad("batch", "× `seq_len` × `grad_accum` exceeds 2^30 tokens per step".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr < 1.0) {
            return bad("lr", format!("must be a number above 0 and below 1, got {}", self.lr));
        }
        if !finite_in(self.weight_decay, 0.0, 1.0) {
            return bad("weight_decay", format!("must be a number from 0 to 1, got {}", self.weight_decay));
        }
        if !(self.clip.is_finite() && self.clip >= 0.0) {
            return bad("clip", format!("must be a number ≥ 0 (0 turns clipping off), got {}", self.clip));
        }
        if self.total_steps() > 1 << 40 {
            return bad("tokens", "asks for more steps than a run can take".into());
        }
        if let Some(w) = self.warmup
            && w > self.total_steps()
        {
            return bad("warmup", format!("{w} steps is more than the run's {} steps", self.total_steps()));
        }
        if self.eval_every == Some(0) {
            return bad("eval_every", "must be at least 1 step".into());
        }
        if self.checkpoint_every == Some(0) {
            return bad("checkpoint_every", "must be at least 1 step".into());
        }
        let groups = [ParamGroup::Embeddings, ParamGroup::Norms, ParamGroup::Attention, ParamGroup::Mlp];
        if groups.iter().all(|g| self.freeze.contains(g)) {
            return bad("freeze", "leaves nothing to train".into());
        }
        Ok(())
    }
}

/// Parses a count with an optional K/M/B suffix (powers of 1000): `100K`, `1.5M`, `2B`, `100000`.
pub fn count(s: &str) -> Result<u64, String> {
    let t = s.trim().replace('_', "");
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1e3),
        Some((i, 'm' | 'M')) => (&t[..i], 1e6),
        Some((i, 'b' | 'B' | 'g' | 'G')) => (&t[..i], 1e9),
        _ => (t.as_str(), 1.0),
    };
    if let Ok(n) = num.parse::<u64>()
        && mult == 1.0
    {
        return if n == 0 { Err("must be at least 1".into()) } else { Ok(n) };
    }
    let x: f64 = num.parse().map_err(|_| format!("`{s}` is not a count (e.g. 100000, 100K, 1.5M, 2B)"))?;
    let n = x * mult;
    if !(1.0..1e18).contains(&n) {
        return Err(format!("`{s}` must be at least 1 and below 10^18"));
    }
    Ok(n.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_take_suffixes() {
        assert_eq!(count("100K"), Ok(100_000));
        assert_eq!(count("1.5M"), Ok(1_500_000));
        assert_eq!(count("2B"), Ok(2_000_000_000));
        assert_eq!(count("100_000"), Ok(100_000));
        for bad in ["0", "-5", "NaN", "infK", "1e30", "ten", ""] {
            assert!(count(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn schedule_warms_up_then_decays_to_a_tenth() {
        let o = TrainOptions { budget: Budget::Steps(100), warmup: Some(10), ..Default::default() };
        assert!((o.lr_at(0) - 3e-5).abs() < 1e-12);
        assert!((o.lr_at(9) - 3e-4).abs() < 1e-12);
        assert!((o.lr_at(10) - 3e-4).abs() < 1e-12);
        assert!((o.lr_at(99) - 3e-5).abs() < 1e-6);
        assert!(o.lr_at(50) < o.lr_at(30));
        let c = TrainOptions { schedule: Schedule::Constant, ..o };
        assert_eq!(c.lr_at(99), 3e-4);
    }

    #[test]
    fn tokens_round_up_to_whole_steps() {
        let o = TrainOptions { budget: Budget::Tokens(2049), batch: 4, seq_len: 256, grad_accum: 2, ..Default::default() };
        assert_eq!(o.total_steps(), 2);
        assert_eq!(o.warmup_steps(), 1);
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = |o: TrainOptions| o.check().unwrap_err().setting;
        assert_eq!(bad(TrainOptions { lr: f64::NAN, ..Default::default() }), "lr");
        assert_eq!(bad(TrainOptions { batch: 0, ..Default::default() }), "batch");
        assert_eq!(bad(TrainOptions { kd_weight: 1.5, ..Default::default() }), "kd_weight");
        assert_eq!(bad(TrainOptions { budget: Budget::Steps(0), ..Default::default() }), "steps");
        let all = vec![ParamGroup::Embeddings, ParamGroup::Norms, ParamGroup::Attention, ParamGroup::Mlp];
        assert_eq!(bad(TrainOptions { freeze: all, ..Default::default() }), "freeze");
        assert!(TrainOptions::default().check().is_ok());
    }
}
