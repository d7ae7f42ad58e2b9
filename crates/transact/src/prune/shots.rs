//! The K-shot loop: re-collect statistics on the current model, step the widths, choose, slice,
//! recover; checkpoint after every shot so a run can resume after the last finished one.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::choose::{LayerKeep, LayerScores, score_and_choose};
use super::plan::{AttnUnit, GqaMode, Units, Widths, attn_unit, schedule};
use super::scorer::{self, LayerInput, ScorerKind};
use super::slice::slice;
use crate::calibrate::activations::{ActivationStats, LayerStats, collect};
use crate::calibrate::blocks::{CalibSpec, TokenizedSource, tokenize_source};
use crate::model::WeightDtype;
use crate::model::io::atomic;
use crate::model::io::hf_write::write_hf;
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
    pub scores: Vec<LayerScores>,
    pub seconds_calibrate: f64,
    pub seconds_prune: f64,
    pub seconds_recover: f64,
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
    /// Where per-shot checkpoints live (needed for `resume`).
    pub work_dir: PathBuf,
    pub resume: bool,
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
    })
}

/// Runs all shots; returns the pruned model and one record per shot.
pub fn run(r: PruneRun) -> Result<(LoadedModel, Vec<ShotRecord>)> {
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
    let source: Option<TokenizedSource> =
        if scorer.needs_stats() { Some(tokenize_source(&r.dense.tokenizer, &o.calib.source, progress)?) } else { None };
    let mut stats_file = r.stats;

    for shot in state.shots.len() + 1..=o.shots {
        let w = widths[shot - 1];
        let t0 = Instant::now();
        let m = &current.model;
        let (layer_stats, meta) = match (&source, stats_file.take()) {
            (None, _) => (m.config.layers.iter().map(LayerStats::zeros).collect(), None),
            (Some(_), Some(s)) if shot == 1 => (s.layers, Some(s.meta)),
            (Some(src), _) => {
                // Each shot draws fresh blocks (seed + shot − 1), as the release re-draws every shot.
                let data = src.draw(o.calib.samples, o.calib.seq_len, o.calib.seed.wrapping_add(shot as u64 - 1))?;
                let s = collect(m, &data, "", o.calib_batch, &format!("calib {shot}/{}", o.shots), progress)?;
                (s.layers, Some(s.meta))
            }
        };
        let tokens = meta.as_ref().map_or(0, |m| m.tokens);
        let seconds_calibrate = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut keeps: Vec<LayerKeep> = Vec::new();
        let mut scores = Vec::new();
        progress.start(&format!("prune {shot}/{}", o.shots), m.config.n_layers() as u64);
        for (l, shape) in m.config.layers.iter().enumerate() {
            progress.advance(1);
            let input = LayerInput { layer: l, stats: &layer_stats[l], weights: &m.weights.layers[l], tokens };
            let (k, s) = score_and_choose(scorer.as_ref(), &input, shape, m.config.rope_layout, w, o.units())?;
            keeps.push(k);
            scores.push(s);
        }
        progress.finish();
        let sliced = slice(m, &keeps)?;
        for ((k, keep), shape) in kept.iter_mut().zip(&keeps).zip(&m.config.layers) {
            *k = k.then(keep, shape);
        }
        current = clone_with(r.dense, sliced)?;
        let seconds_prune = t1.elapsed().as_secs_f64();
        let t2 = Instant::now();
        if let Some(cmd) = &o.recover_cmd {
            current = recover(&current, cmd, &r.work_dir, shot, progress)?;
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
            scores,
            seconds_calibrate,
            seconds_prune,
            seconds_recover: t2.elapsed().as_secs_f64(),
        });
        progress.note(&format!(
            "shot {shot}/{}: mha_width {} ({} heads, {} KV heads), mlp_width {} ({:.1} s)",
            o.shots,
            w.mha,
            s.n_heads,
            s.n_kv_heads,
            w.mlp,
            t0.elapsed().as_secs_f64()
        ));
        if shot < o.shots {
            checkpoint(&current, &r.work_dir, shot, &state, &state_path)?;
        }
    }
    Ok((current, state.shots))
}

fn checkpoint(lm: &LoadedModel, work: &Path, shot: usize, state: &State, state_path: &Path) -> Result<()> {
    std::fs::create_dir_all(work).with_context(|| format!("{}: cannot create", work.display()))?;
    let dir = work.join(format!("shot-{shot}"));
    atomic::write_dir(&dir, true, |tmp| write_hf(lm, tmp, WeightDtype::F32))?;
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
    atomic::write_dir(&input, true, |tmp| write_hf(lm, tmp, WeightDtype::F32))?;
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
