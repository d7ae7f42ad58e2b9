//! The evaluation report: a table for people, JSON for plots and later comparisons.

use serde::Serialize;

use super::metrics::TaskResult;
use super::perplexity::PplResult;

#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub path: String,
    pub sha256: String,
    pub params_total: u64,
    pub params_non_embedding: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Protocol {
    /// Token budget per scored sequence (longer contexts are left-truncated).
    pub max_length: usize,
    pub bos: &'static str,
    pub scoring: &'static str,
    pub acc_norm: &'static str,
    pub stderr: &'static str,
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Averages {
    pub tasks: Vec<String>,
    /// Mean of `acc` over the multiple-choice tasks and LAMBADA.
    pub acc: f64,
    /// Mean of `acc_norm` where a task has it (else `acc`).
    pub acc_norm: f64,
    /// The pruning papers' mix (LLM-Pruner, FLAP): `acc_norm` for HellaSwag, ARC-Challenge and
    /// OpenBookQA, `acc` for every other task.
    pub paper: f64,
}

/// Tasks the pruning papers report with `acc_norm`.
const PAPER_ACC_NORM: [&str; 3] = ["hellaswag", "arc_challenge", "openbookqa"];

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub model: ModelInfo,
    pub protocol: Protocol,
    pub tasks: Vec<TaskResult>,
    pub perplexity: Vec<PplResult>,
    pub average: Option<Averages>,
    /// Scoring is deterministic; recorded so every report has the same fields as pruning reports.
    pub seed: u64,
    pub seconds_total: f64,
}

pub fn averages(tasks: &[TaskResult]) -> Option<Averages> {
    if tasks.is_empty() {
        return None;
    }
    let n = tasks.len() as f64;
    Some(Averages {
        tasks: tasks.iter().map(|t| t.task.clone()).collect(),
        acc: tasks.iter().map(|t| t.acc).sum::<f64>() / n,
        acc_norm: tasks.iter().map(|t| t.acc_norm.unwrap_or(t.acc)).sum::<f64>() / n,
        paper: tasks
            .iter()
            .map(|t| if PAPER_ACC_NORM.contains(&t.task.as_str()) { t.acc_norm.unwrap_or(t.acc) } else { t.acc })
            .sum::<f64>()
            / n,
    })
}

impl EvalReport {
    /// Same inputs → same JSON except the `seconds*` fields.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serializes")
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let pct = |x: f64| format!("{:.2}", 100.0 * x);
        if !self.tasks.is_empty() {
            s += &format!(
                "{:<16} {:<16} {:>6} {:>15} {:>15} {:>10} {:>8}\n",
                "task", "split", "docs", "acc ± se", "acc_norm ± se", "ppl", "seconds"
            );
            for t in &self.tasks {
                let norm = match (t.acc_norm, t.acc_norm_stderr) {
                    (Some(a), Some(e)) => format!("{} ± {}", pct(a), pct(e)),
                    _ => "-".into(),
                };
                s += &format!(
                    "{:<16} {:<16} {:>6} {:>15} {:>15} {:>10} {:>8.1}\n",
                    t.task,
                    t.split,
                    t.docs,
                    format!("{} ± {}", pct(t.acc), pct(t.acc_stderr)),
                    norm,
                    t.perplexity.map_or("-".into(), |p| format!("{p:.2}")),
                    t.seconds
                );
            }
            if let Some(a) = &self.average {
                s += &format!(
                    "{:<16} {:<16} {:>6} {:>15} {:>15}   (papers' acc/acc_norm mix: {})\n",
                    "average",
                    format!("{} tasks", a.tasks.len()),
                    "",
                    pct(a.acc),
                    pct(a.acc_norm),
                    pct(a.paper)
                );
            }
        }
        for p in &self.perplexity {
            s += &format!(
                "perplexity {}: token {:.3}, word {}, bits/byte {:.4} ({} of {} tokens scored in {} windows of {}, stride {}, {}; sha256 {}…; {:.1} s)\n",
                p.corpus,
                p.token_perplexity,
                p.word_perplexity.map_or("n/a (too few words)".into(), |w| format!("{w:.3}")),
                p.bits_per_byte,
                p.tokens_scored,
                p.tokens_total,
                p.windows,
                p.seq_len,
                p.stride,
                p.bos,
                &p.sha256[..12],
                p.seconds
            );
        }
        s
    }
}
