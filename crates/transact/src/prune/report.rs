//! `prune_report.json`: everything needed to reproduce and judge a pruning run. The in-memory
//! and the streaming paths build it the same way ([`PruneReport::new`]).

use std::time::Instant;

use serde::Serialize;

use super::plan::{AttnUnit, TargetSpec, Widths};
use super::shots::{PruneOptions, ShotRecord};
use crate::bench::roof::peak_rss;
use crate::calibrate::activations::StatsMeta;
use crate::model::config::ModelConfig;
use crate::model::cost::ModelCost;
use crate::model::io::export::Written;
use crate::model::io::storage::FileBytes;
use crate::train::recover::RecoveryRecord;

#[derive(Debug, Clone, Serialize)]
pub struct Input {
    pub path: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// As given: `ratio 0.5` or `mha_width 384, mlp_width 768`.
    pub spec: String,
    pub widths: Widths,
    /// How a ratio is split between attention and MLP.
    pub split: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Seconds {
    pub calibrate: f64,
    pub prune: f64,
    pub compensate: f64,
    pub recover: f64,
    pub export: f64,
    /// The held-out perplexity of the input and the written model.
    #[serde(default)]
    pub held_out: f64,
    pub total: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub input: Input,
    pub attn_unit: AttnUnit,
    pub options: PruneOptions,
    pub target: Target,
    /// Statistics reused from `transact calibrate` for the first shot, if any.
    pub stats_file: Option<StatsMeta>,
    pub shots: Vec<ShotRecord>,
    /// The built-in recovery after the last shot.
    pub final_recovery: Option<RecoveryRecord>,
    /// Held-out wiki perplexity after it.
    pub final_held_out_perplexity: Option<f64>,
    /// Held-out wiki perplexity (the trainer's 8 × 512 tokens) of the input and of the written
    /// model, measured by every in-memory run (not by `stream`).
    #[serde(default)]
    pub held_out: Option<HeldOutPair>,
    pub before_hidden_size: usize,
    pub after_hidden_size: usize,
    pub before: ModelCost,
    pub after: ModelCost,
    /// Fraction of non-embedding parameters removed.
    pub removed_non_embedding: f64,
    /// What each format was written as (type, `auto`'s choice, fallbacks, files).
    pub outputs: Vec<Written>,
    /// Every file of the output directory but this report, with its size.
    pub files: Vec<FileBytes>,
    pub seconds: Seconds,
    /// Peak resident memory of the process (Linux `VmHWM`), in bytes.
    pub peak_rss_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HeldOutPair {
    pub dense: f64,
    pub pruned: f64,
}

pub const RATIO_SPLIT: &str = "attention loses the same fraction as the whole, rounded up to whole units; \
    the MLP width makes the non-embedding total exact (rounded to mlp_multiple)";

/// What a run was, before its outputs are written.
pub struct Run<'a> {
    pub input: Input,
    pub options: &'a PruneOptions,
    pub spec: TargetSpec,
    pub target: Widths,
    pub stats_file: Option<StatsMeta>,
    pub shots: Vec<ShotRecord>,
    pub dense: &'a ModelConfig,
    pub pruned: &'a ModelConfig,
}

impl PruneReport {
    /// The report of `run`; the export time, the total and the peak memory are set by
    /// [`PruneReport::finish`].
    pub fn new(run: Run) -> Self {
        let (before, after) = (ModelCost::new(run.dense, 2048), ModelCost::new(run.pruned, 2048));
        let sum = |f: fn(&ShotRecord) -> f64| run.shots.iter().map(f).sum::<f64>();
        PruneReport {
            input: run.input,
            attn_unit: run.options.attn_unit,
            options: run.options.clone(),
            target: Target { spec: spec_text(run.spec), widths: run.target, split: RATIO_SPLIT },
            stats_file: run.stats_file,
            before_hidden_size: run.dense.hidden_size,
            after_hidden_size: run.pruned.hidden_size,
            removed_non_embedding: 1.0 - after.params_non_embedding as f64 / before.params_non_embedding as f64,
            before,
            after,
            outputs: Vec::new(),
            files: Vec::new(),
            seconds: Seconds {
                calibrate: sum(|s| s.seconds_calibrate),
                prune: sum(|s| s.seconds_prune),
                compensate: sum(|s| s.seconds_compensate),
                recover: sum(|s| s.seconds_recover),
                export: 0.0,
                held_out: 0.0,
                total: 0.0,
            },
            shots: run.shots,
            final_recovery: None,
            final_held_out_perplexity: None,
            held_out: None,
            peak_rss_bytes: None,
        }
    }

    /// Records the export's and the whole run's times and the peak memory so far.
    pub fn finish(&mut self, export_started: Instant, run_started: Instant) {
        self.seconds.export = export_started.elapsed().as_secs_f64();
        self.seconds.total = run_started.elapsed().as_secs_f64();
        self.peak_rss_bytes = peak_rss();
    }
}

fn spec_text(t: TargetSpec) -> String {
    match t {
        TargetSpec::Ratio(r) => format!("ratio {r}"),
        TargetSpec::Widths { mha, mlp } => format!("mha_width {mha:?}, mlp_width {mlp:?}"),
    }
}
