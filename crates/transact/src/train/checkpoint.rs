//! Checkpoints of a training run: the trainable weights and both AdamW moments in f32
//! (`state.safetensors`), the step, the run's fingerprint and the log so far (`state.json`,
//! `train_log.jsonl`). Written to a temporary folder and renamed, so an interrupted write leaves
//! the previous checkpoint intact. Restoring gives back exactly the bits that were saved, which
//! with the data order being a function of the step makes a resumed run bit-identical.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::Tensor;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use super::adamw::AdamW;
use crate::model::io::{atomic, safetensors as st};

const STATE: &str = "state.json";
const TENSORS: &str = "state.safetensors";
pub const LOG: &str = "train_log.jsonl";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Optimizer steps done.
    pub step: u64,
    /// What must be equal for a resume to continue the same run: options, inputs, data.
    pub fingerprint: serde_json::Value,
    /// Seconds of training before this checkpoint (for the report's totals).
    pub seconds: f64,
}

pub fn exists(dir: &Path) -> bool {
    dir.join(STATE).is_file()
}

/// Saves `opt` and the log at `log` into `dir` (replacing an older checkpoint there).
pub fn save(dir: &Path, opt: &AdamW, state: &CheckpointState, log: &Path) -> Result<()> {
    atomic::write_dir(dir, true, |tmp| {
        let mut tensors = Vec::new();
        for p in &opt.params {
            let name = p.role.hf_name();
            let shape = p.var.dims().to_vec();
            let w = p.values()?;
            for (kind, values) in [("param", w), ("adam_m", p.m.clone()), ("adam_v", p.v.clone())] {
                tensors.push((format!("{kind}.{name}"), st::LazyTensor::new(Dtype::F32, shape.clone(), move || Ok(st::encode(&values, Dtype::F32)))));
            }
        }
        st::write(&tmp.join(TENSORS), tensors, None)?;
        std::fs::write(tmp.join(STATE), serde_json::to_string_pretty(state)?)?;
        if log.exists() {
            std::fs::copy(log, tmp.join(LOG)).with_context(|| format!("{}: cannot copy into the checkpoint", log.display()))?;
        }
        Ok(())
    })
}

/// Restores the weights and moments saved in `dir` into `opt` and returns the state; the
/// checkpoint's log is copied to `log`. `fingerprint` must equal the saved one.
pub fn restore(dir: &Path, opt: &mut AdamW, fingerprint: &serde_json::Value, log: &Path) -> Result<CheckpointState> {
    let state_path = dir.join(STATE);
    let state: CheckpointState = serde_json::from_str(
        &std::fs::read_to_string(&state_path).with_context(|| format!("{}: cannot read", state_path.display()))?,
    )
    .with_context(|| format!("{}: not a training checkpoint", state_path.display()))?;
    if &state.fingerprint != fingerprint {
        let differs = differences(&state.fingerprint, fingerprint);
        bail!(
            "{}: the checkpoint is from a different run ({}); start over without `resume` (with `force`)",
            dir.display(),
            differs.join(", ")
        );
    }
    let path = dir.join(TENSORS);
    let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let file = SafeTensors::deserialize(&bytes).with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let get = |name: &str, n: usize| -> Result<Vec<f32>> {
        let t = file.tensor(name).with_context(|| format!("{}: no tensor `{name}`", path.display()))?;
        if t.dtype() != Dtype::F32 || t.shape().iter().product::<usize>() != n {
            bail!("{}: tensor `{name}` is {:?} {:?}, expected f32 with {n} elements", path.display(), t.dtype(), t.shape());
        }
        let v = st::decode(t.data(), Dtype::F32);
        if v.iter().any(|x| !x.is_finite()) {
            bail!("{}: tensor `{name}` holds NaN or infinite values", path.display());
        }
        Ok(v)
    };
    for p in &mut opt.params {
        let (name, n) = (p.role.hf_name(), p.var.elem_count());
        let w = get(&format!("param.{name}"), n)?;
        p.var.set(&Tensor::from_vec(w, p.var.shape().clone(), p.var.device())?)?;
        p.m = get(&format!("adam_m.{name}"), n)?;
        p.v = get(&format!("adam_v.{name}"), n)?;
        p.grad.iter_mut().for_each(|g| *g = 0.0);
    }
    opt.step = state.step;
    let saved_log = dir.join(LOG);
    if saved_log.exists() {
        std::fs::copy(&saved_log, log).with_context(|| format!("{}: cannot restore the log", log.display()))?;
    } else {
        let _ = std::fs::remove_file(log);
    }
    Ok(state)
}

/// Top-level keys whose values differ between two fingerprints.
fn differences(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (a, b) = (a.as_object().unwrap_or(&empty), b.as_object().unwrap_or(&empty));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let none = serde_json::Value::Null;
    let out: Vec<String> = keys
        .into_iter()
        .filter(|k| a.get(*k).unwrap_or(&none) != b.get(*k).unwrap_or(&none))
        .map(|k| format!("`{k}` differs"))
        .collect();
    if out.is_empty() { vec!["its fingerprint differs".into()] } else { out }
}

/// Fingerprint keys of a run, for [`CheckpointState::fingerprint`].
pub fn fingerprint(fields: HashMap<&str, serde_json::Value>) -> serde_json::Value {
    serde_json::Value::Object(fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}
