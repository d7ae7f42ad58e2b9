//! `transact report`: a sweep's results as a self-contained HTML page (figures inlined as SVG)
//! and a Markdown page (figures as PNG files beside it), drawn with plotters.
//!
//! The folder written: `report.html`, `report.md`, `plots/NAME.png` and `plots/NAME.svg` for
//! `quality` (perplexity and mean accuracy against size), `salience` (the dense model's
//! per-layer head and MLP-channel scores), `speed` (prefill, decode, KV cache against size) and
//! `recovery` (training loss and held-out perplexity of the trained runs). Beside them, the data
//! they were drawn from: `results.jsonl`, `sweep.json` and `stats/` (the salience statistics), so
//! the report folder is itself a sweep folder a later `report` redraws from, or a sweep continues
//! from, after the sweep's own folder (its models and logs) is gone.

pub mod plots;
pub mod series;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use self::plots::figure;
use self::series::{Series, series};
use crate::calibrate::activations::ActivationStats;
use crate::model::io::atomic;
use crate::sweep::results::{self, Row};
use crate::sweep::spec::Shared;

/// What `write` produced.
pub struct Written {
    pub html: PathBuf,
    pub markdown: PathBuf,
    /// The figures, by name.
    pub figures: Vec<String>,
    pub rows: usize,
}

/// One figure: its file name, caption and SVG text.
struct Figure {
    name: &'static str,
    caption: String,
    svg: String,
}

const WIDTH: u32 = 1200;

/// Writes the report of the sweep folder `sweep` into the folder `out`.
pub fn write(sweep: &Path, out: &Path, force: bool) -> Result<Written> {
    let results_path = sweep.join("results.jsonl");
    if !results_path.exists() {
        bail!("{}: no results (run `transact sweep SPEC --out {}` first)", results_path.display(), sweep.display());
    }
    // The lines as written are kept beside the report.
    let (rows, lines_read, _) = results::read_lines(&results_path)?;
    if rows.is_empty() {
        bail!("{}: no finished rows yet", results_path.display());
    }
    let shared_text = std::fs::read_to_string(sweep.join("sweep.json")).ok();
    let shared: Option<Shared> = shared_text.as_deref().and_then(|t| serde_json::from_str(t).ok());
    let stats = salience_stats(sweep)?;
    let dense = rows.iter().find(|r| r.point.is_none());
    let lines = series(&rows);
    let corpus = rows.iter().flat_map(|r| r.perplexity.keys()).next().cloned().unwrap_or_else(|| "wiki".into());
    let mut figures_written = Vec::new();
    atomic::write_dir(out, force, |dir| {
        let plots = dir.join("plots");
        std::fs::create_dir_all(&plots)?;
        let mut figures = Vec::new();
        let labels = lines.iter().map(|s| s.label.as_str()).chain(dense.map(|_| plots::DENSE_LABEL));
        let height = 500 + plots::legend_height(labels, WIDTH);
        let svg = figure!(plots, "quality", (WIDTH, height), |root| plots::quality(&root, &lines, dense, &corpus));
        figures.push(Figure {
            name: "quality",
            caption: format!(
                "{corpus} perplexity (left, log scale) and mean accuracy over the tasks (right) against non-embedding parameters; \
                 one line per setting over the pruning ratios, solid with filled markers where the model was trained after pruning, \
                 dashed and hollow where not; the dense model is the black triangle and dotted line."
            ),
            svg,
        });
        if let (Some(stats), Some(d)) = (&stats, dense) {
            let svg = figure!(plots, "salience", (WIDTH, 520), |root| plots::salience(&root, &stats.stats, d.shape.n_heads));
            figures.push(Figure {
                name: "salience",
                caption: format!(
                    "Salience of the dense model on the calibration tokens ({}): per layer, TransAct's head score (mean + 10/d_h · max of \
                     the head's channel L2 norms, left: each layer from its lowest head, dark, to its highest, bright) and the MLP channels' L2 norms \
                     sorted from high to low (right: each layer on a log scale from its highest, bright, to 1/100 of it or less, dark). Pruning keeps \
                     the brightest heads and the left end of every MLP row.",
                    stats.what
                ),
                svg,
            });
        }
        if rows.iter().any(|r| r.speed.is_some()) {
            let svg = figure!(plots, "speed", (WIDTH, 460), |root| plots::speed(&root, &rows));
            figures.push(Figure {
                name: "speed",
                caption: "Prefill (256 tokens, bars) and decode (dots) speed of each distinct shape in f32 on the machine the sweep ran on (left), and \
                          the KV cache's bytes per token (right), against non-embedding parameters. Heads + MLP pruning shrinks the KV cache with the \
                          heads; hidden-size pruning keeps it."
                    .into(),
                svg,
            });
        }
        let trained: Vec<(String, &Row)> = lines.iter().filter(|s| s.recovered).flat_map(|s| s.rows.iter().map(move |r| (run_label(s, r), *r))).collect();
        if !trained.is_empty() {
            let height = 480 + plots::legend_height(trained.iter().map(|t| t.0.as_str()), WIDTH);
            let svg = figure!(plots, "recovery", (WIDTH, height), |root| plots::recovery(&root, &trained));
            figures.push(Figure {
                name: "recovery",
                caption: "Recovery runs: training loss at every optimizer step against training tokens, the shots of one run joined (left), and \
                          held-out wiki perplexity (8 windows of 512 tokens) after each shot's recovery (right)."
                    .into(),
                svg,
            });
        }
        write_data(dir, &lines_read, shared_text.as_deref(), stats.as_ref().map(|s| s.path.as_path()))?;
        let table = Table::new(&rows, &lines, &corpus);
        std::fs::write(dir.join("report.html"), html(&figures, &table, shared.as_ref(), sweep))?;
        std::fs::write(dir.join("report.md"), markdown(&figures, &table, shared.as_ref(), sweep))?;
        figures_written = figures.iter().map(|f| f.name.to_string()).collect();
        Ok(())
    })?;
    Ok(Written { html: out.join("report.html"), markdown: out.join("report.md"), figures: figures_written, rows: rows.len() })
}

/// A trained row's legend entry: its series and size.
fn run_label(s: &Series, r: &Row) -> String {
    format!("{} at {:.0} % removed", s.label, 100.0 * r.point.as_ref().map_or(0.0, |p| p.ratio))
}

/// The rows drawn, the shared settings and the salience statistics, into the report folder `dir`.
fn write_data(dir: &Path, rows: &[String], shared: Option<&str>, stats: Option<&Path>) -> Result<()> {
    std::fs::write(dir.join("results.jsonl"), rows.iter().map(|l| format!("{l}\n")).collect::<String>())?;
    if let Some(text) = shared {
        std::fs::write(dir.join("sweep.json"), text)?;
    }
    if let Some(path) = stats {
        std::fs::create_dir_all(dir.join("stats"))?;
        let name = path.file_name().context("a statistics file has a name")?;
        std::fs::copy(path, dir.join("stats").join(name)).with_context(|| format!("{}: cannot copy", path.display()))?;
    }
    Ok(())
}

/// The dense statistics the salience figure draws.
struct Salience {
    stats: ActivationStats,
    /// Tokens and file, for the caption.
    what: String,
    path: PathBuf,
}

/// The dense statistics of the lowest calibration seed, if the sweep collected any.
fn salience_stats(sweep: &Path) -> Result<Option<Salience>> {
    let Ok(entries) = std::fs::read_dir(sweep.join("stats")) else {
        return Ok(None);
    };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "safetensors")).collect();
    files.sort();
    let Some(first) = files.first() else {
        return Ok(None);
    };
    let stats = ActivationStats::load(first)?;
    let what = format!("{} tokens, {}", stats.meta.tokens, first.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    Ok(Some(Salience { stats, what, path: first.clone() }))
}

/// The results as table rows: the dense model first, then by ratio, best perplexity first.
struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(rows: &[Row], lines: &[Series], corpus: &str) -> Table {
        let header = vec![
            "setting",
            "removed",
            "non-emb. params",
            "ppl",
            "mean acc",
            "mean acc_norm",
            "held-out ppl",
            "KV bytes/token",
            "prefill tok/s",
            "decode tok/s",
        ];
        let mut entries: Vec<(f64, f64, Vec<String>)> = Vec::new();
        let pct = |x: Option<f64>| x.map_or("–".into(), |v| format!("{:.1}", 100.0 * v));
        let cells = |label: &str, r: &Row| {
            vec![
                label.to_string(),
                format!("{:.1} %", 100.0 * r.removed_non_embedding),
                format!("{:.2}M", r.params_non_embedding as f64 / 1e6),
                r.perplexity.get(corpus).map_or("–".into(), |p| format!("{p:.2}")),
                pct(r.mean_acc),
                pct(r.mean_acc_norm),
                r.held_out.last().map_or("–".into(), |p| format!("{p:.1}")),
                r.kv_bytes_per_token_f32.to_string(),
                r.speed.map_or("–".into(), |s| format!("{:.0}", s.prefill_tokens_per_s)),
                r.speed.map_or("–".into(), |s| format!("{:.1}", s.decode_tokens_per_s)),
            ]
        };
        for r in rows.iter().filter(|r| r.point.is_none()) {
            entries.push((-1.0, 0.0, cells("dense", r)));
        }
        for s in lines {
            for r in &s.rows {
                let ratio = r.point.as_ref().map_or(0.0, |p| p.ratio);
                entries.push((ratio, r.perplexity.get(corpus).copied().unwrap_or(f64::INFINITY), cells(&s.label, r)));
            }
        }
        entries.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        Table { header, rows: entries.into_iter().map(|e| e.2).collect() }
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// How the rows were made, from `sweep.json`.
fn protocol(shared: Option<&Shared>) -> String {
    let Some(s) = shared else {
        return String::new();
    };
    let e = &s.eval;
    format!(
        "Model `{}`. Calibration: {} × {} tokens of `{}`. Recovery: `{}` loss at peak lr {} on `{}`. Evaluation: {} perplexity over {} windows of {} tokens; \
         tasks {} ({}).",
        s.model,
        s.calib.samples,
        s.calib.seq_len,
        s.calib.source,
        serde_json::to_value(s.recovery.loss).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
        s.recovery.lr,
        s.recovery.data,
        e.ppl.join(", "),
        e.ppl_windows.map_or("all".into(), |w| w.to_string()),
        e.ppl_seq_len,
        e.tasks.join(", "),
        e.limit.map_or("all docs".into(), |l| format!("first {l} docs each")),
    )
}

fn html(figures: &[Figure], table: &Table, shared: Option<&Shared>, sweep: &Path) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>transact sweep report</title>\n<style>\
         body{{font-family:sans-serif;max-width:1240px;margin:2em auto;padding:0 1em;color:#222}}\
         table{{border-collapse:collapse;font-size:14px}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
         td:first-child,th:first-child{{text-align:left}}figure{{margin:2em 0}}svg{{max-width:100%;height:auto}}\
         figcaption{{font-size:14px;color:#444}}</style></head><body>\n<h1>Sweep report</h1>\n<p>From <code>{}</code>. {}</p>\n",
        escape(&sweep.display().to_string()),
        escape(&protocol(shared)).replace('`', "")
    );
    for f in figures {
        let _ = write!(s, "<figure id=\"{}\">\n{}\n<figcaption>{}</figcaption></figure>\n", f.name, f.svg, escape(&f.caption));
    }
    s += "<h2>All rows</h2>\n<table><tr>";
    for h in &table.header {
        let _ = write!(s, "<th>{}</th>", escape(h));
    }
    s += "</tr>\n";
    for r in &table.rows {
        s += "<tr>";
        for c in r {
            let _ = write!(s, "<td>{}</td>", escape(c));
        }
        s += "</tr>\n";
    }
    s += "</table>\n</body></html>\n";
    s
}

fn markdown(figures: &[Figure], table: &Table, shared: Option<&Shared>, sweep: &Path) -> String {
    let mut s = format!("# Sweep report\n\nFrom `{}`. {}\n\n", sweep.display(), protocol(shared));
    for f in figures {
        let _ = write!(s, "![{}](plots/{}.png)\n\n{}\n\n", f.name, f.name, f.caption);
    }
    s += "## All rows\n\n| ";
    s += &table.header.join(" | ");
    s += " |\n|";
    s += &"---|".repeat(table.header.len());
    s += "\n";
    for r in &table.rows {
        let _ = writeln!(s, "| {} |", r.join(" | "));
    }
    s
}
