"""Benchmark a GPT on HellaSwag (gptcourse.evaluate), the number lesson 12 quotes for GPT-2.

``hellaswag --model gpt2`` loads OpenAI's GPT-2 (124M) with ``GPT.from_pretrained`` and
HellaSwag's validation split (10,042 items) with ``load_hellaswag`` -- both from the Hugging
Face hub on first use, then from its cache -- and scores every ending by log-likelihood with
``multiple_choice_eval`` (the context ``ctx``, each ending after a space, no template):

* ``acc``: the ending with the largest total log-likelihood;
* ``acc_norm``: the largest log-likelihood per ending **token** -- Karpathy's ``hellaswag.py``
  (nanoGPT / llm.c / build-nanogpt), which publishes acc 0.2859, acc_norm 0.2955 for GPT-2 124M
  on all 10,042 items;
* ``acc_norm_chars``: per **character** (lm-evaluation-harness's normalisation; the harness
  also rewrites the text a little, ``--style harness``: 0.2892 / 0.3114 published);

with 95% percentile-bootstrap intervals, the wall time and items per second.

``--jsonl PATH`` reads records in HellaSwag's format from a file instead (offline; e.g. the
12-item ``tests/data/hellaswag_sample.jsonl``), and ``--model`` also takes ``gpt2-medium``,
``gpt2-large``, ``gpt2-xl`` or a local folder in Hugging Face's GPT-2 layout (``config.json``
+ weights). Offline without a cached copy it stops with a message saying what it needs.

    python bench/bench_eval.py hellaswag --model gpt2                  # all 10,042 items (GPU: ~2 min)
    python bench/bench_eval.py hellaswag --model gpt2 --limit 1000     # the first 1,000
    python bench/bench_eval.py hellaswag --model DIR --jsonl FILE      # offline
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from gptcourse.evaluate import (
    DatasetUnavailableError,
    load_hellaswag,
    multiple_choice_eval,
    read_jsonl,
)
from gptcourse.model import GPT
from gptcourse.profiles import cpu_threads, device
from gptcourse.tokenizer import get_tokenizer

# Karpathy's hellaswag.py (per-token acc_norm) and lm-evaluation-harness (per character, its
# own preprocessing), GPT-2 124M on the whole validation split
PUBLISHED = {"gpt2": {"acc": 0.2859, "acc_norm": 0.2955, "harness_acc": 0.2892,
                      "harness_acc_norm": 0.3114}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=["hellaswag"])
    ap.add_argument("--model", default="gpt2",
                    help="gpt2, gpt2-medium, gpt2-large, gpt2-xl or a local Hugging Face folder")
    ap.add_argument("--split", default="validation", choices=["train", "validation"])
    ap.add_argument("--limit", type=int, default=None, help="the first N items (default: all)")
    ap.add_argument("--jsonl", default=None, help="records in HellaSwag's format from this file")
    ap.add_argument("--style", default="plain", choices=["plain", "harness"],
                    help="plain: ctx + ' ' + ending (Karpathy); harness: lm-eval-harness's text")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="CPU: 0 = one per idle core")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        ap.error("--limit must be at least 1")

    dev = torch.device(device() if args.device == "auto" else args.device)
    if dev.type == "cpu":
        torch.set_num_threads(args.threads if args.threads > 0 else cpu_threads())
    t0 = time.perf_counter()
    try:
        model = GPT.from_pretrained(args.model, dropout=0.0).to(dev).eval()
    except (OSError, FileNotFoundError, ImportError) as err:
        sys.exit(f"cannot load {args.model!r}: {err}\nGPT-2's weights come from the Hugging Face hub: "
                 "run this online once, or pass a local folder with config.json + model.safetensors.")
    tok = get_tokenizer("gpt2")
    try:
        records = (read_jsonl(args.jsonl)[: args.limit] if args.jsonl
                   else load_hellaswag(args.split, limit=args.limit))
    except DatasetUnavailableError as err:
        sys.exit(f"cannot load HellaSwag: {err}\nOffline, pass --jsonl FILE (HellaSwag's format).")
    source = args.jsonl or f"HellaSwag {args.split}"
    load_seconds = time.perf_counter() - t0
    print(f"{args.model}: {model.num_params():,} parameters on {dev}; {len(records):,} items from "
          f"{source} (loaded in {load_seconds:.1f} s)")

    t1 = time.perf_counter()
    result = multiple_choice_eval(model, tok, records, style=args.style, progress=args.progress)
    seconds = time.perf_counter() - t1
    lo, hi = result["ci"]["acc"]
    nlo, nhi = result["ci"]["acc_norm"]
    print(f"acc            {result['acc']:.4f}  (95% CI {lo:.4f}-{hi:.4f})")
    print(f"acc_norm       {result['acc_norm']:.4f}  (95% CI {nlo:.4f}-{nhi:.4f}; per token)")
    print(f"acc_norm_chars {result['acc_norm_chars']:.4f}  (per character)")
    print(f"{result['n']:,} items in {seconds:.1f} s ({result['n'] / seconds:.1f} items/s); style {args.style}")
    published = PUBLISHED.get(args.model)
    full = not args.jsonl and args.split == "validation" and result["n"] == 10_042
    if published:
        key = "harness_" if args.style == "harness" else ""
        norm = published[f"{key}acc_norm"]
        print(f"published for {args.model} on all 10,042 validation items: acc {published[f'{key}acc']:.4f}, "
              f"acc_norm {norm:.4f}" + ("" if full else "  (this run scored a different set of items)"))
        if full:
            inside = nlo <= norm <= nhi
            print(f"published acc_norm {'inside' if inside else 'OUTSIDE'} this run's 95% interval")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "source": source, "device": str(dev), "style": args.style,
                       "n": result["n"], "acc": result["acc"], "acc_norm": result["acc_norm"],
                       "acc_norm_chars": result["acc_norm_chars"], "ci": result["ci"],
                       "seconds": seconds, "load_seconds": load_seconds,
                       "published": published}, f, indent=2)


if __name__ == "__main__":
    main()
