//! One pruning run end to end: validate everything, prune (in memory over K shots, or streamed
//! layer by layer), write the output directory atomically with `prune_report.json`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use candle_core::Device;

use super::plan::{AttnUnit, TargetSpec, Widths, resolve};
use super::report::{HeldOutPair, Input, PruneReport, Run};
use super::compensate::Compensate;
use super::hidden::{Axis, hidden_width};
use super::shots::{self, PruneOptions, PruneRun, ShotRecord};
use super::stream;
use crate::SettingError;
use crate::calibrate::activations::{ActivationStats, StatsMeta};
use crate::calibrate::blocks::prepare;
use crate::model::io::export::ExportFormat;
use crate::model::io::gguf_write::write_gguf;
use crate::card::{Lineage, prune_card};
use crate::model::io::export::Written;
use crate::model::io::hf_write::{write_hf, write_hf_metadata};
use crate::model::io::safetensors::SafetensorsFiles;
use crate::model::io::storage::{Storage, files_on_disk, hub_id_problem};
use crate::model::ModelConfig;
use crate::model::io::load::{load_model, model_sha256};
use crate::model::io::{atomic, hf_config};
use crate::model::tokenizer::Tokenizer;
use crate::progress::Progress;

pub struct PruneJob {
    pub model: PathBuf,
    pub device: Device,
    /// The output directory: Hugging Face files and/or `model.gguf`, and `prune_report.json`.
    pub out: PathBuf,
    /// What the output directory holds (at least one).
    pub formats: Vec<ExportFormat>,
    /// Weight type of the written model (`auto`: see [`SaveDtype::resolve`]).
    pub dtype: crate::model::io::save_dtype::SaveDtype,
    /// The Hub id the card and config.json name as the base model (default: the source's, if known).
    pub base_model: Option<String>,
    pub force: bool,
    pub target: TargetSpec,
    pub options: PruneOptions,
    /// Statistics of the dense model from `calibrate`, used by the first shot.
    pub stats: Option<PathBuf>,
    pub resume: bool,
    /// Layer by layer over the memory-mapped checkpoint (see [`super::stream`]).
    pub stream: bool,
    /// Measure the held-out perplexity of the input and the written model for the report (a
    /// sweep, which evaluates every model itself, skips it).
    pub held_out: bool,
    /// A folder for the distillation teacher's final hidden states, shared by recovering runs
    /// on the same text (see [`crate::train::teacher`]).
    pub teacher_cache: Option<PathBuf>,
}

fn refuse(setting: &'static str, problem: impl Into<String>) -> Result<()> {
    Err(SettingError::new(setting, problem).into())
}

impl PruneJob {
    fn writes(&self, f: ExportFormat) -> bool {
        self.formats.contains(&f)
    }

    /// Checks everything that does not need the model, so mistakes fail in milliseconds.
    pub fn check_options(&self) -> Result<()> {
        let o = &self.options;
        atomic::check_output(&self.out, self.force)?;
        if self.formats.is_empty() {
            refuse("format", "must name at least one output format")?;
        }
        if o.shots == 0 {
            refuse("shots", "must be at least 1")?;
        }
        if o.axis == Axis::Hidden {
            let why = if o.shots != 1 {
                Some("runs one shot (`shots` 1)")
            } else if o.compensate == Compensate::Ls {
                Some("has no compensation (it refits transitional widths)")
            } else if self.stats.is_some() {
                Some("collects its own statistics of the hidden states (drop `stats`)")
            } else if !matches!(self.target, TargetSpec::Ratio(_)) {
                Some("takes its target as `ratio`")
            } else if o.attn_unit != AttnUnit::Head {
                Some("keeps every head (`attn_unit` head)")
            } else {
                None
            };
            if let Some(why) = why {
                refuse("axis", format!("hidden {why}"))?;
            }
        }
        if let Some(rec) = &o.recover {
            rec.check()?;
            if o.recover_cmd.is_some() {
                refuse("recover", "and `recover_cmd` are two ways to recover; give one")?;
            }
        }
        if let Some(cmd) = &o.recover_cmd
            && !(cmd.contains("{in}") && cmd.contains("{out}"))
        {
            refuse("recover_cmd", format!("must contain {{in}} and {{out}} (HF directories it reads and writes), got `{cmd}`"))?;
        }
        if o.attn_unit == AttnUnit::HeadDim && o.recover_cmd.is_some() {
            refuse("recover_cmd", "hands the model to a stock trainer as a Hugging Face directory, which cannot hold head-dim pruning; use `attn_unit` head")?;
        }
        if let Some(why) = self.dtype.refused_for_hf()
            && self.writes(ExportFormat::Hf)
        {
            refuse("dtype", why)?;
        }
        if let Some(why) = self.base_model.as_deref().and_then(hub_id_problem) {
            refuse("base_model", why)?;
        }
        if o.calib_batch == 0 {
            refuse("calib_batch", "must be at least 1")?;
        }
        if let Some(a) = o.alpha
            && !(a.is_finite() && a >= 0.0)
        {
            refuse("alpha", format!("weights the max term of the head score and must be a number ≥ 0, got {a}"))?;
        }
        if self.stream {
            let why = if o.axis != Axis::Transitional {
                Some("prunes the transitional activations (`axis` transitional)")
            } else if o.recover_cmd.is_some() || o.recover.is_some() || self.resume {
                Some("has no recovery or resume")
            } else if o.compensate == Compensate::Ls {
                Some("has no compensation")
            } else if !self.model.is_dir() {
                Some("reads a Hugging Face safetensors directory (convert a GGUF to one first, in f16 to keep its size)")
            } else if o.shots != 1 {
                Some("runs one shot (`shots` 1)")
            } else if self.stats.is_some() {
                Some("collects its statistics while streaming (drop `stats`)")
            } else if o.attn_unit != AttnUnit::Head {
                Some("prunes whole heads (`attn_unit` head)")
            } else if self.formats != [ExportFormat::Hf] {
                Some("writes a Hugging Face directory (`format` hf)")
            } else {
                None
            };
            if let Some(why) = why {
                refuse("stream", why)?;
            }
        }
        Ok(())
    }

    /// Sibling folder for per-shot checkpoints and recovery exchanges.
    pub fn work_dir(&self) -> PathBuf {
        let name = self.out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        self.out.with_file_name(format!(".{name}.shots"))
    }

    pub fn run(&self, progress: &dyn Progress) -> Result<PruneReport> {
        let t0 = Instant::now();
        self.check_options()?;
        if self.stream {
            return self.run_stream(t0, progress);
        }
        let mut dense = load_model(&self.model, &self.device)?;
        dense.storage.name_hub_id(self.base_model.as_deref());
        let (target, hidden_width) = match (self.options.axis, self.target) {
            (Axis::Hidden, TargetSpec::Ratio(r)) => {
                let s = dense.model.config.uniform_shape().ok_or_else(|| anyhow::anyhow!("hidden-size pruning needs a model whose layers have one shape"))?;
                (Widths { mha: s.mha_width(), mlp: s.mlp_width }, Some(hidden_width(&dense.model.config, r)?))
            }
            _ => (resolve(&dense.model.config, self.target, self.options.units(), self.options.mlp_multiple)?, None),
        };
        if let Some(rec) = &self.options.recover
            && rec.train.seq_len > dense.model.config.max_position
        {
            refuse("recover", format!("trains on sequences of {} tokens, beyond the model's context of {}", rec.train.seq_len, dense.model.config.max_position))?;
        }
        // The output must be representable before hours of work.
        if self.options.attn_unit == AttnUnit::HeadDim && self.writes(ExportFormat::Gguf) {
            refuse(
                "attn_unit",
                "head-dim keeps each rotary pair's original frequency, which differs between KV groups; \
                 llama.cpp's GGUF has one frequency table for all heads. Use `format` hf (transact's own \
                 directory format) or `attn_unit` head for a GGUF",
            )?;
        }
        if self.writes(ExportFormat::Hf) || self.options.recover_cmd.is_some() {
            hf_config::config_json(&dense.model.config, &dense.tokenizer.meta, "float32", false)?;
        }
        let sha = model_sha256(&self.model)?;
        let stats = match &self.stats {
            None => None,
            Some(p) => {
                let s = ActivationStats::load(p)?;
                s.check_matches(&dense.model, &sha, p)?;
                Some(s)
            }
        };
        let stats_file = stats.as_ref().map(|s| s.meta.clone());
        let work_dir = self.work_dir();
        let outcome = shots::run(PruneRun {
            dense: &dense,
            dense_sha256: &sha,
            target,
            options: &self.options,
            stats,
            hidden_width,
            work_dir: work_dir.clone(),
            resume: self.resume,
            teacher_cache: self.teacher_cache.clone(),
            progress,
        })?;
        let pruned = outcome.model;
        let (dense_cfg, pruned_cfg) = (&dense.model.config, &pruned.model.config);
        let mut report = self.report(&sha, target, stats_file, outcome.shots, dense_cfg, pruned_cfg);
        if let Some(f) = &outcome.final_recovery {
            report.seconds.recover += f.seconds;
        }
        report.final_recovery = outcome.final_recovery;
        report.final_held_out_perplexity = outcome.final_held_out;
        report.seconds.held_out = outcome.seconds_held_out;
        // Seconds on the held-out text, so every report and model card says what pruning cost.
        if self.held_out {
            let t_held_out = Instant::now();
            let wiki = crate::data::corpus::load("wiki")?;
            let held_out = |m| crate::train::job::held_out(m, &dense.tokenizer, &wiki);
            // Shots that compensate or recover have measured the final model already.
            let measured = report.final_held_out_perplexity.or_else(|| report.shots.last().and_then(|s| s.held_out.as_ref()).map(|h| h.last()));
            let pruned_ppl = match measured {
                Some(p) => p,
                None => held_out(&pruned.model)?,
            };
            report.held_out = Some(HeldOutPair { dense: held_out(&dense.model)?, pruned: pruned_ppl });
            report.seconds.held_out += t_held_out.elapsed().as_secs_f64();
        }
        let report = self.write(report, t0, &dense.storage, dense_cfg, pruned_cfg, |dir| {
            let mut written = Vec::new();
            if self.writes(ExportFormat::Hf) {
                written.push(write_hf(&pruned, dir, self.dtype)?);
            }
            if self.writes(ExportFormat::Gguf) {
                written.push(write_gguf(&pruned, &dir.join("model.gguf"), self.dtype)?);
            }
            Ok(written)
        })?;
        let _ = std::fs::remove_dir_all(&work_dir);
        Ok(report)
    }

    /// Streaming: calibrate, choose and slice one layer at a time (checked by `check_options`).
    fn run_stream(&self, t0: Instant, progress: &dyn Progress) -> Result<PruneReport> {
        let o = &self.options;
        let read = hf_config::read_config(&self.model)?;
        let cfg = read.config;
        let tokenizer = Tokenizer::from_hf_dir(&self.model, read.bos, read.eos)?;
        let target = resolve(&cfg, self.target, o.units(), o.mlp_multiple)?;
        let files = SafetensorsFiles::open_dir(&self.model)?;
        let mut storage = Storage::of_hf(&self.model, &files, &cfg, read.name_or_path.as_deref());
        storage.name_hub_id(self.base_model.as_deref());
        drop(files);
        let (dtype, auto) = self.dtype.resolve(ExportFormat::Hf, &storage, true);
        let (st_dtype, torch_dtype) = dtype.hf()?;
        hf_config::config_json(&cfg, &tokenizer.meta, torch_dtype, false)?;
        let sha = model_sha256(&self.model)?;
        let data = prepare(&tokenizer, &o.calib, progress)?;
        let t1 = Instant::now();
        let choice = stream::calibrate_and_choose(&self.model, &cfg, &data, o, target, &self.device, progress)?;
        let pruned = stream::pruned_config(&cfg, &choice.keeps);
        let s = pruned.layers[0];
        let shot = ShotRecord {
            shot: 1,
            widths: target,
            n_heads: s.n_heads,
            n_kv_heads: s.n_kv_heads,
            calibration_tokens: choice.tokens,
            calibration_data_sha256: Some(data.data_sha256.clone()),
            calibration_seed: Some(data.spec.seed),
            kept: choice.keeps.clone(),
            hidden_kept: None,
            scores: choice.scores,
            seconds_calibrate: t1.elapsed().as_secs_f64(),
            seconds_prune: 0.0,
            seconds_compensate: 0.0,
            seconds_recover: 0.0,
            seconds_held_out: 0.0,
            recovery: None,
            held_out: None,
        };
        let report = self.report(&sha, target, None, vec![shot], &cfg, &pruned);
        self.write(report, t0, &storage, &cfg, &pruned, |dir| {
            let mut files = stream::write_sliced(&self.model, &cfg, &choice.keeps, st_dtype, dir, progress)?;
            files.extend(write_hf_metadata(&pruned, &tokenizer, torch_dtype, storage.hub_id.as_deref(), dir)?);
            Ok(vec![Written::new(ExportFormat::Hf, dtype, auto, &[], files)])
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn report(&self, sha: &str, target: Widths, stats_file: Option<StatsMeta>, shots: Vec<ShotRecord>, dense: &ModelConfig, pruned: &ModelConfig) -> PruneReport {
        PruneReport::new(Run {
            input: Input { path: self.model.display().to_string(), sha256: sha.to_string() },
            options: &self.options,
            spec: self.target,
            target,
            stats_file,
            shots,
            dense,
            pruned,
        })
    }

    /// Writes the output directory through `model` (the model files), then the model card and
    /// the report, atomically.
    #[allow(clippy::too_many_arguments)]
    fn write(&self, mut report: PruneReport, t0: Instant, source: &Storage, dense: &ModelConfig, pruned: &ModelConfig, model: impl FnOnce(&Path) -> Result<Vec<Written>>) -> Result<PruneReport> {
        let t_export = Instant::now();
        atomic::write_dir(&self.out, self.force, |dir| {
            report.outputs = model(dir)?;
            let files = files_on_disk(dir);
            let lineage = Lineage {
                hub_id: source.hub_id.as_deref(),
                license: source.license.as_deref(),
                name: &output_name(&self.out),
                library: if self.writes(ExportFormat::Hf) { "transformers" } else { "gguf" },
            };
            std::fs::write(dir.join("README.md"), prune_card(&lineage, &report, dense, pruned, &files, &report.outputs))?;
            report.files = files_on_disk(dir);
            report.finish(t_export, t0);
            std::fs::write(dir.join("prune_report.json"), serde_json::to_string_pretty(&report)?)?;
            Ok(())
        })?;
        Ok(report)
    }
}

/// The name a card gives the model: the output directory's name.
pub fn output_name(out: &Path) -> String {
    out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
}

