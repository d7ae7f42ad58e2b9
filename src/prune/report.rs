//! `prune_report.json`: everything needed to reproduce and judge a pruning run.

use serde::Serialize;

use super::pipeline::{PruneOptions, ShotRecord};
use super::plan::Widths;
use crate::calib::stats::StatsMeta;
use crate::stats::ModelStats;

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
    pub recover: f64,
    pub export: f64,
    pub total: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub input: Input,
    pub attn_unit: super::plan::AttnUnit,
    pub options: PruneOptions,
    pub target: Target,
    /// Statistics reused from `transact calibrate` for the first shot, if any.
    pub stats_file: Option<StatsMeta>,
    pub shots: Vec<ShotRecord>,
    pub before: ModelStats,
    pub after: ModelStats,
    /// Fraction of non-embedding parameters removed.
    pub removed_non_embedding: f64,
    pub outputs: Vec<String>,
    pub seconds: Seconds,
    /// Peak resident memory of the process (Linux `VmHWM`), in bytes.
    pub peak_rss_bytes: Option<u64>,
}

pub const RATIO_SPLIT: &str = "attention loses the same fraction as the whole, rounded up to whole units; \
    the MLP width makes the non-embedding total exact (rounded to --mlp-multiple)";
