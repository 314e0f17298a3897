"""Duplicate removal: exact (a hash of the canonical text) and near (MinHash + LSH).

Web crawls repeat themselves: the same article on many sites, boilerplate with a date changed,
templated pages. Training on duplicates wastes compute and makes models regurgitate them (Lee et
al. 2022, "Deduplicating Training Data Makes Language Models Better").

* **Exact**: :func:`dedup_key` hashes the normalized, lowercased text with whitespace collapsed,
  so texts that differ only in case, spacing or Unicode form are the same;
  :func:`exact_duplicates` lists the indices of every text whose key was seen before.
* **Near**: the Jaccard similarity of two texts' *shingle* sets (overlapping word n-grams)
  ``J(A, B) = |A ∩ B| / |A ∪ B|`` measures how much they share. Comparing all pairs is
  quadratic, so (Broder 1997) each text gets a :class:`MinHash` *signature*: for ``k`` random
  hash functions ``h_i``, ``sig_i = min over shingles s of h_i(s)``. Two texts agree on
  ``sig_i`` with probability ``J`` (exactly, for truly random permutations; very nearly, for
  the hash family below), so the fraction of equal entries estimates ``J``
  with standard error ``sqrt(J (1 - J) / k)`` (at most ``0.5 / sqrt(k)``). :class:`LSH` then
  cuts the signature into ``b`` bands of ``r`` rows and puts texts whose band is identical in
  the same bucket: a pair with similarity ``s`` shares at least one bucket with probability
  ``1 - (1 - s**r)**b``, an S-curve that rises steeply around ``(1/b)**(1/r)``. Only pairs
  sharing a bucket (*candidates*) are compared. :func:`near_duplicates` glues it together
  (Leskovec, Rajaraman & Ullman, "Mining of Massive Datasets", chapter 3).

The hash functions are the universal family ``h(x) = (a x + b) mod p`` with the Mersenne prime
``p = 2**61 - 1``, applied to 64-bit hashes of the shingles and computed exactly in ``uint64``
numpy arithmetic (no 128-bit overflow), seeded, so signatures are reproducible.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Sequence

import numpy as np

from .. import validate
from .clean import normalize

__all__ = [
    "LSH",
    "MinHash",
    "canonical_key",
    "dedup_key",
    "exact_duplicates",
    "jaccard",
    "near_duplicates",
    "near_duplicates_from_signatures",
    "optimal_bands",
]

MERSENNE_61 = np.uint64((1 << 61) - 1)
_M32 = np.uint64(0xFFFFFFFF)
_M29 = np.uint64((1 << 29) - 1)
_WORD = re.compile(r"\w+")


# --------------------------------------------------------------------------------------
# Exact duplicates
# --------------------------------------------------------------------------------------


def dedup_key(text: str) -> str:
    """Hex blake2b (128-bit) of ``normalize(text).lower()`` with every whitespace run made one
    space: the identity of a text for exact deduplication."""
    return canonical_key(normalize(text))


def canonical_key(normalized: str) -> str:
    """:func:`dedup_key` of a text that is already normalized."""
    canon = " ".join(normalized.lower().split())
    return hashlib.blake2b(canon.encode("utf-8"), digest_size=16).hexdigest()


def exact_duplicates(texts: Iterable[str]) -> list[int]:
    """Indices of the texts whose :func:`dedup_key` appeared earlier (the first copy is kept)."""
    seen: set[str] = set()
    drop = []
    for i, t in enumerate(texts):
        k = dedup_key(t)
        if k in seen:
            drop.append(i)
        else:
            seen.add(k)
    return drop


# --------------------------------------------------------------------------------------
# MinHash
# --------------------------------------------------------------------------------------


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 that spreads every input bit."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _mod61(x: np.ndarray) -> np.ndarray:
    """``x mod (2**61 - 1)`` for any uint64 (2**61 = 1 mod p, so fold the top bits down)."""
    x = (x & MERSENNE_61) + (x >> np.uint64(61))
    return np.minimum(x, x - MERSENNE_61)  # x - p wraps to a huge value when x < p


def _permute(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(a * x + b) mod p`` for every pair, shape ``(len(x), len(a))``; ``x, a, b < p``.

    The 122-bit product is split into 32-bit limbs, ``a = a1 2^32 + a0``, ``x = x1 2^32 + x0``:
    ``a x = a1 x1 2^64 + (a1 x0 + a0 x1) 2^32 + a0 x0``, and with ``2^61 = 1 (mod p)``,
    ``2^64 = 8`` and ``m 2^32 = (m >> 29) + (m & (2^29 - 1)) 2^32``, every term fits in
    uint64. The operations run in place on two temporaries (this is the hot loop of MinHash).
    """
    x = x[:, None]
    x0, x1 = x & _M32, x >> np.uint64(32)
    a0, a1 = a & _M32, a >> np.uint64(32)
    r = a1 * x1  # < 2^58
    r <<= np.uint64(3)  # a1 x1 2^64 = 8 a1 x1
    mid = a1 * x0
    tmp = a0 * x1
    mid += tmp  # < 2^62
    np.right_shift(mid, np.uint64(29), out=tmp)
    r += tmp
    mid &= _M29
    mid <<= np.uint64(32)
    r += mid
    lo = np.multiply(a0, x0, out=mid)  # < 2^64, exact
    np.bitwise_and(lo, MERSENNE_61, out=tmp)
    r += tmp
    lo >>= np.uint64(61)
    r += lo
    r += b  # < 2^63 + 2^61: no overflow
    np.right_shift(r, np.uint64(61), out=tmp)  # fold and reduce, as in _mod61
    r &= MERSENNE_61
    r += tmp
    np.subtract(r, MERSENNE_61, out=tmp)
    np.minimum(r, tmp, out=r)
    return r


class MinHash:
    """Seeded MinHash signatures of texts over word (or character) n-gram shingles.

    ``num_perm`` hash functions ``(a x + b) mod (2**61 - 1)`` with ``a, b`` drawn from
    ``numpy.random.default_rng(seed)``. A text is normalized, lowercased and cut into
    ``\\w+`` words (``shingle="word"``: punctuation and spacing do not matter) or into characters
    with whitespace collapsed (``shingle="char"``); each run of ``ngram`` consecutive units is a
    shingle, hashed to 64 bits (blake2b of each word, combined and mixed). A text with fewer
    than ``ngram`` units is one shingle; an empty text has none and its signature is all
    ``2**61 - 1`` (:meth:`signatures` marks it; :func:`near_duplicates` never pairs it).

    >>> mh = MinHash(num_perm=64, ngram=2, seed=0)
    >>> sig = mh.signatures(["a b c d", "a b c e"])
    >>> round(MinHash.similarity(sig[0], sig[1]), 1)  # true Jaccard 2/4
    0.5
    """

    EMPTY = int(MERSENNE_61)

    def __init__(self, num_perm: int = 128, ngram: int = 5, seed: int = 0,
                 shingle: str = "word") -> None:
        num_perm = validate.integer("num_perm", num_perm, min=1)
        ngram = validate.integer("ngram", ngram, min=1)
        shingle = validate.choice("shingle", shingle, ("word", "char"))
        self.num_perm, self.ngram, self.seed, self.shingle = num_perm, ngram, seed, shingle
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, int(MERSENNE_61), size=num_perm, dtype=np.uint64)
        self.b = rng.integers(0, int(MERSENNE_61), size=num_perm, dtype=np.uint64)
        self._word_hash: dict[str, int] = {}

    def __repr__(self) -> str:
        return (f"MinHash(num_perm={self.num_perm}, ngram={self.ngram}, seed={self.seed}, "
                f"shingle={self.shingle!r})")

    # -- shingles ------------------------------------------------------------------------

    def _units(self, text: str) -> np.ndarray:
        """64-bit hashes of the text's words (or characters), in order."""
        text = normalize(text).lower()
        if self.shingle == "char":
            text = " ".join(text.split())
            return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        words = _WORD.findall(text)
        cache = self._word_hash
        missing = set(words).difference(cache)
        if missing:
            if len(cache) + len(missing) > 2_000_000:  # bound the memory of the cache
                cache.clear()
            for w in missing:
                digest = hashlib.blake2b(w.encode("utf-8"), digest_size=8).digest()
                cache[w] = int.from_bytes(digest, "little")
        return np.fromiter(map(cache.__getitem__, words), dtype=np.uint64, count=len(words))

    def shingle_hashes(self, text: str) -> np.ndarray:
        """64-bit hashes of the text's shingles (one per position; repeats included)."""
        units = self._units(text)
        if units.size == 0:
            return units
        n = min(self.ngram, units.size)
        count = units.size - n + 1
        h = np.zeros(count, dtype=np.uint64)
        mult = np.uint64(0x9E3779B97F4A7C15)  # odd: h -> h * mult + u is order-sensitive
        with np.errstate(over="ignore"):
            for k in range(n):
                h = h * mult + units[k : k + count]
            return _mix64(h)

    def shingles(self, text: str) -> set[int]:
        """The set of shingle hashes (for computing the exact Jaccard similarity)."""
        return set(self.shingle_hashes(text).tolist())

    # -- signatures ----------------------------------------------------------------------

    def signature(self, text: str) -> np.ndarray:
        """The ``(num_perm,)`` uint64 signature of one text."""
        return self.signatures([text])[0]

    def signatures(self, texts: Iterable[str], *, chunk: int = 2048,
                   progress: bool = False) -> np.ndarray:
        """Signatures of many texts, ``(n, num_perm)`` uint64, computed ``chunk`` shingles at
        a time (temporaries of ``chunk * num_perm * 8`` bytes: small ones stay in the CPU
        cache, which makes this several times faster than one big array)."""
        texts = texts if isinstance(texts, Sequence) else list(texts)
        sigs = np.full((len(texts), self.num_perm), MERSENNE_61, dtype=np.uint64)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(texts), desc="MinHash", unit="doc", leave=False)
        pend_h: list[np.ndarray] = []
        pend_doc: list[int] = []
        pending = 0

        def flush() -> None:
            nonlocal pending
            if not pend_h:
                return
            hashes = np.concatenate(pend_h)
            lengths = np.array([h.size for h in pend_h])
            docs = np.repeat(np.array(pend_doc), lengths)
            with np.errstate(over="ignore"):
                x = _mod61(hashes)
            for s in range(0, x.size, chunk):
                xs, ds = x[s : s + chunk], docs[s : s + chunk]
                values = _permute(xs, self.a, self.b)
                starts = np.flatnonzero(np.r_[True, ds[1:] != ds[:-1]])
                mins = np.minimum.reduceat(values, starts, axis=0)
                rows = ds[starts]  # distinct within a slice: docs are contiguous
                sigs[rows] = np.minimum(sigs[rows], mins)
            if bar is not None:
                bar.update(len(pend_h))
            pend_h.clear()
            pend_doc.clear()
            pending = 0

        for i, t in enumerate(texts):
            h = self.shingle_hashes(t)
            if h.size:
                pend_h.append(h)
                pend_doc.append(i)
                pending += h.size
                if pending >= 16 * chunk:
                    flush()
            elif bar is not None:
                bar.update(1)
        flush()
        if bar is not None:
            bar.close()
        return sigs

    @staticmethod
    def similarity(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
        """Estimated Jaccard similarity: the fraction of equal signature entries."""
        sig_a, sig_b = np.asarray(sig_a), np.asarray(sig_b)
        if sig_a.shape != sig_b.shape:
            raise ValueError(f"signatures differ in shape: {sig_a.shape} vs {sig_b.shape}")
        return float(np.mean(sig_a == sig_b))


def jaccard(a: Iterable, b: Iterable) -> float:
    """Exact Jaccard similarity ``|A ∩ B| / |A ∪ B|`` of two sets (1.0 for two empty sets)."""
    a, b = set(a), set(b)
    union = len(a | b)
    return 1.0 if union == 0 else len(a & b) / union


# --------------------------------------------------------------------------------------
# Locality-sensitive hashing
# --------------------------------------------------------------------------------------


def _integral(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoidal rule (numpy renamed ``trapz`` to ``trapezoid``; this works with both)."""
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


@functools.lru_cache(maxsize=64)
def optimal_bands(threshold: float, num_perm: int, *, fp_weight: float = 0.5,
                  fn_weight: float = 0.5) -> tuple[int, int]:
    """Bands ``b`` and rows ``r`` (``b * r <= num_perm``) that best separate pairs above and
    below ``threshold``.

    The probability that a pair of similarity ``s`` becomes a candidate is
    ``P(s) = 1 - (1 - s**r)**b``. We minimise ``fp_weight * ∫_0^t P(s) ds + fn_weight *
    ∫_t^1 (1 - P(s)) ds`` -- the areas of false positives below the threshold and false
    negatives above it -- as the ``datasketch`` library does. The curve's steepest point is
    near ``(1/b)**(1/r)``; for 128 permutations and ``t = 0.8`` this gives ``b=9, r=13``.
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold!r}")
    num_perm = validate.integer("num_perm", num_perm, min=1)
    s_lo = np.linspace(0.0, threshold, 201)
    s_hi = np.linspace(threshold, 1.0, 201)
    best, best_err = (1, 1), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = _integral(1 - (1 - s_lo**r) ** b, s_lo)
            fn = _integral((1 - s_hi**r) ** b, s_hi)
            err = fp_weight * fp + fn_weight * fn
            if err < best_err - 1e-15:
                best, best_err = (b, r), err
    return best


class LSH:
    """Banding index over MinHash signatures: texts that agree on all ``rows`` entries of at
    least one of ``num_bands`` bands are candidate pairs.

    >>> lsh = LSH.for_threshold(0.8, num_perm=128)
    >>> lsh.num_bands, lsh.rows, round(lsh.threshold, 3)
    (9, 13, 0.844)
    """

    #: a bucket with more members than this links each member to the bucket's first member
    #: only (instead of to every other member), so one huge bucket cannot yield ~n**2 pairs
    MAX_BUCKET = 256

    def __init__(self, num_bands: int, rows: int) -> None:
        num_bands = validate.integer("num_bands", num_bands, min=1)
        rows = validate.integer("rows", rows, min=1)
        self.num_bands, self.rows = num_bands, rows
        rng = np.random.default_rng(0x5EED)
        self._mult = rng.integers(1, 2**63, size=rows, dtype=np.uint64) | np.uint64(1)

    @classmethod
    def for_threshold(cls, threshold: float, num_perm: int, *, fp_weight: float = 0.5,
                      fn_weight: float = 0.5) -> LSH:
        """The banding :func:`optimal_bands` picks for ``threshold`` and ``num_perm``."""
        return cls(*optimal_bands(threshold, num_perm, fp_weight=fp_weight,
                                  fn_weight=fn_weight))

    def __repr__(self) -> str:
        return (f"LSH(num_bands={self.num_bands}, rows={self.rows}, "
                f"threshold≈{self.threshold:.3f})")

    @property
    def threshold(self) -> float:
        """``(1/b)**(1/r)``: roughly where the S-curve crosses 1/2 (its steepest point)."""
        return (1 / self.num_bands) ** (1 / self.rows)

    def probability(self, s: float | np.ndarray) -> float | np.ndarray:
        """Probability that a pair of Jaccard similarity ``s`` becomes a candidate."""
        return 1 - (1 - np.asarray(s, dtype=float) ** self.rows) ** self.num_bands

    def _band_keys(self, band: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return _mix64((band * self._mult).sum(axis=1, dtype=np.uint64))

    def candidate_pairs(self, signatures: np.ndarray,
                        skip: np.ndarray | None = None) -> np.ndarray:
        """The pairs ``(i, j)``, ``i < j``, that share a bucket in some band: ``(m, 2)`` int64,
        sorted and unique. Rows where ``skip`` is true take no part. A bucket of more than
        ``MAX_BUCKET`` members yields only the pairs of its first member with each other one
        (enough to cluster them, without ~n**2 pairs)."""
        sigs = np.asarray(signatures)
        if sigs.ndim != 2 or sigs.shape[1] < self.num_bands * self.rows:
            raise ValueError(f"need signatures of shape (n, >= {self.num_bands * self.rows}), "
                             f"got {sigs.shape}")
        index = np.arange(sigs.shape[0], dtype=np.int64)
        if skip is not None:
            index = index[~np.asarray(skip, dtype=bool)]
            sigs = sigs[index]
        pairs = []
        for k in range(self.num_bands):
            keys = self._band_keys(sigs[:, k * self.rows : (k + 1) * self.rows])
            order = np.argsort(keys, kind="stable")
            sk = keys[order]
            bounds = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1], True])
            sizes = np.diff(bounds)
            for start, size in zip(bounds[:-1][sizes > 1], sizes[sizes > 1]):
                members = np.sort(index[order[start : start + size]])
                if size <= self.MAX_BUCKET:
                    i, j = np.triu_indices(size, k=1)
                    pairs.append(np.stack([members[i], members[j]], axis=1))
                else:
                    pairs.append(np.stack([np.full(size - 1, members[0]), members[1:]], axis=1))
        if not pairs:
            return np.zeros((0, 2), dtype=np.int64)
        return np.unique(np.concatenate(pairs), axis=0)


def near_duplicates(texts: Sequence[str], threshold: float = 0.8, num_perm: int = 128,
                    ngram: int = 5, seed: int = 0, *, shingle: str = "word",
                    verify: bool = True, progress: bool = False) -> list[int]:
    """Indices of texts to drop as near-duplicates of an earlier text (sorted).

    Signatures come from :class:`MinHash` (``num_perm``, ``ngram``, ``seed``, ``shingle``);
    :func:`near_duplicates_from_signatures` finds the pairs and picks what to drop: the first
    text of each group survives. Empty texts (no shingles) are never dropped here (exact
    deduplication handles them).
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold!r}")
    mh = MinHash(num_perm=num_perm, ngram=ngram, seed=seed, shingle=shingle)
    return near_duplicates_from_signatures(mh.signatures(texts, progress=progress), threshold,
                                           verify=verify)


def near_duplicates_from_signatures(signatures: np.ndarray, threshold: float = 0.8, *,
                                    verify: bool = True) -> list[int]:
    """Indices to drop, given the ``(n, num_perm)`` MinHash signatures of ``n`` texts in order.

    Candidates come from :class:`LSH` with :func:`optimal_bands` for ``threshold``. With
    ``verify`` (the default) a candidate pair counts only if its estimated Jaccard similarity
    is at least ``threshold``; since that check removes the false positives, the banding is
    chosen for recall (false negatives weigh 0.9, false positives 0.1: for 0.8 and 128
    permutations ``b=14, r=9``, which makes a candidate of 99.9% of pairs at similarity 0.9
    and of 2.7% of pairs at 0.5). Without ``verify`` every candidate pair counts and the
    banding weighs both errors equally (``b=9, r=13``).

    Then, in index order, a text is dropped when it is similar to an earlier text that is
    kept: the first text of each group survives, and a text similar only to dropped texts
    survives too. Rows of all ``2**61 - 1`` (empty texts) are never paired.
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold!r}")
    sigs = np.asarray(signatures)
    if sigs.ndim != 2:
        raise ValueError(f"signatures must have shape (n, num_perm), got {sigs.shape}")
    empty = sigs[:, 0] == MERSENNE_61  # the minimum of a non-empty set is < p
    weights = {"fp_weight": 0.1, "fn_weight": 0.9} if verify else {}
    lsh = LSH.for_threshold(threshold, sigs.shape[1], **weights)
    pairs = lsh.candidate_pairs(sigs, skip=empty)
    if verify and len(pairs):
        sim = np.empty(len(pairs))
        for s in range(0, len(pairs), 65_536):
            p = pairs[s : s + 65_536]
            sim[s : s + 65_536] = (sigs[p[:, 0]] == sigs[p[:, 1]]).mean(axis=1)
        pairs = pairs[sim >= threshold]
    order = np.lexsort((pairs[:, 0], pairs[:, 1]))  # by j, then i
    drop = np.zeros(sigs.shape[0], dtype=bool)
    for i, j in pairs[order].tolist():
        if not drop[i]:  # i < j is final already: all its own pairs came earlier
            drop[j] = True
    return np.flatnonzero(drop).tolist()
