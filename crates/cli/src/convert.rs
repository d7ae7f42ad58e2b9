use anyhow::Result;
use clap::Args;
use transact::WeightDtype;
use transact::model::io::export::{ExportFormat, export};

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
    /// Weight type of the output (norms stay f32 in GGUF; q8_0 is GGUF only).
    #[arg(long, default_value = "f32", value_parser = choice::<WeightDtype>())]
    dtype: WeightDtype,
    /// Replace `out` if it exists.
    #[arg(long)]
    force: bool,
}

pub fn run(a: ConvertArgs) -> Result<()> {
    let lm = common::load(&a.model)?;
    let t = std::time::Instant::now();
    export(&lm, &a.out, a.to, a.dtype, a.force)?;
    eprintln!("wrote {} in {:.2} s", a.out.display(), t.elapsed().as_secs_f64());
    Ok(())
}
