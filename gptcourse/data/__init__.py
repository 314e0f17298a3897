"""Data for language modelling, from raw text to batches of token ids.

* :mod:`.windows` -- ``SlidingWindowDataset``: (input, target) windows over one id sequence;
* :mod:`.shards` -- ``ShardWriter`` / ``TokenShards``: token ids in memory-mapped shards
  with a JSON metadata file, random windows for training, a sequential pass for evaluation.
"""

from .clean import DEFAULT_BLOCKLIST, Blocklist, QualityFilter, normalize
from .dedup import LSH, MinHash, dedup_key, exact_duplicates, jaccard, near_duplicates
from .prepare import (
    Report,
    SourceError,
    clean_dataset,
    load_documents,
    prepare,
    split_mask,
    tokenize_to_shards,
)
from .shards import ShardError, ShardWriter, TokenShards
from .windows import SlidingWindowDataset, make_loader

__all__ = [
    "DEFAULT_BLOCKLIST",
    "LSH",
    "Blocklist",
    "MinHash",
    "QualityFilter",
    "Report",
    "ShardError",
    "ShardWriter",
    "SlidingWindowDataset",
    "SourceError",
    "TokenShards",
    "clean_dataset",
    "dedup_key",
    "exact_duplicates",
    "jaccard",
    "load_documents",
    "make_loader",
    "near_duplicates",
    "normalize",
    "prepare",
    "split_mask",
    "tokenize_to_shards",
]
