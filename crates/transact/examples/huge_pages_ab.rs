//! Decode speed with the weights in candle's own f32 tensors (4 KiB pages) against the same
//! weights copied into the huge-page arena (`Model::with_weight_dtype`), interleaved in one
//! process so the VM's drift hits both alike.
//!
//! `cargo run --release --example huge_pages_ab -- [MODEL] [PAIRS]`

use transact::bench::decode_at;
use transact::WeightDtype;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .map_or("assets/SmolLM2-135M-Instruct.Q4_1.gguf", |s| s.as_str());
    let pairs: usize = args.get(2).map_or(Ok(6), |s| s.parse())?;
    let lm = transact::load_model(path.as_ref(), &candle_core::Device::Cpu)?;
    let arena = lm.model.with_weight_dtype(WeightDtype::F32)?;
    for context in [256, 1024] {
        let (mut small, mut huge) = (Vec::new(), Vec::new());
        for _ in 0..pairs {
            small.push(decode_at(&lm.model, context, 32, 3)?);
            huge.push(decode_at(&arena, context, 32, 3)?);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2.0
        };
        let (s, h) = (median(&mut small), median(&mut huge));
        println!(
            "f32 decode @{context}: 4 KiB pages {s:.1} tok/s, huge pages {h:.1} tok/s ({:.2}x; medians of {pairs})",
            h / s
        );
    }
    Ok(())
}
