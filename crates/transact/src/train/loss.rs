//! The training losses, in differentiable candle ops over the student's logits.
//!
//! KD is forward KL(teacher ‖ student) = Σ_v p_t(v) · (log p_t(v) − log p_s(v)) at every
//! position, over the full vocabulary, both distributions at temperature T, scaled by T² so its
//! gradient keeps the same size across temperatures (Hinton et al.); it includes the teacher's
//! entropy, so it reads 0 for a perfect student. CE is the next token's −log p_s over positions
//! 0 .. t−1. Both are means over the positions they score.

use candle_core::{D, Result, Tensor};
use candle_nn::ops::log_softmax;

use super::options::LossKind;

/// The teacher's side of KD for one micro-batch: log-probabilities and probabilities at the
/// temperature, `[b, t, vocab]`, outside any graph.
pub struct TeacherTargets {
    logp: Tensor,
    p: Tensor,
}

impl TeacherTargets {
    pub fn new(teacher_logits: &Tensor, temperature: f64) -> Result<Self> {
        let logp = log_softmax(&(teacher_logits.detach() / temperature)?, D::Minus1)?;
        let p = logp.exp()?;
        Ok(Self { logp, p })
    }
}

/// The loss of one micro-batch and its parts (as plain numbers for the log).
pub struct Loss {
    pub total: Tensor,
    pub kd: Option<f64>,
    pub ce: Option<f64>,
}

/// `kind`'s loss of `logits` (`[b, t, vocab]`) for the sequences `tokens` (`[b, t]`, u32).
pub fn loss(
    kind: LossKind,
    logits: &Tensor,
    tokens: &Tensor,
    teacher: Option<&TeacherTargets>,
    kd_weight: f64,
    temperature: f64,
) -> Result<Loss> {
    let kd = match (kind.needs_teacher(), teacher) {
        (false, _) => None,
        (true, Some(t)) => Some(kd(logits, t, temperature)?),
        (true, None) => candle_core::bail!("loss `{kind:?}` needs the teacher's logits"),
    };
    let ce = if kind == LossKind::Kd { None } else { Some(ce(logits, tokens)?) };
    let total = match (&kd, &ce) {
        (Some(k), None) => k.clone(),
        (None, Some(c)) => c.clone(),
        (Some(k), Some(c)) => ((k * kd_weight)? + (c * (1.0 - kd_weight))?)?,
        (None, None) => unreachable!("every loss kind has a term"),
    };
    let value = |t: &Option<Tensor>| t.as_ref().map(|t| t.to_scalar::<f32>().map(f64::from)).transpose();
    Ok(Loss { kd: value(&kd)?, ce: value(&ce)?, total })
}

fn kd(logits: &Tensor, teacher: &TeacherTargets, temperature: f64) -> Result<Tensor> {
    let (b, t, _) = logits.dims3()?;
    let student = log_softmax(&(logits / temperature)?, D::Minus1)?;
    let kl = (&teacher.p * (&teacher.logp - student)?)?.sum_all()?;
    kl * (temperature * temperature / (b * t) as f64)
}

fn ce(logits: &Tensor, tokens: &Tensor) -> Result<Tensor> {
    let (b, t, vocab) = logits.dims3()?;
    if t < 2 {
        candle_core::bail!("cross-entropy needs at least 2 tokens per sequence");
    }
    let logp = log_softmax(&logits.narrow(1, 0, t - 1)?.reshape((b * (t - 1), vocab))?, D::Minus1)?;
    let next = tokens.narrow(1, 1, t - 1)?.contiguous()?.reshape((b * (t - 1), 1))?;
    logp.gather(&next, 1)?.mean_all()?.neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn kd_is_zero_for_the_teacher_and_its_gradient_is_q_minus_p() -> Result<()> {
        let dev = Device::Cpu;
        let t_logits = Tensor::new(&[[[1.0f32, 2.0, 0.5, -1.0], [0.0, 0.0, 3.0, 1.0]]], &dev)?;
        let targets = TeacherTargets::new(&t_logits, 2.0)?;
        let same = kd(&t_logits, &targets, 2.0)?.to_scalar::<f32>()?;
        assert!(same.abs() < 1e-6, "KL of the teacher to itself: {same}");

        let s = Var::new(&[[[0.3f32, -0.2, 0.9, 0.1], [1.0, -1.0, 0.0, 0.5]]], &dev)?;
        let l = kd(&s, &targets, 2.0)?;
        let g = l.backward()?.get(&s).expect("a gradient").clone();
        // d/ds of T²/N · KL(p ‖ softmax(s/T)) = T/N · (softmax(s/T) − p).
        let q = candle_nn::ops::softmax(&(s.as_tensor() / 2.0)?, D::Minus1)?;
        let want = ((q - &targets.p)? * (2.0 / 2.0))?;
        let diff = (g - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "gradient off by {diff}");
        Ok(())
    }

    #[test]
    fn ce_scores_the_next_token() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[[0.0f32, 0.0], [5.0, -5.0], [0.0, 0.0]]], &dev)?;
        let tokens = Tensor::new(&[[0u32, 1, 0]], &dev)?;
        // Position 0 predicts token 1 at p = ½; position 1 predicts token 0 at p ≈ 1.
        let want = (2f64.ln() + (1.0 + (-10f64).exp()).ln()) / 2.0;
        let got = ce(&logits, &tokens)?.to_scalar::<f32>()? as f64;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        Ok(())
    }
}
