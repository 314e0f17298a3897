"""Exercises of lesson 09, pretrained GPT-2: Hugging Face names -> ours, converting a whole state
dict, attention straight from the fused ``c_attn``, counting parameters, the sliding-window plan,
per-token losses over a long text, perplexity and bits per byte."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F

from ..model import CONV1D_WEIGHTS, GPT, CausalSelfAttention, GPTConfig
from . import Case, Task, close, exact_int, register

# -- helpers -----------------------------------------------------------------------------------


class _StateDict(dict):
    """A state dict whose repr lists names and shapes, not every number (for failure reports)."""

    def __repr__(self) -> str:
        items = [f"{k}: {tuple(v.shape)}" for k, v in self.items()]
        head = ", ".join(items[:4]) + (", ..." if len(items) > 4 else "")
        return f"state dict of {len(items)} tensors {{{head}}}"


def _random_gpt(config: GPTConfig, seed: int) -> GPT:
    """A GPT whose every tensor (biases and LayerNorms too) holds distinct random values."""
    with torch.random.fork_rng():  # leave the learner's random state alone
        torch.manual_seed(seed)
        model = GPT(config).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.5)
    return model


def _hf_layout(model: GPT, prefix: bool, masks: bool, masked_bias: bool, head: bool) -> _StateDict:
    """``model``'s weights as a Hugging Face GPT-2 file holds them (Conv1D weights as (in, out)).

    ``prefix``: names start with ``transformer.`` (saved by ``GPT2LMHeadModel``) or not (OpenAI's
    files on the hub, from ``GPT2Model``); ``masks``/``masked_bias``: the attention buffers older
    files carry; ``head``: ``lm_head.weight`` stored although it is tied (always stored when untied).
    """
    cfg = model.config
    out = _StateDict()
    for k, v in model.state_dict().items():
        if k == "lm_head.weight":
            continue
        name = k.removeprefix("transformer.")
        v = v.detach().clone()
        if name.endswith(CONV1D_WEIGHTS):
            v = v.t().contiguous()
        out[("transformer." if prefix else "") + name] = v
        if name.endswith("ln_1.bias"):  # the buffers sit after ln_1 in GPT2Attention's order
            layer = name.split(".")[1]
            base = f"{'transformer.' if prefix else ''}h.{layer}.attn"
            if masks:
                T = cfg.block_size
                out[f"{base}.bias"] = torch.tril(torch.ones(T, T, dtype=torch.bool)).view(1, 1, T, T)
            if masked_bias:
                out[f"{base}.masked_bias"] = torch.tensor(-1e4)
    if head or not cfg.tie_weights:
        out["lm_head.weight"] = model.lm_head.weight.detach().clone()
    return out


# -- references --------------------------------------------------------------------------------


def _map_key(hf_key: str) -> tuple[str, bool] | None:
    # the naming rules of GPT.load_hf_state_dict, one key at a time
    name = hf_key.removeprefix("transformer.")
    if name.endswith((".attn.bias", ".attn.masked_bias")):
        return None  # buffers (the causal mask), not weights
    if name == "lm_head.weight":
        return name, False
    return f"transformer.{name}", name.endswith(CONV1D_WEIGHTS)


def _convert_state_dict(hf_state: dict, config: GPTConfig) -> dict:
    model = GPT(config)
    model.load_hf_state_dict(dict(hf_state))
    return _StateDict({k: v.detach().clone() for k, v in model.state_dict().items()})


def _gpt2_attention(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, n_head: int) -> torch.Tensor:
    B, T, C = x.shape
    cfg = GPTConfig(vocab_size=2, block_size=T, n_layer=1, n_head=n_head, n_embd=C)
    attn = CausalSelfAttention(cfg, attn_impl="naive").eval()
    with torch.no_grad():
        attn.c_attn.weight.copy_(weight.t())  # Conv1D (in, out) -> Linear (out, in)
        attn.c_attn.bias.copy_(bias)
        _, weights = attn(x, return_weights=True)
    return weights


def _count_params(config: GPTConfig) -> int:
    # GPT.num_params of a one-layer model (shapes only, on the meta device) plus the other
    # n_layer - 1 blocks, which are all alike: quick even for gpt2-xl
    with torch.device("meta"):
        model = GPT(replace(config, n_layer=1))
    block = sum(p.numel() for p in model.transformer.h[0].parameters())
    return model.num_params() + (config.n_layer - 1) * block


def _window_plan(n_tokens: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    # evaluate.sliding_windows' (begin, length, skip) as (start, end, first): the window holds
    # ids[start:end] (inputs and targets) and scores targets first .. end - 1
    from ..evaluate import sliding_windows

    return [(b, b + n + 1, b + skip + 1) for b, n, skip in sliding_windows(n_tokens, block_size, stride)]


@torch.no_grad()
def _token_losses_sliding(model: GPT, ids: torch.Tensor, stride: int) -> torch.Tensor:
    model.eval()
    ids = torch.as_tensor(ids).long().view(-1)
    losses = torch.empty(len(ids) - 1)
    for start, end, first in _window_plan(len(ids), model.config.block_size, stride):
        span = ids[start:end]
        targets = span[1:].clone()
        targets[: first - start - 1] = -100  # already scored by an earlier window
        logits, _ = model(span[None, :-1])
        nll = F.cross_entropy(logits[0].float(), targets, ignore_index=-100, reduction="none")
        losses[first - 1:end - 1] = nll[first - start - 1:]
    return losses


def _perplexity_and_bpb(losses: torch.Tensor, n_bytes: int) -> tuple[float, float]:
    nats = float(losses.double().sum())
    return math.exp(nats / losses.numel()), nats / math.log(2) / n_bytes


# -- comparisons -------------------------------------------------------------------------------


def _key_answer(expected, got) -> str | None:
    if expected is None:
        return None if got is None else f"this key is a buffer, not a weight: return None (got {got!r})"
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"expected a pair (our_key, transpose), got {got!r}"
    name, transpose = got
    if name != expected[0]:
        return f"our key is {expected[0]!r}, not {name!r}"
    if not isinstance(transpose, bool) or transpose != expected[1]:
        return f"transpose should be {expected[1]} (got {transpose!r})"
    return None


def _state_dict_answer(expected: dict, got) -> str | None:
    if not isinstance(got, dict):
        return f"expected a dict of tensors, got {type(got).__name__}"
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing:
        return f"missing keys {missing[:4]}{' ...' if len(missing) > 4 else ''} (the keys are GPT(config).state_dict()'s)"
    if extra:
        return f"keys our GPT does not have: {extra[:4]}{' ...' if len(extra) > 4 else ''}"
    for k, e in expected.items():
        g = got[k]
        if not isinstance(g, torch.Tensor):
            return f"{k}: expected a tensor, got {type(g).__name__}"
        if g.shape != e.shape:
            return f"{k}: shape {tuple(g.shape)} instead of {tuple(e.shape)} (a Conv1D weight not transposed?)"
        if not torch.equal(g.to(e.dtype), e):
            return f"{k}: right shape, wrong values (transposed where it should not be, or the wrong tensor?)"
    return None


def _pair_of_floats(expected, got) -> str | None:
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"expected a pair (perplexity, bits_per_byte), got {got!r}"
    for what, e, g in zip(("perplexity", "bits per byte"), expected, got):
        if isinstance(g, torch.Tensor) and g.numel() == 1:
            g = g.item()
        if isinstance(g, bool) or not isinstance(g, (int, float)):
            return f"{what}: expected a float, got {type(g).__name__}"
        if not math.isclose(g, e, rel_tol=1e-6, abs_tol=1e-9):
            return f"{what}: {g!r} instead of {e!r}"
    return None


def _plan_answer(expected, got) -> str | None:
    if not isinstance(got, (list, tuple)):
        return f"expected a list of (start, end, first) triples, got {type(got).__name__}"
    got = [tuple(w) if isinstance(w, (list, tuple)) else w for w in got]
    for i, (e, g) in enumerate(zip(expected, got)):
        if g != e:
            return f"window {i}: {g!r} instead of {e!r}"
    if len(got) != len(expected):
        return f"{len(got)} windows instead of {len(expected)}"
    return None


# -- cases -------------------------------------------------------------------------------------


def _cases_map_key():
    keys = ["wte.weight", "transformer.wte.weight", "wpe.weight", "h.0.ln_1.weight", "h.0.attn.c_attn.weight",
            "h.3.attn.c_attn.bias", "transformer.h.11.attn.c_proj.weight", "h.2.attn.c_proj.bias",
            "h.5.mlp.c_fc.weight", "transformer.h.7.mlp.c_fc.bias", "h.10.mlp.c_proj.weight",
            "transformer.h.1.ln_2.bias", "h.0.attn.bias", "transformer.h.23.attn.bias",
            "transformer.h.4.attn.masked_bias", "ln_f.weight", "transformer.ln_f.bias", "lm_head.weight"]
    return [Case((k,), label=k) for k in keys]


def _cases_convert():
    small = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)
    wide = GPTConfig(vocab_size=17, block_size=6, n_layer=3, n_head=3, n_embd=12)
    untied = GPTConfig(vocab_size=13, block_size=5, n_layer=1, n_head=1, n_embd=4, tie_weights=False)
    deep = GPTConfig(vocab_size=23, block_size=10, n_layer=4, n_head=4, n_embd=16)
    one = GPTConfig(vocab_size=7, block_size=3, n_layer=1, n_head=1, n_embd=4)
    untied_wide = GPTConfig(vocab_size=19, block_size=7, n_layer=2, n_head=5, n_embd=10, tie_weights=False)
    cases = []
    for n, (cfg, layout, label) in enumerate([
        (small, dict(prefix=False, masks=True, masked_bias=False, head=False),
         "OpenAI's hub layout: no prefix, attn.bias masks, no lm_head"),
        (small, dict(prefix=True, masks=False, masked_bias=False, head=False),
         "saved by GPT2LMHeadModel: transformer. prefix, no buffers, tied head not stored"),
        (wide, dict(prefix=True, masks=True, masked_bias=True, head=True),
         "an old pytorch_model.bin: prefix, attn.bias and attn.masked_bias, lm_head stored"),
        (wide, dict(prefix=False, masks=False, masked_bias=False, head=False), "3 layers, 3 heads"),
        (untied, dict(prefix=True, masks=False, masked_bias=False, head=True),
         "an untied head: lm_head.weight is its own matrix"),
        (untied, dict(prefix=False, masks=True, masked_bias=True, head=True), "untied, no prefix, buffers"),
        (deep, dict(prefix=True, masks=True, masked_bias=False, head=False), "4 layers, 4 heads, attn.bias masks"),
        (one, dict(prefix=False, masks=False, masked_bias=True, head=True),
         "one layer, one head: only masked_bias buffers, tied head stored"),
        (untied_wide, dict(prefix=True, masks=True, masked_bias=True, head=True),
         "untied, 5 heads of width 2, every buffer"),
    ]):
        state = _hf_layout(_random_gpt(cfg, 90 + n), **layout)
        cases.append(Case((state, cfg), label=label))
    # the same file with its keys in reverse order: lm_head / wte must not depend on the order
    for n, (cfg, prefix) in enumerate([(small, True), (wide, False)]):
        state = _hf_layout(_random_gpt(cfg, 80 + n), prefix=prefix, masks=True, masked_bias=False, head=False)
        state = _StateDict(reversed(list(state.items())))
        cases.append(Case((state, cfg), label=f"keys in reverse order ({cfg.n_layer} layers, tied head not stored)"))
    return cases


def _cases_attention():
    g = torch.Generator().manual_seed(93)
    cases = []
    for B, T, C, nh in [(1, 4, 4, 1), (1, 5, 8, 2), (2, 7, 12, 3), (3, 1, 8, 4), (2, 16, 32, 4), (1, 9, 24, 6),
                        (4, 3, 6, 2), (1, 32, 64, 8), (2, 2, 2, 2), (1, 12, 16, 1), (3, 8, 20, 5)]:
        x = torch.randn(B, T, C, generator=g)
        weight = torch.randn(C, 3 * C, generator=g) / math.sqrt(C)  # Conv1D layout: (in, out)
        bias = 0.5 * torch.randn(3 * C, generator=g)
        cases.append(Case((x, weight, bias, nh), label=f"B={B}, T={T}, C={C}, n_head={nh}"))
    # large scores: nearly one-hot rows, where a missing 1/sqrt(head_dim) or a wrong mask shows plainly
    x = 3.0 * torch.randn(2, 10, 16, generator=g)
    weight, bias = torch.randn(16, 48, generator=g), torch.randn(48, generator=g)
    cases.append(Case((x, weight, bias, 4), label="B=2, T=10, C=16, n_head=4, large scores (peaked rows)"))
    return cases


def _cases_count():
    named = [(name, GPTConfig.preset(name)) for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "tiny",
                                                           "mini", "small")]
    odd = [
        ("gpt2 with an untied head", GPTConfig.preset("gpt2", tie_weights=False)),
        ("gpt2 without biases", GPTConfig.preset("gpt2", bias=False)),
        ("gpt2 with rotary positions (no wpe)", GPTConfig.preset("gpt2", pos_encoding="rope")),
        ("rope, untied, no biases", GPTConfig(vocab_size=1000, block_size=77, n_layer=3, n_head=4, n_embd=48,
                                              pos_encoding="rope", tie_weights=False, bias=False)),
        ("one layer, one head", GPTConfig(vocab_size=5, block_size=3, n_layer=1, n_head=1, n_embd=2)),
        ("block_size 2048", GPTConfig.preset("gpt2", block_size=2048)),
    ]
    return [Case((cfg,), label=label) for label, cfg in named + odd]


def _cases_plan():
    shapes = [(20, 8, 4), (20, 8, 8), (9, 8, 4), (10, 8, 4), (2, 8, 4), (3, 1, 1), (33, 8, 3), (50, 10, 1),
              (100, 16, 5), (17, 4, 2), (1025, 1024, 512), (5146, 1024, 512), (4000, 256, 256)]
    return [Case((n, b, s), label=f"{n} tokens, block_size {b}, stride {s}") for n, b, s in shapes]


def _cases_sliding():
    g = torch.Generator().manual_seed(96)
    cases = []
    for n, (block, length, stride) in enumerate([(8, 2, 4), (8, 9, 4), (8, 10, 4), (8, 30, 8), (8, 30, 3),
                                                 (8, 25, 1), (16, 57, 8), (16, 40, 5), (4, 13, 2),
                                                 (16, 17, 16), (4, 50, 4), (8, 6, 2)]):
        model = _random_gpt(GPTConfig(vocab_size=37, block_size=block, n_layer=1, n_head=2, n_embd=16), 60 + n)
        ids = torch.randint(37, (length,), generator=g)
        cases.append(Case((model, ids, stride), label=f"block_size {block}, {length} tokens, stride {stride}"))
    return cases


def _cases_ppl():
    g = torch.Generator().manual_seed(97)
    cases = [Case((torch.full((10,), math.log(50257.0)), 40), label="uniform over 50,257 ids: perplexity 50,257"),
             Case((torch.tensor([0.0, 0.0, 0.0]), 3), label="certain of every token: perplexity 1, 0 bits"),
             Case((torch.tensor([math.log(2.0)] * 8), 8), label="1 bit per token, 1 token per byte")]
    for n, n_bytes in [(1, 4), (50, 180), (1000, 4200), (337, 337), (5000, 20479)]:
        losses = 4.0 * torch.rand(n, generator=g)
        cases.append(Case((losses, n_bytes), label=f"{n} token losses, {n_bytes} bytes"))
    cases += [Case((torch.tensor([25.0]), 1), label="one very unlikely token: perplexity e^25"),
              Case((torch.cat([torch.zeros(99), torch.tensor([46.0])]), 250),
                   label="99 certain tokens and one surprise: the mean, not the max"),
              Case((6.0 * torch.rand(700, generator=g, dtype=torch.float64), 2900), label="float64 losses")]
    return cases


for _task in [
    Task("9.1", "map a Hugging Face GPT-2 key to ours", _map_key, _cases_map_key, compare=_key_answer,
         hint="Hugging Face names start at the transformer's children; the attention mask buffers are not "
              "weights; GPT-2's Conv1D stores the four projection weights transposed (weights, not biases)"),
    Task("9.2", "convert a Hugging Face state dict", _convert_state_dict, _cases_convert,
         compare=_state_dict_answer,
         hint="map every key with 9.1 and transpose where it says so; drop the buffers; a tied checkpoint without "
              "a head shares the token table; the result has exactly our model's keys"),
    Task("9.3", "attention weights from GPT-2's fused c_attn", _gpt2_attention, _cases_attention,
         compare=close(1e-5),
         hint="GPT-2's Conv1D stores (in, out), so no transpose here; split the fused projection into q, k, v, "
              "split heads, then scaled scores with the future masked and a softmax"),
    Task("9.4", "count a GPT's parameters from its config", _count_params, _cases_count, compare=exact_int,
         hint="per block the four projections have 12 C^2 weights; add their biases and the LayerNorms as the "
              "config says; then the embedding tables, the final LayerNorm and an untied head"),
    Task("9.5", "the sliding-window plan", _window_plan, _cases_plan, compare=_plan_answer,
         hint="windows of block_size + 1 tokens, one every stride tokens; each scores only the tokens the "
              "previous window did not; the last window ends at the end of the text"),
    Task("9.6", "per-token losses over a long text", _token_losses_sliding, _cases_sliding, compare=close(1e-5),
         hint="run the model once per window of the plan; a window's targets are its tokens shifted by one; keep "
              "only the losses of the tokens that window is responsible for"),
    Task("9.7", "perplexity and bits per byte", _perplexity_and_bpb, _cases_ppl, compare=_pair_of_floats,
         hint="perplexity is exp of the mean loss per token; bits per byte converts the total loss from nats to "
              "bits and divides by the number of bytes"),
]:
    register(_task)
