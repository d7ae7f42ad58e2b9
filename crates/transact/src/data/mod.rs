//! Benchmark and text files from the fetched assets (lm-eval-style request files), training
//! text, and the check that training text shares no 13-gram with evaluation text.

pub mod corpus;
pub mod general;
pub mod jsonl;
pub mod overlap;
