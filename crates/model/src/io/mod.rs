//! Reading and writing checkpoints: GGUF files and Hugging Face directories.
//!
//! [`load`] reads either ([`gguf`], [`hf_config`] + [`safetensors`]); [`hf_write`] and
//! [`gguf_write`] write them, and [`export`] picks one, in a [`save_dtype`]; [`storage`] says how
//! a checkpoint is stored; [`atomic`] makes every output appear complete or not at all.

pub mod atomic;
pub mod export;
pub mod gguf;
pub mod gguf_header;
pub mod gguf_write;
pub mod hf_config;
pub mod hf_write;
pub mod load;
pub mod safetensors;
pub mod save_dtype;
pub mod storage;

/// A candle error as one line: without the backtrace candle attaches when `RUST_BACKTRACE` is set,
/// which users should not see for a bad file.
pub(crate) fn msg(e: candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => msg(*inner),
        other => other.to_string(),
    }
}
