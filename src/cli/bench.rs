use std::path::PathBuf;

use anyhow::Result;
use candle_core::Device;
use clap::Args;
use serde_json::json;
use transact::{KvDtype, Model};
use transact::bench::roof::{Roofs, measure, peak_rss};
use transact::bench::{decode_from, drift, prefill_decode, prefilled, prompt, weight_bytes_per_token};
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
    /// KV cache types to run each weight type with, comma-separated (f32, f16, q8). f16 halves
    /// the cache and the bytes decode attention reads; q8 (CPU only: 8-bit integers and one f32
    /// scale per key or value vector) cuts them to ~0.27 of f32. Each one's logit drift against
    /// f32 is reported.
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    kv_dtype: Vec<KvDtype>,
    /// Timed repetitions per measurement (at least 1); the best is reported.
    #[arg(long, default_value_t = 3, value_parser = super::at_least_one)]
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

/// One model in one weight and KV type, and the f32 model its drift is measured against.
struct Subject<'a> {
    m: &'a Model,
    f32_model: &'a Model,
    label: String,
}

/// Speeds and sizes of `subjects` (the same weight and KV type of each model), measured side by
/// side: every repetition runs each subject in turn, so their ratios compare the same minutes of
/// a shared machine, where one measurement can move ±12 points between runs minutes apart. A
/// repetition runs every size before the next repetition starts, so a cell's best is taken over
/// the column's whole span (~30 s), not over three back-to-back seconds that one slow spell of
/// the VM can cover. The roof fractions are added once the run's roofs are known
/// ([`add_roof_fractions`]).
fn bench_side_by_side(subjects: &[Subject], repeats: usize) -> Result<Vec<serde_json::Value>> {
    // One prefilled cache per context and subject; each repetition decodes from a copy of it.
    let caches = DECODE_AT.iter().map(|&c| subjects.iter().map(|s| prefilled(s.m, &prompt(c))).collect::<Result<Vec<_>>>()).collect::<Result<Vec<_>>>()?;
    // Best tokens/s per subject, prefill sizes then decode contexts.
    let mut best = vec![[0f64; PREFILL.len() + DECODE_AT.len()]; subjects.len()];
    for _ in 0..repeats {
        for (j, &n) in PREFILL.iter().enumerate() {
            for (b, s) in best.iter_mut().zip(subjects) {
                b[j] = b[j].max(prefill_decode(s.m, &prompt(n), 0, 1)?.prefill_tokens_per_s);
            }
        }
        for (j, caches) in caches.iter().enumerate() {
            for ((b, s), (cache, next)) in best.iter_mut().zip(subjects).zip(caches) {
                let j = PREFILL.len() + j;
                b[j] = b[j].max(decode_from(s.m, cache.try_clone()?, *next, DECODE_TOKENS)?);
            }
        }
    }
    let stats: Vec<ModelStats> = subjects.iter().map(|s| ModelStats::new(&s.m.config, 0)).collect();
    let weights: Vec<u64> = subjects.iter().map(|s| weight_bytes_per_token(s.m)).collect();
    let kv_bytes: Vec<u64> = subjects.iter().map(|s| ModelStats::kv_bytes_per_token(&s.m.config, s.m.kv_dtype)).collect();
    let prefill = |i: usize| -> Vec<serde_json::Value> {
        let flops = |n: usize| ModelStats::prefill_flops_per_token(&subjects[i].m.config, n);
        PREFILL.iter().zip(&best[i]).map(|(&n, tps)| json!({"tokens": n, "tokens_per_s": tps, "flops_per_token": flops(n)})).collect()
    };
    let decode = |i: usize| -> Vec<serde_json::Value> {
        let bytes = |c: usize| (weights[i] + kv_bytes[i] * c as u64) as f64;
        DECODE_AT.iter().zip(&best[i][PREFILL.len()..]).map(|(&c, tps)| json!({"context": c, "tokens_per_s": tps, "bytes_per_token": bytes(c)})).collect()
    };
    let mut out = Vec::new();
    for (i, s) in subjects.iter().enumerate() {
        let drift = if std::ptr::eq(s.m, s.f32_model) { None } else { Some(drift(s.m, s.f32_model, &prompt(DRIFT_TOKENS))?) };
        out.push(json!({
            "label": s.label,
            "weight_bytes_per_token": weights[i],
            "kv_dtype": s.m.kv_dtype,
            "kv_bytes_per_token": kv_bytes[i],
            "params_total": stats[i].params_total,
            "prefill": prefill(i),
            "decode": decode(i),
            "drift_vs_f32": drift,
            "peak_rss_bytes": peak_rss(),
        }));
    }
    Ok(out)
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
    if let Some(j) = &a.json {
        atomic::check_output(j, true)?;
    }
    a.kv_dtype.iter().try_for_each(|&kv| super::check_kv_dtype(kv))?;
    let device = super::device();
    let mut probes = vec![measure(&device)?];
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("roofs: GEMM {:.1} GFLOP/s, bandwidth {:.1} GB/s; loadavg {}", probes[0].gemm_gflops, probes[0].bandwidth_gbs, load.trim());
    let paths: Vec<&crate::ModelPath> = std::iter::once(&a.model).chain(a.vs.as_ref()).collect();
    let lms = paths.iter().map(|p| super::load(p)).collect::<Result<Vec<_>>>()?;
    // On a GPU, parity with the CPU forward (the reference every test checks).
    let cpus = paths
        .iter()
        .zip(&lms)
        .map(|(p, lm)| if matches!(lm.model.device, Device::Cpu) { Ok(None) } else { transact::load_model(p, &Device::Cpu).map(Some) })
        .collect::<Result<Vec<_>>>()?;
    let names: Vec<String> = paths.iter().map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()).collect();
    // One list per model, in (weight type, KV type) order: the table's columns and `speedups`.
    let mut by_model = vec![Vec::new(); lms.len()];
    for &dt in &a.dtype {
        let converted =
            lms.iter().map(|lm| if dt == WeightDtype::F32 { Ok(lm.model.clone()) } else { lm.model.with_weight_dtype(dt) }).collect::<Result<Vec<_>, _>>()?;
        for &kv in &a.kv_dtype {
            let with_kv: Vec<Model> = converted.iter().map(|m| m.with_kv_dtype(kv)).collect();
            let subjects: Vec<Subject> = lms
                .iter()
                .zip(&with_kv)
                .zip(&names)
                .map(|((lm, m), name)| Subject {
                    // The reference itself (f32 weights and cache) reports no drift.
                    m: if (dt, kv) == (WeightDtype::F32, KvDtype::F32) { &lm.model } else { m },
                    f32_model: &lm.model,
                    label: match kv {
                        KvDtype::F32 => format!("{name} {}", dt.name()),
                        _ => format!("{name} {} KV {}", dt.name(), kv.name()),
                    },
                })
                .collect();
            eprintln!("measuring {}", subjects.iter().map(|s| s.label.as_str()).collect::<Vec<_>>().join(" and "));
            for (i, mut r) in bench_side_by_side(&subjects, a.repeats)?.into_iter().enumerate() {
                if let Some(cpu) = &cpus[i] {
                    r["drift_vs_cpu"] = json!(drift(subjects[i].m, &cpu.model, &prompt(DRIFT_TOKENS))?);
                }
                r["model"] = json!(paths[i].display().to_string());
                r["dtype"] = json!(dt);
                by_model[i].push(r);
            }
            probes.push(measure(&device)?);
        }
    }
    let mut results: Vec<serde_json::Value> = by_model.into_iter().flatten().collect();
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

/// The second model against the first in each weight and KV type: decode speedup next to the
/// ideal one (the ratio of bytes read per token, which bounds a bandwidth-bound decode), and
/// prefill speedup.
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
