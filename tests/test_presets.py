"""gptcourse.presets and the train command's settings: presets, TOML files, --key value."""

from __future__ import annotations

import pytest

from gptcourse import presets
from gptcourse.cli import _split_overrides
from gptcourse.model import GPTConfig


@pytest.mark.parametrize("name", presets.names())
def test_every_preset_resolves_to_valid_configs(name):
    spec = presets.resolve(name)
    cfg = spec.model_config(vocab_size=1000)
    assert isinstance(cfg, GPTConfig)
    assert spec.data and spec.prepare["source"] and spec.train.out_dir.startswith("runs/")


def test_the_promised_presets_exist():
    assert {"stories-cpu", "shakespeare-char", "shakespeare-char-gpu",
            "gpt2-124m-fineweb"} <= set(presets.names())


def test_shakespeare_char_is_nanogpts_cpu_setting():
    spec = presets.resolve("shakespeare-char")
    cfg = spec.model_config(vocab_size=65)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.dropout) == (4, 4, 128, 64, 0.0)
    t = spec.train
    assert (t.batch_size, t.max_steps, t.lr, t.min_lr, t.beta2) == (12, 2000, 1e-3, 1e-4, 0.99)


def test_overrides_beat_file_beat_preset(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('data = "elsewhere"\n[train]\nmax_steps = 7\nlr = 0.5\n[model]\nn_layer = 3\n')
    spec = presets.resolve("stories-cpu", cfg, {"lr": 0.25, "n-embd": 64})
    assert spec.data == "elsewhere"
    assert spec.train.max_steps == 7 and spec.train.lr == 0.25
    assert spec.model["n_layer"] == 3 and spec.model["n_embd"] == 64


def test_vocab_size_comes_from_the_data_unless_set():
    spec = presets.resolve("stories-cpu")
    assert spec.model_config(vocab_size=1024).vocab_size == 1024
    spec = presets.resolve("gpt2-124m-fineweb")
    assert spec.model_config(vocab_size=50257).vocab_size == 50304


def test_model_preset_as_a_base(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('data = "d"\n[model]\npreset = "gpt2"\nblock_size = 256\n')
    model = presets.resolve(config=cfg).model_config(vocab_size=50257)
    assert (model.n_layer, model.n_embd, model.block_size) == (12, 768, 256)


def test_unknown_setting_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown setting --max-step;.*max_steps"):
        presets.resolve("stories-cpu", overrides={"max_step": 3})


def test_bad_value_is_reported_by_the_config():
    with pytest.raises(ValueError, match="grad_accum must be >= 1, got 0"):
        presets.resolve("stories-cpu", overrides={"grad_accum": 0})


def test_missing_data_folder_is_named():
    with pytest.raises(ValueError, match="no data folder"):
        presets.resolve(overrides={"max_steps": 3})


def test_command_line_values_are_toml_literals():
    got = _split_overrides(["--max-steps", "10", "--lr=3e-4", "--compile", "--out-dir", "runs/x",
                            "--min-lr", "none", "--sample-prompt", "Once upon"])
    assert got == {"max_steps": 10, "lr": 3e-4, "compile": True, "out_dir": "runs/x",
                   "min_lr": None, "sample_prompt": "Once upon"}


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match="unknown preset 'nope'; choose one of .*stories-cpu"):
        presets.resolve("nope")
