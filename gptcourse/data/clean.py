"""Cleaning raw text: normalisation, quality rules and a blocklist.

Web-scale pretraining sets are mostly *filtered* text: DeepMind's Gopher (MassiveText, Rae et al.
2021, "Scaling Language Models: Methods, Analysis & Insights from Training Gopher", appendix A.1.1)
and Google's C4 (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified
Text-to-Text Transformer", section 2.2) keep a document only if it passes a handful of cheap
heuristics. This module implements them one small function each:

* :func:`normalize` -- one canonical form for every text (Unicode NFC, no control characters,
  ``\\n`` line ends, no trailing spaces, at most one blank line in a row);
* rules -- each ``rule(text, ...) -> None | reason`` returns ``None`` to keep the text or a
  short, stable reason string (the key under which :class:`~gptcourse.data.prepare.Report`
  counts it): :func:`check_length`, :func:`check_symbols`, :func:`check_word_length`,
  :func:`check_duplicate_lines`, :func:`check_top_ngrams`;
* :class:`QualityFilter` -- the thresholds in one dataclass (Gopher's values by default);
  ``QualityFilter()(text)`` names the first rule the text fails;
* :class:`Blocklist` -- drops texts that contain a listed term as a whole word, ignoring case.

Words are whitespace-separated tokens, as in Gopher. The rules measure, they do not edit: a
text is kept or dropped whole.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import validate

__all__ = [
    "DEFAULT_BLOCKLIST",
    "DEFAULT_BLOCKLIST_TERMS",
    "Blocklist",
    "QualityFilter",
    "check_duplicate_lines",
    "check_length",
    "check_symbols",
    "check_top_ngrams",
    "check_word_length",
    "normalize",
]

# --------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------

#: Characters that become a plain space: no-break, typographic and ideographic spaces.
_SPACES = "\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
#: Characters that end a line in ``str.splitlines`` besides ``\n``/``\r``: they become ``\n``.
_LINE_BREAKS = "\x0b\x0c\x1c\x1d\x1e\x85\u2028"
#: Invisible format characters that only get in the way of matching: soft hyphen, zero-width
#: space, word joiner, byte-order mark. (Zero-width (non-)joiners are kept: emoji and several
#: scripts need them.)
_INVISIBLE = "\u00ad\u200b\u2060\ufeff"


def _translation_table() -> dict[int, str | None]:
    table: dict[int, str | None] = {}
    for cp in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]:  # C0 and C1 controls
        table[cp] = None
    table[ord("\t")] = "\t"
    table[ord("\n")] = "\n"
    for ch in _LINE_BREAKS:
        table[ord(ch)] = "\n"
    table[0x2029] = "\n\n"  # paragraph separator
    for ch in _SPACES:
        table[ord(ch)] = " "
    for ch in _INVISIBLE:
        table[ord(ch)] = None
    for cp in range(0xD800, 0xE000):  # lone surrogates cannot be written as UTF-8
        table[cp] = None
    return table


_TABLE = _translation_table()
_TRAILING = re.compile(r"[ \t]+(?=\n)")
_BLANK_RUNS = re.compile(r"\n{3,}")


def normalize(text: str) -> str:
    """The canonical form of ``text`` used before filtering, deduplication and tokenizing.

    In order: ``\\r\\n`` and ``\\r`` become ``\\n``; control characters are dropped except
    ``\\n`` and ``\\t`` (vertical tab, form feed, U+2028 become ``\\n``; U+2029 a blank line),
    no-break and other typographic spaces become ``" "``, soft hyphens, zero-width spaces and
    byte-order marks are dropped; then Unicode NFC (composed characters, so ``"e" + U+0301``
    and ``"é"`` are the same text); spaces and tabs at the end of a line are removed; runs of
    blank lines become one blank line; leading and trailing whitespace is stripped.

    >>> normalize("Cafe\\u0301\\u00a0 \\r\\n\\r\\n\\r\\n\\x07ok  ")
    'Café\\n\\nok'
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize() takes a str, got {type(text).__name__}")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.translate(_TABLE)
    # NFC after the table: a dropped invisible character between a letter and its combining
    # mark ("e", U+00AD, U+0301) must not keep them from composing
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    if " \n" in text or "\t\n" in text:
        text = _TRAILING.sub("", text)
    if "\n\n\n" in text:
        text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip()


# --------------------------------------------------------------------------------------
# Quality rules: each returns None (keep) or a short reason
# --------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")
#: a whitespace-separated word with at least one letter (``[^\W\d_]``: a word character that
#: is neither a digit nor ``_``); findall counts each such word once
_ALPHA_WORD = re.compile(r"\S*[^\W\d_]\S*")


def check_length(text: str, *, min_chars: int = 0, max_chars: int | None = None,
                 min_words: int = 0, max_words: int | None = None,
                 words: list[str] | None = None) -> str | None:
    """Length limits in characters and in (whitespace-separated) words.

    Gopher keeps documents of 50 to 100,000 words: shorter ones are mostly navigation, titles
    and boilerplate; longer ones mostly machine-generated lists. Reasons: ``"too_few_chars"``,
    ``"too_many_chars"``, ``"too_few_words"``, ``"too_many_words"``. (``words``, here and in
    the other rules, may pass ``text.split()`` when the caller has it already.)
    """
    n = len(text)
    if n < min_chars:
        return "too_few_chars"
    if max_chars is not None and n > max_chars:
        return "too_many_chars"
    if min_words or max_words is not None:
        count = len(text.split() if words is None else words)
        if count < min_words:
            return "too_few_words"
        if max_words is not None and count > max_words:
            return "too_many_words"
    return None


def check_symbols(text: str, *, max_symbol_ratio: float = 0.1,
                  min_alpha_fraction: float = 0.8, words: list[str] | None = None) -> str | None:
    """Too many symbols for the words: lists of hashtags, ellipses, numbers or markup.

    Gopher: the ratio of ``#`` and ellipsis (``...`` or ``…``) occurrences to words must be at
    most 0.1 (reason ``"symbol_ratio"``), and at least 80% of the words must contain an
    alphabetic character (reason ``"non_alphabetic"``). A text without words passes (the length
    rule is the one that handles empty or blank texts).
    """
    n = len(text.split() if words is None else words)
    if not n:
        return None
    symbols = text.count("#") + text.count("...") + text.count("…")
    if symbols / n > max_symbol_ratio:
        return "symbol_ratio"
    if min_alpha_fraction > 0 and len(_ALPHA_WORD.findall(text)) / n < min_alpha_fraction:
        return "non_alphabetic"
    return None


def check_word_length(text: str, *, min_mean: float = 3.0, max_mean: float = 10.0,
                      words: list[str] | None = None) -> str | None:
    """Gopher: the mean word length (characters, whitespace-separated words) must lie in
    [3, 10]. Outside it, the text is usually gibberish, a URL dump or a table of numbers.
    Reason ``"word_length"``. A text without words passes."""
    words = text.split() if words is None else words
    if not words:
        return None
    mean = sum(map(len, words)) / len(words)
    if not min_mean <= mean <= max_mean:
        return "word_length"
    return None


def check_duplicate_lines(text: str, *, max_line_fraction: float = 0.3,
                          max_char_fraction: float = 0.2) -> str | None:
    """Gopher's repetition rule for lines: among the non-empty lines, those that repeat an
    earlier line may make up at most 30% of the lines and at most 20% of the characters
    (of all non-empty lines). Reason ``"duplicate_lines"``."""
    lines = [ln.strip() for ln in text.split("\n")]
    lines = [ln for ln in lines if ln]
    if len(lines) < 2:
        return None
    seen: set[str] = set()
    dup_lines = dup_chars = 0
    for ln in lines:
        if ln in seen:
            dup_lines += 1
            dup_chars += len(ln)
        else:
            seen.add(ln)
    total_chars = sum(len(ln) for ln in lines)
    if dup_lines / len(lines) > max_line_fraction or dup_chars / total_chars > max_char_fraction:
        return "duplicate_lines"
    return None


#: Gopher's limits on the fraction of characters covered by the most frequent 2-, 3- and
#: 4-gram of words.
GOPHER_TOP_NGRAM = ((2, 0.20), (3, 0.18), (4, 0.16))


def check_top_ngrams(text: str, *, limits: Iterable[tuple[int, float]] = GOPHER_TOP_NGRAM
                     ) -> str | None:
    """Gopher's repetition rule for word n-grams: for each ``(n, limit)``, the characters
    covered by all occurrences of the most frequent n-gram may be at most ``limit`` of the
    characters of all words (Gopher: 0.20 for 2-grams, 0.18 for 3-grams, 0.16 for 4-grams).

    Words are lowercased ``\\w+`` runs (punctuation ignored); an n-gram's length is the total
    length of its words. An n-gram that occurs only once is no repetition, so a text whose
    n-grams are all distinct passes whatever its length. When several n-grams share the top
    count, the longest of them counts. Reason ``"repeated_ngram"``.
    """
    words = _WORD.findall(text.lower())
    total = sum(len(w) for w in words)
    if total == 0:
        return None
    for n, limit in limits:
        if len(words) < 2 * n:  # an n-gram needs two occurrences to be a repetition
            continue
        counts = Counter(zip(*(words[i:] for i in range(n))))
        count = max(counts.values())
        # of the n-grams that share the top count, the one covering most characters
        # (so the decision does not depend on which of them came first)
        chars = max(sum(len(w) for w in g) for g, c in counts.items() if c == count)
        if count > 1 and count * chars / total > limit:
            return "repeated_ngram"
    return None


@dataclass(frozen=True)
class QualityFilter:
    """Document quality thresholds; ``QualityFilter()(text)`` is ``None`` or the first failing
    rule's reason.

    The defaults are Gopher's (Rae et al. 2021, appendix A.1.1), tuned for *web pages*: 50 to
    100,000 words, mean word length 3-10, at most one ``#``/ellipsis per 10 words, at least 80%
    of words with a letter, at most 30% duplicate lines (20% of characters), and the top
    2/3/4-gram covering at most 20/18/16% of the characters. ``max_chars`` (1,000,000) is a
    safety limit of ours. Set a threshold to ``None`` (or ``0`` for minimums) to switch a rule
    off. For corpora of short curated documents (a play split by paragraph, one message per
    line) use :meth:`short_documents`.

    >>> QualityFilter()("too short")
    'too_few_words'
    """

    min_chars: int = 1
    max_chars: int | None = 1_000_000
    min_words: int = 50
    max_words: int | None = 100_000
    min_mean_word_length: float | None = 3.0
    max_mean_word_length: float | None = 10.0
    max_symbol_ratio: float | None = 0.1
    min_alpha_fraction: float | None = 0.8
    max_duplicate_line_fraction: float | None = 0.3
    max_duplicate_line_char_fraction: float | None = 0.2
    top_ngram_limits: tuple[tuple[int, float], ...] | None = GOPHER_TOP_NGRAM
    #: the repetition rules (duplicate lines, top n-grams) only judge texts with at least
    #: this many words: on a two-line text one repeat is already 50%.
    repetition_min_words: int = 0

    def __post_init__(self) -> None:
        for name in ("min_chars", "min_words", "repetition_min_words"):
            validate.integer(name, getattr(self, name), min=0)
        for lo, hi in (("min_chars", "max_chars"), ("min_words", "max_words"),
                       ("min_mean_word_length", "max_mean_word_length")):
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and a > b:
                raise ValueError(f"{lo}={a} is larger than {hi}={b}")
        if self.max_symbol_ratio is not None and not self.max_symbol_ratio >= 0:
            raise ValueError(f"max_symbol_ratio must be >= 0 or None, got {self.max_symbol_ratio!r}")
        for name in ("min_alpha_fraction", "max_duplicate_line_fraction",
                     "max_duplicate_line_char_fraction"):
            v = getattr(self, name)
            if v is not None and not 0 <= v <= 1:
                raise ValueError(f"{name} must be a fraction in [0, 1] or None, got {v!r}")
        if self.top_ngram_limits is not None:
            limits = tuple((int(n), float(f)) for n, f in self.top_ngram_limits)
            if any(n < 1 or not 0 <= f <= 1 for n, f in limits):
                raise ValueError("top_ngram_limits must be (n >= 1, fraction in [0, 1]) pairs, "
                                 f"got {self.top_ngram_limits!r}")
            object.__setattr__(self, "top_ngram_limits", limits)

    @classmethod
    def short_documents(cls, **overrides) -> QualityFilter:
        """Thresholds for curated corpora of short documents: any length from one word, and
        the repetition rules only for texts of 50 words or more; the symbol and word-length
        rules as in Gopher. Keyword arguments override single thresholds."""
        values = {"min_words": 1, "repetition_min_words": 50, **overrides}
        return cls(**values)

    def rules(self) -> list[str]:
        """Reasons this filter can return, in the order the rules run."""
        out = ["too_few_chars", "too_many_chars", "too_few_words", "too_many_words"]
        if self.min_mean_word_length is not None or self.max_mean_word_length is not None:
            out.append("word_length")
        if self.max_symbol_ratio is not None:
            out.append("symbol_ratio")
        if self.min_alpha_fraction is not None:
            out.append("non_alphabetic")
        if (self.max_duplicate_line_fraction is not None
                or self.max_duplicate_line_char_fraction is not None):
            out.append("duplicate_lines")
        if self.top_ngram_limits:
            out.append("repeated_ngram")
        return out

    def to_dict(self) -> dict:
        """The thresholds as plain JSON values (for the metadata of a prepared dataset)."""
        d = asdict(self)
        if d["top_ngram_limits"] is not None:
            d["top_ngram_limits"] = [list(p) for p in d["top_ngram_limits"]]
        return d

    def __call__(self, text: str) -> str | None:
        if self.max_chars is not None and len(text) > self.max_chars:
            return "too_many_chars"  # before splitting a huge text into words
        words = text.split()
        reason = check_length(text, min_chars=self.min_chars, max_chars=self.max_chars,
                              min_words=self.min_words, max_words=self.max_words, words=words)
        if reason:
            return reason
        if self.min_mean_word_length is not None or self.max_mean_word_length is not None:
            reason = check_word_length(
                text,
                min_mean=self.min_mean_word_length if self.min_mean_word_length is not None else 0,
                max_mean=self.max_mean_word_length if self.max_mean_word_length is not None
                else float("inf"),
                words=words,
            )
            if reason:
                return reason
        if self.max_symbol_ratio is not None or self.min_alpha_fraction is not None:
            reason = check_symbols(
                text,
                max_symbol_ratio=self.max_symbol_ratio if self.max_symbol_ratio is not None
                else float("inf"),
                min_alpha_fraction=self.min_alpha_fraction or 0.0,
                words=words,
            )
            if reason:
                return reason
        if self.repetition_min_words and len(words) < self.repetition_min_words:
            return None
        if (self.max_duplicate_line_fraction is not None
                or self.max_duplicate_line_char_fraction is not None):
            reason = check_duplicate_lines(
                text,
                max_line_fraction=self.max_duplicate_line_fraction
                if self.max_duplicate_line_fraction is not None else 1.0,
                max_char_fraction=self.max_duplicate_line_char_fraction
                if self.max_duplicate_line_char_fraction is not None else 1.0,
            )
            if reason:
                return reason
        if self.top_ngram_limits:
            return check_top_ngrams(text, limits=self.top_ngram_limits)
        return None


# --------------------------------------------------------------------------------------
# Blocklist
# --------------------------------------------------------------------------------------

#: A short placeholder list of common English profanities, enough to show the mechanism.
#: Real pipelines use long curated lists (C4 used the "List of Dirty, Naughty, Obscene, and
#: Otherwise Bad Words"); pass your own terms or file to :class:`Blocklist`.
DEFAULT_BLOCKLIST_TERMS: tuple[str, ...] = (
    "asshole", "bullshit", "crap", "dickhead", "fuck", "fucked", "fucking", "motherfucker",
    "shit", "shitty", "wanker",
)


def _whole_words(terms: Iterable[str]) -> re.Pattern[str]:
    """One regex matching any of ``terms`` as whole words, ignoring case; the spaces of a
    phrase match any run of whitespace."""
    alternatives = "|".join(r"\s+".join(re.escape(w) for w in t.split()) for t in terms)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


class Blocklist:
    """Drop texts containing any listed term as a whole word (or phrase), ignoring case.

    Matching uses word boundaries, so the term ``"ass"`` hits "ass" and "Ass!" but not
    "class" or "assess" (C4 dropped every page with a listed word; the boundaries are what
    keeps "Scunthorpe" and "class" safe). Terms may be phrases ("bad word"); the spaces in a
    phrase match any run of whitespace. Calling the blocklist returns ``"blocklist"`` when
    the text contains a term, else ``None``, like the quality rules.

    >>> Blocklist(["ass"])("A first-class answer.") is None
    True
    """

    def __init__(self, terms: Iterable[str]) -> None:
        if isinstance(terms, str):
            raise TypeError("Blocklist takes a collection of terms, not one string; "
                            "for a file use Blocklist.from_file(path)")
        clean = []
        for t in terms:
            if not isinstance(t, str):
                raise TypeError(f"blocklist terms must be strings, got {t!r}")
            t = " ".join(t.split()).lower()
            if t:
                clean.append(t)
        self.terms: tuple[str, ...] = tuple(sorted(set(clean), key=lambda s: (-len(s), s)))
        # single words made of word characters are looked up in a set of the text's words
        # (fast); phrases and terms with other characters go through one regular expression
        self._words = frozenset(t for t in self.terms if _WORD.fullmatch(t))
        others = [t for t in self.terms if t not in self._words]
        self._regex = _whole_words(others) if others else None
        self._find = _whole_words(self.terms) if self.terms else None

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Blocklist:
        """Terms from a UTF-8 text file, one per line; blank lines and ``#`` comments skipped."""
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise FileNotFoundError(f"blocklist file {path} does not exist") from None
        return cls(ln.split("#", 1)[0].strip() for ln in lines)

    @classmethod
    def coerce(cls, value: Blocklist | Iterable[str] | str | os.PathLike | None
               ) -> Blocklist | None:
        """A Blocklist from ``None`` (none), ``"default"``, a path to a file, or terms."""
        if value is None or isinstance(value, Blocklist):
            return value
        if isinstance(value, str) and value == "default":
            return DEFAULT_BLOCKLIST
        if isinstance(value, (str, os.PathLike)):
            return cls.from_file(value)
        return cls(value)

    def find(self, text: str) -> list[str]:
        """The listed terms found in ``text`` (as they appear in it), in order."""
        return [text[a:b] for a, b in self.spans(text)]

    def spans(self, text: str) -> list[tuple[int, int]]:
        """The ``(start, end)`` character spans of the listed terms in ``text``, in order."""
        return [m.span() for m in self._find.finditer(text)] if self._find else []

    def __call__(self, text: str) -> str | None:
        if self._words and not self._words.isdisjoint(_WORD.findall(text.lower())):
            return "blocklist"
        if self._regex is not None and self._regex.search(text):
            return "blocklist"
        return None

    def __len__(self) -> int:
        return len(self.terms)

    def __repr__(self) -> str:
        return f"Blocklist({len(self.terms)} terms)"


#: The default blocklist (:data:`DEFAULT_BLOCKLIST_TERMS`).
DEFAULT_BLOCKLIST = Blocklist(DEFAULT_BLOCKLIST_TERMS)
