//! Hidden-size pruning (the ablation): structurally exact, and a stock LLaMA in both formats.

use transact::Silent;
use transact::calibrate::blocks::{CalibSpec, prepare};
use transact::model::io::export::ExportFormat;
use transact::prune::hidden::{self, Axis};
use transact::prune::plan::TargetSpec;
use transact::load_model;
use transact::model::io::save_dtype::SaveDtype;

use crate::common::{assert_close, model, real_tokens, run_cli, scratch};
use crate::prune::job;

/// Removing half of the residual stream's channels computes what the dense model computes with
/// those channels zeroed wherever they enter the stream (the norm weights carry √(h/h')).
#[test]
fn hidden_sliced_model_equals_the_masked_dense_one() {
    let lm = model();
    let spec = CalibSpec { source: "mix".into(), samples: 8, seq_len: 64, seed: 0 };
    let data = prepare(&lm.tokenizer, &spec, &Silent).unwrap();
    let stats = hidden::collect(&lm.model, &data, 4, "test", &Silent).unwrap();
    let ids = real_tokens(128);
    for width in [288, 432] {
        let keep = hidden::choose(&stats, width).unwrap();
        assert_eq!(keep.len(), width);
        assert!(keep.windows(2).all(|w| w[0] < w[1]));
        let sliced = hidden::slice(&lm.model, &keep).unwrap();
        assert_eq!(sliced.config.hidden_size, width);
        let masked = hidden::mask(&lm.model, &keep).unwrap();
        assert_close(&format!("hidden {width}"), &masked.logits(&ids).unwrap(), &sliced.logits(&ids).unwrap());
    }
}

/// `--axis hidden --ratio 0.5` halves the non-embedding parameters exactly (576 → 288) and
/// writes an HF directory and a GGUF that load with the same logits.
#[test]
fn hidden_pruning_writes_stock_models() {
    let d = scratch();
    let out = d.path().join("h");
    let mut j = job(&out, 1, None, None);
    j.target = TargetSpec::Ratio(0.5);
    j.options.axis = Axis::Hidden;
    j.formats = vec![ExportFormat::Hf, ExportFormat::Gguf];
    j.dtype = SaveDtype::F32;
    let r = j.run(&Silent).unwrap();
    assert_eq!((r.before_hidden_size, r.after_hidden_size), (576, 288));
    assert!((r.removed_non_embedding - 0.5).abs() < 1e-3, "{}", r.removed_non_embedding);
    assert_eq!(r.shots[0].hidden_kept.as_ref().unwrap().len(), 288);
    let ids = real_tokens(64);
    let hf = load_model(&out, &candle_core::Device::Cpu).unwrap();
    let gguf = load_model(&out.join("model.gguf"), &candle_core::Device::Cpu).unwrap();
    assert_eq!(hf.model.config.hidden_size, 288);
    assert_close("HF vs GGUF", &hf.model.logits(&ids).unwrap(), &gguf.model.logits(&ids).unwrap());

    let g = crate::common::gguf_path();
    for (args, want) in [
        (vec!["--axis", "hidden", "--ratio", "0.5", "--shots", "2"], "one shot"),
        (vec!["--axis", "hidden", "--mlp-width", "512"], "ratio"),
        (vec!["--axis", "hidden", "--ratio", "0.5", "--compensate", "ls"], "compensation"),
    ] {
        let bad = d.path().join("bad");
        let mut all = vec!["prune", g.to_str().unwrap(), "--out", bad.to_str().unwrap()];
        all.extend(args.iter().copied());
        let (code, _, err) = run_cli(&all);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(want) && err.contains("--axis"), "{args:?}: {err}");
    }
}
