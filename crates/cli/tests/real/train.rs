//! `transact train` on the real model: distillation from the dense SmolLM2 into a pruned copy.
//! Runs are a few steps of short sequences: enough to see the loss move, cheap enough for CI.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use candle_core::Device;
use transact::model::io::export::ExportFormat;
use transact::model::weights::TensorRole;
use transact::prune::job::PruneJob;
use transact::prune::plan::TargetSpec;
use transact::train::log::StepRecord;
use transact::train::{Budget, LossKind, ParamGroup, TrainJob, TrainOptions};
use transact::model::io::save_dtype::SaveDtype;
use transact::{Progress, Silent, load_model};

use crate::common::{gguf_path, path_str, run_cli, scratch};

/// The bundled model with half of its non-embedding parameters pruned (one shot, small
/// calibration), as an HF directory shared by this file's tests.
fn student() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let d = scratch();
        let out = d.path().join("half");
        let base = crate::prune::job(&out, 1, None, None);
        let half = PruneJob { formats: vec![ExportFormat::Hf], dtype: SaveDtype::F32, target: TargetSpec::Ratio(0.5), ..base };
        half.run(&Silent).unwrap();
        (d, out)
    })
    .1
}

fn options(steps: u64) -> TrainOptions {
    TrainOptions {
        loss: LossKind::Kd,
        budget: Budget::Steps(steps),
        batch: 2,
        seq_len: 64,
        grad_accum: 2,
        lr: 5e-4,
        ..Default::default()
    }
}

fn job(out: &Path, o: TrainOptions) -> TrainJob {
    TrainJob {
        model: student().to_path_buf(),
        teacher: Some(gguf_path()),
        data: "mix".into(),
        out: out.to_path_buf(),
        formats: vec![ExportFormat::Hf],
        dtype: SaveDtype::F32,
        base_model: None,
        device: Device::Cpu,
        options: o,
        resume: false,
        force: false,
        teacher_cache: None,
    }
}

fn read_log(dir: &Path) -> Vec<StepRecord> {
    transact::train::log::read(&dir.join("train_log.jsonl")).unwrap()
}

#[test]
fn distillation_lowers_held_out_perplexity_and_frozen_groups_stay() {
    let d = scratch();
    let out = d.path().join("trained");
    let o = TrainOptions { eval_every: Some(4), freeze: vec![ParamGroup::Embeddings], ..options(4) };
    let r = TrainJob { formats: vec![ExportFormat::Hf, ExportFormat::Gguf], ..job(&out, o) }.run(&Silent).unwrap();
    let (before, after) = (r.eval.first().unwrap().wiki_perplexity, r.eval.last().unwrap().wiki_perplexity);
    eprintln!("4 KD steps of 256 tokens: held-out wiki perplexity {before:.1} → {after:.1}, loss {:.3} → {:.3}", r.loss_start, r.loss_end);
    assert!(after < 0.9 * before, "KD should recover: {before} → {after}");
    assert_eq!(r.eval.len(), 2, "before training and after step 4");
    let log = read_log(&out);
    assert_eq!(log.len(), 4);
    assert!(log.iter().all(|s| s.kd.is_some() && s.ce.is_none() && s.loss.is_finite() && s.grad_norm > 0.0));
    assert!(log[0].lr < log[1].lr || r.warmup_steps == 1, "warmup");
    for f in ["config.json", "model.safetensors", "model.gguf", "tokenizer.json", "loss.png", "train_report.json"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("train_report.json")).unwrap()).unwrap();
    assert_eq!(report["data"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(report["tokens"], 4 * 2 * 2 * 64);
    assert_eq!(report["written"][0]["dtype"], "f32");
    assert!(!job(&out, options(4)).work_dir().exists(), "the work folder is removed after success");
    // The model card says what training did, and what it measured.
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.starts_with("---\n") && card.contains("library_name: transformers\n") && card.contains("- distillation\n"), "{card}");
    for want in ["trained by `transact train` on 1024 tokens with loss `kd`", "before training →", "| `model.gguf` |"] {
        assert!(card.contains(want), "card lacks {want:?}:\n{card}");
    }

    // The written model loads; the frozen embedding is bit-identical, the rest moved.
    let (a, b) = (load_model(student(), &Device::Cpu).unwrap(), load_model(&out, &Device::Cpu).unwrap());
    assert_eq!(a.model.config.layers, b.model.config.layers);
    let same = |role| {
        let (x, y) = (a.model.weights.get(role).unwrap(), b.model.weights.get(role).unwrap());
        (x - y).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() == 0.0
    };
    assert!(same(TensorRole::Embed), "frozen embeddings moved");
    assert!(!same(TensorRole::Q(0)) && !same(TensorRole::Down(29)) && !same(TensorRole::FinalNorm), "trainable weights did not move");
    // The GGUF beside it holds the same trained weights.
    let g = load_model(&out.join("model.gguf"), &Device::Cpu).unwrap();
    for role in [TensorRole::O(3), TensorRole::Down(7), TensorRole::FinalNorm] {
        let (x, y) = (b.model.weights.get(role).unwrap(), g.model.weights.get(role).unwrap());
        assert_eq!((x - y).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0, "{role:?}");
    }
}

/// Panics (like a killed process) when the training stage passes `steps` steps.
struct CrashAfter {
    steps: u64,
    training: AtomicBool,
    done: AtomicU64,
}

impl Progress for CrashAfter {
    fn start(&self, label: &str, _: u64) {
        self.training.store(label == "train", Ordering::SeqCst);
    }

    fn advance(&self, n: u64) {
        if self.training.load(Ordering::SeqCst) && self.done.fetch_add(n, Ordering::SeqCst) + n > self.steps {
            panic!("simulated crash after step {}", self.steps);
        }
    }
}

#[test]
fn resume_after_a_crash_is_bit_identical() {
    let d = scratch();
    let (straight, resumed) = (d.path().join("straight"), d.path().join("resumed"));
    let o = TrainOptions { checkpoint_every: Some(2), loss: LossKind::KdCe, ..options(4) };
    // The straight run fills a teacher cache that the resumed one reads: the resumed run's
    // identical bytes also show that cached teacher logits are the computed ones.
    let cache = d.path().join("teacher-cache");
    let straight_report = TrainJob { teacher_cache: Some(cache.clone()), ..job(&straight, o.clone()) }.run(&Silent).unwrap();
    let counts = |r: &transact::train::TrainReport| r.teacher_cache.as_ref().map(|c| (c.hits, c.misses));
    assert_eq!(counts(&straight_report), Some((0, 8)), "4 steps × 2 micro-batches, all computed");

    let crash = CrashAfter { steps: 2, training: AtomicBool::new(false), done: AtomicU64::new(0) };
    let first = job(&resumed, o.clone());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| first.run(&crash)));
    assert!(r.is_err(), "the run should have crashed");
    assert!(!resumed.exists(), "nothing in place after a crash");
    assert!(first.work_dir().join("checkpoint").is_dir(), "the step-2 checkpoint survives");

    // Without --resume (or --force) the checkpoint is not silently thrown away ...
    let e = job(&resumed, o.clone()).run(&Silent).unwrap_err();
    assert!(format!("{e:#}").contains("interrupted run"), "{e:#}");
    // ... and a resume with other settings is refused, naming what differs.
    let e = TrainJob { resume: true, ..job(&resumed, TrainOptions { lr: 1e-3, ..o.clone() }) }.run(&Silent).unwrap_err();
    assert!(format!("{e:#}").contains("`lr` differs"), "{e:#}");

    let r = TrainJob { resume: true, teacher_cache: Some(cache), ..job(&resumed, o) }.run(&Silent).unwrap();
    assert_eq!(r.resumed_from_step, Some(2));
    assert_eq!(counts(&r), Some((4, 0)), "steps 3 and 4 read the straight run's teacher states");
    assert!(r.flops_per_token < straight_report.flops_per_token, "cached micro-batches run only the teacher's LM head");
    let same_bytes = |f: &str| std::fs::read(straight.join(f)).unwrap() == std::fs::read(resumed.join(f)).unwrap();
    assert!(same_bytes("model.safetensors"), "final weights differ after resume");
    let key = |s: &StepRecord| (s.step, s.tokens, s.loss.to_bits(), s.kd.map(f64::to_bits), s.ce.map(f64::to_bits), s.lr.to_bits(), s.grad_norm.to_bits());
    let (a, b): (Vec<_>, Vec<_>) = (read_log(&straight).iter().map(key).collect(), read_log(&resumed).iter().map(key).collect());
    assert_eq!(a, b, "the loss curve differs after resume");
}

#[test]
fn bad_training_input_errors_before_work_and_writes_nothing() {
    let d = scratch();
    let out = d.path().join("out");
    let pruned = path_str(student()).to_string();
    let gguf = gguf_path();
    let empty = d.path().join("empty.txt");
    std::fs::write(&empty, " \n").unwrap();
    let short = d.path().join("short.txt");
    std::fs::write(&short, "Just a few words of text.").unwrap();
    // A teacher whose tokenizer gives two tokens each other's ids.
    let other = d.path().join("other-vocab");
    std::fs::create_dir(&other).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer_config.json"] {
        std::fs::copy(student().join(f), other.join(f)).unwrap();
    }
    let mut tok: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(student().join("tokenizer.json")).unwrap()).unwrap();
    let vocab = tok["model"]["vocab"].as_object_mut().unwrap();
    let (a, b) = (vocab["the"].clone(), vocab["and"].clone());
    vocab.insert("the".into(), b);
    vocab.insert("and".into(), a);
    std::fs::write(other.join("tokenizer.json"), serde_json::to_string(&tok).unwrap()).unwrap();

    let cases: [(&[&str], &str); 14] = [
        (&["--loss", "mse"], "invalid value 'mse'"),
        (&["--loss", "kd"], "--teacher is needed by loss `kd`"),
        (&["--teacher", path_str(&gguf), "--data", path_str(&empty)], "contains no text"),
        (&["--teacher", path_str(&gguf), "--data", path_str(&short)], "--seq-len 256 is longer than training text"),
        (&["--teacher", path_str(&gguf), "--data", "wiki"], "evaluation corpus"),
        (&["--teacher", path_str(&other)], "the teacher's token"),
        (&["--lr", "NaN"], "--lr must be a number"),
        (&["--tokens", "0"], "must be at least 1"),
        (&["--seq-len", "100000"], "exceeds the model's context"),
        (&["--freeze", "embeddings,norms,attention,mlp"], "leaves nothing to train"),
        (&["--data", "teacher:100"], "samples text from the teacher: give --teacher"),
        (&["--teacher", path_str(&gguf), "--data", "teacher:0"], "expected teacher:N with N ≥ 1"),
        (&["--base-model", "org/na me"], "not a Hub id"),
        (&["--format", "both", "--dtype", "q4_0"], "q4_0 is a GGUF block type"),
    ];
    for (args, want) in cases {
        let mut all = vec!["train", pruned.as_str(), "--out", path_str(&out)];
        all.extend_from_slice(args);
        let (code, _, err) = run_cli(&all);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"));
        let mut left: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["empty.txt", "other-vocab", "short.txt"], "{args:?} left files behind");
    }
}

#[test]
fn text_sampled_from_the_teacher_is_seeded_and_trains() {
    let d = scratch();
    let o = TrainOptions { seq_len: 32, batch: 1, grad_accum: 1, budget: Budget::Steps(1), ..options(1) };
    let run = |name: &str| {
        let out = d.path().join(name);
        let r = TrainJob { data: "teacher:48".into(), ..job(&out, o.clone()) }.run(&Silent).unwrap();
        assert!(r.data.tokens >= 48 + 16, "prompt and sampled tokens: {}", r.data.tokens);
        assert!(read_log(&out)[0].loss.is_finite());
        r.data.sha256
    };
    assert_eq!(run("a"), run("b"), "the same seed samples the same text");
}

/// The teacher's cached hidden states give bit for bit the logits of its full forward; a damaged
/// cache file is noticed and recomputed.
#[test]
fn a_cached_teacher_gives_the_logits_of_its_forward() {
    let d = scratch();
    let dense = load_model(&gguf_path(), &Device::Cpu).unwrap();
    let sha = transact::model::io::load::model_sha256(&gguf_path()).unwrap();
    let ids: Vec<u32> = (0..2 * 24).map(|i| (i * 7919 % 49_000) as u32).collect();
    let tokens = candle_core::Tensor::from_vec(ids.clone(), (2, 24), &Device::Cpu).unwrap();
    let want = dense.model.forward(&tokens, None, transact::model::Logits::All).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let teacher = transact::train::Teacher::with_cache(&dense.model, &sha, Some(d.path())).unwrap();
    let logits = || teacher.logits(&tokens, &ids).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&logits()), bits(&want), "computed, then stored");
    assert_eq!(bits(&logits()), bits(&want), "read back");
    assert_eq!(teacher.cache_counts(), Some((1, 1)));
    // One flipped byte, and then a truncated file: each is recomputed, never used.
    let file = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|e| e == "f32")).unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[100] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    assert_eq!(bits(&logits()), bits(&want), "a damaged file");
    std::fs::write(&file, &bytes[..1000]).unwrap();
    assert_eq!(bits(&logits()), bits(&want), "a short file");
    assert_eq!(teacher.cache_counts(), Some((1, 3)));
    assert_eq!(bits(&logits()), bits(&want), "the file was rewritten");
    assert_eq!(teacher.cache_counts(), Some((2, 3)));
}
