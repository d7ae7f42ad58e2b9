use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::json;
use transact::bench::roof::{Roofs, measure, peak_rss};
use transact::bench::{decode_at, prefill_decode};
use transact::io::atomic;
use transact::stats::ModelStats;

#[derive(Args)]
pub struct BenchArgs {
    /// GGUF file or Hugging Face model directory.
    model: crate::ModelPath,
    /// A second model measured in the same run (e.g. the pruned one), with ratios.
    #[arg(long)]
    vs: Option<crate::ModelPath>,
    /// Timed repetitions per measurement; the best is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Also write the numbers as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

const PREFILL: [usize; 3] = [128, 512, 2048];
const DECODE_AT: [usize; 2] = [256, 1024];
const DECODE_TOKENS: usize = 32;

fn bench_one(path: &std::path::Path, roofs: &Roofs, repeats: usize) -> Result<serde_json::Value> {
    let lm = super::load(path)?;
    let m = &lm.model;
    let weights: u64 = transact::model::weights::TensorRole::all(&m.config)
        .into_iter()
        .filter_map(|r| m.weights.get(r))
        .map(|t| (t.elem_count() * t.dtype().size_in_bytes()) as u64)
        .sum();
    let mut prefill = Vec::new();
    for &n in &PREFILL {
        let prompt: Vec<u32> = (0..n as u32).map(|i| 100 + i % 1000).collect();
        let tps = prefill_decode(m, &prompt, 0, repeats)?.prefill_tokens_per_s;
        let flops = ModelStats::new(&m.config, n / 2).flops_per_token as f64;
        prefill.push(json!({"tokens": n, "tokens_per_s": tps, "gemm_roof_fraction": tps * flops / (roofs.gemm_gflops * 1e9)}));
    }
    let mut decode = Vec::new();
    for &c in &DECODE_AT {
        let tps = decode_at(m, c, DECODE_TOKENS, repeats)?;
        let st = ModelStats::new(&m.config, c);
        let bytes = weights as f64 + (st.kv_bytes_per_token_f32 * c as u64) as f64;
        decode.push(json!({"context": c, "tokens_per_s": tps, "bytes_per_token": bytes, "bandwidth_roof_fraction": tps * bytes / (roofs.bandwidth_gbs * 1e9)}));
    }
    let st = ModelStats::new(&m.config, 2048);
    Ok(json!({
        "model": path.display().to_string(),
        "weights_bytes": weights,
        "kv_bytes_per_token_f32": st.kv_bytes_per_token_f32,
        "params_total": st.params_total,
        "prefill": prefill,
        "decode": decode,
        "peak_rss_bytes": peak_rss(),
    }))
}

pub fn run(a: BenchArgs) -> Result<()> {
    let roofs = measure(&super::device())?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("roofs: GEMM {:.1} GFLOP/s, bandwidth {:.1} GB/s; loadavg {}", roofs.gemm_gflops, roofs.bandwidth_gbs, load.trim());
    let mut results = vec![bench_one(&a.model, &roofs, a.repeats)?];
    if let Some(vs) = &a.vs {
        results.push(bench_one(vs, &roofs, a.repeats)?);
    }
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let name = |v: &serde_json::Value| std::path::Path::new(v["model"].as_str().unwrap_or("")).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    print!("{:<28}", "");
    for r in &results {
        print!(" {:>28}", name(r));
    }
    println!("{}", if results.len() == 2 { "        ratio" } else { "" });
    let row = |label: String, vals: Vec<f64>, fmt: &dyn Fn(f64) -> String| {
        print!("{label:<28}");
        for v in &vals {
            print!(" {:>28}", fmt(*v));
        }
        if vals.len() == 2 {
            print!(" {:>12.2}x", vals[1] / vals[0]);
        }
        println!();
    };
    row("weights MB (f32 in memory)".into(), results.iter().map(|r| f(&r["weights_bytes"]) / 1e6).collect(), &|v| format!("{v:.1}"));
    row("KV cache bytes/token".into(), results.iter().map(|r| f(&r["kv_bytes_per_token_f32"])).collect(), &|v| format!("{v:.0}"));
    for (i, n) in PREFILL.iter().enumerate() {
        row(format!("prefill {n} tok/s (roof %)"), results.iter().map(|r| f(&r["prefill"][i]["tokens_per_s"])).collect(), &|v| format!("{v:.1}"));
        let fr: Vec<String> = results.iter().map(|r| format!("{:.0}%", 100.0 * f(&r["prefill"][i]["gemm_roof_fraction"]))).collect();
        println!("{:<28} {}", "", fr.iter().map(|s| format!("{s:>28}")).collect::<Vec<_>>().join(" "));
    }
    for (i, c) in DECODE_AT.iter().enumerate() {
        row(format!("decode @{c} tok/s (roof %)"), results.iter().map(|r| f(&r["decode"][i]["tokens_per_s"])).collect(), &|v| format!("{v:.1}"));
        let fr: Vec<String> = results.iter().map(|r| format!("{:.0}%", 100.0 * f(&r["decode"][i]["bandwidth_roof_fraction"]))).collect();
        println!("{:<28} {}", "", fr.iter().map(|s| format!("{s:>28}")).collect::<Vec<_>>().join(" "));
    }
    println!("peak RSS {:.0} MB (both models, this process)", peak_rss().unwrap_or(0) as f64 / 1e6);
    if let Some(j) = &a.json {
        let v = json!({"roofs": roofs, "loadavg": load.trim(), "models": results});
        atomic::write_file(j, true, |tmp| Ok(std::fs::write(tmp, serde_json::to_string_pretty(&v)?)?))?;
    }
    Ok(())
}
