#!/usr/bin/env python3
"""Prefill and decode speed of transact next to llama.cpp on the same GGUF files, same run.

llama.cpp is a benchmark peer here, never a dependency of the tool: it comes from PyPI
(`llama-cpp-python`, which compiles llama.cpp) in a throw-away venv. `bench/llama-cpp-side-by-side.sh`
creates that venv on first use (~6-7 min on 2 cores) and runs this script in it with the same
arguments; by hand:

  python3 -m venv /tmp/llamavenv
  CMAKE_ARGS="-DGGML_NATIVE=ON" CMAKE_BUILD_PARALLEL_LEVEL=2 \\
      nice -n 19 /tmp/llamavenv/bin/pip install llama-cpp-python

Each --model is LABEL:DTYPE:FILE.gguf, where DTYPE (f32, f16, bf16, q8_0) is the weight type
transact runs in (`transact bench --dtype`) and should match the file's tensor type. Make the files
with `transact convert M F.gguf --to gguf --dtype DTYPE`. Both engines use 2 threads, the same
synthetic prompt, prefill of 512 tokens and decode of 32 tokens after a 256-token context;
best of --repeats, and both keep the KV cache in --kv-dtype (llama.cpp's own default is f16,
transact's f32; q8 is llama.cpp's q8_0, which needs its flash attention). --flash-attn turns
llama.cpp's flash attention on for the other types too (llama-cpp-python turns it off unless
asked). Writes a Markdown table to stdout and everything to --json.

  bench/llama-cpp-side-by-side.sh \\
      --transact target/release/transact --model dense-f32:f32:dense-f32.gguf [--model ...] [--kv-dtype f16]
"""
import argparse, json, os, subprocess, sys, tempfile, time

PREFILL = 512
CONTEXT = 256
DECODE = 32
THREADS = 2
# ggml's type ids for llama.cpp's type_k / type_v, by transact's --kv-dtype name.
GGML_TYPE = {"f32": 0, "f16": 1, "q8": 8}


def prompt(n):
    # Same ids as transact's bench (speed does not depend on which tokens).
    return [100 + i % 1000 for i in range(n)]


def llama_cpp(path, repeats, kv, flash_attn):
    from llama_cpp import Llama
    llm = Llama(model_path=path, n_ctx=2048, n_batch=PREFILL, n_ubatch=PREFILL, n_threads=THREADS,
                n_threads_batch=THREADS, type_k=GGML_TYPE[kv], type_v=GGML_TYPE[kv],
                flash_attn=flash_attn, verbose=False)
    best_p = best_d = 0.0
    for _ in range(repeats):
        llm.reset()
        t = time.perf_counter()
        llm.eval(prompt(PREFILL))
        best_p = max(best_p, PREFILL / (time.perf_counter() - t))
        llm.reset()
        llm.eval(prompt(CONTEXT))
        t = time.perf_counter()
        for i in range(DECODE):
            llm.eval([100 + i])
        best_d = max(best_d, DECODE / (time.perf_counter() - t))
    del llm
    return best_p, best_d


def transact(exe, path, dtype, repeats, kv):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "bench.json")
        subprocess.run([exe, "bench", path, "--dtype", dtype, "--kv-dtype", kv, "--repeats", str(repeats), "--json", out],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r = json.load(open(out))
    m = r["models"][0]
    p = next(x for x in m["prefill"] if x["tokens"] == PREFILL)
    dd = next(x for x in m["decode"] if x["context"] == CONTEXT)
    return {"prefill": p["tokens_per_s"], "prefill_roof": p["gemm_roof_fraction"],
            "decode": dd["tokens_per_s"], "decode_roof": dd["bandwidth_roof_fraction"],
            "roofs": r["roofs"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--transact", required=True, help="path to the transact binary (release build)")
    ap.add_argument("--model", action="append", required=True, help="LABEL:DTYPE:FILE.gguf; repeatable")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kv-dtype", choices=sorted(GGML_TYPE), default="f32", help="KV cache type of both engines")
    ap.add_argument("--flash-attn", action="store_true", help="llama.cpp with flash attention (always for q8)")
    ap.add_argument("--json", help="write all numbers here")
    a = ap.parse_args()
    flash_attn = a.flash_attn or a.kv_dtype == "q8"
    rows = []
    for spec in a.model:
        try:
            label, dtype, path = spec.split(":", 2)
        except ValueError:
            sys.exit(f"--model {spec!r}: expected LABEL:DTYPE:FILE.gguf")
        if not os.path.isfile(path):
            sys.exit(f"--model {spec!r}: no such file {path}")
        print(f"measuring {label} ...", file=sys.stderr)
        ours = transact(a.transact, path, dtype, a.repeats, a.kv_dtype)
        lp, ld = llama_cpp(path, a.repeats, a.kv_dtype, flash_attn)
        rows.append({"label": label, "dtype": dtype, "file": path, "transact": ours,
                     "llama_cpp": {"prefill": lp, "decode": ld}})
    load = open("/proc/loadavg").read().strip()
    print(f"threads {THREADS}; prefill {PREFILL} tokens; decode {DECODE} tokens at context {CONTEXT}; "
          f"KV cache {a.kv_dtype}; llama.cpp flash attention {'on' if flash_attn else 'off'}; best of {a.repeats}; loadavg {load}")
    print("| model | dtype | prefill tok/s ours | llama.cpp | ours/llama.cpp | decode tok/s ours | llama.cpp | ours/llama.cpp |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        o, l = r["transact"], r["llama_cpp"]
        print(f"| {r['label']} | {r['dtype']} | {o['prefill']:.1f} ({100 * o['prefill_roof']:.0f}% roof) | {l['prefill']:.1f} | "
              f"{o['prefill'] / l['prefill']:.2f}x | {o['decode']:.1f} ({100 * o['decode_roof']:.0f}% roof) | {l['decode']:.1f} | "
              f"{o['decode'] / l['decode']:.2f}x |")
    if a.json:
        json.dump({"loadavg": load, "threads": THREADS, "kv_dtype": a.kv_dtype, "flash_attn": flash_attn, "rows": rows}, open(a.json, "w"), indent=2)


if __name__ == "__main__":
    main()
