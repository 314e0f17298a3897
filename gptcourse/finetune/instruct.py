"""Instruction fine-tuning (supervised fine-tuning, SFT) in the Alpaca style.

A record is a dict ``{"instruction": ..., "input": ..., "output": ...}`` (``input`` may be
empty or missing). :func:`format_prompt` writes it the way Raschka's *LLMs from scratch*
(chapter 7) and Stanford's Alpaca do::

    Below is an instruction that describes a task. Write a response that appropriately
    completes the request.

    ### Instruction:
    {instruction}

    ### Input:            <- only when input is non-empty
    {input}

    ### Response:
    {output}<|endoftext|>

Training examples
    An example is ``prompt ids + response ids + [eot]``: the prompt (everything up to and
    including ``"### Response:\\n"``) and the output are tokenized *separately*, so the model
    is trained on exactly the prompt ids it is given at generation time, and the prompt /
    response boundary is known token for token. The inputs are the sequence without its last
    token, the targets the sequence shifted by one. A batch is padded on the right: inputs with
    ``pad_id`` (the end-of-text id by default, as in Raschka's code), targets with ``-100``,
    which the loss ignores. The end-of-text token that closes each response *is* a target --
    the model must learn to stop (Raschka's convention: of the padding ids in his targets the
    first is kept, the rest become -100; here the eot is part of the example, which gives the
    same targets). Right padding with a causal mask never changes the real positions: they
    cannot attend to the pads that follow them. ``mask_prompt=True`` also sets the targets
    that are prompt tokens to -100, so only the response (and its eot) is learned.

Training and evaluation
    :class:`InstructionData` is the dataset object :class:`gptcourse.train.Trainer` trains on
    (a batch of examples per step, drawn as a pure function of ``(seed, step)``, so a resumed
    run sees the same batches); :func:`sft` is the one-call version. :func:`response_loss`
    is the loss on response tokens only (before vs after SFT), :func:`generate_responses`
    answers held-out records (greedy by default, reproducible), :func:`save_responses` writes
    them as JSON.

Automatically checkable instructions
    :func:`checkable_tasks` generates records whose answer a program can check (case
    conversion, word order, sorting, the third word, counting words, small sums and
    differences, sorting letters); :func:`check_response` compares a response with the
    canonical output after normalising it; :func:`checkable_accuracy` gives the accuracy
    (overall and per kind) of a model.

An LLM judge
    :func:`judge_responses` asks any OpenAI-compatible chat endpoint (``GPTCOURSE_JUDGE_URL``,
    e.g. a local llama.cpp / vLLM / Ollama server) for a 0-100 score per response, and skips
    with a message when no URL is configured.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKABLE_KINDS",
    "IGNORE_INDEX",
    "JUDGE_PROMPT",
    "PREAMBLE",
    "InstructionData",
    "check_response",
    "checkable_accuracy",
    "checkable_splits",
    "checkable_tasks",
    "collate_instructions",
    "encode_record",
    "extract_response",
    "format_example",
    "format_prompt",
    "generate_responses",
    "judge_responses",
    "load_instruction_data",
    "messages_to_prompt",
    "parse_score",
    "response_loss",
    "save_responses",
    "score_checkable",
    "sft",
    "split_records",
]

PREAMBLE = ("Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.")
IGNORE_INDEX = -100
_RESPONSE_HEADER = "\n\n### Response:\n"
_LONG_PROMPTS = ("error", "drop", "truncate")


# --------------------------------------------------------------------------------------
# Records and prompt format
# --------------------------------------------------------------------------------------


def _check_record(record: Any, where: str = "record", need_output: bool = False) -> None:
    """Raise ValueError/TypeError naming ``where`` when ``record`` is not a usable record."""
    if not isinstance(record, Mapping):
        raise TypeError(f"{where} must be a dict with 'instruction', 'input' and 'output', "
                        f"got {type(record).__name__}")
    instruction = record.get("instruction")
    if not isinstance(instruction, str):
        raise ValueError(f"{where} has no 'instruction' string (keys: {sorted(record)}); every "
                         "record needs an instruction")
    if not instruction.strip():
        raise ValueError(f"{where} has an empty instruction; write the task to perform, e.g. "
                         "'Convert the following phrase to upper case.'")
    inp = record.get("input")
    if inp is not None and not isinstance(inp, str):
        raise ValueError(f"{where}: 'input' must be a string (or empty), got {type(inp).__name__}")
    if need_output and not isinstance(record.get("output"), str):
        raise ValueError(f"{where} has no 'output' string (keys: {sorted(record)}); training "
                         "and evaluation need the reference response")


def format_prompt(record: Mapping[str, Any]) -> str:
    """The Alpaca prompt of ``record``, ending with ``"\\n\\n### Response:\\n"``.

    The ``### Input:`` section appears only when ``record["input"]`` is a non-empty string
    (exactly Raschka's ``format_input`` followed by the response header). An empty or blank
    instruction raises ValueError.
    """
    _check_record(record)
    text = f"{PREAMBLE}\n\n### Instruction:\n{record['instruction']}"
    inp = record.get("input") or ""
    if inp:
        text += f"\n\n### Input:\n{inp}"
    return text + _RESPONSE_HEADER


def format_example(record: Mapping[str, Any]) -> str:
    """Prompt and response as one text: ``format_prompt(record) + record["output"]`` (the
    end-of-text token is added at tokenization, see :func:`encode_record`)."""
    _check_record(record, need_output=True)
    return format_prompt(record) + record["output"]


def _content_text(content: Any, where: str) -> str:
    """A message's content: a string, or OpenAI's list of parts (the text parts, joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            elif isinstance(part, str):
                parts.append(part)
            else:
                raise ValueError(f"{where}: only text content parts are supported, got {part!r}")
        return "".join(parts)
    if content is None:
        return ""
    raise ValueError(f"{where}: content must be a string or a list of text parts, "
                     f"got {type(content).__name__}")


def messages_to_prompt(messages: Sequence[Mapping[str, Any]]) -> str:
    """An OpenAI-style chat (``[{"role": ..., "content": ...}, ...]``) as an Alpaca prompt.

    How the roles map:

    * ``system`` (or ``developer``) messages replace the preamble paragraph ("Below is an
      instruction ...") -- several are joined by a blank line; without one the standard
      preamble is used;
    * each ``user`` message becomes an ``### Instruction:`` section;
    * each ``assistant`` message becomes a ``### Response:`` section (earlier turns);
    * the chat must end with a ``user`` message, and the prompt ends with the empty
      ``### Response:`` section for the model to complete.

    So a chat of one user message gives exactly ``format_prompt({"instruction": content})``:
    what an instruction-tuned course model was trained on. Sections are separated by blank
    lines. Unknown roles, an empty chat, an empty user message, or a chat not ending with a
    user message raise ValueError.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...}")
    system: list[str] = []
    sections: list[str] = []
    for i, m in enumerate(messages):
        where = f"message {i}"
        if not isinstance(m, Mapping) or "role" not in m:
            raise ValueError(f"{where} must be a dict with 'role' and 'content', got {m!r}")
        role = m["role"]
        text = _content_text(m.get("content"), where)
        if role in ("system", "developer"):
            if text.strip():
                system.append(text)
        elif role == "user":
            if not text.strip():
                raise ValueError(f"{where} (user) is empty; an instruction is needed")
            sections.append(f"### Instruction:\n{text}")
        elif role == "assistant":
            sections.append(f"### Response:\n{text}")
        else:
            raise ValueError(f"{where} has role {role!r}; use system, user or assistant")
    if messages[-1]["role"] != "user":
        raise ValueError(f"the last message must come from the user (got "
                         f"{messages[-1]['role']!r}): the model answers the last instruction")
    preamble = "\n\n".join(system) if system else PREAMBLE
    return "\n\n".join([preamble, *sections]) + _RESPONSE_HEADER


def load_instruction_data(path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Records of a JSON file holding a list of ``{instruction, input, output}`` objects.

    Default: Raschka's 1,100 records (``corpora.path("instruction-data")``, downloaded and
    verified on first use). Every record is checked (instruction a non-empty string, input a
    string or missing -- then ``""`` --, output a string); the error names the record.
    """
    if path is None:
        from .. import corpora

        path = corpora.path("instruction-data")
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(data, list):
        raise ValueError(f"{path} must hold a JSON list of records, got {type(data).__name__}")
    records = []
    for i, r in enumerate(data):
        _check_record(r, f"record {i} of {path}", need_output=True)
        records.append({**r, "input": r.get("input") or ""})
    return records


def split_records(records: Sequence[Mapping[str, Any]],
                  fractions: Sequence[float] = (0.85, 0.05, 0.10),
                  seed: int | None = None) -> tuple[list, list, list]:
    """``(train, val, test)`` lists with the given fractions.

    ``train`` has ``int(n * fractions[0])`` records, ``test`` ``int(n * fractions[2])`` and
    ``val`` the rest -- for the 1,100 instruction records that is 935 / 55 / 110, Raschka's
    split. ``seed=None`` keeps the order (his split: the file is already shuffled); an int
    shuffles first, reproducibly.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1 "
                         f"(train, val, test), got {tuple(fractions)}")
    items = list(records)
    if seed is not None:
        random.Random(seed).shuffle(items)
    n = len(items)
    n_train, n_test = int(n * fractions[0]), int(n * fractions[2])
    n_val = n - n_train - n_test
    return items[:n_train], items[n_train:n_train + n_val], items[n_train + n_val:]


# --------------------------------------------------------------------------------------
# Tokenization and collate
# --------------------------------------------------------------------------------------


def _eot_of(tokenizer, eot_id: int | None) -> int:
    eot = eot_id if eot_id is not None else getattr(tokenizer, "eot_id", None)
    if eot is None:
        raise ValueError(f"{tokenizer!r} has no end-of-text token; pass eot_id=... (an id the "
                         "model can learn as 'stop'), or use a tokenizer with <|endoftext|>")
    return int(eot)


def encode_record(record: Mapping[str, Any], tokenizer) -> tuple[list[int], list[int]]:
    """``(prompt_ids, response_ids)``: the prompt and the output tokenized separately (the
    end-of-text id is appended by :func:`collate_instructions`)."""
    _check_record(record, need_output=True)
    return tokenizer.encode(format_prompt(record)), tokenizer.encode(record["output"])


def _too_long(prompt_len: int, context: int, where: str) -> ValueError:
    return ValueError(f"{where}: prompt has {prompt_len} tokens but the context is {context}; "
                      "shorten it or raise block_size")


def collate_instructions(batch: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int,
                         ignore_index: int = IGNORE_INDEX, mask_prompt: bool = False,
                         max_length: int | None = None, device: str | torch.device | None = None,
                         *, eot_id: int | None = None, long_prompts: str = "error"
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a batch of ``(prompt_ids, response_ids)`` pairs into inputs and targets.

    Each example is ``prompt + response + [eot_id]`` (``eot_id`` defaults to ``pad_id``);
    inputs are the example without its last token, targets the example shifted by one. Both
    are (B, L) int64 with ``L`` = the longest example minus one (at most ``max_length``):
    inputs padded with ``pad_id``, targets with ``ignore_index``. The eot that ends each
    example stays a target (the model learns to stop). ``mask_prompt=True`` sets the targets
    that are prompt tokens (the first ``len(prompt) - 1`` positions) to ``ignore_index``.

    ``max_length`` truncates longer examples (the end of the response and its eot are lost).
    A prompt longer than ``max_length`` leaves nothing of the response: by default that is an
    error ("prompt has N tokens but the context is M ..."); ``long_prompts="truncate"`` cuts
    it anyway (Raschka's behaviour).
    """
    if long_prompts not in ("error", "truncate"):
        raise ValueError(f"long_prompts must be 'error' or 'truncate' here, got {long_prompts!r}")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)
                                   or max_length < 1):
        raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")
    if not len(batch):
        raise ValueError("the batch is empty")
    eot = pad_id if eot_id is None else eot_id
    seqs, prompt_lens = [], []
    for k, item in enumerate(batch):
        try:
            prompt, response = item
        except (TypeError, ValueError):
            raise ValueError(f"example {k} must be a (prompt_ids, response_ids) pair, "
                             f"got {type(item).__name__}") from None
        prompt, response = list(prompt), list(response)
        if not prompt:
            raise ValueError(f"example {k} has an empty prompt")
        if max_length is not None and len(prompt) > max_length and long_prompts == "error":
            raise _too_long(len(prompt), max_length, f"example {k}")
        seq = prompt + response + [eot]
        if max_length is not None:
            seq = seq[:max_length + 1]
        seqs.append(seq)
        prompt_lens.append(len(prompt))
    L = max(len(s) for s in seqs) - 1
    x = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    y = torch.full((len(seqs), L), ignore_index, dtype=torch.long)
    for b, (s, p) in enumerate(zip(seqs, prompt_lens)):
        t = torch.tensor(s, dtype=torch.long)
        n = len(s) - 1
        x[b, :n] = t[:-1]
        y[b, :n] = t[1:]
        if mask_prompt:
            y[b, :min(p - 1, n)] = ignore_index
    if device is not None:
        x, y = x.to(device), y.to(device)
    return x, y


class InstructionData:
    """Tokenized instruction records, in the shape :class:`gptcourse.train.Trainer` trains on.

    The Trainer asks the data for ``random_offsets(n, block_size, seed=, step=)`` -- here the
    indices of the step's ``n`` examples -- and ``windows(indices, block_size)`` -- here the
    padded batch from :func:`collate_instructions` (inputs and targets of shape (B, L),
    ``L <= block_size``). Evaluation walks ``sequential(...)`` and weights each batch by its
    number of targets that are not -100, so ``Trainer.evaluate(data)`` is the mean loss per
    response token (with ``mask_prompt=True``).

    The order of the examples: epoch ``e`` visits all of them in the permutation drawn from
    ``(seed, e)``, and step ``s`` takes positions ``s*n ... s*n + n - 1`` of that endless
    sequence -- a pure function of ``(seed, step)`` (for a fixed global batch ``n``), so a
    resumed run continues with exactly the batches it would have seen.

    It also works with a PyTorch ``DataLoader``: ``data[i]`` is ``(prompt_ids,
    response_ids)`` and ``collate_fn=data.collate``.

    ``long_prompts``: what to do with a record whose prompt alone does not fit the context
    (``max_length``, or the Trainer's block_size): ``"error"`` (default; names the record),
    ``"drop"`` (needs ``max_length``; the indices of the dropped records are in
    ``self.dropped``), or ``"truncate"``.
    """

    path = None  # not backed by a file (the Trainer records it in checkpoints)
    entropy_per_token = None  # no known floor for natural-language responses

    def __init__(self, records: Sequence[Mapping[str, Any]], tokenizer, *,
                 mask_prompt: bool = False, max_length: int | None = None,
                 pad_id: int | None = None, eot_id: int | None = None,
                 ignore_index: int = IGNORE_INDEX, long_prompts: str = "error") -> None:
        if long_prompts not in _LONG_PROMPTS:
            raise ValueError(f"long_prompts must be one of {_LONG_PROMPTS}, got {long_prompts!r}")
        if long_prompts == "drop" and max_length is None:
            raise ValueError("long_prompts='drop' needs max_length (the model's block_size)")
        records = list(records)
        self.eot_id = _eot_of(tokenizer, eot_id)
        self.pad_id = self.eot_id if pad_id is None else int(pad_id)
        self.mask_prompt = bool(mask_prompt)
        self.max_length = max_length
        self.ignore_index = ignore_index
        self.long_prompts = long_prompts
        self.vocab_size = int(tokenizer.vocab_size)
        self.records: list[Mapping[str, Any]] = []
        self.examples: list[tuple[list[int], list[int]]] = []
        self.dropped: list[int] = []
        for i, r in enumerate(records):
            _check_record(r, f"record {i}", need_output=True)
            prompt, response = encode_record(r, tokenizer)
            if max_length is not None and len(prompt) > max_length:
                if long_prompts == "error":
                    raise _too_long(len(prompt), max_length, f"record {i}")
                if long_prompts == "drop":
                    self.dropped.append(i)
                    continue
            self.records.append(r)
            self.examples.append((prompt, response))
        if self.dropped:
            warnings.warn(f"dropped {len(self.dropped)} of {len(records)} records whose prompt "
                          f"is longer than {max_length} tokens", stacklevel=2)
        if not self.examples:
            raise ValueError("no instruction records to use (the list is empty"
                             + (", or every prompt was too long)" if self.dropped else ")"))
        self._perms: dict[tuple[int, int], np.ndarray] = {}
        self._checked: set[int] = set()

    # ------------------------------------------------------------------ facts

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> tuple[list[int], list[int]]:
        return self.examples[i]

    def __repr__(self) -> str:
        return (f"InstructionData({len(self)} examples, mask_prompt={self.mask_prompt}, "
                f"max_length={self.max_length})")

    @property
    def lengths(self) -> list[int]:
        """Tokens per example: prompt + response + eot."""
        return [len(p) + len(r) + 1 for p, r in self.examples]

    def _limit(self, block_size: int | None) -> int | None:
        limits = [v for v in (block_size, self.max_length) if v is not None]
        return min(limits) if limits else None

    def _check_fits(self, limit: int | None) -> None:
        if limit is None or limit in self._checked or self.long_prompts != "error":
            return
        for i, (p, _) in enumerate(self.examples):
            if len(p) > limit:
                raise _too_long(len(p), limit, f"example {i}")
        self._checked.add(limit)

    def collate(self, batch: Sequence[tuple[Sequence[int], Sequence[int]]],
                block_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`collate_instructions` with this dataset's settings (a DataLoader's collate_fn)."""
        return collate_instructions(
            batch, self.pad_id, self.ignore_index, self.mask_prompt, self._limit(block_size),
            eot_id=self.eot_id,
            long_prompts="truncate" if self.long_prompts == "truncate" else "error")

    # ------------------------------------------------------------------ the Trainer's interface

    def _permutation(self, seed: int, epoch: int) -> np.ndarray:
        key = (int(seed), int(epoch))
        perm = self._perms.get(key)
        if perm is None:
            if len(self._perms) > 8:
                self._perms.clear()
            perm = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch)]).permutation(len(self))
            self._perms[key] = perm
        return perm

    def random_offsets(self, n: int, block_size: int | None = None, *, seed: int,
                       step: int) -> np.ndarray:
        """Indices of the ``n`` examples of step ``step``: positions ``step*n ... step*n+n-1``
        of the sequence of seeded per-epoch permutations (see the class docstring)."""
        if n < 0 or step < 0:
            raise ValueError(f"n and step must be non-negative, got n={n}, step={step}")
        N = len(self)
        positions = np.arange(step * n, step * n + n, dtype=np.int64)
        out = np.empty(n, dtype=np.int64)
        for epoch in np.unique(positions // N):
            sel = positions // N == epoch
            out[sel] = self._permutation(seed, int(epoch))[positions[sel] % N]
        return out

    def windows(self, indices: Sequence[int] | np.ndarray,
                block_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The padded batch ``(x, y)`` of the examples ``indices`` (at most ``block_size`` long)."""
        limit = self._limit(block_size)
        self._check_fits(limit)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"example indices must lie in [0, {len(self) - 1}]")
        return self.collate([self.examples[int(i)] for i in idx], limit)

    def sequential(self, block_size: int | None, batch_size: int, *,
                   max_batches: int | None = None, rank: int = 0, world_size: int = 1
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every example once, in order, ``batch_size`` at a time (the first ``max_batches``
        batches if given); batches are dealt round-robin to the ``world_size`` ranks."""
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got "
                             f"batch_size={batch_size}, rank={rank}, world_size={world_size}")
        starts = range(0, len(self), batch_size)
        if max_batches is not None:
            starts = starts[:max_batches]
        for s in starts[rank::world_size]:
            yield self.windows(np.arange(s, min(s + batch_size, len(self))), block_size)


# --------------------------------------------------------------------------------------
# Training and the response loss
# --------------------------------------------------------------------------------------


def sft(model, tokenizer, train_records: Sequence[Mapping[str, Any]],
        val_records: Sequence[Mapping[str, Any]] | None = None, config=None, *,
        mask_prompt: bool = False, long_prompts: str = "error", resume: bool | str = False,
        steps: int | None = None):
    """Supervised fine-tuning of ``model`` (its current weights) on instruction records.

    Builds :class:`InstructionData` for both splits (``max_length`` = the model's block_size),
    a :class:`gptcourse.train.Trainer` with ``config`` (a :class:`TrainConfig`), runs
    ``fit(steps)`` and returns the Trainer (``.history`` holds the metrics, ``.model`` the
    fine-tuned model -- the same object as ``model``, trained in place). The validation loss it
    logs is the loss per response token when ``mask_prompt=True``, per example token otherwise.
    """
    from ..train import TrainConfig, Trainer

    block = model.config.block_size
    train = InstructionData(train_records, tokenizer, mask_prompt=mask_prompt, max_length=block,
                            long_prompts=long_prompts)
    val = None
    if val_records:
        val = InstructionData(val_records, tokenizer, mask_prompt=mask_prompt, max_length=block,
                              long_prompts=long_prompts)
    trainer = Trainer(model.config, train, val, config or TrainConfig(), tokenizer=tokenizer,
                      model=model, resume=resume)
    trainer.fit(steps)
    return trainer


@torch.no_grad()
def response_loss(model, tokenizer, records: Sequence[Mapping[str, Any]], *, batch_size: int = 8,
                  eot_id: int | None = None, long_prompts: str = "error") -> dict[str, float]:
    """Mean cross-entropy per response token (the output and its end-of-text token; the prompt
    is not scored) over ``records``, its perplexity, and the number of tokens scored."""
    block = model.config.block_size
    data = InstructionData(records, tokenizer, mask_prompt=True, max_length=block,
                           eot_id=eot_id, long_prompts=long_prompts)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for x, y in data.sequential(block, batch_size):
            _, loss = model(x.to(device), y.to(device))
            scored = int((y != IGNORE_INDEX).sum())
            if scored:
                total += float(loss) * scored
                count += scored
    finally:
        model.train(was_training)
    if not count:
        raise ValueError("no response tokens to score (every response was truncated away)")
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": count}


# --------------------------------------------------------------------------------------
# Generating responses
# --------------------------------------------------------------------------------------


_HEADER = re.compile(r"(?:^|\n)[ \t]*###")


def extract_response(text: str) -> str:
    """The response in generated ``text``: a leading ``### Response:`` line is dropped, the text
    is cut at the next ``###`` header (a model that goes on with ``### Instruction:``), and
    stripped."""
    text = text.lstrip()
    if text.startswith("### Response:"):
        text = text[len("### Response:"):]
    m = _HEADER.search(text)
    if m:
        text = text[:m.start()]
    return text.strip()


def generate_responses(model, tokenizer, records: Sequence[Mapping[str, Any]], *,
                       max_new_tokens: int = 256, temperature: float = 0.0,
                       top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                       batch_size: int = 8, eot_id: int | None = None,
                       key: str = "model_response", progress: bool = True) -> list[dict[str, Any]]:
    """Each record (a copy) with the model's response under ``key``.

    The prompt is :func:`format_prompt`; generation uses the KV cache and stops at the
    end-of-text token, at a following ``"\\n###"`` header, after ``max_new_tokens``, or when the
    context is full (the prompt is never cropped; a prompt longer than the context is an
    error). Records with prompts of the same length are generated together, ``batch_size`` at a
    time (no padding is needed, so the result equals one-by-one generation). Greedy by default
    (``temperature=0``: reproducible); with sampling, ``seed`` fixes the result for a given
    ``batch_size``.
    """
    from tqdm.auto import tqdm

    from ..generate import generate

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    eot = _eot_of(tokenizer, eot_id)
    block = model.config.block_size
    device = next(model.parameters()).device
    prompts = []
    for i, r in enumerate(records):
        _check_record(r, f"record {i}")
        ids = tokenizer.encode(format_prompt(r))
        if len(ids) > block:
            raise _too_long(len(ids), block, f"record {i}")
        prompts.append(ids)
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    groups: list[list[int]] = []
    for i in order:
        if groups and len(groups[-1]) < batch_size and len(prompts[groups[-1][0]]) == len(prompts[i]):
            groups[-1].append(i)
        else:
            groups.append([i])
    answers: list[str] = [""] * len(prompts)
    bar = tqdm(total=len(prompts), desc="generate", unit="response", disable=not progress)
    try:
        for g, group in enumerate(groups):
            P = len(prompts[group[0]])
            budget = min(max_new_tokens, block - P + 1)
            idx = torch.tensor([prompts[i] for i in group], dtype=torch.long, device=device)
            gen = torch.Generator(device=device).manual_seed(seed + g)
            out = generate(model, idx, budget, temperature=temperature, top_k=top_k, top_p=top_p,
                           stop=[eot, "\n###"], generator=gen, tokenizer=tokenizer)
            for row, i in enumerate(group):
                new = out[row, P:].tolist()
                if eot in new:
                    new = new[:new.index(eot)]
                answers[i] = extract_response(tokenizer.decode(new))
            bar.update(len(group))
    finally:
        bar.close()
    return [{**r, key: a} for r, a in zip(records, answers)]


def save_responses(path: str | os.PathLike, responses: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``responses`` as an indented JSON list (UTF-8, written atomically); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(list(responses), f, indent=2, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# --------------------------------------------------------------------------------------
# Automatically checkable instructions
# --------------------------------------------------------------------------------------

_WORDS = (
    "apple bird blue boat book bread cat chair city cloud cold dog door dream egg fast field "
    "fish flower forest friend garden gold green hat hill horse house ice island king lake "
    "lamp leaf light lion milk moon mountain music night ocean orange paper park pen pink "
    "queen rain red river road rock rose sand ship shoe silver sky slow small snow song star "
    "stone storm sun table tall tea tiger tree warm water whale white wind window winter wolf "
    "yellow young"
).split()

_INSTRUCTIONS = {
    "upper": ("Convert the following phrase to upper case.",
              "Rewrite the following text in capital letters."),
    "lower": ("Convert the following phrase to lower case.",
              "Rewrite the following text in small letters."),
    "reverse_words": ("Reverse the order of the words in the following phrase.",
                      "Write the words of the following phrase in reverse order."),
    "sort_words": ("Sort the words of the following phrase in alphabetical order.",
                   "Arrange the following words alphabetically."),
    "third_word": ("Repeat the third word of the following sentence.",
                   "What is the third word of the following sentence?"),
    "count_words": ("How many words are in the following sentence?",
                    "Count the words in the following sentence."),
    "add": ("What is {a} + {b}?", "Add {a} and {b}."),
    "subtract": ("What is {a} - {b}?", "Subtract {b} from {a}."),
    "sort_letters": ("Sort the letters of the following word alphabetically.",
                     "Write the letters of the following word in alphabetical order."),
}
CHECKABLE_KINDS: tuple[str, ...] = tuple(_INSTRUCTIONS)
_CASE_SENSITIVE = {"upper", "lower"}


def _checkable(kind: str, rng: random.Random) -> dict[str, str]:
    instruction = rng.choice(_INSTRUCTIONS[kind])
    words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 6))]
    phrase = " ".join(words)
    if kind == "upper":
        return {"instruction": instruction, "input": phrase, "output": phrase.upper()}
    if kind == "lower":
        mixed = " ".join(w.upper() if rng.random() < 0.5 else w.capitalize() for w in words)
        return {"instruction": instruction, "input": mixed, "output": phrase}
    if kind == "reverse_words":
        return {"instruction": instruction, "input": phrase, "output": " ".join(words[::-1])}
    if kind == "sort_words":
        return {"instruction": instruction, "input": phrase, "output": " ".join(sorted(words))}
    if kind == "third_word":
        return {"instruction": instruction, "input": phrase, "output": words[2]}
    if kind == "count_words":
        return {"instruction": instruction, "input": phrase, "output": str(len(words))}
    if kind == "add":
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        return {"instruction": instruction.format(a=a, b=b), "input": "", "output": str(a + b)}
    if kind == "subtract":
        a = rng.randint(0, 99)
        b = rng.randint(0, a)
        return {"instruction": instruction.format(a=a, b=b), "input": "", "output": str(a - b)}
    # sort_letters: a word from the list or a made-up one (enough distinct inputs)
    word = rng.choice(_WORDS) if rng.random() < 0.3 else "".join(
        rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 6)))
    return {"instruction": instruction, "input": word, "output": "".join(sorted(word))}


def checkable_tasks(n: int, seed: int = 0,
                    kinds: Sequence[str] | None = None) -> list[dict[str, str]]:
    """``n`` distinct instruction records whose answers a program can check.

    Kinds (:data:`CHECKABLE_KINDS`): ``upper`` / ``lower`` (case conversion of a phrase),
    ``reverse_words``, ``sort_words``, ``third_word`` ("repeat the third word"),
    ``count_words``, ``add`` / ``subtract`` (small non-negative integers), ``sort_letters``
    (of a listed or a made-up word).
    Record ``i`` has kind ``kinds[i % len(kinds)]`` (balanced), two phrasings per kind, words
    from a fixed list of 100 common words; each record carries its ``kind`` and a canonical
    ``output``. A pure function of ``(n, seed, kinds)``; :func:`checkable_splits` gives disjoint
    training and held-out sets.
    """
    kinds = tuple(CHECKABLE_KINDS if kinds is None else kinds)
    unknown = [k for k in kinds if k not in _INSTRUCTIONS]
    if unknown or not kinds:
        raise ValueError(f"unknown kinds {unknown}; choose from {CHECKABLE_KINDS}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    rng = random.Random(f"gptcourse.checkable:{seed}")
    seen: set[tuple[str, str]] = set()
    out: list[dict[str, str]] = []
    while len(out) < n:
        kind = kinds[len(out) % len(kinds)]
        for _ in range(1000):
            r = _checkable(kind, rng)
            if (r["instruction"], r["input"]) not in seen:
                break
        else:
            raise ValueError(f"cannot make {n} distinct records of kinds {kinds}; ask for fewer")
        seen.add((r["instruction"], r["input"]))
        out.append({**r, "kind": kind})
    return out


def checkable_splits(n_train: int, n_test: int, n_val: int = 45, seed: int = 0,
                     kinds: Sequence[str] | None = None) -> dict[str, list[dict[str, str]]]:
    """Disjoint ``train`` / ``val`` / ``test`` sets of checkable instructions.

    ``train`` is ``checkable_tasks(n_train, seed)``; ``val`` and ``test`` hold only records
    whose (instruction, input) pair is not in ``train`` nor in each other, drawn from other
    seeds. ``test`` has ``n_test // len(kinds)`` records of each kind, kinds interleaved
    (``n_test`` must be a multiple of the number of kinds, so every kind is measured on as many
    records). A pure function of its arguments.

    How many *distinct* training records there are matters more than how many steps train on
    them: a small model that sees a few thousand records many times memorises them (training
    loss near 0, held-out loss high), while one that sees tens of thousands about once has to
    learn the rule (copy, reverse, count) -- lesson 11 and ``bench/bench_finetune.py instruct``
    measure it.
    """
    kinds = tuple(CHECKABLE_KINDS if kinds is None else kinds)
    for name, n in (("n_train", n_train), ("n_test", n_test), ("n_val", n_val)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{name} must be a non-negative int, got {n!r}")
    if kinds and n_test % len(kinds):
        raise ValueError(f"n_test must be a multiple of the {len(kinds)} kinds (the same number of "
                         f"test records per kind), got {n_test}")
    train = checkable_tasks(n_train, seed=seed, kinds=kinds)
    seen = {(r["instruction"], r["input"]) for r in train}

    def fresh(n_per_kind: int, offset: int) -> list[list[dict[str, str]]]:
        """n_per_kind unseen records of each kind (marked seen), as one list per kind."""
        per_kind: dict[str, list[dict[str, str]]] = {k: [] for k in kinds}
        for attempt in range(1, 9):
            try:
                batch = checkable_tasks(len(kinds) * n_per_kind * 2 * attempt,
                                        seed=seed + offset + 1000 * attempt, kinds=kinds)
            except ValueError:  # more than the kinds have distinct records
                break
            for r in batch:
                key = (r["instruction"], r["input"])
                if key not in seen and len(per_kind[r["kind"]]) < n_per_kind:
                    seen.add(key)
                    per_kind[r["kind"]].append(r)
            if all(len(v) == n_per_kind for v in per_kind.values()):
                return list(per_kind.values())
        short = [k for k, v in per_kind.items() if len(v) < n_per_kind]
        raise ValueError(f"cannot find {n_per_kind} records of kinds {short} that are not in the "
                         f"{n_train} training records; ask for fewer")

    test_by_kind = fresh(n_test // len(kinds), 1) if n_test else [[] for _ in kinds]
    test = [lst[i] for i in range(n_test // len(kinds)) for lst in test_by_kind]
    val_by_kind = fresh(-(-n_val // len(kinds)), 2) if n_val else [[] for _ in kinds]
    val = [lst[i] for i in range(-(-n_val // len(kinds))) for lst in val_by_kind][:n_val]
    return {"train": train, "val": val, "test": test}


def _normalise(text: str, case_sensitive: bool) -> str:
    text = " ".join(str(text).split())
    text = text.strip("\"'`").rstrip(".!?;:,").strip().strip("\"'`").strip()
    return text if case_sensitive else text.casefold()


def check_response(record: Mapping[str, Any], response: str) -> bool:
    """Whether ``response`` matches the record's canonical ``output`` after normalising both.

    Normalising: whitespace runs become one space, surrounding spaces and quotes go, trailing
    punctuation (``. ! ? ; : ,``) goes. Case matters only for the case-conversion kinds
    (``upper``, ``lower``); elsewhere the match ignores case.
    """
    if not isinstance(record, Mapping) or not isinstance(record.get("output"), str):
        raise ValueError("record must be a dict with an 'output' string (see checkable_tasks)")
    if not isinstance(response, str):
        return False
    kind = record.get("kind")
    if kind is not None and kind not in _INSTRUCTIONS:
        raise ValueError(f"unknown kind {kind!r}; checkable kinds are {CHECKABLE_KINDS}")
    sensitive = kind in _CASE_SENSITIVE
    return _normalise(response, sensitive) == _normalise(record["output"], sensitive)


def score_checkable(responses: Sequence[Mapping[str, Any]],
                    key: str = "model_response") -> dict[str, Any]:
    """Accuracy of responses (records with ``key``): ``{"accuracy", "correct", "total",
    "per_kind": {kind: {"accuracy", "correct", "total"}}, "responses"}`` where each response
    gains ``"correct": bool``."""
    scored, per_kind = [], {}
    for r in responses:
        ok = check_response(r, r.get(key, ""))
        scored.append({**r, "correct": ok})
        stats = per_kind.setdefault(r.get("kind", "other"), {"correct": 0, "total": 0})
        stats["correct"] += ok
        stats["total"] += 1
    for stats in per_kind.values():
        stats["accuracy"] = stats["correct"] / stats["total"]
    correct = sum(r["correct"] for r in scored)
    return {"accuracy": correct / len(scored) if scored else float("nan"), "correct": correct,
            "total": len(scored), "per_kind": per_kind, "responses": scored}


def checkable_accuracy(model, tokenizer, records: Sequence[Mapping[str, Any]], *,
                       max_new_tokens: int = 32, batch_size: int = 16, progress: bool = True,
                       **generate_kwargs) -> dict[str, Any]:
    """Generate responses to checkable records (greedy unless told otherwise) and score them:
    see :func:`score_checkable` for the result."""
    responses = generate_responses(model, tokenizer, records, max_new_tokens=max_new_tokens,
                                   batch_size=batch_size, progress=progress, **generate_kwargs)
    return score_checkable(responses)


# --------------------------------------------------------------------------------------
# An LLM judge behind any OpenAI-compatible endpoint
# --------------------------------------------------------------------------------------

JUDGE_PROMPT = (
    "Given the input `{prompt}` and correct output `{output}`, score the model response "
    "`{response}` on a scale from 0 to 100, where 100 is the best score. "
    "Respond with the integer number only."
)
_SKIPPED = ("judge skipped: set GPTCOURSE_JUDGE_URL=http://HOST:PORT (any OpenAI-compatible "
            "server: llama.cpp, vLLM, Ollama, ...) and optionally GPTCOURSE_JUDGE_MODEL and "
            "GPTCOURSE_JUDGE_API_KEY to score the responses")


class _Unreachable(Exception):
    pass


def _endpoints(url: str) -> tuple[str, str]:
    """``(chat_completions_url, models_url)`` from a server URL with or without ``/v1``."""
    base = url.rstrip("/")
    if base.endswith("/chat/completions"):
        base = base[: -len("/chat/completions")]
    if not base.endswith("/v1"):
        base += "/v1"
    return base + "/chat/completions", base + "/models"


def _request(url: str, api_key: str | None, timeout: float, body: dict | None = None) -> Any:
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode("utf-8")
        headers["Content-Type"] = "application/json"
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url, data=data, headers=headers,
                                 method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as err:
        detail = err.read()[:300].decode("utf-8", "replace").strip()
        raise RuntimeError(f"the judge at {url} answered HTTP {err.code} {err.reason}"
                           + (f": {detail}" if detail else "")) from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, TimeoutError):
            raise RuntimeError(f"the judge at {url} did not answer within {timeout} s") from None
        raise _Unreachable(f"cannot reach the judge at {url} ({err.reason}); is the server "
                           "running, and is GPTCOURSE_JUDGE_URL right?") from None
    except TimeoutError:
        raise RuntimeError(f"the judge at {url} did not answer within {timeout} s") from None
    except OSError as err:  # connection reset and the like
        raise RuntimeError(f"the connection to the judge at {url} failed: {err}") from None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise RuntimeError(f"the judge at {url} sent something that is not JSON: "
                           f"{raw[:200]!r}") from None


def parse_score(text: str) -> int:
    """The first integer in the judge's reply, which must lie in 0..100 (else ValueError)."""
    m = re.search(r"-?\d+", text or "")
    if not m:
        raise ValueError(f"no integer in the judge's reply {text[:200]!r}")
    score = int(m.group())
    if not 0 <= score <= 100:
        raise ValueError(f"the judge's score {score} is outside 0..100 (reply {text[:200]!r})")
    return score


def judge_responses(responses: Sequence[Mapping[str, Any]], url: str | None = None,
                    model: str | None = None, api_key: str | None = None, *,
                    timeout: float = 60.0, key: str = "model_response",
                    template: str = JUDGE_PROMPT, progress: bool = True) -> dict[str, Any] | None:
    """Score each response 0-100 with an LLM judge behind an OpenAI-compatible chat endpoint.

    ``url`` (default ``$GPTCOURSE_JUDGE_URL``), e.g. ``http://127.0.0.1:8080`` -- requests go
    to ``{url}/v1/chat/completions`` (a URL ending in ``/v1`` works too). ``model`` (default
    ``$GPTCOURSE_JUDGE_MODEL``, else the first model ``/v1/models`` lists, else
    ``"default"``), ``api_key`` (default ``$GPTCOURSE_JUDGE_API_KEY``; sent as a Bearer token).
    The judge gets ``template`` filled with the prompt, the reference output and the response
    (Raschka's wording) at temperature 0; the first integer of its reply is the score.

    Returns ``{"scores", "mean", "errors", "failed", "model", "url"}``: ``scores[i]`` is None
    and ``errors[i]`` says why when response ``i`` could not be scored (HTTP error, no
    integer, ...); ``mean`` is over the scored ones (None if none). Nothing raises midway;
    when the server cannot be reached the remaining responses are not sent. Without a URL it
    prints how to set one and returns None.
    """
    from tqdm.auto import tqdm

    url = url or os.environ.get("GPTCOURSE_JUDGE_URL")
    if not url:
        print(_SKIPPED)
        return None
    api_key = api_key or os.environ.get("GPTCOURSE_JUDGE_API_KEY") or None
    chat_url, models_url = _endpoints(url)
    model = model or os.environ.get("GPTCOURSE_JUDGE_MODEL")
    if not model:
        try:
            listing = _request(models_url, api_key, timeout)
            model = str(listing["data"][0]["id"])
        except Exception:  # any server that does not list models: let it pick
            model = "default"
    scores: list[int | None] = []
    errors: list[str | None] = []
    unreachable: str | None = None
    for i, r in enumerate(tqdm(responses, desc="judge", unit="response", disable=not progress)):
        if unreachable is not None:
            scores.append(None)
            errors.append(f"not sent: {unreachable}")
            continue
        try:
            _check_record(r, f"response {i}")
            content = template.format(prompt=format_prompt(r).rstrip(),
                                      output=r.get("output", ""), response=r.get(key, ""))
            body = {"model": model, "temperature": 0,
                    "messages": [{"role": "user", "content": content}]}
            reply = _request(chat_url, api_key, timeout, body)
            try:
                text = reply["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                raise RuntimeError(f"the judge's reply has no choices[0].message.content: "
                                   f"{str(reply)[:200]}") from None
            scores.append(parse_score(str(text)))
            errors.append(None)
        except _Unreachable as err:
            unreachable = str(err)
            scores.append(None)
            errors.append(unreachable)
        except (RuntimeError, ValueError, TypeError) as err:
            scores.append(None)
            errors.append(str(err))
    valid = [s for s in scores if s is not None]
    failed = len(scores) - len(valid)
    if failed:
        first = next(e for e in errors if e)
        print(f"judge: {failed} of {len(scores)} responses could not be scored; first error: {first}")
    return {"scores": scores, "mean": sum(valid) / len(valid) if valid else None,
            "errors": errors, "failed": failed, "model": model, "url": chat_url}
