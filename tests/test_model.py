"""gptcourse.model: configuration, parameter accounting, initialisation, attention, the
forward pass and its errors, and the KV cache.

Small configurations, fixed seeds, fp32 on the CPU. Tolerances are stated in each test:
1e-5 (absolute) where two code paths compute the same function in a different order.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gptcourse.model import (
    GPT,
    PRESETS,
    CausalSelfAttention,
    GPTConfig,
    KVCache,
    apply_rope,
    rope_cache,
)

ATOL = 1e-5  # fp32, same maths in a different order (sdpa vs naive, cached vs full)


def small_config(**overrides) -> GPTConfig:
    base = dict(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=16)
    base.update(overrides)
    return GPTConfig(**base)


def small_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(small_config(**overrides)).eval()


def random_ids(shape, vocab: int = 37, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------
# GPTConfig
# --------------------------------------------------------------------------------------


def test_config_n_embd_not_divisible_by_n_head():
    with pytest.raises(ValueError, match="divisible by n_head"):
        GPTConfig(n_embd=100, n_head=12)


@pytest.mark.parametrize("field", ["vocab_size", "block_size", "n_layer", "n_head", "n_embd"])
@pytest.mark.parametrize("value", [0, -4])
def test_config_non_positive_sizes(field, value):
    with pytest.raises(ValueError, match=f"{field} must be >= 1"):
        GPTConfig(**{field: value})


@pytest.mark.parametrize("field", ["vocab_size", "block_size", "n_layer", "n_head", "n_embd"])
@pytest.mark.parametrize("value", [64.0, "64", True])
def test_config_non_int_sizes(field, value):
    with pytest.raises(TypeError, match=f"{field} must be an int"):
        GPTConfig(**{field: value})


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5])
def test_config_bad_dropout(dropout):
    with pytest.raises(ValueError, match="dropout"):
        GPTConfig(dropout=dropout)


def test_config_unknown_pos_encoding():
    with pytest.raises(ValueError, match="pos_encoding"):
        GPTConfig(pos_encoding="alibi")


def test_config_rope_needs_even_head_dim():
    with pytest.raises(ValueError, match="even head size"):
        GPTConfig(n_embd=6, n_head=2, pos_encoding="rope")  # head_dim 3


def test_config_is_frozen():
    cfg = small_config()
    with pytest.raises(AttributeError):
        cfg.n_layer = 3


@pytest.mark.parametrize("name", ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "tiny", "mini", "small"])
def test_presets_exist(name):
    cfg = GPTConfig.preset(name)
    assert cfg == PRESETS[name]
    assert cfg.n_embd % cfg.n_head == 0


@pytest.mark.parametrize(
    "name, shape",
    [("gpt2", (12, 12, 768)), ("gpt2-medium", (24, 16, 1024)), ("gpt2-large", (36, 20, 1280)),
     ("gpt2-xl", (48, 25, 1600))],
)
def test_gpt2_presets_match_openai(name, shape):
    cfg = GPTConfig.preset(name)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd) == shape
    assert (cfg.vocab_size, cfg.block_size) == (50257, 1024)


def test_preset_overrides():
    cfg = GPTConfig.preset("tiny", vocab_size=65, dropout=0.1)
    assert cfg.vocab_size == 65 and cfg.dropout == 0.1 and cfg.n_layer == PRESETS["tiny"].n_layer


def test_preset_overrides_are_validated():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig.preset("tiny", n_head=3)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'gpt3'.*gpt2"):
        GPTConfig.preset("gpt3")


def test_unknown_override_field():
    with pytest.raises(ValueError, match="unknown GPTConfig fields.*n_heads"):
        GPTConfig.preset("tiny", n_heads=4)


def test_gpt_needs_a_config():
    with pytest.raises(TypeError, match="GPTConfig"):
        GPT({"n_layer": 2})


def test_unknown_attn_impl():
    with pytest.raises(ValueError, match="attn_impl"):
        CausalSelfAttention(small_config(), attn_impl="flash")


# --------------------------------------------------------------------------------------
# Parameter and FLOP accounting (exact integers)
# --------------------------------------------------------------------------------------


def meta_model(name: str, **overrides) -> GPT:
    with torch.device("meta"):  # no memory, no init cost
        return GPT(GPTConfig.preset(name, **overrides))


def test_gpt2_124m_parameter_count():
    assert meta_model("gpt2").num_params() == 124_439_808  # tied lm_head counted once


def test_gpt2_124m_non_embedding_count():
    # 124,439,808 - wpe (1024 * 768 = 786,432)
    assert meta_model("gpt2").num_params(non_embedding=True) == 123_653_376


def test_gpt2_medium_parameter_count():
    # the figure of transformers.GPT2LMHeadModel(GPT2Config(n_layer=24, n_head=16, n_embd=1024))
    assert meta_model("gpt2-medium").num_params() == 354_823_168


def test_untied_model_counts_head_separately():
    cfg = small_config(tie_weights=False)
    model = GPT(cfg)
    tied = GPT(small_config())
    V, C, T = cfg.vocab_size, cfg.n_embd, cfg.block_size
    assert model.num_params() == tied.num_params() + V * C
    # non-embedding leaves out wpe and, untied, wte too (the head stays)
    assert model.num_params(non_embedding=True) == model.num_params() - V * C - T * C


def test_flops_per_token_formula():
    model = meta_model("gpt2")
    cfg = model.config
    N = 123_653_376
    assert model.flops_per_token() == 6 * N + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * 1024
    assert model.flops_per_token(seq_len=256) == 6 * N + 12 * 12 * 12 * 64 * 256


def test_estimate_mfu_with_given_peak():
    model = meta_model("gpt2")
    mfu = model.estimate_mfu(tokens_per_second=1000.0, peak_flops=1e15)
    assert mfu == pytest.approx(model.flops_per_token() * 1000.0 / 1e15, rel=1e-12)


# --------------------------------------------------------------------------------------
# Initialisation
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def init_model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=512, block_size=64, n_layer=4, n_head=4, n_embd=128))


def test_init_weight_std(init_model):
    # >= 16k samples each: the sample std is within ~1% of the true one; tolerance 5%
    for name, p in init_model.named_parameters():
        if name.endswith("weight") and p.dim() == 2 and "c_proj" not in name:
            assert p.std().item() == pytest.approx(0.02, rel=0.05), name


def test_init_residual_projections_scaled(init_model):
    expected = 0.02 / math.sqrt(2 * init_model.config.n_layer)
    names = [n for n, _ in init_model.named_parameters() if n.endswith("c_proj.weight")]
    assert len(names) == 2 * init_model.config.n_layer  # attn and mlp in every block
    for name, p in init_model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert p.std().item() == pytest.approx(expected, rel=0.05), name


def test_init_biases_zero_and_layernorm_identity(init_model):
    for name, p in init_model.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        elif ".ln_" in name or name.startswith("transformer.ln_f"):
            assert torch.all(p == 1), name


def test_lm_head_tied_to_wte(init_model):
    assert init_model.lm_head.weight is init_model.transformer.wte.weight
    assert init_model.lm_head.weight.data_ptr() == init_model.transformer.wte.weight.data_ptr()


def test_untied_head_is_separate():
    model = GPT(small_config(tie_weights=False))
    assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()


def test_initial_loss_is_log_vocab(init_model):
    # random targets: a fresh model predicts ~uniformly, loss ~ ln(512) = 6.238; tolerance 0.1
    idx, targets = random_ids((8, 64), 512, seed=1), random_ids((8, 64), 512, seed=2)
    with torch.no_grad():
        _, loss = init_model.eval()(idx, targets)
    assert loss.item() == pytest.approx(math.log(512), abs=0.1)


# --------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------


def attention_pair(dropout: float = 0.0, pos_encoding: str = "learned"):
    cfg = small_config(n_embd=32, n_head=4, dropout=dropout, pos_encoding=pos_encoding)
    torch.manual_seed(0)
    sdpa = CausalSelfAttention(cfg, "sdpa")
    naive = CausalSelfAttention(cfg, "naive")
    naive.load_state_dict(sdpa.state_dict())
    return sdpa.eval(), naive.eval()


def test_sdpa_equals_naive():
    sdpa, naive = attention_pair()
    x = torch.randn(3, 11, 32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(sdpa(x), naive(x), atol=ATOL, rtol=0)


def test_sdpa_equals_naive_in_eval_with_dropout_configured():
    # dropout=0.3 in the config, but eval mode switches it off on both paths
    sdpa, naive = attention_pair(dropout=0.3)
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(sdpa(x), naive(x), atol=ATOL, rtol=0)


def test_sdpa_equals_naive_with_rope():
    sdpa, naive = attention_pair(pos_encoding="rope")
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(3))
    rope = rope_cache(8, torch.arange(9))
    torch.testing.assert_close(sdpa(x, rope=rope), naive(x, rope=rope), atol=ATOL, rtol=0)


def test_sdpa_equals_naive_with_cache_chunk():
    # several new queries after a cached past: the explicit-mask branch of sdpa
    sdpa, naive = attention_pair()
    cfg = sdpa.config
    x = torch.randn(2, 10, 32, generator=torch.Generator().manual_seed(4))
    outs = []
    for attn in (sdpa, naive):
        cache = KVCache(cfg, batch_size=2)
        first = attn(x[:, :6], cache=cache)
        cache.length += 6
        outs.append(torch.cat([first, attn(x[:, 6:], cache=cache)], dim=1))
    torch.testing.assert_close(outs[0], outs[1], atol=ATOL, rtol=0)
    torch.testing.assert_close(outs[0], sdpa(x), atol=ATOL, rtol=0)


def test_naive_weights_are_causal_and_normalised():
    _, naive = attention_pair()
    x = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(5))
    y, w = naive(x, return_weights=True)
    assert y.shape == (2, 7, 32) and w.shape == (2, 4, 7, 7)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 7), atol=1e-6, rtol=0)
    above = torch.ones(7, 7, dtype=torch.bool).triu(1)
    assert torch.all(w[..., above] == 0)
    assert torch.all(w[..., ~above] > 0)


def test_return_weights_with_sdpa_impl():
    sdpa, naive = attention_pair()
    x = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(6))
    y1, w1 = sdpa(x, return_weights=True)
    y2, w2 = naive(x, return_weights=True)
    torch.testing.assert_close(w1, w2, atol=0, rtol=0)
    torch.testing.assert_close(y1, y2, atol=ATOL, rtol=0)


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
def test_causality_future_tokens_do_not_change_past_logits(pos_encoding):
    model = small_model(pos_encoding=pos_encoding)
    idx = random_ids((1, 12))
    changed = idx.clone()
    changed[0, 8:] = (changed[0, 8:] + 5) % 37
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8], atol=ATOL, rtol=0)
    assert not torch.allclose(a[:, 8:], b[:, 8:], atol=1e-3)


def test_whole_model_naive_equals_sdpa():
    torch.manual_seed(0)
    a = GPT(small_config(), attn_impl="sdpa").eval()
    b = GPT(small_config(), attn_impl="naive").eval()
    b.load_state_dict(a.state_dict())
    idx = random_ids((2, 16))
    with torch.no_grad():
        torch.testing.assert_close(a(idx)[0], b(idx)[0], atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------------
# Rotary positions
# --------------------------------------------------------------------------------------


def test_rope_preserves_norm():
    x = torch.randn(2, 3, 10, 8, generator=torch.Generator().manual_seed(7))
    cos, sin = rope_cache(8, torch.arange(10))
    torch.testing.assert_close(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)


def test_rope_position_zero_is_identity():
    x = torch.randn(1, 1, 1, 8, generator=torch.Generator().manual_seed(8))
    cos, sin = rope_cache(8, torch.zeros(1, dtype=torch.long))
    torch.testing.assert_close(apply_rope(x, cos, sin), x, atol=0, rtol=0)


def test_rope_scores_depend_only_on_offset():
    g = torch.Generator().manual_seed(9)
    q, k = torch.randn(1, 1, 1, 8, generator=g), torch.randn(1, 1, 1, 8, generator=g)

    def score(m, n):
        cm, sm = rope_cache(8, torch.tensor([m]))
        cn, sn = rope_cache(8, torch.tensor([n]))
        return (apply_rope(q, cm, sm) * apply_rope(k, cn, sn)).sum().item()

    assert score(7, 3) == pytest.approx(score(104, 100), abs=1e-4)
    assert score(7, 3) != pytest.approx(score(7, 4), abs=1e-4)


def test_rope_model_has_no_wpe():
    model = small_model(pos_encoding="rope")
    assert "wpe" not in model.transformer
    assert "wpe" in small_model().transformer


# --------------------------------------------------------------------------------------
# Forward pass and its errors
# --------------------------------------------------------------------------------------


def test_forward_shapes_and_loss_none():
    model = small_model()
    logits, loss = model(random_ids((3, 10)))
    assert logits.shape == (3, 10, 37) and loss is None


def test_loss_equals_cross_entropy():
    model = small_model()
    idx, targets = random_ids((2, 16), seed=3), random_ids((2, 16), seed=4)
    logits, loss = model(idx, targets)
    torch.testing.assert_close(loss, F.cross_entropy(logits.view(-1, 37), targets.view(-1)), atol=1e-6, rtol=0)


def test_targets_minus_100_are_ignored():
    model = small_model()
    idx, targets = random_ids((2, 16), seed=3), random_ids((2, 16), seed=4)
    masked = targets.clone()
    masked[:, :10] = -100
    logits, loss = model(idx, masked)
    expected = F.cross_entropy(logits[:, 10:].reshape(-1, 37), targets[:, 10:].reshape(-1))
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)


def test_input_longer_than_block_size():
    model = small_model()
    with pytest.raises(ValueError, match=r"block_size is 16.*17 tokens.*crop"):
        model(random_ids((1, 17)))


def test_1d_input_hints_batch_dimension():
    with pytest.raises(ValueError, match=r"\(batch, time\).*idx\[None\]"):
        small_model()(torch.arange(5))


def test_float_input_rejected():
    with pytest.raises(TypeError, match="integer token ids.*long"):
        small_model()(torch.zeros(1, 5))


def test_non_tensor_input_rejected():
    with pytest.raises(TypeError, match="torch.Tensor"):
        small_model()([[1, 2, 3]])


def test_empty_input_rejected():
    with pytest.raises(ValueError, match="no tokens"):
        small_model()(torch.zeros(1, 0, dtype=torch.long))


def test_targets_shape_mismatch():
    with pytest.raises(ValueError, match=r"targets must have the same shape as idx \(2, 8\), got \(2, 7\)"):
        small_model()(random_ids((2, 8)), random_ids((2, 7)))


def test_int32_ids_accepted():
    model = small_model()
    idx = random_ids((1, 8))
    torch.testing.assert_close(model(idx.int())[0], model(idx)[0], atol=0, rtol=0)


def test_dropout_active_only_in_training():
    model = small_model(dropout=0.5)
    idx = random_ids((1, 8))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(idx)[0], model(idx)[0], atol=0, rtol=0)
        torch.manual_seed(0)
        train_out = model.train()(idx)[0]
        eval_out = model.eval()(idx)[0]
    assert not torch.allclose(train_out, eval_out, atol=1e-3)


def test_no_bias_model_runs_and_backprops():
    model = small_model(bias=False).train()
    assert not any(n.endswith("bias") for n, _ in model.named_parameters())
    _, loss = model(random_ids((2, 8)), random_ids((2, 8), seed=2))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


# --------------------------------------------------------------------------------------
# KV cache
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
def test_incremental_forward_matches_full(pos_encoding):
    # prefill 5, a chunk of 4, three single tokens, a chunk of 4 = 16 = block_size
    model = small_model(pos_encoding=pos_encoding)
    idx = random_ids((2, 16))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache(batch_size=2)
        pieces, start = [], 0
        for size in (5, 4, 1, 1, 1, 4):
            logits, _ = model(idx[:, start:start + size], cache=cache)
            pieces.append(logits)
            start += size
            assert cache.length == start
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=ATOL, rtol=0)


def test_cache_beyond_block_size_rejected():
    model = small_model()
    cache = model.new_cache(batch_size=1)
    with torch.no_grad():
        model(random_ids((1, 12)), cache=cache)
        with pytest.raises(ValueError, match="block_size is 16.*after 12 cached positions"):
            model(random_ids((1, 5)), cache=cache)


def test_kv_cache_overflow():
    cache = KVCache(small_config(), batch_size=1, max_len=4)
    k = torch.zeros(1, 2, 5, 8)
    with pytest.raises(ValueError, match="holds 4 positions; 5 were needed"):
        cache.update(0, k, k)


def test_new_cache_shapes():
    model = small_model()
    cache = model.new_cache(batch_size=3, max_len=10)
    assert cache.length == 0 and len(cache.k) == len(cache.v) == 2
    assert cache.k[0].shape == (3, 2, 10, 8) and cache.k[0].dtype == torch.float32


@pytest.mark.parametrize(("field", "value", "error"), [
    ("layer_norm_eps", 0.0, ValueError), ("rope_base", -1.0, ValueError),
    ("dropout", "0.1", TypeError), ("bias", 1, TypeError), ("tie_weights", "yes", TypeError),
])
def test_config_rejects_bad_numbers_and_flags(field, value, error):
    with pytest.raises(error, match=field):
        small_config(**{field: value})


def test_forward_rejects_ids_outside_the_vocabulary():
    model = small_model()
    idx = random_ids((1, 4))
    idx[0, 2] = model.config.vocab_size
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(idx)


def test_loss_ignores_minus_100_and_is_zero_when_every_target_is():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=16))
    x = torch.randint(50, (2, 8))
    y = torch.randint(50, (2, 8))
    y[0, :5] = -100
    logits, loss = model(x, y)
    keep = y != -100
    torch.testing.assert_close(loss, F.cross_entropy(logits[keep], y[keep]), rtol=1e-6, atol=1e-6)
    _, empty = model(x, torch.full_like(y, -100))
    empty.backward()
    assert empty.item() == 0.0
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.parameters())


def test_hidden_states_are_what_the_head_reads():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=16)).eval()
    x = torch.randint(50, (2, 8))
    h = model.hidden_states(x)
    assert h.shape == (2, 8, 16)
    torch.testing.assert_close(model.lm_head(h), model(x)[0], rtol=0, atol=0)
