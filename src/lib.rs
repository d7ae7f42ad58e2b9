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
