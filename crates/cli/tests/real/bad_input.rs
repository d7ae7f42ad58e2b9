//! Every class of bad input gets a clear error naming the file, exit code 2, no panic. Each case
//! is a real file corrupted in one place.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::Device;
use transact::model::io::save_dtype::SaveDtype;
use transact::model::io::export::{ExportFormat, export};

use crate::common::{gguf_path, model, path_str, run_cli, scratch};

/// Runs `transact inspect` on `path` and checks the failure names the file and the problem.
pub(crate) fn assert_rejected(path: &Path, named: &str, expect: &[&str]) {
    let (code, _, err) = run_cli(&["inspect", path_str(path)]);
    eprintln!("{}: {}", path.display(), err.trim());
    assert_eq!(code, 2, "exit code for {}: {err}", path.display());
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(err.contains(named), "error does not name {named}: {err}");
    for e in expect {
        assert!(err.contains(e), "error lacks {e:?}: {err}");
    }
    // The library reports the same error as a value, without panicking.
    assert!(transact::load_model(path, &Device::Cpu).is_err());
}

/// A copy of the real GGUF with `edit` applied to its bytes.
pub(crate) fn corrupted_gguf(dir: &Path, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(gguf_path()).unwrap();
    edit(&mut bytes);
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap_or_else(|| panic!("{:?} not found", String::from_utf8_lossy(needle)))
}

/// One edit of the real GGUF's bytes.
pub(crate) type Edit = Box<dyn Fn(&mut Vec<u8>)>;

/// Each `(file name, edit, expected message)` applied to a copy of the real GGUF is refused.
pub(crate) fn assert_edits_rejected(dir: &Path, cases: Vec<(&str, Edit, &str)>) {
    for (name, edit, want) in cases {
        let p = corrupted_gguf(dir, name, |b| edit(b));
        assert_rejected(&p, name, &[want]);
    }
}

/// Position right after a GGUF length-prefixed string (a key or a tensor name).
pub(crate) fn after_string(bytes: &[u8], s: &str) -> usize {
    let mut needle = (s.len() as u64).to_le_bytes().to_vec();
    needle.extend(s.as_bytes());
    find(bytes, &needle) + needle.len()
}

/// Offset of a tensor info's dtype field (after the name, n_dims and the u64 dims).
pub(crate) fn tensor_dtype_pos(bytes: &[u8], name: &str) -> usize {
    let p = after_string(bytes, name);
    let n_dims = u32::from_le_bytes(bytes[p..p + 4].try_into().unwrap()) as usize;
    p + 4 + 8 * n_dims
}

#[test]
fn gguf_wrong_magic() {
    let d = scratch();
    let p = corrupted_gguf(d.path(), "magic.gguf", |b| b[..4].copy_from_slice(b"GGUX"));
    assert_rejected(&p, "magic.gguf", &["not a GGUF file"]);
}

#[test]
fn gguf_truncated() {
    let d = scratch();
    let p = corrupted_gguf(d.path(), "trunc_header.gguf", |b| b.truncate(4096));
    assert_rejected(&p, "trunc_header.gguf", &["invalid GGUF header"]);
    let p = corrupted_gguf(d.path(), "trunc_data.gguf", |b| b.truncate(b.len() * 3 / 5));
    assert_rejected(&p, "trunc_data.gguf", &["tensor `", "extends beyond the end of the file"]);
}

#[test]
fn gguf_tensor_offset_past_end() {
    let d = scratch();
    let p = corrupted_gguf(d.path(), "offset.gguf", |b| {
        let at = tensor_dtype_pos(b, "blk.0.attn_q.weight") + 4;
        b[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    });
    assert_rejected(&p, "offset.gguf", &["blk.0.attn_q.weight", "extends beyond the end of the file"]);
}

#[test]
fn gguf_missing_tensor() {
    let d = scratch();
    let p = corrupted_gguf(d.path(), "missing.gguf", |b| {
        let at = after_string(b, "blk.5.ffn_up.weight") - "p.weight".len();
        b[at] = b'X';
    });
    assert_rejected(&p, "missing.gguf", &["missing tensor `blk.5.ffn_up.weight`"]);
}

#[test]
fn gguf_shape_disagrees_with_metadata() {
    let d = scratch();
    let p = corrupted_gguf(d.path(), "shape.gguf", |b| {
        let at = after_string(b, "llama.feed_forward_length");
        assert_eq!(u32::from_le_bytes(b[at..at + 4].try_into().unwrap()), 4, "u32 value type");
        b[at + 4..at + 8].copy_from_slice(&1537u32.to_le_bytes());
    });
    assert_rejected(&p, "shape.gguf", &["blk.0.ffn_gate.weight", "shape [1536, 576]", "[1537, 576]"]);
}

#[test]
fn gguf_unsupported_architecture() {
    let d = scratch();
    let p = corrupted_gguf(d.path(), "arch.gguf", |b| {
        let at = after_string(b, "general.architecture") + 4 + 8;
        assert_eq!(&b[at..at + 5], b"llama");
        b[at..at + 5].copy_from_slice(b"qwen2");
    });
    assert_rejected(&p, "arch.gguf", &["unsupported architecture `qwen2`"]);
}

#[test]
fn gguf_unsupported_tensor_type() {
    let d = scratch();
    let p = corrupted_gguf(d.path(), "dtype.gguf", |b| {
        let at = tensor_dtype_pos(b, "blk.0.attn_q.weight");
        assert_eq!(u32::from_le_bytes(b[at..at + 4].try_into().unwrap()), 3, "Q4_1");
        b[at..at + 4].copy_from_slice(&9u32.to_le_bytes()); // Q8_1: an activation type, never a weight
    });
    assert_rejected(&p, "dtype.gguf", &["blk.0.attn_q.weight", "unsupported type Q8_1"]);
}

/// Header lies about a tensor's type, shape or offset would read its neighbours' bytes as
/// weights; each is refused before any weight is read.
#[test]
fn gguf_tensor_extents_are_checked() {
    let d = scratch();
    let set_u32 = |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let shift_offset = |b: &mut Vec<u8>, by: u64| {
        let at = tensor_dtype_pos(b, "blk.0.attn_q.weight") + 4;
        let off = u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        b[at..at + 8].copy_from_slice(&(off + by).to_le_bytes());
    };
    let cases: Vec<(&str, Edit, &str)> = vec![
        // Q4_1 → Q5_0: a larger block, so the tensor runs into the next one.
        ("q5_0.gguf", Box::new(move |b| set_u32(b, tensor_dtype_pos(b, "blk.0.attn_q.weight"), 6)), "overlaps"),
        // Q4_1 → F32: 6.4 times the bytes.
        ("f32.gguf", Box::new(move |b| set_u32(b, tensor_dtype_pos(b, "blk.0.attn_q.weight"), 0)), "overlaps"),
        ("offset1.gguf", Box::new(move |b| shift_offset(b, 1)), "not a multiple of the alignment 32"),
        // Moved by one block of padding: a gap before it, an overlap after it; the gap comes first.
        ("offset32.gguf", Box::new(move |b| shift_offset(b, 32)), "32 unused bytes lie between"),
        // Q8_0 → Q4_1 for the embedding: fewer bytes than the file gives it.
        ("q4_1-embd.gguf", Box::new(move |b| set_u32(b, tensor_dtype_pos(b, "token_embd.weight"), 3)), "unused bytes lie between tensor `token_embd.weight`"),
        ("beyond.gguf", Box::new(move |b| shift_offset(b, 1 << 40)), "extends beyond the end of the file"),
    ];
    assert_edits_rejected(d.path(), cases);
}

#[test]
fn gguf_missing_metadata() {
    let d = scratch();
    let p = corrupted_gguf(d.path(), "meta.gguf", |b| {
        let at = after_string(b, "llama.embedding_length") - 1;
        b[at] = b'X';
    });
    assert_rejected(&p, "meta.gguf", &["missing metadata `llama.embedding_length`"]);
}

#[test]
fn missing_path() {
    let d = scratch();
    assert_rejected(&d.path().join("nope.gguf"), "nope.gguf", &["no such file or directory"]);
}

/// An f16 HF export of the real model, made once per test run.
pub(crate) fn hf_fixture() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixture-hf-f16");
        let _ = std::fs::remove_dir_all(&dir);
        export(model(), &dir, ExportFormat::Hf, SaveDtype::F16, false).unwrap();
        dir
    })
}

/// A copy of the HF fixture: files linked, except those `edit` rewrites.
pub(crate) fn corrupted_hf(root: &Path, name: &str, file: &str, edit: impl FnOnce(Vec<u8>) -> Vec<u8>) -> PathBuf {
    let src = hf_fixture();
    let dir = root.join(name);
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != file {
            std::os::unix::fs::symlink(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    if let Ok(bytes) = std::fs::read(src.join(file)) {
        let edited = edit(bytes);
        if !edited.is_empty() {
            std::fs::write(dir.join(file), edited).unwrap();
        }
    }
    dir
}

pub(crate) fn edit_config(f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> impl FnOnce(Vec<u8>) -> Vec<u8> {
    move |bytes| {
        let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        f(v.as_object_mut().unwrap());
        serde_json::to_vec_pretty(&v).unwrap()
    }
}

#[test]
fn hf_config_problems() {
    let d = scratch();
    let p = corrupted_hf(d.path(), "nofield", "config.json", edit_config(|c| {
        c.remove("hidden_size");
    }));
    assert_rejected(&p, "config.json", &["missing field `hidden_size`"]);
    let p = corrupted_hf(d.path(), "arch", "config.json", edit_config(|c| {
        c.insert("model_type".into(), "qwen2".into());
    }));
    assert_rejected(&p, "config.json", &["unsupported architecture `qwen2`"]);
    let p = corrupted_hf(d.path(), "shape", "config.json", edit_config(|c| {
        c.insert("intermediate_size".into(), 1537.into());
    }));
    assert_rejected(&p, "model.safetensors", &["model.layers.0.mlp.gate_proj.weight", "shape [1536, 576]"]);
    let p = corrupted_hf(d.path(), "badjson", "config.json", |mut b| {
        b.truncate(b.len() / 2);
        b
    });
    assert_rejected(&p, "config.json", &["EOF"]);
    let p = corrupted_hf(d.path(), "notok", "tokenizer.json", |_| Vec::new());
    assert_rejected(&p, "tokenizer.json", &["missing"]);
}

#[test]
fn hf_safetensors_problems() {
    let d = scratch();
    let p = corrupted_hf(d.path(), "missing", "model.safetensors", |mut b| {
        let at = find(&b, b"model.layers.3.mlp.up_proj.weight") + "model.layers.3.mlp.up_pr".len();
        b[at] = b'X';
        b
    });
    assert_rejected(&p, "missing", &["missing tensor `model.layers.3.mlp.up_proj.weight`"]);
    let p = corrupted_hf(d.path(), "trunc", "model.safetensors", |mut b| {
        b.truncate(b.len() / 2);
        b
    });
    assert_rejected(&p, "model.safetensors", &["invalid safetensors file"]);
    let p = corrupted_hf(d.path(), "dtype", "model.safetensors", |mut b| {
        let name = find(&b, b"\"model.layers.2.self_attn.k_proj.weight\"");
        let at = name + find(&b[name..], b"\"F16\"") + 1;
        b[at] = b'I';
        b
    });
    assert_rejected(&p, "model.safetensors", &["model.layers.2.self_attn.k_proj.weight", "unsupported dtype I16"]);
    let p = corrupted_hf(d.path(), "none", "model.safetensors", |_| Vec::new());
    assert_rejected(&p, "none", &["no model.safetensors"]);
}

/// An output path that cannot be written is refused before any work (no roof probe, no model
/// load, no calibration), naming the path; nothing is written. So is a count of zero repetitions
/// or docs.
#[test]
fn unwritable_outputs_fail_before_the_work() {
    let d = scratch();
    let file = d.path().join("a-file");
    std::fs::write(&file, b"not a folder").unwrap();
    let under = file.join("sub").join("out.json");
    let gguf = gguf_path();
    for args in [
        vec!["bench", path_str(&gguf), "--json", path_str(&under)],
        vec!["calibrate", path_str(&gguf), "--out", path_str(&under)],
        vec!["eval", path_str(&gguf), "--tasks", "piqa", "--limit", "1", "--json", path_str(&under)],
        vec!["prune", path_str(&gguf), "--ratio", "0.5", "--out", path_str(&under)],
    ] {
        let (code, _, err) = run_cli(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(&format!("{}: cannot be written", under.display())) && err.contains("is not a directory"), "{args:?}: {err}");
        assert!(!err.contains("roofs") && !err.contains("loaded"), "{args:?} started working: {err}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"not a folder");
    for args in [vec!["bench", path_str(&gguf), "--repeats", "0"], vec!["eval", path_str(&gguf), "--tasks", "piqa", "--limit", "0"], vec!["compare", path_str(&gguf), path_str(&gguf), "--limit", "0"]] {
        let (code, _, err) = run_cli(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("must be at least 1") && !err.contains("roofs") && !err.contains("loaded"), "{args:?}: {err}");
    }
    // A pack whose logits would not fit in memory is refused before the model loads.
    let (code, _, err) = run_cli(&["eval", path_str(&gguf), "--tasks", "piqa", "--pack-tokens", "100000000"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("must be at most 8192") && !err.contains("loaded"), "{err}");
}
