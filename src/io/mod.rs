//! Reading and writing checkpoints: GGUF files and Hugging Face directories.

pub mod atomic;
pub mod export;
pub mod gguf;
pub mod gguf_export;
pub mod hf_dir;
pub mod load;
pub mod safetensors;

/// A candle error as one line: without the backtrace candle attaches when `RUST_BACKTRACE` is set,
/// which users should not see for a bad file.
pub(crate) fn msg(e: candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => msg(*inner),
        other => other.to_string(),
    }
}
