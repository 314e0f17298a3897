"""Exercises of lesson 02, embeddings and data: windows of token ids, embeddings, positions."""

from __future__ import annotations

import random

import torch

from ..data import SlidingWindowDataset
from ..model import GPT, GPTConfig, apply_rope, rope_cache
from . import Case, Task, close, register


def _windows(ids: list[int], block_size: int, stride: int) -> list[tuple[list[int], list[int]]]:
    ds = SlidingWindowDataset(ids, block_size, stride)
    return [(x.tolist(), y.tolist()) for x, y in (ds[i] for i in range(len(ds)))]


def _num_windows(n_tokens: int, block_size: int, stride: int) -> int:
    return len(SlidingWindowDataset(list(range(n_tokens)), block_size, stride))


def _embed_one_hot(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    emb = torch.nn.Embedding.from_pretrained(weight, freeze=True)
    return emb(ids)


def _embed_with_positions(ids: torch.Tensor, wte: torch.Tensor, wpe: torch.Tensor) -> torch.Tensor:
    """What the library's GPT feeds to its first block (captured at its embedding dropout)."""
    V, C = wte.shape
    cfg = GPTConfig(vocab_size=V, block_size=wpe.shape[0], n_layer=1, n_head=1, n_embd=C)
    model = GPT(cfg).eval()
    with torch.no_grad():
        model.transformer.wte.weight.copy_(wte)
        model.transformer.wpe.weight.copy_(wpe)
    seen = {}
    hook = model.transformer.drop.register_forward_hook(lambda m, inp, out: seen.setdefault("x", out))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        hook.remove()
    return seen["x"]


def _sinusoidal(T: int, d: int, base: float = 10000.0) -> torch.Tensor:
    # the same frequencies as rotary positions: angle(p, i) = p / base^(2i/d)
    cos, sin = rope_cache(d, torch.arange(T), base)
    return torch.stack((sin, cos), dim=-1).flatten(-2)


def _rope_rotate(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    T, d = x.shape
    cos, sin = rope_cache(d, torch.arange(T), base)
    return apply_rope(x[None, None], cos, sin)[0, 0]


_close = close


# -- cases -----------------------------------------------------------------------------


def _cases_windows():
    rng = random.Random(20)
    cases = [
        Case((list(range(10)), 4, 4), label="stride = block_size: no overlap"),
        Case((list(range(10)), 4, 1), label="stride 1: every start position"),
        Case((list(range(10)), 4, 2), label="half overlap"),
        Case((list(range(5)), 4, 4), label="exactly block_size + 1 tokens: one window"),
        Case((list(range(12)), 3, 5), label="stride > block_size: tokens skipped"),
        Case((list(range(9)), 4, 4), label="the last partial window is dropped"),
        Case(([7, 7, 7, 7], 1, 1), label="block_size 1"),
    ]
    for _ in range(15):
        n = rng.randint(3, 40)
        b = rng.randint(1, n - 1)
        cases.append(Case(([rng.randrange(50257) for _ in range(n)], b, rng.randint(1, 2 * b))))
    return cases


def _cases_num_windows():
    rng = random.Random(21)
    cases = [
        Case((10, 4, 4)), Case((9, 4, 4), label="one token short of a second window"),
        Case((5, 4, 4), label="exactly block_size + 1 tokens"), Case((10, 4, 1)),
        Case((5145, 256, 256), label="The Verdict, GPT-2 tokens"), Case((5145, 256, 128)),
        Case((1_000_000, 1024, 1), label="a million tokens, stride 1"),
    ]
    for _ in range(20):
        b = rng.randint(1, 64)
        cases.append(Case((rng.randint(b + 1, 5000), b, rng.randint(1, 2 * b))))
    return cases


def _cases_one_hot():
    g = torch.Generator().manual_seed(22)
    cases = [Case((torch.tensor([[0, 1, 2]]), torch.eye(3)), label="identity weights"),
             Case((torch.tensor([[4, 4, 0]]), torch.arange(10.0).reshape(5, 2)), label="a repeated id")]
    for B, T, V, d in [(1, 1, 7, 3), (2, 5, 11, 4), (3, 8, 50, 16), (4, 16, 100, 8), (2, 3, 2, 5),
                       (1, 32, 1000, 8), (2, 7, 13, 1), (3, 4, 65, 12), (1, 10, 10, 10), (5, 2, 300, 6)]:
        ids = torch.randint(0, V, (B, T), generator=g)
        cases.append(Case((ids, torch.randn(V, d, generator=g))))
    return cases


def _cases_positions():
    g = torch.Generator().manual_seed(23)
    cases = []
    for B, T, V, d, block in [(1, 1, 5, 4, 4), (1, 4, 5, 4, 4), (2, 3, 10, 6, 8), (3, 7, 50, 8, 16),
                              (2, 16, 100, 12, 16), (4, 5, 20, 2, 32), (1, 64, 65, 16, 64),
                              (2, 9, 30, 10, 12), (3, 1, 7, 3, 5), (1, 20, 200, 8, 40), (2, 12, 12, 4, 12)]:
        ids = torch.randint(0, V, (B, T), generator=g)
        label = "T == block_size" if T == block else ("T < block_size: use the first T rows" if T < block else "")
        cases.append(Case((ids, torch.randn(V, d, generator=g), torch.randn(block, d, generator=g)), label=label))
    return cases


def _cases_sinusoidal():
    return [Case((1, 2), label="one position"), Case((4, 2)), Case((8, 4)), Case((16, 8)), Case((50, 16)),
            Case((64, 32)), Case((10, 6), label="d not a power of two"),
            Case((12, 8), {"base": 100.0}, label="another base"), Case((3, 64)), Case((33, 10)),
            Case((20, 4), {"base": 10.0}, label="a small base"), Case((128, 64))]


def _cases_rope():
    g = torch.Generator().manual_seed(25)
    cases = [Case((torch.ones(3, 2),), label="all ones, d = 2"),
             Case((torch.eye(4),), label="identity rows")]
    for T, d in [(1, 4), (5, 4), (8, 8), (16, 6), (32, 16), (64, 32), (3, 2), (12, 10), (40, 64)]:
        cases.append(Case((torch.randn(T, d, generator=g),)))
    cases.append(Case((torch.randn(10, 8, generator=g),), {"base": 500.0}, label="another base"))
    return cases


for _task in [
    Task("2.1", "sliding-window input/target pairs", _windows, _cases_windows,
         hint="window k starts k * stride tokens in; the target window is the input window shifted by one token; "
              "stop before a full target would run past the end"),
    Task("2.2", "number of windows", _num_windows, _cases_num_windows,
         hint="count the starts 0, stride, 2 * stride, ... whose target window still fits: the last start leaves "
              "room for block_size + 1 tokens"),
    Task("2.3", "embedding lookup as a one-hot matmul", _embed_one_hot, _cases_one_hot,
         hint="a one-hot row picks one row of the weight matrix when multiplied with it: one-hot over the "
              "vocabulary (as floats), then a matrix product"),
    Task("2.4", "token plus learned position embeddings", _embed_with_positions, _cases_positions,
         hint="index the token table with the ids; the position table's first T rows broadcast over the batch "
              "when added"),
    Task("2.5", "sinusoidal position table", _sinusoidal, _cases_sinusoidal, compare=_close(1e-4),
         hint="each pair of columns has its own frequency, falling geometrically with the pair index (base to the "
              "power -2i/d); even columns hold the sine of position times frequency, odd columns the cosine"),
    Task("2.6", "rotary rotation of (T, d) vectors", _rope_rotate, _cases_rope, compare=_close(1e-4),
         hint="treat columns 2i and 2i+1 as a 2-D point and rotate it by the position times that pair's frequency "
              "(the same frequencies as the sinusoidal table)"),
]:
    register(_task)
