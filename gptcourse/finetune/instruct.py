"""Instruction fine-tuning (supervised fine-tuning, SFT) in the Alpaca style: one import for
lesson 11, gathering the modules that do the work.

* :mod:`.records` -- records, the Alpaca prompt (:func:`format_prompt`), chat messages as a
  prompt (:func:`messages_to_prompt`), loading and splitting, tokenization and the -100
  collate with optional prompt masking (:func:`collate_instructions`);
* :mod:`.supervised` -- :class:`InstructionData` (what :class:`gptcourse.train.Trainer`
  trains on), :func:`sft`, :func:`response_loss`;
* :mod:`.responses` -- :func:`generate_responses`, :func:`extract_response`,
  :func:`save_responses`;
* :mod:`.checkable` -- instructions whose answer a program can check
  (:func:`checkable_tasks`, :func:`checkable_splits`, :func:`check_response`, accuracy);
* :mod:`.judge` -- an optional LLM judge behind any OpenAI-compatible endpoint
  (:func:`judge_responses`, through :class:`gptcourse.client.Client`).
"""

from __future__ import annotations

from .checkable import (
    CHECKABLE_KINDS,
    check_response,
    checkable_accuracy,
    checkable_splits,
    checkable_tasks,
    score_checkable,
)
from .judge import JUDGE_PROMPT, judge_responses, parse_score
from .records import (
    IGNORE_INDEX,
    PREAMBLE,
    collate_instructions,
    encode_record,
    format_example,
    format_prompt,
    load_instruction_data,
    messages_to_prompt,
    split_records,
)
from .responses import extract_response, generate_responses, save_responses
from .supervised import InstructionData, response_loss, sft

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
