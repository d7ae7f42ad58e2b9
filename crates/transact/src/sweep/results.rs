//! `results.jsonl`: one row per finished run, appended when the run is done, read back to skip
//! finished rows and to draw the report.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::spec::Point;
use crate::eval::report::EvalReport;
use crate::model::config::ModelConfig;
use crate::model::cost::ModelCost;

/// One finished run (or the dense reference, whose `point` is `None`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// [`Point::key`], or `dense`.
    pub key: String,
    /// The run's folder, relative to the sweep folder.
    pub dir: String,
    /// Names of the grids that hold this point.
    pub grids: Vec<String>,
    pub point: Option<Point>,
    pub shape: Shape,
    pub params_total: u64,
    pub params_non_embedding: u64,
    /// Fraction of the dense model's non-embedding parameters removed.
    pub removed_non_embedding: f64,
    pub kv_bytes_per_token_f32: u64,
    pub flops_per_token: u64,
    /// Token perplexity per corpus.
    pub perplexity: BTreeMap<String, f64>,
    pub acc: BTreeMap<String, f64>,
    /// Multiple-choice tasks only.
    pub acc_norm: BTreeMap<String, f64>,
    /// Means over the tasks (`acc_norm` where a task has it, else `acc`), as `eval` reports.
    pub mean_acc: Option<f64>,
    pub mean_acc_norm: Option<f64>,
    /// Held-out wiki perplexity (8 × 512 tokens) after each shot, then after the final recovery.
    pub held_out: Vec<f64>,
    /// The recovery runs, in order.
    pub recovery: Vec<Curve>,
    /// Measured once per distinct shape (rows of the same shape share it).
    pub speed: Option<Speed>,
    pub seconds: Seconds,
}

/// What a model keeps: enough to tell shapes apart and to draw the size axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Shape {
    pub hidden_size: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub mlp_width: usize,
    pub n_layers: usize,
}

impl Shape {
    /// The first layer's shape (sweeps prune every layer to the same widths).
    pub fn of(c: &ModelConfig) -> Shape {
        let (n_heads, n_kv_heads, head_dim, mlp_width) = c.layers.first().map_or((0, 0, 0, 0), |l| (l.n_heads, l.n_kv_heads, l.head_dim, l.mlp_width));
        Shape { hidden_size: c.hidden_size, n_heads, n_kv_heads, head_dim, mlp_width, n_layers: c.layers.len() }
    }
}

/// One recovery run's loss at every step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Curve {
    /// `shot N` or `final`.
    pub label: String,
    pub tokens: u64,
    pub loss: String,
    pub loss_by_step: Vec<f64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Speed {
    pub prefill_tokens: usize,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Seconds {
    pub prune: f64,
    pub eval: f64,
    pub bench: f64,
}

impl Row {
    /// The size and score columns of a row, from the model's config and its evaluation.
    pub fn new(key: String, dir: String, config: &ModelConfig, dense: &ModelConfig, eval: &EvalReport) -> Row {
        let (cost, dense_cost) = (ModelCost::new(config, 2048), ModelCost::new(dense, 2048));
        let mut acc = BTreeMap::new();
        let mut acc_norm = BTreeMap::new();
        for t in &eval.tasks {
            acc.insert(t.task.clone(), t.acc);
            if let Some(n) = t.acc_norm {
                acc_norm.insert(t.task.clone(), n);
            }
        }
        Row {
            key,
            dir,
            grids: Vec::new(),
            point: None,
            shape: Shape::of(config),
            params_total: cost.params_total,
            params_non_embedding: cost.params_non_embedding,
            removed_non_embedding: 1.0 - cost.params_non_embedding as f64 / dense_cost.params_non_embedding as f64,
            kv_bytes_per_token_f32: cost.kv_bytes_per_token_f32,
            flops_per_token: cost.flops_per_token,
            perplexity: eval.perplexity.iter().map(|p| (p.corpus.clone(), p.token_perplexity)).collect(),
            acc,
            acc_norm,
            mean_acc: eval.average.as_ref().map(|a| a.acc),
            mean_acc_norm: eval.average.as_ref().map(|a| a.acc_norm),
            held_out: Vec::new(),
            recovery: Vec::new(),
            speed: None,
            seconds: Seconds { eval: eval.seconds_total, ..Seconds::default() },
        }
    }
}

/// The rows of `path` (none if it does not exist). A last line cut short by a killed run is
/// dropped with a warning in the second value; any other unreadable line is an error naming it.
pub fn read(path: &Path) -> Result<(Vec<Row>, Option<String>)> {
    read_lines(path).map(|(rows, _, warning)| (rows, warning))
}

/// As [`read`], with each row's line as written (the second value).
pub fn read_lines(path: &Path) -> Result<(Vec<Row>, Vec<String>, Option<String>)> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new(), None)),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
    };
    let (mut rows, mut kept) = (Vec::new(), Vec::new());
    let lines: Vec<&str> = text.split('\n').collect();
    let mut warning = None;
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Row>(line) {
            Ok(r) => {
                rows.push(r);
                kept.push(line.to_string());
            }
            // The last line without its newline: an append the run did not finish.
            Err(_) if i + 1 == lines.len() => {
                warning = Some(format!("{}: line {} is incomplete (an interrupted append) and is ignored; its run is redone", path.display(), i + 1))
            }
            Err(e) => bail!("{}: line {} is not a result row: {e}", path.display(), i + 1),
        }
    }
    Ok((rows, kept, warning))
}

/// Appends `row` as one line and flushes it to disk.
pub fn append(path: &Path, row: &Row) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("{}: cannot open for appending", path.display()))?;
    let mut line = serde_json::to_string(row)?;
    line.push('\n');
    f.write_all(line.as_bytes()).and_then(|_| f.sync_data()).with_context(|| format!("{}: cannot append a row", path.display()))?;
    Ok(())
}

/// Drops an incomplete last line (see [`read`]) so the next append starts a line of its own.
pub fn repair(path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let keep = text.rfind('\n').map_or(0, |i| i + 1);
    std::fs::write(path, &text[..keep]).with_context(|| format!("{}: cannot rewrite", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str) -> Row {
        Row {
            key: key.into(),
            dir: format!("runs/{key}"),
            grids: Vec::new(),
            point: None,
            shape: Shape { hidden_size: 8, n_heads: 2, n_kv_heads: 1, head_dim: 4, mlp_width: 16, n_layers: 1 },
            params_total: 10,
            params_non_embedding: 5,
            removed_non_embedding: 0.0,
            kv_bytes_per_token_f32: 64,
            flops_per_token: 100,
            perplexity: BTreeMap::from([("wiki".to_string(), 20.0)]),
            acc: BTreeMap::new(),
            acc_norm: BTreeMap::new(),
            mean_acc: None,
            mean_acc_norm: None,
            held_out: vec![],
            recovery: vec![],
            speed: None,
            seconds: Seconds::default(),
        }
    }

    /// Rows read back hold the very floats written (serde_json's `float_roundtrip`): a float
    /// read one ulp off would write a different row and redraw a different report.
    #[test]
    fn rows_round_trip_exactly() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("results.jsonl");
        let mut r = row("a");
        // Each of these read back one ulp off without `float_roundtrip`.
        r.seconds.eval = 1.941280921;
        r.held_out = vec![1.9412809210000002, 0.1 + 0.2, 116.02784012851862, 1e-300 / 3.0];
        append(&p, &r).unwrap();
        let back = read(&p).unwrap().0.remove(0);
        assert_eq!(back.seconds.eval.to_bits(), r.seconds.eval.to_bits());
        assert_eq!(back.held_out.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), r.held_out.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
        append(&d.path().join("again.jsonl"), &back).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(d.path().join("again.jsonl")).unwrap());
    }

    #[test]
    fn an_interrupted_append_is_dropped_and_other_damage_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("results.jsonl");
        assert!(read(&p).unwrap().0.is_empty());
        append(&p, &row("a")).unwrap();
        append(&p, &row("b")).unwrap();
        // A kill in the middle of the second append.
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, &text[..text.len() - 20]).unwrap();
        let (rows, warning) = read(&p).unwrap();
        assert_eq!(rows.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["a"]);
        assert!(warning.unwrap().contains("line 2 is incomplete"));
        repair(&p).unwrap();
        append(&p, &row("b")).unwrap();
        let (rows, warning) = read(&p).unwrap();
        assert_eq!(rows.len(), 2);
        assert!(warning.is_none());
        // A damaged line in the middle is not an interrupted append.
        std::fs::write(&p, format!("{{\"key\": 1}}\n{}", std::fs::read_to_string(&p).unwrap())).unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("line 1 is not a result row"), "{e}");
    }
}
