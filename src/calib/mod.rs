//! Calibration: token blocks to run through the model, and the activation statistics collected
//! on the way (the input of every scorer).

pub mod data;
pub mod stats;
