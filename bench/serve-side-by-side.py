#!/usr/bin/env python3
"""Throughput and latency of `transact serve` next to llama.cpp's server, same GGUF, same threads,
same run.

llama.cpp's server comes from PyPI (`llama-cpp-python[server]`) in the throw-away venv of
`bench/llama-venv.sh`; `bench/serve-side-by-side.sh` installs the extra and runs this script
there. The client is the standard library: one thread per stream, each a streamed completion
(`stream: true`, greedy, no stop text, a fixed number of tokens), timed from the request to the
first text chunk (time to first token, TTFT) and between chunks (inter-token latency, ITL).
Aggregate decode throughput = all generated tokens / wall time of the round.

  bench/serve-side-by-side.sh --transact target/release/transact \\
      --model dense:f32:dense-f32.gguf --model half:f32:half-f32.gguf [--streams 1,4,16]

Each --model is LABEL:DTYPE:FILE.gguf, DTYPE the weight type transact runs in (f32, f16, bf16,
q8_0), which should match the file's tensor type (`transact convert M F.gguf --to gguf --dtype
DTYPE`).

Both servers get 2 threads (`RAYON_NUM_THREADS` / `n_threads`); transact decodes up to 16
streams per step (`--max-batch`); llama-cpp-python's server runs one request at a time.
Writes a Markdown table to stdout and everything to --json.
"""
import argparse, http.client, json, os, signal, socket, statistics, subprocess, sys, threading, time

THREADS = 2


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_ready(port, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/v1/models")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit("server did not start")


def prompts(n):
    topics = ["the history of Rome", "how rain forms", "a day at the sea", "the rules of chess", "why the sky is blue",
              "a recipe for bread", "the life of bees", "how computers add numbers", "a trip to the mountains",
              "the story of a lost cat", "how trains work", "the planets of the solar system", "a letter to a friend",
              "the first day of school", "how to plant a tree", "a walk in the city at night"]
    return [f"Write a short essay about {topics[i % len(topics)]}. Essay {i}:" for i in range(n)]


def stream(port, model, prompt, tokens, out):
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True})
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200, r.read()
    times, pieces = [], 0
    for line in r:
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            break
        ch = json.loads(data)["choices"]
        if ch and ch[0].get("text"):
            times.append(time.perf_counter())
            pieces += 1
    out.append({"start": t0, "times": times, "pieces": pieces, "end": time.perf_counter()})


def round_(port, model, n, tokens):
    out, threads = [], []
    for p in prompts(n):
        t = threading.Thread(target=stream, args=(port, model, p, tokens, out))
        threads.append(t)
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft = [r["times"][0] - r["start"] for r in out if r["times"]]
    itl = [b - a for r in out for a, b in zip(r["times"], r["times"][1:])]
    generated = sum(r["pieces"] for r in out)
    q = lambda xs, p: statistics.quantiles(xs, n=100)[p - 1] if len(xs) > 1 else (xs[0] if xs else float("nan"))
    return {"streams": n, "wall_s": wall, "chunks": generated, "tok_s": generated / wall,
            "ttft_p50_ms": 1e3 * statistics.median(ttft), "ttft_p99_ms": 1e3 * q(ttft, 99),
            "itl_p50_ms": 1e3 * statistics.median(itl), "itl_p99_ms": 1e3 * q(itl, 99)}


def run_server(kind, args, dtype, path):
    port = free_port()
    env = dict(os.environ)
    if kind == "transact":
        env["RAYON_NUM_THREADS"] = str(THREADS)
        cmd = [args.transact, "serve", path, "--port", str(port), "--dtype", dtype, "--max-batch", "16", "--ctx", "2048", "--model-name", "m"]
    else:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", path, "--port", str(port), "--n_threads", str(THREADS),
               "--n_threads_batch", str(THREADS), "--n_ctx", "2048", "--model_alias", "m",
               # Its default lets each new request interrupt the running one.
               "--interrupt_requests", "False"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, proc)
        round_(port, "m", 1, 8)  # warm-up
        return [round_(port, "m", n, args.tokens) for n in args.streams]
    finally:
        proc.send_signal(signal.SIGTERM if kind == "transact" else signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transact", required=True)
    ap.add_argument("--model", action="append", required=True, help="LABEL:DTYPE:FILE.gguf")
    ap.add_argument("--streams", default="1,4,16")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per stream")
    ap.add_argument("--json")
    args = ap.parse_args()
    args.streams = [int(s) for s in args.streams.split(",")]
    rows = []
    for spec in args.model:
        label, dtype, path = spec.split(":", 2)
        for kind in ["transact", "llama.cpp"]:
            for r in run_server(kind, args, dtype, path):
                r.update(model=label, dtype=dtype, server=kind)
                rows.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
    print("| model | server | streams | decode tok/s (all streams) | TTFT p50 / p99 ms | ITL p50 / p99 ms |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['server']} | {r['streams']} | {r['tok_s']:.1f} | {r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} | {r['itl_p50_ms']:.1f} / {r['itl_p99_ms']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
