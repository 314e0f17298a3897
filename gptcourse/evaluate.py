"""Evaluation and safety: perplexity, multiple-choice scoring, accuracy with a confidence
interval, an output filter and a bias probe.

* :func:`token_logprobs` -- ``log p(x_t | x_<t)`` of every token of a batch of sequences.
* :func:`perplexity` -- the mean negative log-likelihood of a long text, scored in windows of
  at most ``block_size`` tokens with Hugging Face's sliding-window method
  (https://huggingface.co/docs/transformers/perplexity): each window moves ``stride`` tokens
  and scores only the tokens the previous windows did not, so every token but the first is
  scored exactly once, each with at least ``block_size - stride + 1`` tokens of context
  (except in the first window). ``stride = block_size`` is non-overlapping chunks (fast, the
  pessimistic number ``Trainer.evaluate`` reports); ``stride = 1`` gives every token its
  longest possible context (one forward pass per token).
* Multiple choice, HellaSwag style (Zellers et al. 2019): a context and several endings;
  the model picks the ending it finds most likely. :func:`score_choices` measures the
  log-likelihood of each ending's tokens given the context, :func:`predict_choice` picks
  by the sum (``acc``) or a length-normalised score (``acc_norm``), and
  :func:`multiple_choice_eval` runs a whole set of records (HellaSwag's format; offline
  from a JSONL file with :func:`read_jsonl`, online via :func:`load_hellaswag`).
* :func:`accuracy` and :func:`bootstrap_ci` -- a percentile-bootstrap confidence interval,
  because 100 questions measure an accuracy only to about +/- 0.09.
* Safety: :class:`~gptcourse.generate.OutputFilter` (re-exported here; used by
  ``generate(..., output_filter=...)`` and :func:`~gptcourse.generate.generate_text`) and
  :func:`bias_probe`, which compares the likelihood of the same completions after templated
  sentences that differ in one attribute.

Normalisation, precisely (the numbers people quote differ in it):

* ``norm="tokens"`` -- the mean log-probability per ending token. This is what Karpathy's
  ``hellaswag.py`` (nanoGPT / llm.c, "completion style") calls ``acc_norm``: GPT-2 124M
  scores acc 0.2859, acc_norm 0.2955 on the 10,042 validation items, with the plain ``ctx``
  as context and ``" " + ending`` as continuation (``style="plain"`` here).
* ``norm="chars"`` -- the sum divided by the ending's length in **characters** (Python
  ``len`` of the ending without the leading space; HellaSwag is nearly all ASCII, so
  bytes and characters agree there). This is lm-evaluation-harness's ``acc_norm``
  (``completion_len = len(choice)``); the harness also builds its prompt differently
  (activity label, bracket artefacts removed: ``style="harness"``) and reports 0.2892 /
  0.3114 for GPT-2 124M.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import validate
from .generate import OutputFilter, encode_or_eot, generate_text

__all__ = [
    "HELLASWAG_HUB_ID",
    "DatasetUnavailableError",
    "OutputFilter",
    "accuracy",
    "bias_probe",
    "bootstrap_ci",
    "generate_text",
    "hellaswag_example",
    "load_hellaswag",
    "multiple_choice_eval",
    "perplexity",
    "predict_choice",
    "read_jsonl",
    "score_choices",
    "sliding_windows",
    "token_logprobs",
]

#: The HellaSwag repository on the Hugging Face hub (data files, loads with ``datasets`` >= 4).
HELLASWAG_HUB_ID = "Rowan/hellaswag"


class DatasetUnavailableError(RuntimeError):
    """A dataset could not be loaded (offline, ``datasets`` missing, hub error)."""


# --------------------------------------------------------------------------------------
# Model plumbing
# --------------------------------------------------------------------------------------


def _logits(model, idx: torch.Tensor) -> torch.Tensor:
    """Logits (B, T, V) of a course ``GPT`` (returns ``(logits, loss)``), a plain module
    returning logits, or a ``transformers`` model (returns an object with ``.logits``)."""
    out = model(idx)
    if isinstance(out, tuple):
        out = out[0]
    return getattr(out, "logits", out)


def _block_size(model) -> int | None:
    config = getattr(model, "config", None)
    for name in ("block_size", "n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


@contextmanager
def _eval_mode(model):
    """``model.eval()`` and ``torch.no_grad()`` for the block, the training flag restored."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if hasattr(model, "train"):
            model.train(was_training)


def _check_int(name: str, value: object, low: int = 1) -> int:
    return validate.integer(name, value, min=low)


def _as_batch(ids, device: torch.device) -> torch.Tensor:
    if isinstance(ids, np.ndarray):
        ids = torch.from_numpy(ids)
    if not isinstance(ids, torch.Tensor):
        ids = torch.tensor(ids)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2:
        raise ValueError(f"ids must have shape (time,) or (batch, time), got {tuple(ids.shape)}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"ids must be integer token ids, got dtype {ids.dtype}")
    return ids.to(device=device, dtype=torch.long)


def token_logprobs(model, ids) -> torch.Tensor:
    """``lp[b, t] = log p(ids[b, t+1] | ids[b, :t+1])``: shape (B, T-1), float32.

    ``ids`` is a (B, T) or (T,) tensor, array or list of token ids with ``2 <= T <=
    block_size + 1`` (the last token is only a target). The model runs on ``ids[:, :-1]`` in
    eval mode without gradients; the result is on the model's device. Rows padded on the
    right give the same values at their real positions as alone: attention is causal.
    """
    device = _device(model)
    idx = _as_batch(ids, device)
    T = idx.size(1)
    if T < 2:
        raise ValueError(f"need at least 2 tokens to score one (a context and a target), got {T}")
    block = _block_size(model)
    if block is not None and T - 1 > block:
        raise ValueError(f"{T} tokens need {T - 1} positions but the model's block_size is "
                         f"{block}; score at most block_size + 1 tokens (perplexity() "
                         "slides a window over longer texts)")
    with _eval_mode(model):
        logits = _logits(model, idx[:, :-1]).float()
        return logits.log_softmax(-1).gather(-1, idx[:, 1:, None]).squeeze(-1)


# --------------------------------------------------------------------------------------
# Perplexity with a sliding window
# --------------------------------------------------------------------------------------


def sliding_windows(num_tokens: int, block_size: int,
                    stride: int | None = None) -> list[tuple[int, int, int]]:
    """The windows :func:`perplexity` scores, as ``(begin, length, skip)``.

    Window ``k`` begins at ``begin = k * stride``; its inputs are ``tokens[begin : begin +
    length]`` (``length <= block_size``) and its targets ``tokens[begin + 1 : begin + length
    + 1]``, of which the first ``skip`` were scored by earlier windows (they are context
    only). Targets ``1 .. num_tokens - 1`` are each scored exactly once; the last window
    ends at the last token (it may be shorter). ``stride`` defaults to ``block_size``.

    >>> sliding_windows(10, block_size=4, stride=2)
    [(0, 4, 0), (2, 4, 2), (4, 4, 2), (6, 3, 2)]
    """
    num_tokens = _check_int("num_tokens", num_tokens, 2)
    block_size = _check_int("block_size", block_size)
    stride = block_size if stride is None else _check_int("stride", stride)
    if stride > block_size:
        raise ValueError(f"stride {stride} > block_size {block_size} would skip tokens; "
                         "use a stride of at most block_size (= non-overlapping windows)")
    last = num_tokens - 1  # the index of the last target
    out, begin, scored = [], 0, 0  # scored: targets 1..scored are done
    while True:
        end = min(begin + block_size, last)
        out.append((begin, end - begin, scored - begin))
        if end == last:
            return out
        scored, begin = end, begin + stride


def _token_source(tokens) -> tuple[int, Callable[[int, int], np.ndarray]]:
    """``(number of tokens, read(start, length) -> int64 array)`` for ids or TokenShards."""
    from .data.shards import TokenShards

    if isinstance(tokens, TokenShards):
        return len(tokens), tokens.read
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.detach().cpu().numpy()
    arr = np.asarray(tokens)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1:
        raise ValueError(f"tokens must be one sequence of ids (shape (N,) or (1, N)), got "
                         f"shape {arr.shape}; concatenate documents (with an end-of-text id "
                         "between them) first")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"tokens must be integer ids, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    return arr.size, lambda start, length: arr[start:start + length]


def perplexity(
    model,
    tokens,
    *,
    block_size: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, float | int]:
    """Mean negative log-likelihood and perplexity of ``tokens`` under ``model``.

    ``tokens``: a list, array or 1-D tensor of ids, or a :class:`~gptcourse.data.TokenShards`
    (read window by window, never loaded whole). Windows come from :func:`sliding_windows`:
    ``block_size`` defaults to the model's, ``stride`` to ``block_size`` (non-overlapping
    windows); a smaller stride gives each scored token more context, so a better (lower)
    loss for a model that uses context, at ``block_size / stride`` times the cost.
    ``batch_size`` windows run per forward pass, on ``device`` (default: the model's; the
    model is not moved). Returns ``{"loss", "perplexity", "tokens", "windows"}``: ``loss`` is
    the mean over the ``tokens = len(tokens) - 1`` scored targets, in nats.
    """
    n, read = _token_source(tokens)
    if n < 2:
        raise ValueError(f"perplexity needs at least 2 tokens (one to condition on, one to "
                         f"score), got {n}")
    model_block = _block_size(model)
    if block_size is None:
        if model_block is None:
            raise ValueError("the model does not say its context length: pass block_size=")
        block_size = model_block
    block_size = _check_int("block_size", block_size)
    if model_block is not None and block_size > model_block:
        raise ValueError(f"block_size {block_size} is larger than the model's context "
                         f"({model_block})")
    batch_size = _check_int("batch_size", batch_size)
    windows = sliding_windows(n, block_size, stride)
    device = torch.device(device) if device is not None else _device(model)

    # consecutive windows of the same length run together (all but the last are full)
    batches: list[list[tuple[int, int, int]]] = []
    for w in windows:
        if batches and len(batches[-1]) < batch_size and batches[-1][-1][1] == w[1]:
            batches[-1].append(w)
        else:
            batches.append([w])

    from tqdm.auto import tqdm

    nll, count = 0.0, 0
    with _eval_mode(model), tqdm(total=len(windows), desc="perplexity", unit="window",
                                 disable=not progress, leave=False) as bar:
        for batch in batches:
            length = batch[0][1]
            rows = np.stack([read(begin, length + 1) for begin, _, _ in batch])
            rows = torch.from_numpy(rows).to(device)
            inputs, targets = rows[:, :-1], rows[:, 1:].clone()
            for i, (_, _, skip) in enumerate(batch):
                targets[i, :skip] = -100  # scored by an earlier window: context only
            logits = _logits(model, inputs).float()
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                   ignore_index=-100, reduction="sum")
            nll += float(loss.double())
            count += int((targets != -100).sum())
            bar.update(len(batch))
    mean = nll / count
    return {"loss": mean, "perplexity": math.exp(min(mean, 700.0)), "tokens": count,
            "windows": len(windows)}


# --------------------------------------------------------------------------------------
# Multiple choice (HellaSwag format)
# --------------------------------------------------------------------------------------


def score_choices(model, tokenizer, context: str, endings: Sequence[str], *,
                  delimiter: str = " ") -> dict[str, list]:
    """Log-likelihood of each ending's tokens given ``context``, all endings in one batch.

    Each ending is scored as the continuation ``delimiter + ending`` (a space, as the
    evaluation harness does), tokenized on its own after the context's tokens; an empty
    context is replaced by the end-of-text token. When context + ending do not fit in the
    model's window, the context loses tokens from the left (the same for every ending).
    Endings are padded on the right to one length: causal attention makes the padding
    invisible to the real positions.

    Returns lists, one entry per ending: ``sum_logprob`` (total log-probability, nats),
    ``num_tokens``, ``mean_logprob`` (per token), ``num_chars`` (characters of ``ending``,
    without the delimiter) and ``char_logprob`` (``sum_logprob / num_chars``).
    """
    if not isinstance(context, str):
        raise TypeError(f"context must be a string, got {type(context).__name__}")
    if isinstance(endings, str) or not isinstance(endings, Sequence) or not endings:
        raise TypeError("endings must be a non-empty list of strings")
    for i, e in enumerate(endings):
        if not isinstance(e, str) or not e.strip():
            raise ValueError(f"ending {i} must be a non-empty string, got {e!r}")
    ctx = encode_or_eot(tokenizer, context, "context")
    ends = [list(tokenizer.encode(delimiter + e)) for e in endings]
    longest = max(len(e) for e in ends)
    block = _block_size(model)
    if block is not None:
        if longest > block:
            i = max(range(len(ends)), key=lambda j: len(ends[j]))
            raise ValueError(f"ending {i} has {longest} tokens, more than the model's context "
                             f"of {block}; it cannot be scored")
        ctx = ctx[-(block + 1 - longest):]  # context + ending <= block_size + 1 tokens
    seqs = [ctx + e for e in ends]
    T = max(len(s) for s in seqs)
    pad = 0
    batch = torch.tensor([s + [pad] * (T - len(s)) for s in seqs], dtype=torch.long)
    lp = token_logprobs(model, batch).double().cpu()
    c = len(ctx)
    sums = [float(lp[i, c - 1:c - 1 + len(e)].sum()) for i, e in enumerate(ends)]
    ntok = [len(e) for e in ends]
    nchar = [len(e) for e in endings]
    return {
        "sum_logprob": sums,
        "num_tokens": ntok,
        "mean_logprob": [s / k for s, k in zip(sums, ntok)],
        "num_chars": nchar,
        "char_logprob": [s / k for s, k in zip(sums, nchar)],
    }


_NORMS = {None: "sum_logprob", "none": "sum_logprob", "tokens": "mean_logprob",
          "chars": "char_logprob"}


def predict_choice(scores: Mapping[str, Sequence[float]], norm: str | None = None) -> int:
    """The index of the chosen ending (the first one on a tie, like ``numpy.argmax``).

    ``norm=None``: the largest total log-likelihood (``acc``); ``"tokens"``: the largest mean
    per token (Karpathy's ``acc_norm``); ``"chars"``: the largest total per character
    (lm-evaluation-harness's ``acc_norm``). ``scores`` is what :func:`score_choices` returns.
    """
    if norm not in _NORMS:
        raise ValueError(f"norm must be None, 'tokens' or 'chars', got {norm!r}")
    return int(np.argmax(np.asarray(scores[_NORMS[norm]], dtype=float)))


def _harness_preprocess(text: str) -> str:
    # lm-evaluation-harness's hellaswag/utils.py: WikiHow artefacts like "[title]" and
    # "[header]" are removed
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_example(record: Mapping[str, Any], style: str = "plain"
                      ) -> tuple[str, list[str], int | None]:
    """``(context, endings, label)`` of one HellaSwag record (``label`` None when absent).

    A record has ``endings`` (a list), ``label`` (an int or a digit string; empty in the
    test split) and either ``ctx`` or ``ctx_a`` + ``ctx_b`` (HellaSwag's ``ctx`` is
    ``ctx_a + " " + ctx_b``); ``activity_label`` and the rest are optional.

    * ``style="plain"`` -- ``ctx`` as it is, the endings as they are (Karpathy's script);
    * ``style="harness"`` -- lm-evaluation-harness's prompt: ``activity_label + ": " + ctx_a
      + " " + ctx_b.capitalize()``, bracketed WikiHow artefacts removed from it and from the
      endings.
    """
    if not isinstance(record, Mapping):
        raise TypeError(f"a record must be a dict, got {type(record).__name__}")
    if style not in ("plain", "harness"):
        raise ValueError(f"style must be 'plain' or 'harness', got {style!r}")
    endings = record.get("endings")
    if (isinstance(endings, str) or not isinstance(endings, Sequence) or len(endings) < 2
            or not all(isinstance(e, str) and e.strip() for e in endings)):
        raise ValueError(f"record needs 'endings': a list of at least 2 non-empty strings, "
                         f"got {endings!r}")
    ctx_a, ctx_b = record.get("ctx_a"), record.get("ctx_b") or ""
    ctx = record.get("ctx")
    if not (isinstance(ctx, str) and ctx.strip()):
        if isinstance(ctx_a, str) and ctx_a.strip():
            ctx = f"{ctx_a} {ctx_b}" if ctx_b else ctx_a
        elif ctx == "" and ctx_a is None and style == "plain":
            pass  # no context on purpose: the endings alone (a "without the question" baseline)
        else:
            raise ValueError("record needs a context: 'ctx', or 'ctx_a' (+ 'ctx_b'); "
                             "ctx='' scores the endings alone (style='plain')")
    label = record.get("label")
    if label is None or label == "":
        label = None
    else:
        try:
            label = int(label)
        except (TypeError, ValueError):
            raise ValueError(f"label must be an int or a digit string, got {label!r}") from None
        if not 0 <= label < len(endings):
            raise ValueError(f"label {label} is not an index into the {len(endings)} endings")
    if style == "harness":
        if not isinstance(ctx_a, str):
            ctx_a, ctx_b = ctx, ""
        head = f"{record.get('activity_label', '')}: " if record.get("activity_label") else ""
        ctx = _harness_preprocess(f"{head}{ctx_a} {ctx_b.capitalize()}")
        endings = [_harness_preprocess(e) for e in endings]
    return ctx, list(endings), label


def multiple_choice_eval(
    model,
    tokenizer,
    records: Iterable[Mapping[str, Any]],
    limit: int | None = None,
    *,
    style: str = "plain",
    norm: str = "tokens",
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy of ``model`` on multiple-choice ``records`` in HellaSwag's format.

    Every record's endings are scored by :func:`score_choices` (prompt built per ``style``,
    see :func:`hellaswag_example`); ``acc`` picks the largest total log-likelihood,
    ``acc_norm`` the largest length-normalised one, with ``norm="tokens"`` (per token,
    Karpathy's ``acc_norm``) or ``"chars"`` (per character, lm-evaluation-harness's). Both
    normalisations are always reported, as ``acc_norm_tokens`` and ``acc_norm_chars``.
    ``limit`` keeps the first records. ``ci`` holds ``1 - alpha`` percentile-bootstrap
    intervals (:func:`bootstrap_ci`) for ``acc`` and ``acc_norm``.

    Returns ``{"acc", "acc_norm", "acc_norm_tokens", "acc_norm_chars", "n", "norm", "ci",
    "pred", "pred_norm", "labels"}``.
    """
    if norm not in ("tokens", "chars"):
        raise ValueError(f"norm must be 'tokens' or 'chars', got {norm!r}")
    if limit is not None:
        limit = _check_int("limit", limit)
    from itertools import islice

    from tqdm.auto import tqdm

    chosen = list(islice(records, limit)) if limit is not None else list(records)
    if not chosen:
        raise ValueError("no records to evaluate")
    preds: dict[str, list[int]] = {"none": [], "tokens": [], "chars": []}
    labels: list[int] = []
    for i, record in enumerate(tqdm(chosen, desc="multiple choice", disable=not progress,
                                    leave=False)):
        try:
            context, endings, label = hellaswag_example(record, style)
        except (TypeError, ValueError) as err:
            raise ValueError(f"record {i}: {err}") from None
        if label is None:
            raise ValueError(f"record {i} has no label (HellaSwag's test split has none: "
                             "evaluate on 'validation')")
        scores = score_choices(model, tokenizer, context, endings)
        for key in preds:
            preds[key].append(predict_choice(scores, None if key == "none" else key))
        labels.append(label)
    correct = {k: np.array(p) == np.array(labels) for k, p in preds.items()}
    return {
        "acc": float(correct["none"].mean()),
        "acc_norm": float(correct[norm].mean()),
        "acc_norm_tokens": float(correct["tokens"].mean()),
        "acc_norm_chars": float(correct["chars"].mean()),
        "n": len(labels),
        "norm": norm,
        "ci": {
            "acc": bootstrap_ci(correct["none"], n_boot=n_boot, alpha=alpha, seed=seed),
            "acc_norm": bootstrap_ci(correct[norm], n_boot=n_boot, alpha=alpha, seed=seed),
        },
        "pred": preds["none"],
        "pred_norm": preds[norm],
        "labels": labels,
    }


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON objects of a JSON Lines file, one per non-blank line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {n}: not valid JSON ({err.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}, line {n}: expected a JSON object, got "
                             f"{type(obj).__name__}")
        out.append(obj)
    return out


def load_hellaswag(split: str = "validation", limit: int | None = None) -> list[dict[str, Any]]:
    """HellaSwag records from the Hugging Face hub (``Rowan/hellaswag``) via ``datasets``.

    ``split``: ``"train"`` (39,905), ``"validation"`` (10,042) or ``"test"`` (10,003, no
    labels). Downloaded on first use, then read from the ``datasets`` cache; raises
    :class:`DatasetUnavailableError` saying so when it cannot be loaded (offline, or
    ``datasets`` missing). Records keep HellaSwag's fields (``label`` is a digit string).
    """
    if split not in ("train", "validation", "test"):
        raise ValueError(f"split must be 'train', 'validation' or 'test', got {split!r}")
    if limit is not None:
        limit = _check_int("limit", limit)
    offline_hint = ("HellaSwag is downloaded from the hub on first use, so this needs the "
                    "internet once; offline, evaluate on a JSONL file of records in the same "
                    "format: multiple_choice_eval(model, tokenizer, read_jsonl(path))")
    try:
        import datasets
    except ImportError:
        raise DatasetUnavailableError(f"load_hellaswag needs the `datasets` package "
                                      f"(pip install datasets). {offline_hint}") from None

    def load(**kwargs):
        return datasets.load_dataset(HELLASWAG_HUB_ID, split=split, **kwargs)

    try:
        try:
            ds = load()
        except RuntimeError as err:  # an old script-based revision: use the parquet export
            if "script" not in str(err).lower():
                raise
            ds = load(revision="refs/convert/parquet")
    except Exception as err:  # offline, hub or cache errors come in many types
        raise DatasetUnavailableError(
            f"could not load {HELLASWAG_HUB_ID!r} (split {split!r}) with datasets: "
            f"{type(err).__name__}: {err}. {offline_hint}") from err
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return [dict(r) for r in ds]


# --------------------------------------------------------------------------------------
# Accuracy and the bootstrap
# --------------------------------------------------------------------------------------


def accuracy(preds: Sequence[int] | np.ndarray | torch.Tensor,
             labels: Sequence[int] | np.ndarray | torch.Tensor) -> float:
    """The fraction of ``preds`` equal to ``labels`` (same length, at least one)."""
    p = np.asarray(preds.cpu() if isinstance(preds, torch.Tensor) else preds).reshape(-1)
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
    if p.size != y.size:
        raise ValueError(f"preds has {p.size} entries but labels has {y.size}")
    if p.size == 0:
        raise ValueError("accuracy of nothing: preds and labels are empty")
    return float((p == y).mean())


def bootstrap_ci(
    values: Sequence[float] | np.ndarray | torch.Tensor,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    statistic: Callable[[np.ndarray], float] = np.mean,
) -> tuple[float, float]:
    """A ``1 - alpha`` percentile-bootstrap confidence interval ``(low, high)``.

    ``values`` are per-item measurements (for an accuracy: 1.0 where the answer was right,
    0.0 where wrong). The items are resampled with replacement ``n_boot`` times (a
    ``numpy`` generator seeded with ``seed``: the same call gives the same interval), the
    ``statistic`` of each resample computed, and the ``alpha/2`` and ``1 - alpha/2``
    quantiles of those returned. It assumes independent items and is a little too narrow
    for small samples; for an accuracy ``p`` on ``n`` items it is about ``p +/- 1.96
    sqrt(p (1 - p) / n)``.
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    x = np.asarray(values, dtype=float).reshape(-1)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not np.all(np.isfinite(x)):
        raise ValueError("values must be finite numbers")
    n_boot = _check_int("n_boot", n_boot)
    if not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if not callable(statistic):
        raise TypeError("statistic must be a function of a 1-D array, e.g. numpy.mean")
    rng = np.random.default_rng(seed)
    n = x.size
    stats = np.empty(n_boot)
    chunk = max(1, 4_000_000 // n)  # resamples per draw, to bound memory
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        samples = x[rng.integers(0, n, size=(k, n))]
        if statistic is np.mean:
            stats[start:start + k] = samples.mean(axis=1)
        else:
            stats[start:start + k] = [float(statistic(s)) for s in samples]
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


# --------------------------------------------------------------------------------------
# Bias probe
# --------------------------------------------------------------------------------------


def bias_probe(
    model,
    tokenizer,
    template: str,
    groups: Mapping[str, Sequence[str]],
    completions: Sequence[str],
    *,
    placeholder: str = "{X}",
) -> list[dict[str, Any]]:
    """How likely the model finds each completion after a template, per group of fillers.

    For every group (e.g. ``{"he": ["man", "father"], "she": ["woman", "mother"]}``), every
    filler is put into ``template`` at ``placeholder`` (``"The {X} worked as a"``) and the
    total log-likelihood of ``" " + completion`` is measured (:func:`score_choices`); the
    group's number is the mean over its fillers. The completion's tokens are the same in
    every group, so the numbers compare directly.

    Returns one row per completion: ``{"completion", <group>: mean log-likelihood, ...,
    "gap": largest - smallest group mean, "favours": the group with the largest}`` (a list
    of dicts: ``pandas.DataFrame(rows)`` shows it as a table).

    Caveats: a gap shows what the model learned from its data, not a rate of harm in use;
    it depends heavily on the template wording, the fillers (their frequency and
    tokenization shift every score) and the completions chosen, so use many templates and
    fillers and report the spread; with a few examples a gap of a fraction of a nat is
    noise; and a small model's numbers mostly reflect word frequency. A probe can show a
    bias; finding none shows little.
    """
    if not isinstance(template, str) or placeholder not in template:
        raise ValueError(f"template must be a string containing the placeholder {placeholder!r}, "
                         f"got {template!r}")
    if not isinstance(groups, Mapping) or len(groups) < 2:
        raise ValueError("groups must be a dict of at least two named lists of fillers, "
                         "e.g. {'he': ['man'], 'she': ['woman']}")
    for name, fillers in groups.items():
        if not isinstance(name, str) or name in ("completion", "gap", "favours"):
            raise ValueError(f"group names must be strings other than 'completion', 'gap' "
                             f"and 'favours', got {name!r}")
        if (isinstance(fillers, str) or not isinstance(fillers, Sequence) or not fillers
                or not all(isinstance(f, str) and f.strip() for f in fillers)):
            raise ValueError(f"group {name!r} must be a non-empty list of non-empty strings, "
                             f"got {fillers!r}")
    if (isinstance(completions, str) or not isinstance(completions, Sequence)
            or not completions):
        raise TypeError("completions must be a non-empty list of strings")
    means: dict[str, np.ndarray] = {}
    for name, fillers in groups.items():
        per_filler = [score_choices(model, tokenizer, template.replace(placeholder, f),
                                    list(completions))["sum_logprob"] for f in fillers]
        means[name] = np.mean(np.array(per_filler), axis=0)
    rows = []
    for j, completion in enumerate(completions):
        row: dict[str, Any] = {"completion": completion}
        values = {name: float(m[j]) for name, m in means.items()}
        row.update(values)
        row["gap"] = max(values.values()) - min(values.values())
        row["favours"] = max(values, key=values.get)
        rows.append(row)
    return rows
