"""Benchmark ``gptcourse serve``: requests/s and tokens/s for 1, 4 and 16 concurrent clients,
against the same generation in-process with no HTTP (``gptcourse.generate.generate``); then
the one-at-a-time engine (the server before batching) against continuous batching (``gptcourse.batching``) at 1, 4, 16
and 64 concurrent clients.

A 6-layer, 6-head, 384-wide GPT (GPT-2's 50,257-token vocabulary and tokenizer, 1,024-token
context, random weights, seed 0) is served by :func:`gptcourse.serve.create_app` under uvicorn
in a thread of this process, on a free loopback port. Every request is the same
``POST /v1/completions`` (a 32-token prompt, ``max_tokens`` 64, ``temperature`` 0: greedy, so
every answer is the same and its length is checked). Clients are threads, each with its own
keep-alive ``http.client`` connection, sending their share of the requests back to back;
the server decodes concurrent requests together (continuous batching, ``max_batch`` 16).

The baseline is ``generate(model, prompt, 64, temperature=0, stop=eot)`` plus decoding, in
this process; at 1 client, baseline runs and requests alternate (10 of each), so both see
the same load on the machine. Serving overhead = server latency at 1 client / baseline latency - 1
(goal <= 10%). One streamed request per round at 1 client gives the time to first token.

Engines side by side (same model, same process, same run): ``serial`` is the server's engine
before batching, without the HTTP -- one worker thread runs one request at a time, first come
first served, with :func:`gptcourse.batching.generate_pieces` (``stream`` + ``TextAssembler``,
what ``serve.Engine.pieces`` does); ``batched`` is :class:`gptcourse.batching.BatchedEngine`
(``--max-batch``, default 16). Client threads each send their share of streamed greedy
requests (four different 32-token prompts, ``max_tokens`` 64) back to back and check every
answer against the prompt's answer alone. Per level: aggregate tokens/s (all completion
tokens / wall time), latency p50/p95 (submit to last piece) and time to first token p50/p95
(submit to the first piece with text). Goal: batched at 16 clients >= 4x one client's tokens/s.
With ``--http`` the same clients also go through HTTP (streamed ``/v1/completions``): to a
server that decodes one request at a time (``create_app(max_batch=1)``, like the server before
batching) and to the batched one (``--max-batch``).

    python bench/bench_serve.py                  # the full run (about 4 minutes on 2 cores)
    python bench/bench_serve.py --quick          # 8-16 tokens, few requests: does it run?
    python bench/bench_serve.py --engines-only   # skip the HTTP overhead part
    python bench/bench_serve.py --http --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import platform
import queue
import statistics
import threading
import time
from collections.abc import Callable, Iterator

import torch

from gptcourse.batching import BatchedEngine, generate_pieces
from gptcourse.generate import generate
from gptcourse.model import GPT, GPTConfig
from gptcourse.serve import background, create_app
from gptcourse.tokenizer import get_tokenizer

PROMPT = ("The history of the city begins with a small village on the river, where farmers "
          "and fishermen traded grain, salt and wool with travellers from the hills and the coast, "
          "long before the first bridge was built")
#: the engines part cycles through these (each cut to 32 tokens)
PROMPTS = [PROMPT,
           "To bake bread you need flour, water, salt and yeast; mix them, knead the dough for ten "
           "minutes, let it rise in a warm place until it has doubled, then shape the loaf",
           "Dear committee, thank you for your letter of the third. We have read the report with "
           "great interest and would like to raise three points before the meeting next week",
           "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
           "    return a\n\nprint([fibonacci(i) for i in range(10)])\n"]


def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def post(conn: http.client.HTTPConnection, body: dict) -> dict:
    conn.request("POST", "/v1/completions", body=json.dumps(body),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {data[:300]!r}")
    return json.loads(data)


def first_token_s(port: int, body: dict) -> tuple[float, float]:
    """(seconds to the first text chunk, seconds to [DONE]) of one streamed request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body=json.dumps({**body, "stream": True}),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    first = None
    while True:
        line = resp.readline()
        if not line:
            break
        if line.startswith(b"data: ") and first is None and b'"text": ""' not in line:
            first = time.perf_counter() - t0
        if line.strip() == b"data: [DONE]":
            break
    total = time.perf_counter() - t0
    conn.close()
    return first or total, total


def run_threads(work, shares: list) -> float:
    """``work(share)`` in one thread per share, all released together by a barrier; returns
    the wall time from the release until the last thread ends (the first error is raised)."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(shares) + 1)

    def thread(share) -> None:
        try:
            barrier.wait()
            work(share)
        except BaseException as err:  # noqa: BLE001 - raised below, in the caller's thread
            errors.append(err)

    threads = [threading.Thread(target=thread, args=(share,)) for share in shares]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return wall


def run_clients(port: int, body: dict, clients: int, requests: int, expect: str) -> dict:
    """``requests`` requests spread over ``clients`` threads; wall time, latencies, tokens."""
    latencies: list[float] = []
    tokens = [0]
    lock = threading.Lock()

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        try:
            for _ in range(n):
                t0 = time.perf_counter()
                out = post(conn, body)
                dt = time.perf_counter() - t0
                if out["choices"][0]["text"] != expect:
                    raise AssertionError("the server's greedy answer differs from generate()'s")
                with lock:
                    latencies.append(dt)
                    tokens[0] += out["usage"]["completion_tokens"]
        finally:
            conn.close()

    wall = run_threads(client, [requests // clients + (i < requests % clients)
                                for i in range(clients)])
    return {"clients": clients, "requests": requests, "wall_s": wall, "req_per_s": requests / wall,
            "tokens_per_s": tokens[0] / wall, "latency_median_s": statistics.median(latencies),
            "latency_max_s": max(latencies)}


def http_overhead(model, tokenizer, args) -> dict:
    """The serving overhead part: HTTP vs in-process ``generate`` at 1, 4 and 16 clients."""
    max_tokens = args.max_tokens or (16 if args.quick else 64)
    levels = [(4, 8), (16, 16)] if args.quick else [(4, 16), (16, 32)]
    rounds = 3 if args.quick else 10  # 1 client: requests, alternating with the baseline
    prompt_ids = tokenizer.encode_ordinary(PROMPT)[:32]
    prompt = tokenizer.decode(prompt_ids)
    assert tokenizer.encode_ordinary(prompt) == prompt_ids
    eot = tokenizer.eot_id
    print(f"# HTTP overhead: prompt {len(prompt_ids)} tokens, max_tokens {max_tokens}, greedy")

    # ---- in-process baseline: generate() + decode, no HTTP
    def once() -> tuple[str, int]:
        """The answer's text and completion tokens (end-of-text not counted, as the server)."""
        out = generate(model, prompt_ids, max_tokens, temperature=0.0, stop=eot)
        new = [t for t in out[0, len(prompt_ids):].tolist() if t != eot]
        return tokenizer.decode(new), len(new)

    expect, tokens = once()  # warm-up

    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    app = create_app(model, tokenizer, model_name="bench-6x384", max_tokens_cap=max(512, max_tokens))
    rows = []
    times: list[float] = []
    with background(app) as url:
        port = int(url.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        warm = post(conn, body)  # warm-up (and check the answer)
        if warm["choices"][0]["text"] != expect or warm["usage"]["completion_tokens"] != tokens:
            raise AssertionError("the server's greedy answer differs from generate()'s")
        # 1 client against the baseline, alternating, so that both see the same load
        served: list[float] = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            assert once()[0] == expect
            times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            assert post(conn, body)["choices"][0]["text"] == expect
            served.append(time.perf_counter() - t0)
        conn.close()
        rows.append({"clients": 1, "requests": rounds, "wall_s": sum(served),
                     "req_per_s": rounds / sum(served), "tokens_per_s": rounds * tokens / sum(served),
                     "latency_median_s": statistics.median(served), "latency_max_s": max(served)})
        for clients, requests in levels:
            rows.append(run_clients(port, body, clients, requests, expect))
        streams = [first_token_s(port, body) for _ in range(3)]
    base = statistics.median(times)
    print(f"# in-process: {tokens} new tokens in {base:.3f} s median of {rounds}")
    ttft = statistics.median(s[0] for s in streams)
    stream_total = statistics.median(s[1] for s in streams)
    overhead = rows[0]["latency_median_s"] / base - 1

    print()
    print("| run | clients | requests | req/s | tokens/s | latency median s | latency max s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| in-process `generate` (no HTTP) | 1 | {rounds} | {1 / base:.2f} | "
          f"{tokens / base:.1f} | {base:.3f} | {max(times):.3f} |")
    for r in rows:
        print(f"| `gptcourse serve` /v1/completions | {r['clients']} | {r['requests']} | "
              f"{r['req_per_s']:.2f} | {r['tokens_per_s']:.1f} | {r['latency_median_s']:.3f} | "
              f"{r['latency_max_s']:.3f} |")
    print()
    print(f"serving overhead at 1 client: {overhead:+.1%} (goal <= +10%: "
          f"{'met' if overhead <= 0.10 else 'NOT met'})")
    print(f"streamed, 1 client: first token after {ttft * 1000:.0f} ms, done after "
          f"{stream_total:.3f} s (median of 3)")
    return {"max_tokens": max_tokens, "tokens": tokens, "baseline_s": base, "rows": rows,
            "overhead_1_client": overhead, "ttft_s": ttft, "stream_total_s": stream_total,
            "load_end": load()}


# --------------------------------------------------------------------------------------
# engines side by side: the one-at-a-time engine vs continuous batching
# --------------------------------------------------------------------------------------


class SerialEngine:
    """The server's engine before batching, without HTTP: one worker thread, one request at a
    time, first come first served; each request's pieces come from ``generate_pieces``."""

    def __init__(self, model, tokenizer) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.jobs: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            ids, max_tokens, kw, out = job
            try:
                for piece in generate_pieces(self.model, self.tokenizer, ids, max_tokens, **kw):
                    out.put(piece)
            except Exception as err:  # noqa: BLE001 - handed to the client
                out.put(err)

    def submit(self, ids: list[int], max_tokens: int, **kw) -> Iterator[tuple]:
        out: queue.SimpleQueue = queue.SimpleQueue()
        self.jobs.put((ids, max_tokens, kw, out))
        while True:
            piece = out.get()
            if isinstance(piece, Exception):
                raise piece
            yield piece
            if piece[1] is not None:
                return

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=60)


#: one request: (prompt index) -> (seconds to first text, seconds in all, text, tokens)
Call = Callable[[int], tuple[float, float, str, int]]


def engine_call(engine, prompts: list[list[int]], max_tokens: int) -> Call:
    def call(i: int) -> tuple[float, float, str, int]:
        t0 = time.perf_counter()
        first, parts, piece = None, [], ("", None, 0)
        for piece in engine.submit(prompts[i], max_tokens, temperature=0.0):
            if piece[0] and first is None:
                first = time.perf_counter() - t0
            parts.append(piece[0])
        total = time.perf_counter() - t0
        return first or total, total, "".join(parts), piece[2]
    return call


def http_call(port: int, texts: list[str], max_tokens: int) -> Call:
    """Streamed ``/v1/completions`` on a keep-alive connection per client thread."""
    local = threading.local()

    def call(i: int) -> tuple[float, float, str, int]:
        if getattr(local, "conn", None) is None:
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        body = {"prompt": texts[i], "max_tokens": max_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}
        t0 = time.perf_counter()
        local.conn.request("POST", "/v1/completions", body=json.dumps(body),
                           headers={"Content-Type": "application/json"})
        resp = local.conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
        first, parts, n = None, [], 0
        while (line := resp.readline()) and line.strip() != b"data: [DONE]":
            if not line.startswith(b"data: "):
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                n = event["usage"]["completion_tokens"]
            for choice in event.get("choices", []):
                if choice["text"] and first is None:
                    first = time.perf_counter() - t0
                parts.append(choice["text"])
        resp.read()
        total = time.perf_counter() - t0
        return first or total, total, "".join(parts), n
    return call


def pct(xs: list[float], q: float) -> float:
    """The q-th percentile, nearest rank."""
    s = sorted(xs)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def run_level(call: Call, clients: int, requests: int, expect: list[str]) -> dict:
    """``requests`` requests (prompts in turn) over ``clients`` threads, each back to back."""
    results: list[tuple[float, float, str, int]] = []
    lock = threading.Lock()

    def client(jobs: list[int]) -> None:
        for j in jobs:
            r = call(j % len(expect))
            if r[2] != expect[j % len(expect)]:
                raise AssertionError("an answer differs from the same request alone")
            with lock:
                results.append(r)

    wall = run_threads(client, [list(range(c, requests, clients)) for c in range(clients)])
    ttft, lat = [r[0] for r in results], [r[1] for r in results]
    return {"clients": clients, "requests": requests, "wall_s": wall,
            "tokens_per_s": sum(r[3] for r in results) / wall,
            "latency_p50_s": pct(lat, 50), "latency_p95_s": pct(lat, 95),
            "ttft_p50_s": pct(ttft, 50), "ttft_p95_s": pct(ttft, 95)}


def engines(model, tokenizer, args) -> dict:
    """The one-at-a-time engine and the batched one side by side at each level of clients."""
    max_tokens = args.max_tokens or (8 if args.quick else 64)
    levels = [int(c) for c in args.levels.split(",")]
    texts, prompts = [], []
    for text in PROMPTS:
        ids = tokenizer.encode_ordinary(text)[:32]
        texts.append(tokenizer.decode(ids))
        assert tokenizer.encode_ordinary(texts[-1]) == ids  # the server sees the same ids
        prompts.append(ids)
    expect = ["".join(p[0] for p in generate_pieces(model, tokenizer, ids, max_tokens,
                                                      temperature=0.0)) for ids in prompts]
    print(f"\n# engines: {len(prompts)} prompts of 32 tokens, max_tokens {max_tokens}, greedy, "
          f"streamed; batched max_batch {args.max_batch}; load {load()}")

    serial = SerialEngine(model, tokenizer)
    batched = BatchedEngine(model, tokenizer, max_batch=args.max_batch)
    serial_name, batched_name = "serial (one at a time)", f"batched (max_batch {args.max_batch})"
    runs = {serial_name: engine_call(serial, prompts, max_tokens),
            batched_name: engine_call(batched, prompts, max_tokens)}
    rows = []
    with contextlib.ExitStack() as servers:
        if args.http:
            cap = max(512, max_tokens)
            apps = {"HTTP " + serial_name: create_app(model, tokenizer, max_tokens_cap=cap,
                                                      max_batch=1),
                    "HTTP " + batched_name: create_app(model, tokenizer, max_tokens_cap=cap,
                                                       max_batch=args.max_batch)}
            for name, app in apps.items():
                port = int(servers.enter_context(background(app)).rsplit(":", 1)[1])
                runs[name] = http_call(port, texts, max_tokens)
        for call in runs.values():  # warm-up, and a check of every path
            for i in range(len(prompts)):
                assert call(i)[2] == expect[i], "an answer differs from the same request alone"
        for clients in levels:
            requests = clients if args.quick else max(8, clients * (2 if clients <= 16 else 1))
            for name, call in runs.items():
                rows.append({"engine": name, **run_level(call, clients, requests, expect)})
    serial.close()
    batched.close()
    stats = dict(batched.stats)

    print()
    print("| engine | clients | requests | tokens/s | latency p50 s | latency p95 s | "
          "first token p50 ms | first token p95 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['engine']} | {r['clients']} | {r['requests']} | {r['tokens_per_s']:.1f} | "
              f"{r['latency_p50_s']:.3f} | {r['latency_p95_s']:.3f} | "
              f"{r['ttft_p50_s'] * 1000:.0f} | {r['ttft_p95_s'] * 1000:.0f} |")
    print()

    def rate(engine: str, clients: int) -> float | None:
        return next((r["tokens_per_s"] for r in rows
                     if r["engine"] == engine and r["clients"] == clients), None)

    one = [rate(serial_name, 1), rate(batched_name, 1)]
    summary = {"max_tokens": max_tokens, "rows": rows, "batched_stats": stats}
    b16 = rate(batched_name, 16)
    if None not in one and b16 is not None:
        ratio = b16 / max(one)
        summary["batched_16_over_1_client"] = ratio
        print(f"batched at 16 clients: {b16:.1f} tok/s = {ratio:.2f}x one client's "
              f"({max(one):.1f} tok/s, the faster engine) (goal >= 4x: "
              f"{'met' if ratio >= 4 else 'NOT met'})")
    if stats.get("steps"):
        print(f"batched engine: {stats['steps']} decode steps, mean batch "
              f"{stats['rows'] / stats['steps']:.1f} rows")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16 tokens (engines: 8), few requests")
    ap.add_argument("--max-tokens", type=int, default=None,
                    help="default 64 (--quick: 16, engines part 8)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--engines-only", action="store_true",
                    help="skip the HTTP overhead part; measure only the engines side by side")
    ap.add_argument("--http", action="store_true",
                    help="engines part: also through HTTP (create_app with max_batch=1 and "
                         "with --max-batch)")
    ap.add_argument("--max-batch", type=int, default=16, help="the batched engine's max_batch")
    ap.add_argument("--levels", default=None,
                    help="concurrent clients of the engines part (default 1,4,16,64; "
                         "--quick: 1,4,16)")
    args = ap.parse_args()
    args.levels = args.levels or ("1,4,16" if args.quick else "1,4,16,64")

    print(f"# bench_serve: python {platform.python_version()}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load {load()}")
    torch.manual_seed(0)
    tokenizer = get_tokenizer("gpt2")
    config = GPTConfig(vocab_size=50257, block_size=1024, n_layer=6, n_head=6, n_embd=384)
    model = GPT(config).eval()
    print(f"# model 6x384 ({model.num_params():,} parameters), 1,024-token context, random "
          "weights (seed 0), GPT-2 tokenizer")
    results = {} if args.engines_only else http_overhead(model, tokenizer, args)
    results["engines"] = engines(model, tokenizer, args)
    print(f"# load at the end: {load()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
