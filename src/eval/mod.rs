//! Evaluation: perplexity (multiple-choice tasks come with the evaluation issue).

pub mod perplexity;
