"""Classification fine-tuning: a GPT reads a text, a small head says which class it is.

The course's example is SMS spam (the UCI SMS Spam Collection, as in chapter 6 of Raschka's
*Build a Large Language Model (From Scratch)*), with a few things done better. One import for
lesson 10, gathering the modules that do the work:

* :mod:`.spam` -- the data set: :func:`load_sms_spam` (errors that name the bad line) and
  :func:`split_dataset` (balanced *and stratified* train / validation / test splits,
  deterministic by seed; Raschka's sizes: 1,045 / 149 / 300);
* :mod:`.classifier` -- the token batches (:class:`ClassificationDataset`, :func:`collate`:
  dynamic padding with the true ``lengths``), :class:`GPTClassifier` (a linear head on the
  last real token, or the mean over the real tokens), :func:`set_trainable` (``"head"``,
  ``"last_block"``, ``"last_2"``, ``k`` last blocks, ``"all"``, ``"lora"``), and
  :func:`predict` / :func:`classify_text` for new texts;
* this module -- :func:`train_classifier` (AdamW through :class:`gptcourse.train.Trainer`,
  loss/accuracy history), :func:`evaluate_classifier` and :func:`classification_metrics`
  (accuracy, precision / recall / F1 of the positive class, confusion matrix
  ``[[tn, fp], [fn, tp]]``), :func:`plot_history`, :func:`plot_confusion`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .. import validate
from .classifier import (
    TRAINABLE_MODES,
    Batch,
    ClassificationDataset,
    GPTClassifier,
    classify_text,
    collate,
    device_of,
    encode_text,
    predict,
    set_trainable,
)
from .spam import SPAM_LABELS, load_sms_spam, split_dataset

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
    device = device_of(clf)
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
        validate.choice("lr_schedule", self.lr_schedule, ("constant", "cosine", "linear"))
        validate.choice("padding", self.padding, ("dynamic", "longest"))
        validate.choice("dtype", self.dtype, ("auto", "float32", "bfloat16", "float16"))

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
    eval_val = val.loader(c.batch_size * 4, padding=c.padding) if val is not None else None

    def evaluate(step: int, epoch: float) -> dict[str, Any]:
        rec: dict[str, Any] = {"step": step, "epoch": round(epoch, 4)}
        tr = evaluate_classifier(clf, eval_train, max_batches=c.train_eval_batches)
        rec.update(train_loss=tr["loss"], train_accuracy=tr["accuracy"])
        if eval_val is not None:
            va = evaluate_classifier(clf, eval_val, max_batches=c.eval_batches)
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
