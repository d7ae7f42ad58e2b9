//! TransAct structured pruning: score transitional channels, choose what to keep, slice.

pub mod job;
pub mod pipeline;
pub mod plan;
pub mod report;
pub mod slice;
pub mod scorer;
pub mod stream;
