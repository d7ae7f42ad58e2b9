#!/usr/bin/env python3
"""Markdown tables of a recovery run made by experiments/recovery/run.sh: one row per trained
model (training tokens, minutes, tokens/s, held-out curve) and the full evaluation (wiki
perplexity over 20 windows of 2048, mean accuracy of the first 100 docs of the eight tasks).

  python3 experiments/recovery/summary.py OUTDIR
"""
import json, os, sys

out = sys.argv[1]
models = ["short-kd", "short-ce", "short-kdce", "long-kd"]


def load(path):
    return json.load(open(path)) if os.path.exists(path) else None


print("| model | loss | tokens | training min | tokens/s | held-out wiki ppl (8 × 512) along the run | wiki ppl (20 × 2048) | 8-task acc / acc_norm |")
print("|---|---|---|---|---|---|---|---|")
def full_eval(m):
    w = load(f"{out}/eval-{m}-wiki.json")
    t = load(f"{out}/eval-{m}-tasks.json")
    ppl = f"{w['perplexity'][0]['token_perplexity']:.2f}" if w else "–"
    acc = f"{100 * t['average']['acc']:.1f} / {100 * t['average']['acc_norm']:.1f}" if t else "–"
    return ppl, acc


for m in ["dense", "half"]:
    ppl, acc = full_eval(m)
    print(f"| {m} | – | 0 | – | – | – | {ppl} | {acc} |")
for m in models:
    r = load(f"{out}/{m}/train_report.json")
    if r is None:
        continue
    curve = " → ".join(f"{e['wiki_perplexity']:.1f}" for e in r["eval"])
    ppl, acc = full_eval(m)
    print(f"| {m} | {r['options']['loss']} | {r['tokens']} | {r['seconds_training'] / 60:.1f} | {r['tokens_per_s']:.0f} | {curve} | {ppl} | {acc} |")
for m in ["dense", "half"] + models:
    t = load(f"{out}/eval-{m}-tasks.json")
    if t:
        print(f"\n{m}: " + ", ".join(f"{x['task']} {100 * x['acc']:.0f}" for x in t["tasks"]))
