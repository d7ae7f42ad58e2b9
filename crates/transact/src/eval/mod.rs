//! Evaluation: perplexity and lm-eval-compatible zero-shot tasks.

pub mod metrics;
pub mod perplexity;
pub mod report;
pub mod scorer;
pub mod suite;
pub mod task;
