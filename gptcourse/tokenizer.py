"""Byte-level BPE, from scratch, matching GPT-2 id for id.

The tokenizer works on UTF-8 *bytes*, so every string can be encoded (no unknown token) and
``decode(encode(s)) == s`` always holds. Text is first split into chunks by a regular
expression (GPT-2's ``GPT2_PATTERN`` by default: words with their leading space, numbers,
punctuation runs, whitespace), and merges never cross a chunk boundary.

A tokenizer is fully described by

* ``mergeable_ranks`` -- token bytes -> id. Ids double as merge priority ("rank"): encoding
  repeatedly merges the adjacent pair whose concatenation has the lowest id, exactly like
  ``tiktoken``. The 256 single bytes are always present.
* ``special_tokens`` -- strings such as ``<|endoftext|>`` -> id, never produced by merges.
* ``pattern`` -- the pre-split regular expression.

Three ways to get one: :meth:`BPETokenizer.train` learns merges from text,
:meth:`BPETokenizer.from_gpt2` reads OpenAI's ``encoder.json`` + ``vocab.bpe``, and
:meth:`BPETokenizer.load` reads a file written by :meth:`BPETokenizer.save`.
:meth:`BPETokenizer.to_tiktoken` hands the same vocabulary to ``tiktoken`` for speed.

Saved format (JSON, UTF-8)::

    {
      "format": "gptcourse.bpe",     # fixed
      "version": 1,
      "pattern": "...",              # pre-split regex
      "byte_ids": [..256 ints..],    # byte_ids[b] is the id of the single byte b
      "merges": [[left, right, id], ...],  # in rank order; bytes(id) = bytes(left) + bytes(right)
      "special_tokens": {"<|endoftext|>": 50256}
    }
"""

from __future__ import annotations

import heapq
import json
import numbers
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import regex

from . import validate

__all__ = [
    "GPT2_PATTERN",
    "GPT4_PATTERN",
    "BPETokenizer",
    "CharTokenizer",
    "TiktokenTokenizer",
    "Tokenizer",
    "TokenizerDownloadError",
    "TokenizerFileError",
    "bytes_to_unicode",
    "get_tokenizer",
    "apply_merges",
    "bpe_merge",
    "merge_word",
    "train_merges_naive",
]

#: GPT-2's pre-split pattern, as used by tiktoken's ``gpt2``/``r50k_base`` encodings:
#: contractions, optional space + letters, optional space + digits, optional space +
#: other symbols, trailing whitespace, whitespace not followed by a non-space, any space.
GPT2_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)
#: GPT-4's (``cl100k_base``) pattern: case-insensitive contractions, digits in groups of 3.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
ENDOFTEXT = "<|endoftext|>"

AllowedSpecial = Literal["all"] | Iterable[str]


class TokenizerDownloadError(RuntimeError):
    """A tiktoken encoding's files are not in tiktoken's cache and could not be downloaded."""


class TokenizerFileError(ValueError):
    """A saved tokenizer file is missing fields, has wrong types or inconsistent ids."""


def _check_text(text: object) -> str:
    """Validate ``text``; lone surrogates (not encodable as UTF-8) become U+FFFD, like tiktoken."""
    if not isinstance(text, str):
        raise TypeError(
            f"encode() takes a str, got {type(text).__name__}; decode bytes first "
            "(e.g. data.decode('utf-8'))"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _check_ids(ids: object, vocab_size: int, known: dict[int, object] | None = None) -> list[int]:
    """Turn ``ids`` (list, tuple, numpy array, tensor) into a list of ints in the vocabulary:
    the keys of ``known`` when given (a vocabulary may have gaps), else ``0..vocab_size-1``."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, int):
        raise TypeError("decode() takes a sequence of ids, got a single int; wrap it: [id]")
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise TypeError(f"decode() takes a sequence of ints, got {type(ids).__name__}")
    out = list(ids)
    for pos, i in enumerate(out):
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"token id at position {pos} is {i!r} ({type(i).__name__}), not an int")
        i = out[pos] = int(i)  # numpy / torch integer scalars too
        if not (i in known if known is not None else 0 <= i < vocab_size):
            raise ValueError(
                f"token id {i} at position {pos} is not in the vocabulary "
                f"(valid ids are 0..{vocab_size - 1})"
            )
    return out


class Tokenizer:
    """What every course tokenizer offers: ``encode``, ``decode``, ``vocab_size``, ``eot_id``."""

    name: str = "tokenizer"

    @property
    def vocab_size(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def eot_id(self) -> int | None:
        """Id of ``<|endoftext|>`` when the tokenizer has it, else ``None``."""
        return None

    def encode(self, text: str, allowed_special: AllowedSpecial = ()) -> list[int]:  # pragma: no cover
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


def train_merges_naive(
    chunks: Iterable[bytes], num_new: int, reuse_existing: bool = True
) -> list[tuple[int, int, int]]:
    """The readable reference trainer: recount every pair before each merge.

    Works on byte ids 0..255 and creates ids 256, 257, ... . Each step merges the most
    frequent adjacent pair (ties: the smallest pair of ids); a pair whose bytes already
    form a token reuses that id instead of creating a new one. Slow -- use it on small texts
    to check :meth:`BPETokenizer.train`, which must return the very same merges.
    ``reuse_existing=False`` gives every merge a new id (minbpe's simpler rule).
    Returns ``[(left, right, new_id), ...]`` in order.
    """
    words = Counter(tuple(c) for c in chunks)
    vocab = {i: bytes([i]) for i in range(256)}
    by_bytes = {v: k for k, v in vocab.items()}
    merges: list[tuple[int, int, int]] = []
    created = 0
    while created < num_new:
        counts: Counter[tuple[int, int]] = Counter()
        for w, f in words.items():
            for pair in zip(w, w[1:]):
                counts[pair] += f
        if not counts:
            break
        pair = min(counts, key=lambda p: (-counts[p], p))
        joined = vocab[pair[0]] + vocab[pair[1]]
        new = by_bytes.get(joined) if reuse_existing else None
        if new is None:
            new = 256 + created
            created += 1
            vocab[new] = joined
            by_bytes[joined] = new
        merges.append((pair[0], pair[1], new))
        merged: Counter[tuple[int, ...]] = Counter()
        for w, f in words.items():
            merged[merge_word(w, pair, new)] += f
        words = merged
    return merges


def apply_merges(ids: Sequence[int], merges: Sequence[tuple[int, int, int]]) -> list[int]:
    """Encode with an explicit merge list (minbpe's rule): while some adjacent pair was
    merged during training, merge the one learned earliest. Readable, not fast.

    ``ids`` are token ids, not raw bytes: for a vocabulary whose single-byte ids are not the
    byte values (GPT-2's are reordered: byte 97 ``a`` is id 64) map the bytes first, e.g.
    ``[tok.mergeable_ranks[bytes([b])] for b in data]``. Builds its lookup table on every
    call; for many calls use :meth:`BPETokenizer.encode`."""
    rank = {}
    for k, (a, b, new) in enumerate(merges):
        rank.setdefault((a, b), (k, new))
    word = tuple(ids)
    while len(word) > 1:
        best = min(zip(word, word[1:]), key=lambda p: rank.get(p, (float("inf"), 0))[0])
        if best not in rank:
            break
        word = merge_word(word, best, rank[best][1])
    return list(word)


def merge_word(word: Sequence[int], pair: tuple[int, int], new: int) -> tuple[int, ...]:
    """``word`` with every occurrence of the adjacent ``pair`` replaced by ``new``, left to
    right without overlaps (``merge_word((1, 1, 1), (1, 1), 9) == (9, 1)``)."""
    a, b = pair
    out: list[int] = []
    i, n = 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def _train_fast(
    chunk_counts: dict[str, int], vocab: dict[int, bytes], num_new: int, progress: bool
) -> list[tuple[int, int, int]]:
    """Incremental BPE training over unique chunks.

    ``pair_counts`` holds the frequency-weighted count of every adjacent pair, ``where``
    the chunks that contain it, and a heap (with lazy deletion of stale entries) finds the
    most frequent pair. A merge only revisits the chunks that contain the merged pair and
    adjusts the counts of the pairs those chunks gain and lose -- no full recount.
    Returns ``[(left, right, new_id), ...]`` and fills ``vocab`` in place.
    """
    words: list[list[int]] = []
    freqs: list[int] = []
    for chunk, f in chunk_counts.items():
        b = chunk.encode("utf-8")
        if len(b) > 1:
            words.append(list(b))
            freqs.append(f)
    pair_counts: defaultdict[tuple[int, int], int] = defaultdict(int)
    where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
    for i, (w, f) in enumerate(zip(words, freqs)):
        for pair in zip(w, w[1:]):
            pair_counts[pair] += f
            where[pair].add(i)
    heap = [(-c, p) for p, c in pair_counts.items()]
    heapq.heapify(heap)
    by_bytes = {v: k for k, v in vocab.items()}
    next_id = max(vocab) + 1
    merges: list[tuple[int, int, int]] = []
    created = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_new, desc="BPE merges", leave=False)
    while created < num_new and heap:
        negc, pair = heapq.heappop(heap)
        count = pair_counts.get(pair, 0)
        if count != -negc:
            if count > 0:  # the count fell since this entry was pushed: re-queue it
                heapq.heappush(heap, (-count, pair))
            continue
        a, b = pair
        joined = vocab[a] + vocab[b]
        new = by_bytes.get(joined)
        if new is None:
            new = next_id
            next_id += 1
            created += 1
            vocab[new] = joined
            by_bytes[joined] = new
            if bar is not None:
                bar.update(1)
        merges.append((a, b, new))
        born: set[tuple[int, int]] = set()
        for i in where.pop(pair):
            w = words[i]
            n = len(w)
            f = freqs[i]
            out: list[int] = []
            j = 0
            while j < n:
                if w[j] == a and j + 1 < n and w[j + 1] == b:
                    # the neighbours lose their pair with a (left) or b (right) and gain one
                    # with the new token; `out[-1]` may itself be a fresh merge ("abab")
                    if out:
                        prev = out[-1]
                        pair_counts[(prev, a)] -= f
                        p = (prev, new)
                        pair_counts[p] += f
                        where[p].add(i)
                        born.add(p)
                    if j + 2 < n:
                        nxt = w[j + 2]
                        pair_counts[(b, nxt)] -= f
                        p = (new, nxt)
                        pair_counts[p] += f
                        where[p].add(i)
                        born.add(p)
                    out.append(new)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            if len(out) != n:
                words[i] = out
        del pair_counts[pair]
        for p in born:
            c = pair_counts.get(p, 0)
            if c > 0:
                heapq.heappush(heap, (-c, p))
    if bar is not None:
        bar.close()
    return merges


# --------------------------------------------------------------------------------------
# Encoding one chunk
# --------------------------------------------------------------------------------------

#: chunks longer than this (characters) are encoded but not cached
_CACHE_MAX_CHARS = 256


def bpe_merge(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """The ids of one chunk: repeatedly merge the adjacent pair of parts whose concatenation
    has the lowest rank, the leftmost of equal ones (tiktoken's rule), until none is a token.

    Same result as rescanning every pair after each merge (``BPETokenizer._bpe``), in
    O(n log n) instead of O(n^2): a heap holds every adjacent pair that is a token, keyed by
    (rank, start), and a pair is checked when popped -- if either part has grown since it
    was pushed the entry is stale and skipped, and each merge pushes the (at most two) new
    pairs it creates. A 1 MB chunk of one repeated letter takes seconds, not hours.
    """
    n = len(piece)
    # the parts are piece[s:end[s]] for the live starts s; the next part starts at end[s]
    end = list(range(1, n + 1))
    prev = list(range(-1, n - 1))
    live = bytearray(b"\x01") * n
    heap: list[tuple[int, int, int]] = []  # (rank of the joined pair, its start, its end)
    for s in range(n - 1):
        r = ranks.get(piece[s : s + 2])
        if r is not None:
            heap.append((r, s, s + 2))
    heapq.heapify(heap)
    while heap:
        _, s, e = heapq.heappop(heap)
        t = end[s]
        # parts only grow rightwards, so the pair is current iff s is live and both parts
        # still end where they did: part s at t (t < n), part t at e
        if not live[s] or t >= n or end[t] != e:
            continue
        end[s] = e
        live[t] = 0
        if e < n:
            prev[e] = s
            r = ranks.get(piece[s : end[e]])
            if r is not None:
                heapq.heappush(heap, (r, s, end[e]))
        p = prev[s]
        if p >= 0:
            r = ranks.get(piece[p:e])
            if r is not None:
                heapq.heappush(heap, (r, p, e))
    out: list[int] = []
    s = 0
    while s < n:
        out.append(ranks[piece[s : end[s]]])
        s = end[s]
    return out


# --------------------------------------------------------------------------------------
# GPT-2 file helpers
# --------------------------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used in ``encoder.json``.

    Printable Latin-1 bytes map to themselves; the other 68 bytes (control characters, space,
    a few others) map to characters from U+0100 on, so every token is a visible string.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


# --------------------------------------------------------------------------------------
# The tokenizer
# --------------------------------------------------------------------------------------


class BPETokenizer(Tokenizer):
    """Byte-level BPE tokenizer (see the module docstring)."""

    def __init__(
        self,
        mergeable_ranks: dict[bytes, int],
        special_tokens: dict[str, int] | None = None,
        pattern: str = GPT2_PATTERN,
        merges: Sequence[tuple[int, int, int]] | None = None,
        name: str = "bpe",
    ) -> None:
        if not isinstance(pattern, str):
            raise TypeError("pattern must be a str (a regular expression)")
        missing = [b for b in range(256) if bytes([b]) not in mergeable_ranks]
        if missing:
            raise ValueError(
                f"a byte-level vocabulary needs all 256 single bytes; {len(missing)} are "
                f"missing (first: {missing[0]})"
            )
        special_tokens = dict(special_tokens or {})
        ids = list(mergeable_ranks.values())
        if len(set(ids)) != len(ids):
            raise ValueError("two tokens share an id in mergeable_ranks")
        clash = set(ids) & set(special_tokens.values())
        if clash:
            raise ValueError(f"special token ids {sorted(clash)} are also used by ordinary tokens")
        self.name = name
        self.pattern = pattern
        self._regex = regex.compile(pattern)
        self.mergeable_ranks = dict(mergeable_ranks)
        self.special_tokens = special_tokens
        self.vocab: dict[int, bytes] = {i: b for b, i in self.mergeable_ranks.items()}
        for s, i in special_tokens.items():
            self.vocab[i] = s.encode("utf-8")
        self._special_regex = (
            regex.compile("|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True)))
            if special_tokens
            else None
        )
        self._byte_ids = [self.mergeable_ranks[bytes([b])] for b in range(256)]
        self.merges = list(merges) if merges is not None else self._derive_merges()
        self._cache: dict[str, list[int]] = {}

    # -- construction -------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        pattern: str = GPT2_PATTERN,
        special_tokens: Iterable[str] | None = None,
        *,
        progress: bool = False,
    ) -> BPETokenizer:
        """Learn a vocabulary of ``vocab_size`` tokens (256 bytes + merges + specials).

        Ties between equally frequent pairs go to the smallest pair of ids, so training is
        deterministic. If the text runs out of pairs first, the vocabulary is smaller.
        """
        text = _check_text(text)
        vocab_size = validate.integer("vocab_size", vocab_size)
        specials = list(special_tokens or [])
        if any(not isinstance(s, str) or not s for s in specials):
            raise ValueError("special_tokens must be non-empty strings")
        if len(set(specials)) != len(specials):
            raise ValueError("special_tokens contains duplicates")
        floor = 256 + len(specials)
        if vocab_size < floor:
            raise ValueError(
                f"vocab_size is {vocab_size} but a byte-level BPE needs at least 256 byte tokens"
                + (f" plus {len(specials)} special tokens" if specials else "")
                + f"; use vocab_size >= {floor}"
            )
        compiled = regex.compile(pattern)
        if specials:  # special tokens never take part in merges
            splitter = regex.compile("|".join(regex.escape(s) for s in specials))
            pieces = splitter.split(text)
        else:
            pieces = [text]
        counts: Counter[str] = Counter()
        for piece in pieces:
            counts.update(compiled.findall(piece))
        vocab = {i: bytes([i]) for i in range(256)}
        merges = _train_fast(counts, vocab, vocab_size - floor, progress)
        ranks = {b: i for i, b in vocab.items()}
        next_id = max(vocab) + 1
        special_map = {s: next_id + k for k, s in enumerate(specials)}
        return cls(ranks, special_map, pattern, merges=merges, name=f"bpe-{len(ranks) + len(specials)}")

    @classmethod
    def from_gpt2(
        cls, encoder_json: str | os.PathLike | None = None, vocab_bpe: str | os.PathLike | None = None
    ) -> BPETokenizer:
        """GPT-2's tokenizer from OpenAI's ``encoder.json`` and ``vocab.bpe``.

        Without arguments both files come from :mod:`gptcourse.corpora` (cached download).
        """
        if encoder_json is None or vocab_bpe is None:
            from . import corpora

            encoder_json = encoder_json or corpora.path("gpt2-encoder")
            vocab_bpe = vocab_bpe or corpora.path("gpt2-vocab")
        byte_decoder = {c: b for b, c in bytes_to_unicode().items()}

        def to_bytes(token: str) -> bytes:
            try:
                return bytes(byte_decoder[c] for c in token)
            except KeyError as err:
                raise TokenizerFileError(
                    f"{token!r} in {encoder_json} is not in GPT-2's byte alphabet"
                ) from err

        try:
            encoder = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
            lines = Path(vocab_bpe).read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise TokenizerFileError(f"cannot read GPT-2 tokenizer files: {err}") from err
        if not isinstance(encoder, dict):
            raise TokenizerFileError(f"{encoder_json} must hold a JSON object token -> id")
        special = {ENDOFTEXT: encoder.pop(ENDOFTEXT)} if ENDOFTEXT in encoder else {}
        ranks = {to_bytes(tok): i for tok, i in encoder.items()}
        merges: list[tuple[int, int, int]] = []
        for line in lines[1:]:  # first line is a '#version' header
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise TokenizerFileError(f"bad merge line in {vocab_bpe}: {line!r}")
            left, right = (to_bytes(p) for p in parts)
            try:
                merges.append((ranks[left], ranks[right], ranks[left + right]))
            except KeyError as err:
                raise TokenizerFileError(
                    f"merge {line!r} in {vocab_bpe} uses a token missing from {encoder_json}"
                ) from err
        for rank, (_, _, new) in enumerate(merges):
            if new != 256 + rank:
                raise TokenizerFileError(
                    "encoder.json and vocab.bpe disagree: merge number "
                    f"{rank} should create id {256 + rank} but creates {new}"
                )
        return cls(ranks, special, GPT2_PATTERN, merges=merges, name="gpt2")

    def _derive_merges(self) -> list[tuple[int, int, int]]:
        """Recover a merge list from ``mergeable_ranks`` (as tiktoken would encode each token)."""
        merges = []
        for token, rank in sorted(self.mergeable_ranks.items(), key=lambda kv: kv[1]):
            if len(token) < 2:
                continue
            parts = self._bpe(token, max_rank=rank)
            if len(parts) != 2:
                raise ValueError(
                    f"token {token!r} (id {rank}) cannot be built from two lower-ranked tokens"
                )
            merges.append((parts[0], parts[1], rank))
        return merges

    # -- properties ---------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return max(self.vocab) + 1

    @property
    def eot_id(self) -> int | None:
        return self.special_tokens.get(ENDOFTEXT)

    # -- encoding -----------------------------------------------------------------------

    def _bpe(self, piece: bytes, max_rank: int | None = None) -> list[int]:
        """Merge the bytes of one chunk, lowest-ranked adjacent pair first (tiktoken's rule).

        The readable reference: a full rescan per merge, so O(n^2) on an n-byte chunk.
        :meth:`encode` uses :func:`bpe_merge`, which gives the same ids in O(n log n)."""
        ranks = self.mergeable_ranks
        parts = [piece[i : i + 1] for i in range(len(piece))]
        while len(parts) > 1:
            best_rank, best_i = None, -1
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and (best_rank is None or r < best_rank):
                    if max_rank is None or r < max_rank:
                        best_rank, best_i = r, i
            if best_rank is None:
                break
            parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
        return [ranks[p] for p in parts]

    def _encode_chunk(self, chunk: str) -> list[int]:
        ids = self._cache.get(chunk)
        if ids is None:
            data = chunk.encode("utf-8")
            if len(data) == 1:
                ids = [self._byte_ids[data[0]]]
            elif data in self.mergeable_ranks:
                ids = [self.mergeable_ranks[data]]
            else:
                ids = bpe_merge(data, self.mergeable_ranks)
            # words repeat, giant one-off chunks do not: keep those out of the cache
            if len(self._cache) < 200_000 and len(chunk) <= _CACHE_MAX_CHARS:
                self._cache[chunk] = ids
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text``, treating special-token strings as ordinary text."""
        text = _check_text(text)
        out: list[int] = []
        encode_chunk = self._encode_chunk
        for chunk in self._regex.findall(text):
            out.extend(encode_chunk(chunk))
        return out

    def encode(
        self,
        text: str,
        allowed_special: AllowedSpecial = (),
        disallowed_special: AllowedSpecial = "all",
    ) -> list[int]:
        """Encode ``text`` to ids, with tiktoken's rules for special tokens.

        A special-token string in ``text`` is encoded as its special id when it is in
        ``allowed_special`` (``"all"`` allows every one); one in ``disallowed_special``
        (by default every special not allowed) raises ``ValueError``; pass
        ``disallowed_special=()`` to encode it as ordinary text instead.
        """
        text = _check_text(text)
        allowed = self._special_set(allowed_special, "allowed_special")
        disallowed = self._special_set(disallowed_special, "disallowed_special")
        if disallowed_special == "all":
            disallowed = disallowed - allowed
        if disallowed:
            for s in disallowed:
                if s in text:
                    raise ValueError(
                        f"the text contains the special token {s!r}, which is not allowed. "
                        f"To encode it as the special token, pass allowed_special={{{s!r}}} "
                        f"(or 'all'); to encode it as ordinary text, pass disallowed_special=()"
                    )
        if not allowed or self._special_regex is None:
            return self.encode_ordinary(text)
        out: list[int] = []
        start = 0
        for m in self._special_regex.finditer(text):
            if m.group() not in allowed:
                continue
            out.extend(self.encode_ordinary(text[start : m.start()]))
            out.append(self.special_tokens[m.group()])
            start = m.end()
        out.extend(self.encode_ordinary(text[start:]))
        return out

    def _special_set(self, value: AllowedSpecial, arg: str) -> set[str]:
        if value == "all":
            return set(self.special_tokens)
        if isinstance(value, str):
            raise TypeError(f"{arg} must be 'all' or a collection of strings, not the string {value!r}")
        chosen = set(value)
        unknown = chosen - set(self.special_tokens)
        if unknown:
            raise ValueError(
                f"{arg} names {sorted(unknown)}, which are not special tokens of this "
                f"tokenizer (it has {sorted(self.special_tokens) or 'none'})"
            )
        return chosen

    # -- decoding -----------------------------------------------------------------------

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The raw bytes of ``ids`` (may be a partial UTF-8 sequence)."""
        vocab = self.vocab
        return b"".join(vocab[i] for i in _check_ids(ids, self.vocab_size, vocab))

    def decode(self, ids: Sequence[int], errors: str = "replace") -> str:
        """Text of ``ids``; invalid UTF-8 becomes U+FFFD (``errors="replace"``), like tiktoken."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def token_bytes(self, i: int) -> bytes:
        """The bytes of a single token id."""
        return self.decode_bytes([i])

    # -- interop ------------------------------------------------------------------------

    def to_tiktoken(self, name: str | None = None):
        """The same tokenizer as a ``tiktoken.Encoding`` (Rust speed, identical ids)."""
        import tiktoken

        return tiktoken.Encoding(
            name=name or self.name,
            pat_str=self.pattern,
            mergeable_ranks=self.mergeable_ranks,
            special_tokens=self.special_tokens,
        )

    # -- persistence --------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the tokenizer as JSON (format in the module docstring); returns the path."""
        path = Path(path)
        doc = {
            "format": "gptcourse.bpe",
            "version": 1,
            "name": self.name,
            "pattern": self.pattern,
            "byte_ids": self._byte_ids,
            "merges": [list(m) for m in self.merges],
            "special_tokens": self.special_tokens,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        """Read a tokenizer written by :meth:`save`; a damaged file raises TokenizerFileError."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise TokenizerFileError(f"{path} is not a readable tokenizer file: {err}") from err

        def bad(why: str) -> TokenizerFileError:
            return TokenizerFileError(f"{path} is not a valid gptcourse tokenizer file: {why}")

        if not isinstance(doc, dict) or doc.get("format") != "gptcourse.bpe":
            raise bad("missing 'format': 'gptcourse.bpe'")
        if doc.get("version") != 1:
            raise bad(f"unsupported version {doc.get('version')!r} (this library reads 1)")
        pattern, byte_ids = doc.get("pattern"), doc.get("byte_ids")
        merges, special = doc.get("merges"), doc.get("special_tokens", {})
        if not isinstance(pattern, str):
            raise bad("'pattern' must be a string")
        try:
            regex.compile(pattern)
        except regex.error as err:
            raise bad(f"'pattern' is not a valid regular expression ({err})") from err
        if (
            not isinstance(byte_ids, list)
            or len(byte_ids) != 256
            or not all(type(i) is int and i >= 0 for i in byte_ids)
            or len(set(byte_ids)) != 256
        ):
            raise bad("'byte_ids' must be 256 distinct non-negative ints")
        if not isinstance(merges, list) or not all(
            isinstance(m, list) and len(m) == 3 and all(type(x) is int for x in m) for m in merges
        ):
            raise bad("'merges' must be a list of [left, right, id] int triples")
        if not isinstance(special, dict) or not all(
            isinstance(k, str) and k and type(v) is int and v >= 0 for k, v in special.items()
        ):
            raise bad("'special_tokens' must map non-empty strings to non-negative ints")
        vocab = {i: bytes([b]) for b, i in enumerate(byte_ids)}
        for k, (left, right, new) in enumerate(merges):
            if left not in vocab or right not in vocab:
                raise bad(f"merge {k} uses id {left if left not in vocab else right}, not defined before it")
            joined = vocab[left] + vocab[right]
            if new in vocab and vocab[new] != joined:
                raise bad(f"merge {k} reuses id {new} for different bytes")
            vocab[new] = joined
        ranks = {b: i for i, b in vocab.items()}
        if len(ranks) != len(vocab):
            raise bad("two ids have the same bytes")
        try:
            return cls(ranks, special, pattern, merges=[tuple(m) for m in merges], name=doc.get("name", "bpe"))
        except ValueError as err:
            raise bad(str(err)) from err


# --------------------------------------------------------------------------------------
# Other tokenizers
# --------------------------------------------------------------------------------------


class CharTokenizer(Tokenizer):
    """One id per character, from a fixed alphabet (the classic ``shakespeare_char``)."""

    def __init__(self, chars: Iterable[str], name: str = "char") -> None:
        alphabet = sorted(set(chars))
        if not alphabet:
            raise ValueError("CharTokenizer needs at least one character")
        if any(not isinstance(c, str) or len(c) != 1 for c in alphabet):
            raise ValueError("CharTokenizer's alphabet must be single characters")
        self.name = name
        self.chars = alphabet
        self.stoi = {c: i for i, c in enumerate(alphabet)}
        self.itos = dict(enumerate(alphabet))

    @classmethod
    def from_text(cls, text: str, name: str = "char") -> CharTokenizer:
        """Alphabet = the distinct characters of ``text``."""
        return cls(_check_text(text), name=name)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str, allowed_special: AllowedSpecial = ()) -> list[int]:
        text = _check_text(text)
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            pos = next(i for i, c in enumerate(text) if c not in stoi)
            raise ValueError(
                f"character {text[pos]!r} at position {pos} is not in this CharTokenizer's "
                f"alphabet of {len(self.chars)} characters; build it from text that contains it"
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.itos[i] for i in _check_ids(ids, self.vocab_size, self.itos))

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(
            json.dumps({"format": "gptcourse.char", "version": 1, "name": self.name, "chars": self.chars}),
            encoding="utf-8",
        )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharTokenizer:
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise TokenizerFileError(f"{path} is not a readable tokenizer file: {err}") from err
        if not isinstance(doc, dict) or doc.get("format") != "gptcourse.char" or not isinstance(doc.get("chars"), list):
            raise TokenizerFileError(f"{path} is not a gptcourse character tokenizer file")
        return cls(doc["chars"], name=doc.get("name", "char"))


class TiktokenTokenizer(Tokenizer):
    """A ``tiktoken`` encoding behind the course's tokenizer interface."""

    def __init__(self, encoding) -> None:
        self.encoding = encoding
        self.name = encoding.name

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    @property
    def eot_id(self) -> int | None:
        if ENDOFTEXT in self.encoding.special_tokens_set:
            return self.encoding.encode_single_token(ENDOFTEXT)
        return None

    def encode(self, text: str, allowed_special: AllowedSpecial = (), disallowed_special: AllowedSpecial = "all") -> list[int]:
        return self.encoding.encode(
            _check_text(text),
            allowed_special=set(allowed_special) if allowed_special != "all" else "all",
            disallowed_special=disallowed_special if disallowed_special == "all" else set(disallowed_special),
        )

    def encode_ordinary(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(_check_text(text))

    def decode(self, ids: Sequence[int]) -> str:
        ids = _check_ids(ids, self.vocab_size)
        return self.encoding.decode(ids)


def _root_cause(err: BaseException) -> BaseException:
    """The innermost exception that ``err`` was raised from (a DNS failure, a refused connection)."""
    for _ in range(20):  # chains are short; the bound guards against cycles
        inner = err.__cause__ or err.__context__
        if inner is None:
            break
        err = inner
    return err


def _tiktoken_encoding(name: str):
    """``tiktoken.get_encoding(name)``; when its files can be neither read from tiktoken's cache
    nor downloaded, one :class:`TokenizerDownloadError` line says what is missing and what to do."""
    import hashlib
    import tempfile

    import tiktoken

    try:
        return tiktoken.get_encoding(name)
    except OSError as err:  # requests' errors are OSErrors, and so is an unwritable cache folder
        # the cache folder as tiktoken.load.read_file_cached picks it ("" turns caching off)
        cache = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get(
            "DATA_GYM_CACHE_DIR", os.path.join(tempfile.gettempdir(), "data-gym-cache")))
        where = f"TIKTOKEN_CACHE_DIR={cache}" if cache else "TIKTOKEN_CACHE_DIR is empty: no cache"
        url = getattr(getattr(err, "request", None), "url", None)  # set on requests' errors
        if url is None:
            raise TokenizerDownloadError(
                f"cannot load tiktoken's {name!r} tokenizer: {err}. tiktoken keeps its files in "
                f"its cache ({where}); set TIKTOKEN_CACHE_DIR to a folder you can write to"
            ) from err
        key = hashlib.sha1(url.encode()).hexdigest()  # tiktoken names a cached file so
        raise TokenizerDownloadError(
            f"tiktoken's {name!r} tokenizer needs {url}, which is not in its cache ({where}) "
            f"and could not be downloaded ({_root_cause(err)}). If this machine is offline, "
            "point TIKTOKEN_CACHE_DIR at a copy of the cache folder of a machine that has used "
            f"this tokenizer (this file is cached there as {key}), or pick a tokenizer that "
            "needs no download (--tokenizer char or bpe:N)"
        ) from err


TOKENIZER_NAMES = ("gpt2", "r50k_base", "cl100k_base", "o200k_base", "char", "char:<corpus>", "bytes", "gpt2-bpe", "<path to a saved tokenizer .json>")


def get_tokenizer(name: str, text: str | None = None) -> Tokenizer:
    """A tokenizer by name.

    * ``"gpt2"`` (or another tiktoken encoding such as ``"cl100k_base"``) -- tiktoken's fast one;
    * ``"gpt2-bpe"`` -- this module's from-scratch BPE loaded with GPT-2's files;
    * ``"char"`` -- characters of ``text`` (default: Tiny Shakespeare); ``"char:NAME"`` uses
      the corpus ``NAME`` from :mod:`gptcourse.corpora`;
    * ``"bytes"`` -- the 256 raw bytes, no merges;
    * a path to a file written by ``BPETokenizer.save`` or ``CharTokenizer.save``.
    """
    if not isinstance(name, str):
        raise TypeError(f"tokenizer name must be a str, got {type(name).__name__}")
    if name in ("gpt2", "r50k_base", "p50k_base", "cl100k_base", "o200k_base"):
        return TiktokenTokenizer(_tiktoken_encoding(name))
    if name == "gpt2-bpe":
        return BPETokenizer.from_gpt2()
    if name == "bytes":
        return BPETokenizer({bytes([b]): b for b in range(256)}, name="bytes")
    if name == "char" or name.startswith("char:"):
        if text is None:
            from . import corpora

            corpus = name.partition(":")[2] or "tinyshakespeare"
            return CharTokenizer.from_text(corpora.load_text(corpus), name=f"char:{corpus}")
        return CharTokenizer.from_text(text)
    p = Path(name)
    if p.suffix == ".json" and p.is_file():
        head = p.read_text(encoding="utf-8")[:200]
        if '"gptcourse.char"' in head:
            return CharTokenizer.load(p)
        return BPETokenizer.load(p)
    raise ValueError(
        f"unknown tokenizer {name!r}; use one of {', '.join(TOKENIZER_NAMES)}"
        + (f" ({p} does not exist)" if p.suffix == ".json" else "")
    )
