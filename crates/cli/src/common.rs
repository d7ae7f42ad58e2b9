//! What every subcommand shares: the device, loading with a timing line, progress bars, value
//! parsers for the library's named choices, and errors rendered with this command's flag names.

use std::path::Path;
use std::sync::Mutex;

use anyhow::Result;
use candle_core::Device;
use clap::ValueEnum;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use transact::model::choice::Choice;
use transact::model::io::export::ExportFormat;
use transact::{KvDtype, LoadedModel, SettingError};

static DEVICE: std::sync::OnceLock<Device> = std::sync::OnceLock::new();

/// `cpu`, `cuda` or `cuda:N` as a candle device, with an error that says how to get CUDA.
fn parse_device(spec: &str) -> Result<Device> {
    let ordinal = match spec {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        s => match s.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => n,
            None => anyhow::bail!("--device must be cpu, cuda or cuda:N, got `{spec}`"),
        },
    };
    if !candle_core::utils::cuda_is_available() {
        anyhow::bail!("--device {spec}: this binary was built without CUDA; rebuild with `cargo build --release -p transact-cli --features cuda`");
    }
    Ok(Device::new_cuda(ordinal)?)
}

/// Parses `--device` once for every subcommand.
pub fn set_device(spec: &str) -> Result<()> {
    let _ = DEVICE.set(parse_device(spec)?);
    Ok(())
}

pub fn device() -> Device {
    DEVICE.get().cloned().unwrap_or(Device::Cpu)
}

/// Refuses a KV cache type the selected device cannot keep, before any work.
pub fn check_kv_dtype(kv: KvDtype) -> Result<()> {
    let device = device();
    if kv.tensor_dtype().is_none() && !matches!(device, Device::Cpu) {
        anyhow::bail!("--kv-dtype {} runs only on the CPU; on {device:?} use f16 or f32", kv.name());
    }
    Ok(())
}

pub fn load(path: &Path) -> Result<LoadedModel> {
    let t = std::time::Instant::now();
    let lm = transact::load_model(path, &device())?;
    eprintln!("loaded {} in {:.2} s", path.display(), t.elapsed().as_secs_f64());
    Ok(lm)
}

/// Parses a count that must be at least 1 (`--repeats`, `--limit`, ...): 0 is a usage error.
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A clap parser for one of the library's named choices: its names are the possible values, its
/// one-line descriptions their help.
pub fn choice<T: Choice + Send + Sync + Clone>() -> impl TypedValueParser<Value = T> {
    let values = T::ALL.iter().map(|v| PossibleValue::new(v.name()).help(v.about()));
    PossibleValuesParser::new(values).map(|name| T::parse(&name).expect("clap checked the name"))
}

/// What the output directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Formats {
    /// Hugging Face files.
    Hf,
    /// `model.gguf`.
    Gguf,
    /// Both.
    Both,
}

/// Where a model-writing command puts its result: shared by `prune` and `train`.
#[derive(clap::Args, Clone)]
pub struct OutputArgs {
    /// What the output directory holds.
    #[arg(long, value_enum, default_value = "hf")]
    pub format: Formats,
    /// Weight type of the written model. `auto`: Hugging Face in bf16 (f32/f16 if the source
    /// was an f32/f16 HF model), GGUF in the source's type (e.g. Q4_1 for the bundled model) or
    /// the nearest writable type above it. GGUF also takes llama.cpp's file types, each tensor
    /// typed by llama-quantize's rule; norms stay f32. Pruning and training work in f32.
    #[arg(long, default_value = "auto", value_parser = choice::<transact::model::io::save_dtype::SaveDtype>())]
    pub dtype: transact::model::io::save_dtype::SaveDtype,
    /// The Hub id (`organization/name`) the model card names as `base_model` and config.json as
    /// `_name_or_path` [default: what the source states, if anything].
    #[arg(long)]
    pub base_model: Option<String>,
    /// Replace the output directory if it exists (for `train`, also the checkpoint an
    /// interrupted run left).
    #[arg(long)]
    pub force: bool,
}

impl Formats {
    pub fn formats(self) -> Vec<ExportFormat> {
        match self {
            Formats::Hf => vec![ExportFormat::Hf],
            Formats::Gguf => vec![ExportFormat::Gguf],
            Formats::Both => vec![ExportFormat::Hf, ExportFormat::Gguf],
        }
    }
}

pub use transact::train::options::count;

/// Progress bars on stderr for the library's stages; notes go to stderr as lines.
pub struct Bars {
    bar: Mutex<Option<ProgressBar>>,
    /// Bars made by [`Bars::stacked`] share one terminal area, so a sweep's grid bar stays above
    /// the bars of its runs.
    area: Option<MultiProgress>,
}

impl Bars {
    pub fn new() -> Self {
        Self { bar: Mutex::new(None), area: None }
    }

    /// Two progress receivers drawn one above the other.
    pub fn stacked() -> (Self, Self) {
        let area = MultiProgress::new();
        (Self { bar: Mutex::new(None), area: Some(area.clone()) }, Self { bar: Mutex::new(None), area: Some(area) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ProgressBar>> {
        self.bar.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl transact::Progress for Bars {
    fn start(&self, label: &str, total: u64) {
        let mut pb = ProgressBar::new(total);
        pb.set_style(
            ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {per_sec} ETA {eta} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        pb.set_prefix(label.to_string());
        let mut slot = self.lock();
        if let Some(area) = &self.area {
            pb = match &*slot {
                Some(old) => area.insert_after(old, pb),
                None => area.add(pb),
            };
        }
        if let Some(old) = slot.replace(pb) {
            old.finish_and_clear();
            if let Some(area) = &self.area {
                area.remove(&old);
            }
        }
    }

    fn advance(&self, n: u64) {
        if let Some(pb) = &*self.lock() {
            pb.inc(n);
        }
    }

    fn message(&self, text: &str) {
        if let Some(pb) = &*self.lock() {
            pb.set_message(text.to_string());
        }
    }

    fn finish(&self) {
        if let Some(pb) = self.lock().take() {
            pb.finish_and_clear();
            if let Some(area) = &self.area {
                area.remove(&pb);
            }
        }
    }

    fn note(&self, message: &str) {
        match (&self.area, &*self.lock()) {
            (Some(area), _) => area.suspend(|| eprintln!("{message}")),
            (None, Some(pb)) => pb.suspend(|| eprintln!("{message}")),
            (None, None) => eprintln!("{message}"),
        }
    }
}

/// This command's flag for a library setting (`mha_width` → `--mha-width`).
fn flag(setting: &str) -> String {
    format!("--{}", setting.replace('_', "-"))
}

/// An error as the user reads it: every message of the chain (as anyhow's `{:#}`), a refused
/// setting under its flag, settings a message mentions (`` `shots` ``) as flags too, and no
/// backtraces.
pub fn render(e: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in e.chain() {
        parts.push(if let Some(s) = cause.downcast_ref::<SettingError>() {
            format!("{} {}", flag(s.setting), s.problem)
        } else if let Some(e) = cause.downcast_ref::<candle_core::Error>() {
            without_backtrace(e)
        } else {
            cause.to_string()
        });
    }
    mention_flags(&parts.join(": "))
}

/// A candle error's message without the backtrace candle attaches when `RUST_BACKTRACE` is set:
/// users see what went wrong, not the stack.
fn without_backtrace(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(inner),
        other => other.to_string(),
    }
}

/// `` `name` `` → `--name` for the names of settings (lower case, underscores, no spaces), which
/// is how library messages mention the other settings that would fix a problem.
fn mention_flags(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('`') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('`') {
            Some(close) if is_setting(&after[..close]) => {
                out.push_str(&flag(&after[..close]));
                rest = &after[close + 1..];
            }
            _ => {
                out.push('`');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The library settings this command has a flag for.
fn is_setting(name: &str) -> bool {
    const SETTINGS: &[&str] = &[
        "ratio", "mha_width", "mlp_width", "mlp_multiple", "head_dim_multiple", "attn_unit", "gqa", "alpha", "shots", "stats",
        "recover_cmd", "resume", "stream", "format", "dtype", "kv_dtype", "calib", "calib_batch", "samples", "seq_len", "temperature",
        "top_p", "max_tokens", "force", "teacher", "loss", "kd_weight", "tokens", "steps", "batch", "grad_accum", "lr", "warmup",
        "schedule", "weight_decay", "clip", "seed", "data", "freeze", "eval_every", "checkpoint_every", "base_model",
    ];
    SETTINGS.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_render_as_flags() {
        let e = anyhow::Error::new(SettingError::new("stats", "holds dense statistics; use `shots` 1 or drop `stats`")).context("pruning m.gguf");
        assert_eq!(render(&e), "pruning m.gguf: --stats holds dense statistics; use --shots 1 or drop --stats");
        assert_eq!(mention_flags("tensor `blk.0.attn_q.weight` and `mha_width`"), "tensor `blk.0.attn_q.weight` and --mha-width");
    }
}
