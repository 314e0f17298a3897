"""Exercises of lesson 01, tokenization: from the bytes of a string to a trained BPE."""

from __future__ import annotations

import functools
import random

import regex

from ..tokenizer import GPT2_PATTERN, apply_merges, merge_word, train_merges_naive
from . import Case, Task, register

_WORDS = (
    "the a of and to in is you that it he was for on are as with his they I at be this have "
    "from or one had by word but not what all were we when your can said there use an each "
    "which she do how their if will up other about out many then them these so some her "
    "would make like him into time has look two more write go see number no way could people"
).split()
_EXOTIC = ["é", "ü", "ß", "中", "文", "日本", "😀", "🚀", "é", "\u0301", "ñ", "Ω", "👩‍💻", "\t", "\n", "  "]


def _texts(seed: int, n: int, max_words: int = 12) -> list[str]:
    """Fixed-seed sentences mixing English words, punctuation and non-ASCII characters."""
    rng = random.Random(seed)
    edge = ["", "a", "aaaa", "abab", "aaabdaaabac", "hello world", "héllo wörld", "中文 text", "😀😀😀", " \n\t "]
    out = list(edge)
    for _ in range(n - len(edge)):
        parts = []
        for _ in range(rng.randint(1, max_words)):
            r = rng.random()
            if r < 0.75:
                parts.append(rng.choice(_WORDS))
            elif r < 0.9:
                parts.append(rng.choice(_EXOTIC))
            else:
                parts.append(rng.choice([",", ".", "!", "?", "'s", "42", "2024"]))
        out.append(" ".join(parts))
    return out


def _utf8_bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def _pair_counts(ids: list[int]) -> dict[tuple[int, int], int]:
    counts: dict[tuple[int, int], int] = {}
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def _merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    return list(merge_word(tuple(ids), tuple(pair), new_id))


def _train_bpe(text: str, num_merges: int) -> list[tuple[int, int, int]]:
    return train_merges_naive([text.encode("utf-8")], num_merges, reuse_existing=False)


def _build_vocab(merges: list[tuple[int, int, int]]) -> dict[int, bytes]:
    vocab = {i: bytes([i]) for i in range(256)}
    for a, b, new in merges:
        vocab[new] = vocab[a] + vocab[b]
    return vocab


def _encode(text: str, merges: list[tuple[int, int, int]]) -> list[int]:
    return apply_merges(list(text.encode("utf-8")), merges)


def _decode(ids: list[int], vocab: dict[int, bytes]) -> str:
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")


def _chunk_counts(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for chunk in regex.findall(GPT2_PATTERN, text):
        counts[chunk] = counts.get(chunk, 0) + 1
    return counts


@functools.cache
def _training_texts() -> list[str]:
    rng = random.Random(7)
    base = _texts(11, 40, max_words=40)
    return [" ".join(rng.sample(base, 3)) for _ in range(10)] + ["aaaaaaaaaa", "abababab", "😀😀😀 😀😀"]


def _cases_bytes():
    return [Case((t,)) for t in _texts(1, 40)]


def _cases_pairs():
    rng = random.Random(2)
    cases = [Case(([],)), Case(([5],)), Case(([1, 1, 1],)), Case(([1, 2, 1, 2],))]
    cases += [Case((list(t.encode()),)) for t in _texts(3, 20)]
    cases += [Case(([rng.randrange(6) for _ in range(rng.randint(2, 40))],)) for _ in range(16)]
    return cases


def _cases_merge():
    rng = random.Random(4)
    cases = [
        Case(([1, 2, 3, 1, 2], (1, 2), 256), label="two occurrences"),
        Case(([1, 1, 1], (1, 1), 256), label="overlapping pair: merge left to right"),
        Case(([1, 1, 1, 1], (1, 1), 300), label="overlapping pair"),
        Case(([], (1, 2), 256), label="empty"),
        Case(([1], (1, 2), 256), label="single id"),
        Case(([2, 1], (1, 2), 256), label="pair in the wrong order"),
    ]
    for _ in range(30):
        ids = [rng.randrange(4) for _ in range(rng.randint(0, 30))]
        pair = (rng.randrange(4), rng.randrange(4))
        cases.append(Case((ids, pair, 256 + rng.randrange(100))))
    return cases


def _cases_train():
    small = [
        Case(("abcd", 1), label="a tie: every pair occurs once, the smallest pair (97, 98) wins"),
        Case(("zyzy abab", 1), label="a tie between (122, 121) and (97, 98): the smaller pair wins, "
                                     "not the one seen first"),
        Case(("aaabdaaabac", 3), label="later merges use the new ids"),
        Case(("aaaa", 2), label="repeated letters: overlapping pairs"),
        Case(("ab", 5), label="fewer pairs than merges: stop when no pair is left"),
        Case(("", 2), label="empty text"),
    ]
    texts = _training_texts()
    return small + [Case((t, n)) for t in texts for n in (0, 1, 5, 20)][:40]


def _merge_lists(expected: list[tuple[int, int, int]], got) -> str | None:
    """Merges compared one by one: the message names the first that differs."""
    if not isinstance(got, (list, tuple)):
        return f"expected a list of (a, b, new_id) merges, got {type(got).__name__}"
    for i, (e, g) in enumerate(zip(expected, got)):
        if not isinstance(g, (list, tuple)) or tuple(g) != tuple(e) or any(isinstance(x, bool) for x in g):
            agree = f"; merges 0..{i - 1} agree" if i else ""
            return f"merge {i} (counting from 0) is {g!r:.60} instead of {e}{agree}"
    if len(got) != len(expected):
        return f"{len(got)} merges instead of {len(expected)} (the first {min(len(got), len(expected))} agree)"
    return None


def _merges_for(seed: int) -> list[tuple[int, int, int]]:
    texts = _training_texts()
    return _train_bpe(texts[seed % len(texts)], 10 + 5 * (seed % 4))


def _cases_vocab():
    return [Case(([],), label="no merges")] + [Case((_merges_for(s),)) for s in range(12)]


def _cases_encode():
    texts = _texts(5, 30)
    return [Case((t, _merges_for(i))) for i, t in enumerate(texts)] + [
        Case((t, _merges_for(i))) for i, t in enumerate(_training_texts())
    ]


def _cases_decode():
    rng = random.Random(6)
    cases = [
        Case(([104, 105], _build_vocab([])), label="plain ASCII"),
        Case(([0xE4], _build_vocab([])), label="a lone lead byte of a 3-byte character"),
        Case(([0x80, 104], _build_vocab([])), label="a stray continuation byte"),
        Case((list("😀".encode())[:3], _build_vocab([])), label="a truncated emoji"),
    ]
    for s in range(16):
        merges = _merges_for(s)
        vocab = _build_vocab(merges)
        ids = _encode(_texts(8, 16)[s], merges)
        cases.append(Case((ids, vocab)))
        cut = ids[: rng.randint(0, len(ids))]
        cases.append(Case((cut, vocab), label="a prefix of an encoding"))
    return cases


def _cases_chunks():
    return [Case((t,)) for t in _texts(9, 30)] + [
        Case(("I'll say it's 1234 dollars!!  ok",)),
        Case(("line one\n\nline two   \n",)),
        Case(("   leading and trailing   ",)),
    ]


for _task in [
    Task("1.1", "UTF-8 bytes of a string", _utf8_bytes, _cases_bytes,
         hint="a Python str is Unicode text; its UTF-8 encoding is a bytes object, and a bytes object is a "
              "sequence of ints 0..255"),
    Task("1.2", "count adjacent pairs", _pair_counts, _cases_pairs,
         hint="walk over each id and the one after it; a dict from the pair to how often it was seen does the "
              "counting"),
    Task("1.3", "merge a pair into a new id", _merge, _cases_merge,
         hint="scan left to right; where the pair starts, emit the new id and step over both ids, otherwise keep "
              "the id"),
    Task("1.4", "train BPE on bytes", _train_bpe, _cases_train, compare=_merge_lists,
         hint="each step: count the pairs, merge the most frequent one under the next new id (256, 257, ...); on "
              "a tie the smaller pair wins (tuples compare element by element); stop early when no pair is left"),
    Task("1.5", "vocabulary from merges", _build_vocab, _cases_vocab,
         hint="start from the 256 single bytes; a merge's token is the bytes of its two parts, one after the "
              "other"),
    Task("1.6", "encode with merges", _encode, _cases_encode,
         hint="repeatedly merge the adjacent pair that was learned earliest (lowest merge index) until no "
              "adjacent pair is a learned merge"),
    Task("1.7", "decode ids to text", _decode, _cases_decode,
         hint="join the bytes of every id first and decode once at the end (a character may span two tokens); "
              "invalid UTF-8 must become U+FFFD rather than an error"),
    Task("1.8", "pre-split and count chunks", _chunk_counts, _cases_chunks,
         hint="GPT2_PATTERN needs the third-party `regex` package (it uses \\p{L} classes the standard `re` "
              "lacks); count every chunk it finds"),
]:
    register(_task)
