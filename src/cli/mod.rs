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

pub fn load(path: &Path) -> Result<LoadedModel> {
    let t = std::time::Instant::now();
    let lm = transact::load_model(path, &Device::Cpu)?;
    eprintln!("loaded {} in {:.2} s", path.display(), t.elapsed().as_secs_f64());
    Ok(lm)
}
