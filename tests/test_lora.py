"""LoRA (gptcourse.finetune.lora): the wrapped layer starts equal to its base, merge/unmerge
keep the outputs (within 1e-5, fp32), only the adapters learn, the matching rule and its
errors, and exact parameter counts on a small GPT."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from gptcourse.finetune.lora import (
    LoRALinear,
    apply_lora,
    compare_memory,
    load_lora_state_dict,
    lora_layers,
    lora_state_dict,
    match_modules,
    merge_lora,
    trainable_parameters,
    training_memory,
    unmerge_lora,
)
from gptcourse.model import GPT, GPTConfig

ATOL = 1e-5
# C = 8: a block has 12 C^2 + 13 C = 872 parameters; wte 100 x 8, wpe 16 x 8, ln_f 2 x 8
CFG = GPTConfig(vocab_size=100, block_size=16, n_layer=2, n_head=2, n_embd=8)
GPT_PARAMS = 800 + 128 + 2 * 872 + 16  # 2688
# rank 2 on c_attn (8 -> 24), attn.c_proj (8 -> 8), c_fc (8 -> 32), mlp.c_proj (32 -> 8):
# 2 * (32 + 16 + 40 + 40) = 256 per block
LORA_PARAMS = 2 * 256  # 512


def gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(CFG).eval()


def ids(seed: int = 1, shape=(2, 12)) -> torch.Tensor:
    return torch.randint(0, CFG.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


def randomize_b(model: nn.Module, seed: int = 2, std: float = 0.1) -> None:
    """Give every B a non-zero value, as if trained, so the adapters change the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.B.copy_(torch.randn(layer.B.shape, generator=g) * std)


# --------------------------------------------------------------------------------------
# LoRALinear
# --------------------------------------------------------------------------------------


def test_lora_linear_starts_equal_to_base():
    torch.manual_seed(0)
    base = nn.Linear(16, 24)
    x = torch.randn(3, 5, 16)
    want = base(x)
    layer = LoRALinear(base, r=4, alpha=8)
    assert torch.equal(layer.B, torch.zeros(24, 4))
    torch.testing.assert_close(layer(x), want, atol=0, rtol=0)  # B = 0: exactly the base


def test_lora_linear_init_and_shapes():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(64, 32), r=8, alpha=16)
    assert layer.A.shape == (8, 64) and layer.B.shape == (32, 8)
    assert layer.scaling == 2.0
    # Kaiming-uniform with a = sqrt(5) (nn.Linear's init): bound 1 / sqrt(fan_in)
    bound = 1 / math.sqrt(64)
    assert layer.A.abs().max() <= bound and layer.A.abs().max() > 0.9 * bound
    assert not layer.base.weight.requires_grad and not layer.base.bias.requires_grad
    assert layer.A.requires_grad and layer.B.requires_grad


def test_lora_linear_forward_formula():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 24), r=4, alpha=12)
    randomize_b(layer)
    x = torch.randn(7, 16)
    want = x @ layer.base.weight.T + layer.base.bias + (x @ layer.A.T @ layer.B.T) * 3.0
    torch.testing.assert_close(layer(x), want, atol=ATOL, rtol=0)


def test_merge_unmerge_same_outputs():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 24), r=4, alpha=8)
    randomize_b(layer)
    w0 = layer.base.weight.detach().clone()
    x = torch.randn(5, 16)
    before = layer(x)
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), before, atol=ATOL, rtol=0)
    torch.testing.assert_close(layer.base.weight, w0 + layer.B @ layer.A * 2.0, atol=1e-6, rtol=0)
    layer.merge()  # idempotent: not added twice
    torch.testing.assert_close(layer(x), before, atol=ATOL, rtol=0)
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.base.weight, w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), before, atol=ATOL, rtol=0)


def test_repr_names_rank_and_alpha():
    text = repr(LoRALinear(nn.Linear(4, 6), r=2, alpha=4))
    assert "r=2" in text and "alpha=4" in text and "merged=False" in text


@pytest.mark.parametrize("kwargs", [dict(r=0), dict(alpha=0), dict(dropout=1.0)])
def test_lora_linear_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError, match=f"LoRA {next(iter(kwargs))}"):
        LoRALinear(nn.Linear(4, 4), **kwargs)


@pytest.mark.parametrize("kwargs", [dict(r=1.5), dict(r=True), dict(alpha="16"), dict(dropout=None)])
def test_lora_linear_rejects_wrong_types_with_type_error(kwargs):
    with pytest.raises(TypeError, match=f"LoRA {next(iter(kwargs))}"):
        LoRALinear(nn.Linear(4, 4), **kwargs)


def test_lora_linear_needs_a_linear():
    with pytest.raises(TypeError, match="nn.Linear"):
        LoRALinear(nn.Conv1d(4, 4, 1))


# --------------------------------------------------------------------------------------
# apply_lora on a GPT
# --------------------------------------------------------------------------------------


def test_apply_lora_keeps_outputs_at_start():
    model = gpt()
    x = ids()
    want, _ = model(x)
    apply_lora(model, r=2, alpha=4)
    got, _ = model(x)
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_apply_lora_wraps_attention_and_mlp():
    model = apply_lora(gpt(), ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"), r=2)
    for block in model.transformer.h:
        for layer in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
            assert isinstance(layer, LoRALinear)
    assert type(model.lm_head) is nn.Linear
    assert len(lora_layers(model)) == 8


def test_suffix_and_pattern_matching():
    only_attn = apply_lora(gpt(), "attn.c_proj", r=2)
    assert sorted(lora_layers(only_attn)) == ["transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_proj"]
    one_block = apply_lora(gpt(), "transformer.h.1.*", r=2)
    assert sorted(lora_layers(one_block)) == [
        "transformer.h.1.attn.c_attn", "transformer.h.1.attn.c_proj",
        "transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj"]
    # a suffix matches whole dotted parts only: "proj" is not "c_proj"
    assert match_modules(gpt(), "c_fc") == ["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"]
    with pytest.raises(ValueError):
        apply_lora(gpt(), "proj")


def test_only_adapters_and_extras_require_grad():
    model = apply_lora(gpt(), r=2, train_extra=("ln_f",))
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    adapters = [n for n in trainable if n.endswith((".A", ".B"))]
    assert len(adapters) == 16  # 4 layers x 2 blocks x (A, B)
    assert sorted(set(trainable) - set(adapters)) == ["transformer.ln_f.bias", "transformer.ln_f.weight"]


def test_gradient_reaches_adapters_only():
    model = apply_lora(gpt(), r=2)
    randomize_b(model)  # at B = 0 the gradient of A is exactly zero
    model.train()
    x = ids()
    _, loss = model(x, torch.roll(x, -1, dims=1))
    loss.backward()
    for name, p in model.named_parameters():
        if name.endswith((".A", ".B")):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_training_changes_adapters_not_base():
    model = apply_lora(gpt(), r=2, alpha=4)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = ids()
    first = None
    for _ in range(5):
        _, loss = model(x, torch.roll(x, -1, dims=1))
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < first
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_no_match_lists_linear_layers():
    with pytest.raises(ValueError, match="match no nn.Linear") as err:
        apply_lora(gpt(), ("c_attn", "q_proj"))
    assert "q_proj" in str(err.value)
    assert "transformer.h.*.attn.c_attn" in str(err.value) and "lm_head" in str(err.value)


def test_no_match_in_train_extra():
    with pytest.raises(ValueError, match="classifier"):
        apply_lora(gpt(), "c_attn", train_extra="classifier")


def test_tied_head_is_refused():
    with pytest.raises(ValueError, match="tied"):
        apply_lora(gpt(), "lm_head")


def test_applying_twice_is_refused():
    model = apply_lora(gpt(), "c_attn", r=2)
    with pytest.raises(ValueError, match="already"):
        apply_lora(model, "c_attn", r=2)


def test_parameter_counts_exact():
    model = gpt()
    assert trainable_parameters(model) == (GPT_PARAMS, GPT_PARAMS)
    apply_lora(model, r=2)
    assert trainable_parameters(model) == (LORA_PARAMS, GPT_PARAMS + LORA_PARAMS)


def test_merge_lora_whole_model_and_remove():
    model = apply_lora(gpt(), r=2)
    randomize_b(model)
    x = ids()
    want, _ = model(x)
    merge_lora(model)
    torch.testing.assert_close(model(x)[0], want, atol=ATOL, rtol=0)
    unmerge_lora(model)
    torch.testing.assert_close(model(x)[0], want, atol=ATOL, rtol=0)
    merge_lora(model, remove=True)
    assert not lora_layers(model)
    assert set(model.state_dict()) == set(gpt().state_dict())  # the original layout again
    torch.testing.assert_close(model(x)[0], want, atol=ATOL, rtol=0)


def test_merge_without_lora_is_an_error():
    with pytest.raises(ValueError, match="apply_lora"):
        merge_lora(gpt())


def test_lora_state_dict_round_trip():
    model = apply_lora(gpt(), r=2)
    randomize_b(model)
    state = lora_state_dict(model)
    assert len(state) == 16 and all(k.endswith((".A", ".B")) for k in state)
    assert sum(v.numel() for v in state.values()) == LORA_PARAMS
    other = apply_lora(gpt(), r=2)  # same base weights, fresh adapters
    load_lora_state_dict(other, state)
    x = ids()
    torch.testing.assert_close(other(x)[0], model(x)[0], atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="r"):
        load_lora_state_dict(apply_lora(gpt(), r=4), state)


def test_memory_comparison_matches_the_real_models():
    model = gpt()
    table = compare_memory(model, r=2)
    assert table["full"] == training_memory(model)  # everything trainable
    assert table["full"]["total"] == GPT_PARAMS * 4 * 4  # fp32 weights + grads + 2 Adam moments
    lora = apply_lora(copy.deepcopy(model), r=2)
    assert table["lora"] == training_memory(lora)
    assert table["lora"]["trainable"] == LORA_PARAMS
    assert table["lora"]["total"] == (GPT_PARAMS + LORA_PARAMS) * 4 + 3 * LORA_PARAMS * 4
