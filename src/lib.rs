//! transact: TransAct structured pruning of LLaMA-family language models.
//!
//! The library is split by responsibility: `model` (config, weights, forward pass, tokenizer),
//! `io` (GGUF / Hugging Face readers and writers), `data` (benchmark and text files),
//! `eval` (perplexity), `stats` (parameter, FLOP and KV-cache accounting).

pub mod bench;
pub mod calib;
pub mod data;
pub mod eval;
pub mod io;
pub mod model;
pub mod prune;
pub mod stats;

pub use io::load::{LoadedModel, load_model};
pub use model::config::{LayerShape, ModelConfig, RopeLayout};
pub use model::forward::{KvCache, Logits, Model};
pub use model::kv_cache::{KvDtype, KvStorage};

/// `cpu`, `cuda` or `cuda:N` as a candle device, with an error that says how to get CUDA.
pub fn device(spec: &str) -> anyhow::Result<candle_core::Device> {
    let ordinal = match spec {
        "cpu" => return Ok(candle_core::Device::Cpu),
        "cuda" => 0,
        s => match s.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => n,
            None => anyhow::bail!("--device must be cpu, cuda or cuda:N, got `{spec}`"),
        },
    };
    if !candle_core::utils::cuda_is_available() {
        anyhow::bail!("--device {spec}: this binary was built without CUDA; rebuild with `cargo build --release --features cuda`");
    }
    Ok(candle_core::Device::new_cuda(ordinal)?)
}
