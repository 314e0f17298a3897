"""Exercises of lesson 06, the data pipeline: normalisation, Gopher's quality rules, exact
deduplication, shingles and Jaccard similarity, a MinHash signature, LSH candidate pairs, and
tokenizing documents into shards."""

from __future__ import annotations

import math
import random
import tempfile
from pathlib import Path

import numpy as np

from ..data.clean import (
    check_duplicate_lines,
    check_symbols,
    check_top_ngrams,
    check_word_length,
    normalize,
)
from ..data.dedup import LSH, MinHash, exact_duplicates, jaccard
from ..tokenizer import CharTokenizer, Tokenizer
from . import Case, Task, register

# -- references: the library's functions ---------------------------------------------------------


def _normalize(text: str) -> str:
    return normalize(text)


def _symbol_rules(text: str) -> str | None:
    # QualityFilter's order: mean word length, then the symbol ratio and the alphabetic words
    return check_word_length(text) or check_symbols(text)


def _repetition_rules(text: str) -> str | None:
    return check_duplicate_lines(text) or check_top_ngrams(text)


def _exact_duplicates(texts: list[str]) -> list[int]:
    return exact_duplicates(texts)


def _shingle_jaccard(a: str, b: str, ngram: int) -> float:
    mh = MinHash(num_perm=1, ngram=ngram)  # shingles are 64-bit hashes of the word n-grams
    return jaccard(mh.shingles(a), mh.shingles(b))


def _minhash_signature(text: str, mh: MinHash) -> np.ndarray:
    return mh.signature(text)


def _candidate_pairs(signatures: np.ndarray, bands: int, rows: int) -> list[tuple[int, int]]:
    return [tuple(p) for p in LSH(bands, rows).candidate_pairs(signatures).tolist()]


def _shard_stream(texts: list[str], tokenizer: Tokenizer, shard_tokens: int) -> list[np.ndarray]:
    # what `gptcourse prepare` writes for these documents (no validation split), read back
    from datasets import Dataset

    from ..data.prepare import tokenize_to_shards

    with tempfile.TemporaryDirectory(prefix="gptcourse-6.8-") as tmp:
        meta = tokenize_to_shards(Dataset.from_dict({"text": list(texts)}), tokenizer, tmp,
                                  val_fraction=0.0, shard_tokens=shard_tokens, num_proc=1,
                                  progress=False)
        shards = meta["splits"].get("train", {"shards": []})["shards"]
        return [np.fromfile(Path(tmp) / s["file"], dtype=meta["dtype"]) for s in shards]


class _WideTokenizer(Tokenizer):
    """A toy tokenizer with a chosen vocabulary size and end-of-text id: one id per UTF-8 byte
    (``byte + 1000``), enough to see which dtype a vocabulary needs."""

    def __init__(self, vocab_size: int) -> None:
        self.name = f"wide-{vocab_size}"
        self._vocab_size = vocab_size

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eot_id(self) -> int:
        return self._vocab_size - 1

    def encode_ordinary(self, text: str) -> list[int]:
        return [b + 1000 for b in text.encode("utf-8")]

    def encode(self, text: str, allowed_special=()) -> list[int]:
        return self.encode_ordinary(text)

    def decode(self, ids) -> str:
        return bytes(i - 1000 for i in ids if 1000 <= i < 1256).decode("utf-8", "replace")


# -- comparisons ---------------------------------------------------------------------------------


def _char(c: str) -> str:
    return f"{c!r} (U+{ord(c):04X})" if c else "nothing (the text ends)"


def _text(expected: str, got) -> str | None:
    if not isinstance(got, str):
        return f"expected a str, got {type(got).__name__}"
    if got == expected:
        return None
    k = next((i for i, (e, g) in enumerate(zip(expected, got)) if e != g), min(len(expected), len(got)))
    return f"first difference at index {k}: expected {_char(expected[k:k + 1])} there, got {_char(got[k:k + 1])}"


def _reason(expected, got) -> str | None:
    if got is not None and not isinstance(got, str):
        return f"expected None or a reason string, got {type(got).__name__} {got!r}"
    if got == expected:
        return None
    if expected is None:
        return f"the text should be kept (None), you dropped it as {got!r}"
    if got is None:
        return f"the text should be dropped as {expected!r}, you kept it"
    return f"reason {got!r} instead of {expected!r} (the rules run in the stated order)"


def _indices(expected: list[int], got) -> str | None:
    if isinstance(got, np.ndarray):
        got = got.tolist()
    if not isinstance(got, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool)
                                                     for i in got):
        return f"expected a list of ints, got {type(got).__name__} {got!r}"
    if list(got) == expected:
        return None
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if not missing and not extra:
        return "the right indices in the wrong order or repeated (ascending, each once)"
    return "; ".join(part for part in (f"missing {missing}" if missing else "",
                                       f"unexpected {extra}" if extra else "") if part)


def _fraction(expected: float, got) -> str | None:
    if isinstance(got, np.generic):
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        return f"expected a float, got {type(got).__name__}"
    if not math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12):
        return f"{got!r} instead of {expected!r}"
    return None


def _signature(expected: np.ndarray, got) -> str | None:
    if isinstance(got, (list, tuple)):
        try:
            got = np.array([int(v) for v in got], dtype=object)
        except (TypeError, ValueError):
            return "expected a list or array of ints"
    if not isinstance(got, np.ndarray):
        return f"expected a numpy array (or list) of ints, got {type(got).__name__}"
    if got.shape != expected.shape:
        return f"shape {got.shape} instead of {expected.shape} (one entry per permutation)"
    if got.dtype.kind == "f":
        return f"got floats (dtype {got.dtype}): 61-bit values need integers (uint64 or Python int)"
    e, g = [int(v) for v in expected], [int(v) for v in got]
    if e == g:
        return None
    k = next(i for i, (a, b) in enumerate(zip(e, g)) if a != b)
    n_bad = sum(a != b for a, b in zip(e, g))
    why = f"{n_bad} of {len(e)} entries differ; first at [{k}]: {g[k]} instead of {e[k]}"
    p = 2**61 - 1
    if all(v == p for v in e):
        why += " (the text has no shingles: every entry is p = 2**61 - 1)"
    elif g[k] >= p:
        why += " (a value >= p: reduce mod p = 2**61 - 1)"
    elif got.dtype == np.uint64 and n_bad > len(e) // 2:
        why += " (numpy uint64 products wrap around at 2**64 without a warning: compute a * x + b with Python ints)"
    return why


def _pairs(expected: list[tuple[int, int]], got) -> str | None:
    if isinstance(got, np.ndarray):
        got = got.tolist()
    if not isinstance(got, (list, tuple)):
        return f"expected a list of (i, j) pairs, got {type(got).__name__}"
    try:
        g = [(int(i), int(j)) for i, j in got]
    except (TypeError, ValueError):
        return "expected a list of (i, j) pairs of ints"
    if g == expected:
        return None
    missing = sorted(set(expected) - set(g))
    extra = sorted(set(g) - set(expected))
    if not missing and not extra:
        return "the right pairs, but sort them (i < j, ascending) and list each once"
    show = lambda ps: f"{ps[:8]}{' ...' if len(ps) > 8 else ''}"  # noqa: E731
    return "; ".join(part for part in (f"missing {len(missing)} pair(s): {show(missing)}" if missing else "",
                                       f"{len(extra)} unexpected pair(s): {show(extra)}" if extra else "") if part)


def _shards(expected: list[np.ndarray], got) -> str | None:
    if not isinstance(got, (list, tuple)):
        return f"expected a list of numpy arrays (one per shard), got {type(got).__name__}"
    for k, g in enumerate(got):
        if not isinstance(g, np.ndarray) or g.ndim != 1:
            return f"shard {k} is a {type(g).__name__}: return 1-D numpy arrays (with the dtype on disk)"
    dtype = expected[0].dtype if expected else None
    for k, g in enumerate(got):
        if dtype is not None and g.dtype != dtype:
            return (f"shard {k} has dtype {g.dtype} instead of {dtype} (uint16 when vocab_size <= 65,535, "
                    "else uint32)")
    e_all = np.concatenate(expected).astype(np.int64) if expected else np.zeros(0, dtype=np.int64)
    g_all = np.concatenate(got).astype(np.int64) if len(got) else np.zeros(0, dtype=np.int64)
    if g_all.size != e_all.size or not np.array_equal(g_all, e_all):
        if (e_all.size and g_all.size == e_all.size and np.array_equal(g_all[:-1], e_all[1:])
                and g_all[-1] == e_all[0]):
            return "the end-of-text id comes AFTER each document in your stream; it goes BEFORE each one"
        why = (f"{g_all.size} tokens in all instead of {e_all.size}" if g_all.size != e_all.size
               else f"{e_all.size} tokens as expected")
        n = min(g_all.size, e_all.size)
        diff = np.flatnonzero(g_all[:n] != e_all[:n])
        if diff.size:
            k = int(diff[0])
            lo = max(0, k - 3)
            why += (f"; the streams first differ at token {k}: expected ...{e_all[lo:k + 4].tolist()}..., "
                    f"got ...{g_all[lo:k + 4].tolist()}...")
        return why
    if len(got) != len(expected):
        return (f"{len(got)} shards of sizes {[len(g) for g in got]} instead of {len(expected)} "
                f"of sizes {[len(e) for e in expected]}")
    for k, (e, g) in enumerate(zip(expected, got)):
        if len(g) != len(e):
            return f"shard {k} holds {len(g)} tokens instead of {len(e)}"
    return None


# -- cases ---------------------------------------------------------------------------------------

_WORDS = ["the", "cat", "Sat", "on", "a", "warm", "mat", "and", "dreamed", "of", "FISH", "naïve",
          "café", "über", "Ωmega", "x", "don't", "co-op", "2024", "ok"]
_ODD = ["\u00a0", "\u2009", "\u3000", "\u202f", "\u2003",          # typographic spaces -> " "
        "\x07", "\x00", "\x1b", "\x7f", "\x9f", "\x01",            # controls -> dropped
        "\x0b", "\x0c", "\x85", "\u2028", "\u2029",                 # line breaks -> "\n" ("\n\n")
        "\u200b", "\u00ad", "\ufeff", "\u2060",                     # invisible -> dropped
        "e\u0301", "A\u030a", "n\u0303", "\u212b", "\u1100\u1161",  # NFC composes these
        "\U0001F469\u200d\U0001F4BB", "\u200c"]                     # joiners stay
_SPACE = [" ", " ", " ", "  ", "\t", "\n", "\n", "\n\n", "\n\n\n", "\r\n", "\r\n\r\n\r\n", "\r", " \n",
          "\t\n", "   \n  \n"]


def _cases_normalize() -> list[Case]:
    rng = random.Random(61)
    cases = [
        Case(("",), label="empty text"),
        Case(("word",), label="a single word"),
        Case(("Cafe\u0301\u00a0 \r\n\r\n\r\n\x07ok  ",), label="the docstring example"),
        Case(("Cafe\u0301 and caf\u00e9",), label="NFC: 'e' + U+0301 becomes 'é'"),
        Case(("cafe\u00ad\u0301 and nai\u200b\u0308ve",),
             label="an invisible character between a letter and its accent: the table first, then NFC"),
        Case(("a  b\tc",), label="spaces and tabs inside a line stay as they are"),
        Case(("line one   \nline two\t\t\nthree ",), label="trailing spaces and tabs of each line go"),
        Case(("a\n\n\n\n\nb\n\nc",), label="runs of blank lines become one blank line"),
        Case(("a \n \n\t\n \nb",), label="lines of only spaces are blank lines too"),
        Case(("old\rmac\r\rline ends",), label="a lone \\r is a line end"),
        Case(("x\x0cy\x0bz\u2028w\u2029v",), label="form feed, vertical tab, U+2028 -> \\n; U+2029 -> \\n\\n"),
        Case(("\ufeffBOM\u200b and soft\u00adhyphen",), label="BOM, zero-width space, soft hyphen dropped"),
        Case(("\u00a0\u3000 \n\t wide\u2003spaces \u202f",), label="Unicode spaces become ' ', then strip"),
        Case(("bell\x07 null\x00 del\x7f c1\x9f nel\x85end",), label="C0/C1 controls dropped; U+0085 is a line end"),
        Case(("\U0001F469\u200d\U0001F4BB codes",), label="zero-width joiners (emoji) stay"),
        Case((" \r\n \x07\u200b\n\u00a0",), label="nothing but whitespace and invisible characters"),
    ]
    for n in range(15):
        parts = []
        for _ in range(rng.randint(3, 30)):
            r = rng.random()
            parts.append(rng.choice(_WORDS) if r < 0.45 else rng.choice(_SPACE) if r < 0.75 else rng.choice(_ODD))
        cases.append(Case(("".join(parts),), label=f"random text {n + 1}"))
    return cases


_PLAIN = ["river", "stone", "garden", "morning", "quiet", "window", "silver", "letter", "bridge", "yellow",
          "the", "and", "of", "a", "in", "to", "it", "was", "said", "Mia"]
_LONG = ["internationalization", "https://example.com/a/very/long/path/index.html", "antidisestablishment",
         "supercalifragilistic"]
_NUMS = ["42", "3.14", "2024", "7", "-1", "100%", "12:30", "$5"]
_SYMS = ["#tag", "...", "…", "#", "wait...", "##", "--", "!!!", "|", "#1"]


def _cases_symbols() -> list[Case]:
    rng = random.Random(62)
    cases = [
        Case(("",), label="empty text: no words, kept"),
        Case(("   \n\t ",), label="only whitespace: no words, kept"),
        Case(("hello",), label="a single word"),
        Case(("I am a cat",), label="mean word length 2.25 < 3"),
        Case(("supercalifragilisticexpialidocious words",), label="mean word length > 10"),
        Case(("ab abcd",), label="mean word length exactly 3: kept (the interval is closed)"),
        Case(("abcdefghij",), label="mean word length exactly 10: kept"),
        Case(("one two three four five six seven eight nine #ten",), label="1 '#' per 10 words: not above 0.1"),
        Case(("one two three four five six seven eight nine ten... #eleven",),
             label="2 symbols per 11 words: above 0.1"),
        Case(("one two three four five six seven eight nine ten....",),
             label="'....' holds one '...' (str.count counts non-overlapping): 1 per 10 words"),
        Case(("# # # # #",), label="word_length comes first"),
        Case(("#1 #2 #3 45 678 910 x yes",), label="symbol_ratio comes before non_alphabetic"),
        Case(("those 12 33 45 777 items",), label="4 of 6 words without a letter"),
        Case(("years 1990 2000 2010 then sixteen more words follow here",),
             label="3 of 10 words without a letter: 70% < 80%"),
        Case(("1 2 alpha beta gamma delta epsilon zeta eta theta",),
             label="2 of 10 words without a letter: exactly 80% is enough"),
        Case(("word123 abc4 x_1 café naïve 2x",), label="a word with at least one letter counts"),
        Case(("Ωμέγα Straße 東京都 αβγ δεζ",), label="letters of any script"),
    ]
    for n in range(24):
        kind = n % 4
        words = []
        for _ in range(rng.randint(5, 40)):
            r = rng.random()
            if kind == 0:  # mostly plain
                pool = _PLAIN if r < 0.9 else _SYMS
            elif kind == 1:  # symbols around the 0.1 ratio
                pool = _PLAIN if r < 0.88 else _SYMS
            elif kind == 2:  # numbers around the 80% limit
                pool = _PLAIN if r < 0.78 else _NUMS
            else:  # word lengths around 3 and 10
                pool = _LONG if r < 0.12 else ["a", "I", "of", "to", "it", "be"] if r < 0.5 else _PLAIN
            words.append(rng.choice(pool))
        seps = [rng.choice([" ", " ", " ", "\n", "  "]) for _ in words]
        cases.append(Case(("".join(w + s for w, s in zip(words, seps)).strip(),), label=f"random text {n + 1}"))
    return cases


_LINES = ["Home", "About us", "Contact", "Read more", "Share this page", "Subscribe to our newsletter",
          "The river was quiet that morning.", "Mia walked to the old stone bridge.",
          "A silver letter lay in the garden.", "Nobody knew who had written it.", "Click here", "Next"]


def _cases_repetition() -> list[Case]:
    rng = random.Random(63)
    cases = [
        Case(("",), label="empty text: kept"),
        Case(("one line only",), label="fewer than two lines: kept"),
        Case(("a\na",), label="two equal lines: 1 of 2 lines repeats"),
        Case(("first line\n\n\n   \nsecond line",), label="blank lines do not count"),
        Case(("  Click here \nClick here\nRiver stones",),
             label="lines are compared after strip(): 1 of 3 lines repeats (33% > 30%)"),
        Case(("x\nx\nthe rest of this line is long\nanother long line with many words in it",),
             label="1 of 4 lines (25%) and 1 of 70 characters repeat: kept"),
        Case(("This long sentence is repeated twice here\nab\ncd\nef\nThis long sentence is repeated twice here",),
             label="1 of 5 lines (20%) repeats, but 41 of 88 characters (> 20%)"),
        Case(("Click here\nRead more about rivers\nClick here\nMore about the garden path\nA quiet and long "
              "morning walk\nThe old stone bridge at dawn\nThe silver letter in the box",),
             label="1 of 7 lines and 10 of 153 characters repeat; 'click here' covers 14% of word characters: kept"),
        Case(("buy now " * 12,), label="one bigram everywhere"),
        Case(("the cat sat on the mat and the dog sat on the log",),
             label="'sat on' twice: 10 of 37 word characters (27% > 20%)"),
        Case(("A b. A B! a b? c d e f g h i j k l m n o p q r s t u v w",),
             label="n-grams of lowercased \\w+ words: 'a b' 3 times, 6 of 27 characters"),
        Case(("a b river stone longword another quiet garden a b silver letter longword another morning window "
              "yellow bridge",),
             label="a tie between 'a b' (4 of 92 characters) and 'longword another' (30): the longer one counts"),
        Case(("longword another river stone a b quiet garden longword another silver letter a b morning window "
              "yellow bridge",),
             label="the same tie, the other way round: still the longer n-gram counts, whatever comes first"),
        Case(("alpha beta gamma delta",),
             label="every n-gram occurs once: no repetition, kept (though one bigram is 9 of 19 characters)"),
        Case(("go go go",), label="3 words: fewer than 2n = 4, so even the bigrams are skipped"),
    ]
    for n in range(21):
        kind = n % 3
        if kind == 0:  # lines, some repeated
            lines = [rng.choice(_LINES[: rng.randint(4, len(_LINES))]) for _ in range(rng.randint(3, 14))]
            text = "\n".join(lines)
        elif kind == 1:  # words with a repeated phrase
            phrase = " ".join(rng.choice(_PLAIN) for _ in range(rng.randint(2, 4)))
            words = []
            for _ in range(rng.randint(10, 40)):
                words.append(phrase if rng.random() < rng.uniform(0.05, 0.3) else rng.choice(_PLAIN))
            text = " ".join(words)
        else:  # both: paragraphs of sentences, some repeated, some with a catchphrase
            lines = []
            for _ in range(rng.randint(4, 10)):
                if rng.random() < 0.25 and lines:
                    lines.append(rng.choice(lines))
                else:
                    lines.append(" ".join(rng.choice(_PLAIN) for _ in range(rng.randint(3, 9))))
            text = "\n".join(lines)
        cases.append(Case((text,), label=f"random text {n + 1}"))
    return cases


_DOCS = ["The cat sat on the mat.", "A silver letter lay in the garden.", "Café au lait, s'il vous plaît!",
         "Mia walked to the old stone bridge\nand waited.", "Nobody knew who had written it.", "über naïve"]


def _variant(rng: random.Random, text: str) -> str:
    import unicodedata

    k = rng.randrange(7)
    if k == 0:
        return text.upper()
    if k == 1:
        return text.replace(" ", "  ")
    if k == 2:
        return unicodedata.normalize("NFD", text)
    if k == 3:
        return text.replace(" ", "\u00a0")
    if k == 4:
        return "\ufeff" + text.replace("\n", "\r\n") + "  \n\n\n"
    if k == 5:
        return text.replace(" ", "\n", 1)
    return text + " again"  # a different text


def _cases_exact() -> list[Case]:
    rng = random.Random(64)
    cases = [
        Case(([],), label="no texts"),
        Case((["one text"],), label="a single text"),
        Case((["same", "same", "same", "same"],), label="all duplicates: keep the first"),
        Case((["", "   ", "\n\t", "x"],), label="empty and blank texts are equal to each other"),
        Case((["Hello World", "hello world", "HELLO   WORLD", "hello\nworld"],),
             label="case and whitespace runs do not matter"),
        Case((["caf\u00e9", "cafe\u0301", "CAF\u00c9"],), label="NFC: 'é' and 'e' + U+0301 are the same"),
        Case((["a\u00a0b", "a b", "a\u200bb", "ab"],), label="no-break space is a space; zero-width space vanishes"),
        Case((["Straße", "STRASSE", "strasse"],), label="str.lower(), not casefold(): 'ß' is not 'ss'"),
        Case((["a b", "b a", "a-b", "a b."],), label="order and punctuation matter"),
    ]
    for n in range(12):
        texts = [rng.choice(_DOCS) for _ in range(rng.randint(2, 6))]
        for _ in range(rng.randint(1, 8)):
            texts.insert(rng.randint(0, len(texts)), _variant(rng, rng.choice(_DOCS)))
        cases.append(Case((texts,), label=f"random list {n + 1}"))
    return cases


_VOCAB = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "to", "park", "and", "slept", "sun", "rose",
          "over", "hill"]


def _mutate(rng: random.Random, words: list[str], edits: int) -> list[str]:
    words = list(words)
    for _ in range(edits):
        k = rng.randrange(3)
        pos = rng.randrange(len(words) + 1)
        if k == 0 and words:
            words[min(pos, len(words) - 1)] = rng.choice(_VOCAB)
        elif k == 1:
            words.insert(pos, rng.choice(_VOCAB))
        elif words:
            del words[min(pos, len(words) - 1)]
    return words


def _cases_jaccard() -> list[Case]:
    rng = random.Random(65)
    cases = [
        Case(("", "", 3), label="two empty texts: 1.0"),
        Case(("", "some words here", 3), label="one empty text: 0.0"),
        Case(("!!! ...", "", 2), label="no words at all is no shingles"),
        Case(("a b c d", "a b c e", 2), label="3 bigrams each, 2 shared"),
        Case(("The Cat, sat!", "the cat sat", 2), label="lowercase \\w+ words: punctuation and case vanish"),
        Case(("one two", "one two", 5), label="fewer words than ngram: the whole text is one shingle"),
        Case(("one two", "one two three", 5), label="two short texts differ: 0.0"),
        Case(("a b a b a b", "a b", 2), label="repeated shingles count once (sets)"),
        Case(("naïve café", "nai\u0308ve cafe\u0301", 1), label="normalize first: NFD equals NFC"),
        Case(("snake_case and x2", "snake case and x2", 1), label="'_' and digits are word characters"),
        Case(("the cat sat on the mat", "the cat sat on the mat", 3), label="identical: 1.0"),
    ]
    vocab = _VOCAB + _PLAIN
    for n in range(14):
        ngram = [1, 2, 3, 5][n % 4]
        a = [rng.choice(vocab) for _ in range(rng.randint(3, 40))]
        if rng.random() < 0.85:
            b = _mutate(rng, a, rng.randint(0, max(1, len(a) // (2 * ngram))))
        else:
            b = [rng.choice(vocab) for _ in range(rng.randint(3, 12))]
        sep = rng.choice([" ", ", ", "\n", "  "])
        cases.append(Case((sep.join(a), " ".join(b).upper() if n % 5 == 0 else " ".join(b), ngram),
                          label=f"random pair {n + 1}, ngram={ngram}"))
    return cases


def _cases_signature() -> list[Case]:
    rng = random.Random(66)
    cases = [
        Case(("", MinHash(num_perm=8, ngram=3, seed=0)), label="empty text: every entry is p = 2**61 - 1"),
        Case(("hello", MinHash(num_perm=4, ngram=5, seed=1)), label="one word: one shingle"),
        Case(("the cat sat on the mat", MinHash(num_perm=1, ngram=2, seed=2)), label="a single permutation"),
        Case(("a b a b a b a b", MinHash(num_perm=16, ngram=2, seed=3)), label="repeated shingles"),
        Case(("Naïve café, über alles!", MinHash(num_perm=32, ngram=1, seed=4)), label="Unicode words"),
    ]
    for n in range(9):
        num_perm = [2, 16, 64, 128][n % 4]
        ngram = [1, 2, 3, 5][(n // 2) % 4]
        words = [rng.choice(_VOCAB) for _ in range(rng.randint(1, 60))]
        cases.append(Case((" ".join(words), MinHash(num_perm=num_perm, ngram=ngram, seed=100 + n)),
                          label=f"random text {n + 1}: {len(words)} words, num_perm={num_perm}, ngram={ngram}"))
    return cases


def _cases_pairs() -> list[Case]:
    rng = np.random.default_rng(67)
    u = lambda rows: np.array(rows, dtype=np.uint64)  # noqa: E731
    p = (1 << 61) - 1
    cases = [
        Case((u([[1, 2, 3, 4]]), 2, 2), label="one signature: no pairs"),
        Case((u([[1, 2, 3, 4], [1, 2, 9, 9], [0, 0, 3, 4], [5, 6, 7, 8]]), 2, 2),
             label="0~1 share band 0, 0~2 share band 1"),
        Case((u([[1, 2, 3, 4], [3, 4, 1, 2]]), 2, 2),
             label="equal values in different bands do not count (compare band k with band k)"),
        Case((u([[7, 7, 7, 7, 1, 2], [7, 7, 7, 7, 3, 4], [7, 7, 7, 7, 5, 6]]), 2, 2),
             label="columns beyond bands * rows are ignored"),
        Case((u([[4, 4, 4]] * 5), 3, 1), label="all identical: every pair once"),
        Case((u([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 0], [1, 2, 0, 4, 5, 6]]), 2, 3),
             label="one band must agree on all its rows"),
        Case((u([[p] * 4, [p] * 4, [1, 2, 3, 4]]), 4, 1), label="rows of p (empty texts) pair like any other"),
    ]
    for N, k, b, r, m in ((6, 4, 2, 2, 2), (10, 6, 3, 2, 3), (12, 8, 4, 2, 3), (20, 9, 3, 3, 2),
                                         (30, 16, 8, 2, 4), (16, 12, 2, 5, 2), (25, 10, 5, 2, 5)):
        sigs = rng.integers(0, m, size=(N, k)).astype(np.uint64) * np.uint64(2**40 + 7)
        cases.append(Case((sigs, b, r), label=f"random: {N} signatures of {k}, bands={b}, rows={r}, "
                                              f"values from {m}"))
    mh = MinHash(num_perm=32, ngram=2, seed=5)
    base = "the sun rose over the hill and the dog ran to the park and slept".split()
    prng = random.Random(67)
    texts = [" ".join(_mutate(prng, base, e)) for e in [0, 1, 1, 2, 3, 6, 10, 0]]
    cases.append(Case((mh.signatures(texts), 8, 4), label="MinHash signatures of edited copies, bands=8, rows=4"))
    return cases


def _cases_shards() -> list[Case]:
    from ..tokenizer import get_tokenizer

    gpt2 = get_tokenizer("gpt2")
    docs = ["Hello world.", "The cat sat on the mat.", "A second, longer document with\na line break.", "ok"]
    char = CharTokenizer.from_text("".join(docs) + "\n")
    return [
        Case((docs, gpt2, 1000), label="GPT-2, one shard: eot BEFORE each document"),
        Case((docs, gpt2, 7), label="GPT-2, shards of 7 tokens (the last one shorter)"),
        Case((["one"], gpt2, 1), label="one-token shards"),
        Case((["a literal <|endoftext|> in the text", "next"], gpt2, 100),
             label="a literal '<|endoftext|>' in a document is ordinary text (encode_ordinary)"),
        Case((["", "not empty", ""], gpt2, 4), label="empty documents still get their end-of-text id"),
        Case((["Grüße, naïve café 東京", "x"], _WideTokenizer(70_000), 10),
             label="vocab_size 70,000: ids need uint32"),
        Case((["abc", "de"], _WideTokenizer(65_535), 3), label="vocab_size 65,535: uint16 is enough"),
        Case((["abc", "de"], _WideTokenizer(65_536), 3), label="vocab_size 65,536: uint32"),
        Case((docs, char, 20), label="a tokenizer without end-of-text: '\\n\\n' BETWEEN documents"),
        Case((["hello"], char, 3), label="char tokenizer, one document: no separator"),
    ]


for _task in [
    Task("6.1", "normalize a document", _normalize, _cases_normalize, compare=_text,
         hint="the order of the steps matters: line endings first, then controls, invisible characters, odd line "
              "breaks and spaces (one translation table), then NFC, then trailing spaces of lines and runs of "
              "blank lines, then the ends; spaces inside a line stay"),
    Task("6.2", "symbol and word-length rules", _symbol_rules, _cases_symbols, compare=_reason,
         hint="split on whitespace; no words: keep; then check in order the mean word length, the share of '#' "
              "and ellipses per word, the share of words containing a letter -- the first rule broken names the "
              "reason"),
    Task("6.3", "repetition rules", _repetition_rules, _cases_repetition, compare=_reason,
         hint="duplicate lines: count stripped, non-empty lines seen before (by number and by characters). "
              "Repeated n-grams: lower-case words; the most frequent n-gram (ties: the longest) counts only if it "
              "occurs at least twice; compare its share of the word characters with each n's limit"),
    Task("6.4", "exact duplicates", _exact_duplicates, _cases_exact, compare=_indices,
         hint="two texts are duplicates when their normalised, lower-cased, whitespace-collapsed forms are equal; "
              "report every index whose form was already seen"),
    Task("6.5", "shingles and Jaccard similarity", _shingle_jaccard, _cases_jaccard, compare=_fraction,
         hint="a shingle is a run of ngram consecutive lower-cased words of the normalised text; a text shorter "
              "than that is one shingle; Jaccard is the intersection over the union (two empty sets: 1.0)"),
    Task("6.6", "a MinHash signature", _minhash_signature, _cases_signature, compare=_signature,
         hint="each permutation is a hash (a * x + b) mod the Mersenne prime 2**61 - 1; the signature keeps its "
              "minimum over the shingle hashes; compute with Python ints because 64-bit products overflow "
              "silently"),
    Task("6.7", "LSH candidate pairs", _candidate_pairs, _cases_pairs, compare=_pairs,
         hint="band k is a slice of rows columns of each signature; signatures with the same band k collide; only "
              "collisions inside one band make a candidate; report each pair once, smaller index first, sorted"),
    Task("6.8", "tokenize into shards", _shard_stream, _cases_shards, compare=_shards,
         hint="one long id stream: each document preceded by the end-of-text id (or, without one, separated by "
              "the ids of a blank line), then cut into pieces of shard_tokens ids; the smallest unsigned dtype "
              "that holds the vocabulary"),
]:
    register(_task)
