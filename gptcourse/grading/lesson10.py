"""Exercises of lesson 10, classification fine-tuning: a padding collate, the padding a batch
plan wastes, last-real-token pooling, classifier logits from a GPT, which parameters train,
the confusion matrix and precision / recall / F1."""

from __future__ import annotations

import copy
import random

import torch

from ..finetune.classify import (
    GPTClassifier,
    classification_metrics,
    collate,
    set_trainable,
)
from ..model import GPT, GPTConfig
from . import Case, Task, ints, register, tensors

# -- helpers -----------------------------------------------------------------------------------


def _seqs(seed: int, n: int, vocab: int = 50, max_len: int = 9) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(rng.randint(1, max_len))] for _ in range(n)]


def _labels(seed: int, n: int, k: int = 2) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(k) for _ in range(n)]


def _tiny_gpt(seed: int, n_layer: int = 2) -> GPT:
    with torch.random.fork_rng():  # leave the learner's random state alone
        torch.manual_seed(seed)
        cfg = GPTConfig(vocab_size=61, block_size=16, n_layer=n_layer, n_head=2, n_embd=16, dropout=0.0)
        return GPT(cfg).eval()


def _tiny_classifier(seed: int, n_layer: int = 2) -> GPTClassifier:
    with torch.random.fork_rng():
        torch.manual_seed(seed + 1000)
        return GPTClassifier(_tiny_gpt(seed, n_layer))


_same_tensors = tensors("ids", "lengths", "labels")


def _close(atol: float):
    def compare(expected, got):
        if not isinstance(got, torch.Tensor):
            return f"expected a torch.Tensor, got {type(got).__name__}"
        if got.shape != expected.shape:
            return f"shape {tuple(got.shape)} instead of {tuple(expected.shape)}"
        if not torch.allclose(got.detach().double(), expected.double(), rtol=1e-5, atol=atol):
            diff = (got.detach().double() - expected.double()).abs().max()
            return f"values differ (max abs diff {float(diff):.3g}, tolerance {atol:g})"
        return None

    return compare


_pair_of_ints = ints("trainable", "total")


def _three_floats(expected, got) -> str | None:
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        return f"expected a (precision, recall, f1) tuple, got {got!r:.80}"
    for name, e, g in zip(("precision", "recall", "f1"), expected, got):
        try:
            g = float(g)
        except (TypeError, ValueError):
            return f"{name}: expected a number, got {type(g).__name__}"
        if abs(g - e) > 1e-9:
            return f"{name}: {g!r} instead of {e!r}"
    return None


# -- 10.1 padding collate ----------------------------------------------------------------------


def _pad_batch(seqs, labels, pad_id):
    batch = collate(list(zip(seqs, labels)), pad_id=pad_id)
    return batch.ids, batch.lengths, batch.labels


def _cases_pad():
    out = [Case(([[5]], [1], 0), label="one sequence of one token"),
           Case(([[1, 2, 3], [4, 5, 6]], [0, 1], 99), label="equal lengths: no padding"),
           Case(([[7, 8], [9]], [1, 0], 50256), label="GPT-2's end-of-text as the pad")]
    for seed in range(6):
        n = 1 + seed * 2
        out.append(Case((_seqs(seed, n), _labels(seed, n), [0, 50256, 3][seed % 3]),
                        label=f"{n} random sequences"))
    out += [Case(([[5, 0, 5], [0], [5, 5, 0, 0]], [1, 0, 1], 0),
                 label="the pad id also occurs inside the texts (lengths must come from the lists)"),
            Case(([[1] * 40] + [[2]] * 30 + [[3] * 17], _labels(9, 32, 3), 7), label="one 40-token text among short ones"),
            Case((_seqs(10, 24, vocab=50257, max_len=64), _labels(10, 24), 50256),
                 label="24 texts of up to 64 GPT-2 ids")]
    return out


# -- 10.2 padding tokens: fixed vs dynamic -----------------------------------------------------


def _padding_waste(lengths, batch_size):
    # fixed: every batch padded to the longest of all; dynamic: to the longest of its batch
    seqs = [[0] * n for n in lengths]
    longest = max(lengths)
    fixed = dynamic = 0
    for i in range(0, len(seqs), batch_size):
        chunk = [(s, 0) for s in seqs[i:i + batch_size]]
        real = sum(len(s) for s, _ in chunk)
        fixed += collate(chunk, pad_id=0, pad_to=longest).ids.numel() - real
        dynamic += collate(chunk, pad_id=0).ids.numel() - real
    return fixed, dynamic


def _cases_waste():
    out = [Case(([4], 1), label="one text"), Case(([3, 3, 3, 3], 2), label="equal lengths"),
           Case(([1, 10, 1, 1], 2), label="one long text"), Case(([5, 2, 7], 2), label="a last, short batch")]
    rng = random.Random(10)
    for n, b in ((20, 4), (33, 8), (50, 16), (64, 1), (7, 16)):
        out.append(Case(([rng.randint(1, 120) for _ in range(n)], b), label=f"{n} texts, batch {b}"))
    out += [Case(([1] * 9, 4), label="every text one token: nothing wasted"),
            Case((sorted(rng.randint(1, 200) for _ in range(40)), 8),
                 label="40 texts sorted by length: dynamic padding wastes little"),
            Case(([rng.randint(1, 1024) for _ in range(100)], 32), label="100 texts up to 1024 tokens, batch 32")]
    return out


_compare_waste = ints("fixed", "dynamic")


# -- 10.3 last-real-token pooling --------------------------------------------------------------


def _pool_last(hidden, lengths):
    # what GPTClassifier.features does with pooling="last"
    return hidden[torch.arange(hidden.size(0)), lengths.long() - 1]


def _cases_pool():
    g = torch.Generator().manual_seed(3)
    out = [Case((torch.randn(1, 1, 4, generator=g), torch.tensor([1])), label="one token"),
           Case((torch.randn(2, 5, 3, generator=g), torch.tensor([5, 5])), label="no padding")]
    for B, T, C in ((3, 6, 4), (4, 9, 8), (8, 16, 5), (16, 32, 12), (2, 64, 48)):
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        out.append(Case((torch.randn(B, T, C, generator=g), lengths), label=f"B={B}, T={T}"))
    out += [Case((torch.randn(1, 10, 6, generator=g), torch.tensor([3])), label="one row, 7 pads after 3 tokens"),
            Case((torch.randn(5, 7, 3, generator=g), torch.ones(5, dtype=torch.long)),
                 label="every text one token: position 0"),
            Case((torch.randn(4, 8, 2, generator=g), torch.tensor([8, 1, 8, 2])), label="full rows and short rows"),
            Case((torch.randn(6, 5, 4, generator=g, dtype=torch.float64), torch.tensor([5, 4, 3, 2, 1, 5])),
                 label="float64 hidden states")]
    return out


# -- 10.4 classifier logits --------------------------------------------------------------------


def _classifier_logits(backbone, head, ids, lengths):
    clf = GPTClassifier(copy.deepcopy(backbone), num_classes=head.out_features)
    clf.head.load_state_dict(head.state_dict())
    with torch.no_grad():
        return clf.eval()(ids, lengths)


def _cases_logits():
    out = []
    for seed, (B, T, k, n_layer, kind) in enumerate((
            (1, 4, 2, 2, "random"), (3, 7, 2, 2, "random"), (4, 12, 3, 2, "random"), (2, 16, 2, 2, "random"),
            (5, 16, 4, 2, "random"), (3, 9, 2, 1, "random"), (2, 11, 5, 3, "random"), (4, 6, 2, 2, "full"),
            (3, 8, 3, 2, "one"), (2, 1, 2, 2, "full"))):
        g = torch.Generator().manual_seed(40 + seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            head = torch.nn.Linear(16, k)
        if kind == "full":
            lengths = torch.full((B,), T, dtype=torch.long)
        elif kind == "one":
            lengths = torch.ones(B, dtype=torch.long)
        else:
            lengths = torch.randint(1, T + 1, (B,), generator=g)
        ids = torch.randint(0, 61, (B, T), generator=g)
        ids[torch.arange(T)[None, :] >= lengths[:, None]] = 60  # pads after the text
        what = {"random": "", "full": ", no padding", "one": ", one real token per row"}[kind]
        out.append(Case((_tiny_gpt(seed, n_layer), head, ids, lengths),
                        label=f"B={B}, T={T}, {k} classes, {n_layer} blocks{what}"))
    return out


# -- 10.5 which parameters train ---------------------------------------------------------------


def _freeze(clf, mode):
    return set_trainable(clf, mode)


def _cases_freeze():
    return [Case((_tiny_classifier(s, n_layer), mode), label=f"{n_layer} blocks, {mode}")
            for s, (n_layer, mode) in enumerate(((2, "head"), (2, "last_block"), (3, "last_2"),
                                                 (2, "all"), (3, "last_block"), (1, "head"),
                                                 (2, "last_2"), (4, "last_2"), (3, "all"), (1, "last_block"),
                                                 (4, "head")))]


# -- 10.6 confusion matrix ---------------------------------------------------------------------


def _confusion(y_true, y_pred, num_classes=2):
    return classification_metrics(y_true, y_pred, num_classes=num_classes)["confusion"]


def _cases_confusion():
    out = [Case(([0], [0]), label="one right"), Case(([1, 1], [0, 0]), label="all wrong"),
           Case(([0, 1, 1, 0], [0, 1, 0, 1])), Case(([2, 0, 1], [2, 2, 1], 3), label="3 classes")]
    for seed in range(4):
        n = 10 + 7 * seed
        k = 2 if seed < 3 else 4
        out.append(Case((_labels(seed, n, k), _labels(100 + seed, n, k), k), label=f"{n} random, {k} classes"))
    out += [Case(([0, 1, 0, 1], [1, 1, 0, 0], 3), label="3 classes, class 2 never occurs: a row and column of 0s"),
            Case(([0, 1, 1, 0, 1], [1, 1, 1, 1, 1]), label="everything predicted as class 1"),
            Case((_labels(7, 60, 5), _labels(107, 60, 5), 5), label="60 random, 5 classes")]
    return out


# -- 10.7 precision, recall, F1 ----------------------------------------------------------------


def _prf(y_true, y_pred, positive=1):
    m = classification_metrics(y_true, y_pred, positive=positive)
    return m["precision"], m["recall"], m["f1"]


def _cases_prf():
    out = [Case(([1, 0, 1, 1], [1, 0, 0, 1]), label="one spam missed"),
           Case(([0, 0, 0], [0, 0, 0]), label="no spam at all: 0.0 by convention"),
           Case(([1, 1], [0, 0]), label="no spam predicted"),
           Case(([0, 0, 1], [1, 1, 1]), label="everything called spam"),
           Case(([1, 0, 1, 0], [1, 0, 1, 0]), label="perfect"),
           Case(([1, 0, 1, 0, 0], [0, 0, 1, 1, 0]), {"positive": 0}, label="ham as the positive class")]
    for seed in range(4):
        n = 12 + 9 * seed
        out.append(Case((_labels(seed, n), _labels(50 + seed, n)), label=f"{n} random labels"))
    return out


for _task in (
    Task("10.1", "pad a batch", _pad_batch, _cases_pad, _same_tensors,
         hint="a (B, longest) tensor filled with pad_id, each row's ids copied to its start; lengths and labels "
              "are long tensors of shape (B,)"),
    Task("10.2", "padding tokens: fixed vs dynamic", _padding_waste, _cases_waste, _compare_waste,
         hint="batches are consecutive slices of batch_size texts (the last may be shorter); fixed padding pads "
              "to the longest text overall, dynamic padding to the longest text of each batch"),
    Task("10.3", "last-real-token pooling", _pool_last, _cases_pool, _close(0.0),
         hint="row b's last real token sits at position lengths[b] - 1: index the batch and the time dimension "
              "together"),
    Task("10.4", "classifier logits from a GPT", _classifier_logits, _cases_logits, _close(1e-5),
         hint="the backbone's hidden states (not its logits), pooled at each row's last real token, go through "
              "the head; no gradients needed"),
    Task("10.5", "which parameters train", _freeze, _cases_freeze, _pair_of_ints, pure=False,
         hint="freeze everything first, then unfreeze what the mode trains; 'last_block' and 'last_2' also train "
              "the final LayerNorm; tied weights count once"),
    Task("10.6", "confusion matrix", _confusion, _cases_confusion,
         hint="rows are the true class, columns the predicted class; start from zeros and count each (true, "
              "predicted) pair"),
    Task("10.7", "precision, recall and F1", _prf, _cases_prf, _three_floats,
         hint="count true positives, false positives and false negatives for the positive class; a ratio whose "
              "denominator is 0 is 0.0"),
):
    register(_task)
