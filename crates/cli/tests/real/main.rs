//! Integration tests on the real SmolLM2-135M checkpoint and real benchmark text.
//! They need `scripts/fetch-assets.sh` to have run, and fail loudly when it has not.

mod common;
mod bad_input;
mod bench;
mod data;
mod eval;
mod export;
mod forward;
mod hostile;
mod hidden;
mod prune;
mod quantize;
mod serve;
mod recover;
mod stream;
mod sweep;
mod tokenizer;
mod train;
