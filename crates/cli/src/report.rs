use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct ReportArgs {
    /// A `transact sweep` results folder (results.jsonl, sweep.json, stats/, runs/), or an
    /// earlier report folder (which keeps the same data).
    dir: PathBuf,
    /// Report folder: report.html (self-contained, figures inlined as SVG), report.md,
    /// plots/*.png and *.svg (quality, salience, speed, recovery), and the data drawn
    /// (results.jsonl, sweep.json, stats/). Written to a temporary name and renamed when
    /// complete; it may be DIR itself (with --force).
    #[arg(long)]
    out: PathBuf,
    /// Replace the report folder if it exists.
    #[arg(long)]
    force: bool,
}

pub fn run(a: ReportArgs) -> Result<()> {
    let w = transact::report::write(&a.dir, &a.out, a.force)?;
    println!("{} rows → {} and {} (figures: {})", w.rows, w.html.display(), w.markdown.display(), w.figures.join(", "));
    Ok(())
}
