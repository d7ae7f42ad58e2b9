use std::path::Path;

use candle_core::Device;
use transact::Silent;
use transact::calibrate::activations::{ActivationStats, collect};
use transact::calibrate::blocks::{CalibSpec, prepare};
use transact::data::corpus::Corpus;
use transact::eval::perplexity::corpus_perplexity;
use transact::model::io::save_dtype::SaveDtype;
use transact::model::io::export::{ExportFormat, export};
use transact::model::io::load::{LoadedModel, model_sha256};
use transact::prune::choose::{LayerKeep, score_and_choose};
use transact::prune::job::PruneJob;
use transact::prune::plan::{AttnUnit, GqaMode, TargetSpec, Units, Widths};
use transact::prune::scorer::{self, LayerInput, ScorerKind};
use transact::prune::shots::PruneOptions;
use transact::prune::slice::{mask, slice};
use transact::{RopeLayout, load_model};

use crate::common::{assert_close, cached_logits, gguf_path, max_diff, model, path_str, real_tokens, run_cli, scratch};

fn small_calib() -> CalibSpec {
    CalibSpec { source: "mix".into(), samples: 8, seq_len: 64, seed: 0 }
}

fn dense_stats() -> &'static ActivationStats {
    static S: std::sync::OnceLock<ActivationStats> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        let lm = model();
        let data = prepare(&lm.tokenizer, &small_calib(), &Silent).unwrap();
        collect(&lm.model, &data, "test", 4, "test", &Silent).unwrap()
    })
}

pub fn keeps(kind: ScorerKind, w: Widths, gqa: GqaMode) -> Vec<LayerKeep> {
    keeps_for(&model().model, kind, w, Units { attn: AttnUnit::Head, gqa, head_dim_multiple: 2 })
}

fn keeps_for(m: &transact::Model, kind: ScorerKind, w: Widths, u: Units) -> Vec<LayerKeep> {
    let s = scorer::build(kind, None, 0);
    let st = dense_stats();
    m.config
        .layers
        .iter()
        .enumerate()
        .map(|(l, shape)| {
            let input = LayerInput { layer: l, stats: &st.layers[l], weights: &m.weights.layers[l], tokens: st.meta.tokens };
            score_and_choose(s.as_ref(), &input, shape, m.config.rope_layout, w, u).unwrap().0
        })
        .collect()
}

pub fn with_model(m: transact::Model) -> LoadedModel {
    let lm = model();
    LoadedModel { model: m, tokenizer: lm.tokenizer.clone(), path: lm.path.clone(), format: lm.format, gguf_tokenizer_metadata: lm.gguf_tokenizer_metadata.clone(), storage: lm.storage.clone() }
}

#[test]
fn masked_dense_equals_sliced_model() {
    let lm = model();
    let ids = real_tokens(128);
    let cases = [
        ("KV groups + MLP", GqaMode::Groups, Widths { mha: 384, mlp: 1024 }),
        ("one group", GqaMode::Groups, Widths { mha: 192, mlp: 1536 }),
        ("query heads per group + MLP", GqaMode::Queries, Widths { mha: 384, mlp: 768 }),
        ("MLP only", GqaMode::Groups, Widths { mha: 576, mlp: 500 }),
    ];
    for (what, gqa, w) in cases {
        let k = keeps(ScorerKind::Transact, w, gqa);
        let sliced = slice(&lm.model, &k).unwrap();
        let s = sliced.config.layers[0];
        assert_eq!((s.mha_width(), s.mlp_width), (w.mha, w.mlp), "{what}");
        if gqa == GqaMode::Queries {
            assert_eq!(s.n_kv_heads, 3, "{what}: KV heads kept");
        } else {
            assert_eq!(s.n_kv_heads * s.group_size() * 64, w.mha, "{what}: whole groups");
        }
        assert_close(what, &mask(&lm.model, &k).unwrap().logits(&ids).unwrap(), &sliced.logits(&ids).unwrap());
    }
}

#[test]
fn head_dim_pruning_keeps_rope_pairs_in_both_layouts() {
    let ids = real_tokens(128);
    let u = Units { attn: AttnUnit::HeadDim, gqa: GqaMode::Groups, head_dim_multiple: 2 };
    for layout in [RopeLayout::Adjacent, RopeLayout::HalfSplit] {
        let m = model().model.with_rope_layout(layout).unwrap();
        // Head dim 64 → 32 (mha 9 × 32 = 288), MLP 1536 → 1000.
        let k = keeps_for(&m, ScorerKind::Transact, Widths { mha: 288, mlp: 1000 }, u);
        let dims = k[0].head_dims.as_ref().unwrap();
        assert_eq!((dims.len(), dims[0].len()), (3, 32));
        for g in dims {
            for &j in g {
                let partner = match layout {
                    RopeLayout::Adjacent => j ^ 1,
                    RopeLayout::HalfSplit => (j + 32) % 64,
                };
                assert!(g.contains(&partner), "{layout:?}: dim {j} kept without its rotary partner");
            }
        }
        let sliced = slice(&m, &k).unwrap();
        assert_eq!(sliced.config.layers[0].head_dim, 32);
        let full = sliced.logits(&ids).unwrap();
        assert_close(&format!("head-dim {layout:?}"), &mask(&m, &k).unwrap().logits(&ids).unwrap(), &full);
        // Decoding token by token applies each group's own frequencies too.
        assert_close(&format!("head-dim {layout:?} decode"), &full, &cached_logits(&sliced, &ids, 100));
        // A second shot on the sliced model (16 dims) still matches its own mask.
        let k2 = keeps_for(&sliced, ScorerKind::Magnitude, Widths { mha: 144, mlp: 1000 }, u);
        assert_close("head-dim twice", &mask(&sliced, &k2).unwrap().logits(&ids).unwrap(), &slice(&sliced, &k2).unwrap().logits(&ids).unwrap());
    }
}

#[test]
fn head_dim_models_refuse_stock_formats_but_round_trip_natively() {
    let m = &model().model;
    let u = Units { attn: AttnUnit::HeadDim, gqa: GqaMode::Groups, head_dim_multiple: 2 };
    let pruned = with_model(slice(m, &keeps_for(m, ScorerKind::Transact, Widths { mha: 288, mlp: 1536 }, u)).unwrap());
    let d = scratch();
    let e = format!("{:#}", export(&pruned, &d.path().join("hf"), ExportFormat::Hf, SaveDtype::F32, false).unwrap_err());
    assert!(e.contains("recomputes frequencies from head_dim") && e.contains("`attn_unit` head"), "{e}");
    let e = format!("{:#}", export(&pruned, &d.path().join("m.gguf"), ExportFormat::Gguf, SaveDtype::F32, false).unwrap_err());
    assert!(e.contains("one frequency table"), "{e}");
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0, "nothing written");
    // transact's own directory format keeps the frequencies (and stock transformers refuses it).
    let native = d.path().join("native");
    std::fs::create_dir(&native).unwrap();
    transact::model::io::hf_write::write_hf(&pruned, &native, SaveDtype::F32).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(native.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "transact-llama");
    let ids = real_tokens(64);
    assert_close("head-dim native round trip", &pruned.model.logits(&ids).unwrap(), &load_model(&native, &Device::Cpu).unwrap().model.logits(&ids).unwrap());
}

#[test]
fn pruned_exports_reload_with_identical_logits() {
    let k = keeps(ScorerKind::Transact, Widths { mha: 384, mlp: 768 }, GqaMode::Groups);
    let pruned = with_model(slice(&model().model, &k).unwrap());
    let ids = real_tokens(96);
    let reference = pruned.model.logits(&ids).unwrap();
    let d = scratch();
    let hf = d.path().join("hf");
    export(&pruned, &hf, ExportFormat::Hf, SaveDtype::F32, false).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
    assert_eq!((cfg["num_attention_heads"].as_u64(), cfg["num_key_value_heads"].as_u64()), (Some(6), Some(2)));
    assert_eq!((cfg["head_dim"].as_u64(), cfg["intermediate_size"].as_u64()), (Some(64), Some(768)));
    assert_close("pruned → HF", &reference, &load_model(&hf, &Device::Cpu).unwrap().model.logits(&ids).unwrap());
    let gguf = d.path().join("p.gguf");
    export(&pruned, &gguf, ExportFormat::Gguf, SaveDtype::F32, false).unwrap();
    let (diff, _) = max_diff(&reference, &load_model(&gguf, &Device::Cpu).unwrap().model.logits(&ids).unwrap());
    assert_eq!(diff, 0.0, "pruned → GGUF f32 is lossless");
}

pub fn wiki_ppl(m: &transact::Model) -> f64 {
    let lm = model();
    // Held-out text: the first BoolQ passages, never used for calibration.
    let wiki = transact::data::corpus::load("wiki").unwrap();
    let corpus = Corpus { name: "wiki".into(), source: wiki.source, docs: wiki.docs[..40].to_vec() };
    corpus_perplexity(m, &lm.tokenizer, &corpus, 256, Some(6), &Silent).unwrap().token_perplexity
}

#[test]
fn transact_scorer_beats_random() {
    let w = Widths { mha: 576, mlp: 1152 }; // 25% of every MLP
    let t = keeps(ScorerKind::Transact, w, GqaMode::Groups);
    let r = keeps(ScorerKind::Random, w, GqaMode::Groups);
    // Rankings differ: the kept sets overlap about as chance would (75%), not fully.
    let overlap: usize = t.iter().zip(&r).map(|(a, b)| a.mlp.iter().filter(|i| b.mlp.binary_search(i).is_ok()).count()).sum();
    let frac = overlap as f64 / (30 * 1152) as f64;
    assert!(frac < 0.9, "transact and random keep {frac:.2} of the same channels");
    let lm = model();
    let (pt, pr) = (wiki_ppl(&slice(&lm.model, &t).unwrap()), wiki_ppl(&slice(&lm.model, &r).unwrap()));
    let dense = wiki_ppl(&lm.model);
    eprintln!("25% MLP prune, wiki perplexity: dense {dense:.2}, transact {pt:.2}, random {pr:.2}");
    assert!(pt < pr, "transact {pt} should beat random {pr}");
}

pub fn job(out: &Path, shots: usize, stats: Option<std::path::PathBuf>, recover: Option<String>) -> PruneJob {
    PruneJob {
        model: gguf_path(),
        device: Device::Cpu,
        out: out.to_path_buf(),
        formats: vec![ExportFormat::Hf, ExportFormat::Gguf],
        dtype: SaveDtype::F16,
        base_model: Some("HuggingFaceTB/SmolLM2-135M-Instruct".into()),
        force: false,
        target: TargetSpec::Ratio(0.3),
        options: PruneOptions {
            scorer: ScorerKind::Transact,
            alpha: None,
            seed: 0,
            attn_unit: AttnUnit::Head,
            gqa: GqaMode::Groups,
            head_dim_multiple: 2,
            shots,
            calib: small_calib(),
            calib_batch: 4,
            mlp_multiple: 8,
            recover_cmd: recover,
            compensate: Default::default(),
            recover: None,
            axis: Default::default(),
        },
        stats,
        resume: false,
        stream: false,
        held_out: true,
        teacher_cache: None,
    }
}

pub fn same_files(a: &Path, b: &Path) {
    for f in ["model.safetensors", "config.json", "model.gguf", "tokenizer.json"] {
        assert!(std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(), "{f} differs");
    }
}

#[test]
fn same_seed_same_bytes_and_stats_reuse() {
    let d = scratch();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    let ra = job(&a, 1, None, None).run(&Silent).unwrap();
    job(&b, 1, None, None).run(&Silent).unwrap();
    same_files(&a, &b);
    assert!((ra.removed_non_embedding - 0.3).abs() < 0.01, "removed {}", ra.removed_non_embedding);
    // Statistics saved by `calibrate` give the same model as calibrating inside `prune`.
    let stats_path = d.path().join("stats.safetensors");
    let lm = model();
    let data = prepare(&lm.tokenizer, &small_calib(), &Silent).unwrap();
    collect(&lm.model, &data, &model_sha256(&gguf_path()).unwrap(), 4, "t", &Silent).unwrap().save(&stats_path).unwrap();
    let saved = collect(&lm.model, &data, "x", 4, "t", &Silent).unwrap();
    let p2 = d.path().join("s2.safetensors");
    saved.save(&p2).unwrap();
    assert_eq!(ActivationStats::load(&p2).unwrap(), saved, "f64 sums and metadata survive the file");
    let c = d.path().join("c");
    job(&c, 1, Some(stats_path), None).run(&Silent).unwrap();
    same_files(&a, &c);
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(a.join("prune_report.json")).unwrap()).unwrap();
    assert_eq!(report["shots"].as_array().unwrap().len(), 1);
    // 30% of attention rounds up to whole KV groups: all 3 stay, the MLP gives the rest.
    assert_eq!(report["shots"][0]["kept"][0]["kv_heads"].as_array().unwrap().len(), 3);
    assert_eq!(report["target"]["widths"]["mha"], 576);
    // The model card and the record of what each format was written as.
    let card = std::fs::read_to_string(a.join("README.md")).unwrap();
    assert!(card.starts_with("---\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\nlicense: apache-2.0\nlibrary_name: transformers\n"), "{card}");
    let h = &report["held_out"];
    assert!(h["dense"].as_f64().unwrap() < h["pruned"].as_f64().unwrap(), "{h}");
    for want in ["- pruned\n", "| MLP width per layer | 1536 |", "scorer `transact`", "**Not trained after pruning.**", "| `model.gguf` |", "before pruning, **"] {
        assert!(card.contains(want), "card lacks {want:?}:\n{card}");
    }
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(a.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["_name_or_path"], "HuggingFaceTB/SmolLM2-135M-Instruct");
    assert_eq!(cfg["torch_dtype"], "float16");
    assert_eq!((report["outputs"][0]["dtype"].as_str(), report["outputs"][1]["dtype"].as_str()), (Some("f16"), Some("f16")));
    let files: Vec<&str> = report["files"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert!(files.contains(&"README.md") && files.contains(&"special_tokens_map.json"), "{files:?}");
}

#[test]
fn k_shot_with_recovery_command_resumes_after_failure() {
    let d = scratch();
    let plain = d.path().join("plain");
    let r = job(&plain, 2, None, None).run(&Silent).unwrap();
    let widths: Vec<usize> = r.shots.iter().map(|s| s.widths.mlp).collect();
    assert_eq!(widths.len(), 2);
    assert!(widths.windows(2).all(|w| w[0] > w[1]), "MLP shrinks every shot: {widths:?}");
    // A trainer that copies its input, but crashes on its second call.
    let counter = d.path().join("calls");
    let cmd = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; [ $n -eq 2 ] && exit 3; cp -r {{in}} {{out}}",
        c = counter.display()
    );
    let out = d.path().join("recovered");
    let err = job(&out, 2, None, Some(cmd.clone())).run(&Silent).unwrap_err();
    assert!(format!("{err:#}").contains("recovery command failed"), "{err:#}");
    assert!(!out.exists(), "nothing written after a failure");
    let mut again = job(&out, 2, None, Some(cmd));
    again.resume = true;
    let r = again.run(&Silent).unwrap();
    assert_eq!(r.shots.len(), 2);
    assert_eq!(std::fs::read_to_string(&counter).unwrap().trim(), "3", "shot 2 retried, shot 1 not");
    same_files(&plain, &out);
    assert!(!again.work_dir().exists(), "checkpoints removed after success");
}

#[test]
fn impossible_targets_and_bad_calibration_write_nothing() {
    let d = scratch();
    let gguf = gguf_path();
    let out = d.path().join("out");
    let txt = d.path().join("tiny.txt");
    std::fs::write(&txt, "Only a few words of calibration text.").unwrap();
    let empty = d.path().join("empty.txt");
    std::fs::write(&empty, "  \n").unwrap();
    let cases: [(&[&str], &str); 16] = [
        (&["--attn-unit", "head-dim", "--mha-width", "288", "--format", "gguf"], "one frequency table"),
        (&["--attn-unit", "head-dim", "--mha-width", "280"], "not a multiple of 18"),
        (&["--mha-width", "100"], "not a multiple of 192"),
        (&["--mha-width", "0"], "impossible"),
        (&["--mha-width", "768"], "impossible"),
        (&["--mlp-width", "2000"], "impossible"),
        (&["--gqa", "queries", "--mha-width", "128"], "not a multiple of 192"),
        (&["--ratio", "1.5"], "strictly between 0 and 1"),
        (&["--ratio", "-0.5"], "strictly between 0 and 1"),
        (&["--ratio", "0.5", "--alpha", "-1"], "must be a number ≥ 0"),
        (&["--ratio", "0.99"], "removes more than"),
        (&["--ratio", "0.5", "--calib", path_str(&txt)], "--samples × --seq-len = 128 × 256"),
        (&["--ratio", "0.5", "--calib", path_str(&empty)], "contains no text"),
        (&["--ratio", "0.5", "--dtype", "q4_k_m"], "GGUF block type"),
        (&["--ratio", "0.5", "--dtype", "q3_k"], "invalid value"),
        (&["--ratio", "0.5", "--base-model", "../x"], "not a Hub id"),
    ];
    for (args, want) in cases {
        let mut all = vec!["prune", path_str(&gguf), "--out", path_str(&out)];
        all.extend_from_slice(args);
        let (code, _, err) = run_cli(&all);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"));
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 2, "{args:?} left files behind: {left:?}");
    }
}
