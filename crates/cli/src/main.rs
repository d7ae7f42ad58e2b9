//! `transact`: thin command-line front end over the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod calibrate;
mod common;
mod compare;
mod convert;
mod eval;
mod generate;
mod inspect;
mod prune;
mod report;
mod serve;
mod sweep;
mod train;

#[derive(Parser)]
#[command(name = "transact", version, about = "Prune LLaMA-family models with TransAct, then evaluate, export and run them")]
struct Args {
    /// Where tensors live: `cpu`, or `cuda` / `cuda:N` (needs a build with `-p transact-cli --features cuda`).
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Architecture, per-layer shapes, parameter counts, FLOPs and KV-cache size of a model.
    Inspect(inspect::InspectArgs),
    /// Generate text from a prompt, streaming tokens to stdout (timings go to stderr).
    Generate(generate::GenerateArgs),
    /// Write a model as a Hugging Face directory or a llama.cpp GGUF file.
    Convert(convert::ConvertArgs),
    /// Perplexity and lm-eval-compatible zero-shot tasks; a table on stdout, JSON with --json.
    Eval(eval::EvalArgs),
    /// Collect per-channel activation statistics once, for `prune --stats`.
    Calibrate(calibrate::CalibrateArgs),
    /// Prune with TransAct: score transitional activations, keep the top heads and channels.
    Prune(prune::PruneArgs),
    /// Recovery training after pruning: distil from the dense model (or train on text), full-parameter AdamW.
    Train(train::TrainArgs),
    /// A grid of pruning runs from a TOML/JSON spec, each pruned, evaluated and timed; one row per run in results.jsonl (resumable).
    Sweep(sweep::SweepArgs),
    /// A sweep's results as an HTML page and a Markdown page with plots (perplexity and accuracy vs size, salience, speed, recovery).
    Report(report::ReportArgs),
    /// Two models side by side: size, KV cache, perplexity, task subsets, speed (same run).
    Compare(compare::CompareArgs),
    /// Serve the model over the OpenAI HTTP API (completions, chat, streaming, log-probabilities) with batched decoding.
    Serve(serve::ServeArgs),
    /// Prefill and decode speed against this machine's GEMM and bandwidth roofs (--vs: two models).
    Bench(bench::BenchArgs),
}

/// `<model>`: a GGUF file or a Hugging Face model directory (config.json, *.safetensors,
/// tokenizer.json); the format is detected from the path.
pub type ModelPath = PathBuf;

fn main() -> ExitCode {
    transact_kernels::process::quiet_broken_pipe();
    let args = Args::parse();
    if let Err(e) = common::set_device(&args.device) {
        eprintln!("error: {}", common::render(&e));
        return ExitCode::from(2);
    }
    let result = match args.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Calibrate(a) => calibrate::run(a),
        Command::Prune(a) => prune::run(a),
        Command::Train(a) => train::run(a),
        Command::Sweep(a) => sweep::run(a),
        Command::Report(a) => report::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Serve(a) => serve::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Every failure we report is about the user's input or environment: exit code 2.
            eprintln!("error: {}", common::render(&e));
            ExitCode::from(2)
        }
    }
}
