"""Named training runs, written as TOML files beside this module.

A run file has a ``description``, the ``data`` folder of prepared shards, a ``[prepare]`` table
(the arguments of :func:`gptcourse.data.prepare` that make that folder when it is missing), a
``[model]`` table (:class:`~gptcourse.model.GPTConfig` fields; ``preset = "gpt2"`` starts
from a model preset) and a ``[train]`` table (:class:`~gptcourse.train.TrainConfig` fields).
Copy one to start your own: ``gptcourse train --config my.toml``.

:func:`resolve` merges, in order, a preset, a TOML file and ``--key value`` overrides from the
command line; a key names a model or training field (``n_layer``, ``max_steps``; ``-`` and
``_`` are the same) or ``data``.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..model import GPTConfig
from ..train import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["RunSpec", "load", "names", "parse_value", "path", "resolve"]

HERE = Path(__file__).resolve().parent


def names() -> list[str]:
    """The shipped presets."""
    return sorted(p.stem for p in HERE.glob("*.toml"))


def path(name: str) -> Path:
    """The TOML file of preset ``name``."""
    file = HERE / f"{name}.toml"
    if not file.is_file():
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(names())}")
    return file


def load(name_or_file: str | Path) -> dict[str, Any]:
    """The raw tables of a preset name or a TOML file."""
    p = Path(name_or_file)
    file = p if p.suffix == ".toml" else path(str(name_or_file))
    if not file.is_file():
        raise FileNotFoundError(f"config file {file} does not exist")
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{file} is not valid TOML: {err}") from err


def parse_value(text: str) -> Any:
    """A command-line value read as a TOML literal (``3e-4``, ``true``, ``[1, 2]``), else the
    string itself (``runs/x``, ``bfloat16``); ``none`` means None."""
    if text.strip().lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


_MODEL_FIELDS = {f.name for f in dataclasses.fields(GPTConfig)}
_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


@dataclass
class RunSpec:
    """A resolved run: where the data is, how to make it, the model and training settings."""

    data: str
    model: dict[str, Any]
    train: TrainConfig
    prepare: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    name: str | None = None

    def model_config(self, vocab_size: int | None = None) -> GPTConfig:
        """The :class:`GPTConfig`; ``vocab_size`` (from the data) fills it when not set."""
        values = dict(self.model)
        base = values.pop("preset", None)
        if vocab_size is not None and "vocab_size" not in values:
            values["vocab_size"] = vocab_size
        if base is not None:
            return GPTConfig.preset(base, **values)
        return GPTConfig(**values)


def resolve(preset: str | None = None, config: str | Path | None = None,
            overrides: dict[str, Any] | None = None) -> RunSpec:
    """Merge a preset, a TOML file and overrides (later wins) into a :class:`RunSpec`."""
    tables: dict[str, Any] = {"model": {}, "train": {}, "prepare": {}}
    top: dict[str, Any] = {}
    for source in [preset, config]:
        if source is None:
            continue
        raw = load(source)
        bad = sorted(set(raw) - {"description", "data", "model", "train", "prepare"})
        if bad:
            raise ValueError(f"{source}: unknown top-level keys {bad}; expected description, "
                             "data, [prepare], [model], [train]")
        for key in ("model", "train", "prepare"):
            tables[key].update(raw.get(key, {}))
        top.update({k: raw[k] for k in ("description", "data") if k in raw})
    for key, value in (overrides or {}).items():
        key = key.replace("-", "_").removeprefix("model.").removeprefix("train.")
        if key == "data":
            top["data"] = value
        elif key in _MODEL_FIELDS or key == "preset":
            tables["model"][key] = value
        elif key in _TRAIN_FIELDS:
            tables["train"][key] = value
        else:
            raise ValueError(f"unknown setting --{key.replace('_', '-')}; model settings: "
                             f"{', '.join(sorted(_MODEL_FIELDS))}; training settings: "
                             f"{', '.join(sorted(_TRAIN_FIELDS))}; or --data")
    bad = sorted(set(tables["model"]) - _MODEL_FIELDS - {"preset"})
    if bad:
        raise ValueError(f"unknown [model] settings {bad}; known: {sorted(_MODEL_FIELDS)}")
    if "data" not in top:
        raise ValueError("no data folder: give --preset NAME (see `gptcourse presets`), "
                         "--config FILE.toml, or --data DIR")
    return RunSpec(data=str(top["data"]), model=tables["model"],
                   train=TrainConfig.from_dict(tables["train"]), prepare=tables["prepare"],
                   description=top.get("description", ""),
                   name=preset if preset is not None else None)
