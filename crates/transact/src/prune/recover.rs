//! Built-in recovery inside `prune`: distillation from the dense model (or the other losses of
//! `transact train`) after every shot and after the last one.
//!
//! The budget between shots is split as the paper's schedule splits its 1B tokens: with
//! `p = tokens / K`, shot `i` of `K` trains on `p/2 + p·(i−1)/(K−1)` tokens (later shots remove
//! from a model that has already lost more, and get more), and its peak learning rate is
//! `lr · 2i/K` (the paper's `5e-5 · 2i/K`; the mean over the shots is about `lr`). One shot
//! gets the whole budget at `lr`. The final recovery trains at `lr`. Every run starts a fresh
//! optimizer, as the paper's per-shot runs do.
//!
//! The split is made in whole optimizer steps, so K shots train on exactly as many tokens as one
//! shot with the same budget: the budget rounds up to whole steps once and is apportioned by
//! largest remainders (a shot whose share is under a step may train on nothing).

use serde::{Deserialize, Serialize};

use crate::SettingError;
use crate::train::{Budget, TrainOptions};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recovery {
    /// Training tokens over all the shots' recoveries (0: none between shots).
    pub tokens: u64,
    /// Training tokens after the last shot (0: none).
    pub final_tokens: u64,
    /// Training text (as `transact train --data`).
    pub data: String,
    /// Everything else of each run (loss, batch, peak lr, …); the budget is set per run.
    pub train: TrainOptions,
}

impl Recovery {
    /// Tokens of shot `shot` (1-based) of `shots`: a whole number of optimizer steps; over all
    /// the shots, the budget rounded up to whole steps.
    pub fn shot_tokens(&self, shot: usize, shots: usize) -> u64 {
        let step = self.train.tokens_per_step().max(1);
        let steps = self.tokens.div_ceil(step);
        if shots <= 1 {
            return steps * step;
        }
        // Shot i's share of the steps is (1/2 + (i−1)/(K−1)) / K (the shares sum to 1). Each
        // shot gets its share rounded down, and the steps left over go to the largest fractions,
        // later shots first on ties, so a later shot never gets fewer steps than an earlier one.
        let k = shots as f64;
        let exact: Vec<f64> = (0..shots).map(|i| steps as f64 * (0.5 + i as f64 / (k - 1.0)) / k).collect();
        let mut whole: Vec<u64> = exact.iter().map(|e| e.floor() as u64).collect();
        let left = steps.saturating_sub(whole.iter().sum());
        let mut by_fraction: Vec<usize> = (0..shots).collect();
        by_fraction.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())).then(b.cmp(&a)));
        for &i in by_fraction.iter().take(left as usize) {
            whole[i] += 1;
        }
        whole[shot - 1] * step
    }

    /// The training settings of shot `shot`'s recovery, or `None` when it trains nothing.
    pub fn shot_options(&self, shot: usize, shots: usize) -> Option<TrainOptions> {
        let tokens = self.shot_tokens(shot, shots);
        let lr = if shots == 1 { self.train.lr } else { self.train.lr * 2.0 * shot as f64 / shots as f64 };
        (tokens > 0).then(|| TrainOptions { budget: Budget::Tokens(tokens), lr, ..self.run_options() })
    }

    /// The training settings of the recovery after the last shot.
    pub fn final_options(&self) -> Option<TrainOptions> {
        (self.final_tokens > 0).then(|| TrainOptions { budget: Budget::Tokens(self.final_tokens), ..self.run_options() })
    }

    fn run_options(&self) -> TrainOptions {
        TrainOptions { eval_every: None, checkpoint_every: None, warmup: None, ..self.train.clone() }
    }

    pub fn check(&self) -> Result<(), SettingError> {
        if self.tokens == 0 && self.final_tokens == 0 {
            return Err(SettingError::new("recover", "trains no tokens: give `recover` and/or `final_recover` above 0"));
        }
        let run = TrainOptions { budget: Budget::Tokens(self.tokens.max(self.final_tokens)), ..self.run_options() };
        // The training settings under the names `prune` gives them.
        run.check().map_err(|e| SettingError::new(if e.setting == "lr" { "recover_lr" } else { "recover" }, e.problem))?;
        if self.tokens > 0 && self.train.lr * 2.0 >= 1.0 {
            return Err(SettingError::new("recover_lr", format!("must be below 0.5: the last of several shots trains at 2 × lr, got {}", self.train.lr)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recovery(tokens: u64) -> Recovery {
        Recovery { tokens, final_tokens: 0, data: "mix".into(), train: TrainOptions::default() }
    }

    #[test]
    fn the_split_follows_the_paper_and_sums_to_the_budget() {
        let step = TrainOptions::default().tokens_per_step();
        let r = recovery(1_000_000_000);
        let t: Vec<u64> = (1..=8).map(|i| r.shot_tokens(i, 8)).collect();
        let whole = 1_000_000_000u64.div_ceil(step) * step;
        assert!(t[0].abs_diff(62_500_000) < step && t[7].abs_diff(187_500_000) < step, "{t:?}");
        assert_eq!(t.iter().sum::<u64>(), whole);
        assert!(t.windows(2).all(|w| w[0] < w[1]));
        // K shots train on exactly the tokens one shot does, whole steps each, for any budget.
        for tokens in [1, 100_000, 100_352, 1_234_567] {
            for k in 1..=12 {
                let t: Vec<u64> = (1..=k).map(|i| recovery(tokens).shot_tokens(i, k)).collect();
                assert!(t.iter().all(|n| n % step == 0), "{tokens} {k}: {t:?}");
                assert_eq!(t.iter().sum::<u64>(), recovery(tokens).shot_tokens(1, 1), "{tokens} {k}: {t:?}");
                assert!(t.windows(2).all(|w| w[0] <= w[1]), "{tokens} {k}: {t:?}");
            }
        }
        assert_eq!(recovery(100_000).shot_tokens(1, 1), 100_352);
        let lr = |i| r.shot_options(i, 8).unwrap().lr;
        assert!((lr(1) - 3e-4 / 4.0).abs() < 1e-12 && (lr(8) - 6e-4).abs() < 1e-12);
        assert_eq!(recovery(100_000).shot_options(1, 1).unwrap().lr, 3e-4);
    }

    #[test]
    fn nothing_to_train_is_refused() {
        assert_eq!(recovery(0).check().unwrap_err().setting, "recover");
        assert!(recovery(0).shot_options(1, 4).is_none());
        assert!(recovery(1000).final_options().is_none());
    }
}
