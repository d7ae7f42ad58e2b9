//! `transact train` as a library job: check everything, load the student, the teacher and the
//! text, train with checkpoints and held-out evaluation, then write the output directory
//! atomically: the model (HF and/or GGUF), `train_report.json`, `train_log.jsonl`, `loss.png`.
//!
//! Work in progress lives in a sibling folder `.NAME.train/` (the live log and the latest
//! checkpoint); it is removed when the output is in place.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, bail};
use candle_core::Device;
use serde::Serialize;

use super::checkpoint::{self, CheckpointState, LOG};
use super::log::{self, StepRecord};
use super::options::TrainOptions;
use super::plot;
use super::teacher::Teacher;
use super::text::{TextSummary, TrainText};
use super::trainer::Trainer;
use crate::SettingError;
use crate::bench::roof::peak_rss;
use crate::data::corpus::{self, Corpus};
use crate::eval::perplexity::corpus_perplexity;
use crate::model::forward::Model;
use crate::model::io::export::ExportFormat;
use crate::model::io::gguf_write::write_gguf;
use crate::card::{Lineage, train_card};
use crate::model::io::export::Written;
use crate::model::io::hf_write::write_hf;
use crate::model::io::save_dtype::SaveDtype;
use crate::model::io::storage::{FileBytes, files_on_disk, hub_id_problem};
use crate::model::io::{atomic, hf_config};
use crate::model::tokenizer::Tokenizer;
use crate::model::weights::TensorRole;
use crate::model::{LoadedModel, load_model};
use crate::progress::{Progress, Silent};
use crate::prune::report::Input;

/// Held-out evaluation while training: the first windows of `wiki` (BoolQ passages), short so
/// that it costs seconds; `transact eval` gives the full protocol.
pub const EVAL_WINDOWS: usize = 8;
pub const EVAL_SEQ_LEN: usize = 512;

pub struct TrainJob {
    /// The student: GGUF file or HF directory.
    pub model: PathBuf,
    /// The dense model to distil from (needed by `kd` and `kd+ce`).
    pub teacher: Option<PathBuf>,
    /// `mix`, or a text / JSONL file or folder.
    pub data: String,
    pub out: PathBuf,
    pub formats: Vec<ExportFormat>,
    /// Weight type of the written model (`auto`: see [`SaveDtype::resolve`]).
    pub dtype: SaveDtype,
    /// The Hub id the card and config.json name as the base model (default: the student's, if known).
    pub base_model: Option<String>,
    pub device: Device,
    pub options: TrainOptions,
    /// Continue from the checkpoint an interrupted run with the same settings left.
    pub resume: bool,
    pub force: bool,
    /// A folder for the teacher's final hidden states, shared by runs on the same text
    /// ([`super::teacher`]): a later run computes only the teacher's LM head.
    pub teacher_cache: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalPoint {
    pub step: u64,
    pub tokens: u64,
    pub wiki_perplexity: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CacheCounts {
    pub dir: String,
    pub hits: u64,
    pub misses: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub input: Input,
    pub teacher: Option<Input>,
    pub options: TrainOptions,
    pub data: TextSummary,
    pub trainable_params: usize,
    pub frozen_params: usize,
    pub steps: u64,
    pub tokens: u64,
    pub tokens_per_step: u64,
    pub warmup_steps: u64,
    /// Mean loss of the first and the last 10 % of the steps (at least one step each).
    pub loss_start: f64,
    pub loss_end: f64,
    /// What the evaluation measures.
    pub eval_protocol: String,
    /// Held-out perplexity before training and after every `eval_every` steps.
    pub eval: Vec<EvalPoint>,
    /// A resumed run: the step its checkpoint had reached.
    pub resumed_from_step: Option<u64>,
    /// Training wall time (all sessions of a resumed run), without loading and writing.
    pub seconds_training: f64,
    pub seconds_total: f64,
    /// Training tokens per second of training wall time.
    pub tokens_per_s: f64,
    /// The teacher's share of the step time.
    pub teacher_fraction: f64,
    /// With a teacher cache, the micro-batches of this session whose hidden states were read
    /// from it (only the LM head ran) and computed.
    pub teacher_cache: Option<CacheCounts>,
    /// FLOPs per training token: 6 × trainable parameters (forward and backward), plus 2 × the
    /// teacher's parameters where it runs (its LM head alone on cached micro-batches; attention
    /// and the loss not counted).
    pub flops_per_token: f64,
    /// `flops_per_token` × tokens/s, in GFLOP/s.
    pub achieved_gflops: f64,
    /// This machine's f32 GEMM rate measured after training (CPU: [512×2048]·[2048×2048]).
    pub gemm_roof_gflops: Option<f64>,
    /// `achieved_gflops` / `gemm_roof_gflops`.
    pub roof_fraction: Option<f64>,
    /// Peak resident memory of the process (Linux `VmHWM`), in bytes.
    pub peak_rss_bytes: Option<u64>,
    /// What each model format was written as (type, `auto`'s choice, fallbacks, files).
    pub written: Vec<Written>,
    /// The other files: log, plot, this report.
    pub outputs: Vec<String>,
    /// Every file of the output directory but this report, with its size.
    pub files: Vec<FileBytes>,
}

fn refuse(setting: &'static str, problem: impl Into<String>) -> Result<()> {
    Err(SettingError::new(setting, problem).into())
}

impl TrainJob {
    pub fn work_dir(&self) -> PathBuf {
        let name = self.out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        self.out.with_file_name(format!(".{name}.train"))
    }

    fn writes(&self, f: ExportFormat) -> bool {
        self.formats.contains(&f)
    }

    /// Everything that can be checked without loading a model.
    fn check_options(&self) -> Result<()> {
        self.options.check()?;
        atomic::check_output(&self.out, self.force)?;
        if self.formats.is_empty() {
            refuse("format", "must name at least one output format")?;
        }
        if let Some(why) = self.dtype.refused_for_hf()
            && self.writes(ExportFormat::Hf)
        {
            refuse("dtype", why)?;
        }
        if let Some(why) = self.base_model.as_deref().and_then(hub_id_problem) {
            refuse("base_model", why)?;
        }
        let loss = self.options.loss;
        if loss.needs_teacher() && self.teacher.is_none() {
            refuse("teacher", format!("is needed by loss `{}`: give the dense model, or train with loss `ce`", transact_model::choice::Choice::name(loss)))?;
        }
        Ok(())
    }

    pub fn run(&self, progress: &dyn Progress) -> Result<TrainReport> {
        let t0 = Instant::now();
        self.check_options()?;
        let o = &self.options;
        transact_kernels::heap::keep_freed_memory();
        let mut student = load_model(&self.model, &self.device)?;
        student.storage.name_hub_id(self.base_model.as_deref());
        let cfg = &student.model.config;
        if o.seq_len > cfg.max_position {
            refuse("seq_len", format!("{} exceeds the model's context of {}", o.seq_len, cfg.max_position))?;
        }
        if self.writes(ExportFormat::Hf) {
            hf_config::config_json(cfg, &student.tokenizer.meta, "float32", false)?;
        }
        // The teacher runs for a KD loss and for text sampled from it.
        let samples_teacher = self.data.starts_with("teacher:");
        let teacher = match (&self.teacher, o.loss.needs_teacher() || samples_teacher) {
            (Some(p), true) => {
                let t = load_model(p, &self.device)?;
                same_vocabulary(&t, &student, p)?;
                Some(t)
            }
            (Some(_), false) => {
                progress.note("note: loss `ce` does not use the teacher");
                None
            }
            (None, _) => None,
        };
        let text = TrainText::load(&student.tokenizer, &self.data, o.seq_len, teacher.as_ref().map(|t| &t.model), o.seed, progress)?;
        let wiki = if o.eval_every.is_some() { Some(corpus::load("wiki")?) } else { None };
        let student_sha = transact_model::io::load::model_sha256(&self.model)?;
        let teacher_input = match (&self.teacher, &teacher) {
            (Some(p), Some(_)) => Some(Input { path: p.display().to_string(), sha256: transact_model::io::load::model_sha256(p)? }),
            _ => None,
        };
        let fingerprint = self.fingerprint(&student_sha, teacher_input.as_ref(), &text)?;

        let teacher = teacher
            .as_ref()
            .zip(teacher_input.as_ref())
            .map(|(t, input)| Teacher::with_cache(&t.model, &input.sha256, self.teacher_cache.as_deref()))
            .transpose()?;
        let mut trainer = Trainer::new(&student.model, teacher.as_ref(), &text, o)?;
        let work = self.work_dir();
        let (ckpt, log_path) = (work.join("checkpoint"), work.join(LOG));
        let mut seconds_before = 0.0;
        let mut resumed_from_step = None;
        if self.resume && checkpoint::exists(&ckpt) {
            let state = checkpoint::restore(&ckpt, &mut trainer.opt, &fingerprint, &log_path)?;
            progress.note(&format!("resuming at step {} of {} from {}", state.step, o.total_steps(), ckpt.display()));
            seconds_before = state.seconds;
            resumed_from_step = Some(state.step);
        } else {
            if self.resume {
                progress.note(&format!("nothing to resume in {}: starting from step 0", work.display()));
            } else if checkpoint::exists(&ckpt) && !self.force {
                bail!(
                    "{}: holds a checkpoint of an interrupted run; continue it (`resume`) or start over (`force`)",
                    work.display()
                );
            }
            let _ = std::fs::remove_dir_all(&work);
        }
        std::fs::create_dir_all(&work).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", work.display()))?;

        let eval_at = |trainer: &Trainer, step: u64| -> Result<Option<EvalPoint>> {
            let Some(wiki) = &wiki else { return Ok(None) };
            let ppl = held_out(&trainer.model(), &student.tokenizer, wiki)?;
            Ok(Some(EvalPoint { step, tokens: step * o.tokens_per_step(), wiki_perplexity: ppl }))
        };
        // Before training (recomputed on resume: it is deterministic); later points come from the log.
        let before = eval_at(&trainer, 0)?;
        if let Some(e) = &before {
            progress.note(&format!("held-out wiki perplexity before training: {:.2}", e.wiki_perplexity));
        }
        let mut last_eval = before.clone();

        let total = o.total_steps();
        let t_train = Instant::now();
        progress.start("train", total);
        progress.advance(trainer.opt.step);
        while trainer.opt.step < total {
            let mut r = trainer.step()?;
            let step = r.step;
            if o.eval_every.is_some_and(|n| step % n == 0 || step == total) {
                let e = eval_at(&trainer, step)?.expect("evaluation is on");
                r.eval_perplexity = Some(e.wiki_perplexity);
                last_eval = Some(e);
            }
            log::append(&log_path, &r)?;
            progress.advance(1);
            progress.message(&status(&r, last_eval.as_ref()));
            if o.checkpoint_every.is_some_and(|n| step % n == 0) && step < total {
                let state = CheckpointState { step, fingerprint: fingerprint.clone(), seconds: seconds_before + t_train.elapsed().as_secs_f64() };
                checkpoint::save(&ckpt, &trainer.opt, &state, &log_path)?;
            }
        }
        progress.finish();
        let seconds_training = seconds_before + t_train.elapsed().as_secs_f64();
        let records = log::read(&log_path)?;
        let roof = crate::bench::roof::gemm(&self.device).ok();
        let cache = teacher.as_ref().and_then(|t| t.cache_counts());
        let teacher_params = teacher.as_ref().map_or(0.0, |t| {
            let m = &t.model;
            let all: usize = TensorRole::all(&m.config).iter().filter_map(|r| m.weights.get(*r)).map(|w| w.elem_count()).sum();
            match cache {
                Some((hits, misses)) if hits > 0 => {
                    let head = m.config.hidden_size * m.config.vocab_size;
                    (hits * head as u64 + misses * all as u64) as f64 / (hits + misses) as f64
                }
                _ => all as f64,
            }
        });
        let flops_per_token = 6.0 * trainer.trainable_params() as f64 + 2.0 * teacher_params;
        let tokens_per_s = (records.len() as u64 * o.tokens_per_step()) as f64 / records.iter().map(|r| r.seconds).sum::<f64>().max(1e-9);
        let achieved_gflops = flops_per_token * tokens_per_s / 1e9;
        let evals: Vec<EvalPoint> = before
            .into_iter()
            .chain(records.iter().filter_map(|r| {
                Some(EvalPoint { step: r.step, tokens: r.tokens, wiki_perplexity: r.eval_perplexity? })
            }))
            .collect();

        let trained = LoadedModel {
            model: Model::new(cfg.clone(), trainer.snapshot()?),
            tokenizer: student.tokenizer.clone(),
            path: self.out.clone(),
            format: student.format,
            gguf_tokenizer_metadata: student.gguf_tokenizer_metadata.clone(),
            storage: student.storage.clone(),
        };
        let outputs = vec![LOG.to_string(), "loss.png".to_string(), "README.md".to_string(), "train_report.json".to_string()];
        let mut report = TrainReport {
            input: Input { path: self.model.display().to_string(), sha256: student_sha },
            teacher: teacher_input,
            options: o.clone(),
            data: text.summary(),
            trainable_params: trainer.trainable_params(),
            frozen_params: trainer.frozen_params,
            steps: total,
            tokens: total * o.tokens_per_step(),
            tokens_per_step: o.tokens_per_step(),
            warmup_steps: o.warmup_steps(),
            loss_start: mean_loss(&records, true),
            loss_end: mean_loss(&records, false),
            eval_protocol: format!("wiki (BoolQ passages) token perplexity, first {EVAL_WINDOWS} windows of {EVAL_SEQ_LEN} tokens"),
            eval: evals,
            resumed_from_step,
            seconds_training,
            seconds_total: 0.0,
            tokens_per_s,
            teacher_fraction: records.iter().map(|r| r.teacher_seconds).sum::<f64>() / records.iter().map(|r| r.seconds).sum::<f64>().max(1e-9),
            teacher_cache: cache.zip(self.teacher_cache.as_ref()).map(|((hits, misses), dir)| CacheCounts { dir: dir.display().to_string(), hits, misses }),
            flops_per_token,
            achieved_gflops,
            gemm_roof_gflops: roof,
            roof_fraction: roof.map(|r| achieved_gflops / r),
            peak_rss_bytes: None,
            written: Vec::new(),
            outputs,
            files: Vec::new(),
        };
        atomic::write_dir(&self.out, self.force, |dir| {
            if self.writes(ExportFormat::Hf) {
                report.written.push(write_hf(&trained, dir, self.dtype)?);
            }
            if self.writes(ExportFormat::Gguf) {
                report.written.push(write_gguf(&trained, &dir.join("model.gguf"), self.dtype)?);
            }
            std::fs::copy(&log_path, dir.join(LOG))?;
            let title = format!("{} · {} · {} tokens", self.out.file_name().unwrap_or_default().to_string_lossy(), transact_model::choice::Choice::name(o.loss), report.tokens);
            let evals: Vec<(u64, f64)> = report.eval.iter().map(|e| (e.step, e.wiki_perplexity)).collect();
            if let Err(e) = plot::loss_curve(&records, &evals, &title, &dir.join("loss.png")) {
                progress.note(&format!("warning: {e:#}"));
                report.outputs.retain(|f| f != "loss.png");
            }
            let lineage = Lineage {
                hub_id: trained.storage.hub_id.as_deref(),
                license: trained.storage.license.as_deref(),
                name: &crate::prune::job::output_name(&self.out),
                library: if self.writes(ExportFormat::Hf) { "transformers" } else { "gguf" },
            };
            let model_files: Vec<FileBytes> = files_on_disk(dir);
            std::fs::write(dir.join("README.md"), train_card(&lineage, &report, cfg, &model_files, &report.written))?;
            report.files = files_on_disk(dir);
            report.seconds_total = t0.elapsed().as_secs_f64();
            report.peak_rss_bytes = peak_rss();
            std::fs::write(dir.join("train_report.json"), serde_json::to_string_pretty(&report)?)?;
            Ok(())
        })?;
        let _ = std::fs::remove_dir_all(&work);
        Ok(report)
    }

    /// What a resumed run must share with the checkpoint it continues.
    fn fingerprint(&self, student_sha: &str, teacher: Option<&Input>, text: &TrainText) -> Result<serde_json::Value> {
        let serde_json::Value::Object(options) = serde_json::to_value(&self.options)? else {
            bail!("options serialise to an object");
        };
        let mut fields: HashMap<&str, serde_json::Value> = options.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        fields.insert("model_sha256", student_sha.into());
        fields.insert("teacher_sha256", teacher.map(|t| t.sha256.clone()).into());
        fields.insert("data_sha256", text.sha256.clone().into());
        Ok(checkpoint::fingerprint(fields))
    }
}

/// Held-out perplexity of `model` ([`EVAL_WINDOWS`] × [`EVAL_SEQ_LEN`] of `wiki`).
pub fn held_out(model: &Model, tok: &Tokenizer, wiki: &Corpus) -> Result<f64> {
    let seq = EVAL_SEQ_LEN.min(model.config.max_position);
    let ppl = corpus_perplexity(model, tok, wiki, seq, Some(EVAL_WINDOWS), &Silent)?.token_perplexity;
    if !ppl.is_finite() {
        bail!("held-out perplexity is {ppl}: the weights hold NaN or infinite values");
    }
    Ok(ppl)
}

/// The progress bar's live status.
pub(crate) fn status(r: &StepRecord, eval: Option<&EvalPoint>) -> String {
    let mut s = format!("loss {:.4} · {:.0} tok/s · lr {:.2e}", r.loss, r.tokens_per_s, r.lr);
    if let Some(e) = eval {
        s += &format!(" · wiki ppl {:.2}", e.wiki_perplexity);
    }
    s
}

/// Mean loss of the first (or last) 10 % of the steps.
pub(crate) fn mean_loss(records: &[StepRecord], first: bool) -> f64 {
    let n = records.len().div_ceil(10).max(1).min(records.len());
    if n == 0 {
        return f64::NAN;
    }
    let part = if first { &records[..n] } else { &records[records.len() - n..] };
    part.iter().map(|r| r.loss).sum::<f64>() / n as f64
}

/// Distillation compares distributions token by token: the two vocabularies must be the same.
fn same_vocabulary(teacher: &LoadedModel, student: &LoadedModel, teacher_path: &Path) -> Result<()> {
    let (tv, sv) = (teacher.model.config.vocab_size, student.model.config.vocab_size);
    if tv != sv {
        bail!("{}: the teacher's vocabulary has {tv} tokens, the student's {sv}: distillation needs the same tokenizer", teacher_path.display());
    }
    for id in 0..tv as u32 {
        let (a, b) = (teacher.tokenizer.token(id), student.tokenizer.token(id));
        if a != b {
            bail!(
                "{}: the teacher's token {id} is {:?}, the student's {:?}: distillation needs the same tokenizer",
                teacher_path.display(),
                a.unwrap_or_default(),
                b.unwrap_or_default()
            );
        }
    }
    Ok(())
}
