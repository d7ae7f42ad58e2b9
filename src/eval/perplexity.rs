//! Token-level negative log-likelihood of texts.

use anyhow::Result;
use candle_core::{D, Tensor};

use crate::model::forward::{Model, log_softmax};

/// Sum of −log p(token) over positions 1.. of `ids` (the first token has no context) and how
/// many tokens were scored.
pub fn sequence_nll(model: &Model, ids: &[u32]) -> Result<(f64, usize)> {
    if ids.len() < 2 {
        return Ok((0.0, 0));
    }
    let logits = model.logits(&ids[..ids.len() - 1])?;
    let logp = log_softmax(&logits)?;
    let targets = Tensor::new(&ids[1..], &model.device)?.unsqueeze(1)?;
    let picked = logp.gather(&targets, D::Minus1)?.squeeze(1)?.to_vec1::<f32>()?;
    Ok((-picked.iter().map(|&x| x as f64).sum::<f64>(), picked.len()))
}
