#!/usr/bin/env python3
"""`transact eval` vs lm-evaluation-harness's `--model hf` on the same requests (see the .sh).

Both tools score local task files built from the bundled request files exactly as transact's
built-in PIQA and ARC-Easy are built (scripts/serve_clients.py's builders), offline. lm-eval runs
on transact's f32 Hugging Face export of the model. Exit status 1 when any doc's acc or acc_norm
differs or a log-likelihood differs by more than --tolerance.
"""

import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from serve_clients import TASKS, read_docs, run, task_yaml, write_jsonl  # noqa: E402


def lm_eval_samples(out: Path, name: str) -> list[list[float]]:
    path = sorted(glob.glob(str(out / "**" / f"samples_transact_{name}_*.jsonl"), recursive=True), key=os.path.getmtime)[-1]
    rows = {}
    for line in open(path, encoding="utf-8"):
        s = json.loads(line)
        rows[s["doc_id"]] = [float(r[0] if isinstance(r, (list, tuple)) else r) for r in s["filtered_resps"]]
    return [rows[i] for i in sorted(rows)]


def argmax(xs) -> int:
    return max(range(len(xs)), key=lambda i: (xs[i], -i))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--transact", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--assets", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--batch-sizes", default="1,8", help="lm-eval --batch_size values to time (1 is its default)")
    ap.add_argument("--tolerance", type=float, default=5e-4, help="largest |Δ log-likelihood| (absolute) ...")
    ap.add_argument("--rel-tolerance", type=float, default=5e-6, help="... or relative to |log-likelihood| (sums of 100+ f32 terms)")
    a = ap.parse_args()
    work, assets = Path(a.work), Path(a.assets)
    summary: dict = {"model": a.model, "limit": a.limit, "runs": {}}

    hf = work / "hf"
    run([a.transact, "convert", a.model, str(hf), "--to", "hf", "--dtype", "f32"], work / "convert.log")
    tasks = work / "tasks"
    tasks.mkdir()
    docs = {}
    for name in TASKS:
        docs[name] = read_docs(assets, name, a.limit)
        write_jsonl(tasks / f"{name}.jsonl", docs[name])
        (tasks / f"transact_{name}.yaml").write_text(task_yaml(name, tasks / f"{name}.jsonl"))
    requests = sum(len(d["choices"]) for n in TASKS for d in docs[n])
    summary["requests"] = requests

    # transact eval on the task files, every doc's scores kept.
    samples = work / "transact_samples.jsonl"
    files = [x for n in TASKS for x in ("--task-file", str(tasks / f"{n}.jsonl"))]
    secs = run([a.transact, "eval", a.model, *files, "--samples", str(samples), "--json", str(work / "transact.json")], work / "transact.log")
    summary["runs"]["transact"] = {"wall_seconds": round(secs, 2)}
    ours: dict[str, list[dict]] = {n: [] for n in TASKS}
    for line in open(samples, encoding="utf-8"):
        s = json.loads(line)
        ours[s["task"]].append(s)

    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(work / "hf_home"),
               TOKENIZERS_PARALLELISM="false")
    failures = []
    for bs in a.batch_sizes.split(","):
        out = work / f"lm_eval_bs{bs}"
        cmd = [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args", f"pretrained={hf},dtype=float32", "--device", "cpu",
               "--tasks", ",".join(f"transact_{n}" for n in TASKS), "--include_path", str(tasks), "--batch_size", bs,
               "--output_path", str(out), "--log_samples"]
        secs = run(cmd, work / f"lm_eval_bs{bs}.log", env=env)
        res = json.loads(Path(sorted(glob.glob(str(out / "**" / "results_*.json"), recursive=True))[-1]).read_text())
        entry = {"wall_seconds": round(secs, 2), "evaluation_seconds": float(res.get("total_evaluation_time_seconds", "nan")),
                 "command": " ".join(cmd)}
        # Identical results, doc by doc.
        max_diff, max_rel, beyond, disagree = 0.0, 0.0, [], []
        for name in TASKS:
            theirs = lm_eval_samples(out, name)
            for i, (d, lls, o) in enumerate(zip(docs[name], theirs, ours[name])):
                for j, (x, y) in enumerate(zip(lls, o["logliks"])):
                    max_diff, max_rel = max(max_diff, abs(x - y)), max(max_rel, abs(x - y) / max(1.0, abs(x)))
                    if abs(x - y) > max(a.tolerance, a.rel_tolerance * abs(x)):
                        beyond.append(f"{name} doc {i} request {j}: {x} vs {y}")
                norm = [ll / max(1, len(c)) for ll, c in zip(lls, d["choices"])]
                if float(argmax(lls) == d["gold"]) != o["acc"] or float(argmax(norm) == d["gold"]) != o["acc_norm"]:
                    disagree.append(f"{name} doc {i}")
        entry.update(max_abs_loglik_diff=max_diff, max_rel_loglik_diff=max_rel, logliks_beyond_tolerance=beyond, docs_disagreeing=disagree, speedup_of_transact=round(secs / summary["runs"]["transact"]["wall_seconds"], 2))
        summary["runs"][f"lm_eval_hf_bs{bs}"] = entry
        if beyond or disagree:
            failures.append(f"batch size {bs}: log-likelihoods beyond tolerance {beyond}, docs disagreeing {disagree}")

    print(f"\n{requests} requests (PIQA + ARC-Easy, first {a.limit} docs each)")
    print(f"{'tool':<22} {'wall s':>8} {'transact is':>12} {'max |Δll|':>10} {'max rel':>9} {'docs differ':>12}")
    print(f"{'transact eval':<22} {summary['runs']['transact']['wall_seconds']:>8.1f}")
    for k, v in summary["runs"].items():
        if k != "transact":
            print(f"{k:<22} {v['wall_seconds']:>8.1f} {v['speedup_of_transact']:>11.2f}x {v['max_abs_loglik_diff']:>10.2e} {v['max_rel_loglik_diff']:>9.1e} {len(v['docs_disagreeing']):>12}")
    summary["failures"] = failures
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(summary, indent=1))
    print(f"summary: {a.out}")
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
