use anyhow::Result;
use clap::Args;
use transact::io::export::{ExportDtype, ExportFormat, export};

#[derive(Args)]
pub struct ConvertArgs {
    /// GGUF file or Hugging Face model directory to read.
    model: crate::ModelPath,
    /// Output: a directory for --to hf, a file for --to gguf. Written to a temporary name and
    /// renamed when complete.
    out: std::path::PathBuf,
    /// Output format.
    #[arg(long, value_enum)]
    to: ExportFormat,
    /// Weight type of the output (norms stay f32 in GGUF; q8_0 is GGUF only).
    #[arg(long, value_enum, default_value = "f32")]
    dtype: ExportDtype,
    /// Replace `out` if it exists.
    #[arg(long)]
    force: bool,
}

pub fn run(a: ConvertArgs) -> Result<()> {
    let lm = super::load(&a.model)?;
    let t = std::time::Instant::now();
    export(&lm, &a.out, a.to, a.dtype, a.force)?;
    eprintln!("wrote {} in {:.2} s", a.out.display(), t.elapsed().as_secs_f64());
    Ok(())
}
