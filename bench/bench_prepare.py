"""Benchmark the data pipeline: tokenizing into shards against tiktoken alone.

Tiny Shakespeare repeated ``--copies`` times (20: about 22 MB) is written to a text file in
``--workdir`` and loaded with ``gptcourse.data.prepare.load_documents`` (one document per
paragraph, 144,440 documents for 20 copies). It is cleaned once with ``clean_dataset``
(normalize, the short-document quality rules, the blocklist; **no deduplication**: the copies are
all duplicates), untimed for the comparison but reported. Then, side by side, ``--repeats``
rounds with the order rotating:

* **pipeline**: ``tokenize_to_shards(ds, "gpt2", out, num_proc=N)`` -- ``Dataset.map`` in N
  processes, end-of-text ids inserted, train/val split, shards and ``meta.json`` written;
* **tiktoken batch**: ``tiktoken.get_encoding("gpt2").encode_ordinary_batch(texts)`` on the
  same cleaned documents in this one process (its default ``num_threads=8``);
* **tiktoken loop**: ``[enc.encode_ordinary(t) for t in texts]`` (one thread), for context.

Figures are tokens per second of document tokens (the pipeline's end-of-text ids are not
counted); the script asserts that the pipeline wrote exactly the baseline's tokens plus one
end-of-text id per document. Then one full ``prepare(...)`` call (load + clean + tokenize
+ write) is timed once, and deduplication alone on ``--dedup-docs`` generated stories
(10,000: about 5.6 MB, ~110 words each): ``exact_duplicates`` and ``near_duplicates`` (MinHash
with 128 permutations over word 5-grams, LSH for threshold 0.8), in one process.

    python bench/bench_prepare.py                     # 20 copies, 3 rounds (about a minute)
    python bench/bench_prepare.py --quick             # 2 copies, 1 round: does it run?
    python bench/bench_prepare.py --json /tmp/bench_prepare.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--copies", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--num-proc", type=int, default=None,
                    help="processes for the pipeline (default: its own choice)")
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--dedup-docs", type=int, default=10_000)
    ap.add_argument("--quick", action="store_true", help="2 copies, 1 round, 1,000 stories")
    args = ap.parse_args()
    if args.quick:
        args.copies, args.repeats, args.dedup_docs = 2, 1, 1000

    import datasets
    import tiktoken

    from gptcourse import corpora
    from gptcourse.data.clean import QualityFilter
    from gptcourse.data.prepare import clean_dataset, load_documents, prepare, tokenize_to_shards

    datasets.disable_progress_bars()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-prepare-"))
    work.mkdir(parents=True, exist_ok=True)
    load_start = load()
    text = corpora.load_text("tinyshakespeare")
    src = work / f"tinyshakespeare_x{args.copies}.txt"
    src.write_text("\n\n".join([text.rstrip("\n")] * args.copies) + "\n", encoding="utf-8")
    size = src.stat().st_size
    print(f"{src}: {size / 1e6:.1f} MB, {os.cpu_count()} CPUs, load {load_start}")

    t0 = time.perf_counter()
    ds = load_documents(src, cache_dir=work / "cache")
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    ds, report = clean_dataset(ds, quality=QualityFilter.short_documents(), exact_dedup=False,
                               near_dedup=False, num_proc=args.num_proc, progress=False)
    t_clean = time.perf_counter() - t0
    texts = list(ds["text"])
    chars = sum(map(len, texts))
    print(f"load_documents {t_load:.2f} s ({len(texts):,} documents kept of "
          f"{report.documents_in:,}); clean_dataset without dedup {t_clean:.2f} s "
          f"({chars / t_clean / 1e6:.1f} MB/s)")

    enc = tiktoken.get_encoding("gpt2")
    enc.encode_ordinary("warm up")

    def pipeline() -> int:
        out = work / "shards"
        meta = tokenize_to_shards(ds, "gpt2", out, num_proc=args.num_proc, overwrite=True,
                                  progress=False)
        return sum(s["tokens"] for s in meta["splits"].values()) - len(texts)  # minus eot ids

    def batch() -> int:
        return sum(map(len, enc.encode_ordinary_batch(texts)))

    def loop() -> int:
        return sum(len(enc.encode_ordinary(t)) for t in texts)

    runners = {"pipeline": pipeline, "tiktoken batch": batch, "tiktoken loop": loop}
    times: dict[str, list[float]] = {k: [] for k in runners}
    tokens: dict[str, int] = {}
    names = list(runners)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            tokens[name] = runners[name]()
            times[name].append(time.perf_counter() - t0)
    assert tokens["pipeline"] == tokens["tiktoken batch"] == tokens["tiktoken loop"], tokens
    n_tok = tokens["pipeline"]
    rows = {}
    for name in names:
        med = statistics.median(times[name])
        rows[name] = {"median_s": med, "min_s": min(times[name]), "tokens_per_s": n_tok / med}
    base = rows["tiktoken batch"]["tokens_per_s"]
    print(f"\n{n_tok:,} document tokens, {args.repeats} rounds (median)")
    print(f"{'':<16}{'median s':>10}{'min s':>10}{'tokens/s':>14}{'vs batch':>10}")
    for name, row in rows.items():
        print(f"{name:<16}{row['median_s']:>10.2f}{row['min_s']:>10.2f}"
              f"{row['tokens_per_s']:>14,.0f}{row['tokens_per_s'] / base:>9.2f}x")

    out = work / "full"
    t0 = time.perf_counter()
    prepare(src, out, tokenizer="gpt2", quality="short", exact_dedup=False, near_dedup=False,
            num_proc=args.num_proc, overwrite=True, verbose=False)
    t_full = time.perf_counter() - t0
    print(f"\nfull prepare(...) without dedup: {t_full:.2f} s ({size / t_full / 1e6:.1f} MB/s)")

    from gptcourse import stories
    from gptcourse.data.dedup import MinHash, exact_duplicates, near_duplicates

    docs = [s.text for s in stories.generate(args.dedup_docs, 0)]
    t0 = time.perf_counter()
    n_exact = len(exact_duplicates(docs))
    t_exact = time.perf_counter() - t0
    t0 = time.perf_counter()
    MinHash().signatures(docs)
    t_sig = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_near = len(near_duplicates(docs))
    t_near = time.perf_counter() - t0
    mb = sum(map(len, docs)) / 1e6
    print(f"dedup of {len(docs):,} stories ({mb:.1f} MB): exact {t_exact:.2f} s "
          f"({n_exact} dropped); MinHash signatures {t_sig:.2f} s; near_duplicates in all "
          f"{t_near:.2f} s ({len(docs) / t_near:,.0f} docs/s, {n_near} dropped)")
    load_end = load()
    print(f"load at the end {load_end}")
    ratio = rows["pipeline"]["tokens_per_s"] / base
    print(f"pipeline / tiktoken batch = {ratio:.2f} (goal >= 0.70)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "copies": args.copies, "bytes": size, "documents": len(texts), "tokens": n_tok,
            "rounds": args.repeats, "results": rows, "ratio_vs_batch": ratio,
            "load_documents_s": t_load, "clean_s": t_clean, "full_prepare_s": t_full,
            "dedup_docs": len(docs), "exact_s": t_exact, "minhash_s": t_sig,
            "near_duplicates_s": t_near,
            "load_start": load_start, "load_end": load_end, "cpus": os.cpu_count(),
            "python": platform.python_version(), "tiktoken": tiktoken.__version__,
            "datasets": datasets.__version__,
        }, indent=2))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
