use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use transact::data::corpus;
use transact::eval::metrics::run_task;
use transact::eval::perplexity::corpus_perplexity;
use transact::eval::report::{EvalReport, ModelInfo, Protocol, averages};
use transact::eval::task::{self, Task};
use transact::model::cost::ModelCost;
use transact::model::io::atomic;
use transact::model::io::load::model_sha256;

use crate::common::{self, Bars};

#[derive(Args)]
pub struct EvalArgs {
    /// GGUF file or Hugging Face model directory.
    model: crate::ModelPath,
    /// Comma-separated built-in tasks, or `all`: piqa, hellaswag, winogrande, arc_easy,
    /// arc_challenge, boolq, openbookqa, lambada.
    #[arg(long, value_delimiter = ',')]
    tasks: Vec<String>,
    /// A task folder in the lm-eval request format (requests.jsonl[.gz] + optional config.json),
    /// scored as stored. Repeatable.
    #[arg(long)]
    task_dir: Vec<PathBuf>,
    /// A JSONL task file, one `{"context": str, "choices": [str], "gold": int}` per line
    /// (optional "delimiter", default " ", goes between context and choice). Repeatable.
    #[arg(long)]
    task_file: Vec<PathBuf>,
    /// Perplexity corpus: `wiki` (BoolQ passages), `book` (LAMBADA passages), `coqa`, `squad`,
    /// `drop`, or a text / JSONL (`text` field) file or folder. Repeatable.
    #[arg(long)]
    ppl: Vec<String>,
    /// Perplexity window in tokens (windows share one token; every other token is scored once).
    #[arg(long, default_value_t = 2048)]
    seq_len: usize,
    /// Only the first N docs of each task and the first N windows of each corpus (N ≥ 1).
    #[arg(long, value_parser = common::at_least_one)]
    limit: Option<usize>,
    /// Docs scored in one forward pass. 1 (default) lets a doc's choices share their common
    /// prefix through the KV cache; larger batches pad instead.
    #[arg(long, default_value_t = 1, value_parser = common::at_least_one)]
    batch_size: usize,
    /// Longest scored sequence in tokens (longer contexts are left-truncated); default: the
    /// model's context length.
    #[arg(long, value_parser = common::at_least_one)]
    max_length: Option<usize>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Replace the JSON file if it exists.
    #[arg(long)]
    force: bool,
}

pub fn run(a: EvalArgs) -> Result<()> {
    if a.tasks.is_empty() && a.task_dir.is_empty() && a.task_file.is_empty() && a.ppl.is_empty() {
        bail!("nothing to evaluate: pass --tasks all (or a list such as piqa,arc_easy), --task-dir, --task-file or --ppl wiki");
    }
    if let Some(j) = &a.json {
        atomic::check_output(j, a.force)?;
    }
    let t0 = std::time::Instant::now();
    // Load every task before the model so a bad file fails fast.
    let names: Vec<String> = if a.tasks.iter().any(|t| t == "all") {
        task::builtin_names().iter().map(|s| s.to_string()).collect()
    } else {
        a.tasks.clone()
    };
    let mut tasks: Vec<Task> = Vec::new();
    for n in &names {
        tasks.push(task::builtin(n.trim())?.limit(a.limit));
    }
    for d in &a.task_dir {
        tasks.push(task::load_task_dir(d)?.limit(a.limit));
    }
    for f in &a.task_file {
        tasks.push(task::load_simple_jsonl(f)?.limit(a.limit));
    }
    let corpora = a.ppl.iter().map(|c| corpus::load(c)).collect::<Result<Vec<_>>>()?;

    let lm = common::load(&a.model)?;
    let stats = ModelCost::new(&lm.model.config, 0);
    let bars = Bars::new();
    let max_len = a.max_length.unwrap_or(lm.model.config.max_position);
    let mut results = Vec::new();
    for t in &tasks {
        let r = run_task(&lm.model, &lm.tokenizer, t, max_len, a.batch_size, &bars)?;
        eprintln!("{}: acc {:.4} ({} docs, {:.1} s)", r.task, r.acc, r.docs, r.seconds);
        results.push(r);
    }
    let mut ppl = Vec::new();
    for c in &corpora {
        let r = corpus_perplexity(&lm.model, &lm.tokenizer, c, a.seq_len, a.limit, &bars)?;
        eprintln!("{}: token perplexity {:.3} ({:.1} s)", r.corpus, r.token_perplexity, r.seconds);
        ppl.push(r);
    }
    let report = EvalReport {
        model: ModelInfo {
            path: lm.path.display().to_string(),
            sha256: model_sha256(&lm.path)?,
            params_total: stats.params_total,
            params_non_embedding: stats.params_non_embedding,
        },
        protocol: Protocol {
            max_length: max_len,
            bos: if lm.tokenizer.meta.add_bos { "tokenizer adds BOS" } else { "no BOS (empty contexts get the prefix token)" },
            scoring: "lm-eval loglikelihood: trailing context whitespace (rstrip) moves to the continuation; cont = enc(ctx+cont)[len(enc(ctx)):]",
            acc_norm: "argmax of loglikelihood / choice length in characters (without the target delimiter)",
            stderr: "sample standard deviation / sqrt(n)",
            limit: a.limit,
        },
        average: averages(&results),
        tasks: results,
        perplexity: ppl,
        seed: 0,
        seconds_total: t0.elapsed().as_secs_f64(),
    };
    print!("{}", report.table());
    if let Some(j) = &a.json {
        atomic::write_file(j, a.force, |tmp| Ok(std::fs::write(tmp, report.to_json())?))?;
        eprintln!("wrote {}", j.display());
    }
    Ok(())
}
