use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use transact::sweep::Sweep;
use transact::sweep::spec::Spec;

use crate::common::{self, Bars};

#[derive(Args)]
pub struct SweepArgs {
    /// The spec: a TOML or JSON file naming the model (relative to the current directory), the
    /// shared calibration, recovery and evaluation settings, and one or more [[grid]]s whose
    /// every combination of scorer, ratio (fraction of non-embedding parameters removed), shots,
    /// axis, compensate, recover / final_recover (tokens) and seed is one run. See
    /// experiments/paper.toml.
    spec: PathBuf,
    /// Results folder: results.jsonl (one row per run), sweep.json, stats/, runs/NAME/ with each
    /// run's prune_report.json and eval.json. Rerunning into it skips finished rows.
    #[arg(long)]
    out: PathBuf,
    /// Print the planned rows (finished ones marked) and exit.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(a: SweepArgs) -> Result<()> {
    let spec = Spec::load(&a.spec)?;
    let plan = spec.plan()?;
    if a.dry_run {
        let (rows, _) = transact::sweep::results::read(&a.out.join("results.jsonl"))?;
        let done = |key: &str| rows.iter().any(|r| r.key == key);
        println!("{} dense reference", if done(transact::sweep::DENSE) { "done" } else { "todo" });
        for p in &plan {
            println!("{} {}  [{}]", if done(&p.point.key()) { "done" } else { "todo" }, p.point.key(), p.grids.join(", "));
        }
        return Ok(());
    }
    let sweep = Sweep { spec, out: a.out, device: common::device() };
    let (grid, runs) = Bars::stacked();
    let t0 = std::time::Instant::now();
    let o = sweep.run(&grid, &runs)?;
    eprintln!(
        "{} rows: {} ran, {} already finished, in {:.0} s; results in {}",
        o.rows,
        o.ran,
        o.skipped,
        t0.elapsed().as_secs_f64(),
        sweep.out.join("results.jsonl").display()
    );
    Ok(())
}
