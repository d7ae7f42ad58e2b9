use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::Device;
use transact::data::corpus;
use transact::{LoadedModel, load_model};

pub const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The real model file; panics with the fix when the assets were not fetched.
pub fn gguf_path() -> PathBuf {
    let p = corpus::assets_dir().join(GGUF_NAME);
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-assets.sh before the tests (they need the real model)",
        p.display()
    );
    p
}

/// The real model, loaded once per test binary.
pub fn model() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| load_model(&gguf_path(), &Device::Cpu).expect("load the real GGUF"))
}

/// A real 256-token text: LAMBADA passages joined, cut to 256 tokens.
pub fn real_tokens(n: usize) -> Vec<u32> {
    let passages = corpus::lambada_passages().expect("LAMBADA passages (run scripts/fetch-assets.sh)");
    let mut ids = Vec::new();
    for p in passages {
        ids.extend(model().tokenizer.encode(&format!("{p} ")).unwrap());
        if ids.len() >= n {
            break;
        }
    }
    ids.truncate(n);
    ids
}

/// max |a − b| and max |a| over two logit tensors.
pub fn max_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> (f32, f32) {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let m = a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    (d, m)
}

/// Asserts logits agree to f32 rounding: max |Δ| ≤ 1e-3 · max |logit|.
pub fn assert_close(what: &str, a: &candle_core::Tensor, b: &candle_core::Tensor) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes differ");
    let (d, m) = max_diff(a, b);
    eprintln!("{what}: max |Δlogit| = {d:.3e} (max |logit| {m:.2}, ratio {:.2e})", d / m);
    assert!(d <= 1e-3 * m, "{what}: max |Δlogit| {d} > 1e-3 · {m}");
}

/// A fresh scratch directory under cargo's test tmpdir, removed when dropped.
pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Runs the `transact` binary; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_transact")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Logits `[t, vocab]` of `ids` from the reference forward (the model's definition), in f32.
pub fn reference_logits(ids: &[u32]) -> candle_core::Tensor {
    let m = &model().model;
    let x = candle_core::Tensor::new(ids, &m.device).unwrap().unsqueeze(0).unwrap();
    transact::model::reference::forward(&m.config, &m.weights, &x).unwrap().squeeze(0).unwrap()
}

/// Logits `[t, vocab]` computed by prefilling `prefill` tokens and then decoding the rest one
/// token at a time through the KV cache (the decode step's path).
pub fn cached_logits(m: &transact::Model, ids: &[u32], prefill: usize) -> candle_core::Tensor {
    transact::bench::cached_logits(m, ids, prefill).unwrap()
}
