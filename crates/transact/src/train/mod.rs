//! Recovery training: full-parameter AdamW on the student, distilling from the dense teacher
//! (forward KL over the full vocabulary, the teacher run online on the fast engine) and/or
//! cross-entropy on text, through the differentiable reference forward.

pub mod adamw;
pub mod checkpoint;
pub mod fused_loss;
pub mod job;
pub mod log;
pub mod loss;
pub mod options;
pub mod plot;
pub mod recover;
pub mod sampled;
pub mod teacher;
pub mod text;
pub mod trainer;

pub use job::{TrainJob, TrainReport};
pub use options::{Budget, LossKind, ParamGroup, Schedule, TrainOptions};
pub use teacher::Teacher;
