//! `transact serve`: the OpenAI HTTP API (completions, chat completions, streaming,
//! log-probabilities with `echo`) over one model, on tokio and axum.
//!
//! - [`engine`]: the thread that owns the model and decodes every running request together
//!   (continuous batching).
//! - [`api`]: requests parsed and checked against the model's limits; OpenAI's error shape.
//! - [`chat`]: the model's chat template, rendered with minijinja.
//! - [`http`]: routes, authentication, the bounded queue, server-sent events, shutdown.
#![forbid(unsafe_code)]

pub mod api;
pub mod chat;
pub mod engine;
pub mod http;

pub use http::{ServeOptions, serve};
