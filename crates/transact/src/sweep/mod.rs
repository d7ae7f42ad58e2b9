//! `transact sweep`: a grid of pruning runs from a spec ([`spec`]), each pruned, evaluated and
//! (once per shape) timed, one row per run appended to `results.jsonl` ([`results`]). A rerun
//! skips finished rows, resumes a run interrupted inside its recovery from its last finished
//! shot, and reuses a pruned model whose evaluation was interrupted. Calibration statistics of
//! the dense model are collected once per seed and serve every run's first shot.
//!
//! The folder:
//! - `sweep.json`: the settings every row shares (a rerun with others is refused);
//! - `results.jsonl`: the rows;
//! - `stats/seed-S.safetensors`: the dense model's statistics;
//! - `runs/NAME/`: `prune_report.json`, the model card and `eval.json` of each run (the model
//!   itself too with `keep_models`), `runs/dense/eval.json` for the reference.

pub mod results;
pub mod spec;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::Device;
use serde::Deserialize;

use self::results::{Curve, Row, Shape, Speed};
use self::spec::{Planned, Point, Shared, Spec};
use crate::calibrate::activations::collect;
use crate::calibrate::blocks::{CalibSpec, prepare};
use crate::data::corpus;
use crate::eval::report::EvalReport;
use crate::eval::suite::Suite;
use crate::eval::task;
use crate::model::io::atomic;
use crate::model::io::export::ExportFormat;
use crate::model::io::load::{LoadedModel, load_model, model_sha256};
use crate::model::io::save_dtype::SaveDtype;
use crate::progress::Progress;
use crate::prune::hidden::Axis;
use crate::prune::job::PruneJob;
use crate::prune::plan::{AttnUnit, GqaMode, TargetSpec};
use crate::prune::recover::Recovery;
use crate::prune::scorer;
use crate::prune::shots::{PruneOptions, ShotRecord};
use crate::train::TrainOptions;
use crate::train::recover::RecoveryRecord;

/// The key of the dense reference row.
pub const DENSE: &str = "dense";

pub struct Sweep {
    pub spec: Spec,
    /// The results folder.
    pub out: PathBuf,
    pub device: Device,
}

/// What a `run` did.
pub struct Outcome {
    /// Rows the grid has (the dense reference included).
    pub rows: usize,
    /// Rows this call ran.
    pub ran: usize,
    /// Rows found finished.
    pub skipped: usize,
}

/// The parts of `prune_report.json` a row keeps.
#[derive(Deserialize)]
struct PruneOutcome {
    shots: Vec<ShotRecord>,
    final_recovery: Option<RecoveryRecord>,
    final_held_out_perplexity: Option<f64>,
    held_out: Option<HeldOutPair>,
    seconds: PruneSeconds,
}

#[derive(Deserialize)]
struct HeldOutPair {
    pruned: f64,
}

#[derive(Deserialize)]
struct PruneSeconds {
    total: f64,
}

impl Sweep {
    /// Runs every row not in `results.jsonl` yet. `grid` follows the rows, `progress` the
    /// stages inside each.
    pub fn run(&self, grid: &dyn Progress, progress: &dyn Progress) -> Result<Outcome> {
        let plan = self.spec.plan()?;
        if self.out.exists() && !self.out.is_dir() {
            bail!("{}: exists and is not a directory", self.out.display());
        }
        // Every run's settings are checked before the first one starts.
        for p in &plan {
            self.job(&p.point, self.out.join("runs").join(p.point.dir_name()), None)
                .check_options()
                .with_context(|| format!("run `{}`", p.point.key()))?;
        }
        std::fs::create_dir_all(self.out.join("runs")).with_context(|| format!("{}: cannot create", self.out.display()))?;
        let dense_sha = model_sha256(&self.spec.model)?;
        self.check_shared(&dense_sha)?;
        let results_path = self.out.join("results.jsonl");
        let (rows, warning) = results::read(&results_path)?;
        if let Some(w) = warning {
            progress.note(&w);
            results::repair(&results_path)?;
        }
        let done: HashSet<String> = rows.iter().map(|r| r.key.clone()).collect();
        let mut speeds: HashMap<Shape, Speed> = rows.iter().filter_map(|r| Some((r.shape, r.speed?))).collect();
        let todo: Vec<&Planned> = plan.iter().filter(|p| !done.contains(&p.point.key())).collect();
        let dense_done = done.contains(DENSE);
        let total = plan.len() + 1;
        let skipped = total - todo.len() - usize::from(!dense_done);
        let mut outcome = Outcome { rows: total, ran: 0, skipped };
        if skipped == total {
            return Ok(outcome);
        }
        let suite = self.suite()?;
        let dense = load_model(&self.spec.model, &self.device)?;
        grid.start("sweep", total as u64);
        grid.advance(skipped as u64);
        if !dense_done {
            let t0 = Instant::now();
            let eval = self.evaluate(&dense, &self.out.join("runs").join(DENSE), &suite, progress)?;
            let mut row = Row::new(DENSE.into(), format!("runs/{DENSE}"), &dense.model.config, &dense.model.config, &eval);
            row.speed = self.speed(&dense, &mut speeds, &mut row.seconds.bench)?;
            results::append(&results_path, &row)?;
            progress.note(&format!("dense: {} ({:.0} s)", summary(&row), t0.elapsed().as_secs_f64()));
            outcome.ran += 1;
            grid.advance(1);
        }
        for p in todo {
            let row = self.run_point(p, &dense, &dense_sha, &suite, &mut speeds, progress).with_context(|| format!("run `{}`", p.point.key()))?;
            results::append(&results_path, &row)?;
            progress.note(&format!("{}: {}", p.point.dir_name(), summary(&row)));
            outcome.ran += 1;
            grid.advance(1);
        }
        grid.finish();
        Ok(outcome)
    }

    /// Refuses a folder whose rows were made with other shared settings or another model file
    /// (`sha256`); records them in a new one.
    fn check_shared(&self, sha256: &str) -> Result<()> {
        let path = self.out.join("sweep.json");
        let ours = self.spec.shared(sha256);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let theirs: Shared = serde_json::from_str(&text).with_context(|| format!("{}: unreadable", path.display()))?;
                let differ = [
                    ("model", theirs.model != ours.model || theirs.model_sha256 != ours.model_sha256),
                    ("calib", theirs.calib != ours.calib),
                    ("recovery", theirs.recovery != ours.recovery),
                    ("eval", theirs.eval != ours.eval),
                ];
                if let Some((what, _)) = differ.iter().find(|d| d.1) {
                    bail!(
                        "{}: the rows here were made with another `{what}` setting than this spec's; its rows would not compare with them. \
                         Use another results folder, or restore the setting ({})",
                        self.out.display(),
                        path.display()
                    );
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                atomic::write_file(&path, false, |tmp| Ok(std::fs::write(tmp, serde_json::to_string_pretty(&ours)?)?))
            }
            Err(e) => Err(e).with_context(|| format!("{}: cannot read", path.display())),
        }
    }

    /// Loads every task and corpus once, before any run, so a bad name fails at once.
    fn suite(&self) -> Result<Suite> {
        let e = &self.spec.eval;
        Ok(Suite {
            tasks: task::builtins(&e.tasks, e.limit)?,
            corpora: e.ppl.iter().map(|c| corpus::load(c)).collect::<Result<Vec<_>>>()?,
            seq_len: e.ppl_seq_len,
            windows: e.ppl_windows,
            limit: e.limit,
            max_length: None,
            pack_tokens: crate::eval::metrics::PACK_TOKENS,
        })
    }

    /// Evaluates `lm` and writes `eval.json` into `dir`.
    fn evaluate(&self, lm: &LoadedModel, dir: &Path, suite: &Suite, progress: &dyn Progress) -> Result<EvalReport> {
        let report = suite.run(lm, progress)?;
        atomic::write_file(&dir.join("eval.json"), true, |tmp| Ok(std::fs::write(tmp, report.to_json())?))?;
        Ok(report)
    }

    /// Prefill (256 tokens) and decode (64 tokens) speed of `lm`'s shape, measured once per shape.
    fn speed(&self, lm: &LoadedModel, speeds: &mut HashMap<Shape, Speed>, seconds: &mut f64) -> Result<Option<Speed>> {
        if !self.spec.bench {
            return Ok(None);
        }
        let shape = Shape::of(&lm.model.config);
        if let Some(s) = speeds.get(&shape) {
            return Ok(Some(*s));
        }
        let t0 = Instant::now();
        let s = crate::bench::prefill_decode(&lm.model, &crate::bench::prompt(256), 64, 2)?;
        let speed = Speed { prefill_tokens: s.prefill_tokens, prefill_tokens_per_s: s.prefill_tokens_per_s, decode_tokens_per_s: s.decode_tokens_per_s };
        *seconds = t0.elapsed().as_secs_f64();
        speeds.insert(shape, speed);
        Ok(Some(speed))
    }

    /// The dense model's statistics for calibration seed `seed`, collected on first use.
    fn stats(&self, dense: &LoadedModel, sha: &str, seed: u64, progress: &dyn Progress) -> Result<PathBuf> {
        let path = self.out.join("stats").join(format!("seed-{seed}.safetensors"));
        if !path.exists() {
            let data = prepare(&dense.tokenizer, &self.calib(seed), progress)?;
            let stats = collect(&dense.model, &data, sha, self.spec.calib.batch, &format!("calibrate (seed {seed})"), progress)?;
            atomic::write_file(&path, false, |tmp| stats.save(tmp))?;
        }
        Ok(path)
    }

    fn calib(&self, seed: u64) -> CalibSpec {
        let c = &self.spec.calib;
        CalibSpec { source: c.source.clone(), samples: c.samples, seq_len: c.seq_len, seed }
    }

    /// The `prune` job of point `p`.
    fn job(&self, p: &Point, dir: PathBuf, stats: Option<PathBuf>) -> PruneJob {
        let r = &self.spec.recovery;
        let recover = (p.recover > 0 || p.final_recover > 0).then(|| Recovery {
            tokens: p.recover,
            final_tokens: p.final_recover,
            data: r.data.clone(),
            train: TrainOptions { loss: r.loss, lr: r.lr, seed: p.seed, ..TrainOptions::default() },
        });
        let mut job = PruneJob {
            model: self.spec.model.clone(),
            device: self.device.clone(),
            out: dir,
            formats: vec![ExportFormat::Gguf],
            // Evaluated as pruned: no rounding between pruning and scoring.
            dtype: SaveDtype::F32,
            base_model: None,
            force: true,
            target: TargetSpec::Ratio(p.ratio),
            options: PruneOptions {
                scorer: p.scorer,
                alpha: None,
                seed: p.seed,
                attn_unit: AttnUnit::Head,
                gqa: GqaMode::Groups,
                head_dim_multiple: 2,
                shots: p.shots,
                calib: self.calib(p.seed),
                calib_batch: self.spec.calib.batch,
                mlp_multiple: 1,
                recover_cmd: None,
                compensate: p.compensate,
                recover,
                axis: p.axis,
            },
            stats,
            resume: false,
            stream: false,
            // Every row is evaluated on the full protocol; the trained shots still measure it.
            held_out: false,
            // Every recovering row trains on the same text against the same dense model.
            teacher_cache: Some(self.out.join("teacher-cache")),
        };
        // A run killed inside its recovery goes on from its last finished shot.
        job.resume = job.work_dir().join("state.json").exists();
        job
    }

    fn run_point(
        &self,
        p: &Planned,
        dense: &LoadedModel,
        dense_sha: &str,
        suite: &Suite,
        speeds: &mut HashMap<Shape, Speed>,
        progress: &dyn Progress,
    ) -> Result<Row> {
        let point = &p.point;
        let rel = format!("runs/{}", point.dir_name());
        let dir = self.out.join(&rel);
        let (report_path, model_path) = (dir.join("prune_report.json"), dir.join("model.gguf"));
        // A model whose evaluation was interrupted is evaluated, not pruned again.
        if !(report_path.exists() && model_path.exists()) {
            let needs_stats = point.axis == Axis::Transitional && scorer::build(point.scorer, None, point.seed).needs_stats();
            let stats = if needs_stats { Some(self.stats(dense, dense_sha, point.seed, progress)?) } else { None };
            self.job(point, dir.clone(), stats).run(progress)?;
        }
        let text = std::fs::read_to_string(&report_path).with_context(|| format!("{}: cannot read", report_path.display()))?;
        let pruned: PruneOutcome = serde_json::from_str(&text).with_context(|| format!("{}: not a prune report", report_path.display()))?;
        let lm = load_model(&model_path, &self.device)?;
        let eval = self.evaluate(&lm, &dir, suite, progress)?;
        let mut row = Row::new(point.key(), rel, &lm.model.config, &dense.model.config, &eval);
        row.grids = p.grids.clone();
        row.point = Some(point.clone());
        row.seconds.prune = pruned.seconds.total;
        row.held_out = pruned.shots.iter().filter_map(|s| s.held_out.as_ref().map(|h| h.last())).chain(pruned.final_held_out_perplexity).collect();
        if row.held_out.is_empty() {
            row.held_out.extend(pruned.held_out.map(|h| h.pruned));
        }
        let curve = |label: String, r: &RecoveryRecord| Curve { label, tokens: r.tokens, loss: r.loss.clone(), loss_by_step: r.loss_by_step.clone() };
        row.recovery = pruned.shots.iter().filter_map(|s| s.recovery.as_ref().map(|r| curve(format!("shot {}", s.shot), r))).collect();
        row.recovery.extend(pruned.final_recovery.as_ref().map(|r| curve("final".into(), r)));
        row.speed = self.speed(&lm, speeds, &mut row.seconds.bench)?;
        drop(lm);
        if !self.spec.keep_models {
            std::fs::remove_file(&model_path).with_context(|| format!("{}: cannot remove", model_path.display()))?;
        }
        Ok(row)
    }
}

/// One line on a finished row.
fn summary(row: &Row) -> String {
    let ppl: Vec<String> = row.perplexity.iter().map(|(c, p)| format!("{c} ppl {p:.2}")).collect();
    let acc = row.mean_acc.map(|a| format!("mean acc {:.2} %", 100.0 * a));
    let mut parts = vec![format!("{:.1} % removed", 100.0 * row.removed_non_embedding)];
    parts.extend(ppl);
    parts.extend(acc);
    parts.join(", ")
}
