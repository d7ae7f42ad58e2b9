//! GGUF in every llama.cpp file type we write: each tensor typed by llama-quantize's rule, loaded
//! back by our engine close to the f32 model; `auto` keeps the source's type, so a pruned model
//! is smaller on disk than the model it came from.

use candle_core::Device;
use candle_core::quantized::gguf_file::Content;
use transact::load_model;
use transact::model::choice::Choice;
use transact::model::io::export::{ExportFormat, export};
use transact::model::io::save_dtype::SaveDtype;
use transact::model::io::storage::ggml_name;
use transact::model::weights::TensorRole;
use transact::prune::plan::{GqaMode, Widths};
use transact::prune::scorer::ScorerKind;
use transact::prune::slice::slice;

use crate::common::{max_diff, model, real_tokens, scratch};
use crate::prune::keeps;

/// The stored type of every tensor, by role.
fn stored_types(path: &std::path::Path, cfg: &transact::ModelConfig) -> Vec<(TensorRole, &'static str)> {
    let content = Content::read(&mut std::fs::File::open(path).unwrap()).unwrap();
    TensorRole::all(cfg).into_iter().map(|r| (r, ggml_name(content.tensor_infos[&r.gguf_name()].ggml_dtype))).collect()
}

/// Greedy choices of `b` that agree with `a`'s.
fn argmax_agreement(a: &candle_core::Tensor, b: &candle_core::Tensor) -> usize {
    let (x, y) = (a.argmax(1).unwrap().to_vec1::<u32>().unwrap(), b.argmax(1).unwrap().to_vec1::<u32>().unwrap());
    x.iter().zip(&y).filter(|(p, q)| p == q).count()
}

#[test]
fn every_gguf_type_follows_llama_quantize_and_loads() {
    let lm = model();
    let cfg = &lm.model.config;
    let ids = real_tokens(64);
    let reference = lm.model.logits(&ids).unwrap();
    let d = scratch();
    let mut last_size = u64::MAX;
    // From the most bits to the fewest: files shrink, logits drift more.
    for &dtype in SaveDtype::ALL.iter().filter(|t| **t != SaveDtype::Auto) {
        let out = d.path().join(format!("{}.gguf", dtype.name()));
        let w = export(lm, &out, ExportFormat::Gguf, dtype, false).unwrap();
        assert_eq!(w.dtype, dtype.name());
        for (role, ty) in stored_types(&out, cfg) {
            assert_eq!(ty, ggml_name(dtype.tensor_type(role, cfg).0), "{} {}", dtype.name(), role.gguf_name());
        }
        let back = load_model(&out, &Device::Cpu).unwrap();
        assert_eq!(back.storage.file_type, Some(dtype.file_type()));
        let logits = back.model.logits(&ids).unwrap();
        let (drift, m) = max_diff(&reference, &logits);
        let agree = argmax_agreement(&reference, &logits);
        let size = std::fs::metadata(&out).unwrap().len();
        eprintln!("{:<7} {:>6.1} MB  max |Δlogit| {drift:.3} of {m:.1}, argmax {agree}/64", dtype.name(), size as f64 / 1e6);
        assert!(agree >= if dtype.is_float() { 62 } else { 32 }, "{}: argmax agrees on {agree}/64", dtype.name());
        if dtype == SaveDtype::F32 {
            assert_eq!(drift, 0.0);
        }
        if matches!(dtype, SaveDtype::Q8_0 | SaveDtype::Q5_0 | SaveDtype::Q4_0) {
            assert!(size < last_size, "{} is not smaller than the type before it", dtype.name());
            last_size = size;
        }
    }
}

#[test]
fn pruned_auto_gguf_keeps_the_source_type_and_is_smaller() {
    let lm = model();
    // MLP 682 as the README's 50 % model: no block type divides ffn_down's rows.
    let k = keeps(ScorerKind::Transact, Widths { mha: 384, mlp: 682 }, GqaMode::Groups);
    let pruned = crate::prune::with_model(slice(&lm.model, &k).unwrap());
    let d = scratch();
    let gguf = d.path().join("p.gguf");
    let w = export(&pruned, &gguf, ExportFormat::Gguf, SaveDtype::Auto, false).unwrap();
    assert_eq!(w.dtype, "q4_1", "{w:?}");
    assert!(w.auto.as_deref().unwrap().contains("source"), "{w:?}");
    assert_eq!(w.fallbacks.len(), 2, "{:?}", w.fallbacks);
    assert!(w.fallbacks.iter().any(|f| f.contains("30 tensors") && f.contains("682") && f.ends_with("F16")), "{:?}", w.fallbacks);
    let types = stored_types(&gguf, &pruned.model.config);
    assert!(types.iter().all(|(r, t)| match r {
        TensorRole::Down(_) => *t == "F16",
        TensorRole::Embed => *t == "Q8_0",
        r if r.is_norm() => *t == "F32",
        _ => *t == "Q4_1",
    }));
    let source = std::fs::metadata(crate::common::gguf_path()).unwrap().len();
    let size = std::fs::metadata(&gguf).unwrap().len();
    assert!(size < source, "pruned {size} B is not smaller than the source's {source} B");
    let ids = real_tokens(64);
    let (a, b) = (pruned.model.logits(&ids).unwrap(), load_model(&gguf, &Device::Cpu).unwrap().model.logits(&ids).unwrap());
    assert!(argmax_agreement(&a, &b) >= 44);
    // HF: bf16, the Hub's convention, since the source is not an f32 or f16 HF model.
    let hf = d.path().join("hf");
    let w = export(&pruned, &hf, ExportFormat::Hf, SaveDtype::Auto, false).unwrap();
    assert_eq!(w.dtype, "bf16");
    let back = load_model(&hf, &Device::Cpu).unwrap();
    assert_eq!(back.storage.dominant_dtype(), Some("BF16"));
    // The library refuses a base model that is no Hub id before any work (the card's YAML).
    let job = transact::prune::job::PruneJob { base_model: Some("x\nlicense: evil/y".into()), ..crate::prune::job(&d.path().join("j"), 1, None, None) };
    let e = format!("{:#}", job.run(&transact::Silent).unwrap_err());
    assert!(e.contains("not a Hub id"), "{e}");
    // Re-exported from that HF directory, `auto` keeps bf16.
    let again = d.path().join("again");
    assert_eq!(export(&back, &again, ExportFormat::Hf, SaveDtype::Auto, false).unwrap().dtype, "bf16");
}
