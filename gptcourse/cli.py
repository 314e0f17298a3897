"""The ``gptcourse`` command.

    gptcourse demo                  train a BPE tokenizer on a real corpus and show it at work
    gptcourse grade NOTEBOOK...     execute exercise notebooks and print their score tables
    gptcourse info                  Python, torch, profile, device and data cache
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _cmd_info(args: argparse.Namespace) -> int:
    from . import corpora, profiles

    for k, v in profiles.describe().items():
        print(f"{k:>8}: {v}")
    print(f"{'data':>8}: {', '.join(str(d) for d in corpora.cache_dirs())}")
    return 0


def _cmd_grade(args: argparse.Namespace) -> int:
    from .grading import grade

    ok = True
    for nb in args.notebooks:
        report = grade(nb, timeout=args.timeout)
        print(report.table())
        ok = ok and report.total > 0 and report.score == report.total
    return 0 if ok else 1


def _show_tokens(tok, text: str) -> str:
    """``text`` with token boundaries marked by alternating ANSI colours (or | when not a tty)."""
    pieces = [tok.decode([i]) for i in tok.encode(text)]
    if sys.stdout.isatty():
        colours = ["\x1b[48;5;153m", "\x1b[48;5;223m"]
        return "".join(f"{colours[k % 2]}{p}\x1b[0m" for k, p in enumerate(pieces))
    return "|".join(pieces)


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import corpora, profiles
    from .tokenizer import BPETokenizer, get_tokenizer

    vocab_size = args.vocab_size or profiles.pick(ci=512, cpu=4096)
    text = corpora.load_text(args.corpus)
    cut = int(len(text) * 0.9)
    train_text, held_out = text[:cut], text[cut:]
    print(f"corpus {args.corpus}: {len(text):,} characters; training on the first 90%, "
          f"measuring on the last 10%")

    t0 = time.perf_counter()
    tok = BPETokenizer.train(train_text, vocab_size, special_tokens=["<|endoftext|>"])
    seconds = time.perf_counter() - t0
    print(f"trained a byte-level BPE with {tok.vocab_size:,} tokens in {seconds:.2f} s "
          f"({len(tok.merges):,} merges)")

    longest = sorted(tok.merges, key=lambda m: -len(tok.token_bytes(m[2])))[:8]
    print("longest tokens:", ", ".join(repr(tok.decode([m[2]])) for m in longest))

    speeches = [s for s in held_out.split("\n\n")[1:] if len(s) > 80]
    sample = (speeches[0] if speeches else held_out)[:240]
    ids = tok.encode(sample)
    print("\nencode a held-out passage:")
    print(_show_tokens(tok, sample))
    print(f"-> {len(ids)} ids: {ids[:24]}{' ...' if len(ids) > 24 else ''}")
    assert tok.decode(ids) == sample
    print("decode(encode(text)) == text: True")

    fast = tok.to_tiktoken()
    t0 = time.perf_counter()
    fast_ids = fast.encode_ordinary(held_out)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow_ids = tok.encode(held_out)
    t_slow = time.perf_counter() - t0
    assert fast_ids == slow_ids, "to_tiktoken() disagrees with encode()"
    print(f"tiktoken fast path gives identical ids ({len(fast_ids):,} tokens; "
          f"{t_slow / max(t_fast, 1e-9):.0f}x faster than pure Python)")

    n_bytes = len(held_out.encode("utf-8"))
    rows = [("raw UTF-8 bytes", n_bytes), (f"our BPE ({tok.vocab_size:,})", len(slow_ids))]
    try:
        gpt2 = get_tokenizer("gpt2")
        rows.append((f"GPT-2 ({gpt2.vocab_size:,})", len(gpt2.encode(held_out))))
    except Exception as err:  # offline without a tiktoken cache
        print(f"(GPT-2 comparison skipped: {err})")
    print(f"\ncompression on held-out text ({n_bytes:,} bytes):")
    print(f"  {'tokenizer':<22} {'tokens':>9} {'bytes/token':>12}")
    for name, n in rows:
        print(f"  {name:<22} {n:>9,} {n_bytes / n:>12.2f}")

    out = Path(args.out) / f"tokenizer-{args.corpus}-{tok.vocab_size}.json"
    tok.save(out)
    assert BPETokenizer.load(out).encode(sample) == ids
    print(f"\nsaved to {out} (load it with gptcourse.tokenizer.get_tokenizer({str(out)!r}))")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gptcourse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train a BPE tokenizer and show encode/decode and compression")
    p.add_argument("--corpus", default="tinyshakespeare", help="corpus name (gptcourse.corpora)")
    p.add_argument("--vocab-size", type=int, default=None, help="default: 512 (ci profile), 4096")
    p.add_argument("--out", default="runs", help="folder for the trained tokenizer")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("grade", help="execute exercise notebooks and print their scores")
    p.add_argument("notebooks", nargs="+", help="exercise notebook(s)")
    p.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    p.set_defaults(func=_cmd_grade)

    p = sub.add_parser("info", help="environment, profile, device and data cache")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as err:
        print(f"gptcourse {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
