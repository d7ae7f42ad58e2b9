//! The CPU kernels under transact's fast forward: matrix products, decode attention and the
//! element-wise maths, on plain slices (no tensors), with run-time CPU dispatch.
//!
//! This is the only crate of the workspace with `unsafe`: SIMD intrinsics, the spin pool's
//! shared state, the huge-page buffer and read-only file mappings. Every `unsafe` block says
//! why it is sound (`// SAFETY:`), which the lint below enforces.
//!
//! - [`cpu`]: which instruction sets the running CPU has (detected once per call, cached by std).
//! - [`matrix`]: a weight matrix in its stored type ([`matrix::WeightData`]), widened to f32.
//! - [`q8`]: GGML's Q8_0 block format (32 signed bytes and an f16 scale).
//! - [`gemv`]: a few activation rows times a matrix: decode.
//! - [`gemm`]: many rows times a matrix: prefill and scoring.
//! - [`attend`]: one query head over cached keys and values, split and combined across threads.
//! - [`elementwise`]: softmax rows, SiLU · up, residual adds, the vector `exp`.
//! - [`spin_pool`]: helper threads that spin between the short parallel regions of a decode step.
//! - [`huge_pages`]: one buffer backed by transparent huge pages, for weights read every token.
//! - [`heap`]: the C heap's policy for training (freed memory kept for the next step).
//! - [`fs`]: renames that never replace another process's output, or swap with the old one.
//! - [`process`]: process-wide settings (a closed stdout pipe ends the process quietly).
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod attend;
pub mod cpu;
pub mod elementwise;
pub mod fs;
pub mod gemm;
pub mod gemv;
pub mod heap;
pub mod huge_pages;
pub mod matrix;
pub mod process;
pub mod q8;
mod simd;
pub mod spin_pool;

pub use matrix::WeightData;
