use anyhow::Result;
use clap::Args;
use serde_json::json;
use transact::model::cost::{ModelCost, human};
use transact::model::io::storage::files_on_disk;

use crate::common;

#[derive(Args)]
pub struct InspectArgs {
    /// GGUF file or Hugging Face model directory.
    model: crate::ModelPath,
    /// Context length (tokens attended to) at which FLOPs per token are counted.
    #[arg(long, default_value_t = 2048)]
    context: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: InspectArgs) -> Result<()> {
    let lm = common::load(&a.model)?;
    let cfg = &lm.model.config;
    let st = ModelCost::new(cfg, a.context);
    if a.json {
        let v = json!({
            "path": lm.path,
            "format": format!("{:?}", lm.format),
            "config": cfg,
            "uniform": cfg.uniform_shape().is_some(),
            "stats": st,
            "storage": { "file_type": lm.storage.file_type, "groups": lm.storage.groups(), "tensors": lm.storage.tensors },
            "files": files_on_disk(&lm.path),
            "tokenizer": { "vocab_size": lm.tokenizer.vocab_size(), "bos": lm.tokenizer.meta.bos,
                           "eos": lm.tokenizer.meta.eos, "add_bos": lm.tokenizer.meta.add_bos },
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("model        {} ({:?}, {})", cfg.name, lm.format, lm.path.display());
    println!("architecture llama, {} layers, hidden {}, vocab {}", cfg.n_layers(), cfg.hidden_size, cfg.vocab_size);
    println!(
        "rope         theta {}, {:?} pairs; RMSNorm eps {:e}; context {}; LM head {}",
        cfg.rope_theta,
        cfg.rope_layout,
        cfg.rms_eps as f32,
        cfg.max_position,
        if cfg.tied_embeddings { "tied to embeddings" } else { "separate" }
    );
    println!("layers       q_heads kv_heads head_dim mha_width mlp_width");
    // Runs of identical layers are printed once.
    let mut i = 0;
    while i < cfg.n_layers() {
        let s = cfg.layers[i];
        let mut j = i;
        while j + 1 < cfg.n_layers() && cfg.layers[j + 1] == s {
            j += 1;
        }
        let range = if i == j { format!("{i}") } else { format!("{i}-{j}") };
        println!(
            "  {range:<10} {:>7} {:>8} {:>8} {:>9} {:>9}",
            s.n_heads,
            s.n_kv_heads,
            s.head_dim,
            s.mha_width(),
            s.mlp_width
        );
        i = j + 1;
    }
    println!(
        "parameters   {} total, {} non-embedding (attention {}, MLP {})",
        human(st.params_total),
        human(st.params_non_embedding),
        human(st.params_attention),
        human(st.params_mlp)
    );
    println!("FLOPs/token  {} at context {}", human(st.flops_per_token), st.context);
    println!(
        "KV cache     {} bytes/token in f32 ({} in f16)",
        st.kv_bytes_per_token_f32, st.kv_bytes_per_token_f16
    );
    println!("stored       group      types                      bytes on disk");
    for g in lm.storage.groups() {
        println!("  {:<10} {:<10} {:<24} {:>13}", "", g.group, g.dtypes, g.bytes);
    }
    println!("files        {}", files_on_disk(&lm.path).iter().map(|f| format!("{} {}", f.name, size(f.bytes))).collect::<Vec<_>>().join(", "));
    println!(
        "tokenizer    {} tokens, bos {:?}, eos {:?}, add_bos {}",
        lm.tokenizer.vocab_size(),
        lm.tokenizer.meta.bos,
        lm.tokenizer.meta.eos,
        lm.tokenizer.meta.add_bos
    );
    Ok(())
}

/// Bytes in the unit that reads best.
fn size(b: u64) -> String {
    match b {
        0..1_000 => format!("{b} B"),
        1_000..1_000_000 => format!("{:.1} kB", b as f64 / 1e3),
        _ => format!("{:.1} MB", b as f64 / 1e6),
    }
}

