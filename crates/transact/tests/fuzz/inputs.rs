//! The other files a user hands in: calibration statistics, task files (the simple JSONL and
//! lm-eval request folders) and perplexity corpora. What is accepted is then used as the
//! commands use it (scored on the tiny model), so a lie that slips through shows as a panic or a
//! non-finite number.

use std::path::Path;

use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Value as Json, json};
use transact::Silent;
use transact::calibrate::activations::{ActivationStats, ChannelStats, LayerStats, StatsMeta};
use transact::eval::scorer::{encode, score_group};

use crate::fixture::{scratch, shared};
use crate::{Outcome, lies, run_target};

fn stats_seed(path: &Path) -> Vec<u8> {
    let cfg = &shared().model.config;
    let channels = |n: usize| ChannelStats { sum_sq: (0..n).map(|i| 4.0 + i as f64).collect(), sum: (0..n).map(|i| i as f64 - 3.0).collect(), sum_abs: (0..n).map(|i| 3.0 + i as f64).collect() };
    let stats = ActivationStats {
        layers: cfg.layers.iter().map(|l| LayerStats { attn: channels(l.mha_width()), mlp: channels(l.mlp_width) }).collect(),
        meta: StatsMeta { model_sha256: "ab".repeat(32), data_sha256: "cd".repeat(32), source: "mix".into(), samples: 4, seq_len: 16, seed: 0, tokens: 64 },
    };
    stats.save(path).unwrap();
    std::fs::read(path).unwrap()
}

#[test]
fn statistics_files() {
    let dir = scratch("stats");
    let seed = stats_seed(&dir.join("seed.safetensors"));
    let path = dir.join("case.safetensors");
    run_target("stats", 10_000, |rng, lies| {
        let mut b = seed.clone();
        let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        if rng.random() {
            // The metadata JSON, or one sum.
            let mut header: Json = serde_json::from_slice(&b[8..8 + n]).unwrap();
            if rng.random() {
                let mut meta: Json = serde_json::from_str(header["__metadata__"]["meta"].as_str().unwrap()).unwrap();
                let keys: Vec<String> = meta.as_object().unwrap().keys().cloned().collect();
                let k = &keys[rng.random_range(0..keys.len())];
                meta[k] = if rng.random() { json!(lies::text(rng)) } else { lies::json(rng, &meta[k]) };
                lies.push(format!("meta {k} = {}", meta[k]));
                header["__metadata__"]["meta"] = json!(meta.to_string());
            } else {
                header["__metadata__"]["format"] = json!(lies::text(rng));
                lies.push("format".into());
            }
            let text = serde_json::to_vec(&header).unwrap();
            b = [(text.len() as u64).to_le_bytes().to_vec(), text, b[8 + n..].to_vec()].concat();
        } else {
            // An f64 sum set to NaN, inf, a negative or a huge number.
            let at = 8 + n + 8 * rng.random_range(0..(b.len() - 8 - n) / 8);
            let v = lies::float(rng);
            lies.push(format!("value {v} at {at}"));
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        if rng.random_range(0..8) == 0 {
            lies::bytes(rng, &mut b, 0, lies);
        }
        std::fs::write(&path, &b).unwrap();
        match ActivationStats::load(&path) {
            Err(_) => Ok(Outcome::Refused),
            Ok(s) => {
                let _ = s.check_matches(&shared().model, &"ab".repeat(32), &path);
                for c in s.layers.iter().flat_map(|l| [&l.attn, &l.mlp]) {
                    let bad = c.l2().iter().chain(&c.variance(s.meta.tokens)).any(|x| !x.is_finite());
                    if bad || s.meta.tokens == 0 {
                        return Err("loaded statistics give a non-finite salience".into());
                    }
                }
                Ok(Outcome::Accepted)
            }
        }
    });
}

/// One line of a simple task file: mostly well-formed, with lied fields.
fn task_line(rng: &mut StdRng) -> String {
    let mut v = json!({ "context": lies::text(rng), "choices": [lies::text(rng), lies::text(rng)], "gold": 0 });
    for _ in 0..rng.random_range(0..3) {
        match rng.random_range(0..6) {
            0 => v["gold"] = lies::json(rng, &json!(1)),
            1 => v["choices"] = json!((0..rng.random_range(0..4)).map(|_| lies::text(rng)).collect::<Vec<_>>()),
            2 => v["choices"] = lies::json(rng, &v["choices"]),
            3 => v["context"] = lies::json(rng, &v["context"]),
            4 => v["delimiter"] = if rng.random() { json!(lies::text(rng)) } else { lies::json(rng, &json!(" ")) },
            _ => {
                let k = ["context", "choices", "gold"][rng.random_range(0..3)];
                v.as_object_mut().unwrap().remove(k);
            }
        }
    }
    v.to_string()
}

/// One line of an lm-eval request file.
fn request_line(rng: &mut StdRng, doc: u64, idx: u64) -> String {
    let mut v = json!({ "doc_id": doc, "idx": idx, "label": 0, "request": { "context": lies::text(rng), "continuation": lies::text(rng) } });
    if rng.random_range(0..3) == 0 {
        let k = ["doc_id", "idx", "label", "request"][rng.random_range(0..4)];
        v[k] = lies::json(rng, &v[k]);
    }
    v.to_string()
}

/// Scores every request of `task` on the tiny model, at a random window.
fn score(rng: &mut StdRng, task: &transact::eval::task::Task) -> Result<Outcome, String> {
    let lm = shared();
    let max_len = [1, 2, 5, 64][rng.random_range(0..4)];
    for doc in &task.docs {
        let Ok(enc) = doc.requests.iter().map(|r| encode(&lm.tokenizer, r, max_len)).collect::<anyhow::Result<Vec<_>>>() else { return Ok(Outcome::Refused) };
        match score_group(&lm.model, &enc) {
            Ok(scored) if scored.iter().any(|s| !s.loglik.is_finite()) => return Err("a non-finite log-likelihood was returned".into()),
            Ok(_) => {}
            Err(_) => return Ok(Outcome::Refused),
        }
    }
    Ok(Outcome::Accepted)
}

#[test]
fn task_files() {
    let dir = scratch("tasks");
    let file = dir.join("t.jsonl");
    let req_dir = dir.join("req");
    std::fs::create_dir_all(&req_dir).unwrap();
    run_target("tasks", 10_000, |rng, lies| {
        let simple = rng.random();
        let mut lines: Vec<String> = (0..rng.random_range(0..4))
            .map(|i| {
                let doc = rng.random_range(0..3);
                if simple { task_line(rng) } else { request_line(rng, doc, i) }
            })
            .collect();
        let mut bytes = lines.join("\n").into_bytes();
        if rng.random_range(0..6) == 0 {
            lines.clear();
            lies::bytes(rng, &mut bytes, 0, lies);
        }
        lies.push(String::from_utf8_lossy(&bytes).chars().take(300).collect());
        let task = if simple {
            std::fs::write(&file, &bytes).unwrap();
            transact::eval::task::load_simple_jsonl(&file)
        } else {
            let name = if rng.random() { "requests.jsonl" } else { "requests.jsonl.gz" };
            let _ = std::fs::remove_file(req_dir.join("requests.jsonl"));
            let _ = std::fs::remove_file(req_dir.join("requests.jsonl.gz"));
            std::fs::write(req_dir.join(name), &bytes).unwrap();
            transact::eval::task::load_task_dir(&req_dir)
        };
        match task {
            Err(_) => Ok(Outcome::Refused),
            Ok(t) => score(rng, &t),
        }
    });
}

#[test]
fn corpora() {
    let dir = scratch("corpora");
    run_target("corpora", 5000, |rng, lies| {
        let jsonl = rng.random();
        let path = dir.join(if jsonl { "c.jsonl" } else { "c.txt" });
        let mut bytes = if jsonl {
            (0..rng.random_range(0..4))
                .map(|_| if rng.random() { json!({ "text": lies::text(rng) }) } else { json!({ "text": lies::json(rng, &json!("a")) }) }.to_string())
                .collect::<Vec<_>>()
                .join("\n")
                .into_bytes()
        } else {
            lies::text(rng).into_bytes()
        };
        if rng.random_range(0..5) == 0 {
            lies::bytes(rng, &mut bytes, 0, lies);
        }
        lies.push(String::from_utf8_lossy(&bytes).chars().take(200).collect());
        std::fs::write(&path, &bytes).unwrap();
        let lm = shared();
        match transact::data::corpus::load(path.to_str().unwrap()) {
            Err(_) => Ok(Outcome::Refused),
            Ok(c) => {
                let seq_len = [1, 2, 3, 16][rng.random_range(0..4)];
                match transact::eval::perplexity::corpus_perplexity(&lm.model, &lm.tokenizer, &c, seq_len, Some(3), &Silent) {
                    Ok(r) if !r.token_perplexity.is_finite() => Err(format!("perplexity {}", r.token_perplexity)),
                    Ok(_) => Ok(Outcome::Accepted),
                    Err(_) => Ok(Outcome::Refused),
                }
            }
        }
    });
}
