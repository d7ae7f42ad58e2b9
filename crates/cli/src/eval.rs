use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use transact::data::corpus;
use transact::eval::suite::Suite;
use transact::eval::task::{self, Task};
use transact::model::io::atomic;

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
    /// Tokens scored in one forward pass: docs are packed (each doc's shared context once, its
    /// choices attending to it, no padding) up to this many tokens; a longer doc runs alone.
    /// 0: one doc per pass, its context in a KV cache. At most 8192.
    #[arg(long, default_value_t = transact::eval::metrics::PACK_TOKENS, value_parser = pack_tokens)]
    pack_tokens: usize,
    /// Longest scored sequence in tokens (longer contexts are left-truncated); default: the
    /// model's context length.
    #[arg(long, value_parser = common::at_least_one)]
    max_length: Option<usize>,
    /// Also write every doc's scores (log-likelihood and greediness of each choice, acc,
    /// acc_norm) to this JSONL file, one line per doc, like lm-eval's --log_samples.
    #[arg(long)]
    samples: Option<PathBuf>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Replace the JSON file if it exists.
    #[arg(long)]
    force: bool,
}

fn pack_tokens(s: &str) -> Result<usize, String> {
    let n = s.parse::<usize>().map_err(|e| e.to_string())?;
    transact::eval::metrics::check_pack_tokens(n).map_err(|e| e.to_string())?;
    Ok(n)
}

pub fn run(a: EvalArgs) -> Result<()> {
    if a.tasks.is_empty() && a.task_dir.is_empty() && a.task_file.is_empty() && a.ppl.is_empty() {
        bail!("nothing to evaluate: pass --tasks all (or a list such as piqa,arc_easy), --task-dir, --task-file or --ppl wiki");
    }
    for out in a.json.iter().chain(&a.samples) {
        atomic::check_output(out, a.force)?;
    }
    let t0 = std::time::Instant::now();
    // Load every task before the model so a bad file fails fast.
    let mut tasks: Vec<Task> = task::builtins(&a.tasks, a.limit)?;
    for d in &a.task_dir {
        tasks.push(task::load_task_dir(d)?.limit(a.limit));
    }
    for f in &a.task_file {
        tasks.push(task::load_simple_jsonl(f)?.limit(a.limit));
    }
    let corpora = a.ppl.iter().map(|c| corpus::load(c)).collect::<Result<Vec<_>>>()?;

    let lm = common::load(&a.model)?;
    let suite = Suite { tasks, corpora, seq_len: a.seq_len, windows: a.limit, limit: a.limit, max_length: a.max_length, pack_tokens: a.pack_tokens };
    let mut report = suite.run(&lm, &Bars::new())?;
    report.seconds_total = t0.elapsed().as_secs_f64();
    print!("{}", report.table());
    if let Some(j) = &a.json {
        atomic::write_file(j, a.force, |tmp| Ok(std::fs::write(tmp, report.to_json())?))?;
        eprintln!("wrote {}", j.display());
    }
    if let Some(path) = &a.samples {
        let mut lines = String::new();
        for t in &report.tasks {
            for s in &t.samples {
                let mut v = serde_json::to_value(s)?;
                v["task"] = t.task.clone().into();
                lines += &format!("{v}\n");
            }
        }
        atomic::write_file(path, a.force, |tmp| Ok(std::fs::write(tmp, &lines)?))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
