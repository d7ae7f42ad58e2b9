//! `transact sweep` and `transact report` end to end on the real model, with a tiny grid.

use crate::common::{gguf_path, path_str, run_cli, scratch};

fn spec(limit: usize) -> String {
    format!(
        r#"model = "{}"
[calib]
samples = 8
seq_len = 64
[eval]
tasks = ["piqa"]
limit = {limit}
ppl = ["wiki"]
ppl_seq_len = 128
ppl_windows = 1
[[grid]]
name = "scorers"
scorer = ["magnitude", "transact"]
ratio = 0.5
"#,
        gguf_path().display()
    )
}

/// A grid runs (dense reference + two scorers), a rerun skips every finished row, a rerun
/// with other shared settings is refused, and the report draws its figures.
#[test]
fn sweep_runs_resumes_and_reports() {
    let d = scratch();
    let (spec_path, out, report) = (d.path().join("spec.toml"), d.path().join("results"), d.path().join("report"));
    std::fs::write(&spec_path, spec(3)).unwrap();
    let (code, _, err) = run_cli(&["sweep", path_str(&spec_path), "--out", path_str(&out)]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("3 rows: 3 ran, 0 already finished"), "{err}");
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(out.join("results.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["key"], "dense");
    for r in &rows[1..] {
        let removed = r["removed_non_embedding"].as_f64().unwrap();
        assert!((removed - 0.5).abs() < 0.01, "{removed}");
        assert!(r["perplexity"]["wiki"].as_f64().unwrap() > rows[0]["perplexity"]["wiki"].as_f64().unwrap());
        assert!(r["speed"]["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
        let dir = out.join(r["dir"].as_str().unwrap());
        assert!(dir.join("prune_report.json").exists() && dir.join("eval.json").exists());
        assert!(!dir.join("model.gguf").exists(), "models are removed unless keep_models");
    }
    // Only the activation-based scorer needed the dense statistics; they were kept.
    assert!(out.join("stats/seed-0.safetensors").exists());

    let (code, _, err) = run_cli(&["sweep", path_str(&spec_path), "--out", path_str(&out)]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("3 rows: 0 ran, 3 already finished"), "{err}");
    let (code, plan, _) = run_cli(&["sweep", path_str(&spec_path), "--out", path_str(&out), "--dry-run"]);
    assert_eq!(code, 0);
    assert_eq!(plan.lines().filter(|l| l.starts_with("done ")).count(), 3, "{plan}");

    std::fs::write(&spec_path, spec(4)).unwrap();
    let (code, _, err) = run_cli(&["sweep", path_str(&spec_path), "--out", path_str(&out)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("another `eval` setting"), "{err}");

    // A grid point `prune` would refuse fails the whole sweep before anything runs.
    let bad = d.path().join("bad.toml");
    std::fs::write(&bad, format!("{}[[grid]]\nname = \"hidden\"\naxis = \"hidden\"\nratio = 0.5\nshots = 2\n", spec(3))).unwrap();
    let (code, _, err) = run_cli(&["sweep", path_str(&bad), "--out", path_str(&d.path().join("bad"))]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("axis=hidden") && err.contains("--axis hidden runs one shot"), "{err}");
    assert!(!d.path().join("bad").exists());

    let (code, text, err) = run_cli(&["report", path_str(&out), "--out", path_str(&report)]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("figures: quality, salience, speed"), "{text}");
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 3);
    assert!(!html.contains("src=\""), "the page is self-contained");
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    for name in ["quality", "salience", "speed"] {
        assert!(md.contains(&format!("](plots/{name}.png)")));
        let png = std::fs::read(report.join(format!("plots/{name}.png"))).unwrap();
        assert_eq!(&png[..4], b"\x89PNG");
        assert!(std::fs::read_to_string(report.join(format!("plots/{name}.svg"))).unwrap().starts_with("<svg"));
    }
    assert_eq!(md.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| setting")).count(), 3, "{md}");
    // An existing report is not replaced without --force.
    let (code, _, err) = run_cli(&["report", path_str(&out), "--out", path_str(&report)]);
    assert_eq!(code, 2, "{err}");
    // The report carries its data: with the sweep folder gone, it redraws itself, in place.
    for f in ["results.jsonl", "sweep.json"] {
        assert_eq!(std::fs::read(report.join(f)).unwrap(), std::fs::read(out.join(f)).unwrap(), "{f}");
    }
    assert_eq!(std::fs::read_dir(report.join("stats")).unwrap().count(), 1);
    std::fs::remove_dir_all(&out).unwrap();
    let (code, again, err) = run_cli(&["report", path_str(&report), "--out", path_str(&report), "--force"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(again, text);
    assert_eq!(std::fs::read_to_string(report.join("report.md")).unwrap(), md.replace(path_str(&out), path_str(&report)));
    // A sweep continues from the report's data: every row is found finished.
    let again = d.path().join("again");
    std::fs::create_dir(&again).unwrap();
    for f in ["results.jsonl", "sweep.json"] {
        std::fs::copy(report.join(f), again.join(f)).unwrap();
    }
    std::fs::write(&spec_path, spec(3)).unwrap();
    let (code, _, err) = run_cli(&["sweep", path_str(&spec_path), "--out", path_str(&again)]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("3 rows: 0 ran, 3 already finished"), "{err}");
}
