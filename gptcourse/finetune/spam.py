"""The SMS spam data set of lesson 10: the labelled file and its train / validation / test splits.

* :func:`load_sms_spam` -- the ``label<TAB>text`` file (the UCI SMS Spam Collection by
  default), with errors that name the bad line;
* :func:`split_dataset` -- balanced (the majority class downsampled) *and stratified* train /
  validation / test splits of any ``(text, label)`` pairs, deterministic by seed (Raschka's
  sizes for SMS spam: 1,045 / 149 / 300);
* :data:`SPAM_LABELS` -- the class names, label 0 = ham, 1 = spam.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

__all__ = ["SPAM_LABELS", "load_sms_spam", "split_dataset"]

SPAM_LABELS: tuple[str, str] = ("ham", "spam")  # label 0, label 1


def load_sms_spam(path: str | Path | None = None) -> list[tuple[str, int]]:
    """``(text, label)`` pairs from a ``label<TAB>text`` file, label 0 = ham, 1 = spam.

    The default file is the UCI SMS Spam Collection (``corpora.path("sms-spam")``, 5,574
    lines: 4,827 ham, 747 spam). Blank lines are skipped; a line without a tab, with a label
    other than ham/spam, or an empty file is a ``ValueError`` naming the file and line.
    """
    if path is None:
        from .. import corpora

        path = corpora.path("sms-spam")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass the path of a label<TAB>text file")
    names = {name: i for i, name in enumerate(SPAM_LABELS)}
    examples = []
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            label, tab, text = line.partition("\t")
            if not tab:
                raise ValueError(f"{path}, line {lineno}: no tab; each line must be 'label<TAB>text', "
                                 f"got {line[:60]!r}")
            key = label.strip().lower()
            if key not in names:
                raise ValueError(f"{path}, line {lineno}: unknown label {label!r}; "
                                 f"expected one of {', '.join(SPAM_LABELS)}")
            examples.append((text, names[key]))
    if not examples:
        raise ValueError(f"{path} holds no examples (the file is empty)")
    return examples


def split_dataset(examples: Sequence[tuple[str, int]], fractions: Sequence[float] = (0.7, 0.1, 0.2),
                  seed: int = 123, balance: bool = True,
                  dedup: bool = False) -> dict[str, list[tuple[str, int]]]:
    """Split ``(text, label)`` pairs into ``{"train", "val", "test"}``.

    * ``balance=True`` first downsamples every class to the size of the smallest (a random
      sample; SMS spam: 747 spam + 747 ham, as Raschka does);
    * the splits are **stratified**: each class is spread over train / val / test in the
      given fractions (counts within one of ``fraction * class size``). Split sizes are
      ``int(n * f_train)``, ``int(n * f_val)`` and the rest, as in Raschka's code (1,045 /
      149 / 300 for SMS spam);
    * ``dedup=True`` drops repeated texts first (the SMS file repeats some messages, so a test
      message can also appear in the training split otherwise);
    * the result depends only on ``seed``; each split is shuffled.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three numbers >= 0 (train, val, test) adding up to 1, "
                         f"got {fractions}")
    examples = list(examples)
    if not examples:
        raise ValueError("no examples to split")
    for i, ex in enumerate(examples):
        if (not isinstance(ex, (tuple, list)) or len(ex) != 2 or not isinstance(ex[0], str)
                or isinstance(ex[1], bool) or not isinstance(ex[1], int)):
            raise ValueError(f"example {i} must be a (text, int label) pair, got {ex!r:.80}")
    if dedup:
        seen: set[str] = set()
        examples = [ex for ex in examples if not (ex[0] in seen or seen.add(ex[0]))]
    rng = random.Random(seed)
    by_class: dict[int, list[tuple[str, int]]] = {}
    for ex in examples:
        by_class.setdefault(ex[1], []).append(ex)
    groups = {c: rng.sample(v, len(v)) for c, v in sorted(by_class.items())}  # shuffled copies
    if balance:
        n_min = min(len(v) for v in groups.values())
        groups = {c: v[:n_min] for c, v in groups.items()}
    # interleave the classes evenly (the i-th of n examples of a class sits at (i + 0.5) / n),
    # so any contiguous cut holds each class in proportion: stratified splits
    order = sorted(((i + 0.5) / len(v), c, ex) for c, v in groups.items() for i, ex in enumerate(v))
    ordered = [ex for _, _, ex in order]
    n = len(ordered)
    n_train, n_val = int(n * fractions[0]), int(n * fractions[1])
    parts = {"train": ordered[:n_train], "val": ordered[n_train:n_train + n_val],
             "test": ordered[n_train + n_val:]}
    return {k: rng.sample(v, len(v)) for k, v in parts.items()}
