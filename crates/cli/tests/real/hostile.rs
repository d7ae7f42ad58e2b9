//! Hostile input and faults (issue 23), each on the real model: header lies that drive allocation
//! or resolve silently, non-finite weights and results, lm-eval's whitespace rule, and outputs
//! under races, kills and truncation.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file::Content;
use candle_core::{Device, Tensor};
use transact::eval::task::Request;
use transact::model::forward::Model;

use crate::bad_input::{Edit, after_string, assert_edits_rejected, assert_rejected, corrupted_gguf, corrupted_hf, find, tensor_dtype_pos};
use crate::common::{gguf_path, model, path_str, run_cli, scratch};

fn set_u32_value(b: &mut [u8], key: &str, v: u32) {
    let at = after_string(b, key);
    assert_eq!(u32::from_le_bytes(b[at..at + 4].try_into().unwrap()), 4, "`{key}` is a u32");
    b[at + 4..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn rename_key(b: &mut [u8], from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let at = after_string(b, from) - from.len();
    b[at..at + to.len()].copy_from_slice(to.as_bytes());
}

/// Where tensor `name`'s bytes start in the real file.
fn tensor_data_pos(name: &str) -> usize {
    let content = Content::read(&mut std::fs::File::open(gguf_path()).unwrap()).unwrap();
    (content.tensor_data_offset + content.tensor_infos[name].offset) as usize
}

/// Counts and offsets the header states are checked before they size an allocation or resolve a
/// duplicate; every lie names its field.
#[test]
fn gguf_header_lies() {
    let d = scratch();
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("layers-huge.gguf", Box::new(|b| set_u32_value(b, "llama.block_count", u32::MAX)), "`llama.block_count` is 4294967295 (1 to 4096)"),
        ("layers-zero.gguf", Box::new(|b| set_u32_value(b, "llama.block_count", 0)), "`llama.block_count` is 0"),
        // Fewer layers than the file holds: the rest would be silently ignored.
        ("layers-29.gguf", Box::new(|b| set_u32_value(b, "llama.block_count", 29)), "first `blk.29."),
        // A second block_count (candle keeps the last one: a 3-layer model).
        ("dup-key.gguf", Box::new(|b| rename_key(b, "general.file_type", "llama.block_count")), "metadata key `llama.block_count` appears twice"),
        ("dup-tensor.gguf", Box::new(|b| rename_key(b, "blk.1.attn_q.weight", "blk.0.attn_q.weight")), "tensor `blk.0.attn_q.weight` appears twice"),
        (
            "align0.gguf",
            Box::new(|b| {
                rename_key(b, "general.file_type", "general.alignment");
                set_u32_value(b, "general.alignment", 0);
            }),
            "`general.alignment` is 0, not a power of two",
        ),
        ("heads-huge.gguf", Box::new(|b| set_u32_value(b, "llama.attention.head_count", 1 << 30)), "`llama.attention.head_count` is 1073741824"),
        ("kv-heads.gguf", Box::new(|b| set_u32_value(b, "llama.attention.head_count_kv", 2)), "not divisible by 2 KV heads"),
        ("ctx0.gguf", Box::new(|b| set_u32_value(b, "llama.context_length", 0)), "the context length is 0"),
        (
            "theta-inf.gguf",
            Box::new(|b| {
                let at = after_string(b, "llama.rope.freq_base") + 4;
                b[at..at + 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
            }),
            "rope theta) is inf",
        ),
        (
            "eps-nan.gguf",
            Box::new(|b| {
                let at = after_string(b, "llama.attention.layer_norm_rms_epsilon") + 4;
                b[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
            }),
            "RMSNorm epsilon is NaN",
        ),
        ("tensors-count.gguf", Box::new(|b| b[8..16].copy_from_slice(&u64::MAX.to_le_bytes())), "cannot hold them"),
        (
            "dims-zero.gguf",
            Box::new(|b| {
                let at = tensor_dtype_pos(b, "blk.0.attn_q.weight") - 8;
                b[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
            }),
            "has size 0 in dimension 1",
        ),
        (
            "dims-wrap.gguf",
            Box::new(|b| {
                let at = tensor_dtype_pos(b, "blk.0.attn_q.weight") - 16;
                b[at..at + 16].copy_from_slice(&[u64::MAX.to_le_bytes(), (1u64 << 62).to_le_bytes()].concat());
            }),
            "more values than the file can hold",
        ),
    ];
    assert_edits_rejected(d.path(), cases);
}

/// A NaN or infinite weight is refused at load, named with its position, in every format and
/// type: a quantized block's scale, an f32 norm, an f16 safetensors value.
#[test]
fn non_finite_weights_are_refused_at_load() {
    let d = scratch();
    // Q4_1 blocks are 20 bytes for 32 values; block 20 of a 576-wide row starts row 1, column 64.
    let at = tensor_data_pos("blk.3.attn_k.weight") + 20 * 20;
    let p = corrupted_gguf(d.path(), "nan-scale.gguf", |b| b[at..at + 2].copy_from_slice(&half::f16::NAN.to_le_bytes()));
    assert_rejected(&p, "nan-scale.gguf", &["tensor `blk.3.attn_k.weight` holds a NaN or infinite value at row 1, column 64"]);
    let at = tensor_data_pos("blk.7.ffn_norm.weight") + 4 * 5;
    let p = corrupted_gguf(d.path(), "inf-norm.gguf", |b| b[at..at + 4].copy_from_slice(&f32::INFINITY.to_le_bytes()));
    assert_rejected(&p, "inf-norm.gguf", &["tensor `blk.7.ffn_norm.weight` holds a NaN or infinite value at row 0, column 5"]);

    let name = "model.layers.1.mlp.down_proj.weight";
    let p = corrupted_hf(d.path(), "nan-hf", "model.safetensors", |mut b| {
        let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
        let lo = header[name]["data_offsets"][0].as_u64().unwrap() as usize;
        let at = 8 + n + lo + 2 * (1536 * 2 + 7); // row 2, column 7 of [576, 1536] f16
        b[at..at + 2].copy_from_slice(&half::f16::NEG_INFINITY.to_le_bytes());
        b
    });
    assert_rejected(&p, "nan-hf", &[&format!("tensor `{name}` holds a NaN or infinite value at row 2, column 7")]);
}

/// A tokenizer that can produce ids past the embedding, and safetensors lies: duplicate header
/// keys, a weight_map that sends a shard outside the folder.
#[test]
fn hf_lies() {
    let d = scratch();
    let p = corrupted_hf(d.path(), "big-tokenizer", "tokenizer.json", |b| {
        let mut v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        let mut extra = v["added_tokens"][0].clone();
        extra["id"] = 49152.into();
        extra["content"] = "<|extra|>".into();
        v["added_tokens"].as_array_mut().unwrap().push(extra);
        serde_json::to_vec(&v).unwrap()
    });
    assert_rejected(&p, "big-tokenizer", &["the tokenizer has 49153 tokens but the model's vocabulary has 49152 rows"]);
    // As many tokens as rows, but one id far past them.
    let p = corrupted_hf(d.path(), "sparse-ids", "tokenizer.json", |b| {
        let mut v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        v["model"]["vocab"]["the"] = 1_000_000.into();
        serde_json::to_vec(&v).unwrap()
    });
    assert_rejected(&p, "sparse-ids", &["has id 1000000, outside the model's vocabulary of 49152"]);
    // Two inputs on which the `tokenizers` crate itself panics (found by the fuzzer): a file cut
    // inside its decoder, and a subword prefix longer than a merged token.
    let p = corrupted_hf(d.path(), "cut-decoder", "tokenizer.json", |mut b| {
        b.truncate(find(&b, b"\"decoder\"") + 20);
        b
    });
    assert_rejected(&p, "tokenizer.json", &["cannot parse tokenizer"]);
    let p = corrupted_hf(d.path(), "prefix", "tokenizer.json", |b| {
        let mut v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        v["model"]["continuing_subword_prefix"] = "x".repeat(64).into();
        serde_json::to_vec(&v).unwrap()
    });
    assert_rejected(&p, "tokenizer.json", &["cannot parse tokenizer", "failed"]);
    let p = corrupted_hf(d.path(), "dup", "model.safetensors", |mut b| {
        let at = find(&b, b"\"model.layers.1.mlp.up_proj.weight\"") + "\"model.layers.".len();
        b[at] = b'2';
        b
    });
    assert_rejected(&p, "model.safetensors", &["the header lists `model.layers.2.mlp.up_proj.weight` twice"]);
    let p = corrupted_hf(d.path(), "traversal", "model.safetensors.index.json", |b| b);
    let index = serde_json::json!({"weight_map": {"model.embed_tokens.weight": "../model.safetensors"}});
    std::fs::write(p.join("model.safetensors.index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    assert_rejected(&p, "model.safetensors.index.json", &["names `../model.safetensors`, not a .safetensors file in this folder"]);
}

/// lm-eval moves all trailing whitespace of a context (`rstrip()`) onto the continuation: a chat
/// prompt ending in "\n" is scored as context without it and continuation starting with it.
#[test]
fn trailing_whitespace_moves_like_lm_eval() {
    use transact::eval::scorer::encode;
    let tok = &model().tokenizer;
    let r = |c: &str, k: &str| Request { context: c.into(), continuation: k.into() };
    for ws in ["\n", " \n", "\n\t ", "\u{a0}\n", " "] {
        let a = encode(tok, &r(&format!("<|im_start|>user\nQuestion?<|im_end|>{ws}"), " Paris"), 2048).unwrap();
        let b = encode(tok, &r("<|im_start|>user\nQuestion?<|im_end|>", &format!("{ws} Paris")), 2048).unwrap();
        assert_eq!((a.ids, a.cont_start), (b.ids, b.cont_start), "{ws:?}");
    }
    let (code, _, err) = run_cli(&["eval", path_str(&gguf_path()), "--tasks", "piqa", "--max-length", "0"]);
    assert!(code == 2 && err.contains("must be at least 1") && !err.contains("panicked"), "{err}");
}

/// NaN anywhere in a forward is an error in evaluation, perplexity and generation, not a number.
#[test]
fn nan_results_are_errors() {
    let lm = model();
    let mut weights = lm.model.weights.clone();
    let q = &weights.layers[4].q_proj;
    weights.layers[4].q_proj = Tensor::full(f32::NAN, q.dims(), &Device::Cpu).unwrap();
    let bad = Model::new(lm.model.config.clone(), weights);
    let ids = lm.tokenizer.encode("The capital of France is").unwrap();
    let e = transact::eval::perplexity::sequence_nll(&bad, &ids).unwrap_err().to_string();
    assert!(e.contains("negative log-likelihood is NaN"), "{e}");
    let enc = transact::eval::scorer::encode(&lm.tokenizer, &Request { context: "The capital of France is".into(), continuation: " Paris".into() }, 2048).unwrap();
    let e = transact::eval::scorer::score_group(&bad, &[enc]).unwrap_err().to_string();
    assert!(e.contains("log-likelihood is NaN"), "{e}");
    let logits = bad.logits(&ids).unwrap();
    let last = logits.get(logits.dim(0).unwrap() - 1).unwrap();
    let e = transact::model::sample::Sampler::greedy().sample(&last).unwrap_err().to_string();
    assert!(e.contains("the next-token logits hold NaN"), "{e}");
    // Finite but huge weights: every log-likelihood is finite, their exp() is not.
    let mut weights = lm.model.weights.clone();
    weights.final_norm = (&weights.final_norm * 1e30).unwrap();
    let huge = Model::new(lm.model.config.clone(), weights);
    let corpus = transact::data::corpus::Corpus { name: "text".into(), source: "test".into(), docs: vec!["The capital of France is Paris. ".repeat(8)] };
    let e = transact::eval::perplexity::corpus_perplexity(&huge, &lm.tokenizer, &corpus, 32, Some(1), &transact::Silent).unwrap_err().to_string();
    assert!(e.contains("the token perplexity of corpus `text` is inf"), "{e}");
}

fn spawn(args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_transact")).args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
}

fn finish(c: std::process::Child) -> (Option<i32>, String) {
    let out = c.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Two prunes to one `--out` without `--force`, started together: exactly one writes it, the
/// other fails with a clear error, and no temporary is left.
#[test]
fn concurrent_prunes_to_one_output() {
    let d = scratch();
    let out = d.path().join("half");
    let gguf = gguf_path();
    let args = ["prune", path_str(&gguf), "--out", path_str(&out), "--ratio", "0.5", "--samples", "4", "--seq-len", "64", "--format", "gguf"];
    let a = spawn(&args);
    std::thread::sleep(Duration::from_millis(200));
    let b = spawn(&args);
    let (ra, rb) = (finish(a), finish(b));
    let codes = [ra.0, rb.0];
    assert!(codes.contains(&Some(0)) && codes.contains(&Some(2)), "{ra:?} {rb:?}");
    let loser = if ra.0 == Some(2) { &ra.1 } else { &rb.1 };
    assert!(loser.contains("already exists") && !loser.contains(".tmp-") && !loser.contains("panicked"), "{loser}");
    assert!(out.join("model.gguf").exists());
    let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, [std::ffi::OsString::from("half")], "{left:?}");
}

/// A run killed while it writes leaves its temporary beside the output; the next run writing
/// that output removes it and succeeds.
#[test]
fn killed_export_is_cleaned_up_by_the_next_run() {
    let d = scratch();
    let out = d.path().join("f32");
    let gguf = gguf_path();
    let args = ["convert", path_str(&gguf), path_str(&out), "--to", "hf", "--dtype", "f32"];
    let mut c = spawn(&args);
    let tmp = d.path().join(format!(".f32.tmp-{}", c.id()));
    let t0 = Instant::now();
    // Killed once it has started writing (the model loads in ~0.3 s; f32 files take seconds).
    while !tmp.exists() && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300));
    c.kill().unwrap();
    c.wait().unwrap();
    assert!(tmp.exists() && !out.exists(), "the kill came too late to test anything");
    let (code, _, err) = run_cli(&args);
    assert_eq!(code, 0, "{err}");
    assert!(!tmp.exists() && out.join("model.safetensors").exists());
}

/// Truncating the model file while it loads is an error (or the load finished first), never a
/// signal: files are read, not mapped.
#[test]
fn truncation_while_loading_is_an_error() {
    let d = scratch();
    let copy = d.path().join("model.gguf");
    for delay_ms in [0u64, 20, 50, 80, 120, 160, 220, 300] {
        std::fs::copy(gguf_path(), &copy).unwrap();
        let c = spawn(&["inspect", path_str(&copy)]);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let f = std::fs::OpenOptions::new().write(true).open(&copy).unwrap();
        f.set_len(f.metadata().unwrap().len() / 2).unwrap();
        let (code, err) = finish(c);
        eprintln!("truncated after {delay_ms} ms: exit {code:?}: {}", err.lines().last().unwrap_or(""));
        assert!(matches!(code, Some(0) | Some(2)), "killed by a signal or panicked: {code:?} {err}");
        assert!(!err.contains("panicked"), "{err}");
        if code == Some(2) {
            assert!(err.contains(path_str(&copy)), "{err}");
        }
    }
}
