#!/usr/bin/env python3
"""Check that transact's exports load in stock runtimes and match our engine's greedy text.

  --hf DIR     an HF export (`transact convert M DIR --to hf`), loaded with `transformers`
  --gguf FILE  a GGUF export (`transact convert M F --to gguf`), loaded with llama.cpp
               through `llama-cpp-python`; may be repeated

Prints one PASS/FAIL line per check and exits 1 if any check failed. The references below are
transact's own outputs for SmolLM2-135M-Instruct (`transact generate M --prompt P --max-tokens 8`),
so use this with exports of that model that were not pruned; --skip-ref checks loading only.

Installs nothing. Create the venv once (PyPI only; torch's wheel pulls its CUDA packages, ~5 GB,
because `pip install --no-deps torch` fails at import with `libcudart.so.13` missing; the
llama-cpp-python install compiles llama.cpp, about 6-7 minutes on 2 cores):

  python3 -m venv /tmp/stockvenv
  /tmp/stockvenv/bin/pip install --upgrade pip
  nice -n 19 /tmp/stockvenv/bin/pip install torch transformers safetensors
  CMAKE_ARGS="-DGGML_NATIVE=ON" CMAKE_BUILD_PARALLEL_LEVEL=2 \
      nice -n 19 /tmp/stockvenv/bin/pip install llama-cpp-python

Run: /tmp/stockvenv/bin/python scripts/check-stock-loaders.py --hf DIR --gguf FILE [--gguf FILE]
(Verified with torch 2.15.0, transformers 5.24.0, tokenizers 0.23.3, llama-cpp-python 0.3.36.
To try another transformers, e.g. 4.45: pip install --target /tmp/tf445 "transformers==4.45.*"
"huggingface-hub<1.0", then run with PYTHONPATH=/tmp/tf445.)
"""
import argparse, io, logging, os, re, sys, tempfile, warnings

IDS = {"Hello world! 12345 it's": [19556, 905, 17, 216, 33, 34, 35, 36, 37, 357, 506],
       "The capital of France is": [504, 3575, 282, 4649, 314]}
GREEDY = {"The capital of France is": " Paris.\n\nThe answer is:",
          "One, two, three, four,": " five, six, seven, eight,",
          "The quick brown fox jumps over the lazy": " dog\n\nIn this example, the"}
TOP5_PROMPT, TOP5 = "The capital of France is", [" Paris", " the", " London", " Le", " New"]
# llama.cpp log lines that signal a metadata problem (e.g. unknown pre-tokenizer, missing key).
BAD_LOG = re.compile(r"\b(warn\w*|error|fail\w*|invalid|missing|deprecated|degraded)\b", re.I)
failures = []


def check(name, ok, detail=""):
    print(f"{'PASS' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""), flush=True)
    if not ok:
        failures.append(name)


def check_hf(path, args):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch, transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    transformers.logging.get_logger().addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            tok = AutoTokenizer.from_pretrained(path)
            ver = tuple(int(x) for x in transformers.__version__.split(".")[:2])
            kw = "dtype" if ver >= (4, 56) else "torch_dtype"  # renamed in 4.56
            model = AutoModelForCausalLM.from_pretrained(path, **{kw: torch.float32}).eval()
        except Exception as e:
            return check(f"hf load {path}", False, f"{type(e).__name__}: {e}")
    transformers.logging.get_logger().removeHandler(handler)
    msgs = [re.sub(r"\x1b\[[0-9;]*m", "", l) for l in log.getvalue().splitlines() if l.strip()]
    msgs += [str(w.message) for w in caught]
    check(f"hf load {path}", True, f"transformers {transformers.__version__}, {type(tok).__name__}")
    check("hf no warnings while loading", not msgs, " | ".join(msgs))
    if args.skip_ref:
        return
    for text, want in IDS.items():
        got = tok(text, add_special_tokens=True)["input_ids"]
        bos = " (BOS prepended)" if got[:1] == [tok.bos_token_id] else ""
        check(f"hf ids {text!r}", got == want, f"{got}{bos}")
    for prompt, want in GREEDY.items():
        enc = tok(prompt, return_tensors="pt")  # the usual idiom: generate(**tokenizer(...))
        try:
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=args.max_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
        except Exception as e:
            check(f"hf greedy {prompt!r}", False, f"{type(e).__name__}: {e}")
            continue
        got = tok.decode(out[0, enc["input_ids"].shape[1]:])
        check(f"hf greedy {prompt!r}", got == want, repr(got))
    try:
        with torch.no_grad():
            logits = model(**tok(TOP5_PROMPT, return_tensors="pt")).logits[0, -1]
    except Exception as e:
        return check(f"hf top5 {TOP5_PROMPT!r}", False, f"{type(e).__name__}: {e}")
    vals, idx = logits.topk(5)
    got = [tok.decode([int(i)]) for i in idx]
    check(f"hf top5 {TOP5_PROMPT!r}", got == TOP5,
          ", ".join(f"{t!r} {float(v):.3f}" for t, v in zip(got, vals)))


def capture_fd2(fn):
    """Runs fn() with file descriptor 2 (C and Python stderr) captured; returns (result, error, log)."""
    sys.stderr.flush()
    saved, result, error = os.dup(2), None, None
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            result = fn()
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        tmp.seek(0)
        return result, error, tmp.read().decode("utf-8", "replace")


def check_gguf(path, args):
    import numpy as np, llama_cpp
    llm, error, log = capture_fd2(lambda: llama_cpp.Llama(model_path=path, n_ctx=512,
                                                          logits_all=True, verbose=True))
    if args.show_log:
        sys.stderr.write(log)
    bad = [l.strip() for l in log.splitlines() if BAD_LOG.search(l)]
    if error:
        return check(f"gguf load {path}", False, " | ".join([error] + bad))
    meta = llm.metadata
    check(f"gguf load {path}", True, f"llama-cpp-python {llama_cpp.__version__}, "
          f"pre={meta.get('tokenizer.ggml.pre')}, add_bos={meta.get('tokenizer.ggml.add_bos_token')}")
    check("gguf no warnings/errors in llama.cpp load log", not bad, " | ".join(bad))
    if args.skip_ref:
        return
    for text, want in IDS.items():
        got = llm.tokenize(text.encode(), add_bos=False)
        check(f"gguf ids {text!r}", got == want, str(got))
    for prompt, want in GREEDY.items():
        r = llm(prompt, max_tokens=args.max_tokens, temperature=0.0)
        got = r["choices"][0]["text"]
        check(f"gguf greedy {prompt!r}", got == want, repr(got))
    llm.reset()
    llm.eval(llm.tokenize(TOP5_PROMPT.encode(), add_bos=False))
    logits = np.asarray(llm.scores[llm.n_tokens - 1])
    top = np.argsort(-logits)[:5]
    got = [llm.detokenize([int(t)]).decode("utf-8", "replace") for t in top]
    check(f"gguf top5 {TOP5_PROMPT!r}", got == TOP5,
          ", ".join(f"{t!r} {logits[i]:.3f}" for t, i in zip(got, top)))
    llm.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hf", metavar="DIR", help="HF directory export to load with transformers")
    ap.add_argument("--gguf", metavar="FILE", action="append", default=[],
                    help="GGUF export to load with llama-cpp-python (repeatable)")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--skip-ref", action="store_true", help="check loading only, not outputs")
    ap.add_argument("--show-log", action="store_true", help="echo llama.cpp's load log")
    args = ap.parse_args()
    if not args.hf and not args.gguf:
        ap.error("give --hf DIR and/or --gguf FILE")
    if args.hf:
        check_hf(args.hf, args)
    for path in args.gguf:
        check_gguf(path, args)
    print(f"{len(failures)} failed" if failures else "all checks passed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
