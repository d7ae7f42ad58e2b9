//! Decodes in a loop at one context in one weight type, for a profiler to watch
//! (`perf record -g ./target/release/examples/decode_loop`): each report prefills once, then
//! times 40 runs of 32 decode steps from copies of that cache.
//!
//! `cargo run --release --example decode_loop -- [MODEL] [DTYPE] [CONTEXT] [SECONDS] [KV_DTYPE]`

use std::time::Instant;

use transact::KvDtype;
use transact::bench::decode_at;
use transact::WeightDtype;
use transact::model::choice::Choice;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: &'static str| args.get(i).map_or(default, |s| s.as_str());
    let path = arg(1, "assets/SmolLM2-135M-Instruct.Q4_1.gguf");
    let dtype = WeightDtype::parse(arg(2, "q8_0"))?;
    let context: usize = arg(3, "256").parse()?;
    let seconds: f64 = arg(4, "10").parse()?;
    let kv = KvDtype::parse(arg(5, "f32"))?;
    let lm = transact::load_model(path.as_ref(), &candle_core::Device::Cpu)?;
    let model = lm.model.with_weight_dtype(dtype)?.with_kv_dtype(kv);
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds {
        println!(
            "{} (KV {}) decode @{context}: best {:.1} tok/s",
            dtype.name(),
            kv.name(),
            decode_at(&model, context, 32, 40)?
        );
    }
    Ok(())
}
