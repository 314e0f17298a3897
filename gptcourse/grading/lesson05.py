"""Exercises of lesson 05, generation: greedy, temperature, top-k, top-p, sampling, a KV-cache step."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..generate import filter_logits, generate
from ..model import GPT, CausalSelfAttention, GPTConfig, KVCache
from . import Case, Task, register


class _FixedLogits(nn.Module):
    """A stand-in model whose next-token logits are given: lets the references run the
    library's own decoding step (``generate``) on exactly these logits."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        B, V = logits.shape
        self.config = GPTConfig(vocab_size=V, block_size=8, n_layer=1, n_head=1, n_embd=1)
        self.register_buffer("logits", logits.detach().clone())
        self.dummy = nn.Parameter(torch.zeros(1))  # generate() reads the device from a parameter

    def forward(self, idx, targets=None, cache=None):
        return self.logits[:, None, :].expand(idx.size(0), idx.size(1), -1), None


def _one_step(logits: torch.Tensor, **kw) -> torch.Tensor:
    model = _FixedLogits(logits)
    prompt = torch.zeros(logits.size(0), 1, dtype=torch.long)
    return generate(model, prompt, 1, use_cache=False, **kw)[:, -1]


# -- references --------------------------------------------------------------------------------


def _greedy_next_token(logits: torch.Tensor) -> torch.Tensor:
    return _one_step(logits, temperature=0.0)


def _temperature_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    # the distribution generate() samples from when there is no top-k / top-p
    return torch.softmax(logits.float() / temperature, dim=-1)


def _top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    return filter_logits(logits, top_k=k)


def _top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    return filter_logits(logits, top_p=p)


def _sample_next_token(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                       seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return _one_step(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=g)


def _kv_attention_step(x_new, k_cache, v_cache, c_attn_weight, c_attn_bias, c_proj_weight, c_proj_bias, n_head):
    B, T_new, C = x_new.shape
    past = k_cache.size(2)
    cfg = GPTConfig(vocab_size=2, block_size=past + T_new, n_layer=1, n_head=n_head, n_embd=C)
    attn = CausalSelfAttention(cfg).eval()
    with torch.no_grad():
        attn.c_attn.weight.copy_(c_attn_weight)
        attn.c_attn.bias.copy_(c_attn_bias)
        attn.c_proj.weight.copy_(c_proj_weight)
        attn.c_proj.bias.copy_(c_proj_bias)
        cache = KVCache(cfg, B)
        cache.k[0][:, :, :past] = k_cache
        cache.v[0][:, :, :past] = v_cache
        cache.length = past
        y = attn(x_new, cache=cache, layer=0)
    end = past + T_new
    return y, cache.k[0][:, :, :end].clone(), cache.v[0][:, :, :end].clone()


def _greedy_generate(model: GPT, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    return generate(model, idx, max_new_tokens, temperature=0.0, use_cache=False)


# -- comparisons -------------------------------------------------------------------------------


def _tensor_diff(expected: torch.Tensor, got, atol: float, rtol: float = 1e-5, what: str = "") -> str | None:
    pre = f"{what}: " if what else ""
    if not isinstance(got, torch.Tensor):
        return f"{pre}expected a torch.Tensor, got {type(got).__name__}"
    if got.shape != expected.shape:
        return f"{pre}shape {tuple(got.shape)} instead of {tuple(expected.shape)}"
    if not expected.is_floating_point():
        if got.is_floating_point() or got.dtype == torch.bool:
            return f"{pre}expected integer token ids, got dtype {got.dtype}"
        wrong = got.long() != expected.long()
        if wrong.any():
            bad = tuple(wrong.nonzero()[0].tolist())
            return (f"{pre}token ids differ at {int(wrong.sum())} of {expected.numel()} positions, first at "
                    f"index {bad}: {int(got[bad])} instead of {int(expected[bad])}")
        return None
    if not got.is_floating_point():
        return f"{pre}expected floating-point values, got dtype {got.dtype}"
    e, g = expected.double(), got.double()
    if not torch.equal(torch.isneginf(e), torch.isneginf(g)):
        where = (torch.isneginf(e) != torch.isneginf(g)).nonzero()[0].tolist()
        kept = "kept" if torch.isneginf(e)[tuple(where)] else "removed"
        return f"{pre}token at index {tuple(where)} was {kept} by you but not by the library (see the -inf entries)"
    if not torch.allclose(g, e, rtol=rtol, atol=atol):
        finite = torch.isfinite(e)
        diff = (g[finite] - e[finite]).abs()
        return f"{pre}values differ (max abs diff {float(diff.nan_to_num(float('inf')).max()):.3g})"
    return None


def _close(atol: float, rtol: float = 1e-5):
    return lambda expected, got: _tensor_diff(expected, got, atol, rtol)


def _ids(expected, got):
    return _tensor_diff(expected, got, 0.0)


def _triple(expected, got):
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        return f"expected a tuple (y, k_all, v_all), got {type(got).__name__}"
    for name, e, g in zip(("y", "k_all", "v_all"), expected, got):
        reason = _tensor_diff(e, g, 1e-5, what=name)
        if reason:
            return reason
    return None


# -- cases -------------------------------------------------------------------------------------


def _cases_greedy():
    g = torch.Generator().manual_seed(51)
    cases = [Case((torch.tensor([[0.1, 2.0, -1.0, 0.5]]),), label="one row"),
             Case((torch.tensor([[1.0, 3.0, 3.0, 0.0]]),), label="a tie: the first maximum wins")]
    for B, V in [(1, 10), (2, 65), (4, 100), (3, 1000), (8, 7), (1, 2), (16, 50)]:
        cases.append(Case((torch.randn(B, V, generator=g),), label=f"B={B}, V={V}"))
    cases.append(Case((torch.tensor([[-5.0, float("-inf"), -7.0]]),), label="some -inf logits"))
    return cases


def _cases_temperature():
    g = torch.Generator().manual_seed(52)
    cases = [Case((torch.tensor([[1.0, 2.0, 3.0]]), 1.0), label="temperature 1: plain softmax")]
    for B, V, t in [(1, 10, 0.5), (2, 65, 2.0), (3, 100, 0.1), (1, 50, 10.0), (4, 7, 0.8), (2, 1000, 1.3),
                    (1, 2, 1.0), (3, 20, 0.7)]:
        cases.append(Case((3 * torch.randn(B, V, generator=g), t), label=f"B={B}, V={V}, temperature {t}"))
    cases.append(Case((torch.tensor([[10.0, 30.0, 20.0]]), 0.01), label="temperature 0.01: no overflow"))
    return cases


def _cases_top_k():
    g = torch.Generator().manual_seed(53)
    cases = [Case((torch.tensor([[1.0, 4.0, 2.0, 3.0]]), 2), label="keep the two largest"),
             Case((torch.tensor([[1.0, 3.0, 3.0, 2.0, 0.0]]), 2), label="exact tie: keep both largest"),
             Case((torch.tensor([[5.0, 1.0, 1.0, 1.0, 0.0]]), 2),
                  label="tie at the k-th value: every logit equal to it is kept")]
    for B, V, k in [(1, 10, 1), (2, 65, 5), (3, 100, 50), (4, 7, 7), (2, 20, 30), (5, 1000, 40), (1, 2, 1)]:
        cases.append(Case((torch.randn(B, V, generator=g), k), label=f"B={B}, V={V}, k={k}"))
    return cases


def _safe_p(logits: torch.Tensor, p: float) -> float:
    """Nudge p away from the exclusive cumulative sums so rounding cannot flip a token."""
    probs = torch.softmax(logits.double(), dim=-1).sort(dim=-1, descending=True).values
    excl = (probs.cumsum(-1) - probs).flatten()
    while (excl - p).abs().min() < 1e-4:
        p = p + 3e-4
    return round(p, 6)


def _cases_top_p():
    g = torch.Generator().manual_seed(54)
    cases = [Case((torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])), 0.7),
                  label="probs 0.5, 0.3, 0.15, 0.05 and p = 0.7: keep 0.5 and 0.3"),
             Case((torch.log(torch.tensor([[0.1, 0.6, 0.3]])), 0.5),
                  label="the most likely token alone reaches p: only it is kept"),
             Case((torch.randn(2, 30, generator=g), 1.0), label="p = 1: nothing is removed")]
    for B, V, p in [(1, 10, 0.9), (2, 65, 0.5), (3, 100, 0.95), (1, 50, 0.2), (4, 20, 0.8), (2, 1000, 0.9),
                    (3, 5, 0.01)]:
        logits = 2 * torch.randn(B, V, generator=g)
        cases.append(Case((logits, _safe_p(logits, p)), label=f"B={B}, V={V}, p≈{p}"))
    return cases


def _cases_sample():
    g = torch.Generator().manual_seed(55)
    cases = [Case((torch.tensor([[0.0, 0.0, 0.0, 0.0]]), 1.0, None, None, 0), label="uniform, seed 0")]
    for n, (B, V, t, k, p) in enumerate([(1, 10, 1.0, None, None), (4, 65, 0.8, None, None), (3, 100, 1.0, 10, None),
                                         (2, 50, 1.2, None, 0.9), (8, 65, 0.7, 20, 0.95), (5, 1000, 1.0, 50, 0.8),
                                         (16, 12, 2.0, None, None), (2, 30, 0.5, 1, None),
                                         (3, 65, 1.0, 65, 1.0)]):
        logits = 2 * torch.randn(B, V, generator=g)
        if p is not None and p < 1.0:
            p = _safe_p(filter_logits(logits / t, k), p)
        cases.append(Case((logits, t, k, p, 100 + n), label=f"B={B}, V={V}, temperature {t}, top_k {k}, top_p {p}"))
    return cases


def _cases_kv_step():
    g = torch.Generator().manual_seed(56)
    cases = []
    for B, past, C, nh in [(1, 0, 4, 1), (1, 1, 8, 2), (2, 5, 16, 4), (3, 9, 32, 4), (1, 31, 64, 8), (2, 3, 12, 3),
                           (4, 16, 8, 1), (2, 0, 16, 4), (1, 63, 32, 2), (3, 2, 6, 6)]:
        hd = C // nh
        x = torch.randn(B, 1, C, generator=g)
        k, v = torch.randn(B, nh, past, hd, generator=g), torch.randn(B, nh, past, hd, generator=g)
        w = [torch.randn(3 * C, C, generator=g) / math.sqrt(C), 0.1 * torch.randn(3 * C, generator=g),
             torch.randn(C, C, generator=g) / math.sqrt(C), 0.1 * torch.randn(C, generator=g)]
        cases.append(Case((x, k, v, *w, nh), label=f"B={B}, {past} cached positions, C={C}, n_head={nh}"))
    return cases


def _random_model(seed: int, **kw) -> GPT:
    cfg = GPTConfig(**{"vocab_size": 37, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16, **kw})
    with torch.random.fork_rng():  # leave the learner's random state alone
        torch.manual_seed(seed)
        model = GPT(cfg).eval()
        with torch.no_grad():  # larger weights than at init, so the greedy choices vary
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, 0.5)
    return model


def _cases_greedy_generate():
    g = torch.Generator().manual_seed(57)
    m1, m2 = _random_model(1), _random_model(2, pos_encoding="rope", block_size=12)
    m3 = _random_model(3, vocab_size=5, block_size=6, n_layer=1)
    return [
        Case((m1, torch.tensor([[1, 2, 3]]), 5), label="one prompt of 3 tokens, 5 new"),
        Case((m1, torch.randint(37, (3, 4), generator=g), 8), label="a batch of 3 prompts"),
        Case((m1, torch.tensor([[7]]), 0), label="max_new_tokens = 0: the prompt unchanged"),
        Case((m1, torch.randint(37, (2, 10), generator=g), 12),
             label="runs past block_size 16: feed only the last block_size tokens"),
        Case((m2, torch.randint(37, (2, 3), generator=g), 15), label="rotary positions, past block_size 12"),
        Case((m3, torch.randint(5, (1, 6), generator=g), 6), label="a full block from the start"),
        Case((m3, torch.randint(5, (4, 1), generator=g), 10), label="one-token prompts, batch of 4"),
        Case((m2, torch.tensor([[0]]), 1), label="one new token"),
        Case((m1, torch.randint(37, (1, 16), generator=g), 3), label="prompt exactly block_size long"),
        Case((m2, torch.randint(37, (2, 20), generator=g), 4), label="prompt longer than block_size"),
    ]


for _task in [
    Task("5.1", "greedy next token", _greedy_next_token, _cases_greedy, compare=_ids,
         hint="the most likely next token is the index of the largest logit of each row"),
    Task("5.2", "softmax with temperature", _temperature_probs, _cases_temperature, compare=_close(1e-6),
         hint="divide the logits by the temperature before the softmax; subtracting each row's maximum first "
              "keeps exp from overflowing at low temperatures"),
    Task("5.3", "top-k filter", _top_k_filter, _cases_top_k, compare=_close(0.0),
         hint="find each row's k-th largest value; every logit below it becomes -inf (ties with it stay); when k "
              "is at least the vocabulary size nothing is removed; return a new tensor"),
    Task("5.4", "top-p (nucleus) filter", _top_p_filter, _cases_top_p, compare=_close(0.0),
         hint="sort the probabilities in descending order; a token is dropped when the tokens before it already "
              "reach p; map the decision back to the original order; return a new tensor"),
    Task("5.5", "sample the next token", _sample_next_token, _cases_sample, compare=_ids,
         hint="one generator seeded with seed, used for a single draw over the whole batch; the order is "
              "temperature, top-k, top-p, softmax; return one id per row"),
    Task("5.6", "one attention step with a KV cache", _kv_attention_step, _cases_kv_step, compare=_triple,
         hint="compute q, k, v for the new position only; the returned caches are the old ones with the new k and "
              "v appended along the time dimension; the new query may attend to every key, so no mask"),
    Task("5.7", "greedy generation loop", _greedy_generate, _cases_greedy_generate, compare=_ids,
         hint="repeat: run the model on at most the last block_size tokens, take the last position's logits, "
              "append the argmax; no gradients needed"),
]:
    register(_task)
