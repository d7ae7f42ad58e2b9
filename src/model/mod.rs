//! The in-memory LLaMA model: config with per-layer shapes, f32 weights, forward pass.

pub mod arena;
mod attend;
pub mod config;
mod decode;
pub mod forward;
pub mod gemm;
pub mod team;
pub mod gemv;
pub mod generate;
pub mod kv_cache;
pub mod linear;
pub mod rope;
pub mod tokenizer;
pub(crate) mod vmath;
pub mod weights;
