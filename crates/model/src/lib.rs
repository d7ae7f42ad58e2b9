//! The LLaMA family as transact runs it: the model's definition, its files, and a fast engine.
//!
//! - Definition: [`config`] (per-layer shapes, so pruned layers may differ), [`weights`]
//!   ([`weights::TensorRole`]: the one table of HF and GGUF tensor names), [`tokenizer`],
//!   [`cost`] (parameters, FLOPs, KV-cache bytes), [`rope`], and [`reference`]: the forward in
//!   plain differentiable candle ops, readable top to bottom; the definition the fast forward is
//!   tested against and what training differentiates.
//! - Files: [`io`] reads GGUF and Hugging Face directories and writes both, atomically;
//!   [`finite`] refuses NaN and infinite weights and results; [`contain`] turns a third-party
//!   parser's panic on a hostile file into an error.
//! - Engine: [`forward`] (prefill, scoring, calibration hooks) and [`decode`] (one token per
//!   sequence) on the kernels of `transact-kernels`, through [`linear`] (weights in f32, f16,
//!   bf16 or Q8_0) and [`kv_cache`] (f32, f16 or 8-bit); [`host`] hands CPU tensors to the
//!   kernels as slices.
//! - Generation: [`session`] (a sequence's KV cache and next-token logits), [`sample`] and
//!   [`generate`] (prompt → text with BOS, sampling, stop conditions, streaming detokenisation),
//!   shared by `generate`, `compare`, `bench` and a server.
#![forbid(unsafe_code)]

pub mod choice;
pub mod config;
pub mod contain;
pub mod cost;
mod decode;
pub mod finite;
pub mod forward;
pub mod fused;
pub mod generate;
pub mod host;
pub mod io;
pub mod kv_cache;
pub mod linear;
pub mod packed;
pub mod reference;
pub mod rope;
pub mod sample;
pub mod session;
pub mod setting;
pub mod tokenizer;
pub mod weights;

pub use config::{LayerShape, ModelConfig, RopeLayout};
pub use forward::{Logits, Model, Observer};
pub use io::load::{LoadedModel, load_model};
pub use kv_cache::{KvCache, KvDtype, KvStorage};
pub use linear::WeightDtype;
pub use tokenizer::Tokenizer;
