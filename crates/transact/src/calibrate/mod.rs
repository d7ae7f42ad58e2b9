//! Calibration: token blocks to run through the model ([`blocks`]), and the statistics of the
//! transitional activations collected on the way ([`activations`]), the input of every scorer.

pub mod activations;
pub mod blocks;
