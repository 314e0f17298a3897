"""The engine of :mod:`gptcourse.stories`: choice tables and the two choosers that run a grammar.

A grammar (:mod:`gptcourse.stories_grammar`) is a program that calls a *chooser* at every
choice point with a :class:`Table` of options and their probabilities. The :class:`Writer`
draws each option with a seeded ``random.Random`` and adds the log of its probability (story
generation); the :class:`Reader` is given a text and follows every option that matches it
(parsing: the exact log-probability of a text). Templates hold ``{field}`` parts, rendered
from the story so far, and ``<slot>`` parts, written by the functions registered with
:func:`slot`.
"""

from __future__ import annotations

import math
import random
import re
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate

__all__ = ["SLOT", "SLOTS", "TABLES", "Mismatch", "Reader", "T", "Table", "Writer", "cap", "slot"]


# ======================================================================================
# Choice tables
# ======================================================================================

SLOT = re.compile(r"<(\w+)>")  # a ``<slot>`` in a template
_LIT, _FMT, _CALL = 0, 1, 2
TABLES: list[Table] = []  # every choice table of the grammar, in the order they were made


class Table:
    """One choice point: options (text templates), their probabilities, optional data.

    A template is text with ``{field}`` parts, rendered from the story so far (the hero's name,
    pronouns, ...: probability 1), and ``<slot>`` parts, which call a slot function that makes
    further choices. The text before the first slot is the option's *head*: the reader uses it
    to tell options apart.
    """

    __slots__ = ("texts", "weights", "data", "probs", "logp", "cum", "heads", "hfmt", "rests", "empty", "_sub")

    def __init__(self, rows: Sequence[tuple], register: bool = True) -> None:
        if not rows:
            raise ValueError("a choice table needs at least one option")
        self.texts = tuple(r[0] for r in rows)
        self.weights = tuple(float(r[1]) for r in rows)
        self.data = tuple(r[2] if len(r) > 2 else None for r in rows)
        if any(not w > 0 for w in self.weights):
            raise ValueError(f"weights must be positive: {rows}")
        if len(set(self.texts)) != len(self.texts):
            raise ValueError(f"options of one choice point must differ: {self.texts}")
        total = math.fsum(self.weights)
        self.probs = tuple(w / total for w in self.weights)
        self.logp = tuple(math.log(w) - math.log(total) for w in self.weights)
        cum = list(accumulate(self.probs))
        cum[-1] = 1.0
        self.cum = tuple(cum)
        heads, hfmt, rests = [], [], []
        for t in self.texts:
            parts = SLOT.split(t)  # literal, slot, literal, slot, ...
            heads.append(parts[0])
            hfmt.append("{" in parts[0])
            rest = []
            for k, p in enumerate(parts[1:]):
                if k % 2 == 0:
                    rest.append((p, _CALL))
                elif p:
                    rest.append((p, _FMT if "{" in p else _LIT))
            rests.append(tuple(rest))
        self.heads, self.hfmt, self.rests = tuple(heads), tuple(hfmt), tuple(rests)
        self.empty = tuple(t == "" for t in self.texts)
        self._sub: dict[frozenset, Table] = {}
        if register:
            TABLES.append(self)

    def __len__(self) -> int:
        return len(self.texts)

    def without(self, texts: frozenset) -> Table:
        """The same choice with some options removed, renormalized (cached)."""
        sub = self._sub.get(texts)
        if sub is None:
            rows = [(t, w, d) for t, w, d in zip(self.texts, self.weights, self.data) if t not in texts]
            sub = self._sub[texts] = Table(rows, register=False)
        return sub


def T(*rows: tuple) -> Table:
    """``T(("text", weight[, data]), ...)``: a choice table."""
    return Table(rows)


def cap(s: str) -> str:
    """Capitalize a template's first letter ("{his} mom" -> "{His} mom")."""
    if s.startswith("{"):
        return "{" + s[1].upper() + s[2:]
    return s[:1].upper() + s[1:]


SLOTS: dict = {}  # slot name -> function(chooser, story so far) that writes the slot


def slot(name: str):
    """Register the decorated function as the writer of ``<name>`` slots."""

    def deco(fn):
        SLOTS[name] = fn
        return fn

    return deco


# ======================================================================================
# The two choosers: the writer (sampling) and the reader (parsing)
# ======================================================================================


class _Chooser:
    """What the grammar's program calls: ``pick`` an option of a table, or ``sent`` one as a
    sentence (preceded by a space unless it starts a paragraph; nothing if it is empty). The
    writer chooses by sampling, the reader by matching a given text (their ``_choose``)."""

    __slots__ = ()

    def _choose(self, t: Table, c: dict, sentence: bool) -> int:
        raise NotImplementedError

    def pick(self, t: Table, c: dict) -> int:
        return self._choose(t, c, False)

    def sent(self, t: Table, c: dict) -> int:
        return self._choose(t, c, True)


class Writer(_Chooser):
    """Draws options with ``rng``; ``lp`` is the sum of the log-probabilities drawn."""

    __slots__ = ("rng", "out", "lp", "bol")

    def __init__(self, rng: random.Random) -> None:
        self.rng, self.out, self.lp, self.bol = rng, [], 0.0, True

    def _index(self, t: Table) -> int:
        return bisect_right(t.cum, self.rng.random())

    def _choose(self, t: Table, c: dict, sentence: bool) -> int:
        i = self._index(t)
        self.lp += t.logp[i]
        out = self.out
        if sentence and not t.empty[i]:
            if not self.bol:
                out.append(" ")
            self.bol = False
        head = t.heads[i]
        if head:
            out.append(head.format_map(c) if t.hfmt[i] else head)
        for seg, kind in t.rests[i]:
            if kind == _LIT:
                out.append(seg)
            elif kind == _FMT:
                out.append(seg.format_map(c))
            else:
                SLOTS[seg](self, c)
        return i

    def say(self, s: str, c: dict | None = None) -> None:
        self.out.append(s.format_map(c) if c is not None else s)

    def line(self, s: str, c: dict | None = None) -> None:
        if not self.bol:
            self.out.append(" ")
        self.bol = False
        self.say(s, c)

    def para(self) -> None:
        self.out.append("\n")
        self.bol = True


class Mismatch(Exception):
    """The reader's text does not continue the way this derivation writes."""


class Reader(_Chooser):
    """Follows a given text through the program; forks at every choice with several matches.

    ``script`` fixes the option taken at the first ``len(script)`` forks; later forks take
    their first match and record the other matches in ``forks`` (as scripts) for
    :func:`gptcourse.stories.derivations` to replay.
    """

    __slots__ = ("text", "pos", "lp", "bol", "script", "path", "forks")

    def __init__(self, text: str, script: list[int]) -> None:
        self.text, self.pos, self.lp, self.bol = text, 0, 0.0, True
        self.script, self.path, self.forks = script, [], []

    def _choose(self, t: Table, c: dict, sentence: bool) -> int:
        text, pos = self.text, self.pos
        lead = " " if sentence and not self.bol else ""
        cands = []
        for i, head in enumerate(t.heads):
            if t.empty[i]:
                cands.append((i, 0))
                continue
            s = lead + (head.format_map(c) if t.hfmt[i] else head)
            if text.startswith(s, pos):
                cands.append((i, len(s)))
        if not cands:
            raise Mismatch
        if len(cands) == 1:
            i, n = cands[0]
        else:
            k = len(self.path)
            if k < len(self.script):
                j = self.script[k]
            else:
                j = 0
                self.forks.extend(self.path + [alt] for alt in range(1, len(cands)))
            self.path.append(j)
            i, n = cands[j]
        self.pos += n
        self.lp += t.logp[i]
        if sentence and not t.empty[i]:
            self.bol = False
        for seg, kind in t.rests[i]:
            if kind == _CALL:
                SLOTS[seg](self, c)
            else:
                self.say(seg, c if kind == _FMT else None)
        return i

    def say(self, s: str, c: dict | None = None) -> None:
        if c is not None:
            s = s.format_map(c)
        if not self.text.startswith(s, self.pos):
            raise Mismatch
        self.pos += len(s)

    def line(self, s: str, c: dict | None = None) -> None:
        if not self.bol:
            self.say(" ")
        self.bol = False
        self.say(s, c)

    def para(self) -> None:
        self.say("\n")
        self.bol = True
