"""Benchmark gptcourse.train.

``overhead``: ``Trainer.fit`` against a bare training loop -- the same model, the same batches
(``TokenShards.random_offsets`` of each step), the same AdamW groups, LR schedule and gradient
clipping -- in one process, alternating which runs first. The bare loop is what a learner writes
in ten lines: no logging, evaluation, progress bar or NaN check. Tokens/s of each is the
median over rounds of (steps x tokens per step) / wall time of the loop. Trainer runs with
its progress bar on (to /dev/null), logging every 10 steps, no evaluation, one checkpoint at
the end (included in its time). Goal: Trainer >= 95% of the bare loop.

``shakespeare-char``: nanoGPT's CPU setting on Tiny Shakespeare characters (4 layers, 4 heads,
128 wide, block 64, batch 12, 2000 iterations, lr 1e-3 -> 1e-4 cosine, warmup 100,
beta2 0.99, dropout 0), split like nanoGPT's prepare.py (first 90% of the text train, last
10% validation), trained with the ``shakespeare-char`` preset's settings through ``Trainer``.
Reports the validation loss over the whole validation split and the wall time.
Goal: validation loss <= 1.89 (nanoGPT: about 1.88).

    python bench/bench_train.py overhead [--steps 100 --rounds 3]
    python bench/bench_train.py shakespeare-char [--steps 2000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from torch import nn

from gptcourse import corpora, presets
from gptcourse.data import TokenShards
from gptcourse.model import GPT, GPTConfig
from gptcourse.tokenizer import get_tokenizer
from gptcourse.train import TrainConfig, Trainer, lr_at, optimizer_groups


def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def shakespeare_char() -> tuple[TokenShards, TokenShards, int]:
    tok = get_tokenizer("char:tinyshakespeare")
    ids = np.array(tok.encode(corpora.load_text("tinyshakespeare")), dtype=np.int64)
    cut = int(len(ids) * 0.9)
    return (TokenShards.from_ids(ids[:cut], tok.vocab_size),
            TokenShards.from_ids(ids[cut:], tok.vocab_size), tok.vocab_size)


def bare_loop(cfg: GPTConfig, data: TokenShards, tc: TrainConfig) -> float:
    """The ten-line loop; returns seconds for tc.max_steps steps."""
    torch.manual_seed(tc.seed)
    model = GPT(cfg)
    opt = torch.optim.AdamW(optimizer_groups(model, tc.weight_decay), lr=tc.lr,
                            betas=(tc.beta1, tc.beta2), eps=tc.eps)
    T, B = cfg.block_size, tc.batch_size
    t0 = time.perf_counter()
    for step in range(tc.max_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, tc.lr, tc.warmup_steps, tc.max_steps, tc.lr / 10)
        x, y = data.windows(data.random_offsets(B, T, seed=tc.seed, step=step), T)
        _, loss = model(x, y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def trainer_loop(cfg: GPTConfig, data: TokenShards, tc: TrainConfig) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        tc = TrainConfig(**{**tc.to_dict(), "out_dir": tmp})
        trainer = Trainer(cfg, data, None, tc)
        with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
            t0 = time.perf_counter()
            trainer.fit()
            return time.perf_counter() - t0


def cmd_overhead(args: argparse.Namespace) -> None:
    train, _, vocab = shakespeare_char()
    spec = presets.resolve("shakespeare-char")
    cfg = spec.model_config(vocab_size=vocab)
    tc = TrainConfig(**{**spec.train.to_dict(), "max_steps": args.steps, "plots": False,
                        "log_interval": 10, "eval_interval": 10**9, "sample_interval": 0})
    tokens = args.steps * tc.batch_size * cfg.block_size
    print(f"load average at start: {load()}; torch threads {torch.get_num_threads()}")
    print(f"model {cfg.n_layer}x{cfg.n_embd}, block {cfg.block_size}, batch {tc.batch_size}, "
          f"{args.steps} steps per run, {args.rounds} rounds")
    bare_loop(cfg, train, TrainConfig(**{**tc.to_dict(), "max_steps": 5}))  # warm-up
    bare, ours = [], []
    for r in range(args.rounds):
        order = [("bare", bare_loop, bare), ("trainer", trainer_loop, ours)]
        if r % 2:
            order.reverse()
        for _, fn, out in order:
            out.append(tokens / fn(cfg, train, tc))
    b, t = statistics.median(bare), statistics.median(ours)
    print(f"bare loop   tokens/s: median {b:,.0f}  (runs: {', '.join(f'{v:,.0f}' for v in bare)})")
    print(f"Trainer.fit tokens/s: median {t:,.0f}  (runs: {', '.join(f'{v:,.0f}' for v in ours)})")
    print(f"Trainer / bare = {t / b:.3f}  (goal >= 0.95); load average at end: {load()}")


@torch.no_grad()
def random_batch_estimates(model: nn.Module, data: TokenShards, T: int, B: int, *,
                           batches: int, draws: int) -> list[float]:
    """``draws`` independent nanoGPT ``estimate_loss`` values: each the mean loss of
    ``batches`` batches of ``B`` random windows."""
    model.eval()
    out = []
    for d in range(draws):
        losses = [float(model(*data.windows(data.random_offsets(B, T, seed=10_000 + d, step=i),
                                             T))[1]) for i in range(batches)]
        out.append(sum(losses) / len(losses))
    return out


def cmd_shakespeare(args: argparse.Namespace) -> None:
    train, val, vocab = shakespeare_char()
    spec = presets.resolve("shakespeare-char")
    cfg = spec.model_config(vocab_size=vocab)
    out = args.out or tempfile.mkdtemp(prefix="bench-shakespeare-")
    tc = TrainConfig(**{**spec.train.to_dict(), "out_dir": out, "max_steps": args.steps,
                        "decay_steps": args.steps, "progress": not args.quiet,
                        **({"seed": args.seed} if args.seed is not None else {})})
    print(f"load average at start: {load()}; {train.vocab_size} characters, "
          f"{len(train):,} train / {len(val):,} val tokens -> {out}")
    trainer = Trainer(cfg, train, val, tc)
    t0 = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - t0
    full = trainer.evaluate(max_batches=0)
    print(f"{args.steps} steps in {seconds:.1f} s ({seconds / 60:.2f} min, including "
          f"{len([r for r in trainer.history if 'val_loss' in r])} evaluations of "
          f"{tc.eval_batches} batches)")
    print(f"validation loss over the whole split ({full['tokens']:,} tokens): "
          f"{full['loss']:.4f} (goal <= 1.89; nanoGPT ~1.88)")
    # nanoGPT's figure is estimate_loss(): the mean of eval_iters=20 random batches of 12 x 64.
    # The same estimate over many seeds shows how noisy that single number is.
    estimates = random_batch_estimates(trainer.model, val, cfg.block_size, tc.batch_size,
                                       batches=20, draws=args.draws)
    print(f"nanoGPT-style estimate (20 random batches of {tc.batch_size}), {args.draws} draws: "
          f"mean {statistics.mean(estimates):.4f}, sd {statistics.stdev(estimates):.4f}, "
          f"range {min(estimates):.4f}-{max(estimates):.4f}")
    print(f"load average at end: {load()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("overhead")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.set_defaults(func=cmd_overhead)
    p = sub.add_parser("shakespeare-char")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--out", default=None)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--seed", type=int, default=None, help="training seed (default: the preset's)")
    p.add_argument("--draws", type=int, default=100,
                   help="how many nanoGPT-style 20-batch estimates to draw")
    p.set_defaults(func=cmd_shakespeare)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
