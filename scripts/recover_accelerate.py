#!/usr/bin/env python3
"""Recovery training for `transact prune --recover-cmd` on stock transformers + accelerate.

The same recipe as `transact train` (and `prune --recover`): forward KL(teacher ‖ student) over
the full vocabulary at every position (`kd`, scaled by T²), next-token cross-entropy (`ce`), or
`kd_weight·kd + (1 − kd_weight)·ce`; AdamW β 0.9/0.95, ε 1e-8, decoupled weight decay on
matrices only, global gradient-norm clip, linear warmup then half a cosine to 10 % of the peak;
non-overlapping blocks of `--seq-len` tokens in a seeded order. It exists for models and budgets
beyond one machine: under `accelerate launch` the same file runs data-parallel, with DeepSpeed
ZeRO or FSDP chosen by the launcher's config, on any number of GPUs.

  transact prune dense.gguf --out half --ratio 0.5 --shots 4 \\
    --recover-cmd 'accelerate launch scripts/recover_accelerate.py --in {in} --out {out} \\
                   --teacher dense-hf --data text.jsonl --tokens 10M'

`--in` is the pruned model as transact writes it (an HF directory), `--out` receives the trained
one (HF safetensors, tokenizer files copied), `--teacher` is the dense model as an HF directory
(`transact convert dense.gguf dense-hf --to hf`). `--data` is a text file, a JSONL file with a
`text` field, or a folder of them. A `recover_report.json` in `--out` records what ran.
"""
import argparse
import json
import math
import os
import random
import shutil
import sys
import time

TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"]


def count(text):
    """100K, 1.5M, 2B → integers (as transact's --tokens)."""
    units = {"K": 10**3, "M": 10**6, "B": 10**9}
    t = text.strip().upper()
    n = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    if not math.isfinite(n) or n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return int(round(n))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--in", dest="inp", required=True, help="the pruned model (HF directory)")
    p.add_argument("--out", required=True, help="where the trained model goes (HF directory)")
    p.add_argument("--teacher", help="the dense model (HF directory); needed by kd and kd+ce")
    p.add_argument("--data", required=True, help="text file, JSONL file (`text` field) or folder")
    p.add_argument("--loss", choices=["kd", "ce", "kd+ce"], default=None, help="default: kd with --teacher, ce without")
    p.add_argument("--kd-weight", type=float, default=0.5, help="weight of kd in kd+ce (0–1; default 0.5)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of the kd term (default 1)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--tokens", type=count, help="training tokens, rounded up to whole steps (default 100K)")
    budget.add_argument("--steps", type=count, help="optimizer steps")
    p.add_argument("--batch", type=int, default=4, help="sequences per micro-batch and process (default 4)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default 256)")
    p.add_argument("--grad-accum", type=int, default=2, help="micro-batches per optimizer step (default 2)")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (default 3e-4)")
    p.add_argument("--warmup", type=float, default=0.1, help="warmup as a fraction of the steps (default 0.1)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW decoupled weight decay on matrices (default 0)")
    p.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clip, 0 = off (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the block order (default 0)")
    p.add_argument("--bf16", action="store_true", help="mixed precision in bf16 (GPUs); f32 otherwise")
    a = p.parse_args(argv)
    a.loss = a.loss or ("kd" if a.teacher else "ce")
    if a.loss != "ce" and not a.teacher:
        p.error(f"--loss {a.loss} needs --teacher (the dense model as an HF directory)")
    if not 0 <= a.kd_weight <= 1 or not 0 < a.temperature <= 100:
        p.error("--kd-weight must be in 0–1 and --temperature in (0, 100]")
    if min(a.batch, a.seq_len - 1, a.grad_accum) < 1 or not 0 < a.lr < 1 or not 0 <= a.warmup < 1:
        p.error("--batch, --grad-accum ≥ 1, --seq-len ≥ 2, 0 < --lr < 1, 0 ≤ --warmup < 1")
    if a.tokens is None and a.steps is None:
        a.tokens = 100_000
    return a


def read_texts(path):
    """Documents of a text file (one), a JSONL file (`text` of each line) or a folder of them."""
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith((".txt", ".jsonl", ".json"))
    )
    if not files:
        sys.exit(f"error: {path}: no text files (.txt, .jsonl)")
    docs = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            if f.endswith((".jsonl", ".json")):
                for i, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            docs.append(json.loads(line)["text"])
                        except (ValueError, KeyError, TypeError):
                            sys.exit(f"error: {f}: line {i} is not a JSON object with a `text` field")
            else:
                docs.append(fh.read())
    return [d for d in docs if d.strip()]


def blocks(tokenizer, docs, seq_len):
    """Documents tokenized (BOS-free, EOS between documents when the tokenizer has one) and cut
    into non-overlapping blocks of seq_len tokens; the remainder is dropped."""
    eos = tokenizer.eos_token_id
    ids = []
    for d in docs:
        ids.extend(tokenizer(d, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
    n = len(ids) // seq_len
    if n == 0:
        sys.exit(f"error: the training text holds {len(ids)} tokens, less than one block of {seq_len}")
    return [ids[i * seq_len:(i + 1) * seq_len] for i in range(n)]


def lr_at(step, total, warmup, peak):
    """Linear warmup over steps 0 .. warmup (the first step already moves), then half a cosine
    to 10 % of the peak at the last step — transact train's schedule."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def main(argv=None):
    a = parse_args(argv if argv is not None else sys.argv[1:])
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import AutoModelForCausalLM, AutoTokenizer

    acc = Accelerator(gradient_accumulation_steps=a.grad_accum, mixed_precision="bf16" if a.bf16 else "no")
    set_seed(a.seed)
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(a.inp)
    student = AutoModelForCausalLM.from_pretrained(a.inp, dtype=torch.float32)
    student.config.use_cache = False
    # transformers zeroes the gradient of the padding token's embedding row (`padding_idx`);
    # transact trains every row, and so does this script.
    student.get_input_embeddings().padding_idx = None
    teacher = None
    if a.loss != "ce":
        teacher = AutoModelForCausalLM.from_pretrained(a.teacher, dtype=torch.bfloat16 if a.bf16 else torch.float32)
        teacher.config.use_cache = False
        teacher.eval().requires_grad_(False)
        if teacher.config.vocab_size != student.config.vocab_size:
            sys.exit(f"error: {a.teacher}: vocabulary of {teacher.config.vocab_size} tokens, the student's is {student.config.vocab_size}")

    data = blocks(tok, read_texts(a.data), a.seq_len)
    random.Random(a.seed).shuffle(data)
    per_step = a.batch * a.grad_accum * acc.num_processes
    steps = a.steps or math.ceil(a.tokens / (per_step * a.seq_len))
    warmup = max(1, math.ceil(a.warmup * steps)) if a.warmup > 0 else 0

    decay = [p for n, p in student.named_parameters() if p.dim() >= 2]
    keep = [p for n, p in student.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": a.weight_decay}, {"params": keep, "weight_decay": 0.0}],
        lr=a.lr, betas=(0.9, 0.95), eps=1e-8,
    )
    student, opt = acc.prepare(student, opt)
    if teacher is not None:
        teacher = teacher.to(acc.device)

    def batch_of(micro):
        """Micro-batch `micro` of this process: blocks in the seeded order, epochs wrapping."""
        start = (micro * acc.num_processes + acc.process_index) * a.batch
        rows = [data[(start + i) % len(data)] for i in range(a.batch)]
        return torch.tensor(rows, dtype=torch.long, device=acc.device)

    def loss_of(x):
        logits = student(input_ids=x).logits.float()
        parts = {}
        if a.loss != "kd":
            b, t, v = logits.shape
            logp = F.log_softmax(logits[:, :-1].reshape(b * (t - 1), v), dim=-1)
            parts["ce"] = -logp.gather(1, x[:, 1:].reshape(-1, 1)).mean()
        if teacher is not None:
            T = a.temperature
            with torch.no_grad():
                logp_t = F.log_softmax(teacher(input_ids=x).logits.float() / T, dim=-1)
            logq = F.log_softmax(logits / T, dim=-1)
            parts["kd"] = T * T * (logp_t.exp() * (logp_t - logq)).sum() / (x.shape[0] * x.shape[1])
        w = {"kd": 1.0, "ce": 0.0} if a.loss == "kd" else {"kd": 0.0, "ce": 1.0} if a.loss == "ce" else {"kd": a.kd_weight, "ce": 1 - a.kd_weight}
        return sum(w[k] * v for k, v in parts.items()), parts

    student.train()
    log = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, warmup, a.lr)
        total = 0.0
        for m in range(a.grad_accum):
            with acc.accumulate(student):
                loss, _ = loss_of(batch_of(step * a.grad_accum + m))
                if not torch.isfinite(loss):
                    sys.exit(f"error: the loss is {loss.item()} at step {step + 1}: training diverged; lower --lr")
                acc.backward(loss)
                total += loss.item() / a.grad_accum
                if acc.sync_gradients and a.clip > 0:
                    acc.clip_grad_norm_(student.parameters(), a.clip)
                opt.step()
                opt.zero_grad()
        log.append({"step": step + 1, "loss": total, "lr": opt.param_groups[0]["lr"]})
        if acc.is_main_process:
            print(f"step {step + 1}/{steps} loss {total:.4f} lr {opt.param_groups[0]['lr']:.2e}", file=sys.stderr, flush=True)

    acc.wait_for_everyone()
    if acc.is_main_process:
        tmp = a.out.rstrip("/") + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        acc.unwrap_model(student).save_pretrained(tmp, safe_serialization=True, state_dict=acc.get_state_dict(student))
        for f in TOKENIZER_FILES:
            if os.path.exists(os.path.join(a.inp, f)):
                shutil.copy(os.path.join(a.inp, f), os.path.join(tmp, f))
        report = {
            "loss": a.loss, "steps": steps, "tokens": steps * per_step * a.seq_len, "processes": acc.num_processes,
            "blocks": len(data), "seconds": time.time() - t0, "log": log, "args": vars(a),
        }
        with open(os.path.join(tmp, "recover_report.json"), "w") as fh:
            json.dump(report, fh, indent=1)
        shutil.rmtree(a.out, ignore_errors=True)
        os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
