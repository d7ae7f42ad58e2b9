//! Benchmark and text files from the fetched assets (lm-eval-style request files).

pub mod corpus;
pub mod jsonl;
