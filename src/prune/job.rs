//! One `transact prune` run end to end: validate everything, prune, write the output directory
//! atomically with `prune_report.json`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use candle_core::Device;

use super::pipeline::{self, PruneOptions, PruneRun};
use super::plan::{AttnUnit, TargetSpec, resolve};
use super::report::{Input, PruneReport, RATIO_SPLIT, Seconds, Target};
use crate::calib::stats::Stats;
use super::stream;
use crate::bench::roof::peak_rss;
use crate::calib::data::prepare;
use crate::io::export::{ExportDtype, hf_dtype, write_hf, write_hf_metadata};
use crate::model::tokenizer::Tokenizer;
use crate::io::gguf_export::write_gguf;
use crate::io::load::{LoadedModel, load_model, model_sha256};
use crate::io::{atomic, hf_dir};
use crate::stats::ModelStats;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutFormat {
    /// Hugging Face files in the output directory.
    Hf,
    /// `model.gguf` in the output directory.
    Gguf,
    /// Both.
    Both,
}

pub struct PruneJob {
    pub model: PathBuf,
    pub device: Device,
    pub out: PathBuf,
    pub format: OutFormat,
    pub dtype: ExportDtype,
    pub force: bool,
    pub target: TargetSpec,
    pub options: PruneOptions,
    pub stats: Option<PathBuf>,
    pub resume: bool,
    /// Layer-by-layer over the memory-mapped checkpoint (see [`super::stream`]).
    pub stream: bool,
}

impl PruneJob {
    /// Checks everything that does not need the model, so mistakes fail in milliseconds.
    fn check_options(&self) -> Result<()> {
        let o = &self.options;
        atomic::check_output(&self.out, self.force)?;
        if o.shots == 0 {
            bail!("--shots must be at least 1");
        }
        if self.stats.is_some() && o.shots > 1 {
            bail!("--stats holds statistics of the dense model, but every shot after the first needs fresh ones; use --shots 1 or drop --stats");
        }
        if let Some(cmd) = &o.recover_cmd
            && !(cmd.contains("{in}") && cmd.contains("{out}"))
        {
            bail!("--recover-cmd must contain {{in}} and {{out}} (HF directories it reads and writes), got `{cmd}`");
        }
        if o.attn_unit == AttnUnit::HeadDim && o.recover_cmd.is_some() {
            bail!("--recover-cmd hands the model to a stock trainer as a Hugging Face directory, which cannot hold head-dim pruning; use --attn-unit head");
        }
        if self.dtype == ExportDtype::Q8_0 && self.format != OutFormat::Gguf {
            bail!("q8_0 is a GGUF block type; use --format gguf or an f32/f16/bf16 --dtype");
        }
        if o.calib_batch == 0 {
            bail!("--calib-batch must be at least 1");
        }
        if let Some(a) = o.alpha
            && !(a.is_finite() && a >= 0.0)
        {
            bail!("--alpha weights the max term of the head score and must be a number ≥ 0, got {a}");
        }
        if self.stream {
            let why = if !self.model.is_dir() {
                Some("reads a Hugging Face safetensors directory (convert a GGUF with `transact convert M DIR --to hf --dtype f16`)")
            } else if o.shots != 1 {
                Some("runs one shot (--shots 1)")
            } else if o.recover_cmd.is_some() || self.resume {
                Some("has no recovery or resume")
            } else if self.stats.is_some() {
                Some("collects its statistics while streaming (drop --stats)")
            } else if o.attn_unit != AttnUnit::Head {
                Some("prunes whole heads (--attn-unit head)")
            } else if self.format != OutFormat::Hf {
                Some("writes a Hugging Face directory (--format hf)")
            } else {
                None
            };
            if let Some(why) = why {
                bail!("--stream {why}");
            }
            hf_dtype(self.dtype)?;
        }
        Ok(())
    }

    /// Sibling folder for per-shot checkpoints and recovery exchanges.
    pub fn work_dir(&self) -> PathBuf {
        let name = self.out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        self.out.with_file_name(format!(".{name}.shots"))
    }

    pub fn run(&self) -> Result<PruneReport> {
        let t0 = Instant::now();
        self.check_options()?;
        if self.stream {
            return self.run_stream(t0);
        }
        let dense = load_model(&self.model, &self.device)?;
        let target = resolve(&dense.model.config, self.target, self.options.units(), self.options.mlp_multiple)?;
        // The output must be representable before hours of work.
        if self.options.attn_unit == AttnUnit::HeadDim && self.format != OutFormat::Hf {
            bail!(
                "--attn-unit head-dim keeps each rotary pair's original frequency, which differs between \
                 KV groups; llama.cpp's GGUF has one frequency table for all heads. Use --format hf \
                 (transact's own directory format) or --attn-unit head for a GGUF"
            );
        }
        if matches!(self.format, OutFormat::Hf | OutFormat::Both) || self.options.recover_cmd.is_some() {
            hf_dir::config_json(&dense.model.config, &dense.tokenizer.meta, "float32", false)?;
        }
        let sha = model_sha256(&self.model)?;
        let stats = match &self.stats {
            None => None,
            Some(p) => {
                let s = Stats::load(p)?;
                s.check_matches(&dense.model, &sha, p)?;
                Some((s, p.clone()))
            }
        };
        let stats_meta = stats.as_ref().map(|(s, _)| s.meta.clone());
        let work_dir = self.work_dir();
        let (pruned, shots) = pipeline::run(PruneRun {
            dense: &dense,
            dense_sha256: &sha,
            target,
            options: &self.options,
            stats,
            work_dir: work_dir.clone(),
            resume: self.resume,
        })?;
        let t_export = Instant::now();
        let before = ModelStats::new(&dense.model.config, 2048);
        let after = ModelStats::new(&pruned.model.config, 2048);
        let mut outputs = Vec::new();
        if self.format != OutFormat::Gguf {
            outputs.push("config.json + model.safetensors (Hugging Face)".to_string());
        }
        if self.format != OutFormat::Hf {
            outputs.push("model.gguf".to_string());
        }
        let sum = |f: fn(&pipeline::ShotRecord) -> f64| shots.iter().map(f).sum::<f64>();
        let mut report = PruneReport {
            input: Input { path: self.model.display().to_string(), sha256: sha },
            attn_unit: self.options.attn_unit,
            options: self.options.clone(),
            target: Target {
                spec: target_spec(self.target),
                widths: target,
                split: RATIO_SPLIT,
            },
            stats_file: stats_meta,
            removed_non_embedding: 1.0 - after.params_non_embedding as f64 / before.params_non_embedding as f64,
            before,
            after,
            outputs,
            seconds: Seconds {
                calibrate: sum(|s| s.seconds_calibrate),
                prune: sum(|s| s.seconds_prune),
                recover: sum(|s| s.seconds_recover),
                export: 0.0,
                total: 0.0,
            },
            shots,
            peak_rss_bytes: None,
        };
        let (format, dtype) = (self.format, self.dtype);
        atomic::write_dir(&self.out, self.force, |dir| {
            write_outputs(&pruned, dir, format, dtype)?;
            report.seconds.export = t_export.elapsed().as_secs_f64();
            report.seconds.total = t0.elapsed().as_secs_f64();
            report.peak_rss_bytes = peak_rss();
            std::fs::write(dir.join("prune_report.json"), serde_json::to_string_pretty(&report)?)?;
            Ok(())
        })?;
        let _ = std::fs::remove_dir_all(&work_dir);
        Ok(report)
    }

    /// `--stream`: calibrate, choose and slice one layer at a time (checked by `check_options`).
    fn run_stream(&self, t0: Instant) -> Result<PruneReport> {
        let o = &self.options;
        let read = hf_dir::read_config(&self.model)?;
        let cfg = read.config;
        let tokenizer = Tokenizer::from_hf_dir(&self.model, read.bos, read.eos)?;
        let target = resolve(&cfg, self.target, o.units(), o.mlp_multiple)?;
        let (st_dtype, torch_dtype) = hf_dtype(self.dtype)?;
        hf_dir::config_json(&cfg, &tokenizer.meta, torch_dtype, false)?;
        let sha = model_sha256(&self.model)?;
        let data = prepare(&tokenizer, &o.calib)?;
        let t1 = Instant::now();
        let choice = stream::calibrate_and_choose(&self.model, &cfg, &data, o, target, &self.device)?;
        let seconds_calibrate = t1.elapsed().as_secs_f64();
        let pruned = stream::pruned_config(&cfg, &choice.keeps);
        let s = pruned.layers[0];
        let shot = pipeline::ShotRecord {
            shot: 1,
            widths: target,
            n_heads: s.n_heads,
            n_kv_heads: s.n_kv_heads,
            calibration_tokens: choice.tokens,
            calibration_data_sha256: Some(data.data_sha256.clone()),
            calibration_seed: Some(data.spec.seed),
            kept: choice
                .keeps
                .iter()
                .map(|k| pipeline::Kept { q_heads: k.q_heads.clone(), kv_heads: k.kv_heads.clone(), mlp: k.mlp.clone(), head_dims: None })
                .collect(),
            scores: choice.scores,
            seconds_calibrate,
            seconds_prune: 0.0,
            seconds_recover: 0.0,
        };
        let (before, after) = (ModelStats::new(&cfg, 2048), ModelStats::new(&pruned, 2048));
        let mut report = PruneReport {
            input: Input { path: self.model.display().to_string(), sha256: sha },
            attn_unit: o.attn_unit,
            options: o.clone(),
            target: Target { spec: target_spec(self.target), widths: target, split: RATIO_SPLIT },
            stats_file: None,
            removed_non_embedding: 1.0 - after.params_non_embedding as f64 / before.params_non_embedding as f64,
            before,
            after,
            outputs: vec!["config.json + model.safetensors (Hugging Face), written layer by layer".to_string()],
            seconds: Seconds { calibrate: seconds_calibrate, prune: 0.0, recover: 0.0, export: 0.0, total: 0.0 },
            shots: vec![shot],
            peak_rss_bytes: None,
        };
        let t2 = Instant::now();
        atomic::write_dir(&self.out, self.force, |dir| {
            stream::write_sliced(&self.model, &cfg, &choice.keeps, st_dtype, dir)?;
            write_hf_metadata(&pruned, &tokenizer, torch_dtype, dir)?;
            report.seconds.export = t2.elapsed().as_secs_f64();
            report.seconds.total = t0.elapsed().as_secs_f64();
            report.peak_rss_bytes = peak_rss();
            std::fs::write(dir.join("prune_report.json"), serde_json::to_string_pretty(&report)?)?;
            Ok(())
        })?;
        Ok(report)
    }
}

fn target_spec(t: TargetSpec) -> String {
    match t {
        TargetSpec::Ratio(r) => format!("ratio {r}"),
        TargetSpec::Widths { mha, mlp } => format!("mha_width {mha:?}, mlp_width {mlp:?}"),
    }
}

fn write_outputs(lm: &LoadedModel, dir: &std::path::Path, format: OutFormat, dtype: ExportDtype) -> Result<()> {
    if format != OutFormat::Gguf {
        write_hf(lm, dir, dtype)?;
    }
    if format != OutFormat::Hf {
        write_gguf(lm, &dir.join("model.gguf"), dtype)?;
    }
    Ok(())
}
