"""Small tools for tuning and scaling experiments (lesson 08).

* :func:`log_grid` -- a learning-rate (or any) grid evenly spaced in log space;
* :func:`best_lr` -- the winner of a sweep whose diverged runs have a NaN / None loss;
* :func:`training_flops` -- ``C ≈ 6·N·D``: forward (2 FLOPs per weight per token) plus backward
  (4);
* :func:`linear_fit` and :func:`fit_power_law` -- ordinary least squares, and
  ``y = floor + a·x^(-b)`` fitted as a straight line in log-log space;
* :func:`compute_frontier` -- the runs no cheaper run beats (the compute-efficient frontier);
* :func:`chinchilla_optimal` -- the compute-optimal split ``C = 6·N·D`` with ``D = r·N``
  (Hoffmann et al. 2022: ``r ≈ 20`` tokens per parameter).

Plain Python on purpose: every function is a few lines a learner can read (and rewrites in
the lesson's exercises); nothing here needs numpy or scipy.

>>> fit = fit_power_law([1e9, 1e10, 1e11], [4.0, 2.0, 1.0])
>>> round(fit.b, 4), round(fit(1e12), 4)
(0.301, 0.5)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from . import validate

__all__ = [
    "PowerLaw",
    "best_lr",
    "chinchilla_optimal",
    "compute_frontier",
    "fit_power_law",
    "linear_fit",
    "log_grid",
    "training_flops",
]


def _number(name: str, value: object) -> float:
    return validate.number(name, value, finite=False)


def log_grid(lo: float, hi: float, n: int) -> list[float]:
    """``n`` values from ``lo`` to ``hi`` (both included) with a constant ratio between neighbours.

    Value ``i`` is ``lo · (hi / lo) ** (i / (n - 1))``; ``n = 1`` gives ``[lo]``.

    >>> [round(x, 6) for x in log_grid(1e-4, 1e-2, 5)]
    [0.0001, 0.000316, 0.001, 0.003162, 0.01]
    """
    lo, hi = _number("lo", lo), _number("hi", hi)
    n = validate.integer("n", n, min=1)
    if lo <= 0 or hi <= 0:
        raise ValueError(f"a log grid needs positive ends, got lo={lo}, hi={hi}")
    if n == 1:
        return [lo]
    ratio = hi / lo
    out = [lo * ratio ** (i / (n - 1)) for i in range(n)]
    out[-1] = hi  # exact end point (the power can be off by an ulp)
    return out


def _finite(x: object) -> bool:
    return x is not None and not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)


def best_lr(lrs: Sequence[float], losses: Sequence[float | None]) -> float | None:
    """The learning rate whose run ended with the lowest loss.

    Diverged runs (loss ``None``, NaN or ±inf) are ignored; a tie goes to the smaller learning
    rate (the safer choice); ``None`` when no run has a finite loss.

    >>> best_lr([1e-3, 1e-2, 1e-1], [2.5, 2.1, float("nan")])
    0.01
    """
    if len(lrs) != len(losses):
        raise ValueError(f"{len(lrs)} learning rates but {len(losses)} losses")
    runs = [(float(loss), float(lr)) for lr, loss in zip(lrs, losses) if _finite(loss)]
    return min(runs)[1] if runs else None


def training_flops(n_params: float, n_tokens: float) -> float:
    """Training compute ``C ≈ 6·N·D`` in FLOPs: per token and weight, 2 FLOPs (a multiply and an
    add) in the forward pass and 4 in the backward pass (gradients for inputs and weights).

    ``N`` is the non-embedding parameter count (:meth:`gptcourse.model.GPT.num_params` with
    ``non_embedding=True``); attention's own FLOPs (:meth:`GPT.flops_per_token`) are left out,
    as in Kaplan et al. (2020) -- small while the context is short next to ``6 · n_embd``.
    """
    n, d = _number("n_params", n_params), _number("n_tokens", n_tokens)
    if n < 0 or d < 0:
        raise ValueError(f"n_params and n_tokens must be non-negative, got {n_params}, {n_tokens}")
    return 6.0 * n * d


def linear_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Ordinary least squares ``y ≈ slope·x + intercept``; returns ``(slope, intercept)``.

    ``slope = Σ(x - x̄)(y - ȳ) / Σ(x - x̄)²`` and ``intercept = ȳ - slope·x̄`` (needs at least two
    distinct x).
    """
    xs, ys = [float(v) for v in x], [float(v) for v in y]
    if len(xs) != len(ys):
        raise ValueError(f"x has {len(xs)} values but y has {len(ys)}")
    if len(xs) < 2:
        raise ValueError(f"a line needs at least 2 points, got {len(xs)}")
    if not all(math.isfinite(v) for v in xs + ys):
        raise ValueError("x and y must be finite")
    mx, my = math.fsum(xs) / len(xs), math.fsum(ys) / len(ys)
    sxx = math.fsum((a - mx) ** 2 for a in xs)
    if sxx == 0:
        raise ValueError("all x are equal: the slope is undefined")
    slope = math.fsum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sxx
    return slope, my - slope * mx


@dataclass(frozen=True)
class PowerLaw:
    """``y = floor + a · x^(-b)``: a power law in ``x`` on top of an irreducible ``floor``."""

    a: float
    b: float
    floor: float = 0.0

    def __call__(self, x: float) -> float:
        return self.floor + self.a * float(x) ** (-self.b)

    def inverse(self, y: float) -> float:
        """The ``x`` at which the law reaches ``y`` (``y`` must lie above the floor)."""
        if y <= self.floor:
            raise ValueError(f"y={y} is not above the floor {self.floor}: never reached")
        return ((y - self.floor) / self.a) ** (-1.0 / self.b)


def fit_power_law(x: Sequence[float], y: Sequence[float], floor: float = 0.0) -> PowerLaw:
    """Fit ``y = floor + a·x^(-b)`` by least squares in log space.

    ``log(y - floor) = log a - b·log x`` is a straight line: :func:`linear_fit` gives its slope
    ``-b`` and intercept ``log a``. Every ``x`` must be positive and every ``y`` above ``floor``.
    Log space weighs each point by its relative error, which is what a plot on log-log axes
    shows; the known ``floor`` (the entropy of the data) is subtracted first.
    """
    floor = _number("floor", floor)
    xs, ys = [float(v) for v in x], [float(v) for v in y]
    if len(xs) != len(ys):
        raise ValueError(f"x has {len(xs)} values but y has {len(ys)}")
    if any(not v > 0 for v in xs):
        raise ValueError("every x must be positive for a log-space fit")
    if any(not v > floor for v in ys):
        raise ValueError(f"every y must lie above floor={floor} (log of y - floor)")
    slope, intercept = linear_fit([math.log(v) for v in xs], [math.log(v - floor) for v in ys])
    return PowerLaw(a=math.exp(intercept), b=-slope, floor=floor)


def compute_frontier(compute: Sequence[float], loss: Sequence[float | None]) -> list[int]:
    """Indices of the runs on the compute-efficient frontier, by increasing compute.

    Runs are visited by increasing compute (ties: lower loss first, then lower index); a run is
    on the frontier when its loss is strictly lower than that of every run visited before it.
    Runs with a ``None``, NaN or infinite loss are skipped.

    >>> compute_frontier([1, 2, 3, 4], [5.0, 6.0, 4.0, 4.0])
    [0, 2]
    """
    if len(compute) != len(loss):
        raise ValueError(f"{len(compute)} compute values but {len(loss)} losses")
    order = sorted((float(c), float(v), i) for i, (c, v) in enumerate(zip(compute, loss)) if _finite(v))
    out: list[int] = []
    best = math.inf
    for _, value, i in order:
        if value < best:
            out.append(i)
            best = value
    return out


def chinchilla_optimal(compute: float, tokens_per_param: float = 20.0) -> tuple[float, float]:
    """``(n_params, n_tokens)`` that spend ``compute = 6·N·D`` with ``D = tokens_per_param·N``.

    Solving ``C = 6·N·(r·N)`` gives ``N = sqrt(C / (6r))`` and ``D = r·N``. Hoffmann et al. (2022)
    found ``r ≈ 20`` for the loss-optimal split: Chinchilla, 70 B parameters on 1.4 T tokens.

    >>> n, d = chinchilla_optimal(5.76e23)
    >>> f"{n:.3g} parameters, {d:.3g} tokens"
    '6.93e+10 parameters, 1.39e+12 tokens'
    """
    c, r = _number("compute", compute), _number("tokens_per_param", tokens_per_param)
    if c < 0 or r <= 0:
        raise ValueError(f"need compute >= 0 and tokens_per_param > 0, got {compute}, {tokens_per_param}")
    n = math.sqrt(c / (6.0 * r))
    return n, r * n
