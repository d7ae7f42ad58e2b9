#!/usr/bin/env python3
"""GGUF quantization by transact next to llama.cpp's own quantizer, on the same f32 GGUF files.

For each model and type, transact writes `transact convert F32.gguf --to gguf --dtype T` and
llama.cpp writes `llama_model_quantize` (what `llama-quantize` runs) of the same f32 file. For
every file: the size on disk, how many tensors got another type than llama.cpp's file (our rule is
meant to be llama-quantize's), wiki perplexity by `transact eval` (the same evaluator for both
files), and 16 greedy tokens from llama.cpp and from transact, compared with transact's f32 text.
Runs in the llama.cpp venv: bench/quant-side-by-side.sh (which creates it on first use).

  bench/quant-side-by-side.sh --transact target/release/transact \\
      --model dense:dense-f32.gguf --model half:half-f32.gguf --out bench/quant [--windows 20]

Writes a Markdown table to stdout and everything to OUT/quant.json.
"""
import argparse, ctypes, json, os, subprocess, sys

TYPES = ["f32", "bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_1", "q4_0"]
PROMPT = "The capital of France is Paris. The capital of Germany is"
TOKENS = 16


def llama_quantize(src, dst, name):
    import llama_cpp
    ftype = name.upper()  # transact's type names are llama.cpp's LLAMA_FTYPE_MOSTLY_* names
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    p.nthread = 2
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p))
    return rc == 0


def tensor_types(path):
    from gguf import GGUFReader
    return {t.name: t.tensor_type.name for t in GGUFReader(path).tensors}


def llama_text(path):
    import llama_cpp.llama_cpp as L
    from llama_cpp import Llama
    # llama.cpp's AMX kernels (an "extra buffer type", chosen on CPUs that report AMX) crash on
    # every quantized model on this machine, the Hub's own SmolLM2 Q4_1 included; the plain CPU
    # kernels compute the same model.
    default = L.llama_model_default_params
    def params():
        p = default()
        p.use_extra_bufts = False
        return p
    L.llama_model_default_params = params
    try:
        llm = Llama(model_path=path, n_ctx=256, n_threads=2, verbose=False)
    finally:
        L.llama_model_default_params = default
    out = llm.create_completion(PROMPT, max_tokens=TOKENS, temperature=0.0)
    return out["choices"][0]["text"].strip()


def transact_text(tr, path):
    r = subprocess.run([tr, "generate", path, "--prompt", PROMPT, "--max-tokens", str(TOKENS)],
                       capture_output=True, text=True, check=True)
    # `generate` echoes the prompt, then streams the continuation.
    return r.stdout.removeprefix(PROMPT).strip()


def perplexity(tr, path, windows, out):
    js = out + ".eval.json"
    subprocess.run([tr, "eval", path, "--ppl", "wiki", "--seq-len", "2048", "--limit", str(windows),
                    "--json", js, "--force"], capture_output=True, text=True, check=True)
    r = json.load(open(js))
    return r["perplexity"][0]["token_perplexity"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transact", required=True)
    ap.add_argument("--model", action="append", required=True, help="LABEL:F32_GGUF")
    ap.add_argument("--out", required=True)
    ap.add_argument("--windows", type=int, default=20, help="wiki windows of 2048 tokens")
    ap.add_argument("--types", default=",".join(TYPES))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rows = []
    for spec in a.model:
        label, f32 = spec.split(":", 1)
        reference = transact_text(a.transact, f32)
        for t in a.types.split(","):
            for tool in ["transact", "llama.cpp"]:
                if t == "f32" and tool == "llama.cpp":
                    continue
                path = f32 if t == "f32" else os.path.join(a.out, f"{label}-{t}-{tool}.gguf")
                if t != "f32" and not os.path.exists(path):
                    if tool == "transact":
                        subprocess.run([a.transact, "convert", f32, path, "--to", "gguf", "--dtype", t],
                                       capture_output=True, text=True, check=True)
                    elif not llama_quantize(f32, path, t):
                        rows.append({"model": label, "type": t, "tool": tool, "error": "llama_model_quantize failed"})
                        print(f"{label} {t} {tool}: llama.cpp refused to quantize", file=sys.stderr)
                        continue
                row = {"model": label, "type": t, "tool": tool, "file": path, "bytes": os.path.getsize(path)}
                row["types"] = tensor_types(path)
                row["wiki_ppl"] = perplexity(a.transact, path, a.windows, path)
                row["llama_cpp_text"] = llama_text(path)
                row["transact_text"] = transact_text(a.transact, path)
                row["reference_text"] = reference
                rows.append(row)
                print(f"{label} {t} {tool}: {row['bytes'] / 1e6:.1f} MB, ppl {row['wiki_ppl']:.3f}", file=sys.stderr)
    # Tensor types that differ between the two tools' files of the same type.
    for r in rows:
        twin = next((x for x in rows if x is not r and x.get("model") == r["model"] and x.get("type") == r["type"]
                     and "types" in x), None)
        if "types" in r and twin is not None:
            r["types_differing_from_other_tool"] = sorted(k for k, v in r["types"].items() if twin["types"].get(k) != v)
    json.dump({"prompt": PROMPT, "tokens": TOKENS, "windows": a.windows, "rows": rows},
              open(os.path.join(a.out, "quant.json"), "w"), indent=1)
    print(f"| model | type | tool | MB on disk | wiki ppl ({a.windows}×2048) | tensors typed differently | "
          f"llama.cpp text = f32 | transact text = f32 |")
    print("|---|---|---|---:|---:|---:|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['type']} | {r['tool']} | – | – | – | {r['error']} | |")
            continue
        diff = r.get("types_differing_from_other_tool")
        print(f"| {r['model']} | {r['type']} | {r['tool']} | {r['bytes'] / 1e6:.1f} | {r['wiki_ppl']:.3f} | "
              f"{'–' if diff is None else len(diff)} | {r['llama_cpp_text'] == r['reference_text']} | "
              f"{r['transact_text'] == r['reference_text']} |")


if __name__ == "__main__":
    main()
