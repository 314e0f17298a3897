"""Data for language modelling, from raw text to batches of token ids.

* :mod:`.windows` -- ``SlidingWindowDataset``: (input, target) windows over one id sequence;
* :mod:`.shards` -- ``ShardWriter`` / ``TokenShards``: token ids in memory-mapped shards
  with a JSON metadata file, random windows for training, a sequential pass for evaluation;
* :mod:`.clean` -- ``normalize`` (Unicode NFC, control characters, whitespace), Gopher-style
  quality rules (``QualityFilter``) and a whole-word ``Blocklist``;
* :mod:`.dedup` -- exact duplicates (hash of the normalised text) and near duplicates
  (``MinHash`` signatures + ``LSH`` banding, candidates verified);
* :mod:`.prepare` -- the pipeline on Hugging Face ``datasets``: ``load_documents`` (corpora,
  files, the hub), ``clean_dataset`` (counts per rule in a ``Report``), ``tokenize_to_shards``
  (``num_proc`` workers, end-of-text before each document) and ``prepare`` (all of it, as
  ``gptcourse prepare`` runs it).
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
