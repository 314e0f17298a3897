"""Argument checks shared by the library.

One place for "is this an int / a number / true or false / one of these", one wording, and one
exception type for each kind of mistake:

* ``TypeError`` -- a value of the wrong type (``"3"`` or ``True`` for an int, ``None`` for a
  number);
* ``ValueError`` -- a value of the right type outside what is allowed (``0`` for a positive
  int, ``nan`` for a finite number, ``"adam"`` for one of ``adamw | sgd``).

Each check returns the value, converted (``numpy`` integers become ``int``), so a caller writes
``self.n = validate.integer("n", n, min=1)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any, TypeVar

__all__ = ["choice", "flag", "integer", "number"]

T = TypeVar("T")


def integer(name: str, value: Any, *, min: int | None = None, max: int | None = None) -> int:
    """``value`` as an int in ``[min, max]`` (either end optional). A bool is not an int here:
    ``True`` for a count is a mistake, not a 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    value = int(value)
    _check_range(name, value, min, max, False, False)
    return value


def number(name: str, value: Any, *, min: float | None = None, max: float | None = None,
           min_open: bool = False, max_open: bool = False, finite: bool = True) -> float:
    """``value`` (an int or float, not a bool) as a float in the interval from ``min`` to
    ``max`` (``min_open`` / ``max_open`` exclude the ends); NaN and infinities are refused
    unless ``finite=False`` (NaN never passes a bound)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if finite and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    _check_range(name, value, min, max, min_open, max_open)
    return value


def flag(name: str, value: Any) -> bool:
    """``value`` if it is ``True`` or ``False`` (not 0/1, not "yes")."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def choice(name: str, value: T, choices: Iterable[T]) -> T:
    """``value`` if it is one of ``choices``."""
    options = list(choices)
    if value not in options:
        listed = " | ".join(repr(c) for c in options)
        raise ValueError(f"{name} must be one of {listed}, got {value!r}")
    return value


def _check_range(name: str, value: float, lo, hi, lo_open: bool, hi_open: bool) -> None:
    below = lo is not None and not (value > lo if lo_open else value >= lo)
    above = hi is not None and not (value < hi if hi_open else value <= hi)
    if not (below or above):
        return
    if lo is not None and hi is not None:
        want = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    elif lo is not None:
        want = f"{'>' if lo_open else '>='} {lo}"
    else:
        want = f"{'<' if hi_open else '<='} {hi}"
    raise ValueError(f"{name} must be {want}, got {value!r}")
