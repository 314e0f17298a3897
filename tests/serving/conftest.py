"""The served model of the serving tests: a 1-layer, 32-wide GPT over GPT-2's vocabulary and
tokenizer (random weights, seed 0; a 128-token context)."""

from __future__ import annotations

import pytest
import torch

from gptcourse.model import GPT, GPTConfig
from gptcourse.tokenizer import get_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer("gpt2")


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=128, n_layer=1, n_head=2,
                       n_embd=32)
    return GPT(config).eval()
