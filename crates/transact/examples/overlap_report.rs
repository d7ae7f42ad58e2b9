//! Which training documents share a 13-gram with evaluation text, per training source and
//! evaluation set, with the time each step takes.
//!
//!     cargo run --release -p transact --example overlap_report [-- --json report.json]
//!
//! Needs `scripts/fetch-assets.sh`. Sources: `mix`'s parts (coqa, squad, drop) and every
//! `general` corpus.

use std::time::Instant;

use anyhow::{Context, Result};
use transact::data::corpus;
use transact::data::overlap::{self, EvalIndex, OverlapReport};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json_out = match args.as_slice() {
        [] => None,
        [flag, path] if flag == "--json" => Some(path.clone()),
        _ => anyhow::bail!("usage: overlap_report [--json FILE]"),
    };

    let t = Instant::now();
    let index = EvalIndex::evaluation_sets()?;
    println!(
        "evaluation index: {} distinct {}-grams over {} sets, built in {:.2} s ({} threads)",
        index.len(),
        overlap::N,
        index.sets().len(),
        t.elapsed().as_secs_f64(),
        rayon::current_num_threads()
    );
    println!("{:<14} {:>8} {:>8} {:>10}", "eval set", "texts", "< 13 w", "13-grams");
    for s in index.sets() {
        println!("{:<14} {:>8} {:>8} {:>10}", s.name, s.texts, s.short_texts, s.ngrams);
    }

    let sources = ["coqa", "squad", "drop"].into_iter().chain(corpus::GENERAL);
    let mut reports: Vec<(OverlapReport, f64, f64)> = Vec::new();
    for name in sources {
        let t = Instant::now();
        let c = corpus::load(name)?;
        let load_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let (_kept, report) = overlap::filter(&index, name, c.docs);
        reports.push((report, load_s, t.elapsed().as_secs_f64()));
    }

    println!();
    println!(
        "{:<10} {:>7} {:>10} {:>9} {:>9} {:>8} {:>10} {:>7} {:>7}",
        "source", "docs", "words", "~tokens", "overlap", "%", "drop words", "load s", "check s"
    );
    for (r, load_s, check_s) in &reports {
        println!(
            "{:<10} {:>7} {:>10} {:>8.2}M {:>9} {:>7.2}% {:>10} {:>7.2} {:>7.2}",
            r.source,
            r.documents,
            r.words,
            r.words as f64 * 1.3 / 1e6,
            r.overlapping,
            pct(r.overlapping, r.documents),
            r.dropped_words,
            load_s,
            check_s
        );
    }

    println!();
    println!("documents sharing a 13-gram with each evaluation set (count, % of the source's documents):");
    print!("{:<10}", "source");
    for s in index.sets() {
        print!(" {:>15}", s.name);
    }
    println!();
    for (r, _, _) in &reports {
        print!("{:<10}", r.source);
        for s in &r.per_eval_set {
            print!(" {:>15}", format!("{} ({:.1}%)", s.documents, pct(s.documents, r.documents)));
        }
        println!();
    }

    if let Some(path) = json_out {
        let all: Vec<&OverlapReport> = reports.iter().map(|(r, _, _)| r).collect();
        std::fs::write(&path, serde_json::to_string_pretty(&all)?).with_context(|| format!("{path}: cannot write"))?;
        println!("\nwrote {path}");
    }
    Ok(())
}

fn pct(n: usize, of: usize) -> f64 {
    if of == 0 { 0.0 } else { 100.0 * n as f64 / of as f64 }
}
