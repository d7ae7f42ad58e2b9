//! Multiple-choice tasks: lm-eval-style request files, the simple JSONL format, built-in tasks.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

use crate::data::{corpus, jsonl};

/// One scored continuation: log p(continuation | context).
#[derive(Debug, Clone, Serialize)]
pub struct Request {
    pub context: String,
    pub continuation: String,
}

#[derive(Debug, Clone)]
pub struct Doc {
    pub id: u64,
    /// One request per choice, in choice order.
    pub requests: Vec<Request>,
    /// Lengths in characters that `acc_norm` divides by (lm-eval: the choice text without the
    /// target delimiter).
    pub norm_chars: Vec<usize>,
    pub gold: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// acc and acc_norm over the choices.
    MultipleChoice,
    /// One continuation per doc: accuracy = greedy match of every token, and perplexity.
    Lambada,
}

#[derive(Debug, Clone)]
pub struct Task {
    pub name: String,
    pub kind: TaskKind,
    pub split: String,
    /// Where the docs came from and how prompts were built, printed with the results.
    pub source: String,
    pub docs: Vec<Doc>,
}

impl Task {
    pub fn limit(mut self, n: Option<usize>) -> Self {
        if let Some(n) = n {
            self.docs.truncate(n);
        }
        self
    }
}

/// How a built-in task turns request-file docs into 0-shot prompts.
#[derive(Clone, Copy)]
enum Prompt {
    /// The requests as stored.
    Stored,
    /// `doc.query` + " " + choice (drops a stored few-shot prefix).
    Query,
    /// Like `Query` with "Question: "/"\nAnswer:" stripped (lm-eval's OpenBookQA uses the bare stem).
    QuestionStem,
    /// lm-eval's PIQA: "Question: {goal}\nAnswer:" + " " + sol.
    Piqa,
}

struct Builtin {
    name: &'static str,
    folder: &'static str,
    variant: &'static str,
    split: &'static str,
    prompt: Prompt,
    kind: TaskKind,
}

const BUILTINS: [Builtin; 8] = [
    Builtin { name: "piqa", folder: "piqa", variant: "rc_0shot", split: "validation", prompt: Prompt::Piqa, kind: TaskKind::MultipleChoice },
    Builtin { name: "hellaswag", folder: "hellaswag", variant: "rc_0shot", split: "validation", prompt: Prompt::Stored, kind: TaskKind::MultipleChoice },
    Builtin { name: "winogrande", folder: "winogrande", variant: "rc_0shot", split: "validation (xl)", prompt: Prompt::Stored, kind: TaskKind::MultipleChoice },
    Builtin { name: "arc_easy", folder: "arc_easy", variant: "test_rc_5shot", split: "test", prompt: Prompt::Query, kind: TaskKind::MultipleChoice },
    Builtin { name: "arc_challenge", folder: "arc_challenge", variant: "test_rc_5shot", split: "test", prompt: Prompt::Query, kind: TaskKind::MultipleChoice },
    Builtin { name: "boolq", folder: "boolq", variant: "rc_0shot", split: "validation", prompt: Prompt::Stored, kind: TaskKind::MultipleChoice },
    Builtin { name: "openbookqa", folder: "openbookqa", variant: "test_rc_5shot", split: "test", prompt: Prompt::QuestionStem, kind: TaskKind::MultipleChoice },
    Builtin { name: "lambada", folder: "lambada", variant: "bpb_0shot", split: "test", prompt: Prompt::Stored, kind: TaskKind::Lambada },
];

/// Names of the built-in tasks, in report order.
pub fn builtin_names() -> Vec<&'static str> {
    BUILTINS.iter().map(|b| b.name).collect()
}

/// Built-in tasks by name (`all`: every one), each cut to its first `limit` docs.
pub fn builtins(names: &[String], limit: Option<usize>) -> Result<Vec<Task>> {
    let all = names.iter().any(|n| n.trim() == "all");
    let names: Vec<String> = if all { builtin_names().iter().map(|s| s.to_string()).collect() } else { names.to_vec() };
    names.iter().map(|n| Ok(builtin(n.trim())?.limit(limit))).collect()
}

/// A built-in task by its lm-eval name.
pub fn builtin(name: &str) -> Result<Task> {
    let b = BUILTINS
        .iter()
        .find(|b| b.name == name)
        .ok_or_else(|| anyhow!("unknown task `{name}`; built-in tasks: {}", builtin_names().join(", ")))?;
    let dir = corpus::task_dir(b.folder, b.variant)?;
    let mut task = load_request_dir(&dir, b.prompt, b.kind)?;
    task.name = b.name.to_string();
    task.split = b.split.to_string();
    let how = match b.prompt {
        Prompt::Stored => "requests as stored",
        Prompt::Query => "0-shot rebuilt: doc.query + \" \" + choice",
        Prompt::QuestionStem => "0-shot rebuilt: question stem + \" \" + choice",
        Prompt::Piqa => "lm-eval prompt rebuilt: \"Question: {goal}\\nAnswer:\" + \" \" + sol",
    };
    task.source = format!("{}/{} ({how})", b.folder, b.variant);
    Ok(task)
}

fn field<'a>(v: &'a serde_json::Value, path: &[&str], file: &Path, line: usize) -> Result<&'a serde_json::Value> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p).ok_or_else(|| anyhow!("{}: line {line}: missing field `{}`", file.display(), path.join(".")))?;
    }
    Ok(cur)
}

fn string(v: &serde_json::Value, path: &[&str], file: &Path, line: usize) -> Result<String> {
    field(v, path, file, line)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{}: line {line}: field `{}` is not a string", file.display(), path.join(".")))
}

fn strings(v: &serde_json::Value, path: &[&str], file: &Path, line: usize) -> Result<Vec<String>> {
    let arr = field(v, path, file, line)?
        .as_array()
        .ok_or_else(|| anyhow!("{}: line {line}: field `{}` is not a list", file.display(), path.join(".")))?;
    arr.iter()
        .map(|c| c.as_str().map(str::to_string))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| anyhow!("{}: line {line}: field `{}` holds a non-string", file.display(), path.join(".")))
}

fn index(v: &serde_json::Value, path: &[&str], file: &Path, line: usize) -> Result<usize> {
    let f = field(v, path, file, line)?;
    f.as_u64()
        .map(|x| x as usize)
        .ok_or_else(|| anyhow!("{}: line {line}: field `{}` is not a non-negative integer", file.display(), path.join(".")))
}

fn check_gold(gold: usize, n: usize, file: &Path, line: usize) -> Result<()> {
    if n == 0 {
        bail!("{}: line {line}: no choices", file.display());
    }
    if gold >= n {
        bail!("{}: line {line}: gold {gold} is out of range for {n} choices", file.display());
    }
    Ok(())
}

/// A folder in the lm-eval request format (`requests.jsonl[.gz]`, optional `config.json`), as stored.
pub fn load_task_dir(dir: &Path) -> Result<Task> {
    load_request_dir(dir, Prompt::Stored, TaskKind::MultipleChoice)
}

fn load_request_dir(dir: &Path, prompt: Prompt, kind: TaskKind) -> Result<Task> {
    let file = ["requests.jsonl.gz", "requests.jsonl"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists())
        .ok_or_else(|| anyhow!("{}: no requests.jsonl or requests.jsonl.gz", dir.display()))?;
    let mut split = "unknown".to_string();
    let mut name = dir.display().to_string();
    let config = dir.join("config.json");
    if config.exists() {
        let c = config.display();
        let text = std::fs::read_to_string(&config).with_context(|| format!("{c}: cannot read"))?;
        let cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| anyhow!("{c}: invalid JSON: {e}"))?;
        if let Some(s) = cfg["task_config"]["split"].as_str() {
            split = s.to_string();
        }
        if let Some(n) = cfg["task_name"].as_str() {
            name = n.to_string();
        }
    }
    // Requests of one doc share doc_id; collect them in idx order.
    struct Pending {
        line: usize,
        requests: Vec<(usize, Request)>,
        gold: usize,
        doc: serde_json::Value,
    }
    let mut by_doc: BTreeMap<u64, Pending> = BTreeMap::new();
    for (line, v) in jsonl::read(&file)? {
        if let Some(t) = v.get("request_type")
            && t != "loglikelihood"
        {
            bail!("{}: line {line}: request_type {t}: only loglikelihood requests are scored", file.display());
        }
        let doc_id = field(&v, &["doc_id"], &file, line)?
            .as_u64()
            .ok_or_else(|| anyhow!("{}: line {line}: doc_id is not an integer", file.display()))?;
        if doc_id >= 1_000_000 {
            continue; // unconditional "Answer:"-only requests for PMI scoring
        }
        let req = Request {
            context: string(&v, &["request", "context"], &file, line)?,
            continuation: string(&v, &["request", "continuation"], &file, line)?,
        };
        let idx = match v.get("idx") {
            Some(_) => index(&v, &["idx"], &file, line)?,
            None => 0,
        };
        let gold = match kind {
            TaskKind::Lambada => 0,
            TaskKind::MultipleChoice => index(&v, &["label"], &file, line)?,
        };
        let entry =
            by_doc.entry(doc_id).or_insert_with(|| Pending { line, requests: Vec::new(), gold, doc: v["doc"].clone() });
        entry.requests.push((idx, req));
    }
    let mut docs = Vec::with_capacity(by_doc.len());
    for (id, Pending { line, requests: mut reqs, gold, doc }) in by_doc {
        reqs.sort_by_key(|(i, _)| *i);
        let requests: Vec<Request> = match prompt {
            Prompt::Stored => reqs.into_iter().map(|(_, r)| r).collect(),
            Prompt::Query | Prompt::QuestionStem => {
                let mut q = string(&doc, &["query"], &file, line)?;
                if let Prompt::QuestionStem = prompt {
                    q = q.trim_start_matches("Question: ").trim_end_matches("\nAnswer:").to_string();
                }
                let choices = strings(&doc, &["choices"], &file, line)?;
                choices.iter().map(|c| Request { context: q.clone(), continuation: format!(" {c}") }).collect()
            }
            Prompt::Piqa => {
                let goal = string(&doc, &["goal"], &file, line)?;
                let context = format!("Question: {goal}\nAnswer:");
                ["sol1", "sol2"]
                    .iter()
                    .map(|s| Ok(Request { context: context.clone(), continuation: format!(" {}", string(&doc, &[s], &file, line)?) }))
                    .collect::<Result<_>>()?
            }
        };
        let gold = match prompt {
            Prompt::Query | Prompt::QuestionStem => index(&doc, &["gold"], &file, line)?,
            _ => gold,
        };
        check_gold(gold, requests.len(), &file, line)?;
        let norm_chars = requests.iter().map(|r| r.continuation.trim_start().chars().count()).collect();
        docs.push(Doc { id, requests, norm_chars, gold });
    }
    if docs.is_empty() {
        bail!("{}: no requests", file.display());
    }
    Ok(Task { name, kind, split, source: file.display().to_string(), docs })
}

/// The simple format: one JSON object per line, `{"context": str, "choices": [str], "gold": int}`,
/// optional `"delimiter"` (default " ") put between context and each choice.
pub fn load_simple_jsonl(file: &Path) -> Result<Task> {
    let mut docs = Vec::new();
    for (line, v) in jsonl::read(file)? {
        if !v.is_object() {
            bail!("{}: line {line}: expected a JSON object", file.display());
        }
        let context = string(&v, &["context"], file, line)?;
        let choices = strings(&v, &["choices"], file, line)?;
        let gold = index(&v, &["gold"], file, line)?;
        check_gold(gold, choices.len(), file, line)?;
        let delim = match v.get("delimiter") {
            Some(_) => string(&v, &["delimiter"], file, line)?,
            None => " ".to_string(),
        };
        docs.push(Doc {
            id: docs.len() as u64,
            norm_chars: choices.iter().map(|c| c.chars().count()).collect(),
            requests: choices
                .iter()
                .map(|c| Request { context: context.clone(), continuation: format!("{delim}{c}") })
                .collect(),
            gold,
        });
    }
    if docs.is_empty() {
        bail!("{}: no tasks (the file is empty)", file.display());
    }
    let name = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(Task { name, kind: TaskKind::MultipleChoice, split: "user".into(), source: file.display().to_string(), docs })
}
