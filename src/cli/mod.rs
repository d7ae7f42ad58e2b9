//! One file per subcommand: argument struct + `run`.

pub mod bench;
pub mod calibrate;
pub mod compare;
pub mod convert;
pub mod eval;
pub mod generate;
pub mod inspect;
pub mod prune;

use std::path::Path;

use anyhow::Result;
use candle_core::Device;
use transact::LoadedModel;

static DEVICE: std::sync::OnceLock<Device> = std::sync::OnceLock::new();

/// Parses `--device` once for every subcommand.
pub fn set_device(spec: &str) -> Result<()> {
    let _ = DEVICE.set(transact::device(spec)?);
    Ok(())
}

pub fn device() -> Device {
    DEVICE.get().cloned().unwrap_or(Device::Cpu)
}

/// Refuses a KV cache type the selected device cannot keep, before any work.
pub fn check_kv_dtype(kv: transact::KvDtype) -> Result<()> {
    let device = device();
    if kv.tensor_dtype().is_none() && !matches!(device, Device::Cpu) {
        anyhow::bail!("--kv-dtype {} runs only on the CPU; on {device:?} use f16 or f32", kv.name());
    }
    Ok(())
}

pub fn load(path: &Path) -> Result<LoadedModel> {
    let t = std::time::Instant::now();
    let lm = transact::load_model(path, &device())?;
    eprintln!("loaded {} in {:.2} s", path.display(), t.elapsed().as_secs_f64());
    Ok(lm)
}

/// Parses a count that must be at least 1 (`--repeats`, `--limit`, ...): 0 is a usage error.
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}
