"""Checkpoints in Hugging Face's GPT-2 layout: GPT.from_pretrained / GPT.save_pretrained
against transformers.GPT2LMHeadModel, both directions, and the loader's errors.

A small random GPT2LMHeadModel (seeded) stands in for OpenAI's weights, so nothing is
downloaded. Logits agree within 1e-4 (absolute, fp32); greedy generations exactly.
"""

from __future__ import annotations

import json

import pytest
import torch

from gptcourse.generate import generate
from gptcourse.model import GPT, GPTConfig

transformers = pytest.importorskip("transformers")  # in the dev extra

ATOL = 1e-4
HF_SHAPE = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=101, n_positions=64)


def hf_model(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    kw = {**HF_SHAPE, "bos_token_id": None, "eos_token_id": None, "pad_token_id": None, **overrides}
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**kw))
    with torch.no_grad():  # logits of std ~1 rather than the 0.02 init's ~0.1
        model.lm_head.weight.mul_(10)
    return model.eval()


def ids(shape=(2, 20), seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 101, shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def hf():
    return hf_model()


@pytest.fixture(scope="module")
def hf_dir(hf, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf-gpt2")
    hf.save_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    return folder


@torch.no_grad()
def hf_logits(model, x):
    return model(x).logits


# --------------------------------------------------------------------------------------
# Hugging Face -> ours
# --------------------------------------------------------------------------------------


def test_load_safetensors_config(hf_dir):
    model = GPT.from_pretrained(hf_dir)
    assert model.config == GPTConfig(vocab_size=101, block_size=64, n_layer=2, n_head=2, n_embd=32)
    assert not model.training


def test_load_safetensors_logits_match(hf, hf_dir):
    model = GPT.from_pretrained(hf_dir)
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], hf_logits(hf, x), atol=ATOL, rtol=0)


def test_load_pytorch_model_bin(hf, tmp_path):
    # the older layout: config.json + pytorch_model.bin (a torch.save'd state dict)
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    model = GPT.from_pretrained(tmp_path)
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], hf_logits(hf, x), atol=ATOL, rtol=0)


def test_load_untied_head(tmp_path):
    hf = hf_model(tie_word_embeddings=False)
    hf.save_pretrained(tmp_path)
    model = GPT.from_pretrained(tmp_path)
    assert not model.config.tie_weights
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], hf_logits(hf, x), atol=ATOL, rtol=0)


def test_greedy_generation_matches_hf(tmp_path):
    # an untied head: a random tied model's greedy output just repeats one token
    hf = hf_model(tie_word_embeddings=False)
    hf.save_pretrained(tmp_path)
    model = GPT.from_pretrained(tmp_path)
    x = ids((1, 10), seed=2)
    ours = generate(model, x, 20, temperature=0)
    assert len(set(ours[0, 10:].tolist())) >= 5  # a non-trivial continuation
    with torch.no_grad():
        theirs = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=20,
                             pad_token_id=0)
    assert theirs.shape == (1, 30)
    assert torch.equal(ours, theirs)


def test_load_with_dtype_and_override(hf_dir):
    model = GPT.from_pretrained(hf_dir, dtype=torch.float64, dropout=0.1)
    assert next(model.parameters()).dtype == torch.float64
    assert model.config.dropout == 0.1


# --------------------------------------------------------------------------------------
# ours -> Hugging Face
# --------------------------------------------------------------------------------------


def our_model(seed: int = 3, **overrides) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=101, block_size=64, n_layer=2, n_head=2, n_embd=32, **overrides)
    model = GPT(cfg).eval()
    with torch.no_grad():  # non-zero biases and LayerNorm parameters: every tensor is checked
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name or "ln_f" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("tie", [True, False])
def test_save_then_load_in_hf(tmp_path, tie):
    model = our_model(tie_weights=tie)
    if not tie:
        with torch.no_grad():
            model.lm_head.weight.normal_(0, 0.02)
    folder = model.save_pretrained(tmp_path / "ours")
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    theirs = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    assert theirs.config.tie_word_embeddings is tie
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(hf_logits(theirs, x), model(x)[0], atol=ATOL, rtol=0)


def test_saved_small_vocab_model_generates_in_hf_like_ours(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=2, n_head=2, n_embd=32, tie_weights=False)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(10)
    # a prompt whose greedy continuation contains the last id, 64
    for seed in range(200):
        x = torch.randint(0, 65, (1, 3), generator=torch.Generator().manual_seed(seed))
        ours = generate(model, x, 30, temperature=0)
        if 64 in ours[0, 3:].tolist():
            break
    else:
        pytest.fail("no prompt found")
    theirs = transformers.GPT2LMHeadModel.from_pretrained(model.save_pretrained(tmp_path)).eval()
    with torch.no_grad():
        out = theirs.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=30)
    assert torch.equal(out, ours)


def test_save_then_load_ours_round_trip(tmp_path):
    model = our_model()
    back = GPT.from_pretrained(model.save_pretrained(tmp_path))
    assert back.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_hf_round_trip_through_ours(hf, hf_dir, tmp_path):
    # HF -> ours -> save -> HF again: the same function
    again = transformers.GPT2LMHeadModel.from_pretrained(GPT.from_pretrained(hf_dir).save_pretrained(tmp_path))
    x = ids()
    torch.testing.assert_close(hf_logits(again.eval(), x), hf_logits(hf, x), atol=ATOL, rtol=0)


def test_save_rope_model_rejected(tmp_path):
    with pytest.raises(ValueError, match="learned positions"):
        our_model(pos_encoding="rope").save_pretrained(tmp_path)


def test_save_bias_free_model_rejected(tmp_path):
    with pytest.raises(ValueError, match="biases"):
        our_model(bias=False).save_pretrained(tmp_path)


# --------------------------------------------------------------------------------------
# Loader errors
# --------------------------------------------------------------------------------------


def test_folder_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        GPT.from_pretrained(tmp_path)


def test_folder_without_weights(hf, tmp_path):
    hf.config.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.safetensors.*pytorch_model.bin"):
        GPT.from_pretrained(tmp_path)


def edited_copy(src, dst, **changes):
    dst.mkdir()
    (dst / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_shape_mismatch_names_the_tensor(hf_dir, tmp_path):
    folder = edited_copy(hf_dir, tmp_path / "bad", n_embd=64)
    with pytest.raises(ValueError, match=r"transformer\.\S+: checkpoint has shape .* model expects"):
        GPT.from_pretrained(folder)


def test_layer_count_mismatch(hf_dir, tmp_path):
    folder = edited_copy(hf_dir, tmp_path / "bad", n_layer=3)
    with pytest.raises(ValueError, match=r"missing \['transformer\.h\.2\."):
        GPT.from_pretrained(folder)


def test_other_model_type_rejected(hf_dir, tmp_path):
    folder = edited_copy(hf_dir, tmp_path / "llama", model_type="llama")
    with pytest.raises(ValueError, match="'llama' model, not GPT-2"):
        GPT.from_pretrained(folder)


def test_other_activation_rejected(hf_dir, tmp_path):
    folder = edited_copy(hf_dir, tmp_path / "relu", activation_function="relu")
    with pytest.raises(ValueError, match="activation 'relu'"):
        GPT.from_pretrained(folder)


def test_hub_id_offline_explains_local_folder(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub

    # offline and an empty cache: fails at once, whatever the machine has cached
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # so "gpt2" is not a local folder either
    with pytest.raises(OSError, match="'gpt2'.*local folder with config.json"):
        GPT.from_pretrained("gpt2")
