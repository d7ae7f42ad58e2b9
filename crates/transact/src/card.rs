//! `README.md` model cards for the Hugging Face directories `prune` and `train` write: YAML front
//! matter the Hub reads (base model, library, pipeline, tags), then what was done to the model
//! and what was measured, from the run's own report.

use std::fmt::Write;

use crate::model::ModelConfig;
use crate::model::choice::Choice;
use crate::model::cost::{ModelCost, human};
use crate::model::io::export::Written;
use crate::model::io::storage::FileBytes;
use crate::prune::report::PruneReport;
use crate::train::job::TrainReport;

/// Where the model came from, for the front matter.
pub struct Lineage<'a> {
    /// The source's Hub id, if known.
    pub hub_id: Option<&'a str>,
    pub license: Option<&'a str>,
    /// The name the card gives the model (the output directory's name).
    pub name: &'a str,
    /// `transformers` for a Hugging Face directory, `gguf` for a GGUF-only output.
    pub library: &'a str,
}

fn front_matter(l: &Lineage, tags: &[&str]) -> String {
    let mut s = String::from("---\n");
    if let Some(id) = l.hub_id {
        let _ = writeln!(s, "base_model: {id}");
    }
    if let Some(lic) = l.license.filter(|x| x.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))) {
        let _ = writeln!(s, "license: {lic}");
    }
    let _ = writeln!(s, "library_name: {}", l.library);
    s.push_str("pipeline_tag: text-generation\ntags:\n");
    for t in tags {
        let _ = writeln!(s, "- {t}");
    }
    s.push_str("---\n\n");
    s
}

fn base_text(l: &Lineage) -> String {
    match l.hub_id {
        Some(id) => format!("[{id}](https://huggingface.co/{id})"),
        None => "its source model".into(),
    }
}

/// Markdown-safe inline text (no table breaks, no HTML).
fn inline(s: &str) -> String {
    s.replace('|', "\\|").replace('<', "&lt;").replace('\n', " ")
}

fn shape_cell(c: &ModelConfig) -> (String, String) {
    match c.uniform_shape() {
        Some(s) => (format!("{} / {}", s.n_heads, s.n_kv_heads), s.mlp_width.to_string()),
        None => ("varies by layer".into(), "varies by layer".into()),
    }
}

fn files_table(s: &mut String, files: &[FileBytes], written: &[Written]) {
    s.push_str("\n## Files\n\n| file | bytes |\n|---|---:|\n");
    for f in files {
        let _ = writeln!(s, "| `{}` | {} |", inline(&f.name), f.bytes);
    }
    for w in written {
        let _ = writeln!(s, "\nWeights ({}): {}.", w.format, inline(&w.describe()));
    }
}

/// The card of a `prune` output.
pub fn prune_card(l: &Lineage, r: &PruneReport, dense: &ModelConfig, pruned: &ModelConfig, files: &[FileBytes], written: &[Written]) -> String {
    let o = &r.options;
    let recovered = o.recover.as_ref().is_some_and(|x| x.tokens + x.final_tokens > 0) || o.recover_cmd.is_some();
    let mut tags = vec!["pruned", "structured-pruning", "transact", "llama"];
    if recovered {
        tags.push("distillation");
    }
    let mut s = front_matter(l, &tags);
    let _ = writeln!(s, "# {}\n", inline(l.name));
    let _ = writeln!(
        s,
        "{} with {:.1} % of its non-embedding parameters removed by structured pruning with \
         [TransAct](https://arxiv.org/abs/2407.05690) (Shen et al., Findings of ACL 2024), made by \
         `transact prune`. It is an ordinary LLaMA model: stock `transformers` and llama.cpp load it.",
        base_text(l),
        100.0 * r.removed_non_embedding
    );
    if !recovered {
        s.push_str(
            "\n**Not trained after pruning.** A pruned model loses quality until it is recovered; \
             `transact train` distils it from the dense model (see the numbers below).\n",
        );
    }
    let (b, a) = (&r.before, &r.after);
    let ((bh, bm), (ah, am)) = (shape_cell(dense), shape_cell(pruned));
    s.push_str("\n## What was pruned\n\n| | before | after |\n|---|---:|---:|\n");
    let _ = writeln!(s, "| parameters (total) | {} | {} |", human(b.params_total), human(a.params_total));
    let _ = writeln!(s, "| non-embedding parameters | {} | {} |", human(b.params_non_embedding), human(a.params_non_embedding));
    let _ = writeln!(s, "| hidden size | {} | {} |", r.before_hidden_size, r.after_hidden_size);
    let _ = writeln!(s, "| query heads / KV heads per layer | {bh} | {ah} |");
    let _ = writeln!(s, "| MLP width per layer | {bm} | {am} |");
    let _ = writeln!(s, "| KV cache per token (f16) | {} B | {} B |", b.kv_bytes_per_token_f16, a.kv_bytes_per_token_f16);
    let _ = writeln!(s, "| FLOPs per token at context 2048 | {} | {} |", human(b.flops_per_token), human(a.flops_per_token));
    s.push('\n');
    let _ = writeln!(s, "- target: {} ({})", inline(&r.target.spec), r.target.split);
    let _ = writeln!(
        s,
        "- pruned: {} axis, scorer `{}`, attention unit `{}`, GQA `{}`, {} shot{}",
        o.axis.name(),
        o.scorer.name(),
        o.attn_unit.name(),
        o.gqa.name(),
        o.shots,
        if o.shots == 1 { "" } else { "s" }
    );
    if let Some(first) = r.shots.first() {
        let data = match (&r.stats_file, &first.calibration_data_sha256) {
            (Some(st), _) => format!("statistics from `transact calibrate` ({} tokens)", st.tokens),
            (None, Some(sha)) => format!(
                "`{}`, {} samples of {} tokens, seed {} ({} tokens per shot; text SHA-256 `{sha}`)",
                inline(&o.calib.source),
                o.calib.samples,
                o.calib.seq_len,
                o.calib.seed,
                first.calibration_tokens
            ),
            (None, None) => "none (the scorer needs no data)".into(),
        };
        let _ = writeln!(s, "- calibration: {data}");
    }
    let _ = writeln!(s, "- compensation: {}", o.compensate.name());
    match (&o.recover, &o.recover_cmd) {
        (Some(rec), _) => {
            let _ = writeln!(
                s,
                "- recovery: {} training tokens between shots and {} after the last, loss `{}`, peak lr {}, text `{}`",
                rec.tokens,
                rec.final_tokens,
                rec.train.loss.name(),
                rec.train.lr,
                inline(&rec.data)
            );
        }
        (None, Some(cmd)) => {
            let _ = writeln!(s, "- recovery: external command `{}`", inline(cmd));
        }
        (None, None) => s.push_str("- recovery: none\n"),
    }
    let _ = writeln!(s, "- source: `{}` (SHA-256 `{}`)", inline(&r.input.path), r.input.sha256);
    let held: Vec<String> = r
        .shots
        .iter()
        .filter_map(|sh| sh.held_out.as_ref().map(|h| format!("shot {}: {:.2}", sh.shot, h.last())))
        .chain(r.final_held_out_perplexity.map(|p| format!("after the final recovery: {p:.2}")))
        .collect();
    s.push_str("\n## Measured\n\n");
    if let Some(h) = &r.held_out {
        let _ = writeln!(s, "Held-out wiki perplexity (BoolQ passages, 8 windows of 512 tokens): {:.2} before pruning, **{:.2}** for this model.", h.dense, h.pruned);
    }
    if !held.is_empty() {
        let _ = writeln!(s, "Along the run: {}.", held.join(", "));
    }
    s.push_str("\n`transact eval` gives perplexity and zero-shot accuracy on full benchmarks, `transact compare` both models side by side.\n");
    files_table(&mut s, files, written);
    s.push_str("\nThe full record of the run (every option, kept heads and channels, scores, timings) is `prune_report.json`.\n");
    s
}

/// The card of a `train` output.
pub fn train_card(l: &Lineage, r: &TrainReport, cfg: &ModelConfig, files: &[FileBytes], written: &[Written]) -> String {
    let mut s = front_matter(l, &["pruned", "transact", "distillation", "llama"]);
    let _ = writeln!(s, "# {}\n", inline(l.name));
    let o = &r.options;
    let _ = writeln!(
        s,
        "A model descended from {}, trained by `transact train` on {} tokens with loss `{}`{}.",
        base_text(l),
        r.tokens,
        o.loss.name(),
        match &r.teacher {
            Some(t) => format!(" from the teacher `{}`", inline(&t.path)),
            None => String::new(),
        }
    );
    let c = ModelCost::new(cfg, 2048);
    let (heads, mlp) = shape_cell(cfg);
    s.push_str("\n## Training\n\n");
    let _ = writeln!(s, "- model: {} parameters ({} non-embedding), hidden size {}, heads / KV heads {heads}, MLP width {mlp}", human(c.params_total), human(c.params_non_embedding), cfg.hidden_size);
    let _ = writeln!(s, "- student input: `{}` (SHA-256 `{}`)", inline(&r.input.path), r.input.sha256);
    let _ = writeln!(s, "- text: `{}`, {} ({} tokens, SHA-256 `{}`; documents overlapping evaluation sets dropped)", inline(&r.data.source), inline(&r.data.description), r.data.tokens, r.data.sha256);
    let _ = writeln!(s, "- {} steps of {} tokens, peak lr {}, {} schedule, AdamW", r.steps, r.tokens_per_step, o.lr, o.schedule.name());
    let _ = writeln!(s, "- loss {:.4} → {:.4} (mean of the first and last 10 % of steps)", r.loss_start, r.loss_end);
    s.push_str("\n## Measured\n\n");
    match (r.eval.first(), r.eval.last()) {
        (Some(a), Some(b)) if r.eval.len() > 1 => {
            let _ = writeln!(s, "{}: {:.2} before training → {:.2} after {} tokens.", r.eval_protocol, a.wiki_perplexity, b.wiki_perplexity, b.tokens);
        }
        _ => s.push_str("No held-out evaluation ran (`--eval-every`); `transact eval` measures the model.\n"),
    }
    files_table(&mut s, files, written);
    s.push_str("\nThe full record (options, loss per step, speed) is `train_report.json` and `train_log.jsonl`; `loss.png` plots it.\n");
    s
}
