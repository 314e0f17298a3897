"""Self-grading for the exercise notebooks.

An exercise is a stub the learner fills in::

    def utf8_bytes(text):
        raise NotImplementedError("Exercise 1.1: return the UTF-8 bytes of text as a list of ints")

and a check cell::

    from gptcourse.grading import check
    check("1.1", utf8_bytes)

:func:`check` runs the learner's function and the library's reference on the same fixed-seed
random inputs and edge cases and prints one line -- ✓ when every case agrees, ✗ with the first
failing case (input, expected, got), or "not attempted yet" while the stub still raises
``NotImplementedError``. Unless a task says otherwise (``Task.pure``), the learner's function
must also leave its arguments unchanged: an in-place edit of the caller's data is a failure. A wrong answer or an exception in the learner's code never ends in
a traceback, and the reference code is never shown.

``gptcourse grade NOTEBOOK`` executes a whole exercise notebook and prints a score table
with a row for every task of its lesson, check cell or not (see :func:`grade`). Tasks live in ``gptcourse/grading/lessonNN.py``; each module registers
its tasks with :func:`register` when first needed.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import json
import math
import os
import pkgutil
import re
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "exact_int",
    "Case",
    "CheckResult",
    "GradeReport",
    "Task",
    "check",
    "close",
    "get_task",
    "grade",
    "lesson_task_ids",
    "notebook_lesson",
    "register",
    "run_check",
    "skip_unfinished",
    "task_ids",
]

LOG_ENV = "GPTCOURSE_GRADE_LOG"
TIME_LIMIT_S = 120.0


@dataclass
class Case:
    """One input for a task: positional and keyword arguments, and an optional label."""

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    label: str = ""


@dataclass
class Task:
    """A graded exercise: a reference, its inputs and how answers are compared.

    ``cases`` is a function returning the list of :class:`Case` (built on first use from
    a fixed seed). ``compare(expected, got)`` returns ``None`` when ``got`` is right, or a
    short reason why not. ``pure`` (the default) means the learner's function must leave
    its arguments as it found them; set it False for a task whose job is to change an
    argument (an optimizer step, a cache update).
    """

    id: str
    title: str
    reference: Callable[..., Any]
    cases: Callable[[], list[Case]]
    compare: Callable[[Any, Any], str | None] | None = None
    hint: str = ""
    pure: bool = True

    def __post_init__(self) -> None:
        if self.compare is None:
            self.compare = same


_TASKS: dict[str, Task] = {}
_NOTHING = object()
_LOADED = False


def register(task: Task) -> Task:
    """Add a task to the registry (ids look like ``"1.3"``: lesson.number)."""
    if not re.fullmatch(r"\d+\.\d+", task.id):
        raise ValueError(f"task id {task.id!r} must look like '1.3' (lesson.number)")
    if task.id in _TASKS and _TASKS[task.id] is not task:
        raise ValueError(f"task {task.id} is registered twice")
    _TASKS[task.id] = task
    return task


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    package = Path(__file__).parent
    for info in pkgutil.iter_modules([str(package)]):
        if info.name.startswith("lesson"):
            importlib.import_module(f"{__name__}.{info.name}")


def task_ids() -> list[str]:
    """All registered task ids, in lesson order."""
    _load_all()
    return sorted(_TASKS, key=lambda t: tuple(int(x) for x in t.split(".")))


def lesson_task_ids(lesson: int) -> list[str]:
    """The registered task ids of one lesson (``lesson_task_ids(1)`` -> ``["1.1", ...]``)."""
    return [t for t in task_ids() if int(t.split(".")[0]) == lesson]


def get_task(task_id: str) -> Task:
    _load_all()
    if not isinstance(task_id, str) or task_id not in _TASKS:
        known = ", ".join(task_ids())
        raise KeyError(f"unknown exercise {task_id!r}; known exercises: {known}")
    return _TASKS[task_id]


# --------------------------------------------------------------------------------------
# Comparing answers
# --------------------------------------------------------------------------------------


def _normalise(x: Any) -> Any:
    """Make equal-in-spirit answers compare equal: tuples/lists, Counter/dict, numpy ints."""
    if hasattr(x, "detach") and hasattr(x, "tolist"):  # torch tensor
        return x
    if type(x).__module__ == "numpy":
        return x.tolist() if hasattr(x, "tolist") else x
    if isinstance(x, Mapping):
        return {_hashable(_normalise(k)): _normalise(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_normalise(v) for v in x]
    return x


def _hashable(x: Any) -> Any:
    if isinstance(x, list):
        return tuple(_hashable(v) for v in x)
    return x


def same(expected: Any, got: Any) -> str | None:
    """The default comparison: equal values, lenient only about representation.

    Lists equal tuples, a dict equals a Counter, numpy values equal Python ones, and an int
    equals a float of the same value (``3 == 3.0``); floats agree within 1e-6 relative,
    tensors within ``rtol=1e-5, atol=1e-6``. A bool is not a number (``True`` is not ``1``)
    and a str is not a number (``"1.0"`` is not ``1.0``). Containers are compared element by
    element and the message names the first place that differs.
    """
    if got is None and expected is not None:
        return "your function returned None (is a `return` missing?)"
    why, where = _differ(_normalise(expected), _normalise(got))
    if why is None:
        return None
    return f"at {where}: {why}" if where else why


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _differ(e: Any, g: Any, where: str = "") -> tuple[str | None, str]:
    """Why ``g`` differs from ``e`` (``None`` when it does not) and where, e.g. ``[2][0]``."""
    if hasattr(e, "detach"):
        import torch

        if not isinstance(g, torch.Tensor):
            return f"expected a torch.Tensor, got {type(g).__name__}", where
        if g.shape != e.shape:
            return f"shape {tuple(g.shape)} instead of {tuple(e.shape)}", where
        if not torch.allclose(g.to(e.dtype), e, rtol=1e-5, atol=1e-6):
            return _tensor_mismatch(e, g), where
        return None, where
    if isinstance(e, bool) or isinstance(g, bool):
        if type(e) is not type(g):
            return f"expected {_short(e, 60)} ({type(e).__name__}), got {_short(g, 60)} ({type(g).__name__})", where
        return (None if e == g else f"{g} instead of {e}"), where
    if _is_number(e):
        if not _is_number(g):
            return f"expected a number, got {type(g).__name__} {_short(g, 60)}", where
        if isinstance(e, int) and isinstance(g, int):
            ok = e == g
        else:
            ok = math.isclose(e, g, rel_tol=1e-6, abs_tol=1e-9) or (math.isnan(e) and math.isnan(g))
        return (None if ok else (f"{g!r} instead of {e!r}" if where else "not equal")), where
    if isinstance(e, dict):
        if not isinstance(g, dict):
            return f"expected a dict, got a {type(g).__name__}", where
        missing = [k for k in e if k not in g]
        if missing:
            return f"key {_short(missing[0], 80)} is missing ({len(missing)} missing in all)", where
        extra = [k for k in g if k not in e]
        if extra:
            return f"unexpected key {_short(extra[0], 80)} ({len(extra)} extra in all)", where
        for k in e:
            why, at = _differ(e[k], g[k], f"{where}[{_short(k, 60)}]")
            if why is not None:
                return why, at
        return None, where
    if isinstance(e, list):
        if not isinstance(g, list):
            return f"expected a list, got a {type(g).__name__}", where
        if len(g) != len(e):
            return f"{len(g)} items instead of {len(e)}", where
        for i, (a, b) in enumerate(zip(e, g)):
            why, at = _differ(a, b, f"{where}[{i}]")
            if why is not None:
                return why, at
        return None, where
    if type(e) is not type(g):
        return f"expected a {type(e).__name__}, got a {type(g).__name__}", where
    if e == g:
        return None, where
    return (f"{_short(g, 80)} instead of {_short(e, 80)}" if where else "not equal"), where


def _tensor_mismatch(e: Any, g: Any, atol: float | None = None) -> str:
    """The "values differ" message, with the largest difference and where it is."""
    import torch

    if e.dtype == g.dtype and not e.is_floating_point():
        at = tuple((g != e).nonzero()[0].tolist()) if e.dim() else ()
        where = f" first at index {at}" if at else ""
        return f"values differ{where}: {g[at].item()} instead of {e[at].item()}"
    diff = (g.double() - e.double()).abs().nan_to_num(float("inf"))
    at = tuple(int(i) for i in torch.unravel_index(diff.flatten().argmax(), diff.shape))
    where = f" at index {at}" if at else ""
    tol = "" if atol is None else f", tolerance {atol:g}"
    return (f"values differ (max abs diff {float(diff[at]):.3g}{where}: {g[at].item():.6g} "
            f"instead of {e[at].item():.6g}{tol})")


def exact_int(expected: int, got: Any) -> str | None:
    """Compare for counts: ``got`` must be an int (a one-element integer tensor is accepted)
    equal to ``expected``; the message says by how much it is off."""
    import torch

    if isinstance(got, torch.Tensor) and got.numel() == 1 and not got.is_floating_point():
        got = int(got)
    if isinstance(got, bool) or not isinstance(got, int):
        return f"expected an int, got {type(got).__name__} {got!r}"
    if got != expected:
        return f"off by {got - expected:+,}"
    return None


def as_number(got: Any, what: str = "") -> float | str:
    """``got`` as a Python float -- a number, a numpy scalar, or a one-element tensor/array --
    or the reason it is not one (``what`` names it in the message, e.g. " for the loss")."""
    import numpy as np
    import torch

    if isinstance(got, (torch.Tensor, np.ndarray)):
        size = got.size if isinstance(got, np.ndarray) else got.numel()
        if size != 1:
            return f"expected a single number{what}, got an array of shape {tuple(got.shape)}"
        got = got.item()
    if isinstance(got, (np.floating, np.integer)):
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        return f"expected a number{what}, got {type(got).__name__}"
    return float(got)


def scalar(rel: float, abs_: float = 0.0) -> Callable[[Any, Any], str | None]:
    """A comparison for one-number answers: ``math.isclose(got, expected, rel_tol=rel,
    abs_tol=abs_)``, accepting anything :func:`as_number` accepts."""

    def compare(expected, got):
        g = as_number(got)
        if isinstance(g, str):
            return g
        if not math.isclose(g, float(expected), rel_tol=rel, abs_tol=abs_):
            return f"{g!r} instead of {float(expected)!r} (relative tolerance {rel:g})"
        return None

    return compare


def ints(*names: str) -> Callable[[Any, Any], str | None]:
    """A comparison for a tuple of counts, e.g. ``ints("trainable", "total")``: each entry
    compared with :func:`exact_int`, the message naming the entry."""

    def compare(expected, got):
        if not isinstance(got, (tuple, list)) or len(got) != len(names):
            return f"expected a tuple ({', '.join(names)}) of ints, got {got!r:.80}"
        for name, e, g in zip(names, expected, got):
            why = exact_int(e, g)
            if why:
                return f"{name}: {why}"
        return None

    return compare


def tensors(*names: str) -> Callable[[Any, Any], str | None]:
    """A comparison for a tuple of integer tensors, e.g. ``tensors("inputs", "targets")``: each
    with the expected shape, dtype and values; the message gives the first differing position."""
    import torch

    def compare(expected, got):
        if not isinstance(got, (tuple, list)) or len(got) != len(names):
            return f"expected a tuple ({', '.join(names)}) of tensors, got {type(got).__name__}"
        for name, e, g in zip(names, expected, got):
            if not isinstance(g, torch.Tensor):
                return f"{name}: expected a torch.Tensor, got {type(g).__name__}"
            if g.shape != e.shape:
                return f"{name}: shape {tuple(g.shape)} instead of {tuple(e.shape)}"
            if g.dtype != e.dtype:
                return f"{name}: dtype {g.dtype} instead of {e.dtype}"
            if not torch.equal(g, e):
                where = tuple((g != e).nonzero()[0].tolist())
                return (f"{name} differ first at index {where}: {g[where].item()} instead of "
                        f"{e[where].item()}")
        return None

    return compare


def close(atol: float, rtol: float = 1e-5) -> Callable[[Any, Any], str | None]:
    """A comparison for tensor answers: same shape, and ``allclose(got, expected, rtol, atol)``
    (``atol=0, rtol=0`` is exact). A bool ``expected`` needs a bool answer, equal exactly."""
    import torch

    def compare(expected, got):
        if not isinstance(got, torch.Tensor):
            return f"expected a torch.Tensor, got {type(got).__name__}"
        if got.shape != expected.shape:
            return f"shape {tuple(got.shape)} instead of {tuple(expected.shape)}"
        if expected.dtype == torch.bool:
            if got.dtype != torch.bool:
                return f"expected a bool tensor, got dtype {got.dtype}"
            return None if torch.equal(got, expected) else _tensor_mismatch(expected, got)
        if not got.is_floating_point():
            return f"expected floating-point values, got dtype {got.dtype}"
        if not torch.allclose(got.double(), expected.double(), rtol=rtol, atol=atol):
            return _tensor_mismatch(expected, got, atol)
        return None

    return compare


# --------------------------------------------------------------------------------------
# Running a check
# --------------------------------------------------------------------------------------


@dataclass
class CheckResult:
    """The outcome of one check: ``status`` is "passed", "failed" or "not attempted"."""

    task: str
    title: str
    status: str
    passed: int
    total: int
    detail: str = ""

    def __bool__(self) -> bool:
        return self.status == "passed"

    @property
    def report(self) -> str:
        head = f"Exercise {self.task} · {self.title}"
        if self.status == "passed":
            return f"✓ {head} — all {self.total} cases passed"
        if self.status == "not attempted":
            return f"… {head} — not attempted yet ({self.detail})"
        return f"✗ {head} — {self.detail}"

    def __str__(self) -> str:
        return self.report

    def _ipython_display_(self) -> None:  # check() already printed the report
        pass


def _short(x: Any, limit: int = 300) -> str:
    text = repr(x)
    if hasattr(x, "shape") and hasattr(x, "dtype") and len(text) > limit:
        text = f"tensor(shape={tuple(x.shape)}, dtype={x.dtype})"
    return text if len(text) <= limit else text[: limit - 20] + f"... ({len(text)} chars)"


def _call_repr(fn: Callable, name: str, case: Case) -> str:
    try:
        bound = inspect.signature(fn).bind(*case.args, **case.kwargs)
        parts = [f"{k}={_short(v, 160)}" for k, v in bound.arguments.items()]
    except (TypeError, ValueError):
        parts = [_short(a, 160) for a in case.args] + [
            f"{k}={_short(v, 160)}" for k, v in case.kwargs.items()
        ]
    return f"{name}({', '.join(parts)})"


class _TimeLimit:
    """Stop a learner's function that runs too long (main thread on POSIX only)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.active = (
            hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
        )

    def _fire(self, signum, frame):
        raise TimeoutError(f"took longer than {self.seconds:.0f} s")

    def __enter__(self):
        if self.active:
            self.old = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc):
        if self.active:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.old)
        return False


def _is_stub(err: BaseException) -> bool:
    """A stub raises NotImplementedError before the learner has written anything."""
    return isinstance(err, NotImplementedError)


def _changed(before: Any, after: Any, depth: int = 0) -> str | None:
    """Where ``after`` (an argument after the learner's call) no longer equals ``before``
    (its pristine copy): ``""`` for the whole value, ``"[2, 0]"`` or ``".weight"`` for a
    part; ``None`` when nothing changed."""
    import torch

    if depth > 8:
        return None
    if not isinstance(before, torch.Tensor) and type(before).__module__ != "numpy":
        try:  # fast path: == in C for big dicts and lists (a tensor inside makes it raise)
            if bool(before == after):
                return None
        except Exception:
            pass
    if isinstance(before, torch.Tensor):
        if not isinstance(after, torch.Tensor) or after.shape != before.shape or after.dtype != before.dtype:
            return ""
        same_ = after == before
        if before.is_floating_point() or before.is_complex():
            same_ |= before.isnan() & after.isnan()
        if bool(same_.all()):
            return None
        return str(list((~same_).nonzero()[0].tolist())) if before.dim() else ""
    if callable(getattr(before, "state_dict", None)):  # a module, an optimizer
        try:
            return _changed(before.state_dict(), after.state_dict(), depth + 1)
        except Exception:  # not a real state_dict; treat as unchanged rather than guess
            return None
    if isinstance(before, Mapping):
        if not isinstance(after, Mapping) or set(before) != set(after):
            return ""
        for k in before:
            at = _changed(before[k], after[k], depth + 1)
            if at is not None:
                return f"[{k!r}]{at}"
        return None
    if isinstance(before, (list, tuple)):
        if type(after) is not type(before) or len(after) != len(before):
            return ""
        for i, (b, a) in enumerate(zip(before, after)):
            at = _changed(b, a, depth + 1)
            if at is not None:
                return f"[{i}]{at}"
        return None
    if type(before).__module__ == "numpy" and hasattr(before, "shape"):
        import numpy as np

        return None if np.array_equal(before, after, equal_nan=before.dtype.kind in "fc") else ""
    if isinstance(before, (int, float, str, bytes, bool, type(None), set, frozenset, bytearray)):
        if isinstance(before, float) and math.isnan(before):
            return None if isinstance(after, float) and math.isnan(after) else ""
        return None if before == after else ""
    if hasattr(before, "__dict__") and not callable(before):  # an object: its public attributes
        if not hasattr(after, "__dict__"):
            return ""
        for k, v in vars(before).items():
            if not k.startswith("_"):  # private attributes may be caches filled on use
                at = _changed(v, getattr(after, k, _NOTHING), depth + 1)
                if at is not None:
                    return f".{k}{at}"
    return None


def _modified_argument(fn: Callable, case: Case, args: tuple, kwargs: dict) -> str | None:
    """A message naming the argument the learner's call changed in place, or ``None``."""
    for k, (before, after) in enumerate(zip(case.args, args)):
        at = _changed(before, after)
        if at is not None:
            return _modified_message(_argument_name(fn, k), at, before)
    for key, before in case.kwargs.items():
        at = _changed(before, kwargs[key])
        if at is not None:
            return _modified_message(key, at, before)
    return None


def _argument_name(fn: Callable, position: int) -> str:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return f"argument {position + 1}"
    if position < len(params) and params[position].kind in (params[position].POSITIONAL_ONLY,
                                                            params[position].POSITIONAL_OR_KEYWORD):
        return params[position].name
    return f"argument {position + 1}"


def _modified_message(name: str, at: str, before: Any) -> str:
    import torch

    if isinstance(before, torch.Tensor):
        fix = f"{name} = {name}.clone()"
    elif isinstance(before, (list, dict, set)):
        fix = f"{name} = {name}.copy()"
    else:
        fix = "copy.deepcopy(...) of it"
    where = f" (at {name}{at})" if at else ""
    return (f"your function changed its argument {name!r} in place{where}; the caller's data must "
            f"stay as it was -- work on a copy ({fix}) or build a new result")


def run_check(task_id: str, obj: Any, time_limit: float = TIME_LIMIT_S) -> CheckResult:
    """Grade ``obj`` on task ``task_id`` without printing; see :func:`check`."""
    task = get_task(task_id)
    cases = task.cases()
    total = len(cases)

    def result(status: str, passed: int, detail: str = "") -> CheckResult:
        return CheckResult(task.id, task.title, status, passed, total, detail)

    if not callable(obj):
        return result("failed", 0, f"expected a function, got {type(obj).__name__} {_short(obj, 80)}")
    name = getattr(obj, "__name__", "your_function")
    try:
        with _TimeLimit(time_limit):
            for n, case in enumerate(cases, 1):
                # case.args themselves are never passed on: they stay pristine, to compare with
                expected = task.reference(*copy.deepcopy(case.args), **copy.deepcopy(case.kwargs))
                args, kwargs = copy.deepcopy(case.args), copy.deepcopy(case.kwargs)
                try:
                    got = obj(*args, **kwargs)
                except TimeoutError:
                    raise
                except Exception as err:  # the learner's bug: report, never a traceback
                    if _is_stub(err) and n == 1:
                        return result("not attempted", n - 1, "the stub still raises NotImplementedError")
                    why = f"raised {type(err).__name__}: {err}"
                    return result("failed", n - 1, _failure(task, name, obj, n, total, case, expected, why))
                try:
                    reason = task.compare(expected, got)
                except Exception as err:  # an answer of a shape the comparison can't handle
                    reason = f"cannot be compared with the expected answer ({type(err).__name__}: {err})"
                if reason is None and task.pure:
                    reason = _modified_argument(obj, case, args, kwargs)
                if reason is not None:
                    detail = _failure(task, name, obj, n, total, case, expected, reason, got=got)
                    return result("failed", n - 1, detail)
    except TimeoutError as err:
        return result("failed", 0, f"stopped: your function {err} (limit {time_limit:.0f} s for all cases)")
    return result("passed", total)


def _failure(task, name, obj, n, total, case, expected, why, got=_NOTHING) -> str:
    lines = [f"case {n} of {total} failed" + (f" ({case.label})" if case.label else "")]
    lines.append(f"    input:    {_call_repr(obj, name, case)}")
    lines.append(f"    expected: {_short(expected)}")
    if got is not _NOTHING:
        lines.append(f"    got:      {_short(got)}")
    if why != "not equal":
        lines.append(f"    problem:  {why}")
    if task.hint:
        lines.append(f"    hint:     {task.hint}")
    return "\n".join(lines)


def check(task_id: str, obj: Any) -> CheckResult:
    """Grade a learner's function against the library and print ✓ / ✗ / not attempted.

    Returns the :class:`CheckResult` (truthy when every case passed). An unknown task id is
    the only error raised; anything wrong in the learner's code is reported, not raised.
    """
    res = run_check(task_id, obj)
    print(res.report)
    log = os.environ.get(LOG_ENV)
    if log:
        with open(log, "a", encoding="utf-8") as f:
            rec = {"task": res.task, "status": res.status, "passed": res.passed, "total": res.total, "report": res.report}
            f.write(json.dumps(rec) + "\n")
    return res


@contextlib.contextmanager
def skip_unfinished():
    """Run a "put it together" cell only once its exercises are solved.

    ``with skip_unfinished(): ...`` runs the block; if a stub inside still raises
    ``NotImplementedError``, it prints which exercise to finish instead of a traceback, so an
    exercise notebook runs top to bottom at any stage.
    """
    try:
        yield
    except NotImplementedError as err:
        print(f"not yet: finish the exercises above first ({err})")


# --------------------------------------------------------------------------------------
# Grading a whole notebook
# --------------------------------------------------------------------------------------

_CHECK_CALL = re.compile(r"""\bcheck\(\s*["'](\d+\.\d+)["']""")


@dataclass
class GradeReport:
    notebook: str
    rows: list[tuple[str, str, str, str]]  # task, title, status, cases
    errors: list[str]
    reports: dict[str, str] = field(default_factory=dict)  # task -> check's printed report
    raised: list[str] = field(default_factory=list)  # every cell that raised, stubs included

    @property
    def score(self) -> int:
        return sum(1 for r in self.rows if r[2] == "passed")

    @property
    def total(self) -> int:
        return len(self.rows)

    def table(self) -> str:
        mark = {"passed": "✓", "failed": "✗", "not attempted": "…", "not run": "!"}
        width = max([len(r[1]) for r in self.rows] + [5])
        lines = [f"{self.notebook}", f"  {'task':<6} {'exercise':<{width}}  result"]
        for task_id, title, status, cases in self.rows:
            lines.append(f"  {task_id:<6} {title:<{width}}  {mark.get(status, '?')} {status} {cases}")
        lines.append(f"  score: {self.score}/{self.total}")
        lines.extend(f"  note: {e}" for e in self.errors)
        for task_id, _, status, _ in self.rows:
            if status == "failed" and task_id in self.reports:
                lines.append("")
                lines.extend("  " + ln for ln in self.reports[task_id].splitlines())
        return "\n".join(lines)


def tasks_in_notebook(nb) -> list[str]:
    """Task ids of the check calls in a notebook, in order of appearance."""
    seen: list[str] = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            for t in _CHECK_CALL.findall(cell.source):
                if t not in seen:
                    seen.append(t)
    return seen


def notebook_lesson(path: str | os.PathLike, nb) -> int:
    """The lesson a notebook belongs to: the ``gptcourse.lesson`` metadata the exercise
    generator writes, else the ``NN`` of a ``NN_name.ipynb`` file name."""
    lesson = nb.metadata.get("gptcourse", {}).get("lesson")
    if isinstance(lesson, int) and not isinstance(lesson, bool):
        return lesson
    m = re.match(r"(\d+)_", Path(path).name)
    if m:
        return int(m.group(1))
    raise ValueError(f"cannot tell which lesson {Path(path).name} belongs to: keep the NN_ prefix of its "
                     f"file name (e.g. 03_attention.ipynb) or start again from a fresh copy in exercises/")


def _kernel_manager():
    """A kernel running this Python (not whatever ``python`` is first on PATH)."""
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name="python3")
    if os.name != "nt":
        # Unix sockets in a private folder: TCP ports are picked before they are bound, so
        # kernels started at the same moment (pytest-xdist workers, nbval) can collide
        import tempfile

        km.transport = "ipc"
        km.ip = os.path.join(tempfile.mkdtemp(prefix="gptcourse-kernel-"), "kernel")
    km.kernel_spec.argv[0] = sys.executable
    km.kernel_spec.argv.append("--IPKernelApp.log_level=ERROR")  # no transport warnings
    return km


def execute_notebook(nb, cwd: str | os.PathLike, timeout: int = 900, allow_errors: bool = True, env: dict | None = None):
    """Execute ``nb`` in place with a kernel of this Python; returns the notebook."""
    from nbclient import NotebookClient

    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    km = _kernel_manager()
    try:
        client = NotebookClient(
            nb,
            timeout=timeout,
            km=km,
            allow_errors=allow_errors,
            resources={"metadata": {"path": str(cwd)}},
        )
        client.execute()
    finally:
        if km.has_kernel:
            km.shutdown_kernel(now=True)
        if km.transport == "ipc":
            import shutil

            shutil.rmtree(os.path.dirname(km.ip), ignore_errors=True)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def grade(notebook: str | os.PathLike, timeout: int = 900) -> GradeReport:
    """Execute an exercise notebook and collect the result of each of its lesson's tasks.

    The tasks come from the registry (every task of the notebook's lesson, see
    :func:`notebook_lesson`), not from the notebook: a task whose check cell was deleted
    counts as "not attempted", one whose check cell did not run as "not run".
    """
    import tempfile

    import nbformat

    path = Path(notebook)
    if not path.is_file():
        raise FileNotFoundError(f"no notebook at {path}")
    nb = nbformat.read(path, as_version=4)
    lesson = notebook_lesson(path, nb)
    expected = lesson_task_ids(lesson)
    if not expected:
        raise ValueError(f"{path.name}: lesson {lesson} has no exercises to grade")
    present = tasks_in_notebook(nb)
    # the log's name is random and the folder private: a notebook cannot guess it in advance
    with tempfile.TemporaryDirectory(prefix="gptcourse-grade-") as tmp:
        log = Path(tmp) / "grades.jsonl"
        log.touch()
        errors: list[str] = []
        try:
            execute_notebook(nb, path.parent, timeout=timeout, env={LOG_ENV: str(log)})
        except Exception as err:  # kernel died, timeout: grade what ran
            errors.append(f"execution stopped: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        results = {}
        for line in log.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            results[rec["task"]] = rec
    raised = []
    for k, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                what = f"raised {out.get('ename')}: {out.get('evalue', '')[:200]}"
                raised.append(f"cell {k} {what}")
                if out.get("ename") != "NotImplementedError":
                    errors.append(f"a cell {what}")
    rows = []
    for task_id in expected:
        title = get_task(task_id).title
        rec = results.get(task_id)
        if rec is not None:
            rows.append((task_id, title, rec["status"], f"({rec['passed']}/{rec['total']} cases)"))
        elif task_id in present:
            rows.append((task_id, title, "not run", ""))
        else:
            rows.append((task_id, title, "not attempted", ""))
            errors.append(f"the check cell for {task_id} is missing: add check({task_id!r}, your_function) "
                          f"after it (a fresh copy of the notebook in exercises/ has it)")
    for task_id in present:
        if task_id not in expected:
            errors.append(f"check({task_id!r}, ...) is not an exercise of lesson {lesson}: not counted")
    reports = {t: r.get("report", "") for t, r in results.items()}
    return GradeReport(str(path), rows, errors, reports, raised)
