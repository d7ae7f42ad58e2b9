//! The K-shot loop: re-collect statistics on the current model, step the widths, choose, slice,
//! compensate, recover; checkpoint after every shot so a run can resume after the last finished
//! one; then the final recovery.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::choose::{LayerKeep, LayerScores, score_and_choose};
use super::compensate::{Compensate, compensate};
use super::hidden::{self, Axis};
use super::plan::{AttnUnit, GqaMode, Units, Widths, attn_unit, schedule};
use super::recover::Recovery;
use super::scorer::{self, LayerInput, ScorerKind};
use super::slice::slice;
use crate::calibrate::activations::{ActivationStats, LayerStats, StatsMeta, collect};
use crate::calibrate::blocks::{CalibSpec, TokenizedSource, tokenize_source};
use crate::data::corpus;
use crate::train::recover::{RecoveryRecord, train_in_memory};
use crate::train::text::TrainText;
use crate::train::teacher::Teacher;
use crate::model::io::atomic;
use crate::model::io::hf_write::write_hf;
use crate::model::io::save_dtype::SaveDtype;
use crate::model::io::load::{LoadedModel, load_model};
use crate::progress::Progress;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PruneOptions {
    pub scorer: ScorerKind,
    /// Weight of the max term in the TransAct head score; `None` = 10 / head dim.
    pub alpha: Option<f64>,
    pub seed: u64,
    pub attn_unit: AttnUnit,
    pub gqa: GqaMode,
    /// Head-dim mode: kept head dims are a multiple of this (even).
    pub head_dim_multiple: usize,
    pub shots: usize,
    pub calib: CalibSpec,
    /// Calibration sequences per forward pass.
    pub calib_batch: usize,
    pub mlp_multiple: usize,
    /// External recovery after each shot: `{in}` and `{out}` are HF directories.
    pub recover_cmd: Option<String>,
    /// Refit of the kept weights after slicing.
    #[serde(default)]
    pub compensate: Compensate,
    /// Built-in recovery training after each shot and after the last.
    #[serde(default)]
    pub recover: Option<Recovery>,
    /// What is pruned: the transitional activations (TransAct) or the hidden size (ablation).
    #[serde(default)]
    pub axis: Axis,
}

impl PruneOptions {
    pub fn units(&self) -> Units {
        Units { attn: self.attn_unit, gqa: self.gqa, head_dim_multiple: self.head_dim_multiple }
    }
}

/// One shot as the report and the resume state keep it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShotRecord {
    pub shot: usize,
    pub widths: Widths,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub calibration_tokens: u64,
    /// SHA-256 of the calibration source text (absent for scorers that need no data).
    pub calibration_data_sha256: Option<String>,
    /// Seed that drew this shot's calibration blocks.
    pub calibration_seed: Option<u64>,
    /// What each layer keeps of the dense model after this shot.
    pub kept: Vec<LayerKeep>,
    /// Hidden-size pruning: the kept channels of the residual stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_kept: Option<Vec<usize>>,
    pub scores: Vec<LayerScores>,
    pub seconds_calibrate: f64,
    pub seconds_prune: f64,
    #[serde(default)]
    pub seconds_compensate: f64,
    pub seconds_recover: f64,
    /// Measuring held-out perplexity along the shot (not part of the stages above).
    #[serde(default)]
    pub seconds_held_out: f64,
    /// The built-in recovery of this shot.
    #[serde(default)]
    pub recovery: Option<RecoveryRecord>,
    /// Held-out wiki perplexity along the shot (with compensation or built-in recovery).
    #[serde(default)]
    pub held_out: Option<HeldOut>,
}

/// Held-out wiki perplexity ([`crate::train::job::EVAL_WINDOWS`] × `EVAL_SEQ_LEN` tokens) after
/// each stage of a shot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldOut {
    pub sliced: f64,
    pub compensated: Option<f64>,
    pub recovered: Option<f64>,
}

impl HeldOut {
    /// The perplexity the shot ended with.
    pub fn last(&self) -> f64 {
        self.recovered.or(self.compensated).unwrap_or(self.sliced)
    }
}

/// What the K shots and the final recovery produced.
pub struct Outcome {
    pub model: LoadedModel,
    pub shots: Vec<ShotRecord>,
    pub final_recovery: Option<RecoveryRecord>,
    /// Held-out wiki perplexity after the final recovery.
    pub final_held_out: Option<f64>,
    /// Measuring held-out perplexity, over the shots run now and after the final recovery.
    pub seconds_held_out: f64,
}

/// Progress of an interrupted run, stored next to the checkpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    input_sha256: String,
    target: Widths,
    options: PruneOptions,
    shots: Vec<ShotRecord>,
}

pub struct PruneRun<'a> {
    pub dense: &'a LoadedModel,
    pub dense_sha256: &'a str,
    pub target: Widths,
    pub options: &'a PruneOptions,
    /// Statistics of the dense model to use in the first shot instead of calibrating.
    pub stats: Option<ActivationStats>,
    /// Hidden-size pruning: the kept hidden width.
    pub hidden_width: Option<usize>,
    /// Where per-shot checkpoints live (needed for `resume`).
    pub work_dir: PathBuf,
    pub resume: bool,
    /// Where the teacher of a KD recovery keeps its hidden states, if anywhere.
    pub teacher_cache: Option<PathBuf>,
    pub progress: &'a dyn Progress,
}

/// `model` with the name and tokenizer of `lm`. Models reloaded from a checkpoint or a trainer
/// come back in HF pair order; they are put back into `lm`'s order so every shot computes exactly
/// what an uninterrupted run computes.
fn clone_with(lm: &LoadedModel, model: crate::model::Model) -> Result<LoadedModel> {
    let mut model = model.with_rope_layout(lm.model.config.rope_layout)?;
    model.config.name = lm.model.config.name.clone();
    Ok(LoadedModel {
        model,
        tokenizer: lm.tokenizer.clone(),
        path: lm.path.clone(),
        format: lm.format,
        gguf_tokenizer_metadata: lm.gguf_tokenizer_metadata.clone(),
        storage: lm.storage.clone(),
    })
}

/// Runs all shots and the final recovery.
pub fn run(r: PruneRun) -> Result<Outcome> {
    let (o, progress) = (r.options, r.progress);
    let dense_shape = r.dense.model.config.uniform_shape().expect("targets are resolved on uniform models");
    let start = Widths { mha: dense_shape.mha_width(), mlp: dense_shape.mlp_width };
    let widths = schedule(start, r.target, o.shots, attn_unit(&dense_shape, o.units()), o.mlp_multiple);
    let state_path = r.work_dir.join("state.json");
    let mut state = State { input_sha256: r.dense_sha256.to_string(), target: r.target, options: o.clone(), shots: Vec::new() };
    let mut current = clone_with(r.dense, r.dense.model.clone())?;
    let mut kept: Vec<LayerKeep> = r.dense.model.config.layers.iter().map(LayerKeep::all).collect();
    if r.resume {
        let text = std::fs::read_to_string(&state_path).with_context(|| {
            format!("{}: no interrupted run to resume (run without `resume` to start one)", state_path.display())
        })?;
        let saved: State = serde_json::from_str(&text).with_context(|| format!("{}: unreadable", state_path.display()))?;
        if saved.input_sha256 != state.input_sha256 || saved.target != state.target || saved.options != state.options {
            bail!("{}: the interrupted run used another model, target or options; rerun without `resume`", state_path.display());
        }
        if let Some(last) = saved.shots.last() {
            let dir = r.work_dir.join(format!("shot-{}", last.shot));
            let loaded = load_model(&dir, &r.dense.model.device)?;
            current = clone_with(r.dense, loaded.model)?;
            kept = last.kept.clone();
            progress.note(&format!("resuming after shot {} of {}", last.shot, o.shots));
        }
        state = saved;
    }
    let scorer = scorer::build(o.scorer, o.alpha, o.seed);
    let hidden_axis = o.axis == Axis::Hidden;
    let compensating = o.compensate.applies(&r.dense.model.config, !hidden_axis, o.calib.samples * o.calib.seq_len, progress);
    let source: Option<TokenizedSource> = if scorer.needs_stats() || compensating || hidden_axis {
        Some(tokenize_source(&r.dense.tokenizer, &o.calib.source, progress)?)
    } else {
        None
    };
    let mut stats_file = r.stats;
    let text = match &o.recover {
        Some(rec) => {
            Some(TrainText::load(&r.dense.tokenizer, &rec.data, rec.train.seq_len, Some(&r.dense.model), rec.train.seed, progress)?)
        }
        None => None,
    };
    let final_recovery = o.recover.as_ref().and_then(|rec| rec.final_options());
    let teacher = o
        .recover
        .as_ref()
        .filter(|rec| rec.train.loss.needs_teacher())
        .map(|_| Teacher::with_cache(&r.dense.model, r.dense_sha256, r.teacher_cache.as_deref()))
        .transpose()?;
    let teacher = teacher.as_ref();
    // Shots measure themselves when something besides slicing changes the weights.
    let wiki = if compensating || o.recover.is_some() { Some(corpus::load("wiki")?) } else { None };
    // Its time is kept apart, so `compensate` and `recover` report what those stages cost.
    let held_out_seconds = std::cell::Cell::new(0.0);
    let held_out = |m: &crate::model::Model| -> Result<Option<f64>> {
        let t = Instant::now();
        let p = wiki.as_ref().map(|w| crate::train::job::held_out(m, &r.dense.tokenizer, w)).transpose();
        held_out_seconds.set(held_out_seconds.get() + t.elapsed().as_secs_f64());
        p
    };

    for shot in state.shots.len() + 1..=o.shots {
        let w = widths[shot - 1];
        let t0 = Instant::now();
        let m = &current.model;
        let from_file = stats_file.take().filter(|_| shot == 1);
        // Each shot draws fresh blocks (seed + shot − 1), as the release re-draws every shot.
        let data = match &source {
            Some(src) if from_file.is_none() || compensating || hidden_axis => {
                Some(src.draw(o.calib.samples, o.calib.seq_len, o.calib.seed.wrapping_add(shot as u64 - 1))?)
            }
            _ => None,
        };
        let mut hidden_stats = None;
        let (layer_stats, meta) = match (from_file, &data) {
            (Some(s), _) => (s.layers, Some(s.meta)),
            (None, Some(data)) if hidden_axis => {
                hidden_stats = Some(hidden::collect(m, data, o.calib_batch, &format!("calib {shot}/{} (hidden)", o.shots), progress)?);
                let meta = StatsMeta::of(data, "", (data.blocks.len() * data.spec.seq_len) as u64);
                (m.config.layers.iter().map(LayerStats::zeros).collect(), Some(meta))
            }
            (None, Some(data)) if scorer.needs_stats() => {
                let s = collect(m, data, "", o.calib_batch, &format!("calib {shot}/{}", o.shots), progress)?;
                (s.layers, Some(s.meta))
            }
            _ => (m.config.layers.iter().map(LayerStats::zeros).collect(), None),
        };
        let tokens = meta.as_ref().map_or(0, |m| m.tokens);
        let seconds_calibrate = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut keeps: Vec<LayerKeep> = Vec::new();
        let mut scores = Vec::new();
        let mut hidden_kept = None;
        let mut sliced = match (r.hidden_width, &hidden_stats) {
            (Some(width), Some(stats)) => {
                let keep = hidden::choose(stats, width)?;
                keeps = m.config.layers.iter().map(LayerKeep::all).collect();
                let sliced = hidden::slice(m, &keep)?;
                hidden_kept = Some(keep);
                sliced
            }
            _ => {
                progress.start(&format!("prune {shot}/{}", o.shots), m.config.n_layers() as u64);
                for (l, shape) in m.config.layers.iter().enumerate() {
                    progress.advance(1);
                    let input = LayerInput { layer: l, stats: &layer_stats[l], weights: &m.weights.layers[l], tokens };
                    let (k, s) = score_and_choose(scorer.as_ref(), &input, shape, m.config.rope_layout, w, o.units())?;
                    keeps.push(k);
                    scores.push(s);
                }
                progress.finish();
                slice(m, &keeps)?
            }
        };
        for ((k, keep), shape) in kept.iter_mut().zip(&keeps).zip(&m.config.layers) {
            *k = k.then(keep, shape);
        }
        let seconds_prune = t1.elapsed().as_secs_f64();
        let held_out_before = held_out_seconds.get();
        let mut measured = held_out(&sliced)?.map(|p| HeldOut { sliced: p, compensated: None, recovered: None });
        let mut seconds_compensate = 0.0;
        if compensating {
            let data = data.as_ref().expect("compensation draws calibration blocks");
            let t = Instant::now();
            sliced = compensate(m, &sliced, &keeps, data, o.calib_batch, &format!("compensate {shot}/{}", o.shots), progress)?;
            seconds_compensate = t.elapsed().as_secs_f64();
            if let Some(h) = &mut measured {
                h.compensated = held_out(&sliced)?;
            }
        }
        current = clone_with(r.dense, sliced)?;
        let (t2, held_out_at_t2) = (Instant::now(), held_out_seconds.get());
        if let Some(cmd) = &o.recover_cmd {
            current = recover(&current, cmd, &r.work_dir, shot, progress)?;
        }
        let mut recovery = None;
        if let (Some(rec), Some(text)) = (&o.recover, &text)
            && let Some(opts) = rec.shot_options(shot, o.shots)
        {
            let label = format!("recover {shot}/{}", o.shots);
            let (trained, record) = train_in_memory(&current.model, teacher, text, next_sequence(&state.shots), &opts, &label, progress)?;
            current = clone_with(r.dense, trained)?;
            recovery = Some(record);
            if let Some(h) = &mut measured {
                h.recovered = held_out(&current.model)?;
            }
        }
        let s = current.model.config.layers[0];
        state.shots.push(ShotRecord {
            shot,
            widths: w,
            n_heads: s.n_heads,
            n_kv_heads: s.n_kv_heads,
            calibration_tokens: tokens,
            calibration_data_sha256: meta.as_ref().map(|m| m.data_sha256.clone()),
            calibration_seed: meta.as_ref().map(|m| m.seed),
            kept: kept.clone(),
            hidden_kept,
            scores,
            seconds_calibrate,
            seconds_prune,
            seconds_compensate,
            seconds_recover: t2.elapsed().as_secs_f64() - (held_out_seconds.get() - held_out_at_t2),
            seconds_held_out: held_out_seconds.get() - held_out_before,
            recovery,
            held_out: measured,
        });
        let ppl = state.shots.last().and_then(|r| r.held_out.as_ref()).map_or(String::new(), |h| {
            let mut p = format!("; held-out ppl {:.1} sliced", h.sliced);
            for (what, v) in [("compensated", h.compensated), ("recovered", h.recovered)] {
                if let Some(v) = v {
                    p += &format!(", {v:.1} {what}");
                }
            }
            p
        });
        progress.note(&format!(
            "shot {shot}/{}: mha_width {} ({} heads, {} KV heads), mlp_width {} ({:.1} s{ppl})",
            o.shots,
            w.mha,
            s.n_heads,
            s.n_kv_heads,
            w.mlp,
            t0.elapsed().as_secs_f64()
        ));
        if shot < o.shots || final_recovery.is_some() {
            checkpoint(&current, &r.work_dir, shot, &state, &state_path)?;
        }
    }
    let (mut final_record, mut final_held_out) = (None, None);
    if let (Some(opts), Some(text)) = (&final_recovery, &text) {
        let (trained, record) = train_in_memory(&current.model, teacher, text, next_sequence(&state.shots), opts, "final recovery", progress)?;
        current = clone_with(r.dense, trained)?;
        final_record = Some(record);
        final_held_out = held_out(&current.model)?;
    }
    Ok(Outcome { model: current, shots: state.shots, final_recovery: final_record, final_held_out, seconds_held_out: held_out_seconds.get() })
}

/// Each recovery continues in the training text where the previous one stopped, so the shots
/// together see as much distinct text as one run of their total budget.
fn next_sequence(shots: &[ShotRecord]) -> u64 {
    shots.iter().filter_map(|s| s.recovery.as_ref()).map(|r| r.first_sequence + r.tokens / r.seq_len.max(1) as u64).max().unwrap_or(0)
}

fn checkpoint(lm: &LoadedModel, work: &Path, shot: usize, state: &State, state_path: &Path) -> Result<()> {
    std::fs::create_dir_all(work).with_context(|| format!("{}: cannot create", work.display()))?;
    let dir = work.join(format!("shot-{shot}"));
    atomic::write_dir(&dir, true, |tmp| write_hf(lm, tmp, SaveDtype::F32).map(drop))?;
    atomic::write_file(state_path, true, |tmp| Ok(std::fs::write(tmp, serde_json::to_string_pretty(state)?)?))?;
    if shot > 1 {
        let _ = std::fs::remove_dir_all(work.join(format!("shot-{}", shot - 1)));
    }
    Ok(())
}

/// Exports the model to `{in}`, runs the user's trainer, loads `{out}` and checks its shapes.
fn recover(lm: &LoadedModel, cmd: &str, work: &Path, shot: usize, progress: &dyn Progress) -> Result<LoadedModel> {
    std::fs::create_dir_all(work).with_context(|| format!("{}: cannot create", work.display()))?;
    let input = work.join(format!("recover-{shot}-in"));
    let output = work.join(format!("recover-{shot}-out"));
    let _ = std::fs::remove_dir_all(&output);
    atomic::write_dir(&input, true, |tmp| write_hf(lm, tmp, SaveDtype::F32).map(drop))?;
    let line = cmd.replace("{in}", &input.display().to_string()).replace("{out}", &output.display().to_string());
    progress.note(&format!("shot {shot}: recovery: {line}"));
    let status = std::process::Command::new("sh").arg("-c").arg(&line).status().with_context(|| format!("cannot run `{line}`"))?;
    if !status.success() {
        bail!("recovery command failed ({status}): {line}");
    }
    let loaded = load_model(&output, &lm.model.device)
        .with_context(|| format!("recovery command did not leave a loadable HF directory in {}", output.display()))?;
    if loaded.model.config.layers != lm.model.config.layers || loaded.model.config.hidden_size != lm.model.config.hidden_size {
        bail!("recovery command changed the model's shapes ({}); it must only train the weights", output.display());
    }
    let _ = std::fs::remove_dir_all(&input);
    let _ = std::fs::remove_dir_all(&output);
    clone_with(lm, loaded.model)
}
