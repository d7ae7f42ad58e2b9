//! Models measured side by side: prefill and decode speed in each weight and KV-cache type,
//! against this machine's roofs, with each type's logit drift and, for a second model, its
//! speedups next to the ideal ones.

use anyhow::Result;
use serde::Serialize;

use super::roof::{Roofs, measure, peak_rss};
use super::{Drift, decode_from, drift, prefill_decode, prompt, weight_bytes_per_token};
use crate::model::choice::Choice;
use crate::model::cost::ModelCost;
use crate::model::session::Session;
use crate::model::{KvDtype, LoadedModel, Model, WeightDtype};
use crate::progress::Progress;

/// Prompt lengths whose prefill is timed.
pub const PREFILL: [usize; 3] = [128, 512, 2048];
/// Contexts at which decode is timed.
pub const DECODE_AT: [usize; 2] = [256, 1024];
/// Tokens decoded per decode measurement.
const DECODE_TOKENS: usize = 32;
/// Tokens of the drift check (real text is not needed: all logits are compared).
const DRIFT_TOKENS: usize = 128;

#[derive(Debug, Clone, Serialize)]
pub struct PrefillCell {
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub flops_per_token: f64,
    /// Of the GEMM roof: tokens/s × FLOPs per token ÷ the roof's FLOP/s.
    pub gemm_roof_fraction: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DecodeCell {
    pub context: usize,
    pub tokens_per_s: f64,
    /// Weights plus the KV cache at this context.
    pub bytes_per_token: f64,
    /// Of the bandwidth roof: tokens/s × bytes per token ÷ the roof's bytes/s.
    pub bandwidth_roof_fraction: f64,
}

/// One model in one weight and KV-cache type.
#[derive(Debug, Clone, Serialize)]
pub struct Column {
    pub label: String,
    pub model: String,
    pub dtype: WeightDtype,
    pub kv_dtype: KvDtype,
    pub weight_bytes_per_token: u64,
    pub kv_bytes_per_token: u64,
    pub params_total: u64,
    pub prefill: Vec<PrefillCell>,
    pub decode: Vec<DecodeCell>,
    /// Against the same model with f32 weights and cache (`None` for that one itself).
    pub drift_vs_f32: Option<Drift>,
    /// On a GPU: against the CPU forward in f32.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift_vs_cpu: Option<Drift>,
    pub peak_rss_bytes: Option<u64>,
}

/// The second model against the first in one weight and KV-cache type: at a decode context
/// (with the ideal speedup, the ratio of bytes read per token) or at a prefill length.
#[derive(Debug, Clone, Serialize)]
pub struct Speedup {
    pub dtype: WeightDtype,
    pub kv_dtype: KvDtype,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode_context: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefill_tokens: Option<usize>,
    pub speedup: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ideal: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fraction_of_ideal: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The median of `roof_probes`.
    pub roofs: Roofs,
    /// Probed before the first measurement and after each (weight, KV) type.
    pub roof_probes: Vec<Roofs>,
    pub loadavg: String,
    /// Per model, in (weight type, KV type) order.
    pub models: Vec<Column>,
    /// Empty unless two models were measured.
    pub speedups_vs_first_model: Vec<Speedup>,
}

/// What to measure: one or two models (with, on a GPU, each one's CPU copy for the drift
/// against the CPU forward), in each of `dtypes` × `kv_dtypes`.
pub struct BenchJob<'a> {
    pub models: Vec<&'a LoadedModel>,
    pub cpu_copies: Vec<Option<&'a LoadedModel>>,
    pub dtypes: Vec<WeightDtype>,
    pub kv_dtypes: Vec<KvDtype>,
    pub repeats: usize,
}

/// One model in one weight and KV type, and the f32 model its drift is measured against.
struct Subject<'a> {
    m: &'a Model,
    f32_model: &'a Model,
}

/// Best tokens/s of each subject, prefill sizes then decode contexts, measured side by side:
/// every repetition runs each subject in turn, so their ratios compare the same minutes of a
/// shared machine, where one measurement can move ±12 points between runs minutes apart. A
/// repetition runs every size before the next repetition starts, so a cell's best is taken over
/// the column's whole span (~30 s), not over three back-to-back seconds that one slow spell can
/// cover.
fn measure_side_by_side(subjects: &[Subject], repeats: usize) -> Result<Vec<[f64; PREFILL.len() + DECODE_AT.len()]>> {
    // One prefilled session per context and subject; each repetition decodes from a copy of it.
    let sessions = DECODE_AT.iter().map(|&c| subjects.iter().map(|s| Session::start(s.m, &prompt(c))).collect::<Result<Vec<_>>>()).collect::<Result<Vec<_>>>()?;
    let mut best = vec![[0f64; PREFILL.len() + DECODE_AT.len()]; subjects.len()];
    for _ in 0..repeats {
        for (j, &n) in PREFILL.iter().enumerate() {
            for (b, s) in best.iter_mut().zip(subjects) {
                b[j] = b[j].max(prefill_decode(s.m, &prompt(n), 0, 1)?.prefill_tokens_per_s);
            }
        }
        for (j, sessions) in sessions.iter().enumerate() {
            for (b, session) in best.iter_mut().zip(sessions) {
                let j = PREFILL.len() + j;
                b[j] = b[j].max(decode_from(session.try_clone()?, DECODE_TOKENS)?);
            }
        }
    }
    Ok(best)
}

/// A column's cells before the roofs are known (fractions 0 until [`add_roof_fractions`]).
fn column(s: &Subject, best: &[f64], label: String, model: String, dtype: WeightDtype) -> Result<Column> {
    let cfg = &s.m.config;
    let weights = weight_bytes_per_token(s.m);
    let kv_bytes = ModelCost::kv_bytes_per_token(cfg, s.m.kv_dtype);
    let prefill = PREFILL
        .iter()
        .zip(best)
        .map(|(&n, &tps)| PrefillCell { tokens: n, tokens_per_s: tps, flops_per_token: ModelCost::prefill_flops_per_token(cfg, n), gemm_roof_fraction: 0.0 })
        .collect();
    let decode = DECODE_AT
        .iter()
        .zip(&best[PREFILL.len()..])
        .map(|(&c, &tps)| DecodeCell { context: c, tokens_per_s: tps, bytes_per_token: (weights + kv_bytes * c as u64) as f64, bandwidth_roof_fraction: 0.0 })
        .collect();
    let drift_vs_f32 = if std::ptr::eq(s.m, s.f32_model) { None } else { Some(drift(s.m, s.f32_model, &prompt(DRIFT_TOKENS))?) };
    Ok(Column {
        label,
        model,
        dtype,
        kv_dtype: s.m.kv_dtype,
        weight_bytes_per_token: weights,
        kv_bytes_per_token: kv_bytes,
        params_total: ModelCost::new(cfg, 0).params_total,
        prefill,
        decode,
        drift_vs_f32,
        drift_vs_cpu: None,
        peak_rss_bytes: peak_rss(),
    })
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

fn add_roof_fractions(columns: &mut [Column], roofs: &Roofs) {
    for c in columns {
        for p in &mut c.prefill {
            p.gemm_roof_fraction = p.tokens_per_s * p.flops_per_token / (roofs.gemm_gflops * 1e9);
        }
        for d in &mut c.decode {
            d.bandwidth_roof_fraction = d.tokens_per_s * d.bytes_per_token / (roofs.bandwidth_gbs * 1e9);
        }
    }
}

/// The second model's columns against the first's, in each weight and KV type.
fn speedups(columns: &[Column], per_model: usize) -> Vec<Speedup> {
    let mut out = Vec::new();
    for (a, b) in columns[..per_model].iter().zip(&columns[per_model..]) {
        for (da, db) in a.decode.iter().zip(&b.decode) {
            let (got, ideal) = (db.tokens_per_s / da.tokens_per_s, da.bytes_per_token / db.bytes_per_token);
            let (dtype, kv_dtype) = (a.dtype, a.kv_dtype);
            out.push(Speedup { dtype, kv_dtype, decode_context: Some(da.context), prefill_tokens: None, speedup: got, ideal: Some(ideal), fraction_of_ideal: Some(got / ideal) });
        }
        for (pa, pb) in a.prefill.iter().zip(&b.prefill) {
            let speedup = pb.tokens_per_s / pa.tokens_per_s;
            out.push(Speedup { dtype: a.dtype, kv_dtype: a.kv_dtype, decode_context: None, prefill_tokens: Some(pa.tokens), speedup, ideal: None, fraction_of_ideal: None });
        }
    }
    out
}

/// Measures `job` on `device`, after the roof probe `first_probe` (taken before the models were
/// loaded, so a bad path fails before the models load); notes say what is being measured.
pub fn run(job: &BenchJob, device: &candle_core::Device, first_probe: Roofs, progress: &dyn Progress) -> Result<BenchReport> {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string();
    let mut probes = vec![first_probe];
    let names: Vec<String> = job.models.iter().map(|lm| lm.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()).collect();
    // One list per model, in (weight type, KV type) order: the table's columns and the speedups.
    let mut by_model = vec![Vec::new(); job.models.len()];
    for &dt in &job.dtypes {
        let converted = job.models.iter().map(|lm| if dt == WeightDtype::F32 { Ok(lm.model.clone()) } else { lm.model.with_weight_dtype(dt) }).collect::<Result<Vec<_>, _>>()?;
        for &kv in &job.kv_dtypes {
            let with_kv: Vec<Model> = converted.iter().map(|m| m.with_kv_dtype(kv)).collect();
            let subjects: Vec<Subject> = job
                .models
                .iter()
                .zip(&with_kv)
                // The reference itself (f32 weights and cache) reports no drift.
                .map(|(lm, m)| Subject { m: if (dt, kv) == (WeightDtype::F32, KvDtype::F32) { &lm.model } else { m }, f32_model: &lm.model })
                .collect();
            let labels: Vec<String> = names
                .iter()
                .map(|name| match kv {
                    KvDtype::F32 => format!("{name} {}", dt.name()),
                    _ => format!("{name} {} KV {}", dt.name(), kv.name()),
                })
                .collect();
            progress.note(&format!("measuring {}", labels.join(" and ")));
            let best = measure_side_by_side(&subjects, job.repeats)?;
            for (i, s) in subjects.iter().enumerate() {
                let mut c = column(s, &best[i], labels[i].clone(), job.models[i].path.display().to_string(), dt)?;
                if let Some(cpu) = job.cpu_copies[i] {
                    c.drift_vs_cpu = Some(drift(s.m, &cpu.model, &prompt(DRIFT_TOKENS))?);
                }
                by_model[i].push(c);
            }
            probes.push(measure(device)?);
        }
    }
    let mut models: Vec<Column> = by_model.into_iter().flatten().collect();
    let roofs = median_roofs(&probes);
    add_roof_fractions(&mut models, &roofs);
    let speedups_vs_first_model = if job.models.len() == 2 { speedups(&models, job.dtypes.len() * job.kv_dtypes.len()) } else { Vec::new() };
    Ok(BenchReport { roofs, roof_probes: probes, loadavg, models, speedups_vs_first_model })
}
