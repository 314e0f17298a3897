"""Benchmark ``gptcourse serve``: requests/s and tokens/s for 1, 4 and 16 concurrent clients,
against the same generation in-process with no HTTP (``gptcourse.generate.generate``).

A 6-layer, 6-head, 384-wide GPT (GPT-2's 50,257-token vocabulary and tokenizer, 1,024-token
context, random weights, seed 0) is served by :func:`gptcourse.serve.create_app` under uvicorn
in a thread of this process, on a free loopback port. Every request is the same
``POST /v1/completions`` (a 32-token prompt, ``max_tokens`` 64, ``temperature`` 0: greedy, so
every answer is the same and its length is checked). Clients are threads, each with its own
keep-alive ``http.client`` connection, sending their share of the requests back to back.
The server runs one request at a time (one model, one worker), so more clients queue: they
raise throughput only by hiding the HTTP round trips, and latency grows with the queue.

The baseline is ``generate(model, prompt, 64, temperature=0, stop=eot)`` plus decoding, in
this process; at 1 client, baseline runs and requests alternate (10 of each), so both see
the same load on the machine. Serving overhead = server latency at 1 client / baseline latency - 1
(goal <= 10%). One streamed request per round at 1 client gives the time to first token.

    python bench/bench_serve.py              # the full run (about a minute on 2 cores)
    python bench/bench_serve.py --quick      # 16 tokens, few requests: does it run?
    python bench/bench_serve.py --json out.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import threading
import time

import torch

from gptcourse.generate import generate
from gptcourse.model import GPT, GPTConfig
from gptcourse.serve import background, create_app
from gptcourse.tokenizer import get_tokenizer

PROMPT = ("The history of the city begins with a small village on the river, where farmers "
          "and fishermen traded grain, salt and wool with travellers from the hills and the coast, "
          "long before the first bridge was built")


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


def run_clients(port: int, body: dict, clients: int, requests: int, expect: str) -> dict:
    """``requests`` requests spread over ``clients`` threads; wall time, latencies, tokens."""
    latencies: list[float] = []
    tokens = [0]
    errors: list[BaseException] = []
    lock = threading.Lock()
    share = [requests // clients + (i < requests % clients) for i in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        try:
            barrier.wait()
            for _ in range(n):
                t0 = time.perf_counter()
                out = post(conn, body)
                dt = time.perf_counter() - t0
                if out["choices"][0]["text"] != expect:
                    raise AssertionError("the server's greedy answer differs from generate()'s")
                with lock:
                    latencies.append(dt)
                    tokens[0] += out["usage"]["completion_tokens"]
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in share]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return {"clients": clients, "requests": requests, "wall_s": wall, "req_per_s": requests / wall,
            "tokens_per_s": tokens[0] / wall, "latency_median_s": statistics.median(latencies),
            "latency_max_s": max(latencies)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16 tokens, few requests")
    ap.add_argument("--max-tokens", type=int, default=None, help="default 64 (16 with --quick)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    max_tokens = args.max_tokens or (16 if args.quick else 64)
    levels = [(4, 8), (16, 16)] if args.quick else [(4, 16), (16, 32)]
    rounds = 3 if args.quick else 10  # 1 client: requests, alternating with the baseline

    print(f"# bench_serve: python {platform.python_version()}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load {load()}")
    torch.manual_seed(0)
    tokenizer = get_tokenizer("gpt2")
    config = GPTConfig(vocab_size=50257, block_size=1024, n_layer=6, n_head=6, n_embd=384)
    model = GPT(config).eval()
    prompt_ids = tokenizer.encode_ordinary(PROMPT)[:32]
    prompt = tokenizer.decode(prompt_ids)
    assert tokenizer.encode_ordinary(prompt) == prompt_ids
    eot = tokenizer.eot_id
    print(f"# model 6x384 ({model.num_params():,} parameters), prompt {len(prompt_ids)} tokens, "
          f"max_tokens {max_tokens}, greedy")

    # ---- in-process baseline: generate() + decode, no HTTP
    def once() -> str:
        out = generate(model, prompt_ids, max_tokens, temperature=0.0, stop=eot)
        new = [t for t in out[0, len(prompt_ids):].tolist() if t != eot]
        return tokenizer.decode(new)

    expect = once()  # warm-up
    tokens = len(generate(model, prompt_ids, max_tokens, temperature=0.0, stop=eot)[0]) - len(prompt_ids)

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
            assert once() == expect
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
    print(f"# load at the end: {load()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"max_tokens": max_tokens, "tokens": tokens, "baseline_s": base,
                       "rows": rows, "overhead_1_client": overhead, "ttft_s": ttft,
                       "stream_total_s": stream_total, "load_end": load()}, f, indent=2)


if __name__ == "__main__":
    main()
