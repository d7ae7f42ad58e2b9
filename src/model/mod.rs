//! The in-memory LLaMA model: config with per-layer shapes, f32 weights, forward pass.

pub mod config;
pub mod forward;
pub mod generate;
pub mod rope;
pub mod tokenizer;
pub mod weights;
