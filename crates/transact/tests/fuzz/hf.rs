//! Hugging Face directories: config.json, safetensors headers and data, the shard index,
//! tokenizer.json and tokenizer_config.json, each lied about as JSON fields or as bytes, then
//! loaded from a folder.

use candle_core::Device;
use rand::Rng;
use rand::rngs::StdRng;
use serde_json::Value as Json;

use crate::fixture::{HfDir, hf_seeds, scratch};
use crate::{Outcome, lies, run_target};

/// A JSON document with one field (at any depth) replaced, removed or duplicated.
fn lie_json(rng: &mut StdRng, doc: &mut Json, lies: &mut Vec<String>) {
    let mut path = String::new();
    let mut cur = &*doc;
    // Walk down a few levels into objects and arrays.
    for _ in 0..rng.random_range(1..4) {
        let (step, next) = match cur {
            Json::Object(m) if !m.is_empty() => {
                let (k, v) = m.iter().nth(rng.random_range(0..m.len())).unwrap();
                (k.replace('~', "~0").replace('/', "~1"), v)
            }
            Json::Array(a) if !a.is_empty() => {
                let i = rng.random_range(0..a.len());
                (i.to_string(), &a[i])
            }
            _ => break,
        };
        path = format!("{path}/{step}");
        cur = next;
    }
    lies.push(format!("json {path}"));
    let new = lies::json(rng, cur);
    *doc.pointer_mut(&path).unwrap() = new;
}

/// Re-serializes a safetensors file with its header lied about.
fn lie_safetensors(rng: &mut StdRng, b: &mut Vec<u8>, lies: &mut Vec<String>) {
    // A file an earlier lie already broke gets a byte lie instead.
    let n = b.get(..8).map_or(usize::MAX, |s| u64::from_le_bytes(s.try_into().unwrap()) as usize);
    let Some(Ok(mut header)) = b.get(8..8usize.saturating_add(n)).map(serde_json::from_slice::<Json>) else {
        return lies::bytes(rng, b, 0, lies);
    };
    if !header.is_object() {
        return lies::bytes(rng, b, 0, lies);
    }
    let data = b[8 + n..].to_vec();
    let mut header_text = match rng.random_range(0..4) {
        0 => {
            // A tensor's offsets, dtype or shape.
            let names: Vec<String> = header.as_object().unwrap().keys().filter(|k| *k != "__metadata__").cloned().collect();
            if names.is_empty() {
                return lies::bytes(rng, b, 0, lies);
            }
            let name = &names[rng.random_range(0..names.len())];
            let at = |field: &str| format!("/{}/{field}", name.replace('~', "~0").replace('/', "~1"));
            match rng.random_range(0..3) {
                0 => {
                    if let Some(v) = header.pointer_mut(&at(&format!("data_offsets/{}", rng.random_range(0..2)))) {
                        *v = Json::from(lies::int(rng, v.as_u64().unwrap_or(0)));
                    }
                }
                1 => {
                    if let Some(v) = header.pointer_mut(&at("dtype")) {
                        *v = Json::from(["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "Q4"][rng.random_range(0..9)]);
                    }
                }
                _ => {
                    if let Some(dims) = header.pointer_mut(&at("shape")).and_then(|d| d.as_array_mut()).filter(|d| !d.is_empty()) {
                        let d = rng.random_range(0..dims.len());
                        dims[d] = Json::from(lies::int(rng, dims[d].as_u64().unwrap_or(1)));
                    }
                }
            }
            let t = &header[name];
            lies.push(format!("safetensors {name}: {t}"));
            serde_json::to_string(&header).unwrap()
        }
        1 => {
            // A duplicate key: the text of one tensor entry written twice.
            let text = serde_json::to_string(&header).unwrap();
            let entry = header.as_object().unwrap().iter().find(|(k, _)| *k != "__metadata__").map(|(k, v)| format!("\"{k}\":{v}")).unwrap();
            lies.push("safetensors duplicate entry".into());
            text.replacen('{', &format!("{{{entry},"), 1)
        }
        _ => {
            lie_json(rng, &mut header, lies);
            serde_json::to_string(&header).unwrap()
        }
    };
    if header_text.is_empty() {
        header_text.push('{');
    }
    let stated = if rng.random_range(0..6) == 0 { lies::int(rng, header_text.len() as u64) } else { header_text.len() as u64 };
    *b = [stated.to_le_bytes().to_vec(), header_text.into_bytes(), data].concat();
}

fn lie(rng: &mut StdRng, dir: &mut HfDir, lies: &mut Vec<String>) {
    let i = rng.random_range(0..dir.len());
    let (name, bytes) = &mut dir[i];
    lies.push(format!("file {name}"));
    match rng.random_range(0..5) {
        0 => lies::bytes(rng, bytes, 0, lies),
        _ if name.ends_with(".safetensors") => {
            if rng.random() {
                lie_safetensors(rng, bytes, lies);
            } else {
                let n = bytes.get(..8).map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap()) as usize);
                lies::bytes(rng, bytes, n.saturating_add(8), lies);
            }
        }
        _ => match serde_json::from_slice::<Json>(bytes) {
            Ok(mut doc) => {
                if let Some(m) = doc.get_mut("weight_map").and_then(|m| m.as_object_mut()).filter(|m| !m.is_empty() && rng.random()) {
                    let k = m.keys().nth(rng.random_range(0..m.len())).unwrap().clone();
                    let to = ["../model.safetensors", "/etc/passwd", "model-00001-of-00009.safetensors", "missing.safetensors", ""][rng.random_range(0..5)];
                    lies.push(format!("weight_map {k} → {to}"));
                    m[&k] = Json::from(to);
                } else {
                    lie_json(rng, &mut doc, lies);
                }
                *bytes = serde_json::to_vec(&doc).unwrap();
            }
            Err(_) => lies::bytes(rng, bytes, 0, lies),
        },
    }
}

#[test]
fn hf_directory_reader() {
    let root = scratch("hf");
    let seeds = hf_seeds();
    let mut n = 0u64;
    run_target("hf", 10_000, |rng, lies| {
        let mut dir = seeds[rng.random_range(0..seeds.len())].clone();
        for _ in 0..rng.random_range(1..=3) {
            lie(rng, &mut dir, lies);
        }
        // A shard may also go missing.
        if rng.random_range(0..20) == 0 {
            let i = rng.random_range(0..dir.len());
            lies.push(format!("remove {}", dir[i].0));
            dir.remove(i);
        }
        n += 1;
        let path = root.join(format!("case{}", n % 2));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        for (name, bytes) in &dir {
            std::fs::write(path.join(name), bytes).unwrap();
        }
        match transact::load_model(&path, &Device::Cpu) {
            Err(_) => Ok(Outcome::Refused),
            Ok(lm) => {
                let ids = lm.tokenizer.encode("the theme <|endoftext|> \u{1f600}").map_err(|e| e.to_string())?;
                if let Some(id) = ids.iter().find(|&&i| i as usize >= lm.model.config.vocab_size) {
                    return Err(format!("token id {id} beyond the vocabulary of {}", lm.model.config.vocab_size));
                }
                let _ = lm.model.logits(&ids[..ids.len().min(8)]);
                Ok(Outcome::Accepted)
            }
        }
    });
}
