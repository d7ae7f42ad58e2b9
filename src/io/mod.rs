//! Reading and writing checkpoints: GGUF files and Hugging Face directories.

pub mod atomic;
pub mod export;
pub mod gguf;
pub mod gguf_export;
pub mod hf_dir;
pub mod load;
pub mod safetensors;
