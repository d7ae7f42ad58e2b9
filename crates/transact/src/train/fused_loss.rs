//! The KD and CE losses over the vocabulary as one candle op with a hand-written backward, on
//! the CPU. Written with candle's ops ([`super::loss`]), the two losses make about a dozen
//! tensors the size of the logits (`[positions, vocab]`: 200 MB for 4 × 256 tokens of a
//! 49K vocabulary) in the forward and again in the backward, and the teacher's log-probabilities
//! and probabilities two more; here the forward is one pass over each row that keeps nothing,
//! and the backward one pass that writes the gradient of the logits:
//!
//! - KD at temperature T, per row: with s = logits/T, t = teacher/T, p = softmax(t),
//!   q = softmax(s): KL = Σ p (log p − log q) = Σ p (t − s) + logsumexp(s) − logsumexp(t), and
//!   ∂(T²/N · KL)/∂logits = T/N · (q − p);
//! - CE, per row with a next token y: −log softmax(logits)_y, gradient (softmax(logits) − 1_y)/N.
//!
//! [`super::loss`] is the definition; a test holds the two to each other.

use std::sync::Arc;

use anyhow::{Result, bail};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;
use transact_kernels::elementwise::exp_minus_max;

use super::options::LossKind;
use crate::model::host::with_cpu_f32;

/// What the op needs besides the student's logits.
struct Targets {
    kind: LossKind,
    kd_weight: f64,
    temperature: f64,
    /// The teacher's logits `[rows, vocab]` (KD only).
    teacher: Option<Tensor>,
    /// The next token of each row, or `None` for a sequence's last position (CE only).
    next: Vec<Option<u32>>,
    vocab: usize,
}

/// The loss of one micro-batch: its value (a scalar tensor whose backward is the fused one)
/// and its parts.
pub struct FusedLoss {
    pub total: Tensor,
    pub kd: Option<f64>,
    pub ce: Option<f64>,
}

/// KD and/or CE of `logits` (`[b, t, vocab]`, contiguous f32 on the CPU) for the sequences
/// `tokens` (`[b, t]`), against the teacher's `teacher_logits` (`[b, t, vocab]`) when the loss
/// has a KD part. `None` when the tensors are not on the CPU (use [`super::loss`] then).
pub fn fused_loss(
    kind: LossKind,
    logits: &Tensor,
    tokens: &[u32],
    teacher_logits: Option<&Tensor>,
    kd_weight: f64,
    temperature: f64,
) -> Result<Option<FusedLoss>> {
    let (b, t, vocab) = logits.dims3()?;
    if tokens.len() != b * t {
        bail!("{} tokens for logits of {b} × {t} positions", tokens.len());
    }
    let next = (0..b * t).map(|r| if r % t + 1 < t { Some(tokens[r + 1]) } else { None }).collect();
    let teacher = match (kind.needs_teacher(), teacher_logits) {
        (true, Some(x)) if x.dims() == logits.dims() => Some(x.contiguous()?),
        (true, Some(x)) => bail!("teacher logits {:?} differ in shape from the student's {:?}", x.dims(), logits.dims()),
        (true, None) => bail!("the loss needs the teacher's logits"),
        (false, _) => None,
    };
    let targets = Arc::new(Targets { kind, kd_weight, temperature, teacher, next, vocab });
    let Some((kd, ce)) = with_tensors(logits, &targets, |s, tch| parts(&targets, s, tch))? else {
        return Ok(None);
    };
    let total = match kind {
        LossKind::Kd => kd,
        LossKind::Ce => ce,
        LossKind::KdCe => kd_weight * kd + (1.0 - kd_weight) * ce,
    };
    let total = logits.apply_op1(Op { targets, total: total as f32 })?;
    let has_kd = kind.needs_teacher();
    let has_ce = kind != LossKind::Kd;
    Ok(Some(FusedLoss { total, kd: has_kd.then_some(kd), ce: has_ce.then_some(ce) }))
}

/// `f` over the student's and the teacher's logits as slices, when both are CPU f32.
fn with_tensors<R>(logits: &Tensor, targets: &Targets, f: impl FnOnce(&[f32], Option<&[f32]>) -> R) -> Result<Option<R>> {
    let logits = logits.contiguous()?;
    Ok(match &targets.teacher {
        Some(tch) => with_cpu_f32(&[&logits, tch], |d| f(d[0], Some(d[1])))?,
        None => with_cpu_f32(&[&logits], |d| f(d[0], None))?,
    })
}

/// `e^(x·scale − max)` of a row into `buf`; returns log Σ e^(x·scale) (the log-partition).
fn exps(row: &[f32], scale: f32, buf: &mut [f32]) -> f64 {
    for (b, &x) in buf.iter_mut().zip(row) {
        *b = x * scale;
    }
    let (max, sum) = exp_minus_max(buf);
    max as f64 + (sum as f64).ln()
}

/// Rows per parallel task.
const ROWS: usize = 8;

/// Mean KD (T²-scaled) and mean CE over their rows (0 where the loss has no such part).
fn parts(tg: &Targets, s: &[f32], teacher: Option<&[f32]>) -> (f64, f64) {
    let v = tg.vocab;
    let inv_t = (1.0 / tg.temperature) as f32;
    let (kd_sum, ce_sum) = s
        .par_chunks(v * ROWS)
        .enumerate()
        .map(|(c, rows)| {
            let (mut buf_s, mut buf_t) = (vec![0f32; v], vec![0f32; v]);
            let (mut kd, mut ce) = (0f64, 0f64);
            for (i, row) in rows.chunks_exact(v).enumerate() {
                let r = c * ROWS + i;
                if let Some(tch) = teacher {
                    let trow = &tch[r * v..(r + 1) * v];
                    let ls = exps(row, inv_t, &mut buf_s);
                    let lt = exps(trow, inv_t, &mut buf_t);
                    let zt: f64 = buf_t.iter().map(|&e| e as f64).sum();
                    // Σ p (t − s) with p = e / Σe, in f64 over the row.
                    let dot: f64 = buf_t.iter().zip(trow.iter().zip(row)).map(|(&e, (&a, &b))| e as f64 * ((a - b) * inv_t) as f64).sum();
                    kd += dot / zt + ls - lt;
                }
                if tg.kind != LossKind::Kd
                    && let Some(y) = tg.next[r]
                {
                    let l = exps(row, 1.0, &mut buf_s);
                    ce += l - row[y as usize] as f64;
                }
            }
            (kd, ce)
        })
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    let kd_rows = s.len() / v;
    let ce_rows = tg.next.iter().filter(|n| n.is_some()).count().max(1);
    let t2 = tg.temperature * tg.temperature;
    (t2 * kd_sum / kd_rows as f64, ce_sum / ce_rows as f64)
}

/// The candle op: its forward emits the loss computed above, its backward the fused gradient.
struct Op {
    targets: Arc<Targets>,
    total: f32,
}

impl CustomOp1 for Op {
    fn name(&self) -> &'static str {
        "fused-kd-ce-loss"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(vec![self.total]), Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = grad_res.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()? as f64;
        let grad = with_tensors(arg, &self.targets, |s, tch| gradient(&self.targets, s, tch, g)).map_err(candle_core::Error::wrap)?;
        let Some(grad) = grad else { candle_core::bail!("the fused loss runs on CPU f32 tensors only") };
        Ok(Some(Tensor::from_vec(grad, arg.shape(), arg.device())?))
    }
}

/// ∂(scale · loss)/∂logits, row by row.
fn gradient(tg: &Targets, s: &[f32], teacher: Option<&[f32]>, scale: f64) -> Vec<f32> {
    let v = tg.vocab;
    let rows = s.len() / v;
    let ce_rows = tg.next.iter().filter(|n| n.is_some()).count().max(1);
    let (w_kd, w_ce) = match tg.kind {
        LossKind::Kd => (1.0, 0.0),
        LossKind::Ce => (0.0, 1.0),
        LossKind::KdCe => (tg.kd_weight, 1.0 - tg.kd_weight),
    };
    let kd_coef = (scale * w_kd * tg.temperature / rows as f64) as f32;
    let ce_coef = (scale * w_ce / ce_rows as f64) as f32;
    let inv_t = (1.0 / tg.temperature) as f32;
    let mut out = vec![0f32; s.len()];
    out.par_chunks_mut(v * ROWS).enumerate().for_each(|(c, o)| {
        let mut buf = vec![0f32; v];
        for (i, orow) in o.chunks_exact_mut(v).enumerate() {
            let r = c * ROWS + i;
            let row = &s[r * v..(r + 1) * v];
            if let Some(tch) = teacher.filter(|_| kd_coef != 0.0) {
                // T/N · (q − p): q's numerators in `orow`, p's in `buf`.
                exps(row, inv_t, orow);
                let zs = orow.iter().map(|&e| e as f64).sum::<f64>() as f32;
                exps(&tch[r * v..(r + 1) * v], inv_t, &mut buf);
                let zt = buf.iter().map(|&e| e as f64).sum::<f64>() as f32;
                let (a, b) = (kd_coef / zs, kd_coef / zt);
                orow.iter_mut().zip(&buf).for_each(|(o, &p)| *o = *o * a - p * b);
            }
            if ce_coef != 0.0
                && let Some(y) = tg.next[r]
            {
                exps(row, 1.0, &mut buf);
                let z = buf.iter().map(|&e| e as f64).sum::<f64>() as f32;
                let a = ce_coef / z;
                orow.iter_mut().zip(&buf).for_each(|(o, &e)| *o += e * a);
                orow[y as usize] -= ce_coef;
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::loss::{TeacherTargets, loss};
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// The fused op gives the same loss and gradient as the loss written in candle's ops.
    #[test]
    fn matches_the_composed_loss() -> Result<()> {
        let (b, t, v) = (2, 5, 37);
        let mut rng = StdRng::seed_from_u64(1);
        let mut rand = |n: usize, s: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(-s..s)).collect() };
        let dev = Device::Cpu;
        let student = Var::from_vec(rand(b * t * v, 4.0), (b, t, v), &dev)?;
        let teacher = Tensor::from_vec(rand(b * t * v, 6.0), (b, t, v), &dev)?;
        let ids: Vec<u32> = (0..b * t).map(|i| (i * 7 % v) as u32).collect();
        let tokens = Tensor::from_vec(ids.clone(), (b, t), &dev)?;
        for kind in [LossKind::Kd, LossKind::Ce, LossKind::KdCe] {
            for temp in [1.0, 2.5] {
                let want = loss(kind, student.as_tensor(), &tokens, Some(&TeacherTargets::new(&teacher, temp)?), 0.3, temp)?;
                let got = fused_loss(kind, student.as_tensor(), &ids, Some(&teacher), 0.3, temp)?.expect("CPU tensors");
                let (w, g) = (want.total.to_scalar::<f32>()?, got.total.to_scalar::<f32>()?);
                assert!((w - g).abs() < 1e-5 * w.abs().max(1.0), "{kind:?} T={temp}: loss {g} vs {w}");
                assert_eq!(got.kd.is_some(), want.kd.is_some());
                assert_eq!(got.ce.is_some(), want.ce.is_some());
                let gw = (want.total * 1.7)?.backward()?.get(&student).expect("grad").clone();
                let gg = (got.total * 1.7)?.backward()?.get(&student).expect("grad").clone();
                let diff = (&gw - &gg)?.abs()?.max_all()?.to_scalar::<f32>()?;
                let size = gw.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff <= 1e-5 * size, "{kind:?} T={temp}: gradient off by {diff} (max {size})");
            }
        }
        Ok(())
    }
}
