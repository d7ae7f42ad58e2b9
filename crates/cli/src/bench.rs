use std::path::PathBuf;

use anyhow::Result;
use candle_core::Device;
use clap::Args;
use transact::bench::roof::{measure, peak_rss};
use transact::bench::side_by_side::{self, BenchJob, BenchReport, Column, DECODE_AT, PREFILL};
use transact::model::io::atomic;
use transact::{KvDtype, WeightDtype};

use crate::common::{self, Bars, choice};

#[derive(Args)]
pub struct BenchArgs {
    /// GGUF file or Hugging Face model directory.
    model: crate::ModelPath,
    /// A second model measured in the same run (e.g. the pruned one), with ratios.
    #[arg(long)]
    vs: Option<crate::ModelPath>,
    /// Weight types to run each model in, comma-separated (f32, f16, bf16, q8_0). Each non-f32
    /// entry also reports its logit drift against the same model in f32.
    #[arg(long, value_delimiter = ',', default_value = "f32", value_parser = choice::<WeightDtype>())]
    dtype: Vec<WeightDtype>,
    /// KV cache types to run each weight type with, comma-separated (f32, f16, q8). f16 halves
    /// the cache and the bytes decode attention reads; q8 (CPU only: 8-bit integers and one f32
    /// scale per key or value vector) cuts them to ~0.27 of f32. Each one's logit drift against
    /// f32 is reported.
    #[arg(long, value_delimiter = ',', default_value = "f32", value_parser = choice::<KvDtype>())]
    kv_dtype: Vec<KvDtype>,
    /// Timed repetitions per measurement (at least 1); the best is reported.
    #[arg(long, default_value_t = 3, value_parser = common::at_least_one)]
    repeats: usize,
    /// Also write the numbers as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(a: BenchArgs) -> Result<()> {
    if let Some(j) = &a.json {
        atomic::check_output(j, true)?;
    }
    a.kv_dtype.iter().try_for_each(|&kv| common::check_kv_dtype(kv))?;
    let device = common::device();
    let first = measure(&device)?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("roofs: GEMM {:.1} GFLOP/s, bandwidth {:.1} GB/s; loadavg {}", first.gemm_gflops, first.bandwidth_gbs, load.trim());
    let paths: Vec<&crate::ModelPath> = std::iter::once(&a.model).chain(a.vs.as_ref()).collect();
    let lms = paths.iter().map(|p| common::load(p)).collect::<Result<Vec<_>>>()?;
    // On a GPU, parity with the CPU forward (the reference every test checks).
    let cpus = paths
        .iter()
        .zip(&lms)
        .map(|(p, lm)| if matches!(lm.model.device, Device::Cpu) { Ok(None) } else { transact::load_model(p, &Device::Cpu).map(Some) })
        .collect::<Result<Vec<_>>>()?;
    let job = BenchJob { models: lms.iter().collect(), cpu_copies: cpus.iter().map(Option::as_ref).collect(), dtypes: a.dtype.clone(), kv_dtypes: a.kv_dtype.clone(), repeats: a.repeats };
    let report = side_by_side::run(&job, &device, first, &Bars::new())?;
    let probes = &report.roof_probes;
    eprintln!(
        "roofs, median of {} probes: GEMM {:.1} GFLOP/s, bandwidth {:.1} GB/s (probes ranged {:.1}–{:.1} GB/s)",
        probes.len(),
        report.roofs.gemm_gflops,
        report.roofs.bandwidth_gbs,
        probes.iter().map(|r| r.bandwidth_gbs).fold(f64::INFINITY, f64::min),
        probes.iter().map(|r| r.bandwidth_gbs).fold(0.0, f64::max)
    );
    print_table(&report.models);
    print_speedups(&report);
    if let Some(j) = &a.json {
        atomic::write_file(j, true, |tmp| Ok(std::fs::write(tmp, serde_json::to_string_pretty(&report)?)?))?;
    }
    Ok(())
}

/// The second model's decode speedups next to the ideal ones (by bytes read per token).
fn print_speedups(report: &BenchReport) {
    let per_model = report.models.len() / 2;
    let labels = report.models[per_model..].iter().flat_map(|c| std::iter::repeat_n(c.label.as_str(), DECODE_AT.len()));
    for (s, label) in report.speedups_vs_first_model.iter().filter(|s| s.decode_context.is_some()).zip(labels) {
        let (c, ideal) = (s.decode_context.unwrap_or(0), s.ideal.unwrap_or(f64::NAN));
        println!("{label} decode @{c}: {:.2}x faster, ideal {ideal:.2}x by bytes read ({:.0}% of ideal)", s.speedup, 100.0 * s.speedup / ideal);
    }
}

/// One column per measured (model, weight type, KV type); ratios are against the first column.
fn print_table(columns: &[Column]) {
    const W: usize = 22;
    let line = |label: &str, cells: Vec<String>| {
        println!("{label:<26}{}", cells.iter().map(|c| format!(" {c:>W$}")).collect::<String>());
    };
    line("", columns.iter().map(|c| c.label.chars().rev().take(W).collect::<Vec<_>>().into_iter().rev().collect()).collect());
    line("weights MB read/token", columns.iter().map(|c| format!("{:.1}", c.weight_bytes_per_token as f64 / 1e6)).collect());
    line("KV cache bytes/token", columns.iter().map(|c| format!("{}", c.kv_bytes_per_token)).collect());
    for (i, n) in PREFILL.iter().enumerate() {
        let first = columns[0].prefill[i].tokens_per_s;
        line(&format!("prefill {n} tok/s"), columns.iter().map(|c| { let p = &c.prefill[i]; format!("{:.1} ({:.2}x, {:.0}%)", p.tokens_per_s, p.tokens_per_s / first, 100.0 * p.gemm_roof_fraction) }).collect());
    }
    for (i, n) in DECODE_AT.iter().enumerate() {
        let first = columns[0].decode[i].tokens_per_s;
        line(&format!("decode @{n} tok/s"), columns.iter().map(|c| { let d = &c.decode[i]; format!("{:.1} ({:.2}x, {:.0}%)", d.tokens_per_s, d.tokens_per_s / first, 100.0 * d.bandwidth_roof_fraction) }).collect());
    }
    for (what, drift) in [("f32", (|c: &Column| c.drift_vs_f32) as fn(&Column) -> _), ("CPU f32", |c: &Column| c.drift_vs_cpu)] {
        if columns.iter().all(|c| drift(c).is_none()) {
            continue;
        }
        let cells = |cell: &dyn Fn(&transact::bench::Drift) -> String| -> Vec<String> { columns.iter().map(|c| drift(c).map_or("-".into(), |d| cell(&d))).collect() };
        line(&format!("max |Δlogit| vs {what}"), cells(&|d| format!("{:.3}", d.max_abs)));
        line(&format!("argmax agrees vs {what}"), cells(&|d| format!("{}/{}", d.top1_agree, d.positions)));
    }
    println!("(x: ratio to the first column; %: fraction of the GEMM roof for prefill, of the bandwidth roof for decode)");
    println!("peak RSS {:.0} MB (all models, this process)", peak_rss().unwrap_or(0) as f64 / 1e6);
}
