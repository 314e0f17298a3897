"""gptcourse.generate: greedy and sampled decoding, the KV cache path, stop tokens and
strings, streaming, and the logits filters.

Small random models, fixed seeds; token sequences are compared exactly.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from gptcourse.generate import filter_logits, generate, sampling_probs, stream
from gptcourse.model import GPT, GPTConfig
from gptcourse.tokenizer import CharTokenizer

VOCAB = 32
ALPHABET = "abcdefghijklmnopqrstuvwxyz .,!?\n"  # 32 characters -> ids 0..31
assert len(set(ALPHABET)) == VOCAB


def make_model(pos_encoding: str = "learned", block_size: int = 16, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=VOCAB, block_size=block_size, n_layer=2, n_head=2, n_embd=32,
                    pos_encoding=pos_encoding, tie_weights=False)
    model = GPT(cfg).eval()
    # an untied head with larger weights than the 0.02 init: logits of std ~1, so sampling is
    # far from uniform, greedy has no near-ties and does not just repeat the last token
    with torch.no_grad():
        model.lm_head.weight.mul_(10)
    return model


@pytest.fixture(scope="module")
def model():
    return make_model()


def prompt(B: int = 1, T: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def greedy_reference(model: GPT, idx: torch.Tensor, n: int) -> torch.Tensor:
    """Full recompute, argmax, context cropped to block_size: the textbook loop."""
    seq = idx.clone()
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(seq[:, -model.config.block_size:])
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq


# --------------------------------------------------------------------------------------
# Greedy decoding and the cache
# --------------------------------------------------------------------------------------


def test_greedy_matches_reference_loop(model):
    idx = prompt()
    out = generate(model, idx, 8, temperature=0, use_cache=False)
    assert torch.equal(out, greedy_reference(model, idx, 8))


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
def test_greedy_with_cache_equals_without(pos_encoding):
    m = make_model(pos_encoding)
    idx = prompt(B=2)
    a = generate(m, idx, 8, temperature=0, use_cache=True)
    b = generate(m, idx, 8, temperature=0, use_cache=False)
    assert torch.equal(a, b)


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
def test_greedy_with_cache_past_block_size(pos_encoding):
    # 5 + 30 tokens > block_size 16: the context is cropped, the cache rebuilt
    m = make_model(pos_encoding)
    idx = prompt()
    a = generate(m, idx, 30, temperature=0, use_cache=True)
    b = generate(m, idx, 30, temperature=0, use_cache=False)
    assert a.shape == (1, 35)
    assert torch.equal(a, b)
    assert torch.equal(a, greedy_reference(m, idx, 30))


def test_prompt_longer_than_block_size(model):
    idx = prompt(T=20)
    a = generate(model, idx, 4, temperature=0, use_cache=True)
    assert torch.equal(a[:, :20], idx)
    assert torch.equal(a, greedy_reference(model, idx, 4))


@pytest.mark.parametrize("temperature", [0, 0.0, -1.0])
def test_non_positive_temperature_is_greedy(model, temperature):
    idx = prompt()
    out = generate(model, idx, 8, temperature=temperature, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, greedy_reference(model, idx, 8))


def test_top_k_1_is_greedy(model):
    idx = prompt()
    out = generate(model, idx, 8, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, greedy_reference(model, idx, 8))


# --------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------


def test_seeded_sampling_is_reproducible(model):
    idx = prompt()
    a = generate(model, idx, 20, temperature=1.0, generator=torch.Generator().manual_seed(42))
    b = generate(model, idx, 20, temperature=1.0, generator=torch.Generator().manual_seed(42))
    c = generate(model, idx, 20, temperature=1.0, generator=torch.Generator().manual_seed(43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
def test_seeded_sampling_same_with_and_without_cache(pos_encoding):
    m = make_model(pos_encoding)
    idx = prompt(B=2)
    kw = dict(temperature=0.8, top_k=10, top_p=0.95)
    a = generate(m, idx, 25, use_cache=True, generator=torch.Generator().manual_seed(7), **kw)
    b = generate(m, idx, 25, use_cache=False, generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(a, b)


def test_sampling_only_from_top_k(model):
    # with top_k=3 every sampled token is among the 3 most likely at that step
    idx = prompt()
    out = generate(model, idx, 11, temperature=2.0, top_k=3, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits, _ = model(out[:, :-1])
    for t in range(idx.size(1) - 1, out.size(1) - 1):
        top3 = logits[0, t].topk(3).indices.tolist()
        assert out[0, t + 1].item() in top3


# --------------------------------------------------------------------------------------
# Argument validation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(top_k=0), dict(top_k=-2), dict(top_p=0.0), dict(top_p=1.5), dict(top_p=-0.1),
        dict(top_p=float("nan")), dict(temperature=float("nan")),
    ],
    ids=lambda kw: "-".join(f"{k}={v!r}" for k, v in kw.items()),
)
def test_invalid_sampling_values(model, kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        generate(model, prompt(), 3, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [dict(top_k=2.5), dict(top_k=True), dict(top_p="0.9"), dict(temperature="hot"),
     dict(temperature=None), dict(temperature=True)],
    ids=lambda kw: "-".join(f"{k}={v!r}" for k, v in kw.items()),
)
def test_sampling_arguments_of_the_wrong_type(model, kwargs):
    with pytest.raises(TypeError, match=next(iter(kwargs))):
        generate(model, prompt(), 3, **kwargs)


def test_invalid_max_new_tokens(model):
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0, got -1"):
        generate(model, prompt(), -1)


@pytest.mark.parametrize("n", [2.0, True, "3"])
def test_max_new_tokens_of_the_wrong_type(model, n):
    with pytest.raises(TypeError, match="max_new_tokens must be an int"):
        generate(model, prompt(), n)


def test_max_new_tokens_zero_returns_prompt(model):
    idx = prompt()
    assert torch.equal(generate(model, idx, 0), idx)


@pytest.mark.parametrize("bad", [[VOCAB], [-1]])
def test_prompt_ids_out_of_vocab(model, bad):
    with pytest.raises(ValueError, match=f"0..{VOCAB - 1}"):
        generate(model, bad, 2)


def test_empty_prompt_rejected(model):
    with pytest.raises(ValueError, match="time >= 1"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 2)


def test_list_and_1d_prompts(model):
    idx = prompt()
    expected = generate(model, idx, 4, temperature=0)
    assert torch.equal(generate(model, idx[0], 4, temperature=0), expected)
    assert torch.equal(generate(model, idx[0].tolist(), 4, temperature=0), expected)


def test_stop_strings_need_tokenizer(model):
    with pytest.raises(ValueError, match="tokenizer"):
        generate(model, prompt(), 3, stop="\n")


def test_stop_of_wrong_type(model):
    with pytest.raises(TypeError, match="stop"):
        generate(model, prompt(), 3, stop=[1.5])


# --------------------------------------------------------------------------------------
# Stopping, batches, streaming, training mode
# --------------------------------------------------------------------------------------


def test_stop_token_ends_generation(model):
    idx = prompt()
    full = generate(model, idx, 12, temperature=0)
    new = full[0, 5:].tolist()
    stop_id = new[3]
    first = new.index(stop_id)  # generation ends at the first occurrence
    out = generate(model, idx, 12, temperature=0, stop=stop_id)
    assert out[0, -1].item() == stop_id
    assert out[0, 5:].tolist() == new[:first + 1]


def test_stop_string_with_tokenizer(model):
    tok = CharTokenizer(ALPHABET)
    assert tok.vocab_size == VOCAB
    idx = prompt()
    full = generate(model, idx, 12, temperature=0)
    text = tok.decode(full[0, 5:].tolist())
    stop = text[4:6]  # a two-character string in the generated text
    cut = text.index(stop) + len(stop)
    out = generate(model, idx, 12, temperature=0, stop=stop, tokenizer=tok)
    assert tok.decode(out[0, 5:].tolist()) == text[:cut]
    assert tok.decode(out[0, 5:].tolist()).endswith(stop)


def test_stop_string_in_prompt_is_ignored(model):
    # only generated text is searched for stop strings
    tok = CharTokenizer(ALPHABET)
    idx = prompt()
    full = generate(model, idx, 6, temperature=0)
    generated = tok.decode(full[0, 5:].tolist())
    stop = next(c for c in tok.decode(idx[0].tolist()) if c not in generated)
    out = generate(model, idx, 6, temperature=0, stop=stop, tokenizer=tok)
    assert torch.equal(out, full)


class Scripted(nn.Module):
    """A stand-in model whose greedy continuation of a ``prompt_len``-token prompt is
    ``script`` (the next token depends only on how many tokens were generated)."""

    def __init__(self, script: list[int], vocab: int, prompt_len: int) -> None:
        super().__init__()
        self.config = GPTConfig(vocab_size=vocab, block_size=256, n_layer=1, n_head=1, n_embd=2)
        self.anchor = nn.Parameter(torch.zeros(1))  # generate() reads the device from a parameter
        self.script, self.prompt_len = script, prompt_len

    def forward(self, idx, targets=None, cache=None):
        B, T = idx.shape
        logits = torch.zeros(B, T, self.config.vocab_size)
        logits[:, -1, self.script[T - self.prompt_len]] = 10.0
        return logits, None


class WordTokenizer:
    """Each id is a fixed piece of text (several characters)."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    def decode(self, ids) -> str:
        return "".join(self.pieces[i] for i in ids)


class ByteTokenizer:
    """Byte-level: one id per UTF-8 byte, as GPT-2's BPE does for rare characters."""

    def decode(self, ids) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def test_stop_string_spanning_multi_character_tokens():
    pieces = ["<s>", "hello", " wor", "ld!", " more", " text"]
    tok = WordTokenizer(pieces)
    model = Scripted([1, 2, 3, 4, 5, 4, 5], vocab=len(pieces), prompt_len=1)
    out = generate(model, [0], 7, temperature=0, use_cache=False, stop="world", tokenizer=tok)
    assert tok.decode(out[0].tolist()) == "<s>hello world!"  # stops after the token completing it


def test_stop_string_inside_one_token():
    pieces = ["<s>", "a", "xxENDxx", "b"]
    tok = WordTokenizer(pieces)
    model = Scripted([1, 2, 3, 3], vocab=len(pieces), prompt_len=1)
    out = generate(model, [0], 4, temperature=0, use_cache=False, stop="END", tokenizer=tok)
    assert out[0].tolist() == [0, 1, 2]


def test_stop_string_with_a_character_split_over_byte_tokens():
    script = list("ab \u00e9 cd".encode())  # the e-acute is two bytes, c3 a9
    model = Scripted(script, vocab=256, prompt_len=1)
    out = generate(model, [ord(">")], len(script), temperature=0, use_cache=False,
                   stop="\u00e9", tokenizer=ByteTokenizer())
    assert ByteTokenizer().decode(out[0, 1:].tolist()) == "ab \u00e9"


def test_batch_generation_shape_and_rows_independent(model):
    idx = prompt(B=3, T=6)
    out = generate(model, idx, 7, temperature=0)
    assert out.shape == (3, 13)
    assert torch.equal(out[:, :6], idx)
    for b in range(3):  # each row equals generating that row alone
        assert torch.equal(out[b:b + 1], generate(model, idx[b:b + 1], 7, temperature=0))


def test_batch_stopped_row_repeats_stop_token(model):
    idx = prompt(B=2, T=6)
    full = generate(model, idx, 10, temperature=0)
    row0, row1 = full[0, 6:].tolist(), full[1, 6:].tolist()
    # a token row 0 generates and row 1 never does: row 0 stops there, row 1 runs on
    j = next(j for j, t in enumerate(row0) if t not in row1 and t not in row0[:j])
    assert j < 9
    out = generate(model, idx, 10, temperature=0, stop=row0[j])
    assert out.shape == (2, 16)
    assert out[0, 6:].tolist() == row0[:j + 1] + [row0[j]] * (9 - j)
    assert torch.equal(out[1], full[1])


@pytest.mark.parametrize("training", [True, False])
def test_training_mode_restored(training):
    m = make_model()
    m.train(training)
    generate(m, prompt(), 3)
    assert m.training is training
    assert all(mod.training is training for mod in m.modules())


def test_stream_yields_same_tokens_as_generate(model):
    idx = prompt(B=2)
    kw = dict(temperature=0.9, top_k=8)
    out = generate(model, idx, 10, generator=torch.Generator().manual_seed(5), **kw)
    steps = list(stream(model, idx, 10, generator=torch.Generator().manual_seed(5), **kw))
    assert len(steps) == 10 and all(s.shape == (2,) for s in steps)
    assert torch.equal(torch.stack(steps, dim=1), out[:, 5:])


def test_generate_does_not_track_gradients(model):
    out = generate(model, prompt(), 3)
    assert not out.requires_grad and out.dtype == torch.long


# --------------------------------------------------------------------------------------
# filter_logits
# --------------------------------------------------------------------------------------


def test_top_k_keeps_exactly_k():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))  # no ties
    out = filter_logits(logits, top_k=7)
    kept = torch.isfinite(out)
    assert torch.all(kept.sum(-1) == 7)
    assert torch.equal(kept, torch.zeros_like(kept).scatter(-1, logits.topk(7).indices, True))
    assert torch.equal(out[kept], logits[kept])  # kept logits are unchanged


def test_top_k_larger_than_vocab_keeps_all():
    logits = torch.randn(2, 5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(filter_logits(logits, top_k=100), logits)


@pytest.mark.parametrize(
    "top_p, kept",
    [
        (0.40, [1]),         # 0.5 alone reaches 0.4
        (0.75, [1, 3]),      # 0.5 < 0.75; 0.5 + 0.3 = 0.8 >= 0.75
        (0.85, [1, 3, 0]),   # 0.8 < 0.85; + 0.15 = 0.95
        (0.97, [1, 3, 0, 2]),
        (1.00, [1, 3, 0, 2]),
    ],
)
def test_top_p_keeps_smallest_set_reaching_p(top_p, kept):
    # probabilities 0.15, 0.5, 0.05, 0.3 (deliberately not sorted)
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    out = filter_logits(probs.log(), top_p=top_p)
    assert sorted(torch.isfinite(out[0]).nonzero().flatten().tolist()) == sorted(kept)


def test_top_p_per_row():
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3], [0.9, 0.04, 0.03, 0.03]])
    out = filter_logits(probs.log(), top_p=0.7)
    assert torch.isfinite(out).tolist() == [[False, True, False, True], [True, False, False, False]]


def test_top_k_then_top_p():
    # top-k 3 leaves 0.5, 0.3, 0.15 -> renormalised 0.526, 0.316, 0.158; top-p 0.8 keeps two
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    out = filter_logits(probs.log(), top_k=3, top_p=0.8)
    assert torch.isfinite(out[0]).tolist() == [False, True, False, True]
    assert out[0, 1].item() == pytest.approx(math.log(0.5), abs=1e-6)


def test_filter_logits_none_is_identity():
    logits = torch.randn(2, 9, generator=torch.Generator().manual_seed(2))
    assert torch.equal(filter_logits(logits), logits)


def test_stream_checks_its_arguments_when_called_not_when_iterated():
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(ValueError, match="max_new_tokens"):
        stream(model, [1, 2], -1)


# --------------------------------------------------------------------------------------
# Extreme values (issue 12): never NaN, never a crash. A tiny temperature is greedy, a huge
# one uniform over the kept tokens, +inf logits share the probability, top-p keeps >= 1.
# --------------------------------------------------------------------------------------

LOGITS = torch.tensor([[1.0, 3.0, -2.0, 2.5, 0.0]])  # unique argmax: id 1
UNIFORM5 = torch.full((1, 5), 0.2)


class FixedLogits(nn.Module):
    """A stand-in model whose next-token logits are always ``logits`` (B, V)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.config = GPTConfig(vocab_size=logits.size(-1), block_size=8, n_layer=1, n_head=1, n_embd=2)
        self.anchor = nn.Parameter(torch.zeros(1))  # generate() reads the device from a parameter
        self.logits = logits

    def forward(self, idx, targets=None, cache=None):
        return self.logits[:, None, :].expand(idx.size(0), idx.size(1), -1), None


def draws(logits: torch.Tensor, n: int = 30, seed: int = 0, **kw) -> torch.Tensor:
    """``n`` independent samples from one step's distribution over ``logits``: (B, n)."""
    out = generate(FixedLogits(logits), torch.zeros(logits.size(0), 1, dtype=torch.long), n,
                   use_cache=False, generator=torch.Generator().manual_seed(seed), **kw)
    return out[:, 1:]


@pytest.mark.parametrize("temperature", [1e-30, 1e-38, 1e-40, 1e-45, 5e-324])
def test_tiny_temperature_samples_the_argmax(temperature):
    assert draws(LOGITS, temperature=temperature).unique().tolist() == [1]


@pytest.mark.parametrize("temperature", [1e-45, 5e-324])
def test_tiny_temperature_generates_like_greedy(model, temperature):
    idx = prompt()
    out = generate(model, idx, 8, temperature=temperature, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, greedy_reference(model, idx, 8))


def test_tiny_temperature_with_huge_logits_samples_the_argmax():
    # 1e30 * logits / 1e-10 overflows float32 although neither value is extreme alone
    assert draws(LOGITS * 1e30, temperature=1e-10).unique().tolist() == [1]


def test_tiny_temperature_shares_exact_ties():
    probs = sampling_probs(torch.tensor([[5.0, 1.0, 5.0, 0.0]]), 1e-45, None, None)
    assert probs.tolist() == [[0.5, 0.0, 0.5, 0.0]]


@pytest.mark.parametrize("temperature", [1e-45, 5e-324])
def test_tiny_temperature_on_equal_logits_is_uniform(temperature):
    assert torch.equal(sampling_probs(torch.zeros(1, 5), temperature, None, None), UNIFORM5)


@pytest.mark.parametrize("temperature", [1e31, 1e300, math.inf])
def test_huge_temperature_is_uniform(temperature):
    torch.testing.assert_close(sampling_probs(LOGITS, temperature, None, None), UNIFORM5,
                               rtol=0, atol=1e-7)


def test_huge_temperature_keeps_the_top_k():
    probs = sampling_probs(LOGITS, 1e300, 2, None)
    torch.testing.assert_close(probs, torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0]]), rtol=0, atol=1e-7)


def test_huge_temperature_keeps_minus_inf_logits_impossible():
    # -inf / inf is NaN in float32
    logits = torch.tensor([[0.0, float("-inf"), 1.0, float("-inf")]])
    probs = sampling_probs(logits, 1e300, None, None)
    torch.testing.assert_close(probs, torch.tensor([[0.5, 0.0, 0.5, 0.0]]), rtol=0, atol=1e-7)


@pytest.mark.parametrize("temperature", [1e300, 10**400], ids=["1e300", "10**400"])
def test_huge_temperature_generates_valid_ids(model, temperature):
    out = generate(model, prompt(), 8, temperature=temperature, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 13) and 0 <= out.min() and out.max() < VOCAB


def test_plus_inf_logits_share_the_probability():
    logits = torch.tensor([[math.inf, 0.0, math.inf, -math.inf]])
    assert sampling_probs(logits, 1.0, None, None).tolist() == [[0.5, 0.0, 0.5, 0.0]]


def test_all_minus_inf_logits_are_uniform():
    assert torch.equal(sampling_probs(torch.full((1, 5), -math.inf), 1.0, None, None), UNIFORM5)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_largest_float32_logits_sample_the_argmax(temperature):
    logits = torch.tensor([[3e38, -3e38, 1e38, 3.4e38]])  # / 0.5 overflows
    assert draws(logits, temperature=temperature).unique().tolist() == [3]


def test_extreme_row_leaves_the_other_rows_bit_identical():
    logits = torch.tensor([[1.0, 3.0, -2.0, 2.5], [math.inf, 0.0, 1.0, 2.0]])
    probs = sampling_probs(logits, 0.7, None, 0.9)
    assert torch.equal(probs[0], torch.softmax(filter_logits(logits[:1] / 0.7, None, 0.9), -1)[0])
    assert probs[1].tolist() == [1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, None, None), (0.7, 10, 0.9), (1.3, None, 0.5),
                                                       (1e-3, 3, None), (1e3, None, 0.95)])
def test_ordinary_values_are_the_plain_float32_computation(temperature, top_k, top_p):
    logits = 3 * torch.randn(4, 100, generator=torch.Generator().manual_seed(0))
    expected = torch.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
    assert torch.equal(sampling_probs(logits, temperature, top_k, top_p), expected)


def test_nan_logits_raise_a_clear_error():
    with pytest.raises(ValueError, match="NaN"):
        draws(torch.tensor([[0.0, math.nan, 1.0]]), temperature=1.0)


@pytest.mark.parametrize("top_p", [1e-30, 1e-45, 5e-324])
def test_tiny_top_p_keeps_exactly_the_top_token(top_p):
    out = filter_logits(LOGITS, top_p=top_p)
    assert torch.isfinite(out).tolist() == [[False, True, False, False, False]]
    assert out[0, 1] == LOGITS[0, 1]


def test_tiny_top_p_generates_like_greedy(model):
    idx = prompt()
    out = generate(model, idx, 8, top_p=5e-324, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, greedy_reference(model, idx, 8))


def test_top_p_keeps_among_plus_inf_logits():
    out = filter_logits(torch.tensor([[math.inf, 5.0, math.inf, 0.0]]), top_p=0.9)
    assert (out > -math.inf).tolist() == [[True, False, True, False]]


def test_top_p_on_all_minus_inf_logits_gives_no_nan():
    out = filter_logits(torch.full((2, 4), -math.inf), top_p=0.5)
    assert not out.isnan().any()
