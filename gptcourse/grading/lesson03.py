"""Exercises of lesson 03, attention: scores, the causal mask, one head, many heads."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..model import CausalSelfAttention, GPTConfig
from . import Case, Task, close, register


def _attention_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))


def _causal_mask(T: int) -> torch.Tensor:
    # the library's convention (CausalSelfAttention): True where a query may see a key
    return torch.ones(T, T, dtype=torch.bool).tril()


def _causal_softmax(scores: torch.Tensor) -> torch.Tensor:
    T = scores.size(-1)
    return F.softmax(scores.masked_fill(~_causal_mask(T), float("-inf")), dim=-1)


def _attention_module(n_embd: int, n_head: int, impl: str = "naive") -> CausalSelfAttention:
    cfg = GPTConfig(vocab_size=2, block_size=1024, n_layer=1, n_head=n_head, n_embd=n_embd)
    return CausalSelfAttention(cfg, attn_impl=impl).eval()


def _single_head(x: torch.Tensor, W_q: torch.Tensor, W_k: torch.Tensor, W_v: torch.Tensor) -> torch.Tensor:
    # PyTorch's fused kernel (the one the library's "sdpa" attention calls) on one head
    return F.scaled_dot_product_attention(x @ W_q, x @ W_k, x @ W_v, is_causal=True)


def _split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    B, nh, T, hd = x.shape
    return x.transpose(1, 2).contiguous().view(B, T, nh * hd)


def _multi_head(x, c_attn_weight, c_attn_bias, c_proj_weight, c_proj_bias, n_head):
    attn = _attention_module(x.size(-1), n_head, "sdpa")
    with torch.no_grad():
        attn.c_attn.weight.copy_(c_attn_weight)
        attn.c_attn.bias.copy_(c_attn_bias)
        attn.c_proj.weight.copy_(c_proj_weight)
        attn.c_proj.bias.copy_(c_proj_bias)
        return attn(x)


_close = close


# -- cases -----------------------------------------------------------------------------


def _cases_scores():
    g = torch.Generator().manual_seed(31)
    cases = [Case((torch.eye(3), torch.eye(3)), label="orthonormal q and k, d = 3")]
    for shape in [(1, 4), (5, 4), (6, 16), (2, 7, 8), (3, 2, 5, 16), (2, 10, 64), (1, 1, 1), (4, 3, 6, 2),
                  (8, 32)]:
        cases.append(Case((torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)),
                          label=f"shape {shape}"))
    cases.append(Case((torch.randn(2, 3, 8, generator=g), torch.randn(2, 5, 8, generator=g)),
                      label="3 queries, 5 keys"))
    return cases


def _cases_mask():
    return [Case((T,)) for T in (1, 2, 3, 4, 5, 7, 8, 16, 33, 64)]


def _cases_causal_softmax():
    g = torch.Generator().manual_seed(33)
    cases = [Case((torch.zeros(4, 4),), label="all-zero scores: uniform over the visible keys"),
             Case((torch.tensor([[1.0]]),), label="T = 1")]
    for shape in [(5, 5), (2, 6, 6), (2, 3, 8, 8), (1, 16, 16), (2, 2), (3, 1, 1), (4, 2, 10, 10), (32, 32)]:
        cases.append(Case((3 * torch.randn(*shape, generator=g),), label=f"shape {shape}"))
    big = torch.randn(6, 6, generator=g) * 100
    cases.append(Case((big,), label="large scores (use -inf before softmax, not exp then mask)"))
    return cases


def _cases_single_head():
    g = torch.Generator().manual_seed(34)
    cases = []
    for B, T, d_in, d_out in [(1, 1, 3, 2), (1, 6, 3, 2), (2, 5, 8, 4), (3, 8, 16, 16), (2, 12, 8, 24),
                              (1, 2, 1, 1), (4, 7, 5, 3), (2, 16, 32, 8), (1, 32, 16, 64), (3, 3, 4, 4)]:
        x = torch.randn(B, T, d_in, generator=g)
        Ws = [torch.randn(d_in, d_out, generator=g) / math.sqrt(d_in) for _ in range(3)]
        cases.append(Case((x, *Ws), label=f"B={B}, T={T}, d_in={d_in}, d_out={d_out}"))
    return cases


def _cases_split():
    g = torch.Generator().manual_seed(35)
    cases = [Case((torch.arange(12.0).reshape(1, 2, 6), 3), label="arange: see where each value goes")]
    for B, T, C, nh in [(1, 1, 4, 1), (2, 5, 8, 2), (3, 4, 12, 3), (2, 7, 64, 8), (1, 3, 6, 6),
                        (1, 2, 4, 4), (4, 3, 10, 5), (2, 9, 16, 4), (1, 16, 32, 2)]:
        cases.append(Case((torch.randn(B, T, C, generator=g), nh), label=f"B={B}, T={T}, C={C}, n_head={nh}"))
    return cases


def _cases_merge():
    g = torch.Generator().manual_seed(36)
    cases = [Case((torch.arange(12.0).reshape(1, 3, 2, 2),), label="arange: see where each value goes")]
    for B, nh, T, hd in [(1, 1, 1, 4), (2, 2, 5, 4), (3, 3, 4, 4), (2, 8, 7, 8), (1, 6, 3, 1),
                         (1, 4, 2, 1), (4, 5, 3, 2), (2, 4, 9, 4), (1, 2, 16, 16)]:
        cases.append(Case((torch.randn(B, nh, T, hd, generator=g),), label=f"B={B}, n_head={nh}, T={T}, hd={hd}"))
    return cases


def _cases_multi_head():
    g = torch.Generator().manual_seed(37)
    cases = []
    for B, T, C, nh in [(1, 1, 4, 1), (1, 5, 8, 2), (2, 6, 12, 3), (2, 9, 32, 4), (3, 16, 64, 8), (1, 4, 6, 6),
                        (1, 2, 2, 2), (4, 7, 10, 5), (2, 32, 48, 12), (1, 64, 64, 4)]:
        x = torch.randn(B, T, C, generator=g)
        w = [torch.randn(3 * C, C, generator=g) / math.sqrt(C), 0.1 * torch.randn(3 * C, generator=g),
             torch.randn(C, C, generator=g) / math.sqrt(C), 0.1 * torch.randn(C, generator=g)]
        cases.append(Case((x, *w, nh), label=f"B={B}, T={T}, C={C}, n_head={nh}"))
    return cases


for _task in [
    Task("3.1", "scaled dot-product scores", _attention_scores, _cases_scores, compare=_close(1e-5),
         hint="every query against every key is a matrix product with the keys' last two dimensions swapped; "
              "scale by one over the square root of the head size"),
    Task("3.2", "causal mask", _causal_mask, _cases_mask, compare=_close(0),
         hint="query i may see keys 0..i: that is the lower triangle of a (T, T) matrix, the diagonal included"),
    Task("3.3", "causal softmax", _causal_softmax, _cases_causal_softmax, compare=_close(1e-6),
         hint="set the scores of future keys to minus infinity before the softmax (not after), so they get weight "
              "0 and the rest still sums to 1"),
    Task("3.4", "single-head causal attention", _single_head, _cases_single_head, compare=_close(1e-5),
         hint="project x to queries, keys and values; scaled scores; causal softmax; the weights average the "
              "values"),
    Task("3.5", "split heads", _split_heads, _cases_split,
         hint="split the channel dimension into (n_head, head size), then move the head dimension in front of "
              "time"),
    Task("3.6", "merge heads", _merge_heads, _cases_merge,
         hint="the inverse of 3.5: move time back in front of the heads, then flatten heads and head size into "
              "one dimension (a transposed tensor is not contiguous: reshape copies when needed)"),
    Task("3.7", "multi-head causal self-attention", _multi_head, _cases_multi_head, compare=_close(1e-5),
         hint="the weights are in nn.Linear's (out, in) layout; one projection gives q, k and v side by side; "
              "split heads, causal attention per head, merge heads, output projection"),
]:
    register(_task)
