"""Datasets of token ids for language modelling.

``SlidingWindowDataset`` turns one long sequence of token ids into (input, target) pairs:
window ``i`` is ``ids[i*stride : i*stride + block_size]`` and its target is the same window
shifted one token to the right, so position ``t`` learns to predict token ``t + 1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .. import validate

__all__ = ["SlidingWindowDataset", "make_loader"]


class SlidingWindowDataset(Dataset):
    """(input, target) windows of ``block_size`` tokens taken every ``stride`` tokens."""

    def __init__(self, ids: Sequence[int] | np.ndarray | torch.Tensor, block_size: int,
                 stride: int | None = None) -> None:
        block_size = validate.integer("block_size", block_size, min=1)
        stride = block_size if stride is None else validate.integer("stride", stride, min=1)
        if isinstance(ids, torch.Tensor):
            data = ids.detach().cpu().long().reshape(-1)
        else:
            data = torch.as_tensor(np.asarray(ids, dtype=np.int64).reshape(-1))
        if data.numel() < block_size + 1:
            raise ValueError(
                f"need at least block_size + 1 = {block_size + 1} tokens for one window, "
                f"got {data.numel()}; use more text or a smaller block_size"
            )
        self.ids = data
        self.block_size = block_size
        self.stride = stride

    def __len__(self) -> int:
        return (self.ids.numel() - self.block_size - 1) // self.stride + 1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"window {i} out of range for {n} windows")
        start = i * self.stride
        chunk = self.ids[start : start + self.block_size + 1]
        return chunk[:-1], chunk[1:]


def make_loader(ids, block_size: int, batch_size: int, stride: int | None = None,
                shuffle: bool = True, drop_last: bool = True, seed: int = 0,
                num_workers: int = 0) -> DataLoader:
    """A DataLoader over :class:`SlidingWindowDataset` windows (seeded shuffling)."""
    ds = SlidingWindowDataset(ids, block_size, stride)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      generator=gen, num_workers=num_workers)
