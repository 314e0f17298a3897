"""Instruction records, the Alpaca prompt format, tokenization and the -100 collate.

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

:func:`messages_to_prompt` maps an OpenAI-style chat onto the same template (the chat template
of ``gptcourse serve`` and ``gptcourse chat``).

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
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .. import validate

__all__ = [
    "IGNORE_INDEX",
    "PREAMBLE",
    "check_record",
    "collate_instructions",
    "encode_record",
    "eot_id_of",
    "format_example",
    "format_prompt",
    "load_instruction_data",
    "messages_to_prompt",
    "prompt_too_long",
    "split_records",
]

PREAMBLE = ("Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.")
IGNORE_INDEX = -100
_RESPONSE_HEADER = "\n\n### Response:\n"


# --------------------------------------------------------------------------------------
# Records and prompt format
# --------------------------------------------------------------------------------------


def check_record(record: Any, where: str = "record", need_output: bool = False) -> None:
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
    check_record(record)
    text = f"{PREAMBLE}\n\n### Instruction:\n{record['instruction']}"
    inp = record.get("input") or ""
    if inp:
        text += f"\n\n### Input:\n{inp}"
    return text + _RESPONSE_HEADER


def format_example(record: Mapping[str, Any]) -> str:
    """Prompt and response as one text: ``format_prompt(record) + record["output"]`` (the
    end-of-text token is added at tokenization, see :func:`encode_record`)."""
    check_record(record, need_output=True)
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
        check_record(r, f"record {i} of {path}", need_output=True)
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


def eot_id_of(tokenizer, eot_id: int | None = None) -> int:
    """``eot_id`` if given, else the tokenizer's end-of-text id (ValueError when it has none)."""
    eot = eot_id if eot_id is not None else getattr(tokenizer, "eot_id", None)
    if eot is None:
        raise ValueError(f"{tokenizer!r} has no end-of-text token; pass eot_id=... (an id the "
                         "model can learn as 'stop'), or use a tokenizer with <|endoftext|>")
    return int(eot)


def encode_record(record: Mapping[str, Any], tokenizer, where: str = "record") -> tuple[list[int], list[int]]:
    """``(prompt_ids, response_ids)``: the prompt and the output tokenized separately (the
    end-of-text id is appended by :func:`collate_instructions`); an error names ``where``."""
    check_record(record, where, need_output=True)
    return tokenizer.encode(format_prompt(record)), tokenizer.encode(record["output"])


def prompt_too_long(prompt_len: int, context: int, where: str) -> ValueError:
    """The error for a prompt that leaves no room for its response in the context."""
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
    if max_length is not None:
        max_length = validate.integer("max_length", max_length, min=1)
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
            raise prompt_too_long(len(prompt), max_length, f"example {k}")
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
