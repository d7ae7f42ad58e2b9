#!/usr/bin/env python3
"""A bounded load test of `transact serve` (loopback only, fixed counts and a time limit),
standard library only:

1. 1,000 connections at once, each one kind of client: a completion, a streamed completion
   read to the end, a slow reader (a few bytes at a time), a client that hangs up mid-stream,
   one that connects and closes, and malformed requests (bytes that are not HTTP, truncated or
   mistyped JSON, a body shorter than its Content-Length, a 64 KiB header, an unknown method,
   a prompt of token ids outside the vocabulary). Every response must be well-formed HTTP
   with a JSON body in OpenAI's error shape, or a complete event stream; 429 is a valid answer
   when the queue is full.
2. 10,000 small requests from 16 workers, with the server's resident memory (VmRSS) sampled
   before and after: memory must not grow with the number of requests served.
3. The server still answers, with the same greedy text as before the test.

  python3 bench/serve-load.py --transact target/release/transact --model MODEL.gguf [--json OUT]
"""
import argparse, asyncio, json, os, random, signal, socket, subprocess, sys, time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


async def read_response(reader, limit_s=300):
    """Reads one HTTP/1.1 response; returns (status, headers, body bytes). Raises on anything
    malformed."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), limit_s)
    lines = head.decode("latin-1").split("\r\n")
    proto, status = lines[0].split(" ", 2)[:2]
    assert proto == "HTTP/1.1", lines[0]
    headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if l)}
    body = b""
    if headers.get("transfer-encoding") == "chunked":
        while True:
            size = int((await asyncio.wait_for(reader.readline(), limit_s)).strip(), 16)
            chunk = await asyncio.wait_for(reader.readexactly(size + 2), limit_s)
            body += chunk[:-2]
            if size == 0:
                break
    elif "content-length" in headers:
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), limit_s)
    return int(status), headers, body


def check_body(status, headers, body, kind=""):
    ctype = headers.get("content-type", "")
    if kind == "garbage" and status == 400 and not body:
        return  # not HTTP at all: the HTTP layer's bare 400
    if ctype.startswith("text/event-stream"):
        events = [e[6:] for e in body.decode().split("\n\n") if e.startswith("data: ")]
        assert events and events[-1] == "[DONE]", body[-200:]
        for e in events[:-1]:
            json.loads(e)
        return
    v = json.loads(body)
    if status != 200:
        assert set(v["error"]) >= {"message", "type"}, v


def request(body, path="/v1/completions", method="POST", extra=b""):
    b = body.encode() if isinstance(body, str) else body
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(b)}\r\n".encode()
            + extra + b"Connection: close\r\n\r\n" + b)


def completion(stream=False, tokens=8, **kw):
    return json.dumps({"prompt": "Tell me a story about a dragon.", "max_tokens": tokens, "temperature": 0.7, "seed": 1, "stream": stream, **kw})


KINDS = ["whole", "stream", "slow", "hangup", "silent", "garbage", "truncated_json", "short_body", "big_header",
         "bad_method", "bad_ids", "wrong_types", "chat_stream"]


async def client(port, kind, stats):
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
    except OSError as e:
        stats["connect_failed"] = stats.get("connect_failed", 0) + 1
        return
    try:
        expect_response = True
        if kind == "whole":
            writer.write(request(completion()))
        elif kind in ("stream", "slow", "hangup"):
            writer.write(request(completion(stream=True, tokens=32)))
        elif kind == "chat_stream":
            writer.write(request(json.dumps({"messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 8, "stream": True}), "/v1/chat/completions"))
        elif kind == "silent":
            expect_response = False
        elif kind == "garbage":
            writer.write(bytes(random.getrandbits(8) for _ in range(300)) + b"\r\n\r\n")
            expect_response = None  # an error response or a closed connection
        elif kind == "truncated_json":
            writer.write(request('{"prompt": "abc", "max_tok'))
        elif kind == "short_body":
            full = request(completion())
            writer.write(full[:-20])
            await writer.drain()
            writer.close()
            stats[kind + ":closed"] = stats.get(kind + ":closed", 0) + 1
            return
        elif kind == "big_header":
            writer.write(request(completion(), extra=b"X-Big: " + b"a" * 65536 + b"\r\n"))
            expect_response = None
        elif kind == "bad_method":
            writer.write(request("", method="BREW"))
        elif kind == "bad_ids":
            writer.write(request(json.dumps({"prompt": [1, 2, 10 ** 12], "max_tokens": 2})))
        elif kind == "wrong_types":
            writer.write(request(json.dumps({"prompt": {"a": 1}, "max_tokens": [1], "stream": "yes"})))
        await writer.drain()
        if expect_response is False:
            writer.close()
            stats[kind] = stats.get(kind, 0) + 1
            return
        if kind == "hangup":
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 300)
            if b"text/event-stream" in head:
                await asyncio.wait_for(reader.readuntil(b"data: "), 300)
                writer.close()
                stats[kind] = stats.get(kind, 0) + 1
                return
            r = asyncio.StreamReader(limit=1 << 22)
            r.feed_data(head + await asyncio.wait_for(reader.read(), 300))
            r.feed_eof()
            status, headers, body = await read_response(r)
            check_body(status, headers, body, kind)
            stats[f"{kind}:{status}"] = stats.get(f"{kind}:{status}", 0) + 1
            return
        if kind == "slow":
            # A few bytes at a time, with pauses, then the rest.
            got = b""
            for _ in range(20):
                got += await asyncio.wait_for(reader.read(16), 300)
                await asyncio.sleep(0.05)
            rest = await asyncio.wait_for(reader.read(), 300)
            raw = got + rest
            r = asyncio.StreamReader(limit=1 << 22)
            r.feed_data(raw)
            r.feed_eof()
            status, headers, body = await read_response(r)
        else:
            try:
                status, headers, body = await read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionResetError) as e:
                if expect_response is None:
                    stats[kind + ":closed"] = stats.get(kind + ":closed", 0) + 1
                    return
                raise
        check_body(status, headers, body, kind)
        key = f"{kind}:{status}"
        stats[key] = stats.get(key, 0) + 1
    except Exception as e:
        stats.setdefault("malformed", []).append(f"{kind}: {type(e).__name__}: {e}"[:300])
    finally:
        writer.close()


async def flood(port, n, seed):
    random.seed(seed)
    stats = {}
    kinds = [KINDS[i % len(KINDS)] for i in range(n)]
    random.shuffle(kinds)
    await asyncio.gather(*(client(port, k, stats) for k in kinds))
    return stats


async def many(port, total, workers):
    done, failures = 0, []
    lock = asyncio.Lock()

    async def worker(w):
        nonlocal done
        while True:
            async with lock:
                if done >= total:
                    return
                i = done
                done += 1
            body = [completion(tokens=2), completion(tokens=1, logprobs=2, echo=True), completion(stream=True, tokens=2)][i % 3]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request(body))
            await writer.drain()
            try:
                status, headers, b = await read_response(reader)
                check_body(status, headers, b)
                if status != 200:
                    failures.append(status)
            except Exception as e:
                failures.append(repr(e)[:200])
            writer.close()

    await asyncio.gather(*(worker(w) for w in range(workers)))
    return failures


def greedy(port):
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("POST", "/v1/completions", json.dumps({"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}), {"Content-Type": "application/json"})
    r = c.getresponse()
    return r.status, json.loads(r.read())["choices"][0]["text"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transact", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--json")
    args = ap.parse_args()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen([args.transact, "serve", args.model, "--port", str(port), "--ctx", "512"], stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "serving" in line:
            break
    out = {}
    try:
        out["greedy_before"] = greedy(port)
        out["rss_start_kib"] = rss_kib(proc.pid)
        t = time.time()
        out["flood"] = asyncio.run(flood(port, args.connections, 0))
        out["flood_s"] = time.time() - t
        out["rss_after_flood_kib"] = rss_kib(proc.pid)
        t = time.time()
        half = args.requests // 2
        f1 = asyncio.run(many(port, half, 16))
        out["rss_after_half_kib"] = rss_kib(proc.pid)
        f2 = asyncio.run(many(port, args.requests - half, 16))
        out["requests_s"] = time.time() - t
        out["request_failures"] = (f1 + f2)[:20]
        out["request_failure_count"] = len(f1 + f2)
        out["rss_after_requests_kib"] = rss_kib(proc.pid)
        out["greedy_after"] = greedy(port)
        out["alive"] = proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        out["exit_code"] = proc.wait(timeout=60)
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    ok = (out["alive"] and out["exit_code"] == 0 and not out["flood"].get("malformed") and out["request_failure_count"] == 0
          and out["greedy_after"] == out["greedy_before"])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
