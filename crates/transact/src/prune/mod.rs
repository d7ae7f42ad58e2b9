//! TransAct structured pruning: score the transitional channels, choose what each layer keeps,
//! slice, over K shots.
//!
//! - [`plan`]: the units removed, the target widths, the K-shot schedule;
//! - [`scorer`]: salience per channel (the paper's and the ablations');
//! - [`choose`]: per layer, scores → kept heads and channels;
//! - [`slice`]: the smaller model (and the masked one the exactness tests compare with);
//! - [`compensate`] (with [`ridge`]): the closed-form refit of the kept weights after slicing;
//! - [`hidden`]: hidden-size pruning, the inter-module ablation;
//! - [`recover`]: built-in recovery training between shots and after the last;
//! - [`shots`]: the K-shot loop with checkpoints, resume and recovery;
//! - [`stream`]: one layer at a time, for checkpoints larger than memory;
//! - [`job`]: one run end to end, its outputs and [`report`].

pub mod choose;
pub mod compensate;
pub mod hidden;
pub mod job;
pub mod plan;
pub mod recover;
pub mod report;
pub mod ridge;
pub mod scorer;
pub mod shots;
pub mod slice;
pub mod stream;
