//! Prefills in a loop at one length in one weight type, for a profiler to watch
//! (`perf record -g ./target/release/examples/prefill_loop`): each report is the best of 5
//! prefills of `TOKENS` tokens, keeping the last position's logits as `bench` does.
//!
//! `cargo run --release --example prefill_loop -- [MODEL] [DTYPE] [TOKENS] [SECONDS]`

use std::time::Instant;

use transact::bench::{prefill_decode, prompt};
use transact::WeightDtype;
use transact::model::choice::Choice;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: &'static str| args.get(i).map_or(default, |s| s.as_str());
    let path = arg(1, "assets/SmolLM2-135M-Instruct.Q4_1.gguf");
    let dtype = WeightDtype::parse(arg(2, "f32"))?;
    let tokens: usize = arg(3, "512").parse()?;
    let seconds: f64 = arg(4, "10").parse()?;
    let lm = transact::load_model(path.as_ref(), &candle_core::Device::Cpu)?;
    let model = lm.model.with_weight_dtype(dtype)?;
    let flops = transact::model::cost::ModelCost::prefill_flops_per_token(&model.config, tokens);
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds {
        let tps = prefill_decode(&model, &prompt(tokens), 0, 5)?.prefill_tokens_per_s;
        println!("{} prefill {tokens}: best {tps:.1} tok/s, {:.1} GFLOP/s", dtype.name(), tps * flops / 1e9);
    }
    Ok(())
}
