#!/usr/bin/env python3
"""Gradient parity and training speed of `transact train` next to PyTorch + transformers, same run.

PyTorch is a benchmark and parity peer here, never a dependency of the tool: it comes from PyPI
(CPU-only `torch` from the PyTorch index when reachable, else plain PyPI `torch`, plus
`transformers` and `safetensors`) in a throw-away venv. `bench/train-side-by-side.sh` creates
that venv on first use and runs this script in it with the same arguments; by hand:

  python3 -m venv /tmp/torchvenv
  /tmp/torchvenv/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu  # or plain `torch`
  /tmp/torchvenv/bin/pip install transformers safetensors

--student and --teacher are Hugging Face directories (the pruned model and the dense one, same
tokenizer). Two modes; with neither flag, both:

--parity: `examples/train_grads` runs one micro-batch of our trainer (--batch sequences of
  --seq-len tokens from the `mix` text, drawn with --seed) and writes the token ids, the loss and
  the L2 norm of every tensor's gradient by its HF name. PyTorch (f32 models, eager attention,
  2 threads) runs the same ids (no BOS added) through the same loss: KD = T² · Σ p_t (log p_t −
  log_softmax(s/T)) / (B·L) over the full vocabulary at every position (the last one of each
  sequence included), p_t = softmax(teacher/T) without gradient; CE = mean −log p_s(next token)
  over positions 0 .. L−2; kd+ce = w·KD + (1−w)·CE. The loss is summed in f64 from the f32
  logits (a reference, not a speed run). Then backward and the gradient norm of each
  `named_parameters()` tensor: a tied LM head is `model.embed_tokens.weight` on both sides.
  transformers makes the LLaMA embedding `nn.Embedding(padding_idx=config.pad_token_id)`, which
  drops the lookup gradient of the pad id's row (SmolLM2: id 2, which the training text holds);
  that is a training convention, not the loss's gradient, so PyTorch runs with padding_idx off
  and the embedding norm stock HF would give is reported beside it, not counted.
  PASS when the loss and every gradient norm agree within 1e-3 relative.

--speed: the same training step on both sides: student trainable, teacher frozen (no grad),
  AdamW (β 0.9/0.95, ε 1e-8, no weight decay, lr 3e-4), gradient clipping at 1.0, --grad-accum
  micro-batches of --batch × --seq-len tokens per step, KD loss, --steps timed steps after one
  warmup step that is not timed. PyTorch runs in a child process of this script (2 threads; its
  peak RSS is that child's ru_maxrss), ours is `transact train --steps N+1 --checkpoint-every 0`
  with its first step dropped from train_log.jsonl and its peak RSS from train_report.json. Our
  learning rate follows transact's warmup + cosine schedule, PyTorch's is constant: speed does
  not depend on it, nor on which token ids PyTorch trains on (fixed random ids here).
  tokens/s = batch · seq-len · grad-accum · steps / seconds of those steps. /proc/loadavg is
  recorded before and after: the 2-core VM is shared.

Writes Markdown tables to stdout and everything to --json.

  bench/train-side-by-side.sh --student hf/half --teacher hf/dense --batch 2 --seq-len 128 --parity
  bench/train-side-by-side.sh --student hf/half --teacher hf/dense --speed --steps 3 --json speed.json
"""
import argparse, json, os, resource, statistics, subprocess, sys, tempfile, time

THREADS = 2
TOLERANCE = 1e-3


def loadavg():
    return open("/proc/loadavg").read().strip()


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


# ---------------------------------------------------------------- PyTorch side

def torch_setup():
    import torch
    torch.set_num_threads(THREADS)
    return torch


def load_hf(path, torch):
    import transformers
    from transformers import AutoModelForCausalLM
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"  # `torch_dtype` deprecated in 4.56
    m = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", **{dtype_kw: torch.float32})
    m = m.float()
    m.config.use_cache = False
    return m


def kd_loss(torch, logits, teacher_logits, temperature):
    """T² · Σ p_t (log p_t − log q_s) / positions, p_t without gradient, at every position."""
    F = torch.nn.functional
    b, t, _ = logits.shape
    with torch.no_grad():
        logp_t = F.log_softmax(teacher_logits / temperature, dim=-1)
        p_t = logp_t.exp()
    logq = F.log_softmax(logits / temperature, dim=-1)
    return temperature * temperature * (p_t * (logp_t - logq)).sum() / (b * t)


def ce_loss(torch, logits, tokens):
    """Mean −log p(next token) over positions 0 .. t−2 of each sequence."""
    F = torch.nn.functional
    b, t, v = logits.shape
    logp = F.log_softmax(logits[:, :-1, :].reshape(b * (t - 1), v), dim=-1)
    return -logp.gather(1, tokens[:, 1:].reshape(b * (t - 1), 1)).mean()


def torch_parity(student_dir, teacher_dir, ours):
    torch = torch_setup()
    tokens = torch.tensor(ours["tokens"], dtype=torch.long)
    kind, temperature, w = ours["loss_kind"], float(ours["temperature"]), float(ours["kd_weight"])
    student, teacher = load_hf(student_dir, torch), load_hf(teacher_dir, torch)
    student.train()  # no dropout in LLaMA; train mode only so nothing is skipped for eval
    teacher.eval()
    tied = student.get_output_embeddings().weight is student.get_input_embeddings().weight
    # transformers builds the LLaMA embedding as nn.Embedding(padding_idx=config.pad_token_id), whose
    # backward drops the lookup gradient of that row: a training convention, not the loss's
    # gradient. Ours is the exact gradient, so compare with padding_idx off; what stock HF would
    # give for the embedding is reported beside it (it differs when the pad id is in the tokens).
    emb = student.get_input_embeddings()
    pad, emb.padding_idx = emb.padding_idx, None
    emb_name = next(n for n, p in student.named_parameters() if p is emb.weight)
    captured = {}

    def keep(module, inputs, output):
        output.retain_grad()
        captured["out"] = output
    hook = emb.register_forward_hook(keep)
    t0 = time.perf_counter()
    teacher_logits = None
    if kind in ("kd", "kd+ce"):
        with torch.no_grad():
            teacher_logits = teacher(input_ids=tokens).logits.double()
    logits = student(input_ids=tokens).logits.double()  # f64 loss reduction, f32 model
    kd = kd_loss(torch, logits, teacher_logits, temperature) if teacher_logits is not None else None
    ce = ce_loss(torch, logits, tokens) if kind in ("ce", "kd+ce") else None
    total = {"kd": lambda: kd, "ce": lambda: ce, "kd+ce": lambda: w * kd + (1 - w) * ce}[kind]()
    total.backward()
    seconds = time.perf_counter() - t0
    hook.remove()
    norms = {n: (p.grad.double().norm().item() if p.grad is not None else 0.0) for n, p in student.named_parameters()}
    pad_count = int((tokens == pad).sum()) if pad is not None else 0
    stock = norms[emb_name]
    if pad_count:
        g = emb.weight.grad.double().clone()
        g[pad] -= captured["out"].grad[tokens == pad].double().sum(0)
        stock = g.norm().item()
    return {"loss": total.item(), "kd": kd.item() if kd is not None else None, "ce": ce.item() if ce is not None else None,
            "grad_norms": norms, "tied_embeddings": tied, "seconds": seconds,
            "padding_idx": {"tensor": emb_name, "pad_id": pad, "pad_tokens": pad_count, "stock_hf_norm": stock}}


def torch_speed_worker(a):
    """Runs in a child process (so ru_maxrss is PyTorch's alone); prints one JSON line."""
    torch = torch_setup()
    student, teacher = load_hf(a.student, torch), load_hf(a.teacher, torch)
    student.train()
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    vocab = student.config.vocab_size
    g = torch.Generator().manual_seed(a.seed)
    opt = torch.optim.AdamW(student.parameters(), lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    steps = []
    for step in range(a.steps + 1):  # step 0: warmup, not timed
        rec = {"teacher": 0.0, "forward": 0.0, "backward": 0.0}
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        for _ in range(a.grad_accum):
            tokens = torch.randint(0, vocab, (a.batch, a.seq_len), generator=g)
            t1 = time.perf_counter()
            with torch.no_grad():
                teacher_logits = teacher(input_ids=tokens).logits
            t2 = time.perf_counter()
            loss = kd_loss(torch, student(input_ids=tokens).logits, teacher_logits, a.temperature) / a.grad_accum
            t3 = time.perf_counter()
            loss.backward()
            t4 = time.perf_counter()
            del teacher_logits
            rec["teacher"] += t2 - t1
            rec["forward"] += t3 - t2
            rec["backward"] += t4 - t3
            rec["loss"] = loss.item() * a.grad_accum
        t5 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        rec["optimizer"] = time.perf_counter() - t5
        rec["seconds"] = time.perf_counter() - t0
        steps.append(rec)
        print(f"  torch step {step}{' (warmup)' if step == 0 else ''}: {rec['seconds']:.2f} s, loss {rec['loss']:.4f}", file=sys.stderr)
    print(json.dumps({"steps": steps, "threads": torch.get_num_threads(),
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


# ---------------------------------------------------------------- parity

def parity(a):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "grads.json")
        cmd = [a.train_grads, a.student, a.teacher, out, "--loss", a.loss, "--temperature", str(a.temperature),
               "--kd-weight", str(a.kd_weight), "--batch", str(a.batch), "--seq-len", str(a.seq_len), "--seed", str(a.seed)]
        print("parity: " + " ".join(cmd), file=sys.stderr)
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        ours_wall = time.perf_counter() - t
        ours = json.load(open(out))
    print("parity: PyTorch on the same tokens ...", file=sys.stderr)
    theirs = torch_parity(a.student, a.teacher, ours)
    on, tn = ours["grad_norms"], theirs["grad_norms"]
    only_ours, only_torch = sorted(set(on) - set(tn)), sorted(set(tn) - set(on))
    per = sorted(({"tensor": n, "ours": on[n], "torch": tn[n], "rel_err": rel(on[n], tn[n])} for n in set(on) & set(tn)),
                 key=lambda r: -r["rel_err"])
    errs = [r["rel_err"] for r in per]
    parts = {k: {"ours": ours[k], "torch": theirs[k], "rel_err": rel(ours[k], theirs[k])}
             for k in ("loss", "kd", "ce") if ours.get(k) is not None and theirs.get(k) is not None}
    ok = (not only_ours and not only_torch and bool(per) and all(p["rel_err"] <= TOLERANCE for p in parts.values())
          and max(errs) <= TOLERANCE)
    r = {"pass": ok, "tolerance": TOLERANCE, "loss_kind": ours["loss_kind"], "temperature": ours["temperature"],
         "kd_weight": ours["kd_weight"], "batch": a.batch, "seq_len": a.seq_len, "seed": a.seed, "losses": parts,
         "tensors": len(per), "grad_rel_err_max": max(errs) if errs else None,
         "grad_rel_err_median": statistics.median(errs) if errs else None, "worst": per[:5], "per_tensor": per,
         "only_ours": only_ours, "only_torch": only_torch, "torch_tied_embeddings": theirs["tied_embeddings"],
         "torch_padding_idx": theirs["padding_idx"],
         "ours_seconds": ours["seconds"], "ours_wall_seconds": ours_wall, "torch_seconds": theirs["seconds"]}
    print(f"\n### Parity: {r['loss_kind']} loss, T = {r['temperature']}, batch {a.batch} × {a.seq_len} tokens, seed {a.seed}, "
          f"{'PASS' if ok else 'FAIL'} (tolerance {TOLERANCE:g} relative)\n")
    print("| quantity | ours | PyTorch | relative error |")
    print("|---|---|---|---|")
    for k, p in parts.items():
        print(f"| {k} | {p['ours']:.8f} | {p['torch']:.8f} | {p['rel_err']:.2e} |")
    if errs:
        print(f"| gradient norms: {len(per)} tensors | | | max {max(errs):.2e}, median {statistics.median(errs):.2e} |")
    print("\nWorst 5 gradient norms:\n")
    print("| tensor | ours | PyTorch | relative error |")
    print("|---|---|---|---|")
    for w in per[:5]:
        print(f"| {w['tensor']} | {w['ours']:.6e} | {w['torch']:.6e} | {w['rel_err']:.2e} |")
    if only_ours or only_torch:
        print(f"\ntensors only in ours: {only_ours or 'none'}; only in PyTorch: {only_torch or 'none'}")
    pi = theirs["padding_idx"]
    if pi["pad_id"] is not None:
        ours_emb = on.get(pi["tensor"], float("nan"))
        print(f"\nPyTorch ran with the embedding's padding_idx ({pi['pad_id']}, from config pad_token_id) off. The tokens hold "
              f"that id {pi['pad_tokens']} times; stock HF (padding_idx on) would give {pi['tensor']} a gradient norm of "
              f"{pi['stock_hf_norm']:.6e} (ours {ours_emb:.6e}, relative difference {rel(ours_emb, pi['stock_hf_norm']):.2e}; "
              f"not counted).")
    print(f"\nPyTorch ties lm_head to embed_tokens: {theirs['tied_embeddings']}. One micro-batch, forward + backward: "
          f"ours {sum(ours['seconds'].values()):.2f} s (teacher {ours['seconds']['teacher']:.2f}), "
          f"PyTorch {theirs['seconds']:.2f} s (f64 loss reduction, not a speed number).")
    return r


# ---------------------------------------------------------------- speed

def ours_speed(a):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "out")
        cmd = [a.transact, "train", a.student, "--teacher", a.teacher, "--out", out, "--steps", str(a.steps + 1),
               "--batch", str(a.batch), "--seq-len", str(a.seq_len), "--grad-accum", str(a.grad_accum),
               "--loss", "kd", "--temperature", str(a.temperature), "--checkpoint-every", "0", "--force"]
        print("speed: " + " ".join(cmd), file=sys.stderr)
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t
        log = [json.loads(l) for l in open(os.path.join(out, "train_log.jsonl")) if l.strip()]
        report = json.load(open(os.path.join(out, "train_report.json")))
    timed = sorted(log, key=lambda r: r["step"])[1:]
    return summarize(a, timed, "teacher_seconds", "forward_seconds", "backward_seconds", "optimizer_seconds") | {
        "peak_rss_bytes": report.get("peak_rss_bytes"), "wall_seconds": wall, "threads": os.cpu_count(),
        "log": log, "command": cmd}


def torch_speed(a):
    cmd = [sys.executable, os.path.abspath(__file__), "--_torch-speed-worker", "--student", a.student, "--teacher", a.teacher,
           "--batch", str(a.batch), "--seq-len", str(a.seq_len), "--grad-accum", str(a.grad_accum),
           "--steps", str(a.steps), "--temperature", str(a.temperature), "--seed", str(a.seed)]
    print("speed: PyTorch training loop (child process) ...", file=sys.stderr)
    t = time.perf_counter()
    p = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    w = json.loads(p.stdout.strip().splitlines()[-1])
    return summarize(a, w["steps"][1:], "teacher", "forward", "backward", "optimizer") | {
        "peak_rss_bytes": w["peak_rss_bytes"], "wall_seconds": wall, "threads": w["threads"], "log": w["steps"]}


def summarize(a, timed, teacher, forward, backward, optimizer):
    sec = sum(r["seconds"] for r in timed)
    part = lambda k: sum(r[k] for r in timed)
    return {"steps": len(timed), "seconds": sec, "tokens_per_s": a.batch * a.seq_len * a.grad_accum * len(timed) / sec,
            "teacher_fraction": part(teacher) / sec, "forward_fraction": part(forward) / sec,
            "backward_fraction": part(backward) / sec, "optimizer_fraction": part(optimizer) / sec}


def speed(a):
    import torch, transformers
    before = loadavg()
    ours = ours_speed(a)
    middle = loadavg()
    theirs = torch_speed(a)
    after = loadavg()
    r = {"batch": a.batch, "seq_len": a.seq_len, "grad_accum": a.grad_accum, "steps": a.steps,
         "tokens_per_step": a.batch * a.seq_len * a.grad_accum, "temperature": a.temperature,
         "loadavg_before": before, "loadavg_between": middle, "loadavg_after": after,
         "torch_version": torch.__version__, "transformers_version": transformers.__version__,
         "cpu_count": os.cpu_count(), "ours": ours, "torch": theirs, "ours_over_torch": ours["tokens_per_s"] / theirs["tokens_per_s"]}
    gib = lambda b: f"{b / 2**30:.2f} GiB" if b else "?"
    print(f"\n### Training speed: KD, batch {a.batch} × {a.seq_len} tokens × grad-accum {a.grad_accum} "
          f"({r['tokens_per_step']} tokens/step), {a.steps} timed steps after 1 warmup step\n")
    print("| trainer | threads | tokens/s | s/step | teacher | student fwd+loss | backward | optimizer | peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, s in (("transact (ours)", ours), (f"PyTorch {torch.__version__} + transformers {transformers.__version__}", theirs)):
        print(f"| {name} | {s['threads']} | {s['tokens_per_s']:.1f} | {s['seconds'] / s['steps']:.2f} | "
              f"{100 * s['teacher_fraction']:.0f}% | {100 * s['forward_fraction']:.0f}% | {100 * s['backward_fraction']:.0f}% | "
              f"{100 * s['optimizer_fraction']:.0f}% | {gib(s['peak_rss_bytes'])} |")
    print(f"\nours / PyTorch: {r['ours_over_torch']:.2f}x. loadavg before {before}; between {middle}; after {after}. "
          f"Ours uses rayon on all {os.cpu_count()} cores; PyTorch torch.set_num_threads({THREADS}).")
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--transact", default="target/release/transact", help="the transact binary (release build)")
    ap.add_argument("--train-grads", default="target/release/examples/train_grads", help="the train_grads example binary")
    ap.add_argument("--student", required=True, help="HF directory of the model being trained (the pruned one)")
    ap.add_argument("--teacher", required=True, help="HF directory of the teacher (the dense one)")
    ap.add_argument("--batch", type=int, default=4, help="sequences per micro-batch")
    ap.add_argument("--seq-len", type=int, default=256, help="tokens per sequence")
    ap.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (speed)")
    ap.add_argument("--steps", type=int, default=4, help="timed optimizer steps after one warmup step (speed)")
    ap.add_argument("--temperature", type=float, default=1.0, help="KD temperature")
    ap.add_argument("--loss", choices=["kd", "ce", "kd+ce"], default="kd", help="loss of the parity check (speed is always kd)")
    ap.add_argument("--kd-weight", type=float, default=0.5, help="KD's weight in kd+ce (parity)")
    ap.add_argument("--seed", type=int, default=0, help="which sequences train_grads draws; PyTorch's token ids in speed")
    ap.add_argument("--json", help="write all numbers here")
    ap.add_argument("--parity", action="store_true", help="gradient parity on one micro-batch")
    ap.add_argument("--speed", action="store_true", help="training-loop tokens/s of both")
    ap.add_argument("--_torch-speed-worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._torch_speed_worker:
        return torch_speed_worker(a)
    for p in (a.student, a.teacher):
        if not os.path.isfile(os.path.join(p, "config.json")):
            sys.exit(f"{p}: not a Hugging Face directory (no config.json)")
    both = not a.parity and not a.speed
    r = {"threads": THREADS}
    if a.parity or both:
        r["parity"] = parity(a)
    if a.speed or both:
        r["speed"] = speed(a)
    if a.json:
        json.dump(r, open(a.json, "w"), indent=2)
    if "parity" in r and not r["parity"]["pass"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
