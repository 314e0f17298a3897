"""The ``gptcourse`` command.

    gptcourse demo                  prepare `stories`, train a small GPT (~3 min on CPU), sample
    gptcourse prepare SOURCE --out DIR   clean, deduplicate and tokenize a corpus into shards
    gptcourse train --preset NAME [--config FILE.toml] [--key value ...]   pretrain a GPT
                    [--resume [PATH|auto-or-new] | --overwrite]   continue a run / start over
    gptcourse sample RUN [--prompt TEXT]  generate from a run's latest checkpoint
    gptcourse presets               the named training runs
    gptcourse tokenizer-demo        train a BPE tokenizer on a real corpus and show it at work
    gptcourse grade NOTEBOOK...     execute exercise notebooks and print their score tables
    gptcourse serve --checkpoint RUN | --pretrained gpt2   an OpenAI-compatible HTTP API
    gptcourse chat --checkpoint RUN | --pretrained gpt2 | --url URL   chat in the terminal
    gptcourse info                  Python, torch, profile, device and data cache

Under torchrun the same ``train`` runs data-parallel:
    torchrun --standalone --nproc_per_node=4 -m gptcourse train --preset shakespeare-char-gpu
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _cmd_info(args: argparse.Namespace) -> int:
    from . import corpora, profiles

    for k, v in profiles.describe().items():
        print(f"{k:>8}: {v}")
    print(f"{'data':>8}: {', '.join(str(d) for d in corpora.cache_dirs())}")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from .data import prepare

    kwargs: dict[str, object] = {}
    source, out = args.source, args.out
    if args.preset:  # the preset's recipe and data folder; the flags below override them
        from . import presets

        spec = presets.resolve(args.preset)
        kwargs.update(spec.prepare)
        source = source or kwargs.pop("source", None)
        kwargs.pop("source", None)
        out = out or spec.data
    if source is None or out is None:
        raise ValueError("name a SOURCE and --out DIR (or a --preset that has them)")
    for key in ("tokenizer", "val_fraction", "max_documents", "num_proc", "threshold", "seed",
                "sample_by", "split", "text_column", "shard_tokens", "encoding"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    for key in ("clean", "exact_dedup", "near_dedup"):
        if not getattr(args, key):
            kwargs[key] = False
    if args.streaming:
        kwargs["streaming"] = True
    prepare(source, out, overwrite=args.overwrite, **kwargs)
    return 0


def _load_data(spec, ddp):
    """Train and validation shards of ``spec.data``, preparing them first when missing. Their
    sha256 is checked by one process per machine (under torchrun, ``ddp``: local rank 0; a
    failure there stops the whole job)."""
    from .data import TokenShards

    folder = Path(spec.data)
    if not (folder / "meta.json").is_file():
        recipe = dict(spec.prepare)
        if not recipe:
            raise ValueError(f"{folder} holds no prepared shards; run `gptcourse prepare SOURCE "
                             f"--out {folder}` first")
        if ddp.enabled:
            raise ValueError(f"{folder} holds no prepared shards; prepare them once before "
                             f"launching torchrun: gptcourse prepare {recipe.get('source')} "
                             f"--tokenizer {recipe.get('tokenizer', 'gpt2')} --out {folder}")
        from .data import prepare

        source = recipe.pop("source")
        print(f"{folder} is not prepared yet: preparing {source!r} first")
        prepare(source, folder, **recipe)
    verify = ddp.local_rank == 0
    train = TokenShards(folder, "train", verify=verify)
    splits = train.meta["splits"]
    has_val = "val" in splits and isinstance(splits["val"], dict) and splits["val"].get("tokens")
    val = TokenShards(folder, "val", verify=verify) if has_val else None
    return train, val


#: ``--resume`` values and the ``Trainer(resume=...)`` they stand for (anything else: a path)
_RESUME = {None: False, "latest": "require", "auto-or-new": True}


def _train(spec, resume: str | None = None, overwrite: bool = False, quiet_setup: bool = False):
    """Build a :class:`Trainer` for a resolved run, print what it will do, and fit it.

    ``resume``: None (a new run; refused over existing checkpoints unless ``overwrite``),
    ``"latest"``, ``"auto-or-new"`` or a checkpoint path -- see :mod:`gptcourse.checkpoints`.
    """
    import warnings

    from .checkpoints import checkpoint_names
    from .train import CheckpointWarning, Distributed, Trainer

    ddp = Distributed.from_env()
    out_dir = Path(spec.train.out_dir)
    # the Trainer refuses this too, but only once the data is loaded (or prepared)
    found = checkpoint_names(out_dir / "checkpoints")
    if resume is None and not overwrite and found:
        raise ValueError(f"{out_dir} already holds checkpoints ({', '.join(found[-3:])}): pass "
                         "--resume to continue that run, --overwrite to delete them and start "
                         "over, or choose another --out-dir")
    train, val = _load_data(spec, ddp)
    try:
        tokenizer = train.tokenizer()
    except Exception as err:  # shards written without a tokenizer record
        print(f"(no tokenizer: {err}; samples are off)")
        tokenizer = None
    config = spec.model_config(vocab_size=train.vocab_size)
    with warnings.catch_warnings():  # the CLI prints the note itself, below
        warnings.simplefilter("ignore", CheckpointWarning)
        trainer = Trainer(config, train, val, spec.train, tokenizer=tokenizer,
                          resume=_RESUME.get(resume, resume), overwrite=overwrite)
    import torch

    if trainer.device_type == "cpu" and not ddp.enabled and "OMP_NUM_THREADS" not in os.environ:
        # threads that wait for cores other programs hold make each step many times slower
        from .profiles import cpu_threads

        torch.set_num_threads(cpu_threads())
    if ddp.is_main and not quiet_setup:
        if trainer.resume_note:
            print(f"note: {trainer.resume_note}")
        if trainer.last_checkpoint is not None:
            print(f"resuming {out_dir} from step {trainer.step} ({trainer.last_checkpoint})")
        elif resume is not None:
            print(f"no checkpoint in {out_dir}: starting a new run (--resume=auto-or-new)")
        elif overwrite and found:
            print(f"--overwrite: deleted the old checkpoints in {out_dir} ({', '.join(found[-3:])})")
        floor = val.entropy_per_token if val is not None else None
        print(f"model: {trainer.model.num_params():,} parameters ({config.n_layer} layers, "
              f"{config.n_head} heads, {config.n_embd} wide, context {config.block_size}, "
              f"vocabulary {config.vocab_size:,})")
        print(f"data: {len(train):,} training tokens" + (f", {len(val):,} validation" if val else "")
              + (f"; entropy floor {floor:.4f} nats/token" if floor is not None else ""))
        print(f"train: {spec.train.max_steps:,} steps x {trainer.tokens_per_step:,} tokens "
              f"on {trainer.device} ({str(trainer.dtype).removeprefix('torch.')}, "
              f"{ddp.world_size} process{'es' if ddp.world_size > 1 else ''}"
              + (f", {torch.get_num_threads()} threads" if trainer.device_type == "cpu" else "")
              + f") -> {out_dir}")
    trainer.fit()
    return trainer


def _report(trainer) -> None:
    """Final validation loss against the entropy floor, and where the plots are."""
    evals = [r for r in trainer.history if "val_loss" in r]
    if evals:
        last = evals[-1]
        line = f"validation loss {last['val_loss']:.4f} (perplexity {last['val_ppl']:.2f})"
        if "floor" in last:
            line += (f"; the entropy floor is {last['floor']:.4f} nats/token, so the model is "
                     f"{last['val_loss'] - last['floor']:.4f} nats/token above the best possible")
        print(line)
    if (trainer.out_dir / "loss.png").exists():
        print(f"loss plot: {trainer.out_dir / 'loss.png'}")
    if trainer.last_checkpoint is not None:
        print(f"checkpoint: {trainer.last_checkpoint}")


def _cmd_train(args: argparse.Namespace) -> int:
    from . import presets

    spec = presets.resolve(args.preset, args.config, _split_overrides(args.overrides))
    trainer = _train(spec, resume=args.resume, overwrite=args.overwrite)
    if trainer.ddp.is_main:
        _report(trainer)
    trainer.close()
    return 0


def _check_sample_args(args: argparse.Namespace) -> None:
    """Refuse out-of-range ``sample`` options before a model is loaded."""
    from . import validate

    validate.number("--temperature", args.temperature, min=0, finite=False)  # inf: uniform
    validate.integer("--max-new-tokens", args.max_new_tokens, min=0)
    validate.integer("--num-samples", args.num_samples, min=1)
    if args.top_k is not None:
        validate.integer("--top-k", args.top_k, min=1)
    if args.top_p is not None:
        validate.number("--top-p", args.top_p, min=0, max=1, min_open=True)


def _cmd_sample(args: argparse.Namespace) -> int:
    _check_sample_args(args)
    import torch

    from . import profiles
    from .generate import generate
    from .train import load_model

    device = profiles.device(args.device)
    model, tokenizer, meta = load_model(args.run, device=device)
    if tokenizer is None:
        raise ValueError(f"{args.run} recorded no tokenizer; cannot turn text into ids")
    eot = getattr(tokenizer, "eot_id", None)
    ids = tokenizer.encode(args.prompt) if args.prompt else [eot if eot is not None else 0]
    gen = torch.Generator(device=device).manual_seed(args.seed)
    print(f"# step {meta['step']} of {args.run}")
    for k in range(args.num_samples):
        out = generate(model, torch.tensor([ids], device=device), args.max_new_tokens,
                       temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                       stop=eot, use_cache=args.use_cache, generator=gen)
        new = [i for i in out[0, len(ids):].tolist() if i != eot]
        if k:
            print("-" * 40)
        print(args.prompt + tokenizer.decode(new))
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from . import presets

    for name in presets.names():
        raw = presets.load(name)
        print(f"{name:<22} {raw.get('description', '')}")
    print(f"\n(files in {presets.HERE}; copy one and pass it with --config)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import shutil

    from . import presets, profiles

    out = Path(args.out)
    overrides: dict[str, object] = {"data": str(out / "data" / "stories"),
                                    "out_dir": str(out / "demo")}
    small = profiles.profile() == "ci"
    if small:  # seconds, for tests
        overrides.update(max_steps=30, eval_interval=10, sample_interval=30, warmup_steps=5,
                         eval_batches=2, n_layer=2)
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
        overrides["sample_interval"] = 0
    if args.device:
        overrides["device"] = args.device
    spec = presets.resolve("stories-cpu", overrides=overrides)
    if small:
        spec.prepare["max_documents"] = 2000
    shutil.rmtree(spec.train.out_dir, ignore_errors=True)  # the demo always starts afresh
    print("gptcourse demo: a small GPT learns the generated `stories` corpus, whose entropy is "
          "known exactly\n")
    trainer = _train(spec)
    print("\nthree samples from the trained model:")
    for k in range(3):
        print(f"--- sample {k + 1} ---")
        print(trainer.sample(seed=k))
    print()
    _report(trainer)
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


def _cmd_tokenizer_demo(args: argparse.Namespace) -> int:
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


def _cmd_chat(args: argparse.Namespace) -> int:
    from . import chat

    return chat.run(args)


def _cmd_serve(args: argparse.Namespace) -> int:
    from . import serve

    return serve.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gptcourse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="prepare stories, train a small GPT on CPU, print samples")
    p.add_argument("--out", default="runs", help="folder for data and runs (default: runs)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="default: the stories-cpu preset's (30 in the ci profile)")
    p.add_argument("--device", default=None, help="default: best available")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("prepare", help="clean, deduplicate and tokenize a corpus into shards")
    p.add_argument("source", nargs="?", help="a corpus name (stories, tinyshakespeare, ...), a "
                   ".txt/.jsonl/.parquet file or folder, or hf:owner/name[:config]")
    p.add_argument("--out", help="folder for the shards and meta.json")
    p.add_argument("--preset", help="take the source, --out and settings from a training preset")
    p.add_argument("--tokenizer", default=None,
                   help="gpt2 (default), char, bpe:N (train one of N tokens), or a tokenizer .json")
    p.add_argument("--no-clean", dest="clean", action="store_false",
                   help="skip normalisation, filters and deduplication")
    p.add_argument("--no-exact-dedup", dest="exact_dedup", action="store_false",
                   help="keep exact duplicates")
    p.add_argument("--no-near-dedup", dest="near_dedup", action="store_false",
                   help="skip MinHash near-duplicate removal")
    p.add_argument("--threshold", type=float, default=None,
                   help="Jaccard similarity above which documents are near-duplicates (0.8)")
    p.add_argument("--val-fraction", type=float, default=None, help="share of documents held out")
    p.add_argument("--seed", type=int, default=None, help="seed of the train/val split")
    p.add_argument("--max-documents", type=int, default=None, help="use only the first N")
    p.add_argument("--sample-by", choices=("paragraph", "line", "document"), default=None,
                   help="how a text file splits into documents")
    p.add_argument("--split", default=None, help="dataset split to read (train)")
    p.add_argument("--text-column", default=None, help="column holding the text (text)")
    p.add_argument("--encoding", default=None,
                   help="encoding of local text/json/csv files (utf-8; e.g. latin-1, cp1252)")
    p.add_argument("--shard-tokens", type=int, default=None, help="tokens per shard file")
    p.add_argument("--num-proc", type=int, default=None, help="tokenizer processes")
    p.add_argument("--streaming", action="store_true", help="stream a hub dataset")
    p.add_argument("--overwrite", action="store_true", help="replace existing shards in --out")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("train", help="pretrain a GPT (any TrainConfig/GPTConfig field as --key value)",
                       description="Settings come from --preset, then --config, then --key value "
                       "overrides such as --max-steps 200 --n-layer 6 --lr 3e-4 --data DIR.",
                       epilog=_settings_help(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=None, help="a named run (gptcourse presets)")
    p.add_argument("--config", default=None, help="a TOML file like gptcourse/presets/*.toml")
    fresh = p.add_mutually_exclusive_group()
    fresh.add_argument("--resume", nargs="?", const="latest", default=None,
                       metavar="PATH|auto-or-new",
                       help="continue the run in out_dir from its newest valid checkpoint (an "
                       "error if it has none); PATH: from that run or checkpoint; auto-or-new: "
                       "resume if out_dir has a checkpoint, else start a new run")
    fresh.add_argument("--overwrite", action="store_true",
                       help="delete the checkpoints already in out_dir and start a new run")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("sample", help="generate text from a trained run or checkpoint")
    p.add_argument("run", help="a run folder (its latest checkpoint) or a checkpoint folder")
    p.add_argument("--prompt", default="", metavar="TEXT",
                   help="text to continue (default: start of a document)")
    p.add_argument("--max-new-tokens", type=int, metavar="N", default=200,
                   help="tokens to generate per sample (default: 200)")
    p.add_argument("--temperature", type=float, metavar="T", default=0.8,
                   help="sampling temperature >= 0; 0 is greedy, higher is more random "
                   "(default: 0.8)")
    p.add_argument("--top-k", type=int, metavar="K", default=None,
                   help="sample only from the K most likely tokens (default: all)")
    p.add_argument("--top-p", type=float, metavar="P", default=None,
                   help="sample only from the most likely tokens whose probabilities add up "
                   "to P, in (0, 1] (default: all)")
    p.add_argument("--num-samples", type=int, metavar="N", default=1,
                   help="samples to print (default: 1)")
    p.add_argument("--seed", type=int, metavar="N", default=0,
                   help="seed of the sampling (default: 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, mps ... (default: best available)")
    p.add_argument("--no-cache", dest="use_cache", action="store_false", help="disable the KV cache")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("presets", help="list the named training runs")
    p.set_defaults(func=_cmd_presets)

    p = sub.add_parser("tokenizer-demo", help="train a BPE tokenizer; show encode/decode and compression")
    p.add_argument("--corpus", default="tinyshakespeare", help="corpus name (gptcourse.corpora)")
    p.add_argument("--vocab-size", type=int, default=None, help="default: 512 (ci profile), 4096")
    p.add_argument("--out", default="runs", help="folder for the trained tokenizer")
    p.set_defaults(func=_cmd_tokenizer_demo)

    p = sub.add_parser("grade", help="execute exercise notebooks and print their scores")
    p.add_argument("notebooks", nargs="+", help="exercise notebook(s)")
    p.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    p.set_defaults(func=_cmd_grade)

    p = sub.add_parser("serve", help="serve a model with an OpenAI-compatible HTTP API",
                       description="POST /v1/completions and /v1/chat/completions, GET "
                       "/v1/models and /health, on http://HOST:PORT (default 127.0.0.1:8000).")
    _serve_arguments(p)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("chat", help="chat in the terminal with a model or a running server",
                       description="Streamed answers and a history; /reset clears it, /quit "
                       "exits. In this process (--checkpoint, --pretrained) or via --url.")
    from .chat import add_arguments as _chat_arguments

    _chat_arguments(p)
    p.set_defaults(func=_cmd_chat)

    p = sub.add_parser("info", help="environment, profile, device and data cache")
    p.set_defaults(func=_cmd_info)
    return parser


def _settings_help() -> str:
    """The ``--key value`` settings of ``train``: every GPTConfig and TrainConfig field, with its
    type and default (the listing at the end of ``gptcourse train --help``)."""
    import dataclasses

    from .model import GPTConfig
    from .train import TrainConfig

    def rows(cls) -> list[str]:
        out = []
        for f in dataclasses.fields(cls):
            kind = str(f.type).removesuffix(" | None").upper()  # annotations are strings here
            if f.default is None or isinstance(f.default, bool):
                default = str(f.default).lower()  # none, true, false: as typed on the line
            else:
                default = repr(f.default)
            out.append(f"  {'--' + f.name.replace('_', '-') + ' ' + kind:<30} default: {default}")
        return out

    return "\n".join([
        "settings (--key value; a preset or --config may have set other values):",
        "  --data DIR                     folder of prepared shards (from the preset)",
        "model (GPTConfig; vocab_size defaults to the data's):",
        "  --model.preset NAME            start from a GPTConfig preset (tiny, gpt2, ...)",
        *rows(GPTConfig),
        "training (TrainConfig):", *rows(TrainConfig),
        "a flag alone means true (--compile); none means unset (--min-lr none).",
    ])


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``serve``, kept in :func:`gptcourse.serve.add_arguments` (that module
    imports the web stack only when it runs)."""
    from .serve import add_arguments

    add_arguments(p)


def _split_overrides(extra: list[str]) -> dict[str, object]:
    """``["--max-steps", "10", "--compile"]`` -> ``{"max_steps": 10, "compile": True}``."""
    from .presets import parse_value

    out: dict[str, object] = {}
    i = 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ValueError(f"unexpected argument {arg!r}; settings are given as --key value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 < len(extra) and not extra[i + 1].startswith("--"):
                value = extra[i + 1]
                i += 1
            else:
                value = "true"
        out[key.replace("-", "_")] = parse_value(value)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, KeyError, FileNotFoundError, RuntimeError, TypeError) as err:
        print(f"gptcourse {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
