use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use transact::calibrate::activations::collect;
use transact::calibrate::blocks::{CalibSpec, prepare};
use transact::model::io::atomic;
use transact::model::io::load::model_sha256;

use crate::common::{self, Bars};

/// Calibration data options, shared by `calibrate` and `prune`.
#[derive(Args, Clone)]
pub struct CalibArgs {
    /// Calibration text: `mix` (CoQA stories + SQuAD + DROP contexts, no evaluation set), a
    /// built-in corpus (coqa, squad, drop; wiki/book are evaluation sets), or a text file, JSONL
    /// file with a `text` field, or a folder of them.
    #[arg(long, default_value = "mix")]
    pub calib: String,
    /// Number of calibration sequences (the paper uses 128).
    #[arg(long, default_value_t = 128)]
    pub samples: usize,
    /// Tokens per calibration sequence (the paper uses 4096; 256 keeps a 2-core CPU at ~2 min per pass).
    #[arg(long = "seq-len", default_value_t = 256)]
    pub seq_len: usize,
    /// Seed for drawing the calibration blocks (shot k of a K-shot run uses seed + k − 1) and
    /// for the random scorer.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Calibration sequences per forward pass.
    #[arg(long = "calib-batch", default_value_t = 8, value_parser = crate::common::at_least_one)]
    pub calib_batch: usize,
}

impl CalibArgs {
    pub fn spec(&self) -> CalibSpec {
        CalibSpec { source: self.calib.clone(), samples: self.samples, seq_len: self.seq_len, seed: self.seed }
    }
}

#[derive(Args)]
pub struct CalibrateArgs {
    /// GGUF file or Hugging Face model directory.
    model: crate::ModelPath,
    /// Output statistics file (safetensors, f64 sums per channel, with metadata).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    calib: CalibArgs,
    /// Replace `out` if it exists.
    #[arg(long)]
    force: bool,
}

pub fn run(a: CalibrateArgs) -> Result<()> {
    atomic::check_output(&a.out, a.force)?;
    let lm = common::load(&a.model)?;
    let t = std::time::Instant::now();
    let bars = Bars::new();
    let data = prepare(&lm.tokenizer, &a.calib.spec(), &bars)?;
    let sha = model_sha256(&lm.path)?;
    let stats = collect(&lm.model, &data, &sha, a.calib.calib_batch, "calibrate", &bars)?;
    atomic::write_file(&a.out, a.force, |tmp| stats.save(tmp))?;
    eprintln!(
        "wrote {}: {} layers, {} tokens ({} × {} from `{}`, seed {}) in {:.1} s",
        a.out.display(),
        stats.layers.len(),
        stats.meta.tokens,
        a.calib.samples,
        a.calib.seq_len,
        a.calib.calib,
        a.calib.seed,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
