"""Benchmark BPE training and encoding: gptcourse.tokenizer against Hugging Face ``tokenizers``.

In one process, side by side, on all of Tiny Shakespeare (``gptcourse.corpora``):

1. **Training** a byte-level BPE with 2,048 tokens (256 bytes + 1,792 merges):
   (a) ``BPETokenizer.train(text, 2048)`` -- ours, pure Python, one thread;
   (b) Hugging Face ``tokenizers``: ``Tokenizer(models.BPE())`` with
       ``pre_tokenizers.ByteLevel(add_prefix_space=False)`` and
       ``trainers.BpeTrainer(vocab_size=2048, initial_alphabet=ByteLevel.alphabet(),
       show_progress=False)``, trained on the text as one string
       (``train_from_iterator([text])``) and as lines
       (``train_from_iterator(text.splitlines(keepends=True))``, its fastest mode).
   Each runs ``--repeats`` times, the order rotating every round; median and min seconds.
2. **Encoding** Tiny Shakespeare (MB/s of UTF-8 input): our pure-Python ``encode`` (a fresh
   tokenizer each time, so its chunk cache starts cold), the same vocabulary through
   ``to_tiktoken()``, tiktoken's ``gpt2``, our from-scratch GPT-2 tokenizer, and the
   Hugging Face tokenizer trained in 1 (the line-trained one) on the whole string and, its
   fast path, on the lines with ``encode_batch`` (threads; its token count may differ a
   little, as a chunk never spans two lines there).

    python bench/bench_tokenizer.py                    # the full run (about a minute on 2 cores)
    python bench/bench_tokenizer.py --repeats 3 --json /tmp/bench_tokenizer.json
    python bench/bench_tokenizer.py --quick            # 100k characters, 2 repeats: does it run?
    python bench/bench_tokenizer.py --worst-case       # only 3. below (about a minute)

3. **Worst case** (``--worst-case``, instead of 1 and 2): one pre-token of one repeated
   letter (16 KB, 256 KB, 1 MB of ``"a"``), which is a single chunk for GPT-2's regex, encoded
   with GPT-2's vocabulary by ``encode`` (the heap merge, :func:`gptcourse.tokenizer.bpe_merge`),
   by the old encode (the rescan ``BPETokenizer._bpe`` per chunk, O(n^2): timed on 16 KB only,
   larger sizes extrapolated as n^2) and by tiktoken; and Tiny Shakespeare (normal text) by
   the same three.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial

VOCAB = 2048


def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def hf_trainer(vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    return tok, trainer


def train_hf(texts: list[str], vocab_size: int):
    tok, trainer = hf_trainer(vocab_size)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def hf_token_bytes(hf_tok) -> set[bytes]:
    """The byte strings of a ByteLevel HF vocabulary (GPT-2's printable byte alphabet)."""
    from gptcourse.tokenizer import bytes_to_unicode

    decoder = {c: b for b, c in bytes_to_unicode().items()}
    return {bytes(decoder[c] for c in token) for token in hf_tok.get_vocab()}


def rescan_copy(tok):
    """A cold copy of ``tok`` that encodes each chunk with the O(n^2) rescan ``_bpe`` (the
    encode before issue 12), caching chunks as that encode did."""
    from gptcourse.tokenizer import BPETokenizer

    copy = BPETokenizer(tok.mergeable_ranks, tok.special_tokens, tok.pattern, merges=tok.merges)
    ranks, cache = copy.mergeable_ranks, {}

    def encode_chunk(chunk: str) -> list[int]:
        ids = cache.get(chunk)
        if ids is None:
            data = chunk.encode("utf-8")
            ids = cache[chunk] = [ranks[data]] if data in ranks else copy._bpe(data)
        return ids

    copy._encode_chunk = encode_chunk  # encode_ordinary looks it up on the instance
    return copy


def worst_case() -> int:
    """Section 3: encode time of one long chunk of one letter, and of normal text."""
    import tiktoken

    from gptcourse import corpora
    from gptcourse.tokenizer import BPETokenizer

    gpt2 = BPETokenizer.from_gpt2()
    tt = tiktoken.get_encoding("gpt2")
    shakespeare = corpora.load_text("tinyshakespeare")
    print(f"# tokenizer worst case: one repeated letter, GPT-2 vocabulary, load {load()}", flush=True)
    print()
    print("| text | MB | `encode` (heap) s | old `encode` (rescan) s | tiktoken s |")
    print("|---|---:|---:|---:|---:|")
    rescan_16k = None
    for label, text in [("16 KB of 'a'", "a" * (1 << 14)), ("256 KB of 'a'", "a" * (1 << 18)),
                        ("1 MB of 'a'", "a" * (1 << 20)), ("Tiny Shakespeare", shakespeare)]:
        mb = len(text.encode("utf-8")) / 1e6
        fresh = BPETokenizer(gpt2.mergeable_ranks, gpt2.special_tokens, merges=gpt2.merges)
        heap_s, ids = timed(partial(fresh.encode, text))
        tt_s, tt_ids = timed(partial(tt.encode, text))
        assert ids == tt_ids, label
        if label.startswith("16 KB") or label == "Tiny Shakespeare":
            old = rescan_copy(gpt2)
            old_s, old_ids = timed(partial(old.encode, text))
            assert old_ids == ids, label
            rescan_16k = old_s if label.startswith("16 KB") else rescan_16k
            old_cell = f"{old_s:.3f}"
        else:  # quadratic: (n / 16 KB)^2 times the 16 KB time
            old_cell = f"~{rescan_16k * (len(text) / (1 << 14)) ** 2:,.0f} (extrapolated)"
        print(f"| {label} | {mb:.3f} | {heap_s:.3f} | {old_cell} | {tt_s:.3f} |", flush=True)
    print(f"load average at end {load()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each trainer (default 5)")
    parser.add_argument("--encode-repeats", type=int, default=3, help="timed runs of each encoder")
    parser.add_argument("--vocab-size", type=int, default=VOCAB)
    parser.add_argument("--quick", action="store_true", help="100k characters, 2 repeats")
    parser.add_argument("--json", metavar="PATH", help="also save the results as JSON")
    parser.add_argument("--worst-case", action="store_true",
                        help="only section 3: one long chunk of one letter, and normal text")
    args = parser.parse_args(argv)
    if args.worst_case:
        return worst_case()

    import tiktoken
    import tokenizers

    from gptcourse import corpora
    from gptcourse.tokenizer import BPETokenizer

    text = corpora.load_text("tinyshakespeare")
    if args.quick:
        text, args.repeats, args.encode_repeats = text[:100_000], 2, 1
    lines = text.splitlines(keepends=True)
    mb = len(text.encode("utf-8")) / 1e6
    vs = args.vocab_size
    info = {
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "tokenizers": tokenizers.__version__,
        "tiktoken": tiktoken.__version__,
        "RAYON_NUM_THREADS": os.environ.get("RAYON_NUM_THREADS", "(unset: one per core)"),
        "text": f"tinyshakespeare, {len(text):,} characters, {mb:.3f} MB, {len(lines):,} lines",
        "vocab_size": vs,
        "load_start": load(),
    }
    print(f"# tokenizer benchmark: {info['text']}, vocab {vs}, load {info['load_start']}", flush=True)

    # -- 1. training -----------------------------------------------------------------------
    trainers = {
        "ours": lambda: BPETokenizer.train(text, vs),
        "hf_text": lambda: train_hf([text], vs),
        "hf_lines": lambda: train_hf(lines, vs),
    }
    # one untimed warm-up each: imports, allocator, Rust thread pool
    warm_text = text[:20_000]
    BPETokenizer.train(warm_text, 300)
    train_hf([warm_text], 300)
    train_hf(warm_text.splitlines(keepends=True), 300)

    times: dict[str, list[float]] = {k: [] for k in trainers}
    results: dict[str, object] = {}
    order = list(trainers)
    for r in range(args.repeats):
        for name in order[r % len(order):] + order[: r % len(order)]:  # rotate who goes first
            seconds, results[name] = timed(trainers[name])
            times[name].append(seconds)
        print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)

    ours = results["ours"]
    assert ours.vocab_size == vs, ours.vocab_size
    for name in ("hf_text", "hf_lines"):
        assert results[name].get_vocab_size() == vs, (name, results[name].get_vocab_size())
    ours_bytes = set(ours.mergeable_ranks)
    overlap = {
        name: len(ours_bytes & hf_token_bytes(results[name])) / len(ours_bytes)
        for name in ("hf_text", "hf_lines")
    }
    train = {
        k: {"median_s": statistics.median(v), "min_s": min(v), "runs_s": v} for k, v in times.items()
    }

    # -- 2. encoding -----------------------------------------------------------------------
    gpt2 = BPETokenizer.from_gpt2()
    ours_tt = ours.to_tiktoken()
    tt_gpt2 = tiktoken.get_encoding("gpt2")
    hf = results["hf_lines"]

    def cold(tok: BPETokenizer) -> Callable[[], object]:
        """Encode with a copy of ``tok`` whose chunk cache is empty (built outside the timer)."""
        copy = BPETokenizer(tok.mergeable_ranks, tok.special_tokens, tok.pattern, merges=tok.merges)
        return lambda: copy.encode(text)

    # name -> (make the timed function, vocabulary whose ids must agree)
    encoders: dict[str, tuple[Callable[[], Callable[[], object]], str]] = {
        f"ours, pure Python `encode` (trained vocab {vs})": (lambda: cold(ours), "ours"),
        f"ours via `to_tiktoken()` (trained vocab {vs})": (lambda: lambda: ours_tt.encode_ordinary(text), "ours"),
        "ours, pure Python `encode` (GPT-2 from its files)": (lambda: cold(gpt2), "gpt2"),
        "tiktoken `gpt2`": (lambda: lambda: tt_gpt2.encode_ordinary(text), "gpt2"),
        f"Hugging Face `encode(text)` (trained vocab {vs})": (lambda: lambda: hf.encode(text).ids, "hf"),
        f"Hugging Face `encode_batch(lines)` (trained vocab {vs})": (
            lambda: lambda: [i for e in hf.encode_batch(lines) for i in e.ids],
            "hf-lines",
        ),
    }
    ids_by_vocab: dict[str, list[int]] = {}
    encode: dict[str, dict[str, object]] = {}
    for name, (make, vocab) in encoders.items():
        runs = []
        for _ in range(args.encode_repeats):
            fn = make()
            seconds, ids = timed(fn)
            runs.append(seconds)
        if vocab in ("ours", "gpt2"):  # same vocabulary -> same ids, checked
            assert ids_by_vocab.setdefault(vocab, ids) == ids, name
        med = statistics.median(runs)
        encode[name] = {"median_s": med, "min_s": min(runs), "MB_per_s": mb / med, "tokens": len(ids)}
        print(f"  {name}: {med:.3f}s, {mb / med:.2f} MB/s", flush=True)

    info["load_end"] = load()

    # -- report ------------------------------------------------------------------------------
    def ratio(name: str) -> str:
        return f"{train['ours']['median_s'] / train[name]['median_s']:.2f}x"

    labels = {
        "ours": f"ours: `BPETokenizer.train(text, {vs})` (pure Python, 1 thread)",
        "hf_text": "HF `tokenizers`, `train_from_iterator([text])` (one string)",
        "hf_lines": "HF `tokenizers`, `train_from_iterator(text.splitlines(keepends=True))`",
    }
    print()
    print(f"Training a {vs}-token byte-level BPE on Tiny Shakespeare ({args.repeats} runs each):")
    print()
    print("| trainer | median s | min s | ours / this (median) |")
    print("|---|---:|---:|---:|")
    for k in trainers:
        t = train[k]
        print(f"| {labels[k]} | {t['median_s']:.2f} | {t['min_s']:.2f} | {ratio(k) if k != 'ours' else '1.00x'} |")
    print()
    print(
        f"Vocabulary overlap (share of our {vs} token byte strings that HF also learned): "
        + ", ".join(f"{k} {v:.1%}" for k, v in overlap.items())
    )
    print()
    print(f"Encoding the same text ({mb:.3f} MB, median of {args.encode_repeats}):")
    print()
    print("| encoder | median s | MB/s | tokens |")
    print("|---|---:|---:|---:|")
    for name, e in encode.items():
        print(f"| {name} | {e['median_s']:.3f} | {e['MB_per_s']:.2f} | {e['tokens']:,} |")
    print()
    for k in ("hf_text", "hf_lines"):
        r = train["ours"]["median_s"] / train[k]["median_s"]
        verdict = "met" if r <= 2.0 else "NOT met"
        print(f"Target ours <= 2x HF ({k}): {r:.2f}x -> {verdict}")
    print(f"load average at start {info['load_start']}, at end {info['load_end']}")

    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"info": info, "train": train, "overlap": overlap, "encode": encode}, f, indent=2)
        print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
