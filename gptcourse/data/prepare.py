"""From a text source to token shards: load, clean, deduplicate, tokenize, write.

The pipeline behind ``gptcourse prepare`` (lesson 06), built on Hugging Face ``datasets`` so the
same code handles a 20 KB story and a many-gigabyte crawl (Arrow tables memory-mapped from disk,
``Dataset.map(num_proc=N)`` for the parallel steps):

1. :func:`load_documents` -- a ``datasets.Dataset`` with a ``text`` column, one row per
   document, from a registered corpus (``"tinyshakespeare"``), the generated ``"stories"``,
   local ``.txt``/``.jsonl``/``.json``/``.parquet``/``.csv`` files, or a hub dataset
   (``"hf:owner/name[:config]"``);
2. :func:`clean_dataset` -- :func:`~gptcourse.data.clean.normalize` every text, drop empty
   ones, apply a :class:`~gptcourse.data.clean.QualityFilter` and a
   :class:`~gptcourse.data.clean.Blocklist`, then exact and near-duplicate removal
   (:mod:`~gptcourse.data.dedup`); a :class:`Report` counts what each step dropped;
3. :func:`tokenize_to_shards` -- tokenize in parallel, split documents into train/val by a
   seeded hash of their text, and write ``{split}_{k:06d}.bin`` shards plus ``meta.json``
   with :class:`~gptcourse.data.shards.ShardWriter`;
4. :func:`prepare` -- all of it, and tokenizers trained on the cleaned training documents
   (``"bpe:N"``, ``"char"``).

**Layout of the token stream.** Each document is encoded on its own (``encode_ordinary``: a
literal ``<|endoftext|>`` inside a text is ordinary text) and preceded by the tokenizer's
end-of-text id, so a model learns where documents start and every document is conditioned on
the same "fresh start" token, which is also how generation begins from nothing (nanoGPT's
OpenWebText script appends it *after* each document instead; either way exactly one separates
two documents). A tokenizer without one (``CharTokenizer``)
gets the tokens of ``"\\n\\n"`` *between* documents instead.

**Caches.** ``datasets`` writes Arrow files for every step; they go to a temporary folder
(inside ``out_dir`` for :func:`prepare`, deleted when it finishes), never to ``~/.cache``,
and nothing here touches the network except a ``"hf:"`` source.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import hashlib
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import validate
from .clean import DEFAULT_BLOCKLIST, Blocklist, QualityFilter, normalize
from .dedup import MinHash, canonical_key, near_duplicates_from_signatures
from .shards import META, ShardError, ShardWriter, dtype_for

if TYPE_CHECKING:  # pragma: no cover
    from datasets import Dataset, IterableDataset

    from ..tokenizer import Tokenizer

__all__ = [
    "CORPUS_DOCUMENTS",
    "Report",
    "SourceError",
    "clean_dataset",
    "load_documents",
    "prepare",
    "split_mask",
    "tokenize_to_shards",
]


class SourceError(ValueError):
    """A text source is unknown, unreachable or not usable as documents."""


# --------------------------------------------------------------------------------------
# Helpers: caches, progress bars, columns
# --------------------------------------------------------------------------------------

_SESSION_CACHE: Path | None = None


def _session_cache() -> Path:
    """A temporary ``datasets`` cache for this process, removed when it exits."""
    global _SESSION_CACHE
    if _SESSION_CACHE is None or not _SESSION_CACHE.is_dir():
        _SESSION_CACHE = Path(tempfile.mkdtemp(prefix="gptcourse-datasets-"))
        atexit.register(shutil.rmtree, _SESSION_CACHE, ignore_errors=True)
    return _SESSION_CACHE


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Turn ``datasets``' progress bars off inside the block when ``enabled`` is false."""
    import datasets

    was_on = not datasets.are_progress_bars_disabled()
    if was_on and not enabled:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_on and not enabled:
            datasets.enable_progress_bars()


def _column(ds: Dataset, name: str) -> np.ndarray:
    """One column as a numpy array (respecting a ``select``-ed order)."""
    import pyarrow as pa

    col = ds.with_format("arrow")[name]
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col.to_numpy(zero_copy_only=False)


def _num_proc(num_proc: int | None, ds: Dataset) -> int:
    """``num_proc`` as given (at most one per document), or a guess: one process per ~4 MB of
    text, up to the CPU count (below that, starting processes costs more than it saves)."""
    n = len(ds)
    if num_proc is None:
        import pyarrow.compute as pc

        chars = pc.sum(pc.utf8_length(ds.with_format("arrow")["text"])).as_py() or 0
        num_proc = min(os.cpu_count() or 1, max(1, chars // 4_000_000))
    num_proc = validate.integer("num_proc", num_proc, min=1)
    return max(1, min(num_proc, n))


def _fingerprint() -> str:
    # a fresh fingerprint: no hashing of the (possibly big) function, no stale cache reuse
    return uuid.uuid4().hex


# --------------------------------------------------------------------------------------
# 1. Loading documents
# --------------------------------------------------------------------------------------

#: How the registered text corpora are cut into documents by default (``sample_by``).
CORPUS_DOCUMENTS: dict[str, str] = {
    "tinyshakespeare": "paragraph",  # a speech: "NAME:\nlines..."
    "the-verdict": "paragraph",
    "sms-spam": "line",  # one message per line, without its ham/spam label
}
_SAMPLE_BY = ("paragraph", "line", "document")
_EXTENSIONS = {
    ".txt": "text", ".text": "text", ".md": "text",
    ".jsonl": "json", ".json": "json", ".ndjson": "json",
    ".parquet": "parquet", ".csv": "csv",
}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".lz4")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def _split_text(text: str, sample_by: str) -> list[str]:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if sample_by == "document":
        pieces = [text]
    elif sample_by == "line":
        pieces = text.split("\n")
    else:
        pieces = _BLANK_LINE.split(text)
    return [p for p in pieces if p.strip()]


def _file_kind(path: str) -> str | None:
    name = path.lower()
    for c in _COMPRESSION:
        if name.endswith(c):
            name = name[: -len(c)]
    return _EXTENSIONS.get(os.path.splitext(name)[1])


def _local_files(source: str) -> list[str] | None:
    """The data files a local path, folder or glob names (None when it names nothing)."""
    p = Path(source).expanduser()
    if p.is_file():
        return [str(p)]
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*")
                       if f.is_file() and _file_kind(f.name) is not None
                       and not any(part.startswith(".") for part in f.relative_to(p).parts))
        if not files:
            kinds = ", ".join(sorted(_EXTENSIONS))
            raise SourceError(f"folder {p} holds no data files (looked for {kinds}, "
                              "possibly compressed)")
        return files
    if glob.has_magic(source):
        files = sorted(f for f in glob.glob(os.path.expanduser(source), recursive=True)
                       if os.path.isfile(f))
        if not files:
            raise SourceError(f"the pattern {source!r} matches no files")
        return files
    return None


def _decode_error(files: list[str], encoding: str) -> str | None:
    """Where the first of ``files`` stops being valid ``encoding`` (read only after a failure:
    it reads the files again, decompressing as ``datasets`` does)."""
    import codecs

    import fsspec

    for file in files:
        decoder = codecs.getincrementaldecoder(encoding)()
        done = 0
        with fsspec.open(file, "rb", compression="infer") as f:
            while block := f.read(1 << 20):
                try:
                    decoder.decode(block)
                except UnicodeDecodeError as err:
                    bad = block[err.start:err.start + 4]
                    return (f"{file} is not valid {encoding}: byte {done + err.start:,} is "
                            f"{bad!r} ({err.reason})")
                done += len(block)
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError as err:
                return f"{file} is not valid {encoding}: it ends inside a character ({err.reason})"
    return None


def _load_files(files: list[str], *, sample_by: str | None, streaming: bool,
                cache_dir: Path, encoding: str = "utf-8") -> Dataset | IterableDataset:
    import codecs

    from datasets import load_dataset
    from datasets.exceptions import DatasetGenerationError

    try:
        codecs.lookup(encoding)
    except LookupError:
        raise SourceError(f"unknown encoding {encoding!r}; use e.g. utf-8, latin-1 or "
                          "cp1252") from None
    empty = [f for f in files if os.path.getsize(f) == 0]
    if len(empty) == len(files):
        listed = ", ".join(empty[:3]) + (f" and {len(empty) - 3} more" if len(empty) > 3 else "")
        raise SourceError(f"{listed} {'is' if len(empty) == 1 else 'are'} empty (0 bytes): "
                          "there is no text to prepare")
    kinds = {_file_kind(f) for f in files}
    if None in kinds:
        bad = next(f for f in files if _file_kind(f) is None)
        raise SourceError(f"cannot tell the format of {bad}: use one of "
                          f"{', '.join(sorted(_EXTENSIONS))} (optionally compressed)")
    if len(kinds) > 1:
        raise SourceError(f"the files mix formats ({', '.join(sorted(kinds))}); "
                          "prepare one format at a time")
    kind = kinds.pop()
    kwargs: dict[str, Any] = {}
    if kind == "text":
        kwargs["sample_by"] = sample_by or "paragraph"
    elif sample_by is not None:
        raise SourceError(f"sample_by applies to text files, not to {kind} files")
    if kind != "parquet":
        kwargs["encoding"] = encoding
    elif encoding.lower().replace("_", "-") not in ("utf-8", "utf8"):
        raise SourceError("encoding applies to text, json and csv files, not to parquet")
    try:
        return load_dataset(kind, data_files=files, split="train", streaming=streaming,
                            cache_dir=str(cache_dir), **kwargs)
    except DatasetGenerationError as err:
        raise _source_error(err, files, encoding) from None


def _source_error(err: Exception, files: list[str], encoding: str) -> SourceError:
    """What ``datasets``' ``DatasetGenerationError`` while reading ``files`` was about."""
    cause = err.__cause__ or err.__context__ or err
    if isinstance(cause, UnicodeDecodeError):
        where = _decode_error(files, encoding) or f"a file is not valid {encoding}"
        return SourceError(f"{where}; pass the file's encoding (CLI: --encoding latin-1, or "
                           "cp1252 for Windows text) or convert it to UTF-8")
    more = " and the other files" if len(files) > 1 else ""
    return SourceError(f"cannot read {files[0]}{more}: {type(cause).__name__}: {cause}")


def _load_corpus(name: str, sample_by: str | None) -> Dataset:
    from datasets import Dataset

    from .. import corpora

    if name not in CORPUS_DOCUMENTS:
        raise SourceError(
            f"the registered corpus {name!r} is not a text corpus this pipeline can split into "
            f"documents; text corpora: {', '.join(sorted(CORPUS_DOCUMENTS))}")
    sample_by = sample_by or CORPUS_DOCUMENTS[name]
    text = corpora.load_text(name)
    if name == "sms-spam":
        if sample_by != "line":
            raise SourceError("sms-spam is one message per line: use sample_by='line'")
        docs = [line.split("\t", 1)[-1] for line in _split_text(text, "line")]
        return Dataset.from_dict({"text": docs})
    return Dataset.from_dict({"text": _split_text(text, sample_by)})


def _load_stories(source: str, seed: int) -> Dataset:
    from datasets import Dataset

    from .. import stories

    count = source.partition(":")[2]
    if count:
        try:
            n = int(count.replace("_", ""))
        except ValueError:
            raise SourceError(f"{source!r}: the number of stories must be an int, "
                              "e.g. 'stories:20000'") from None
    else:
        n = stories.DEFAULT_STORIES
    items = stories.generate(n, seed)
    return Dataset.from_dict({"text": [s.text for s in items],
                              "logprob": [float(s.logprob) for s in items]})


def _load_hub(spec: str, *, split: str, streaming: bool,
              cache_dir: Path) -> Dataset | IterableDataset:
    from datasets import load_dataset

    name, _, config = spec.partition(":")
    if not name or name.count("/") > 1:
        raise SourceError(f"hub datasets are named 'hf:owner/name' or 'hf:owner/name:config', "
                          f"got 'hf:{spec}'")
    try:
        return load_dataset(name, config or None, split=split, streaming=streaming,
                            cache_dir=str(cache_dir))
    except ConnectionError as err:
        offline = os.environ.get("HF_DATASETS_OFFLINE") or os.environ.get("HF_HUB_OFFLINE")
        why = ("offline mode is on (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE)" if offline
               else "the Hugging Face hub could not be reached")
        raise SourceError(
            f"cannot load the hub dataset {name!r}: {why} ({err}). On a machine without "
            "internet, download its data files (parquet/jsonl) elsewhere and pass their local "
            "path or folder instead") from err
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as err:
        raise SourceError(
            f"cannot load the hub dataset {name!r}{f' (config {config!r})' if config else ''}, "
            f"split {split!r}: {err}. Only datasets made of data files (parquet, jsonl, csv, "
            "text) load: `datasets` no longer runs dataset scripts") from err


def load_documents(source: str | os.PathLike, *, split: str = "train", streaming: bool = False,
                   text_column: str = "text", sample_by: str | None = None, seed: int = 0,
                   cache_dir: str | os.PathLike | None = None,
                   encoding: str = "utf-8") -> Dataset | IterableDataset:
    """Documents from ``source`` as a ``datasets.Dataset`` with a ``text`` column.

    ``source`` is, in this order of precedence:

    * a registered text corpus of :mod:`gptcourse.corpora` (``"tinyshakespeare"`` and
      ``"the-verdict"`` one document per paragraph, ``"sms-spam"`` one message per line without
      its label; ``sample_by`` may override the first two);
    * ``"stories"`` or ``"stories:N"`` -- ``N`` (default ``stories.DEFAULT_STORIES``) stories
      from :mod:`gptcourse.stories` with ``seed``, with a ``logprob`` column (the exact natural
      log-probability of each story, so prepared shards know the entropy floor);
    * ``"hf:owner/name"`` or ``"hf:owner/name:config"`` -- a Hugging Face hub dataset made of
      data files (needs the network), its ``split``;
    * a local file, folder (every data file inside, recursively) or glob pattern of ``.txt``
      (cut by ``sample_by``: ``"paragraph"`` (default), ``"line"`` or ``"document"``, one per
      file), ``.jsonl``/``.json``, ``.parquet`` or ``.csv`` files (optionally compressed),
      read as ``encoding`` (default UTF-8; e.g. ``"latin-1"``). A file that is not valid in
      it, or sources made only of empty files, are a :class:`SourceError` naming the file.

    ``text_column`` names the column holding the text; it is renamed ``text``. With
    ``streaming=True`` the result is an ``IterableDataset`` (read lazily). Arrow files go to
    ``cache_dir`` (default: a temporary folder removed when the process exits).
    """
    from datasets import Dataset, IterableDataset

    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a name or a path, got {type(source).__name__}")
    if sample_by is not None and sample_by not in _SAMPLE_BY:
        raise ValueError(f"sample_by must be one of {_SAMPLE_BY} or None, got {sample_by!r}")
    src = os.fspath(source)
    cache = Path(cache_dir) if cache_dir is not None else _session_cache()
    from .. import corpora

    if src.startswith("hf:"):
        ds = _load_hub(src[3:], split=split, streaming=streaming, cache_dir=cache)
    elif src == "stories" or src.startswith("stories:"):
        ds = _load_stories(src, seed)
    elif src in corpora.REGISTRY:
        ds = _load_corpus(src, sample_by)
    else:
        files = _local_files(src)
        if files is None:
            raise SourceError(
                f"unknown source {src!r}: not a registered text corpus "
                f"({', '.join(sorted(CORPUS_DOCUMENTS))}), not 'stories[:N]', not "
                "'hf:owner/name[:config]', and no such file, folder or glob")
        ds = _load_files(files, sample_by=sample_by, streaming=streaming, cache_dir=cache,
                         encoding=encoding)
    names = list(ds.column_names or []) if ds.column_names is not None else None
    if names is not None and text_column not in names:
        raise SourceError(f"{src} has no column {text_column!r}; its columns are "
                          f"{', '.join(names)}: pass text_column=...")
    if text_column != "text":
        if names is not None and "text" in names:
            ds = ds.remove_columns(["text"])
        ds = ds.rename_column(text_column, "text")
    if streaming and isinstance(ds, Dataset):
        ds = ds.to_iterable_dataset()
    assert isinstance(ds, (Dataset, IterableDataset))
    return ds


# --------------------------------------------------------------------------------------
# 2. Cleaning
# --------------------------------------------------------------------------------------


@dataclass
class Report:
    """What cleaning did: documents and characters in and out, and per step what it dropped.

    ``steps`` lists ``(step, documents dropped, characters dropped)`` in the order the steps
    ran; a document is counted by the first step that drops it, so
    ``documents_in == documents_out + sum(dropped)``. Dropped and kept characters are counted
    after normalisation: ``characters_normalized == characters_out + sum(dropped chars)``.
    """

    documents_in: int = 0
    characters_in: int = 0
    characters_normalized: int = 0
    documents_out: int = 0
    characters_out: int = 0
    steps: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def dropped(self) -> dict[str, int]:
        """Documents dropped per step."""
        return {name: docs for name, docs, _ in self.steps}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (stored as ``report`` in ``meta.json``)."""
        return {
            "documents_in": self.documents_in, "characters_in": self.characters_in,
            "characters_normalized": self.characters_normalized,
            "documents_out": self.documents_out, "characters_out": self.characters_out,
            "dropped": {name: {"documents": d, "characters": c} for name, d, c in self.steps},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        steps = [(k, v["documents"], v["characters"]) for k, v in d.get("dropped", {}).items()]
        return cls(d["documents_in"], d["characters_in"], d["characters_normalized"],
                   d["documents_out"], d["characters_out"], steps)

    def table(self, all_steps: bool = False) -> str:
        """A readable table of the steps; steps that dropped nothing are listed in one line
        below it unless ``all_steps``."""
        rows = [("input", f"{self.documents_in:,}", f"{self.characters_in:,}", "100%")]
        if self.characters_normalized != self.characters_in:
            rows.append(("after normalize", f"{self.documents_in:,}",
                         f"{self.characters_normalized:,}", ""))
        idle = [name for name, docs, _ in self.steps if not docs]
        for name, docs, chars in self.steps:
            if not docs and not all_steps:
                continue
            share = f"{docs / self.documents_in:.1%}" if self.documents_in else "-"
            rows.append((f"  - {name}", f"-{docs:,}" if docs else "0",
                         f"-{chars:,}" if chars else "0", share))
        rows.append(("output", f"{self.documents_out:,}", f"{self.characters_out:,}",
                     f"{self.documents_out / self.documents_in:.1%}" if self.documents_in
                     else "-"))
        head = ("step", "documents", "characters", "of input")
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
        fmt = [str.ljust, str.rjust, str.rjust, str.rjust]
        lines = ["  ".join(f(c, w) for f, c, w in zip(fmt, r, widths)).rstrip()
                 for r in [head, *rows]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        if idle and not all_steps:
            lines.append(f"(nothing dropped by: {', '.join(idle)})")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


class _CleanBatch:
    """``Dataset.map`` function: normalize, judge (first failing rule), exact-dedup key."""

    def __init__(self, normalize_text: bool, quality: QualityFilter | None,
                 blocklist: Blocklist | None, exact: bool, has_logprob: bool) -> None:
        self.normalize_text, self.quality, self.blocklist = normalize_text, quality, blocklist
        self.exact, self.has_logprob = exact, has_logprob

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        texts, reasons, keys, raw, chars = [], [], [], [], []
        logprob = batch.get("logprob") if self.has_logprob else None
        for k, t in enumerate(batch["text"]):
            t = t or ""
            raw.append(len(t))
            n = normalize(t) if self.normalize_text else t
            if logprob is not None and n != t:
                logprob[k] = None  # the probability was of the original text
            reason = None if n.strip() else "empty"
            if reason is None and self.quality is not None:
                reason = self.quality(n)
            if reason is None and self.blocklist is not None:
                reason = self.blocklist(n)
            texts.append(n)
            chars.append(len(n))
            reasons.append(reason)
            keys.append(canonical_key(n) if self.exact and reason is None else None)
        out = {"text": texts, "_reason": reasons, "_key": keys, "_raw_chars": raw,
               "_chars": chars}
        if logprob is not None:
            out["logprob"] = logprob
        return out


class _SignatureBatch:
    """``Dataset.map`` function: MinHash signatures as a fixed-size list column."""

    def __init__(self, minhash: MinHash) -> None:
        self.minhash = minhash

    def __call__(self, batch):
        import pyarrow as pa

        sigs = self.minhash.signatures(batch.column("text").to_pylist())
        flat = pa.array(sigs.reshape(-1), type=pa.uint64())
        return pa.table({"_sig": pa.FixedSizeListArray.from_arrays(flat, sigs.shape[1])})


_GOPHER = QualityFilter()


def clean_dataset(ds: Dataset, *, quality: QualityFilter | None = _GOPHER,
                  blocklist: Blocklist | Sequence[str] | str | os.PathLike | None
                  = DEFAULT_BLOCKLIST,
                  exact_dedup: bool = True, near_dedup: bool = True, threshold: float = 0.8,
                  num_perm: int = 128, ngram: int = 5, seed: int = 0,
                  normalize_text: bool = True, num_proc: int | None = 1,
                  batch_size: int = 1000, progress: bool = True) -> tuple[Dataset, Report]:
    """Normalize, filter and deduplicate the ``text`` column of ``ds``.

    Steps, in order (a document is dropped by the first one it fails): texts are normalized
    (:func:`~gptcourse.data.clean.normalize`; ``normalize_text=False`` keeps them as they are);
    ``"empty"`` drops blank ones; ``quality`` (a :class:`~gptcourse.data.clean.QualityFilter`,
    or ``None`` for none) drops by its rules; ``blocklist`` (a
    :class:`~gptcourse.data.clean.Blocklist`, a list of terms, a file of terms, ``"default"``
    or ``None``) drops texts with a listed word; ``exact_dedup`` keeps the first of texts with
    equal :func:`~gptcourse.data.dedup.dedup_key`; ``near_dedup`` drops near-duplicates of
    earlier kept texts (:func:`~gptcourse.data.dedup.near_duplicates` with ``threshold``,
    ``num_perm``, ``ngram``, ``seed``). Normalising, judging and MinHash signatures run in
    ``num_proc`` processes (``None``: one per ~4 MB of text, up to the CPU count).

    Returns the kept documents in their original order (with their other columns; a
    ``logprob`` becomes null for a text that normalisation changed) and a :class:`Report`.
    """
    from datasets import Dataset, Value

    if not isinstance(ds, Dataset):
        raise TypeError(f"clean_dataset takes a datasets.Dataset, got {type(ds).__name__}; "
                        "materialise a streamed dataset first (prepare does this)")
    if "text" not in ds.column_names:
        raise ValueError(f"the dataset has no 'text' column (columns: {ds.column_names})")
    blocklist = Blocklist.coerce(blocklist)
    num_proc = _num_proc(num_proc, ds) if len(ds) else 1
    report = Report(documents_in=len(ds))
    if len(ds) == 0:
        return ds, report
    features = ds.features.copy()  # explicit types: a batch of all-None reasons is not "null"
    features.update({"text": Value("string"), "_reason": Value("string"),
                     "_key": Value("string"), "_raw_chars": Value("int64"),
                     "_chars": Value("int64")})
    with _progress_bars(progress):
        judged = ds.map(
            _CleanBatch(normalize_text, quality, blocklist, exact_dedup,
                        "logprob" in ds.column_names),
            batched=True, batch_size=batch_size, num_proc=num_proc if num_proc > 1 else None,
            features=features, new_fingerprint=_fingerprint(), load_from_cache_file=False,
            desc="clean")
    reasons = judged.with_format("arrow")["_reason"].to_pylist()
    chars = _column(judged, "_chars").astype(np.int64)
    report.characters_in = int(_column(judged, "_raw_chars").sum())
    report.characters_normalized = int(chars.sum())
    reason_of: list[str | None] = list(reasons)

    if exact_dedup:
        keys = judged.with_format("arrow")["_key"].to_pylist()
        seen: set[str] = set()
        for i, k in enumerate(keys):
            if reason_of[i] is None:
                if k in seen:
                    reason_of[i] = "exact_duplicate"
                else:
                    seen.add(k)
    if near_dedup:
        alive = np.array([r is None for r in reason_of])
        idx = np.flatnonzero(alive)
        if idx.size > 1:
            mh = MinHash(num_perm=num_perm, ngram=ngram, seed=seed)
            subset = judged.select(idx).select_columns(["text"])
            if num_proc > 1:
                with _progress_bars(progress):
                    sig_ds = subset.with_format("arrow").map(
                        _SignatureBatch(mh), batched=True, batch_size=batch_size,
                        num_proc=min(num_proc, idx.size), remove_columns=["text"],
                        new_fingerprint=_fingerprint(), load_from_cache_file=False,
                        desc="minhash")
                col = sig_ds.data.column("_sig").combine_chunks()
                sigs = col.flatten().to_numpy().reshape(len(idx), num_perm)
            else:
                sigs = mh.signatures(subset["text"], progress=progress)
            for j in near_duplicates_from_signatures(sigs, threshold):
                reason_of[idx[j]] = "near_duplicate"

    order = ["empty", *(quality.rules() if quality is not None else [])]
    if blocklist is not None:
        order.append("blocklist")
    if exact_dedup:
        order.append("exact_duplicate")
    if near_dedup:
        order.append("near_duplicate")
    reason_arr = np.array([r if r is not None else "" for r in reason_of], dtype=object)
    for name in order:
        hit = reason_arr == name
        report.steps.append((name, int(hit.sum()), int(chars[hit].sum())))
    unknown = set(reason_arr.tolist()) - set(order) - {""}
    for name in sorted(unknown):  # a custom quality filter's own reasons
        hit = reason_arr == name
        report.steps.append((name, int(hit.sum()), int(chars[hit].sum())))
    keep = np.flatnonzero(reason_arr == "")
    report.documents_out = int(keep.size)
    report.characters_out = int(chars[keep].sum())
    out = judged.select(keep).remove_columns(["_reason", "_key", "_raw_chars", "_chars"])
    return out, report


# --------------------------------------------------------------------------------------
# 3. Tokenizing into shards
# --------------------------------------------------------------------------------------


def _unit_hash(text: str, seed: int) -> float:
    """A number in [0, 1) that depends only on ``(seed, text)``."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8,
                             key=str(int(seed)).encode()).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def _assign(u: np.ndarray, val_fraction: float) -> np.ndarray:
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction!r}")
    is_val = u < val_fraction
    if val_fraction > 0:
        if u.size < 2:
            raise ValueError(f"a validation split needs at least 2 documents, got {u.size}; "
                             "pass val_fraction=0 or use more data")
        if not is_val.any():  # tiny corpora: at least one validation document ...
            is_val[np.argmin(u)] = True
        if is_val.all():  # ... and at least one training document
            is_val[np.argmax(u)] = False
    return is_val


def split_mask(texts: Sequence[str], val_fraction: float, seed: int = 0) -> np.ndarray:
    """Which documents go to the validation split: ``True`` where ``hash(seed, text) <
    val_fraction``, a deterministic draw that does not depend on the order of the documents,
    on ``num_proc`` or on the other documents (except that a non-zero ``val_fraction`` always
    puts at least one document in each split). Identical texts land in the same split."""
    return _assign(np.array([_unit_hash(t, seed) for t in texts], dtype=np.float64),
                   val_fraction)


def _encode_fn(tok: Tokenizer) -> Callable[[str], list[int]]:
    """The fastest way to encode one document with ``tok`` (ordinary text only).

    tiktoken encodings (also our BPETokenizer handed to tiktoken) encode in Rust. One call per
    document, not ``encode_ordinary_batch``: that spawns a thread-pool future per text, which
    costs more than the encoding of short documents; the parallelism comes from processes.
    """
    from ..tokenizer import BPETokenizer, TiktokenTokenizer

    if isinstance(tok, TiktokenTokenizer):
        return tok.encoding.encode_ordinary
    if isinstance(tok, BPETokenizer):
        try:
            return tok.to_tiktoken().encode_ordinary
        except Exception:  # a pattern tiktoken's regex engine cannot run: pure Python
            return tok.encode_ordinary
    return getattr(tok, "encode_ordinary", tok.encode)


class _EncodeBatch:
    """``Dataset.map`` function (Arrow in, Arrow out): token ids, length and split draw."""

    def __init__(self, tok: Tokenizer, dtype: np.dtype, seed: int) -> None:
        self.tok, self.dtype, self.seed = tok, np.dtype(dtype), seed
        self._encode: Callable[[str], list[int]] | None = None

    def __getstate__(self) -> dict:
        return {"tok": self.tok, "dtype": self.dtype, "seed": self.seed, "_encode": None}

    def __call__(self, batch):
        import itertools

        import pyarrow as pa

        if self._encode is None:
            self._encode = _encode_fn(self.tok)
        texts = batch.column("text").to_pylist()
        encode = self._encode
        try:
            ids = [encode(t) for t in texts]
        except ValueError as err:
            raise ValueError(f"tokenizer {self.tok!r} cannot encode a document: {err}") from err
        lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=self.dtype,
                           count=int(lens.sum()))
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        u = [_unit_hash(t, self.seed) for t in texts]
        return pa.table({
            "_ids": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat)),
            "_u": pa.array(u, type=pa.float64()),
            "_chars": pa.array([len(t) for t in texts], type=pa.int64()),
        })


def _tokenizer_record(tok: Tokenizer, out_dir: Path) -> dict[str, Any]:
    """The ``tokenizer`` entry of ``meta.json``; saves a trained tokenizer as tokenizer.json."""
    from ..tokenizer import TiktokenTokenizer

    if isinstance(tok, TiktokenTokenizer):
        name = tok.name
    elif hasattr(tok, "save"):
        tok.save(out_dir / "tokenizer.json")
        name = "tokenizer.json"
    else:
        name = tok.name
    return {"name": name, "vocab_size": tok.vocab_size, "eot_id": tok.eot_id,
            "kind": type(tok).__name__}


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Fail before any work when ``out_dir`` holds shards and ``overwrite`` is false."""
    if overwrite or not out_dir.exists():
        return
    if (out_dir / META).exists() or any(out_dir.glob("*_[0-9][0-9][0-9][0-9][0-9][0-9].bin")):
        raise ShardError(f"{out_dir} already holds shards; pass overwrite=True "
                         "(CLI: --overwrite) or choose an empty folder")


def tokenize_to_shards(ds: Dataset, tokenizer: Tokenizer | str, out_dir: str | os.PathLike, *,
                       val_fraction: float = 0.1, seed: int = 0, num_proc: int | None = None,
                       shard_tokens: int = 100_000_000, batch_size: int = 1000,
                       overwrite: bool = False, progress: bool = True,
                       meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Tokenize the ``text`` column of ``ds`` and write train/val shards to ``out_dir``.

    Every document is encoded on its own, in ``num_proc`` processes (``Dataset.map``; ``None``:
    one per ~4 MB of text up to the CPU count), ``batch_size`` documents per call. The stream of
    each split is, in document order, ``[eot] doc_1 [eot] doc_2 ... [eot] doc_n`` (``eot`` =
    the tokenizer's end-of-text id) or, without an end-of-text token,
    ``doc_1 SEP doc_2 ... SEP doc_n`` with ``SEP`` the tokens of ``"\\n\\n"``. A document goes to ``val`` when
    :func:`split_mask` says so (seeded hash of its text: the same shards for any ``num_proc``).

    ``tokenizer`` is a :class:`~gptcourse.tokenizer.Tokenizer` or a name for
    :func:`~gptcourse.tokenizer.get_tokenizer`; one that is not a tiktoken encoding is saved as
    ``out_dir/tokenizer.json``. ``meta.json`` records the tokenizer, per-split
    ``split_stats`` (documents, characters, nats: ``-sum(logprob)`` when ``ds`` has a
    ``logprob`` column without nulls, else null) and the keys of ``meta``. Returns the
    metadata (see :class:`~gptcourse.data.shards.ShardWriter`).
    """
    from datasets import Dataset

    from ..tokenizer import Tokenizer, get_tokenizer

    if not isinstance(ds, Dataset):
        raise TypeError(f"tokenize_to_shards takes a datasets.Dataset, got {type(ds).__name__}")
    if "text" not in ds.column_names:
        raise ValueError(f"the dataset has no 'text' column (columns: {ds.column_names})")
    if len(ds) == 0:
        raise ValueError("the dataset has no documents left to tokenize")
    batch_size = validate.integer("batch_size", batch_size, min=1)
    validate.number("val_fraction", val_fraction, min=0, max=1, max_open=True)
    tok = get_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    if not isinstance(tok, Tokenizer):
        raise TypeError(f"tokenizer must be a Tokenizer or a name, got {type(tokenizer).__name__}")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    dtype = dtype_for(tok.vocab_size)
    eot = tok.eot_id
    try:
        sep = np.array([eot] if eot is not None else tok.encode("\n\n"), dtype=np.int64)
    except ValueError as err:
        raise ValueError(f"{tok!r} has no end-of-text token and cannot encode the blank line "
                         f"that separates documents instead: {err}") from err
    before_each = eot is not None
    n_docs = len(ds)
    num_proc = _num_proc(num_proc, ds)

    with _progress_bars(progress):
        encoded = ds.select_columns(["text"]).with_format("arrow").map(
            _EncodeBatch(tok, dtype, seed), batched=True, batch_size=batch_size,
            num_proc=num_proc if num_proc > 1 else None, remove_columns=["text"],
            new_fingerprint=_fingerprint(), load_from_cache_file=False, desc="tokenize")
    is_val = _assign(_column(encoded, "_u"), val_fraction)
    chars = _column(encoded, "_chars").astype(np.int64)
    nats: dict[str, float | None] = {"train": None, "val": None}
    if "logprob" in ds.column_names:
        lp = ds.with_format("arrow")["logprob"]
        if lp.null_count == 0:
            lp = np.asarray(lp.to_numpy(zero_copy_only=False), dtype=np.float64)
            nats = {"train": float(-math.fsum(lp[~is_val])), "val": float(-math.fsum(lp[is_val]))}

    writer = ShardWriter(out_dir, vocab_size=tok.vocab_size, shard_tokens=shard_tokens,
                         overwrite=overwrite)
    record = _tokenizer_record(tok, out_dir)
    splits = ("train", "val") if val_fraction > 0 else ("train",)
    first = dict.fromkeys(splits, True)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_docs, desc="write shards", unit="doc", leave=False)
    with writer:
        doc = 0
        for chunk in encoded.data.column("_ids").chunks:
            offsets = chunk.offsets.to_numpy()
            flat = chunk.values.to_numpy(zero_copy_only=False)
            lens = np.diff(offsets)
            m = lens.size
            chunk_val = is_val[doc : doc + m]
            for split in splits:
                pick = chunk_val if split == "val" else ~chunk_val
                if not pick.any():
                    continue
                token_mask = np.repeat(pick, lens)
                ids = flat[offsets[0] : offsets[-1]][token_mask]
                starts = np.concatenate([[0], np.cumsum(lens[pick])[:-1]])
                ids = np.insert(ids, np.repeat(starts, sep.size), np.tile(sep, starts.size))
                if not before_each and first[split]:
                    ids = ids[sep.size :]  # separators go between documents only
                first[split] = False
                writer.add(split, ids)
            doc += m
            if bar is not None:
                bar.update(m)
        stats = {
            split: {"documents": int(((is_val if split == "val" else ~is_val)).sum()),
                    "characters": int(chars[is_val if split == "val" else ~is_val].sum()),
                    "nats": nats[split]}
            for split in splits
        }
        extra = dict(meta or {})
        extra.update(tokenizer=record, split_stats=stats,
                     layout="eot before each document" if before_each
                     else "separator between documents",
                     val_fraction=val_fraction, split_seed=seed)
        result = writer.finish(**extra)
    if bar is not None:
        bar.close()
    return result


# --------------------------------------------------------------------------------------
# 4. Everything
# --------------------------------------------------------------------------------------

#: Sources whose documents are short and curated: ``quality="auto"`` uses
#: :meth:`QualityFilter.short_documents` for them.
_CURATED = (*CORPUS_DOCUMENTS, "stories")


def _quality_for(source: str, quality: QualityFilter | str | None) -> QualityFilter | None:
    if quality is None or isinstance(quality, QualityFilter):
        return quality
    if quality == "auto":
        curated = source.split(":")[0] in _CURATED
        return QualityFilter.short_documents() if curated else QualityFilter()
    if quality == "gopher":
        return QualityFilter()
    if quality == "short":
        return QualityFilter.short_documents()
    raise ValueError(f"quality must be a QualityFilter, None, 'auto', 'gopher' or 'short', "
                     f"got {quality!r}")


def _bpe_size(spec: str) -> int:
    """N of ``"bpe:N"``."""
    try:
        return int(spec.partition(":")[2].replace("_", ""))
    except ValueError:
        raise ValueError(f"tokenizer {spec!r}: write 'bpe:N' with N the vocabulary size, "
                         "e.g. 'bpe:4096'") from None


def _train_tokenizer(spec: str, train_texts: list[str], all_texts: list[str],
                     progress: bool, max_chars: int) -> Tokenizer:
    from ..tokenizer import ENDOFTEXT, BPETokenizer, CharTokenizer

    if spec == "char":
        # the alphabet of every document (validation text must be encodable too) plus "\n"
        chars: set[str] = {"\n"}
        for t in all_texts:
            chars.update(t)
        return CharTokenizer(chars, name="char")
    vocab_size = _bpe_size(spec)
    text, total = [], 0
    for t in train_texts:  # the first max_chars characters of the training documents
        text.append(t)
        total += len(t)
        if total >= max_chars:
            break
    return BPETokenizer.train(ENDOFTEXT.join(text), vocab_size, special_tokens=[ENDOFTEXT],
                              progress=progress)


def prepare(source: str | os.PathLike, out_dir: str | os.PathLike, *,
            tokenizer: str | Tokenizer = "gpt2", clean: bool = True,
            quality: QualityFilter | str | None = "auto",
            blocklist: Blocklist | Sequence[str] | str | os.PathLike | None = "default",
            exact_dedup: bool = True, near_dedup: bool = True, threshold: float = 0.8,
            num_perm: int = 128, ngram: int = 5, val_fraction: float = 0.1, seed: int = 0,
            split: str = "train", text_column: str = "text", sample_by: str | None = None,
            streaming: bool = False, num_proc: int | None = None,
            max_documents: int | None = None, shard_tokens: int = 100_000_000,
            batch_size: int = 1000, tokenizer_train_chars: int = 20_000_000,
            overwrite: bool = False, verbose: bool = True, progress: bool | None = None,
            encoding: str = "utf-8") -> dict[str, Any]:
    """Load ``source``, clean it, tokenize it and write shards to ``out_dir``; returns the
    metadata (also in ``out_dir/meta.json``) and prints a short summary when ``verbose``.

    * ``source``, ``split``, ``text_column``, ``sample_by``, ``streaming``, ``encoding``: see
      :func:`load_documents` (``seed`` also seeds ``"stories"``); ``max_documents`` keeps the
      first documents only (a streamed source is read no further).
    * ``clean=False`` skips every cleaning step. Otherwise :func:`clean_dataset` runs with
      ``quality`` -- a :class:`QualityFilter`, ``None`` (no quality rules), ``"gopher"``
      (Gopher's web-page thresholds), ``"short"`` (:meth:`QualityFilter.short_documents`) or
      ``"auto"``: ``"short"`` for the built-in corpora and stories, whose documents are short
      by design, ``"gopher"`` for files and hub datasets -- and ``blocklist``,
      ``exact_dedup``, ``near_dedup``, ``threshold``, ``num_perm``, ``ngram``.
    * ``tokenizer``: a name for :func:`~gptcourse.tokenizer.get_tokenizer` (``"gpt2"``, a saved
      ``.json``, ...), a Tokenizer, ``"char"`` (a CharTokenizer of the cleaned documents'
      characters) or ``"bpe:N"`` (a BPETokenizer with vocabulary ``N`` including
      ``<|endoftext|>``, trained on the first ``tokenizer_train_chars`` characters of the
      cleaned *training* documents). Trained tokenizers are saved as ``out_dir/tokenizer.json``.
    * ``val_fraction``, ``seed``, ``num_proc``, ``shard_tokens``, ``batch_size``: see
      :func:`tokenize_to_shards`. ``overwrite`` replaces existing shards in ``out_dir``.
    """
    from datasets import Dataset, IterableDataset
    from datasets.exceptions import DatasetGenerationError

    from ..tokenizer import get_tokenizer

    src = os.fspath(source)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    if max_documents is not None:
        max_documents = validate.integer("max_documents", max_documents, min=1)
    validate.number("val_fraction", val_fraction, min=0, max=1, max_open=True)
    qf = _quality_for(src, quality) if clean else None
    bl = Blocklist.coerce(blocklist) if clean else None
    trained = isinstance(tokenizer, str) and (tokenizer == "char" or tokenizer.startswith("bpe:"))
    if trained:
        if tokenizer != "char":
            _bpe_size(tokenizer)  # a malformed "bpe:N" fails now, not after the cleaning
        tok = None
    else:  # an unknown name fails now too
        tok = get_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    progress = verbose if progress is None else progress
    say = print if verbose else (lambda *a, **k: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".cache-*"):  # the datasets cache of a prepare that was killed
        shutil.rmtree(stale, ignore_errors=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".cache-", dir=out_dir,
                                     ignore_cleanup_errors=True) as cache, \
            _progress_bars(progress):
        load_src = src
        if src == "stories" and max_documents is not None:  # generate no more than needed
            from .. import stories

            load_src = f"stories:{min(max_documents, stories.DEFAULT_STORIES)}"
        ds = load_documents(load_src, split=split, streaming=streaming, text_column=text_column,
                            sample_by=sample_by, seed=seed, cache_dir=cache,
                            encoding=encoding)
        if isinstance(ds, IterableDataset):
            if max_documents is not None:
                ds = ds.take(max_documents)
            stream = ds
            try:  # a streamed source is read only now
                ds = Dataset.from_generator(lambda: iter(stream), cache_dir=cache,
                                            fingerprint=_fingerprint())
            except DatasetGenerationError as err:
                raise _source_error(err, _local_files(src) or [src], encoding) from None
        elif max_documents is not None and max_documents < len(ds):
            ds = ds.select(range(max_documents))
        if clean:
            ds, report = clean_dataset(ds, quality=qf, blocklist=bl, exact_dedup=exact_dedup,
                                       near_dedup=near_dedup, threshold=threshold,
                                       num_perm=num_perm, ngram=ngram, seed=seed,
                                       num_proc=num_proc, batch_size=batch_size,
                                       progress=progress)
        else:
            import pyarrow.compute as pc

            chars = int(pc.sum(pc.utf8_length(ds.with_format("arrow")["text"])).as_py() or 0)
            report = Report(len(ds), chars, chars, len(ds), chars, [])
        if trained:
            texts = list(ds["text"])
            is_val = split_mask(texts, val_fraction, seed) if texts else np.zeros(0, bool)
            train_texts = [t for t, v in zip(texts, is_val) if not v]
            tok = _train_tokenizer(tokenizer, train_texts, texts, progress,
                                   tokenizer_train_chars)
        settings = {
            "clean": clean, "quality": qf.to_dict() if qf is not None else None,
            "blocklist_terms": len(bl) if bl is not None else 0,
            "exact_dedup": clean and exact_dedup, "near_dedup": clean and near_dedup,
            "threshold": threshold, "num_perm": num_perm, "ngram": ngram,
            "sample_by": sample_by, "max_documents": max_documents,
        }
        t_tok = time.perf_counter()
        meta = tokenize_to_shards(ds, tok, out_dir, val_fraction=val_fraction, seed=seed,
                                  num_proc=num_proc, shard_tokens=shard_tokens,
                                  batch_size=batch_size, overwrite=overwrite,
                                  progress=progress,
                                  meta={"source": src, "report": report.to_dict(),
                                        "pipeline": settings})
        seconds = time.perf_counter() - t_tok
    if verbose:
        say(f"prepared {src} -> {out_dir}  ({time.perf_counter() - t0:.1f} s)")
        if clean:
            say(report.table())
        info = meta["tokenizer"]
        say(f"tokenizer {info['name']} (vocab {info['vocab_size']:,}, "
            f"eot {info['eot_id']}), {meta['dtype']}")
        for name, s in meta["splits"].items():
            st = meta["split_stats"][name]
            line = (f"{name:>5}: {st['documents']:,} documents, {st['characters']:,} "
                    f"characters, {s['tokens']:,} tokens in {len(s['shards'])} shard(s)")
            if st["nats"] is not None and s["tokens"]:
                line += f"; entropy floor {st['nats'] / s['tokens']:.4f} nats/token"
            say(line)
        total = sum(s["tokens"] for s in meta["splits"].values())
        say(f"tokenized {total:,} tokens in {seconds:.1f} s ({total / seconds:,.0f} tokens/s)")
    return meta
