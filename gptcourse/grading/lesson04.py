"""Exercises of lesson 04, the GPT model: LayerNorm, GELU, the MLP, a block, counting."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..model import GPT, MLP, Block, GPTConfig
from . import Case, Task, close, exact_int, register, scalar


def _config(n_embd: int, n_head: int = 1, **kw) -> GPTConfig:
    return GPTConfig(vocab_size=kw.pop("vocab_size", 16), block_size=kw.pop("block_size", 64), n_layer=1,
                     n_head=n_head, n_embd=n_embd, **kw)


# -- references: the library's modules with the given weights ------------------------------


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    # the LayerNorm of the library's Block (nn.LayerNorm over the last dimension)
    ln = Block(_config(x.size(-1), layer_norm_eps=eps)).ln_1
    with torch.no_grad():
        ln.weight.copy_(weight)
        ln.bias.copy_(bias)
        return ln(x)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return MLP(_config(4)).gelu(x)


def _mlp_forward(x, c_fc_weight, c_fc_bias, c_proj_weight, c_proj_bias) -> torch.Tensor:
    mlp = MLP(_config(x.size(-1))).eval()
    mlp.load_state_dict({"c_fc.weight": c_fc_weight, "c_fc.bias": c_fc_bias,
                         "c_proj.weight": c_proj_weight, "c_proj.bias": c_proj_bias})
    with torch.no_grad():
        return mlp(x)


def _block_forward(x: torch.Tensor, state: dict, n_head: int) -> torch.Tensor:
    block = Block(_config(x.size(-1), n_head)).eval()
    block.load_state_dict(state)
    with torch.no_grad():
        return block(x)


def _meta_gpt(config: GPTConfig) -> GPT:
    with torch.device("meta"):  # shapes only: even GPT-2 XL is built in milliseconds
        return GPT(config)


def _count_params(config: GPTConfig) -> int:
    return _meta_gpt(config).num_params()


def _flops_per_token(config: GPTConfig, seq_len: int) -> int:
    return _meta_gpt(config).flops_per_token(seq_len)


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # exactly what GPT.forward computes from its logits
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1).long(), ignore_index=-100)


# -- comparisons ---------------------------------------------------------------------------


_close = close


_scalar = scalar(1e-5, 1e-6)


# -- cases -----------------------------------------------------------------------------------


def _cases_layer_norm():
    g = torch.Generator().manual_seed(41)
    cases = [Case((torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.ones(4), torch.zeros(4)),
                  label="γ = 1, β = 0: plain standardisation")]
    for shape in [(8,), (3, 8), (2, 5, 16), (2, 3, 4, 32), (1, 1, 2), (4, 7, 64)]:
        C = shape[-1]
        x = 3 + 4 * torch.randn(*shape, generator=g)
        w, b = 1 + 0.5 * torch.randn(C, generator=g), 0.5 * torch.randn(C, generator=g)
        cases.append(Case((x, w, b), label=f"shape {shape}"))
    C = 12
    w, b = torch.randn(C, generator=g), torch.randn(C, generator=g)
    cases.append(Case((torch.randn(3, C, generator=g), w, b), {"eps": 1e-2}, label="eps = 1e-2 (inside the root)"))
    cases.append(Case((torch.full((2, C), 7.0), w, b), label="constant rows: variance 0, the output is β"))
    cases.append(Case((1e-3 * torch.randn(2, 4, C, generator=g), w, b), label="tiny inputs: eps matters"))
    return cases


def _cases_gelu():
    g = torch.Generator().manual_seed(42)
    cases = [Case((torch.linspace(-6, 6, 49),), label="a grid on [-6, 6]"),
             Case((torch.tensor([0.0, 1.0, -1.0]),), label="0, 1, -1")]
    for shape in [(10,), (3, 7), (2, 4, 16), (1, 1, 1), (5, 5, 5), (2, 3, 4, 5), (64,)]:
        cases.append(Case((2 * torch.randn(*shape, generator=g),), label=f"shape {shape}"))
    cases.append(Case((torch.tensor([-30.0, -10.0, 10.0, 30.0]),), label="large |x|"))
    cases.append(Case((torch.tensor([-3.0, -0.5, 0.5, 3.0]).double(),), label="float64 input"))
    return cases


def _cases_mlp():
    g = torch.Generator().manual_seed(43)
    cases = []
    for B, T, C in [(1, 1, 4), (2, 3, 8), (1, 5, 16), (3, 4, 32), (2, 8, 12), (1, 2, 2), (2, 6, 64), (4, 1, 8),
                    (1, 16, 24), (2, 2, 48)]:
        x = torch.randn(B, T, C, generator=g)
        w = [torch.randn(4 * C, C, generator=g) / math.sqrt(C), 0.1 * torch.randn(4 * C, generator=g),
             torch.randn(C, 4 * C, generator=g) / math.sqrt(4 * C), 0.1 * torch.randn(C, generator=g)]
        cases.append(Case((x, *w), label=f"B={B}, T={T}, C={C}"))
    return cases


def _random_block_state(C: int, n_head: int, g: torch.Generator) -> dict:
    block = Block(_config(C, n_head))
    with torch.no_grad():  # larger weights than GPT-2's init so that every part matters
        for name, p in block.named_parameters():
            if name.startswith(("ln_1", "ln_2")):
                p.add_(0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("weight"):
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.size(1)))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return {k: v.clone() for k, v in block.state_dict().items()}


def _cases_block():
    g = torch.Generator().manual_seed(44)
    cases = []
    for B, T, C, nh in [(1, 1, 4, 1), (1, 4, 8, 2), (2, 5, 16, 4), (2, 9, 32, 4), (3, 6, 24, 3),
                        (1, 16, 64, 8), (2, 3, 12, 6), (1, 2, 8, 8), (4, 7, 16, 2), (1, 32, 32, 4)]:
        cases.append(Case((torch.randn(B, T, C, generator=g), _random_block_state(C, nh, g), nh),
                          label=f"B={B}, T={T}, C={C}, n_head={nh}"))
    return cases


_SMALL_CONFIGS = [
    ("tiny", GPTConfig.preset("tiny")),
    ("mini", GPTConfig.preset("mini")),
    ("small", GPTConfig.preset("small")),
    ("tiny, untied head", GPTConfig.preset("tiny", tie_weights=False)),
    ("mini, no biases", GPTConfig.preset("mini", bias=False)),
    ("small, rotary positions (no wpe)", GPTConfig.preset("small", pos_encoding="rope")),
    ("1 layer, width 1", GPTConfig(vocab_size=3, block_size=5, n_layer=1, n_head=1, n_embd=1)),
    ("odd vocabulary, untied, no biases", GPTConfig(vocab_size=101, block_size=33, n_layer=3, n_head=2, n_embd=10,
                                                    tie_weights=False, bias=False)),
    ("gpt2", GPTConfig.preset("gpt2")),
    ("gpt2-xl", GPTConfig.preset("gpt2-xl")),
]


def _cases_count():
    return [Case((c,), label=label) for label, c in _SMALL_CONFIGS]


def _cases_flops():
    lengths = [64, 128, 256, 64, 128, 256, 5, 33, 1024, 1024]
    cases = [Case((c, T), label=label) for (label, c), T in zip(_SMALL_CONFIGS, lengths)]
    cases.append(Case((GPTConfig.preset("gpt2"), 1), label="gpt2, seq_len 1"))
    return cases


def _cases_cross_entropy():
    g = torch.Generator().manual_seed(47)
    cases = [Case((torch.zeros(1, 4, 10), torch.tensor([[1, 2, 3, 4]])), label="uniform logits: ln(10)")]
    for B, T, V in [(1, 1, 2), (2, 3, 5), (4, 8, 16), (2, 16, 100), (3, 5, 7), (1, 32, 50), (2, 4, 1000)]:
        cases.append(Case((2 * torch.randn(B, T, V, generator=g), torch.randint(V, (B, T), generator=g)),
                          label=f"B={B}, T={T}, V={V}"))
    t = torch.randint(9, (2, 6), generator=g)
    t[0, :2] = -100
    t[1, 4:] = -100
    cases.append(Case((torch.randn(2, 6, 9, generator=g), t), label="some targets are -100 (ignored)"))
    big = 1000 * torch.randn(2, 4, 6, generator=g)
    cases.append(Case((big, torch.randint(6, (2, 4), generator=g)),
                      label="huge logits: subtract the max before exp (or use log_softmax)"))
    return cases


for _task in [
    Task("4.1", "LayerNorm from scratch", _layer_norm, _cases_layer_norm, compare=_close(1e-5),
         hint="normalise over the last dimension with the mean and the biased variance (divide by n, not n - 1), "
              "eps inside the square root; then scale by weight and shift by bias"),
    Task("4.2", "GELU, tanh approximation", _gelu_tanh, _cases_gelu, compare=_close(1e-6),
         hint="the tanh approximation of GELU from the lesson, the one with the cubic 0.044715 term "
              "inside the tanh; PyTorch's own GELU in its tanh mode gives the numbers to compare with"),
    Task("4.3", "the MLP from its weights", _mlp_forward, _cases_mlp, compare=_close(1e-5),
         hint="the weights are in nn.Linear's (out, in) layout; expand to 4C, tanh-GELU, project back to C"),
    Task("4.4", "a Transformer block from its weights", _block_forward, _cases_block, compare=_close(1e-5),
         hint="pre-LN: each sublayer reads a LayerNorm of the residual stream and adds its output back to it; "
              "attention first, then the MLP (eps 1e-5; attention as in 3.7)"),
    Task("4.5", "parameter count of a config", _count_params, _cases_count, compare=exact_int,
         hint="add up the shapes of every tensor: the embedding tables, each block's two LayerNorms, attention "
              "and MLP linears, the final LayerNorm and the head; a learned position table only with learned "
              "positions, a separate head only when untied; with bias off, drop every bias vector"),
    Task("4.6", "training FLOPs per token", _flops_per_token, _cases_flops, compare=exact_int,
         hint="the 6 FLOPs per weight per token rule on the non-embedding weights (the head always counts), plus "
              "the attention-score term that grows with seq_len"),
    Task("4.7", "cross-entropy loss", _cross_entropy, _cases_cross_entropy, compare=_scalar,
         hint="the negative log-probability of each target, averaged over the positions whose target is not -100; "
              "compute log-probabilities with log-softmax, which stays finite"),
]:
    register(_task)
