use std::path::PathBuf;

use anyhow::Result;
use candle_core::Device;
use clap::Args;
use serde_json::json;
use transact::{KvDtype, Model};
use transact::bench::roof::{Roofs, measure, peak_rss};
use transact::bench::{decode_at, drift, prefill_decode, prompt, weight_bytes_per_token};
use transact::io::atomic;
use transact::model::linear::WeightDtype;
use transact::stats::ModelStats;

#[derive(Args)]
pub struct BenchArgs {
    /// GGUF file or Hugging Face model directory.
    model: crate::ModelPath,
    /// A second model measured in the same run (e.g. the pruned one), with ratios.
    #[arg(long)]
    vs: Option<crate::ModelPath>,
    /// Weight types to run each model in, comma-separated (f32, f16, bf16, q8_0). Each non-f32
    /// entry also reports its logit drift against the same model in f32.
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    dtype: Vec<WeightDtype>,
    /// KV cache types to run each weight type with, comma-separated (f32, f16). f16 halves the
    /// cache and the bytes decode attention reads; its logit drift against f32 is reported.
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    kv_dtype: Vec<KvDtype>,
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
/// Tokens of the drift check (real text is not needed: all logits are compared).
const DRIFT_TOKENS: usize = 128;

/// Speeds and sizes of one model in one weight and KV type; the roof fractions are added once the run's
/// roofs are known ([`add_roof_fractions`]).
fn bench_one(m: &Model, f32_model: &Model, label: String, repeats: usize) -> Result<serde_json::Value> {
    let weights = weight_bytes_per_token(m);
    let mut prefill = Vec::new();
    for &n in &PREFILL {
        let tps = prefill_decode(m, &prompt(n), 0, repeats)?.prefill_tokens_per_s;
        let flops = ModelStats::new(&m.config, n / 2).flops_per_token as f64;
        prefill.push(json!({"tokens": n, "tokens_per_s": tps, "flops_per_token": flops}));
    }
    let st = ModelStats::new(&m.config, 2048);
    let kv_bytes = st.kv_bytes_per_token_f32 / 4 * m.kv_dtype.size_in_bytes() as u64;
    let mut decode = Vec::new();
    for &c in &DECODE_AT {
        let tps = decode_at(m, c, DECODE_TOKENS, repeats)?;
        let bytes = weights as f64 + (kv_bytes * c as u64) as f64;
        decode.push(json!({"context": c, "tokens_per_s": tps, "bytes_per_token": bytes}));
    }
    let drift = if std::ptr::eq(m, f32_model) { None } else { Some(drift(m, f32_model, &prompt(DRIFT_TOKENS))?) };
    Ok(json!({
        "label": label,
        "weight_bytes_per_token": weights,
        "kv_dtype": m.kv_dtype,
        "kv_bytes_per_token": kv_bytes,
        "params_total": st.params_total,
        "prefill": prefill,
        "decode": decode,
        "drift_vs_f32": drift,
        "peak_rss_bytes": peak_rss(),
    }))
}

/// The median of the roofs probed before and after each measurement. A single probe on a
/// shared VM reads anywhere from 26 to 57 GB/s; the median tracks what the machine gave during
/// the run.
fn median_roofs(probes: &[Roofs]) -> Roofs {
    let median = |f: fn(&Roofs) -> f64| {
        let mut v: Vec<f64> = probes.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
    };
    Roofs { gemm_gflops: median(|r| r.gemm_gflops), bandwidth_gbs: median(|r| r.bandwidth_gbs) }
}

fn add_roof_fractions(results: &mut [serde_json::Value], roofs: &Roofs) {
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    for r in results {
        for p in r["prefill"].as_array_mut().into_iter().flatten() {
            p["gemm_roof_fraction"] = json!(f(&p["tokens_per_s"]) * f(&p["flops_per_token"]) / (roofs.gemm_gflops * 1e9));
        }
        for d in r["decode"].as_array_mut().into_iter().flatten() {
            d["bandwidth_roof_fraction"] = json!(f(&d["tokens_per_s"]) * f(&d["bytes_per_token"]) / (roofs.bandwidth_gbs * 1e9));
        }
    }
}

pub fn run(a: BenchArgs) -> Result<()> {
    let device = super::device();
    let mut probes = vec![measure(&device)?];
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("roofs: GEMM {:.1} GFLOP/s, bandwidth {:.1} GB/s; loadavg {}", probes[0].gemm_gflops, probes[0].bandwidth_gbs, load.trim());
    let mut results = Vec::new();
    for path in std::iter::once(&a.model).chain(a.vs.as_ref()) {
        let lm = super::load(path)?;
        // On a GPU, parity with the CPU forward (the reference every test checks).
        let cpu = match lm.model.device {
            Device::Cpu => None,
            _ => Some(transact::load_model(path, &Device::Cpu)?),
        };
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        for &dt in &a.dtype {
            let weights = if dt == WeightDtype::F32 { lm.model.clone() } else { lm.model.with_weight_dtype(dt)? };
            for &kv in &a.kv_dtype {
                let m = weights.with_kv_dtype(kv);
                // The reference itself (f32 weights and cache) reports no drift.
                let m = if (dt, kv) == (WeightDtype::F32, KvDtype::F32) { &lm.model } else { &m };
                let label = match kv {
                    KvDtype::F32 => format!("{name} {}", dt.name()),
                    _ => format!("{name} {} KV {}", dt.name(), kv.name()),
                };
                eprintln!("measuring {label}");
                let mut r = bench_one(m, &lm.model, label, a.repeats)?;
                if let Some(cpu) = &cpu {
                    r["drift_vs_cpu"] = json!(drift(m, &cpu.model, &prompt(DRIFT_TOKENS))?);
                }
                r["model"] = json!(path.display().to_string());
                r["dtype"] = json!(dt);
                results.push(r);
                probes.push(measure(&device)?);
            }
        }
    }
    let roofs = median_roofs(&probes);
    eprintln!(
        "roofs, median of {} probes: GEMM {:.1} GFLOP/s, bandwidth {:.1} GB/s (probes ranged {:.1}–{:.1} GB/s)",
        probes.len(),
        roofs.gemm_gflops,
        roofs.bandwidth_gbs,
        probes.iter().map(|r| r.bandwidth_gbs).fold(f64::INFINITY, f64::min),
        probes.iter().map(|r| r.bandwidth_gbs).fold(0.0, f64::max)
    );
    add_roof_fractions(&mut results, &roofs);
    print_table(&results);
    let speedups = if a.vs.is_some() { speedups(&results, a.dtype.len() * a.kv_dtype.len()) } else { Vec::new() };
    if let Some(j) = &a.json {
        let v = json!({"roofs": roofs, "roof_probes": probes, "loadavg": load.trim(), "models": results, "speedups_vs_first_model": speedups});
        atomic::write_file(j, true, |tmp| Ok(std::fs::write(tmp, serde_json::to_string_pretty(&v)?)?))?;
    }
    Ok(())
}

/// The second model against the first in each (weight, KV) type: decode speedup next to the ideal one (the
/// ratio of bytes read per token, which bounds a bandwidth-bound decode), and prefill speedup.
fn speedups(results: &[serde_json::Value], per_model: usize) -> Vec<serde_json::Value> {
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let mut out = Vec::new();
    for (a, b) in results[..per_model].iter().zip(&results[per_model..]) {
        for (i, c) in DECODE_AT.iter().enumerate() {
            let (da, db) = (&a["decode"][i], &b["decode"][i]);
            let got = f(&db["tokens_per_s"]) / f(&da["tokens_per_s"]);
            let ideal = f(&da["bytes_per_token"]) / f(&db["bytes_per_token"]);
            println!(
                "{} decode @{c}: {got:.2}x faster, ideal {ideal:.2}x by bytes read ({:.0}% of ideal)",
                b["label"].as_str().unwrap_or(""),
                100.0 * got / ideal
            );
            out.push(json!({"dtype": a["dtype"], "kv_dtype": a["kv_dtype"], "decode_context": c, "speedup": got, "ideal": ideal, "fraction_of_ideal": got / ideal}));
        }
        for (i, n) in PREFILL.iter().enumerate() {
            let got = f(&b["prefill"][i]["tokens_per_s"]) / f(&a["prefill"][i]["tokens_per_s"]);
            out.push(json!({"dtype": a["dtype"], "kv_dtype": a["kv_dtype"], "prefill_tokens": n, "speedup": got}));
        }
    }
    out
}

/// One column per measured (model, weight type, KV type); ratios are against the first column.
fn print_table(results: &[serde_json::Value]) {
    const W: usize = 22;
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let line = |label: &str, cells: Vec<String>| {
        println!("{label:<26}{}", cells.iter().map(|c| format!(" {c:>W$}")).collect::<String>());
    };
    line("", results.iter().map(|r| r["label"].as_str().unwrap_or("").chars().rev().take(W).collect::<Vec<_>>().into_iter().rev().collect()).collect());
    line("weights MB read/token", results.iter().map(|r| format!("{:.1}", f(&r["weight_bytes_per_token"]) / 1e6)).collect());
    line("KV cache bytes/token", results.iter().map(|r| format!("{:.0}", f(&r["kv_bytes_per_token"]))).collect());
    let speed_rows = |key: &str, unit: &str, sizes: &[usize], roof_key: &str| {
        for i in 0..sizes.len() {
            let vals: Vec<f64> = results.iter().map(|r| f(&r[key][i]["tokens_per_s"])).collect();
            line(
                &format!("{key} {unit}{} tok/s", sizes[i]),
                vals.iter()
                    .zip(results)
                    .map(|(v, r)| format!("{v:.1} ({:.2}x, {:.0}%)", v / vals[0], 100.0 * f(&r[key][i][roof_key])))
                    .collect(),
            );
        }
    };
    speed_rows("prefill", "", &PREFILL, "gemm_roof_fraction");
    speed_rows("decode", "@", &DECODE_AT, "bandwidth_roof_fraction");
    for (key, what) in [("drift_vs_f32", "f32"), ("drift_vs_cpu", "CPU f32")] {
        if results.iter().all(|r| r[key].is_null()) {
            continue;
        }
        let cells = |cell: &dyn Fn(&serde_json::Value) -> String| -> Vec<String> {
            results.iter().map(|r| if r[key].is_null() { "-".into() } else { cell(&r[key]) }).collect()
        };
        line(&format!("max |Δlogit| vs {what}"), cells(&|d| format!("{:.3}", f(&d["max_abs"]))));
        line(&format!("argmax agrees vs {what}"), cells(&|d| format!("{}/{}", d["top1_agree"], d["positions"])));
    }
    println!("(x: ratio to the first column; %: fraction of the GEMM roof for prefill, of the bandwidth roof for decode)");
    println!("peak RSS {:.0} MB (all models, this process)", peak_rss().unwrap_or(0) as f64 / 1e6);
}
