"""Token ids on disk: memory-mapped shards plus one JSON metadata file.

A pretraining corpus is tokenized once (``gptcourse prepare``) and read many times, so the ids
are stored the way nanoGPT and most real pipelines do: flat little-endian integer files that
``numpy.memmap`` maps without loading them into memory. A folder holds

* ``{split}_{k:06d}.bin`` -- the ids of split ``split`` (``train``, ``val``, ...), at most
  ``shard_tokens`` per file, ``uint16`` when the vocabulary fits in 65,535 ids else ``uint32``;
* ``meta.json`` -- format, dtype, vocabulary size, and per split the token count and each
  shard's file name, token count and sha256; plus whatever the writer adds (the tokenizer, the
  source, the cleaning report, ...). It is written last and atomically, so a folder whose
  ``meta.json`` exists is complete.

:class:`TokenShards` reads one split back. Training draws **random windows**: the offsets of
step ``s`` depend only on ``(seed, s)``, so a resumed run sees exactly the batches it would have
seen, and data-parallel ranks can split one global batch between them. Evaluation walks the
split **sequentially** in non-overlapping windows, so every token is scored once.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import validate

__all__ = ["FORMAT", "ShardError", "ShardWriter", "TokenShards", "dtype_for", "write_atomic"]

FORMAT = "gptcourse.shards/1"
META = "meta.json"


class ShardError(ValueError):
    """A shard folder is missing, incomplete, corrupt or used in a way it cannot serve."""


def dtype_for(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id below ``vocab_size``."""
    vocab_size = validate.integer("vocab_size", vocab_size, min=1)
    if vocab_size <= 65_535:
        return np.dtype("<u2")
    if vocab_size <= 2**32 - 1:
        return np.dtype("<u4")
    raise ValueError(f"vocab_size {vocab_size:,} does not fit in uint32")


def _publish(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Rename a finished temporary file into place, readable like a normally created file
    (``mkstemp`` makes files private to their owner)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, final)


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and a rename, so
    readers see the old content or the new, never a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json_record(file: Path, format: str, keys: dict[str, type], error: type[Exception],
                     advice: str) -> dict[str, Any]:
    """The JSON object in ``file`` (a ``meta.json`` or ``checkpoint.json``), checked: readable,
    an object, of ``format``, with every key of ``keys`` holding a value of its type. Anything
    else raises ``error`` naming the file and what is wrong, followed by ``advice``."""
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"{file} cannot be read as JSON ({err}); {advice}") from err
    if not isinstance(record, dict):
        raise error(f"{file} holds a JSON {type(record).__name__}, not an object; {advice}")
    if record.get("format") != format:
        raise error(f"{file} has format {record.get('format')!r}, expected {format!r}")
    for key, kind in keys.items():
        if key not in record:
            raise error(f"{file} has no {key!r} key; {advice}")
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            raise error(f"{file}: {key!r} must be a JSON {kind.__name__}, got "
                        f"{record[key]!r:.60}; {advice}")
    return record


class _OpenShard:
    """One shard being written: a temporary file, its running sha256 and token count."""

    def __init__(self, folder: Path, name: str) -> None:
        self.final = folder / name
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
        self.tmp = Path(tmp)
        self.file = os.fdopen(fd, "wb")
        self.sha = hashlib.sha256()
        self.tokens = 0

    def write(self, arr: np.ndarray) -> None:
        data = arr.tobytes()
        self.file.write(data)
        self.sha.update(data)
        self.tokens += arr.size

    def close(self) -> dict[str, Any]:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        _publish(self.tmp, self.final)
        return {"file": self.final.name, "tokens": self.tokens, "sha256": self.sha.hexdigest()}

    def abort(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.tmp.unlink(missing_ok=True)


class ShardWriter:
    """Append token ids per split; ``finish()`` seals the shards and writes ``meta.json``.

    The folder is claimed at creation: old shards (with ``overwrite``) and the ``.part``
    files of a killed writer are deleted.

    >>> w = ShardWriter("runs/data", vocab_size=50257)          # doctest: +SKIP
    >>> w.add("train", [50256, 464, 3290]); w.add("val", [50256, 40])
    >>> meta = w.finish(tokenizer={"name": "gpt2", "vocab_size": 50257, "eot_id": 50256})
    """

    def __init__(self, out_dir: str | os.PathLike, *, vocab_size: int,
                 shard_tokens: int = 100_000_000, overwrite: bool = False) -> None:
        shard_tokens = validate.integer("shard_tokens", shard_tokens, min=1)
        self.dtype = dtype_for(vocab_size)
        self.vocab_size = vocab_size
        self.shard_tokens = shard_tokens
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        old = sorted(self.out_dir.glob("*_[0-9][0-9][0-9][0-9][0-9][0-9].bin"))
        meta = self.out_dir / META
        if (old or meta.exists()) and not overwrite:
            raise ShardError(
                f"{self.out_dir} already holds shards; pass overwrite=True (CLI: --overwrite) "
                "or choose an empty folder"
            )
        # the old set stops being valid before any of it is replaced
        meta.unlink(missing_ok=True)
        for f in old:
            f.unlink()
        for f in self.out_dir.glob(".*.part"):  # temporary files of a writer that was killed
            f.unlink(missing_ok=True)
        self._open: dict[str, _OpenShard] = {}
        self._done: dict[str, list[dict[str, Any]]] = {}
        self._finished = False

    def add(self, split: str, ids: Sequence[int] | np.ndarray) -> None:
        """Append ``ids`` to ``split`` (a new shard starts every ``shard_tokens`` ids)."""
        if self._finished:
            raise ShardError("this ShardWriter is finished; create a new one to write more")
        if not isinstance(split, str) or not split.isidentifier():
            raise ValueError(f"split must be a name such as 'train' or 'val', got {split!r}")
        arr = np.asarray(ids)
        if arr.size == 0:
            return
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"ids must be a 1-D sequence of ints, got shape {arr.shape} "
                             f"and dtype {arr.dtype}")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= self.vocab_size:
            raise ValueError(f"token id {lo if lo < 0 else hi} is outside the vocabulary "
                             f"[0, {self.vocab_size}); was the right vocab_size given?")
        arr = arr.astype(self.dtype, copy=False)
        while arr.size:
            shard = self._open.get(split)
            if shard is None:
                k = len(self._done.setdefault(split, []))
                shard = self._open[split] = _OpenShard(self.out_dir, f"{split}_{k:06d}.bin")
            room = self.shard_tokens - shard.tokens
            shard.write(arr[:room])
            arr = arr[room:]
            if shard.tokens == self.shard_tokens:
                self._done[split].append(shard.close())
                del self._open[split]

    def finish(self, **extra: Any) -> dict[str, Any]:
        """Seal every shard, write ``meta.json`` (with ``extra`` keys) and return the metadata."""
        if self._finished:
            raise ShardError("finish() was already called")
        for split, shard in list(self._open.items()):
            self._done[split].append(shard.close())
        self._open.clear()
        self._finished = True
        splits = {
            split: {"tokens": sum(s["tokens"] for s in shards), "shards": shards}
            for split, shards in self._done.items()
        }
        meta = {"format": FORMAT, "dtype": self.dtype.name, "vocab_size": self.vocab_size,
                "splits": splits}
        for key, value in extra.items():
            if key in meta:
                raise ValueError(f"metadata key {key!r} is reserved")
            meta[key] = value
        write_atomic(self.out_dir / META, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        return meta

    def abort(self) -> None:
        """Drop the shards still open (sealed ones stay, but no ``meta.json`` is written)."""
        for shard in self._open.values():
            shard.abort()
        self._open.clear()
        self._finished = True

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


#: dtypes :class:`ShardWriter` writes (:func:`dtype_for`); anything else is not our file
_DTYPES = ("uint16", "uint32")
_META_KEYS = {"format": str, "dtype": str, "vocab_size": int, "splits": dict}
_SHARD_KEYS = {"file": str, "tokens": int, "sha256": str}


def _read_meta(meta_file: Path) -> dict[str, Any]:
    """``meta.json``, checked: an object with the keys and types readers rely on."""
    again = "run prepare again"
    meta = read_json_record(meta_file, FORMAT, _META_KEYS, ShardError, again)
    if meta["dtype"] not in _DTYPES:
        raise ShardError(f"{meta_file} has dtype {meta['dtype']!r}; shards hold token ids as "
                         f"{' or '.join(_DTYPES)}: {again}")
    top = np.iinfo(np.dtype(meta["dtype"])).max
    if not 1 <= meta["vocab_size"] <= top + 1:
        raise ShardError(f"{meta_file}: vocab_size {meta['vocab_size']:,} does not fit dtype "
                         f"{meta['dtype']}; {again}")
    return meta


def _shard_list(meta: dict[str, Any], split: str, meta_file: Path) -> list[dict[str, Any]]:
    """The checked shard entries of ``split``."""
    entry = meta["splits"][split]
    shards = entry.get("shards") if isinstance(entry, dict) else None
    if not isinstance(shards, list):
        raise ShardError(f"{meta_file}: splits.{split} has no 'shards' list; run prepare again")
    for k, info in enumerate(shards):
        for key, kind in _SHARD_KEYS.items():
            value = info.get(key) if isinstance(info, dict) else None
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ShardError(f"{meta_file}: shard {k} of split {split!r} has no valid "
                                 f"{key!r} ({kind.__name__}); run prepare again")
        if Path(info["file"]).name != info["file"] or info["tokens"] < 0:
            raise ShardError(f"{meta_file}: shard {k} of split {split!r} is malformed "
                             f"({info!r:.80}); run prepare again")
    return shards


class TokenShards:
    """One split of a shard folder (or of ids in memory), read as one long id sequence.

    Opening checks ``meta.json`` (its keys, a dtype the writer produces, a vocabulary that
    fits it) and every shard's size, and with ``verify=True`` (the default) its sha256 too.
    Hashing reads each shard once: about 0.75 GB/s on one core of the course's 2-core CI
    machine (measured with files in the page cache), so ~1.3 s per GB of ids -- pass
    ``verify=False`` to skip it, e.g. when many processes open the same large, trusted folder.
    """

    def __init__(self, path: str | os.PathLike, split: str = "train", verify: bool = True) -> None:
        folder = Path(path)
        meta_file = folder / META
        if not meta_file.is_file():
            hint = ("it has shard files but no meta.json: the writer did not finish; run "
                    "prepare again" if any(folder.glob("*.bin")) else
                    "run `gptcourse prepare` (or gptcourse.data.prepare) to create it")
            raise ShardError(f"{folder} is not a finished shard folder: {hint}")
        meta = _read_meta(meta_file)
        if split not in meta["splits"]:
            raise ShardError(f"{folder} has no split {split!r}; it has: "
                             f"{', '.join(sorted(meta['splits']))}")
        self.path: Path | None = folder
        self.meta: dict[str, Any] = meta
        self.split = split
        self.vocab_size: int = int(meta["vocab_size"])
        self.dtype = np.dtype(meta["dtype"]).newbyteorder("<")
        arrays = []
        for info in _shard_list(meta, split, meta_file):
            file = folder / info["file"]
            if not file.is_file():
                raise ShardError(f"shard {file} listed in {meta_file} is missing")
            size = file.stat().st_size
            if size != info["tokens"] * self.dtype.itemsize:
                raise ShardError(
                    f"shard {file} has {size:,} bytes but meta.json expects "
                    f"{info['tokens'] * self.dtype.itemsize:,}: it is truncated or was "
                    "replaced; run prepare again"
                )
            if verify:
                from ..corpora import sha256_file

                if sha256_file(file) != info["sha256"]:
                    raise ShardError(f"shard {file} does not match its sha256 in meta.json; "
                                     "it is corrupt: run prepare again (or open it with "
                                     "verify=False to read it anyway)")
            arrays.append(np.memmap(file, dtype=self.dtype, mode="r") if info["tokens"]
                          else np.zeros(0, self.dtype))
        self._init_arrays(arrays)

    @classmethod
    def from_ids(cls, ids: Sequence[int] | np.ndarray | torch.Tensor,
                 vocab_size: int | None = None, *, nats: float | None = None,
                 documents: int | None = None) -> TokenShards:
        """Token ids held in memory, with the same interface (for lessons and tests).

        ``nats`` (the ids' total log-loss under the true distribution, e.g. the sum of
        ``-Story.logprob``) and ``documents`` are optional facts: with ``nats`` the split knows its
        ``entropy_per_token`` floor, as shards written by ``prepare`` do.
        """
        if isinstance(ids, torch.Tensor):
            ids = ids.detach().cpu().numpy()
        arr = np.asarray(ids).reshape(-1)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"ids must be integers, got dtype {arr.dtype}")
        if arr.size and int(arr.min()) < 0:
            raise ValueError("token ids must be non-negative")
        top = int(arr.max()) + 1 if arr.size else 1
        vocab_size = top if vocab_size is None else vocab_size
        if top > vocab_size:
            raise ValueError(f"token id {top - 1} is outside the vocabulary [0, {vocab_size})")
        self = cls.__new__(cls)
        self.path = None
        self.split = "memory"
        self.vocab_size = vocab_size
        self.dtype = dtype_for(vocab_size)
        self.meta = {"format": FORMAT, "dtype": self.dtype.name, "vocab_size": vocab_size,
                     "splits": {"memory": {"tokens": int(arr.size), "shards": []}}}
        if nats is not None:
            validate.number("nats", nats, min=0)
        if documents is not None:
            documents = validate.integer("documents", documents, min=0)
        stats = {k: v for k, v in (("nats", nats), ("documents", documents)) if v is not None}
        if stats:
            self.meta["split_stats"] = {"memory": stats}
        self._init_arrays([arr.astype(self.dtype)])
        return self

    def _init_arrays(self, arrays: list[np.ndarray]) -> None:
        self._arrays = [a for a in arrays if a.size]
        sizes = np.array([a.size for a in self._arrays], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._len = int(self._starts[-1])

    # ------------------------------------------------------------------ facts

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        where = self.path if self.path is not None else "memory"
        return (f"TokenShards({str(where)!r}, split={self.split!r}, tokens={self._len:,}, "
                f"shards={len(self._arrays)}, dtype={self.dtype.name})")

    def _stat(self, key: str) -> Any:
        return self.meta.get("split_stats", {}).get(self.split, {}).get(key)

    @property
    def nats(self) -> float | None:
        """Total log-loss (nats) of this split under the true distribution, when known."""
        value = self._stat("nats")
        return None if value is None else float(value)

    @property
    def documents(self) -> int | None:
        """Number of documents in this split, when the writer recorded it."""
        value = self._stat("documents")
        return None if value is None else int(value)

    @property
    def entropy_per_token(self) -> float | None:
        """The floor no model can beat: ``nats / tokens`` (None when the source is not known)."""
        return None if self.nats is None or not self._len else self.nats / self._len

    def tokenizer(self):
        """The tokenizer recorded in ``meta.json`` (a saved file is found beside the shards)."""
        from ..tokenizer import get_tokenizer

        info = self.meta.get("tokenizer")
        if not info or "name" not in info:
            raise ShardError(f"{self.path or 'these ids'} record no tokenizer in meta.json")
        name = info["name"]
        if self.path is not None and name.endswith(".json") and not os.path.isabs(name):
            name = str(self.path / name)
        return get_tokenizer(name)

    # ------------------------------------------------------------------ reading

    def _check_block(self, block_size: int) -> None:
        validate.integer("block_size", block_size, min=1)
        if self._len < block_size + 1:
            raise ShardError(
                f"the {self.split!r} split has {self._len:,} tokens but one window needs "
                f"block_size + 1 = {block_size + 1:,}; use more data or a smaller block_size"
            )

    def read(self, start: int, length: int) -> np.ndarray:
        """``length`` ids from global position ``start`` (crossing shard boundaries), as int64."""
        if start < 0 or length < 0 or start + length > self._len:
            raise IndexError(f"ids [{start}, {start + length}) out of range [0, {self._len})")
        out = np.empty(length, dtype=np.int64)
        k = int(np.searchsorted(self._starts, start, side="right")) - 1
        filled = 0
        while filled < length:
            local = start + filled - int(self._starts[k])
            piece = self._arrays[k][local : local + length - filled]
            out[filled : filled + piece.size] = piece
            filled += piece.size
            k += 1
        return out

    def random_offsets(self, n: int, block_size: int, *, seed: int, step: int) -> np.ndarray:
        """``n`` window starts drawn uniformly; a pure function of ``(seed, step)``."""
        self._check_block(block_size)
        if n < 0 or step < 0:
            raise ValueError(f"n and step must be non-negative, got n={n}, step={step}")
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(step)])
        return rng.integers(0, self._len - block_size, size=n, dtype=np.int64)

    def windows(self, offsets: Sequence[int] | np.ndarray,
                block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs ``ids[o : o+T]`` and targets ``ids[o+1 : o+T+1]`` for each offset ``o``."""
        self._check_block(block_size)
        offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
        rows = np.empty((offsets.size, block_size + 1), dtype=np.int64)
        if len(self._arrays) == 1:  # one shard: one vectorised gather
            a = self._arrays[0]
            if offsets.size and (offsets.min() < 0 or offsets.max() > self._len - block_size - 1):
                raise IndexError(f"window offsets must lie in [0, {self._len - block_size - 1}]")
            rows[:] = a[offsets[:, None] + np.arange(block_size + 1)]
        else:
            for i, o in enumerate(offsets):
                rows[i] = self.read(int(o), block_size + 1)
        t = torch.from_numpy(rows)
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()

    def num_windows(self, block_size: int) -> int:
        """How many non-overlapping windows :meth:`sequential` yields in all."""
        self._check_block(block_size)
        return (self._len - 1) // block_size

    def sequential(self, block_size: int, batch_size: int, *, max_batches: int | None = None,
                   rank: int = 0, world_size: int = 1
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Non-overlapping windows in order, ``batch_size`` at a time.

        Window ``i`` starts at ``i * block_size``. The batches (the first ``max_batches``, if
        given, counted over all ranks) are dealt round-robin: rank ``r`` gets batches ``r,
        r + world_size, ...``, so the ranks together score each window once and N ranks
        score exactly what one process scores.
        """
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got "
                             f"batch_size={batch_size}, rank={rank}, world_size={world_size}")
        total = self.num_windows(block_size)
        starts = np.arange(total, dtype=np.int64) * block_size
        if max_batches is not None:
            starts = starts[: max_batches * batch_size]
        batches = [starts[i : i + batch_size] for i in range(0, starts.size, batch_size)]
        for b in batches[rank::world_size]:
            yield self.windows(b, block_size)
