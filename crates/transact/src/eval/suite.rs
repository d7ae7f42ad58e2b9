//! A whole evaluation of one model: its tasks, then its perplexity corpora, as one
//! [`EvalReport`]. `transact eval` and `transact sweep` run the same suite.

use anyhow::Result;

use super::metrics::run_task;
use super::perplexity::corpus_perplexity;
use super::report::{EvalReport, ModelInfo, Protocol, averages};
use super::task::Task;
use crate::data::corpus::Corpus;
use crate::model::cost::ModelCost;
use crate::model::io::load::{LoadedModel, model_sha256};
use crate::progress::Progress;

pub struct Suite {
    /// Already cut to their first `limit` docs.
    pub tasks: Vec<Task>,
    pub corpora: Vec<Corpus>,
    /// Perplexity window in tokens.
    pub seq_len: usize,
    /// Only the first N windows of each corpus.
    pub windows: Option<usize>,
    /// The docs limit the tasks were cut to (recorded in the report).
    pub limit: Option<usize>,
    /// Longest scored sequence; `None`: the model's context.
    pub max_length: Option<usize>,
    /// Tokens packed into one forward pass ([`super::metrics::run_task`]; 0: one doc per pass).
    pub pack_tokens: usize,
}

impl Suite {
    /// Scores `lm` on every task and corpus; a line per finished task or corpus goes to
    /// `progress.note`.
    pub fn run(&self, lm: &LoadedModel, progress: &dyn Progress) -> Result<EvalReport> {
        let t0 = std::time::Instant::now();
        let cost = ModelCost::new(&lm.model.config, 0);
        let max_len = self.max_length.unwrap_or(lm.model.config.max_position);
        let mut tasks = Vec::new();
        for t in &self.tasks {
            let r = run_task(&lm.model, &lm.tokenizer, t, max_len, self.pack_tokens, progress)?;
            progress.note(&format!("{}: acc {:.4} ({} docs, {:.1} s)", r.task, r.acc, r.docs, r.seconds));
            tasks.push(r);
        }
        let mut perplexity = Vec::new();
        for c in &self.corpora {
            let r = corpus_perplexity(&lm.model, &lm.tokenizer, c, self.seq_len, self.windows, progress)?;
            progress.note(&format!("{}: token perplexity {:.3} ({:.1} s)", r.corpus, r.token_perplexity, r.seconds));
            perplexity.push(r);
        }
        Ok(EvalReport {
            model: ModelInfo {
                path: lm.path.display().to_string(),
                sha256: model_sha256(&lm.path)?,
                params_total: cost.params_total,
                params_non_embedding: cost.params_non_embedding,
            },
            protocol: Protocol {
                max_length: max_len,
                bos: if lm.tokenizer.meta.add_bos { "tokenizer adds BOS" } else { "no BOS (empty contexts get the prefix token)" },
                scoring: "lm-eval loglikelihood: trailing context whitespace (rstrip) moves to the continuation; cont = enc(ctx+cont)[len(enc(ctx)):]",
                acc_norm: "argmax of loglikelihood / choice length in characters (without the target delimiter)",
                stderr: "sample standard deviation / sqrt(n)",
                limit: self.limit,
            },
            average: averages(&tasks),
            tasks,
            perplexity,
            seed: 0,
            seconds_total: t0.elapsed().as_secs_f64(),
        })
    }
}
