"""Classification fine-tuning: a GPT reads a text, a small head says which class it is.

The course's example is SMS spam (the UCI SMS Spam Collection, as in chapter 6 of Raschka's
*Build a Large Language Model (From Scratch)*), with a few things done better:

* :func:`load_sms_spam` -- the ``label<TAB>text`` file, with errors that name the bad line;
* :func:`split_dataset` -- balanced (the majority class downsampled) *and stratified* train /
  validation / test splits, deterministic by seed (Raschka's sizes: 1,045 / 149 / 300);
* :class:`ClassificationDataset` + :func:`collate` -- token ids, truncation only when allowed,
  and *dynamic* padding (each batch padded to its own longest text; ``padding="longest"`` pads
  to the longest text of the dataset, as Raschka does) with the true ``lengths`` returned;
* :class:`GPTClassifier` -- a ``Linear(n_embd, num_classes)`` head on the final hidden state of
  the **last real token** of each text (found from ``lengths``, never a pad), or the mean over
  the real tokens. Causal attention means pads *after* a text cannot change its hidden states,
  so the result equals running the text alone;
* :func:`set_trainable` -- which part learns: ``"head"``, ``"last_block"``, ``"last_2"``, ``k``
  last blocks, ``"all"``, or ``"lora"`` (:mod:`gptcourse.finetune.lora` adapters + the head);
* :func:`train_classifier` (AdamW through :class:`gptcourse.train.Trainer`, loss/accuracy history), :func:`evaluate_classifier` and
  :func:`classification_metrics` (accuracy, precision / recall / F1 of the positive class,
  confusion matrix ``[[tn, fp], [fn, tp]]``), :func:`plot_history`, :func:`plot_confusion`;
* :func:`predict` / :func:`classify_text` for new texts.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .. import validate
from ..model import GPT
from .lora import DEFAULT_TARGETS, apply_lora, lora_layers, trainable_parameters

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = [
    "SPAM_LABELS",
    "TRAINABLE_MODES",
    "Batch",
    "ClassificationDataset",
    "ClassifierConfig",
    "GPTClassifier",
    "classification_metrics",
    "classify_text",
    "collate",
    "encode_text",
    "evaluate_classifier",
    "load_sms_spam",
    "plot_confusion",
    "plot_history",
    "predict",
    "set_trainable",
    "split_dataset",
    "train_classifier",
]

SPAM_LABELS: tuple[str, str] = ("ham", "spam")  # label 0, label 1


# --------------------------------------------------------------------------------------
# Data: the SMS spam file, balanced stratified splits
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Tokens, padding, batches
# --------------------------------------------------------------------------------------


def _encode(tokenizer, text: str) -> list[int]:
    # texts are data: a literal "<|endoftext|>" in a message is ordinary text, not a special id
    enc = getattr(tokenizer, "encode_ordinary", None)
    return list(enc(text)) if enc is not None else list(tokenizer.encode(text))


def encode_text(tokenizer, text: str, max_length: int | None = None, truncate: bool = True,
                append_eot: bool = False) -> list[int]:
    """Token ids of one text, as :class:`ClassificationDataset` makes them: optionally ended
    by the end-of-text id (a fixed "summary" position for the last-token head) and cut to
    ``max_length`` (keeping the start; with ``append_eot`` the end-of-text id stays last).
    A text longer than ``max_length`` with ``truncate=False`` is a ``ValueError``."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    ids = _encode(tokenizer, text)
    eot = []
    if append_eot:
        if getattr(tokenizer, "eot_id", None) is None:
            raise ValueError(f"{tokenizer!r} has no end-of-text token; use append_eot=False")
        eot = [tokenizer.eot_id]
    if max_length is not None and len(ids) + len(eot) > max_length:
        if not truncate:
            raise ValueError(
                f"a text has {len(ids) + len(eot)} tokens but max_length is {max_length}: pass "
                f"truncate=True (keeps the first {max_length}) or a larger max_length (at most "
                f"the model's block_size); text: {text[:50]!r}...")
        ids = ids[: max_length - len(eot)]
    ids = ids + eot
    if not ids:
        raise ValueError("the text is empty: it has no token for the classifier to read")
    return ids


class Batch(NamedTuple):
    """A padded batch: ``ids`` (B, T), ``lengths`` (B,) real tokens per row, ``labels`` (B,)."""

    ids: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor


def collate(batch: Sequence[tuple[Sequence[int], int]], pad_id: int = 50256,
            pad_to: int | None = None) -> Batch:
    """Stack ``(ids, label)`` pairs into a :class:`Batch`, right-padding with ``pad_id`` to the
    longest sequence of the batch (dynamic padding) or to ``pad_to`` (fixed padding).
    ``pad_id`` defaults to GPT-2's end-of-text id, as in Raschka's code; any id works, since
    the classifier reads only real positions."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    lengths = [len(ids) for ids, _ in batch]
    if min(lengths) == 0:
        raise ValueError("a sequence in the batch is empty")
    T = max(lengths) if pad_to is None else pad_to
    if T < max(lengths):
        raise ValueError(f"pad_to={pad_to} is shorter than the longest sequence ({max(lengths)})")
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    for row, (seq, _) in enumerate(batch):
        ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    labels = torch.tensor([int(y) for _, y in batch], dtype=torch.long)
    return Batch(ids, torch.tensor(lengths, dtype=torch.long), labels)


class ClassificationDataset(Dataset):
    """``(text, label)`` pairs tokenized once; items are ``(ids, label)``.

    ``max_length`` caps the tokens per text (``None``: the longest text; give at most the
    model's block_size). Longer texts are cut to their first ``max_length`` tokens when
    ``truncate`` is true (``n_truncated`` counts them), else they are an error.
    ``append_eot`` ends every text with the end-of-text id (see :func:`encode_text`).
    ``pad_id`` defaults to the tokenizer's end-of-text id (else 0).
    """

    def __init__(self, examples: Sequence[tuple[str, int]], tokenizer, max_length: int | None = None,
                 truncate: bool = True, append_eot: bool = False, pad_id: int | None = None) -> None:
        if max_length is not None:
            max_length = validate.integer("max_length", max_length, min=1)
        self.tokenizer = tokenizer
        self.append_eot = append_eot
        self.items: list[tuple[list[int], int]] = []
        self.n_truncated = 0
        for i, ex in enumerate(examples):
            if not isinstance(ex, (tuple, list)) or len(ex) != 2:
                raise ValueError(f"example {i} must be a (text, label) pair, got {ex!r:.80}")
            text, label = ex
            label = validate.integer(f"example {i}: label", label, min=0)
            try:
                full = encode_text(tokenizer, text, None, True, append_eot)
                ids = full if max_length is None else encode_text(tokenizer, text, max_length,
                                                                   truncate, append_eot)
            except ValueError as err:
                raise ValueError(f"example {i}: {err}") from None
            self.n_truncated += len(ids) < len(full)
            self.items.append((ids, label))
        if not self.items:
            raise ValueError("no examples")
        self.max_length = max_length or max(len(ids) for ids, _ in self.items)
        eot = getattr(tokenizer, "eot_id", None)
        self.pad_id = pad_id if pad_id is not None else (eot if eot is not None else 0)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        return self.items[i]

    @property
    def labels(self) -> list[int]:
        return [y for _, y in self.items]

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids, _ in self.items]

    def collate(self, batch: Sequence[tuple[Sequence[int], int]], padding: str = "dynamic") -> Batch:
        """:func:`collate` with this dataset's ``pad_id``; ``padding="longest"`` pads every batch
        to ``max_length`` (Raschka's fixed padding), ``"dynamic"`` to the batch's longest."""
        if padding not in ("dynamic", "longest"):
            raise ValueError(f"padding must be 'dynamic' or 'longest', got {padding!r}")
        return collate(batch, self.pad_id, self.max_length if padding == "longest" else None)

    def loader(self, batch_size: int = 8, shuffle: bool = False, seed: int = 0,
               padding: str = "dynamic", drop_last: bool = False) -> DataLoader:
        """A DataLoader of :class:`Batch` es (seeded shuffling)."""
        self.collate([self.items[0]], padding)  # validates padding
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(self, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                          generator=gen, collate_fn=lambda b: self.collate(b, padding))


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------


class GPTClassifier(nn.Module):
    """A GPT backbone and a linear head on one pooled hidden state per text.

    ``pooling="last"``: the hidden state of the last real token (position ``lengths - 1``),
    the only position that has attended to the whole text; ``"mean"``: the mean over the real
    tokens. ``labels`` names the classes (for :func:`classify_text` and plots).
    """

    def __init__(self, backbone: GPT, num_classes: int = 2, pooling: str = "last",
                 labels: Sequence[str] | None = None) -> None:
        super().__init__()
        if not isinstance(backbone, GPT):
            raise TypeError(f"backbone must be a gptcourse GPT, got {type(backbone).__name__}")
        num_classes = validate.integer("num_classes", num_classes, min=2)
        if pooling not in ("last", "mean"):
            raise ValueError(f"pooling must be 'last' or 'mean', got {pooling!r}")
        labels = tuple(labels) if labels is not None else tuple(str(i) for i in range(num_classes))
        if len(labels) != num_classes:
            raise ValueError(f"{len(labels)} label names for {num_classes} classes")
        self.backbone = backbone
        self.num_classes, self.pooling, self.labels = num_classes, pooling, labels
        ref = backbone.transformer.wte.weight
        self.head = nn.Linear(backbone.config.n_embd, num_classes, device=ref.device, dtype=ref.dtype)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    @property
    def block_size(self) -> int:
        return self.backbone.config.block_size

    def features(self, ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled final hidden states (B, n_embd); ``lengths`` (B,) counts real tokens per row
        (``None``: every position is real)."""
        h = self.backbone.hidden_states(ids)
        B, T, _ = h.shape
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long, device=h.device)
        else:
            lengths = torch.as_tensor(lengths, device=h.device).long()
            if lengths.shape != (B,):
                raise ValueError(f"lengths must have shape ({B},), got {tuple(lengths.shape)}")
            if h.device.type != "cuda" and (int(lengths.min()) < 1 or int(lengths.max()) > T):
                raise ValueError(f"lengths must be in 1..{T} (the padded length), got "
                                 f"{lengths.tolist()[:8]}")
        if self.pooling == "last":
            return h[torch.arange(B, device=h.device), lengths - 1]
        mask = (torch.arange(T, device=h.device)[None, :] < lengths[:, None]).to(h.dtype)
        return (h * mask[..., None]).sum(1) / lengths[:, None].to(h.dtype)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits (B, num_classes)."""
        return self.head(self.features(ids, lengths))


TRAINABLE_MODES = ("head", "last_block", "last_2", "all", "lora")


def set_trainable(clf: GPTClassifier, mode: str | int, **lora_kwargs: Any) -> tuple[int, int]:
    """Choose what learns; everything else is frozen. Returns ``(trainable, total)``.

    * ``"head"`` -- the classification head only (a linear probe of the pretrained features);
    * ``"last_block"`` -- the head, the last Transformer block and the final LayerNorm (Raschka's
      choice); ``"last_2"`` -- the same with the last two blocks; an int ``k`` -- the last ``k``;
    * ``"all"`` -- every parameter (embeddings included);
    * ``"lora"`` -- LoRA adapters on the backbone's linear layers + the head; ``lora_kwargs``
      go to :func:`apply_lora` (``target_modules``, ``r``, ``alpha``, ``dropout``; applied once:
      a second call keeps the adapters it finds).
    """
    if not isinstance(clf, GPTClassifier):
        raise TypeError(f"set_trainable needs a GPTClassifier, got {type(clf).__name__}")
    n_layer = len(clf.backbone.transformer.h)
    if lora_kwargs and mode != "lora":
        raise ValueError(f"LoRA settings {sorted(lora_kwargs)} only apply to mode='lora'")
    if isinstance(mode, bool) or not isinstance(mode, (str, int)):
        raise TypeError(f"mode must be one of {TRAINABLE_MODES} or an int, got {mode!r}")
    if isinstance(mode, str) and mode not in TRAINABLE_MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(TRAINABLE_MODES)} or an "
                         f"int k (the last k blocks)")
    if isinstance(mode, int) and not 1 <= mode <= n_layer:
        raise ValueError(f"k must be in 1..{n_layer} (the backbone's blocks), got {mode}")

    for p in clf.parameters():
        p.requires_grad_(False)
    train: list[nn.Module] = [clf.head]
    if mode == "all":
        train = [clf]
    elif mode == "lora":
        if not lora_layers(clf.backbone):
            kw = {"target_modules": DEFAULT_TARGETS, **lora_kwargs}
            apply_lora(clf.backbone, **kw)
        for layer in lora_layers(clf.backbone).values():
            train += [layer.A, layer.B]
    elif mode != "head":
        k = {"last_block": 1, "last_2": 2}.get(mode, mode)
        if k > n_layer:
            raise ValueError(f"mode {mode!r} needs {k} blocks; the backbone has {n_layer}")
        train += list(clf.backbone.transformer.h[-k:]) + [clf.backbone.transformer.ln_f]
    for item in train:
        for p in ([item] if isinstance(item, nn.Parameter) else item.parameters()):
            p.requires_grad_(True)
    return trainable_parameters(clf)


# --------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], positive: int = 1,
                           num_classes: int | None = None) -> dict[str, Any]:
    """Accuracy, and precision / recall / F1 of the ``positive`` class (spam), with the
    confusion matrix ``confusion[true][predicted]`` -- for two classes ``[[tn, fp], [fn, tp]]``.
    A ratio with nothing to count (no positive predictions, say) is 0.0."""
    y_true = [int(y) for y in (y_true.tolist() if hasattr(y_true, "tolist") else y_true)]
    y_pred = [int(y) for y in (y_pred.tolist() if hasattr(y_pred, "tolist") else y_pred)]
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    if not y_true:
        raise ValueError("no labels to score")
    k = num_classes if num_classes is not None else max(2, positive + 1, max(y_true + y_pred) + 1)
    if min(y_true + y_pred) < 0 or max(y_true + y_pred) >= k:
        raise ValueError(f"labels must be in 0..{k - 1}")
    confusion = [[0] * k for _ in range(k)]
    for t, p in zip(y_true, y_pred):
        confusion[t][p] += 1
    tp = confusion[positive][positive]
    fp = sum(confusion[t][positive] for t in range(k)) - tp
    fn = sum(confusion[positive]) - tp
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = sum(confusion[i][i] for i in range(k)) / len(y_true)
    return {"accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1,
            "confusion": confusion, "n": len(y_true)}


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _batches(data, batch_size: int, padding: str = "dynamic") -> Iterable[Batch]:
    if isinstance(data, ClassificationDataset):
        return data.loader(batch_size, shuffle=False, padding=padding)
    if isinstance(data, DataLoader):
        return data
    raise TypeError(f"data must be a ClassificationDataset or a DataLoader of Batch, "
                    f"got {type(data).__name__}")


@torch.no_grad()
def evaluate_classifier(clf: GPTClassifier, data, batch_size: int = 32,
                        max_batches: int | None = None, positive: int = 1) -> dict[str, Any]:
    """Loss, :func:`classification_metrics` and the predictions of ``clf`` on ``data`` (a
    :class:`ClassificationDataset` or a DataLoader of :class:`Batch`), in eval mode."""
    was_training = clf.training
    clf.eval()
    device = _device_of(clf)
    y_true, y_pred, loss_sum = [], [], 0.0
    try:
        for i, batch in enumerate(_batches(data, batch_size)):
            if max_batches is not None and i >= max_batches:
                break
            ids, lengths, labels = (t.to(device) for t in batch)
            logits = clf(ids, lengths).float()
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            y_true += labels.tolist()
            y_pred += logits.argmax(-1).tolist()
    finally:
        clf.train(was_training)
    result = classification_metrics(y_true, y_pred, positive, clf.num_classes)
    result["loss"] = loss_sum / len(y_true)
    result["predictions"] = y_pred
    return result


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


@dataclass
class ClassifierConfig:
    """Settings of :func:`train_classifier` (defaults: Raschka's chapter 6 -- AdamW, lr 5e-5,
    weight decay 0.1, batch 8, 5 epochs)."""

    epochs: int = 5
    max_steps: int | None = None  # stop after this many steps (before the epochs end)
    batch_size: int = 8
    lr: float = 5e-5
    weight_decay: float = 0.1
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # constant | cosine | linear (to min_lr at the last step)
    min_lr: float | None = None  # default lr / 10
    grad_clip: float = 1.0  # 0: no clipping
    eval_interval: int = 0  # steps between evaluations; 0: at the end of each epoch
    eval_batches: int | None = None  # validation batches per evaluation; None: all of it
    train_eval_batches: int | None = 5  # training batches scored for the train curve; None: all
    log_interval: int = 10
    padding: str = "dynamic"  # dynamic | longest
    dtype: str = "auto"  # autocast: auto (bf16/fp16 on GPUs, fp32 on CPU) | float32 | bfloat16
    restore_best: bool = False  # end with the weights of the best validation accuracy
    seed: int = 123
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "log_interval"):
            setattr(self, name, validate.integer(name, getattr(self, name), min=1))
        for name in ("warmup_steps", "eval_interval"):
            setattr(self, name, validate.integer(name, getattr(self, name), min=0))
        for name in ("max_steps", "eval_batches", "train_eval_batches"):  # None: no limit
            if getattr(self, name) is not None:
                setattr(self, name, validate.integer(name, getattr(self, name), min=1))
        # numbers are checked, not converted: an int lr stays an int in to_dict()
        validate.number("lr", self.lr, min=0, min_open=True)
        for name in ("weight_decay", "grad_clip"):
            validate.number(name, getattr(self, name), min=0)
        if self.lr_schedule not in ("constant", "cosine", "linear"):
            raise ValueError(f"lr_schedule must be constant, cosine or linear, got {self.lr_schedule!r}")
        if self.padding not in ("dynamic", "longest"):
            raise ValueError(f"padding must be 'dynamic' or 'longest', got {self.padding!r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _TrainerData:
    """A :class:`ClassificationDataset` in the shape :class:`gptcourse.train.Trainer` draws from.

    Step ``s`` is batch ``s`` of the sequence of epochs a seeded shuffling DataLoader gives
    (the generator seeded with the Trainer's seed), so the batches are those of
    ``data.loader(batch_size, shuffle=True, seed=seed, drop_last=...)``, epoch after epoch.
    A batch is ``(ids, targets)``: ``ids`` (B, T) padded, ``targets`` (B, 2) each row's label
    and number of real tokens.
    """

    path = None  # not backed by a file (the Trainer records it in checkpoints)
    entropy_per_token = None

    def __init__(self, data: ClassificationDataset, batch_size: int, padding: str,
                 drop_last: bool) -> None:
        self.data, self.batch_size, self.padding, self.drop_last = data, batch_size, padding, drop_last
        self.vocab_size = 1 + max(data.pad_id, *(max(ids) for ids, _ in data.items))
        self._seed: int | None = None
        self._order: DataLoader | None = None  # the index loader of self._seed
        self._batches: list[list[int]] = []  # its batches so far, epoch after epoch

    def random_offsets(self, n: int, block_size: int | None = None, *, seed: int,
                       step: int) -> list[int]:
        """The example indices of step ``step`` (``n`` is the batch size)."""
        if seed != self._seed:  # one index loader per seed, its epochs drawn as needed
            self._seed, self._batches = seed, []
            self._order = DataLoader(range(len(self.data)), batch_size=self.batch_size,
                                     shuffle=True, drop_last=self.drop_last, collate_fn=list,
                                     generator=torch.Generator().manual_seed(seed))
        while len(self._batches) <= step:  # each pass draws the next epoch's order
            self._batches += list(self._order)
        return self._batches[step][:n]

    def windows(self, indices: Sequence[int], block_size: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        ids, lengths, labels = self.data.collate([self.data.items[int(i)] for i in indices],
                                                 self.padding)
        return ids, torch.stack([labels, lengths], dim=1)


class _TrainerModel(nn.Module):
    """``clf`` as the Trainer trains a model: ``forward(ids, targets) -> (logits, loss)`` with
    the targets of :class:`_TrainerData`; it counts right predictions for the running
    accuracy of the log."""

    def __init__(self, clf: GPTClassifier) -> None:
        super().__init__()
        self.clf = clf
        self.config = clf.backbone.config
        self.correct = self.seen = 0

    def forward(self, ids: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labels, lengths = targets[:, 0], targets[:, 1]
        logits = self.clf(ids, lengths)
        loss = F.cross_entropy(logits.float(), labels)
        self.correct += int((logits.argmax(-1) == labels).sum())
        self.seen += labels.numel()
        return logits, loss


def train_classifier(clf: GPTClassifier, train: ClassificationDataset,
                     val: ClassificationDataset | None = None,
                     config: ClassifierConfig | None = None) -> list[dict[str, Any]]:
    """Fine-tune the trainable parameters of ``clf`` (see :func:`set_trainable`) with AdamW and
    cross-entropy. Returns the history: records ``{"step", "epoch", "loss", "accuracy", "lr"}``
    every ``log_interval`` steps (running means over the interval, training mode) and
    evaluation records ``{"step", "epoch", "train_loss", "train_accuracy", "val_loss",
    "val_accuracy"}`` (eval mode). ``clf`` is moved to ``config.device``.

    Each optimizer step is :meth:`gptcourse.train.Trainer.train_step` (mixed precision, the
    NaN guard -- :class:`gptcourse.train.TrainingDiverged` --, clipping, the learning-rate
    schedule), on the batches of a seeded shuffling DataLoader; AdamW keeps PyTorch's default
    betas (0.9, 0.999). Around it this loop logs accuracy and evaluates the classifier.
    """
    from tqdm.auto import tqdm

    from ..train import TrainConfig, Trainer, optimizer_groups

    c = config or ClassifierConfig()
    if not isinstance(train, ClassificationDataset):
        raise TypeError(f"train must be a ClassificationDataset, got {type(train).__name__}")
    too_long = max(train.lengths + (val.lengths if val is not None else []))
    if too_long > clf.block_size:
        raise ValueError(f"a text has {too_long} tokens but the model's block_size is "
                         f"{clf.block_size}: build the datasets with max_length={clf.block_size}")
    bad = [y for y in train.labels if y >= clf.num_classes]
    if bad:
        raise ValueError(f"label {bad[0]} in the training data, but the head has {clf.num_classes} classes")
    groups = optimizer_groups(clf, c.weight_decay)
    if not any(g["params"] for g in groups):
        raise ValueError("nothing to train: every parameter is frozen; call set_trainable(clf, mode)")
    trainable = [p for g in groups for p in g["params"]]

    drop_last = len(train) >= c.batch_size  # a dataset smaller than one batch: one short batch
    per_epoch = len(train) // c.batch_size if drop_last else 1
    total = min(c.max_steps or per_epoch * c.epochs, per_epoch * c.epochs)
    min_lr = c.lr / 10 if c.min_lr is None else c.min_lr
    model = _TrainerModel(clf)
    trainer = Trainer(clf.backbone.config, _TrainerData(train, c.batch_size, c.padding, drop_last),
                      config=TrainConfig(
                          max_steps=total, batch_size=c.batch_size, lr=c.lr, min_lr=min_lr,
                          warmup_steps=c.warmup_steps, lr_schedule=c.lr_schedule,
                          weight_decay=c.weight_decay, beta2=0.999, grad_clip=float(c.grad_clip),
                          dtype=c.dtype, device=c.device, seed=c.seed, checkpoints=False,
                          progress=False, plots=False),
                      model=model)  # seeds torch with c.seed and moves clf to the device
    eval_every = c.eval_interval or per_epoch
    # a fixed shuffled order: the first train_eval_batches batches are a random sample
    eval_train = train.loader(c.batch_size * 4, shuffle=True, seed=c.seed + 1, padding=c.padding)

    def evaluate(step: int, epoch: float) -> dict[str, Any]:
        rec: dict[str, Any] = {"step": step, "epoch": round(epoch, 4)}
        tr = evaluate_classifier(clf, eval_train, max_batches=c.train_eval_batches)
        rec.update(train_loss=tr["loss"], train_accuracy=tr["accuracy"])
        if val is not None:
            va = evaluate_classifier(clf, val.loader(c.batch_size * 4, padding=c.padding),
                                     max_batches=c.eval_batches)
            rec.update(val_loss=va["loss"], val_accuracy=va["accuracy"])
        return rec

    history: list[dict[str, Any]] = []
    best: tuple[tuple[float, float], int, list[torch.Tensor]] | None = None
    run_loss, run_steps = 0.0, 0
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc="fine-tune", unit="step", disable=not c.progress, dynamic_ncols=True)
    try:
        while trainer.step < total:
            out = trainer.train_step()
            step = trainer.step
            run_loss += out["loss"]
            run_steps += 1
            bar.update(1)
            epoch = step / per_epoch
            if step % c.log_interval == 0 or step == total:
                history.append({"step": step, "epoch": round(epoch, 4), "loss": run_loss / run_steps,
                                "accuracy": model.correct / model.seen, "lr": out["lr"],
                                "seconds": time.perf_counter() - t0})
                bar.set_postfix(loss=f"{run_loss / run_steps:.4f}", refresh=False)
                run_loss, run_steps, model.correct, model.seen = 0.0, 0, 0, 0
            if step % eval_every == 0 or step == total:
                rec = evaluate(step, epoch)
                history.append(rec)
                if "val_accuracy" in rec:
                    if c.progress:
                        bar.write(f"step {step} (epoch {epoch:.2f}): train acc "
                                  f"{rec['train_accuracy']:.2%}, val acc "
                                  f"{rec['val_accuracy']:.2%}, val loss {rec['val_loss']:.4f}")
                    score = (rec["val_accuracy"], -rec["val_loss"])
                    if c.restore_best and (best is None or score > best[0]):
                        best = (score, step, [p.detach().clone() for p in trainable])
    finally:
        bar.close()
    if c.restore_best and best is not None:
        with torch.no_grad():
            for p, saved in zip(trainable, best[2]):
                p.copy_(saved)
        history.append({"step": trainer.step, "restored_step": best[1], "val_accuracy": best[0][0]})
    clf.eval()
    return history


# --------------------------------------------------------------------------------------
# Using the classifier
# --------------------------------------------------------------------------------------


@torch.no_grad()
def predict(clf: GPTClassifier, tokenizer, texts: str | Sequence[str], batch_size: int = 32,
            max_length: int | None = None, append_eot: bool = False,
            return_probs: bool = False) -> list[int] | tuple[list[int], list[list[float]]]:
    """Class ids for ``texts`` (and the class probabilities with ``return_probs``). Texts are
    encoded as for training (:func:`encode_text`; use the same ``append_eot``) and cut to
    ``max_length`` (default: the model's block_size)."""
    if isinstance(texts, str):
        texts = [texts]
    max_length = min(max_length or clf.block_size, clf.block_size)
    encoded = [(encode_text(tokenizer, t, max_length, True, append_eot), 0) for t in texts]
    eot = getattr(tokenizer, "eot_id", None)
    pad = eot if eot is not None else 0
    was_training = clf.training
    clf.eval()
    device = _device_of(clf)
    preds, probs = [], []
    try:
        for i in range(0, len(encoded), batch_size):
            ids, lengths, _ = collate(encoded[i:i + batch_size], pad)
            logits = clf(ids.to(device), lengths.to(device)).float()
            preds += logits.argmax(-1).tolist()
            probs += logits.softmax(-1).tolist()
    finally:
        clf.train(was_training)
    return (preds, probs) if return_probs else preds


def classify_text(clf: GPTClassifier, tokenizer, text: str, **kwargs: Any) -> str:
    """The class name (``clf.labels``) of one text, e.g. ``"spam"``; ``kwargs`` go to :func:`predict`."""
    return clf.labels[predict(clf, tokenizer, [text], **kwargs)[0]]


# --------------------------------------------------------------------------------------
# Figures (matplotlib.figure.Figure: no pyplot state)
# --------------------------------------------------------------------------------------


def plot_history(history: Sequence[dict[str, Any]], title: str | None = None) -> Figure:
    """Loss (left) and accuracy (right) over steps: training running means and the
    train / validation evaluations of :func:`train_classifier`."""
    from matplotlib.figure import Figure

    logs = [r for r in history if "loss" in r]
    evals = [r for r in history if "train_loss" in r]
    if not logs and not evals:
        raise ValueError("the history has no loss records; pass what train_classifier returned")
    fig = Figure(figsize=(10, 3.6))
    ax_loss, ax_acc = fig.subplots(1, 2)
    if logs:
        ax_loss.plot([r["step"] for r in logs], [r["loss"] for r in logs], lw=1, alpha=0.6,
                     label="train (running)")
        ax_acc.plot([r["step"] for r in logs], [r["accuracy"] for r in logs], lw=1, alpha=0.6,
                    label="train (running)")
    for key, name, style in (("train", "train (eval)", "o-"), ("val", "validation", "s-")):
        pts = [r for r in evals if f"{key}_loss" in r]
        if pts:
            ax_loss.plot([r["step"] for r in pts], [r[f"{key}_loss"] for r in pts], style, label=name)
            ax_acc.plot([r["step"] for r in pts], [r[f"{key}_accuracy"] for r in pts], style, label=name)
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_confusion(confusion: Sequence[Sequence[int]], labels: Sequence[str] = SPAM_LABELS,
                   title: str = "confusion matrix") -> Figure:
    """The confusion matrix (rows: true class, columns: predicted) with the counts written in."""
    from matplotlib.figure import Figure

    mat = [[int(v) for v in row] for row in confusion]
    k = len(mat)
    if k == 0 or any(len(row) != k for row in mat):
        raise ValueError("confusion must be a square matrix (rows: true class, columns: predicted)")
    if len(labels) != k:
        raise ValueError(f"{len(labels)} labels for a {k}x{k} matrix")
    fig = Figure(figsize=(1.3 * k + 1.8, 1.3 * k + 1.2))
    ax = fig.subplots()
    im = ax.imshow(mat, cmap="Blues")
    top = max(max(row) for row in mat) or 1
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{mat[i][j]:,}", ha="center", va="center",
                    color="white" if mat[i][j] > top / 2 else "black", fontsize=12)
    ax.set_xticks(range(k), labels)
    ax.set_yticks(range(k), labels)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig
