"""Checkpoint files: finding, listing, verifying, loading, resuming and pruning them.

A run folder keeps its checkpoints in ``checkpoints/``::

    runs/stories-cpu/checkpoints/
        step_000250/            model.safetensors  trainer.pt  checkpoint.json  [tokenizer.json]
        step_000500/
        latest                  "step_000500"

``model.safetensors`` holds the weights, ``trainer.pt`` the optimizer, grad scaler, RNG states,
step and tokens seen, and ``checkpoint.json`` the configs and the sha256 of every other file.
:meth:`gptcourse.train.Trainer.save_checkpoint` writes a folder under a temporary name
(``.step_NNNNNN.*``) and renames it when complete, then replaces ``latest`` atomically, so a
crash or a broken run never destroys the last good checkpoint; what a killed save leaves behind
is removed by the next save (:func:`remove_partial_saves`). Old checkpoints are pruned by step
number, keeping ``keep_checkpoints``, never the one ``latest`` names (:func:`prune_checkpoints`).

Reading always verifies (:func:`read_checkpoint_meta`): the format, the keys, and every listed
file against its sha256; loading then checks that the model configuration matches. A damaged
checkpoint is a one-line :class:`CheckpointError`, never a traceback.

A run is never started over silently: ``Trainer(resume=...)`` and ``gptcourse train`` agree
(:func:`resolve_resume`):

==================  =======================================  ==========================
Trainer             CLI                                      out_dir holds checkpoints
==================  =======================================  ==========================
``resume=False``    (no flag)                                refused: resume or overwrite
``overwrite=True``  ``--overwrite``                          deleted, new run from step 0
``"require"``       ``--resume``                             newest valid one; none: error
``True``            ``--resume=auto-or-new``                 newest valid one; none at all: new run
a path              ``--resume PATH``                        that checkpoint
==================  =======================================  ==========================

"Newest valid": the one ``checkpoints/latest`` names; when ``latest`` is missing, empty,
dangling or names an unfinished folder, the highest-step checkpoint that verifies (with a
:class:`CheckpointWarning` saying so). Checkpoints that exist but none of which is valid are an
error that lists what was found, for ``resume=True`` too.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from .corpora import sha256_file
from .data.shards import read_json_record
from .model import GPT, GPTConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "CheckpointWarning",
    "checkpoint_names",
    "find_checkpoint",
    "list_checkpoints",
    "load_model",
    "load_weights",
    "locate_checkpoint",
    "prune_checkpoints",
    "read_checkpoint_meta",
    "remove_partial_saves",
    "resolve_resume",
]

CHECKPOINT_FORMAT = "gptcourse.checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt, or does not fit the requested model."""


class CheckpointWarning(UserWarning):
    """``latest`` was unusable, so an older valid checkpoint is used instead."""


# --------------------------------------------------------------------------------------
# The folders of a run
# --------------------------------------------------------------------------------------


_STEP_FOLDER = re.compile(r"step_(\d+)")


def _step_of(folder: Path) -> int | None:
    match = _STEP_FOLDER.fullmatch(folder.name)
    return int(match.group(1)) if match else None


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """The ``step_N`` folders in ``root`` (a ``checkpoints`` folder), oldest first by step
    number -- not by name, so ``step_1000000`` comes after ``step_999999``."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(step, p) for p in root.iterdir() if p.is_dir() and (step := _step_of(p)) is not None]
    return [p for _, p in sorted(found)]


def checkpoint_names(root: Path) -> list[str]:
    """What in ``root`` (a ``checkpoints`` folder) belongs to a run: the names of its
    ``step_N`` folders, and ``latest`` when that file exists. Empty: no run there."""
    names = [p.name for p in list_checkpoints(root)]
    return names + ["latest"] if (root / "latest").is_file() else names


def remove_partial_saves(root: Path) -> None:
    """Delete what a killed save leaves in ``root``: ``.step_*`` folders, ``.latest.*.part``
    files."""
    if root.is_dir():
        for p in root.glob(".step_*"):
            shutil.rmtree(p, ignore_errors=True)
        for p in root.glob(".latest.*.part"):
            p.unlink(missing_ok=True)


def prune_checkpoints(root: Path, keep: int, newest: Path) -> None:
    """Delete the checkpoints in ``root`` beyond the ``keep`` newest up to ``newest``'s step
    (the one just saved, which ``latest`` names: never deleted). Later steps, of a branch
    abandoned by resuming from an older checkpoint, are left alone."""
    step = _step_of(newest) or 0
    kept = [p for p in list_checkpoints(root) if (_step_of(p) or 0) <= step]
    for old in kept[:-keep]:
        if old != newest:
            shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Which checkpoint a path means
# --------------------------------------------------------------------------------------


def _checkpoints_root(path: Path) -> Path:
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def _latest_problem(root: Path) -> tuple[Path | None, str]:
    """The folder ``root/latest`` names when it is a finished checkpoint, else what is wrong."""
    latest = root / "latest"
    if not latest.is_file():
        return None, f"{root} has no `latest` file"
    name = latest.read_text(encoding="utf-8", errors="replace").strip()
    target = root / name
    if not name or Path(name).name != name:
        return None, f"{latest} is empty or damaged ({name!r})"
    if (target / "checkpoint.json").is_file():
        return target, ""
    why = "has no checkpoint.json (an unfinished save)" if target.is_dir() else "does not exist"
    return None, f"{latest} points at {name}, which {why}"


def locate_checkpoint(path: str | os.PathLike
                      ) -> tuple[Path, str | None, dict[str, Any] | None]:
    """``(folder, note, meta)``: the checkpoint ``path`` means (see :func:`find_checkpoint`),
    why an older one stands in for ``latest`` (else None; the caller warns), and its verified
    metadata when verifying was needed to choose it (else None: read it yourself)."""
    p = Path(path)
    if (p / "checkpoint.json").is_file():
        return p, None, None
    if _step_of(p) is not None and p.is_dir():
        raise CheckpointError(f"{p} has no checkpoint.json: its save did not finish; choose "
                              "another checkpoint")
    root = _checkpoints_root(p)
    target, problem = _latest_problem(root)
    if target is not None:
        return target, None, None
    found = list_checkpoints(root)
    if not found:
        extra = f" ({problem})" if (root / "latest").is_file() else ""
        raise CheckpointError(f"no checkpoint in {p}{extra}: expected a run folder with "
                              "checkpoints/step_N folders, or a checkpoint folder with "
                              "checkpoint.json")
    invalid = []
    for folder in reversed(found):  # newest first
        try:
            meta = read_checkpoint_meta(folder)
        except CheckpointError as err:
            invalid.append(str(err))
            continue
        skipped = f" (skipped newer, invalid: {'; '.join(invalid)})" if invalid else ""
        return folder, f"{problem}; using the newest valid checkpoint, {folder}{skipped}", meta
    raise CheckpointError(f"no valid checkpoint in {root}: {problem}; {'; '.join(invalid)}")


def find_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint folder meant by ``path``: a run folder (its latest checkpoint), its
    ``checkpoints`` folder, or a ``step_NNNNNN`` folder itself.

    When ``latest`` is missing, empty, dangling or names an unfinished folder, the newest
    checkpoint that verifies is used instead, with a :class:`CheckpointWarning`.
    """
    folder, note, _ = locate_checkpoint(path)
    if note:
        warnings.warn(note, CheckpointWarning, stacklevel=2)
    return folder


def resolve_resume(resume: bool | str | os.PathLike,
                   out_dir: Path) -> tuple[Path, str | None, dict[str, Any] | None] | None:
    """What :func:`locate_checkpoint` returns for the checkpoint ``resume`` asks for in the
    run folder ``out_dir`` (the table in the module docstring), or None: a new run.
    ``resume`` is True, ``"require"`` or a path (False needs no checkpoint)."""
    if resume is True or resume == "require":
        if not checkpoint_names(out_dir / "checkpoints"):
            if resume is True:
                return None
            raise CheckpointError(
                f"no checkpoint in {out_dir} to resume from; start a new run without "
                "resume (CLI: drop --resume, or --resume=auto-or-new)")
        try:
            return locate_checkpoint(out_dir)
        except CheckpointError as err:
            raise CheckpointError(f"{err}. Nothing was overwritten: fix or remove them, "
                                  "resume from a path, or start over with overwrite=True "
                                  "(CLI: --overwrite, deletes them)") from None
    if isinstance(resume, (str, os.PathLike)):
        return locate_checkpoint(resume)
    raise TypeError(f"resume must be False, True, 'require' or a checkpoint path, "
                    f"got {resume!r}")


# --------------------------------------------------------------------------------------
# Reading one
# --------------------------------------------------------------------------------------


_META_KEYS = {"format": str, "step": int, "model_config": dict, "files": dict}


def read_checkpoint_meta(folder: Path) -> dict[str, Any]:
    """The verified ``checkpoint.json`` of ``folder``: its keys, and every file it lists
    against its sha256 (always: a checkpoint is read far less often than it is trained)."""
    file = folder / "checkpoint.json"
    damaged = "the checkpoint is damaged: resume from an earlier one"
    meta = read_json_record(file, CHECKPOINT_FORMAT, _META_KEYS, CheckpointError, damaged)
    files = meta["files"]
    if "model.safetensors" not in files:
        raise CheckpointError(f"{file} lists no sha256 for model.safetensors; {damaged}")
    for name, digest in files.items():
        path = folder / name
        if Path(name).name != name or not isinstance(digest, str):
            raise CheckpointError(f"{file}: bad entry {name!r}: {digest!r:.80} in 'files'; "
                                  f"{damaged}")
        if not path.is_file():
            raise CheckpointError(f"{path} is missing; the checkpoint is incomplete")
        if sha256_file(path) != digest:
            raise CheckpointError(f"{path} does not match its sha256 in checkpoint.json: it is "
                                  "truncated or corrupt; resume from an earlier checkpoint")
    return meta


def _model_config(folder: Path, meta: dict[str, Any]) -> GPTConfig:
    try:
        return GPTConfig(**meta["model_config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{folder}/checkpoint.json: model_config is not a valid "
                              f"GPTConfig ({err})") from err


def load_weights(model: nn.Module, folder: Path, device: str) -> None:
    """Load ``folder/model.safetensors`` into ``model`` on ``device`` (any failure, such as a
    different shape: a one-line :class:`CheckpointError`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model as st_load_model

    file = folder / "model.safetensors"
    try:
        st_load_model(model, str(file), device=device)
    except (SafetensorError, RuntimeError, OSError, ValueError) as err:
        why = " ".join(str(err).split())  # load_state_dict's report spans lines
        raise CheckpointError(f"{file} cannot be loaded into the model: {why:.400}") from err


def load_model(path: str | os.PathLike, device: str = "cpu"):
    """``(model, tokenizer, meta)`` from a run or checkpoint folder, ready for generation.

    The files are verified against their sha256, and the tokenizer must fit the model's
    embedding. The tokenizer is ``None`` when the checkpoint did not record one.
    """
    folder, note, meta = locate_checkpoint(path)
    if note:
        warnings.warn(note, CheckpointWarning, stacklevel=2)
    meta = meta or read_checkpoint_meta(folder)
    model = GPT(_model_config(folder, meta))
    load_weights(model, folder, "cpu")
    model.to(device).eval()
    tokenizer = None
    info = meta.get("tokenizer")
    if info:
        from .tokenizer import get_tokenizer

        name = info.get("name") if isinstance(info, dict) else None
        if not isinstance(name, str):
            raise CheckpointError(f"{folder}/checkpoint.json: 'tokenizer' must be an object "
                                  f"with a 'name', got {info!r:.80}")
        tokenizer = get_tokenizer(str(folder / name) if name == "tokenizer.json" else name)
        rows = model.config.vocab_size
        if tokenizer.vocab_size > rows:
            raise CheckpointError(
                f"{folder}: the tokenizer {name!r} has {tokenizer.vocab_size:,} tokens but the "
                f"model's embedding has only {rows:,} rows (ids >= {rows} would fail); the "
                "tokenizer does not belong to these weights")
    return model, tokenizer, meta
