"""Supervised fine-tuning (SFT) on instruction records, through :class:`gptcourse.train.Trainer`.

:class:`InstructionData` is the dataset object the Trainer trains on (a batch of examples per
step, drawn as a pure function of ``(seed, step)``, so a resumed run sees the same batches);
:func:`sft` is the one-call version. :func:`response_loss` is the loss on response tokens only
(before vs after SFT). Records, prompts and the collate are in :mod:`.records`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .. import validate
from .records import (
    IGNORE_INDEX,
    collate_instructions,
    encode_record,
    eot_id_of,
    prompt_too_long,
)

__all__ = ["InstructionData", "response_loss", "sft"]

_LONG_PROMPTS = ("error", "drop", "truncate")


class InstructionData:
    """Tokenized instruction records, in the shape :class:`gptcourse.train.Trainer` trains on.

    The Trainer asks the data for ``random_offsets(n, block_size, seed=, step=)`` -- here the
    indices of the step's ``n`` examples -- and ``windows(indices, block_size)`` -- here the
    padded batch from :func:`collate_instructions` (inputs and targets of shape (B, L),
    ``L <= block_size``). Evaluation walks ``sequential(...)`` and weights each batch by its
    number of targets that are not -100, so ``Trainer.evaluate(data)`` is the mean loss per
    response token (with ``mask_prompt=True``).

    The order of the examples: epoch ``e`` visits all of them in the permutation drawn from
    ``(seed, e)``, and step ``s`` takes positions ``s*n ... s*n + n - 1`` of that endless
    sequence -- a pure function of ``(seed, step)`` (for a fixed global batch ``n``), so a
    resumed run continues with exactly the batches it would have seen.

    It also works with a PyTorch ``DataLoader``: ``data[i]`` is ``(prompt_ids,
    response_ids)`` and ``collate_fn=data.collate``.

    ``long_prompts``: what to do with a record whose prompt alone does not fit the context
    (``max_length``, or the Trainer's block_size): ``"error"`` (default; names the record),
    ``"drop"`` (needs ``max_length``; the indices of the dropped records are in
    ``self.dropped``), or ``"truncate"``.
    """

    path = None  # not backed by a file (the Trainer records it in checkpoints)
    entropy_per_token = None  # no known floor for natural-language responses

    def __init__(self, records: Sequence[Mapping[str, Any]], tokenizer, *,
                 mask_prompt: bool = False, max_length: int | None = None,
                 pad_id: int | None = None, eot_id: int | None = None,
                 ignore_index: int = IGNORE_INDEX, long_prompts: str = "error") -> None:
        validate.choice("long_prompts", long_prompts, _LONG_PROMPTS)
        if long_prompts == "drop" and max_length is None:
            raise ValueError("long_prompts='drop' needs max_length (the model's block_size)")
        records = list(records)
        self.eot_id = eot_id_of(tokenizer, eot_id)
        self.pad_id = self.eot_id if pad_id is None else int(pad_id)
        self.mask_prompt = bool(mask_prompt)
        self.max_length = max_length
        self.ignore_index = ignore_index
        self.long_prompts = long_prompts
        self.vocab_size = int(tokenizer.vocab_size)
        self.records: list[Mapping[str, Any]] = []
        self.examples: list[tuple[list[int], list[int]]] = []
        self.dropped: list[int] = []
        for i, r in enumerate(records):
            prompt, response = encode_record(r, tokenizer, f"record {i}")
            if max_length is not None and len(prompt) > max_length:
                if long_prompts == "error":
                    raise prompt_too_long(len(prompt), max_length, f"record {i}")
                if long_prompts == "drop":
                    self.dropped.append(i)
                    continue
            self.records.append(r)
            self.examples.append((prompt, response))
        if self.dropped:
            warnings.warn(f"dropped {len(self.dropped)} of {len(records)} records whose prompt "
                          f"is longer than {max_length} tokens", stacklevel=2)
        if not self.examples:
            raise ValueError("no instruction records to use (the list is empty"
                             + (", or every prompt was too long)" if self.dropped else ")"))
        self._perms: dict[tuple[int, int], np.ndarray] = {}
        self._checked: set[int] = set()

    # ------------------------------------------------------------------ facts

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> tuple[list[int], list[int]]:
        return self.examples[i]

    def __repr__(self) -> str:
        return (f"InstructionData({len(self)} examples, mask_prompt={self.mask_prompt}, "
                f"max_length={self.max_length})")

    @property
    def lengths(self) -> list[int]:
        """Tokens per example: prompt + response + eot."""
        return [len(p) + len(r) + 1 for p, r in self.examples]

    def _limit(self, block_size: int | None) -> int | None:
        limits = [v for v in (block_size, self.max_length) if v is not None]
        return min(limits) if limits else None

    def _check_fits(self, limit: int | None) -> None:
        if limit is None or limit in self._checked or self.long_prompts != "error":
            return
        for i, (p, _) in enumerate(self.examples):
            if len(p) > limit:
                raise prompt_too_long(len(p), limit, f"example {i}")
        self._checked.add(limit)

    def collate(self, batch: Sequence[tuple[Sequence[int], Sequence[int]]],
                block_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`collate_instructions` with this dataset's settings (a DataLoader's collate_fn)."""
        return collate_instructions(
            batch, self.pad_id, self.ignore_index, self.mask_prompt, self._limit(block_size),
            eot_id=self.eot_id,
            long_prompts="truncate" if self.long_prompts == "truncate" else "error")

    # ------------------------------------------------------------------ the Trainer's interface

    def _permutation(self, seed: int, epoch: int) -> np.ndarray:
        key = (int(seed), int(epoch))
        perm = self._perms.get(key)
        if perm is None:
            if len(self._perms) > 8:
                self._perms.clear()
            perm = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch)]).permutation(len(self))
            self._perms[key] = perm
        return perm

    def random_offsets(self, n: int, block_size: int | None = None, *, seed: int,
                       step: int) -> np.ndarray:
        """Indices of the ``n`` examples of step ``step``: positions ``step*n ... step*n+n-1``
        of the sequence of seeded per-epoch permutations (see the class docstring)."""
        if n < 0 or step < 0:
            raise ValueError(f"n and step must be non-negative, got n={n}, step={step}")
        N = len(self)
        positions = np.arange(step * n, step * n + n, dtype=np.int64)
        out = np.empty(n, dtype=np.int64)
        for epoch in np.unique(positions // N):
            sel = positions // N == epoch
            out[sel] = self._permutation(seed, int(epoch))[positions[sel] % N]
        return out

    def windows(self, indices: Sequence[int] | np.ndarray,
                block_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The padded batch ``(x, y)`` of the examples ``indices`` (at most ``block_size`` long)."""
        limit = self._limit(block_size)
        self._check_fits(limit)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"example indices must lie in [0, {len(self) - 1}]")
        return self.collate([self.examples[int(i)] for i in idx], limit)

    def sequential(self, block_size: int | None, batch_size: int, *,
                   max_batches: int | None = None, rank: int = 0, world_size: int = 1
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every example once, in order, ``batch_size`` at a time (the first ``max_batches``
        batches if given); batches are dealt round-robin to the ``world_size`` ranks."""
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got "
                             f"batch_size={batch_size}, rank={rank}, world_size={world_size}")
        starts = range(0, len(self), batch_size)
        if max_batches is not None:
            starts = starts[:max_batches]
        for s in starts[rank::world_size]:
            yield self.windows(np.arange(s, min(s + batch_size, len(self))), block_size)


# --------------------------------------------------------------------------------------
# Training and the response loss
# --------------------------------------------------------------------------------------


def sft(model, tokenizer, train_records: Sequence[Mapping[str, Any]],
        val_records: Sequence[Mapping[str, Any]] | None = None, config=None, *,
        mask_prompt: bool = False, long_prompts: str = "error", resume: bool | str = False,
        steps: int | None = None):
    """Supervised fine-tuning of ``model`` (its current weights) on instruction records.

    Builds :class:`InstructionData` for both splits (``max_length`` = the model's block_size),
    a :class:`gptcourse.train.Trainer` with ``config`` (a :class:`TrainConfig`), runs
    ``fit(steps)`` and returns the Trainer (``.history`` holds the metrics, ``.model`` the
    fine-tuned model -- the same object as ``model``, trained in place). The validation loss it
    logs is the loss per response token when ``mask_prompt=True``, per example token otherwise.
    """
    from ..train import TrainConfig, Trainer

    block = model.config.block_size
    train = InstructionData(train_records, tokenizer, mask_prompt=mask_prompt, max_length=block,
                            long_prompts=long_prompts)
    val = None
    if val_records:
        val = InstructionData(val_records, tokenizer, mask_prompt=mask_prompt, max_length=block,
                              long_prompts=long_prompts)
    trainer = Trainer(model.config, train, val, config or TrainConfig(), tokenizer=tokenizer,
                      model=model, resume=resume)
    trainer.fit(steps)
    return trainer


@torch.no_grad()
def response_loss(model, tokenizer, records: Sequence[Mapping[str, Any]], *, batch_size: int = 8,
                  eot_id: int | None = None, long_prompts: str = "error") -> dict[str, float]:
    """Mean cross-entropy per response token (the output and its end-of-text token; the prompt
    is not scored) over ``records``, its perplexity, and the number of tokens scored."""
    block = model.config.block_size
    data = InstructionData(records, tokenizer, mask_prompt=True, max_length=block,
                           eot_id=eot_id, long_prompts=long_prompts)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for x, y in data.sequential(block, batch_size):
            _, loss = model(x.to(device), y.to(device))
            scored = int((y != IGNORE_INDEX).sum())
            if scored:
                total += float(loss) * scored
                count += scored
    finally:
        model.train(was_training)
    if not count:
        raise ValueError("no response tokens to score (every response was truncated away)")
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": count}
