use anyhow::Result;
use clap::Args;
use transact::model::io::export::{ExportFormat, export};
use transact::model::io::save_dtype::SaveDtype;

use crate::common::{self, choice};

#[derive(Args)]
pub struct ConvertArgs {
    /// GGUF file or Hugging Face model directory to read.
    model: crate::ModelPath,
    /// Output: a directory for --to hf, a file for --to gguf. Written to a temporary name and
    /// renamed when complete.
    out: std::path::PathBuf,
    /// Output format.
    #[arg(long, value_parser = choice::<ExportFormat>())]
    to: ExportFormat,
    /// Weight type of the output. `auto`: HF in bf16 (f32/f16 if the source was an f32/f16 HF
    /// model), GGUF in the source's type or the nearest writable type above it. GGUF also takes
    /// llama.cpp's file types (q8_0 … q4_k_m), each tensor typed by llama-quantize's rule; norms
    /// stay f32.
    #[arg(long, default_value = "auto", value_parser = choice::<SaveDtype>())]
    dtype: SaveDtype,
    /// Replace `out` if it exists.
    #[arg(long)]
    force: bool,
}

pub fn run(a: ConvertArgs) -> Result<()> {
    let lm = common::load(&a.model)?;
    let t = std::time::Instant::now();
    let w = export(&lm, &a.out, a.to, a.dtype, a.force)?;
    let bytes: u64 = transact::model::io::storage::files_on_disk(&a.out).iter().map(|f| f.bytes).sum();
    eprintln!("wrote {} ({:.1} MB) in {:.2} s: {}", a.out.display(), bytes as f64 / 1e6, t.elapsed().as_secs_f64(), w.describe());
    Ok(())
}
