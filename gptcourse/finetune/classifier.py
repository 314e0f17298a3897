"""A GPT that classifies texts: the token batches it reads, the model, what it trains, its
predictions.

* :func:`encode_text`, :class:`ClassificationDataset` + :func:`collate` -- token ids,
  truncation only when allowed, and *dynamic* padding (each batch padded to its own longest
  text; ``padding="longest"`` pads to the longest text of the dataset, as Raschka does) with
  the true ``lengths`` returned in a :class:`Batch`;
* :class:`GPTClassifier` -- a ``Linear(n_embd, num_classes)`` head on the final hidden state of
  the **last real token** of each text (found from ``lengths``, never a pad), or the mean over
  the real tokens. Causal attention means pads *after* a text cannot change its hidden states,
  so the result equals running the text alone;
* :func:`set_trainable` -- which part learns: ``"head"``, ``"last_block"``, ``"last_2"``, ``k``
  last blocks, ``"all"``, or ``"lora"`` (:mod:`gptcourse.finetune.lora` adapters + the head);
* :func:`predict` / :func:`classify_text` for new texts.

Training and evaluation are in :mod:`gptcourse.finetune.classify`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .. import validate
from ..model import GPT
from .lora import DEFAULT_TARGETS, apply_lora, lora_layers, trainable_parameters

__all__ = [
    "TRAINABLE_MODES",
    "Batch",
    "ClassificationDataset",
    "GPTClassifier",
    "classify_text",
    "collate",
    "device_of",
    "encode_text",
    "predict",
    "set_trainable",
]


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
                ids = full = encode_text(tokenizer, text, None, True, append_eot)
                if max_length is not None and len(full) > max_length:  # only these again: cut or raise
                    ids = encode_text(tokenizer, text, max_length, truncate, append_eot)
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
        validate.choice("padding", padding, ("dynamic", "longest"))
        return collate(batch, self.pad_id, self.max_length if padding == "longest" else None)

    def loader(self, batch_size: int = 8, shuffle: bool = False, seed: int = 0,
               padding: str = "dynamic", drop_last: bool = False) -> DataLoader:
        """A DataLoader of :class:`Batch` es (seeded shuffling)."""
        validate.choice("padding", padding, ("dynamic", "longest"))
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
# Using the classifier
# --------------------------------------------------------------------------------------


def device_of(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter: where its inputs must go."""
    return next(module.parameters()).device


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
    device = device_of(clf)
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
