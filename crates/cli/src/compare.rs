use anyhow::Result;
use clap::Args;
use transact::bench::prefill_decode;
use transact::data::corpus;
use transact::eval::metrics::run_task;
use transact::eval::perplexity::corpus_perplexity;
use transact::eval::task;
use transact::model::cost::{ModelCost, human};
use transact::model::io::storage::files_on_disk;

use crate::common::{self, Bars};

#[derive(Args)]
pub struct CompareArgs {
    /// The reference model (usually the dense one): GGUF file or HF directory.
    a: crate::ModelPath,
    /// The model to compare with it (e.g. a `transact prune` output directory).
    b: crate::ModelPath,
    /// Comma-separated built-in tasks to score on both (see `eval --help`).
    #[arg(long, value_delimiter = ',', default_value = "piqa,arc_easy")]
    tasks: Vec<String>,
    /// First N docs of each task (subsets keep the comparison quick; report full runs with `eval`).
    #[arg(long, default_value_t = 100, value_parser = common::at_least_one)]
    limit: usize,
    /// Perplexity corpus (see `eval --help`).
    #[arg(long, default_value = "wiki")]
    ppl: String,
    /// Perplexity windows scored (of --seq-len tokens each).
    #[arg(long, default_value_t = 8)]
    ppl_windows: usize,
    /// Perplexity window in tokens.
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    /// Tokens decoded (after a 128-token prompt) to measure speed; best of 3.
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
}

/// Each weight file of an output (safetensors shards, GGUF) with its size and stored types.
fn weight_files(lm: &transact::LoadedModel) -> String {
    let files = files_on_disk(&lm.path);
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    let st: u64 = files.iter().filter(|f| f.name.ends_with(".safetensors")).map(|f| f.bytes).sum();
    let types = lm.storage.dominant_dtype().unwrap_or("?");
    let mut parts = Vec::new();
    if st > 0 {
        parts.push(format!("safetensors {} ({types})", mb(st)));
    }
    for f in files.iter().filter(|f| f.name.ends_with(".gguf")) {
        let what = if lm.path.is_dir() { f.name.clone() } else { format!("GGUF ({types})") };
        parts.push(format!("{what} {}", mb(f.bytes)));
    }
    parts.join(", ")
}

pub fn run(a: CompareArgs) -> Result<()> {
    let tasks = a.tasks.iter().map(|t| Ok(task::builtin(t.trim())?.limit(Some(a.limit)))).collect::<Result<Vec<_>>>()?;
    let corpus = corpus::load(&a.ppl)?;
    let mut rows: Vec<(String, [String; 2])> = Vec::new();
    let mut cols: Vec<Vec<String>> = Vec::new();
    let bars = Bars::new();
    for path in [&a.a, &a.b] {
        let lm = common::load(path)?;
        let m = &lm.model;
        let st = ModelCost::new(&m.config, 2048);
        let s = m.config.layers[0];
        let mut col = vec![
            format!("{} heads ({} KV) × {}, MLP {}", s.n_heads, s.n_kv_heads, s.head_dim, s.mlp_width),
            format!("{} / {}", human(st.params_total), human(st.params_non_embedding)),
            weight_files(&lm),
            format!("{}", st.kv_bytes_per_token_f32),
            human(st.flops_per_token),
        ];
        let p = corpus_perplexity(m, &lm.tokenizer, &corpus, a.seq_len, Some(a.ppl_windows), &bars)?;
        col.push(format!("{:.2}", p.token_perplexity));
        for t in &tasks {
            let r = run_task(m, &lm.tokenizer, t, m.config.max_position, transact::eval::metrics::PACK_TOKENS, &bars)?;
            col.push(format!("{:.1} / {:.1}", 100.0 * r.acc, 100.0 * r.acc_norm.unwrap_or(r.acc)));
        }
        let prompt = lm.tokenizer.encode(&corpus.text())?.into_iter().take(128).collect::<Vec<_>>();
        let sp = prefill_decode(m, &prompt, a.decode_tokens, 3)?;
        col.push(format!("{:.1}", sp.prefill_tokens_per_s));
        col.push(format!("{:.1}", sp.decode_tokens_per_s));
        cols.push(col);
    }
    let mut labels = vec![
        "shape per layer".to_string(),
        "params total / non-emb".into(),
        "weights on disk".into(),
        "KV cache bytes/token (f32)".into(),
        "FLOPs/token @2048".into(),
        format!("{} perplexity ({}×{} tok)", a.ppl, a.ppl_windows, a.seq_len),
    ];
    labels.extend(tasks.iter().map(|t| format!("{} acc / acc_norm ({} docs)", t.name, t.docs.len())));
    labels.push("prefill tok/s (128 tokens)".into());
    labels.push(format!("decode tok/s ({} tokens)", a.decode_tokens));
    for (i, l) in labels.into_iter().enumerate() {
        rows.push((l, [cols[0][i].clone(), cols[1][i].clone()]));
    }
    let name = |p: &std::path::Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let w = rows.iter().flat_map(|(_, c)| c.iter().map(|x| x.chars().count())).max().unwrap_or(0).max(34);
    println!("{:<34} {:>w$} {:>w$}", "", name(&a.a), name(&a.b));
    for (l, [x, y]) in rows {
        println!("{l:<34} {x:>w$} {y:>w$}");
    }
    Ok(())
}
