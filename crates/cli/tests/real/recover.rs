//! What `prune` does to the weights after slicing: the closed-form compensation and the built-in
//! recovery between shots, on the real model.

use transact::Silent;
use transact::calibrate::blocks::{CalibSpec, prepare};
use transact::prune::choose::LayerKeep;
use transact::prune::compensate::compensate;
use transact::prune::plan::{GqaMode, TargetSpec, Widths};
use transact::prune::recover::Recovery;
use transact::prune::scorer::ScorerKind;
use transact::prune::slice::slice;
use transact::train::TrainOptions;

use crate::common::{max_diff, model, run_cli, scratch};
use crate::prune::{job, keeps, same_files, wiki_ppl};

fn calib(samples: usize, seq_len: usize) -> transact::calibrate::blocks::CalibData {
    let spec = CalibSpec { source: "mix".into(), samples, seq_len, seed: 0 };
    prepare(&model().tokenizer, &spec, &Silent).unwrap()
}

/// With nothing removed the least-squares optimum is the weight itself: compensation must give
/// it back (up to the solve's rounding), in every layer.
#[test]
fn compensation_of_an_unpruned_model_changes_nothing() {
    let lm = model();
    let all: Vec<LayerKeep> = lm.model.config.layers.iter().map(LayerKeep::all).collect();
    let sliced = slice(&lm.model, &all).unwrap();
    let data = calib(8, 64);
    let c = compensate(&lm.model, &sliced, &all, &data, 4, "test", &Silent).unwrap();
    for (l, (a, b)) in lm.model.weights.layers.iter().zip(&c.weights.layers).enumerate() {
        for (name, x, y) in [("o_proj", &a.o_proj, &b.o_proj), ("down_proj", &a.down_proj, &b.down_proj)] {
            let (d, scale) = max_diff(x, y);
            assert!(d <= 2e-3 * scale, "layer {l} {name}: max |Δ| {d} against max |w| {scale}");
        }
    }
}

/// Half of every MLP and a third of the KV groups removed: the refit model is much closer to
/// the dense one on held-out text than the plainly sliced one.
#[test]
fn compensation_brings_the_pruned_model_back_toward_dense() {
    let lm = model();
    let keep = keeps(ScorerKind::Transact, Widths { mha: 384, mlp: 768 }, GqaMode::Groups);
    let sliced = slice(&lm.model, &keep).unwrap();
    let data = calib(32, 128);
    let c = compensate(&lm.model, &sliced, &keep, &data, 4, "test", &Silent).unwrap();
    let (dense, plain, refit) = (wiki_ppl(&lm.model), wiki_ppl(&sliced), wiki_ppl(&c));
    eprintln!("wiki perplexity: dense {dense:.2}, sliced {plain:.2}, compensated {refit:.2}");
    assert!(refit < 0.8 * plain, "compensation should cut the perplexity: {plain} → {refit}");
    assert_eq!(c.config, sliced.config, "compensation changes weights, not shapes");
}

/// Two shots with built-in distillation after each and a final recovery (the calibration is too
/// small for compensation to help here): every stage is
/// recorded, the budget is split as documented, and training brings the held-out perplexity
/// down; a run interrupted after its first shot resumes to the same bytes.
#[test]
fn prune_recovers_between_shots_and_after() {
    let d = scratch();
    let recovery = Recovery {
        tokens: 4096,
        final_tokens: 1024,
        data: "mix".into(),
        train: TrainOptions { batch: 2, seq_len: 64, grad_accum: 1, ..TrainOptions::default() },
    };
    let make = |out: &std::path::Path| {
        let mut j = job(out, 2, None, None);
        j.target = TargetSpec::Ratio(0.5);
        j.options.recover = Some(recovery.clone());
        j
    };
    let out = d.path().join("a");
    let r = make(&out).run(&Silent).unwrap();
    let tokens: Vec<u64> = r.shots.iter().map(|s| s.recovery.as_ref().unwrap().tokens).collect();
    assert_eq!(tokens, vec![1024, 3072], "p/2 and p/2 + p with p = 4096 / 2");
    let f = r.final_recovery.as_ref().expect("final recovery recorded");
    assert_eq!(f.tokens, 1024);
    for s in &r.shots {
        let h = s.held_out.as_ref().expect("shots measure themselves");
        let t = h.recovered.unwrap();
        eprintln!("shot {}: held-out ppl sliced {:.1}, recovered {t:.1}", s.shot, h.sliced);
        assert!(t < h.sliced && h.compensated.is_none(), "shot {}: {h:?}", s.shot);
    }
    assert!(r.final_held_out_perplexity.is_some());
    assert!(r.seconds.recover > 0.0);

    // Interrupted in shot 2's recovery, then resumed after shot 1: the same bytes.
    let out2 = d.path().join("b");
    let interrupted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| make(&out2).run(&StopAt("recover 2/2"))));
    assert!(interrupted.is_err(), "the run stops in shot 2");
    assert!(!out2.exists());
    let mut again = make(&out2);
    again.resume = true;
    let r2 = again.run(&Silent).unwrap();
    assert_eq!(r2.shots.len(), 2);
    let (a, b) = (r.shots[1].recovery.as_ref().unwrap(), r2.shots[1].recovery.as_ref().unwrap());
    assert_eq!((a.first_sequence, a.tokens, a.loss_start, a.loss_end), (b.first_sequence, b.tokens, b.loss_start, b.loss_end));
    assert_eq!(b.first_sequence, 1024 / 64, "shot 2 continues in the text where shot 1 stopped");
    same_files(&out, &out2);
}

/// Stops a run (by panicking, as a kill would) when a stage named `.0` starts.
struct StopAt(&'static str);

impl transact::progress::Progress for StopAt {
    fn start(&self, label: &str, _: u64) {
        assert_ne!(label, self.0, "interrupted");
    }
}

#[test]
fn bad_recovery_settings_are_refused_before_loading() {
    let d = scratch();
    let out = d.path().join("out");
    let g = crate::common::gguf_path();
    let gguf = g.to_str().unwrap();
    for (args, want) in [
        (vec!["--recover", "0"], "must be at least 1"),
        (vec!["--final-recover", "1K", "--recover-loss", "ce", "--recover-data", "/nonexistent.txt"], "nonexistent.txt"),
        (vec!["--recover", "1K", "--recover-lr", "2"], "lr"),
        (vec!["--recover", "1K", "--recover-cmd", "cp -r {in} {out}"], "cannot be used with"),
        (vec!["--recover", "1K", "--stream"], "recovery"),
        (vec!["--compensate", "ls", "--stream"], "compensation"),
    ] {
        let mut all = vec!["prune", gguf, "--out", out.to_str().unwrap(), "--ratio", "0.5"];
        all.extend(args.iter().copied());
        let (code, _, err) = run_cli(&all);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!out.exists());
    }
}
