"""Data for language modelling, from raw text to batches of token ids.

* :mod:`.windows` -- ``SlidingWindowDataset``: (input, target) windows over one id sequence;
* :mod:`.shards` -- ``ShardWriter`` / ``TokenShards``: token ids in memory-mapped shards
  with a JSON metadata file, random windows for training, a sequential pass for evaluation.
"""

from .shards import ShardError, ShardWriter, TokenShards
from .windows import SlidingWindowDataset, make_loader

__all__ = [
    "ShardError",
    "ShardWriter",
    "SlidingWindowDataset",
    "TokenShards",
    "make_loader",
]
