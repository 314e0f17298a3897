"""Exercises of lesson 08, tuning and scaling: compute, parameter counts, power-law fits,
sweep winners, the Chinchilla split, log grids and the compute-efficient frontier."""

from __future__ import annotations

import functools
import math
import random

import torch

from .. import scaling
from ..model import GPT, GPTConfig
from . import Case, Task, exact_int, register

NAN, INF = float("nan"), float("inf")


# -- references: the library ------------------------------------------------------------------


def _training_flops(n_params, n_tokens):
    return scaling.training_flops(n_params, n_tokens)


@functools.cache  # configs are frozen (hashable); each is built once
def _non_embedding_params(config: GPTConfig) -> int:
    with torch.device("meta"):  # shapes only: GPT-2 XL is built in milliseconds
        return GPT(config).num_params(non_embedding=True)


def _fit_power_law(x, y, floor=0.0):
    fit = scaling.fit_power_law(x, y, floor)
    return (fit.a, fit.b)


def _best_lr(lrs, losses):
    return scaling.best_lr(lrs, losses)


def _chinchilla_split(compute, tokens_per_param=20.0):
    return scaling.chinchilla_optimal(compute, tokens_per_param)


def _log_grid(lo, hi, n):
    return scaling.log_grid(lo, hi, n)


def _compute_frontier(compute, loss):
    return scaling.compute_frontier(compute, loss)


# -- comparisons ---------------------------------------------------------------------------------


def _floats(rel: float):
    """A number, or a list/tuple of numbers, each within ``rel`` relative (1e-12 absolute)."""

    def one(e, g) -> str | None:
        if isinstance(g, torch.Tensor) and g.numel() == 1:
            g = g.item()
        if isinstance(g, bool) or not isinstance(g, (int, float)) and type(g).__module__ != "numpy":
            return f"expected a number, got {type(g).__name__} {g!r}"
        g = float(g)
        if not math.isclose(g, e, rel_tol=rel, abs_tol=1e-12):
            return f"{g!r} instead of {e!r} (relative tolerance {rel:g})"
        return None

    def compare(expected, got):
        if isinstance(expected, (list, tuple)):
            if hasattr(got, "tolist"):
                got = got.tolist()
            if not isinstance(got, (list, tuple)):
                return f"expected a {type(expected).__name__} of {len(expected)} numbers, got {type(got).__name__}"
            if len(got) != len(expected):
                return f"{len(got)} values instead of {len(expected)}"
            for k, (e, g) in enumerate(zip(expected, got)):
                why = one(e, g)
                if why:
                    return f"value {k}: {why}"
            return None
        return one(expected, got)

    return compare


def _lr_or_none(expected, got):
    if expected is None:
        return None if got is None else f"expected None (no run has a finite loss), got {got!r}"
    if got is None:
        return "got None, but some runs have a finite loss"
    return _floats(1e-12)(expected, got)


def _indices(expected, got):
    if hasattr(got, "tolist"):
        got = got.tolist()
    if not isinstance(got, (list, tuple)):
        return f"expected a list of indices, got {type(got).__name__}"
    got = list(got)
    if any(isinstance(i, bool) or not isinstance(i, int) for i in got):
        return f"expected int indices, got {got!r}"
    if got != expected:
        return "not the same indices (in increasing compute)"
    return None


# -- cases ----------------------------------------------------------------------------------------


def _cases_flops():
    rng = random.Random(81)
    cases = [Case((124_000_000, 10_000_000_000), label="GPT-2 small on 10B tokens"),
             Case((70e9, 1.4e12), label="Chinchilla: 70B parameters, 1.4T tokens"),
             Case((175e9, 300e9), label="GPT-3"),
             Case((0, 1000), label="no parameters"), Case((1000, 0), label="no tokens"),
             Case((1, 1), label="one parameter, one token")]
    for _ in range(14):
        cases.append(Case((rng.randint(1, 10**9), rng.randint(1, 10**12))))
    cases += [Case((rng.uniform(1e3, 1e7), rng.uniform(1e4, 1e9)), label="floats") for _ in range(5)]
    return cases


def _cases_params():
    rng = random.Random(82)
    cases = [Case((GPTConfig.preset(name),), label=name) for name in ("gpt2", "gpt2-medium", "tiny", "mini", "small")]
    cases += [
        Case((GPTConfig(vocab_size=100, block_size=16, n_layer=1, n_head=1, n_embd=8),), label="one small layer"),
        Case((GPTConfig(vocab_size=100, block_size=16, n_layer=2, n_head=2, n_embd=8, tie_weights=False),),
             label="untied head: the head counts, the token embedding does not"),
        Case((GPTConfig(vocab_size=100, block_size=16, n_layer=2, n_head=2, n_embd=8, bias=False),),
             label="no biases (LayerNorms keep their weight only)"),
        Case((GPTConfig(vocab_size=100, block_size=16, n_layer=2, n_head=2, n_embd=8, pos_encoding="rope"),),
             label="rotary positions: no position table at all"),
        Case((GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, bias=False,
                        tie_weights=False, pos_encoding="rope"),), label="no bias, untied, rope"),
    ]
    for _ in range(12):
        n_head = rng.choice([1, 2, 4])
        cfg = GPTConfig(vocab_size=rng.randint(2, 5000), block_size=rng.choice([8, 64, 256, 1024]),
                        n_layer=rng.randint(1, 6), n_head=n_head, n_embd=n_head * 2 * rng.randint(1, 48),
                        bias=rng.random() < 0.6, tie_weights=rng.random() < 0.6,
                        pos_encoding=rng.choice(["learned", "rope"]))
        cases.append(Case((cfg,)))
    return cases


def _cases_power_law():
    rng = random.Random(83)
    cases = [
        Case(([1.0, 10.0], [2.0, 1.0]), label="two points: the line through them"),
        Case(([1e9, 1e10, 1e11, 1e12], [8.0, 4.0, 2.0, 1.0]), label="exact power law, no floor"),
        Case(([1e9, 1e10, 1e11, 1e12], [8.5, 4.5, 2.5, 1.5]), {"floor": 0.5}, label="exact law above a floor"),
        Case(([2.0, 4.0, 8.0], [1.0, 2.0, 4.0]), label="growing y: b is negative"),
        Case(([3.0, 5.0, 7.0], [2.0, 2.0, 2.0]), label="constant y: b = 0"),
    ]
    for _ in range(20):  # noisy synthetic scaling curves: 5% multiplicative noise
        n = rng.randint(3, 12)
        a, b, floor = 10 ** rng.uniform(0, 3), rng.uniform(0.05, 0.6), rng.choice([0.0, 0.0, rng.uniform(0.1, 2.0)])
        x = sorted(10 ** rng.uniform(6, 15) for _ in range(n))
        y = [floor + a * v ** (-b) * math.exp(rng.gauss(0, 0.05)) for v in x]
        cases.append(Case((x, y), {"floor": floor} if floor else {}, label=f"noisy, {n} points"))
    return cases


def _cases_best_lr():
    rng = random.Random(84)
    cases = [
        Case(([1e-3, 1e-2, 1e-1], [2.5, 2.1, 3.0]), label="a clean valley"),
        Case(([1e-3, 1e-2, 1e-1], [2.5, 2.1, NAN]), label="the largest lr diverged (NaN)"),
        Case(([1e-3, 1e-2, 1e-1, 1.0], [2.5, None, 2.0, INF]), label="None and inf mark diverged runs"),
        Case(([1e-1, 1e-3, 1e-2], [1.0, 1.0, 2.0]), label="a tie: the smaller lr wins (unsorted input)"),
        Case(([1e-2, 1e-1], [NAN, None]), label="every run diverged: None"),
        Case(([], []), label="no runs: None"),
        Case(([3e-4], [4.0]), label="one run"),
        Case(([1e-3, 1e-2], [-INF, 3.0]), label="-inf is not a result either"),
    ]
    for _ in range(14):
        n = rng.randint(2, 9)
        lrs = scaling.log_grid(10 ** rng.uniform(-5, -3), 10 ** rng.uniform(-2, 0), n)
        rng.shuffle(lrs)
        losses = [rng.choice([NAN, None, INF]) if rng.random() < 0.25 else round(rng.uniform(1, 5), 1)
                  for _ in lrs]
        cases.append(Case((lrs, losses)))
    return cases


def _cases_chinchilla():
    rng = random.Random(85)
    cases = [Case((5.76e23,), label="Chinchilla's budget"), Case((3.14e23,), label="GPT-3's budget"),
             Case((6e12,), {"tokens_per_param": 20.0}, label="6e12 FLOPs"),
             Case((1e21,), {"tokens_per_param": 1.0}, label="one token per parameter"),
             Case((0.0,), label="no compute")]
    cases += [Case((10 ** rng.uniform(9, 25),), {"tokens_per_param": rng.choice([5.0, 20.0, 50.0, 200.0])})
              for _ in range(15)]
    return cases


def _cases_grid():
    rng = random.Random(86)
    cases = [Case((1e-4, 1e-2, 5), label="two decades, 5 points"), Case((1e-3, 1.0, 4), label="one point per decade"),
             Case((3e-4, 3e-4, 3), label="lo == hi"), Case((0.01, 1.0, 1), label="n = 1: just lo"),
             Case((1.0, 1e-3, 4), label="descending"), Case((1e-4, 1e-1, 2), label="n = 2: the ends")]
    for _ in range(12):
        cases.append(Case((10 ** rng.uniform(-6, -2), 10 ** rng.uniform(-2, 1), rng.randint(2, 12))))
    return cases


def _cases_frontier():
    rng = random.Random(87)
    cases = [
        Case(([1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 4.0, 4.0]), label="worse or equal later runs are not on it"),
        Case(([4.0, 1.0, 2.0, 8.0, 2.0, 16.0], [2.0, 3.0, 3.5, 1.5, 2.5, 1.6]), label="unsorted input"),
        Case(([1.0, 1.0, 2.0], [2.0, 2.0, 1.0]), label="equal compute and loss: the lower index"),
        Case(([1.0, 2.0, 3.0], [None, NAN, 2.0]), label="diverged runs are skipped"),
        Case(([], []), label="no runs"),
        Case(([5.0], [1.0]), label="one run"),
        Case(([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]), label="every run improves"),
    ]
    for _ in range(14):  # runs of a few model sizes at several budgets
        compute, loss = [], []
        for size in range(rng.randint(1, 4)):
            for d in range(rng.randint(1, 4)):
                compute.append(float(2 ** (size + d) * rng.choice([1, 1, 1.5])))
                loss.append(round(5.0 / (1 + d) + 3.0 / (1 + size) + rng.uniform(-0.3, 0.3), 2)
                            if rng.random() > 0.1 else NAN)
        order = list(range(len(compute)))
        rng.shuffle(order)
        cases.append(Case(([compute[i] for i in order], [loss[i] for i in order])))
    return cases


for _task in [
    Task("8.1", "training FLOPs ≈ 6·N·D", _training_flops, _cases_flops, compare=_floats(1e-9),
         hint="each weight costs about 2 FLOPs per token forward and 4 backward"),
    Task("8.2", "non-embedding parameter count", _non_embedding_params, _cases_params, compare=exact_int,
         hint="count every weight inside the blocks plus the final LayerNorm and the head; leave out the token "
              "and position tables (with bias off, no bias vectors)"),
    Task("8.3", "fit a power law in log space", _fit_power_law, _cases_power_law, compare=_floats(1e-6),
         hint="a power law is a straight line in log-log space: fit a least-squares line to the logs of x and of "
              "y - floor; the exponent is minus its slope, the coefficient comes from its intercept"),
    Task("8.4", "best learning rate of a sweep", _best_lr, _cases_best_lr, compare=_lr_or_none,
         hint="ignore runs whose loss is missing or not finite; the lowest loss wins, ties going to the smaller "
              "lr; nothing left: None"),
    Task("8.5", "the Chinchilla-optimal split", _chinchilla_split, _cases_chinchilla, compare=_floats(1e-9),
         hint="compute is 6 N D and D is tokens_per_param times N: substitute and solve for N"),
    Task("8.6", "a log-spaced grid", _log_grid, _cases_grid, compare=_floats(1e-9),
         hint="equal ratios between neighbours: the exponent of hi / lo grows linearly from 0 to 1 across the n "
              "values"),
    Task("8.7", "the compute-efficient frontier", _compute_frontier, _cases_frontier, compare=_indices,
         hint="go through the finite runs in order of compute (ties: lower loss, then index); a run is on the "
              "frontier when it beats every run that used no more compute"),
]:
    register(_task)
