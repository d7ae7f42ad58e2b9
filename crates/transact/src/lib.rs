//! transact: TransAct structured pruning of LLaMA-family language models (Shen et al., Findings
//! of ACL 2024), the library under the `transact` command.
//!
//! The pipeline, in the order a model goes through it:
//! - [`data`]: benchmark and text files (corpora, lm-eval request files);
//! - [`calibrate`]: calibration blocks and the per-channel statistics of the transitional
//!   activations collected on them;
//! - [`prune`]: salience scores, the kept heads and channels, K shots, slicing, streaming
//!   beyond RAM, the job and its report;
//! - [`eval`]: lm-eval-compatible zero-shot tasks and perplexity;
//! - [`bench`]: prefill and decode speed against the machine's roofs.
//!
//! The model itself (config, weights, tokenizer, readers and writers, forwards, generation) is
//! `transact-model`, re-exported as [`model`]. The library parses no arguments and prints
//! nothing: long work reports through [`Progress`], results are typed serde structs, and a
//! refused setting is a [`SettingError`] named in the library's terms.
#![forbid(unsafe_code)]

pub mod bench;
pub mod calibrate;
pub mod card;
pub mod data;
pub mod eval;
pub mod progress;
pub mod report;
pub mod sweep;
pub mod prune;
pub mod train;

pub use progress::{Progress, Silent};
pub use transact_model as model;
pub use transact_model::setting::SettingError;
pub use transact_model::{KvCache, KvDtype, KvStorage, LayerShape, LoadedModel, Logits, Model, ModelConfig, RopeLayout, WeightDtype, load_model};
