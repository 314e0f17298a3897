"""``stories``: a built-in corpus of tiny children's stories with a known entropy.

A seeded probabilistic grammar, written here as Python data and code, writes simple English
stories: a hero (a child or an animal, always named, with pronouns that agree), a home,
something the hero likes, then one of six small plots -- a lost toy, a goal with an obstacle,
helping a sad stranger, sharing food, a fear overcome, a day out -- each told with a few
sentence forms per step, a helper (family, a friend, Mr. Owl, ...) and an ending. Every story
ends with ``The end.``. Nothing is downloaded: ``text(n, seed)`` makes any number of stories,
the same ones for the same seed, several megabytes per second.

    >>> from gptcourse import stories
    >>> s = stories.generate(1)[0]
    >>> s.text[:43]
    'Jack was a small rabbit. Jack lived in a co'
    >>> abs(stories.logprob(s.text) - s.logprob) < 1e-9, stories.logprob(s.text + "!")
    (True, -inf)

**The probability of a text is exact.** A story is written by one program, :func:`gptcourse.stories_grammar.story`,
that calls a *chooser* at every choice point with a table of options and their probabilities
(options are sentence forms, names, objects, ...; several are skewed, so some stories are far
likelier than others). Every option writes its text at once, left to right; what follows a
choice may depend on it (the hero's name is repeated, pronouns follow the hero's gender, the toy
that is found is the toy that was lost): those parts are *rendered from the choices already
made*, not chosen, so they have probability 1 given the earlier choices and add nothing to the
log-probability. Two choosers run the same program:

* the *writer* (generation) draws each option with ``random.Random(seed)`` and adds the log of
  its probability: the result is the log-probability of that *derivation* (the sequence of
  choices);
* the *reader* (:func:`logprob`) is given a text and follows, at every choice point, each
  option whose text matches the text at the current position, depth-first (an option that
  writes nothing, such as "which plot", is followed too, and fails as soon as its words
  differ). It returns ``log`` of the **sum over every derivation that writes exactly the text**
  -- ``P(text)`` by definition, whatever the grammar -- and ``-inf`` when there is none.

The grammar is also *unambiguous*: the options of every choice point write different words
before the story moves on (no two sentence forms, names or places render alike, and an optional
sentence never looks like what follows it), so a text has one derivation and the writer's
log-probability **is** ``log P(text)``. The tests check this on hundreds of stories (the reader
finds exactly one derivation, whose log-probability equals the writer's to 1e-9), and enumerate
every ending of a story's last choices: the texts are all different and their probabilities sum
to the probability of the shared beginning (so every choice point is a distribution).

**Entropy.** With exact ``log P`` per story, the corpus's entropy is a Monte-Carlo mean:
``entropy()`` gives nats per story and nats per character (characters counted with one
``SEPARATOR`` per story, as in :func:`text`). Because every story ends with ``The end.`` (which
occurs nowhere else), the separator or end-of-text token after it is certain: it adds no entropy,
only characters or tokens. Per token, for a tokenizer, the floor is total nats over total
tokens (each story encoded alone, plus one end-of-text token or the separator's tokens):
:func:`floor_per_token`. No model can have a lower expected loss on these stories (up to
the Monte-Carlo error of the estimate, ``stderr_nats_per_char``): that is the line the lessons
draw under every loss curve. The floor assumes the model reads each story from its beginning; a
context window that starts mid-story hides the hero's name and the plot so far, and the best
achievable loss is then higher (a story is about 150 GPT-2 tokens).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

from . import validate
from .stories_engine import SLOT, TABLES, Mismatch, Reader, Writer
from .stories_engine import T as T  # re-exported: gptcourse.stories.T makes a table, as before
from .stories_grammar import *  # noqa: F403 -- the choice tables (NAMES, TOY, ...), as before
from .stories_grammar import (
    ACTIVITY,
    FOOD,
    HELPER,
    HOMES,
    NAMES,
    NAMES_F,
    NAMES_M,
    PLOTS,
    PRONOUNS,
    story,
)

__all__ = [
    # the grammar's choice tables that lessons read for true probabilities
    "ACTIVITY",
    "HOMES",
    "NAMES",
    "NAMES_F",
    "NAMES_M",
    "DEFAULT_STORIES",
    "SEPARATOR",
    "Entropy",
    "Story",
    "derivations",
    "describe",
    "entropy",
    "floor_per_token",
    "generate",
    "iter_stories",
    "logprob",
    "text",
]

SEPARATOR = "\n\n"
DEFAULT_STORIES = 10_000  # about 5.6 MB of text


@dataclass(frozen=True)
class Story:
    """One story and the natural log of its probability under the grammar."""

    text: str
    logprob: float


def _write(rng: random.Random) -> Story:
    w = Writer(rng)
    story(w)
    return Story("".join(w.out), w.lp)


def iter_stories(seed: int = 0) -> Iterator[Story]:
    """An endless, reproducible stream of stories (``random.Random(seed)``, no global state)."""
    rng = random.Random(seed)
    while True:
        yield _write(rng)


def generate(n: int, seed: int = 0) -> list[Story]:
    """The first ``n`` stories of ``iter_stories(seed)``."""
    n = validate.integer("n", n, min=0)
    rng = random.Random(seed)
    return [_write(rng) for _ in range(n)]


def derivations(text: str) -> list[float]:
    """Log-probabilities of every derivation (sequence of choices) that writes exactly ``text``.

    Depth-first: the program is replayed with the reader, which forks wherever several options
    match the text. The grammar is unambiguous, so a story has exactly one derivation; a text
    the grammar cannot write has none.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    found: list[float] = []
    todo: list[list[int]] = [[]]
    while todo:
        r = Reader(text, todo.pop())
        try:
            story(r)
            if r.pos == len(text):
                found.append(r.lp)
        except Mismatch:
            pass
        todo.extend(r.forks)
    return found


def logprob(text: str) -> float:
    """Natural log of the probability that the grammar writes ``text``; ``-inf`` if it cannot.

    Computed by parsing (independently of generation): the log of the sum over all derivations.
    ``text`` is one story, without the separator.
    """
    lps = derivations(text)
    if not lps:
        return -math.inf
    if len(lps) == 1:
        return lps[0]
    top = max(lps)
    return top + math.log(math.fsum(math.exp(lp - top) for lp in lps))


@lru_cache(maxsize=4)
def text(n: int = DEFAULT_STORIES, seed: int = 0) -> str:
    """``n`` stories joined by ``SEPARATOR``, ending with it too (cached: the same string)."""
    return "".join(s.text + SEPARATOR for s in generate(n, seed))


@dataclass(frozen=True)
class Entropy:
    """Monte-Carlo entropy of the story distribution.

    ``nats`` is the total of ``-logprob`` over ``stories`` stories with ``characters``
    characters (one ``SEPARATOR`` per story included). ``nats_per_char`` is the ratio of the
    two totals (the entropy rate of a long corpus), ``stderr_nats_per_char`` its standard error
    (delta method over stories).
    """

    stories: int
    characters: int
    nats: float
    nats_per_char: float
    nats_per_story: float
    stderr_nats_per_char: float

    def per_token(self, tokens: int) -> float:
        """Nats per token when these stories take ``tokens`` tokens in all."""
        if tokens <= 0:
            raise ValueError(f"tokens must be positive, got {tokens}")
        return self.nats / tokens


def entropy(stories: Sequence[Story] | None = None, n: int = 20_000, seed: int = 12345) -> Entropy:
    """Estimate the entropy from ``stories`` (default: ``generate(n, seed)``)."""
    if stories is None:
        stories = generate(n, seed)
    m = len(stories)
    if m == 0:
        raise ValueError("entropy needs at least one story")
    nats = [-s.logprob for s in stories]
    chars = [len(s.text) + len(SEPARATOR) for s in stories]
    total_nats, total_chars = math.fsum(nats), sum(chars)
    rate = total_nats / total_chars
    if m > 1:
        resid = [x - rate * k for x, k in zip(nats, chars)]
        var = math.fsum(r * r for r in resid) / (m - 1)
        stderr = math.sqrt(var / m) / (total_chars / m)
    else:
        stderr = math.nan
    return Entropy(m, total_chars, total_nats, rate, total_nats / m, stderr)


def floor_per_token(stories: Sequence[Story], tokenizer) -> float:
    """The lowest possible loss, in nats per token, on ``stories`` encoded by ``tokenizer``.

    Total nats over total tokens, each story encoded on its own and followed by one
    end-of-text token (``tokenizer.eot_id``) or, when the tokenizer has none, by the tokens of
    ``SEPARATOR``. The end-of-text is certain after ``The end.``: it costs no nats.
    """
    if not stories:
        raise ValueError("floor_per_token needs at least one story")
    sep = 1 if tokenizer.eot_id is not None else len(tokenizer.encode(SEPARATOR))
    tokens = sum(len(tokenizer.encode(s.text)) + sep for s in stories)
    return math.fsum(-s.logprob for s in stories) / tokens


def describe() -> dict:
    """Size of the grammar: choice tables, options, and the words any story can use."""
    rendered = [d for t in (FOOD, HELPER) for d in t.data if d is not None]  # data shown as text
    phrases = [s for t in TABLES for s in t.texts] + [s for d in rendered for s in d]
    phrases += [w for p in PRONOUNS.values() for w in p.values()]
    words: set[str] = set()
    for s in phrases:
        s = SLOT.sub(" ", re.sub(r"\{\w+\}", " ", s))
        words.update(w.lower() for w in re.findall(r"[A-Za-z]+", s))
    return {
        "choice_tables": len(TABLES),
        "options": sum(len(t) for t in TABLES),
        "plots": len(PLOTS),
        "vocabulary": len(words),
        "words": sorted(words),
    }
