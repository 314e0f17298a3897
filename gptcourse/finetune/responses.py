"""Generating and saving a model's responses to instruction records.

:func:`generate_responses` answers records (greedy by default, reproducible; prompts of the
same length are generated together), :func:`extract_response` cuts the response out of the
generated text, :func:`save_responses` writes them as JSON.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .. import validate
from ..data.shards import write_atomic
from .records import check_record, eot_id_of, format_prompt, prompt_too_long

__all__ = ["extract_response", "generate_responses", "save_responses"]

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

    batch_size = validate.integer("batch_size", batch_size, min=1)
    eot = eot_id_of(tokenizer, eot_id)
    block = model.config.block_size
    device = next(model.parameters()).device
    prompts = []
    for i, r in enumerate(records):
        check_record(r, f"record {i}")
        ids = tokenizer.encode(format_prompt(r))
        if len(ids) > block:
            raise prompt_too_long(len(ids), block, f"record {i}")
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
    write_atomic(path, json.dumps(list(responses), indent=2, ensure_ascii=False) + "\n")
    return path
