"""The gptcourse command: demo, info and error handling."""

from __future__ import annotations

import numpy as np
import pytest

from gptcourse.cli import main
from gptcourse.tokenizer import BPETokenizer


def test_tokenizer_demo_trains_shows_and_saves_a_tokenizer(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GPTCOURSE_PROFILE", "ci")
    assert main(["tokenizer-demo", "--out", str(tmp_path), "--vocab-size", "300"]) == 0
    out = capsys.readouterr().out
    assert "trained a byte-level BPE with 300 tokens" in out
    assert "decode(encode(text)) == text: True" in out
    assert "bytes/token" in out and "GPT-2" in out
    saved = tmp_path / "tokenizer-tinyshakespeare-300.json"
    assert BPETokenizer.load(saved).vocab_size == 300


def test_info_lists_profile_device_and_cache(capsys, monkeypatch):
    monkeypatch.setenv("GPTCOURSE_PROFILE", "ci")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "profile: ci" in out and "device: cpu" in out and "data:" in out


def test_unknown_corpus_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    assert main(["tokenizer-demo", "--corpus", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown corpus 'nope'" in err and "tinyshakespeare" in err


# ------------------------------------------------------------------ demo and prepare


def test_demo_trains_samples_and_reports_the_floor(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GPTCOURSE_PROFILE", "ci")  # 30 steps of a 2-layer model
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert all(f"--- sample {k} ---" in out for k in (1, 2, 3))
    assert "the entropy floor is" in out and "nats/token above the best possible" in out
    assert (tmp_path / "demo" / "loss.png").is_file()
    assert (tmp_path / "demo" / "checkpoints" / "latest").is_file()


def test_prepare_command_writes_shards_and_a_summary(tmp_path, capsys):
    from gptcourse.data import TokenShards

    out = tmp_path / "stories"
    assert main(["prepare", "stories", "--out", str(out), "--tokenizer", "char",
                 "--max-documents", "300", "--no-near-dedup", "--val-fraction", "0.2"]) == 0
    printed = capsys.readouterr().out
    assert "train" in printed and "val" in printed
    train, val = TokenShards(out, "train", verify=True), TokenShards(out, "val")
    assert train.documents + val.documents == 300  # stories never repeat: nothing dropped
    assert train.entropy_per_token is not None  # the grammar's floor travels with the shards
    assert train.tokenizer().name.startswith("char")


def test_prepare_with_a_preset_takes_its_recipe(tmp_path, capsys):
    from gptcourse.data import TokenShards

    out = tmp_path / "shakespeare"
    assert main(["prepare", "--preset", "shakespeare-char", "--out", str(out),
                 "--max-documents", "50"]) == 0
    train = TokenShards(out, "train")
    assert train.tokenizer().name.startswith("char")  # the preset's tokenizer, not gpt2
    assert train.meta["pipeline"]["clean"] is False  # shakespeare-char: clean = false


def test_prepare_without_a_source_is_a_clear_error(tmp_path, capsys):
    assert main(["prepare", "--out", str(tmp_path)]) == 2
    assert "name a SOURCE and --out DIR" in capsys.readouterr().err


# ------------------------------------------------------------------ train: runs are never lost


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """6,000 random ids of a 50-token vocabulary (no tokenizer: samples are off)."""
    from gptcourse.data import ShardWriter

    folder = tmp_path_factory.mktemp("tiny")
    ids = np.random.default_rng(0).integers(0, 50, 6000)
    with ShardWriter(folder, vocab_size=50) as w:
        w.add("train", ids[:5400])
        w.add("val", ids[5400:])
        w.finish()
    return folder


def _train(data, out, *extra):
    return main(["train", "--data", str(data), "--out-dir", str(out), "--block-size", "16",
                 "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--batch-size", "2",
                 "--warmup-steps", "1", "--eval-interval", "2", "--eval-batches", "1",
                 "--log-interval", "1", "--progress", "false", "--plots", "false", *extra])


@pytest.fixture
def run4(tiny_data, tmp_path, capsys):
    """A finished 4-step run: checkpoints step_000002 and step_000004 (latest)."""
    out = tmp_path / "run"
    assert _train(tiny_data, out, "--max-steps", "4") == 0
    capsys.readouterr()
    return out


def test_train_resume_with_a_dangling_latest_falls_back_and_says_so(tiny_data, run4, capsys):
    (run4 / "checkpoints" / "latest").write_text("step_000099\n")
    assert _train(tiny_data, run4, "--max-steps", "6", "--resume") == 0
    out = capsys.readouterr().out
    assert "points at step_000099, which does not exist" in out
    assert "resuming" in out and "from step 4" in out
    assert (run4 / "checkpoints" / "latest").read_text().strip() == "step_000006"
    assert (run4 / "checkpoints" / "step_000004").is_dir()  # nothing was pruned out of turn


def test_train_resume_with_no_valid_checkpoint_is_a_one_line_error(tiny_data, run4, capsys):
    (run4 / "checkpoints" / "latest").unlink()
    for step in (2, 4):
        (run4 / "checkpoints" / f"step_{step:06d}" / "checkpoint.json").write_text("{")
    assert _train(tiny_data, run4, "--max-steps", "6", "--resume") == 2
    captured = capsys.readouterr()
    assert "starting" not in captured.out
    err = captured.err.strip()
    assert err.startswith("gptcourse train: error: no valid checkpoint") and "\n" not in err
    assert "--overwrite" in err
    assert sorted(p.name for p in (run4 / "checkpoints").iterdir()) == [
        "step_000002", "step_000004"]


def test_train_without_resume_refuses_even_with_a_broken_latest(tiny_data, run4, capsys):
    (run4 / "checkpoints" / "latest").write_text("")
    assert _train(tiny_data, run4, "--max-steps", "4") == 2
    assert "pass --resume to continue that run, --overwrite" in capsys.readouterr().err


def test_train_resume_path_and_overwrite(tiny_data, run4, capsys):
    assert _train(tiny_data, run4, "--max-steps", "3", "--resume",
                  str(run4 / "checkpoints" / "step_000002")) == 0
    assert "from step 2" in capsys.readouterr().out
    assert (run4 / "checkpoints" / "latest").read_text().strip() == "step_000003"
    assert _train(tiny_data, run4, "--max-steps", "2", "--overwrite") == 0
    assert sorted(p.name for p in (run4 / "checkpoints").iterdir()) == ["latest", "step_000002"]


def test_train_resume_auto_or_new_starts_a_new_run_in_an_empty_folder(tiny_data, tmp_path, capsys):
    assert _train(tiny_data, tmp_path / "new", "--max-steps", "2", "--resume=auto-or-new") == 0
    assert "starting a new run" in capsys.readouterr().out
    assert _train(tiny_data, tmp_path / "other", "--max-steps", "2", "--resume") == 2
    assert "no checkpoint in" in capsys.readouterr().err


def test_train_resume_and_overwrite_together_are_a_usage_error(tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _train(tiny_data, tmp_path / "run", "--resume", "--overwrite")
    assert exit_info.value.code == 2
    assert "--overwrite: not allowed with argument --resume" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_prepare_a_latin1_or_empty_file_is_a_one_line_error(tmp_path, capsys):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("Caf\u00e9 au lait, twice.\n\nA na\u00efve r\u00e9sum\u00e9.\n".encode("latin-1"))
    assert main(["prepare", str(latin), "--out", str(tmp_path / "a"), "--tokenizer", "char"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("gptcourse prepare: error:") and "is not valid utf-8" in err
    assert main(["prepare", str(latin), "--out", str(tmp_path / "b"), "--tokenizer", "char",
                 "--encoding", "latin-1", "--no-clean"]) == 0
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert main(["prepare", str(empty), "--out", str(tmp_path / "c")]) == 2
    assert "empty.txt is empty (0 bytes)" in capsys.readouterr().err


# ------------------------------------------------------------------ what a learner types


def test_train_help_lists_every_setting_with_its_type_and_default(capsys):
    import dataclasses

    from gptcourse.model import GPTConfig
    from gptcourse.train import TrainConfig

    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    lines = capsys.readouterr().out.splitlines()

    def line(flag: str) -> str:
        (found,) = [s for s in lines if s.split()[:1] == [flag]]
        return found

    assert line("--lr").split() == ["--lr", "FLOAT", "default:", "0.001"]
    assert line("--n-layer").split() == ["--n-layer", "INT", "default:", "12"]
    assert line("--compile").split() == ["--compile", "BOOL", "default:", "false"]
    assert line("--min-lr").split() == ["--min-lr", "FLOAT", "default:", "none"]
    for f in dataclasses.fields(GPTConfig) + dataclasses.fields(TrainConfig):
        assert line("--" + f.name.replace("_", "-"))  # every field, once


def test_sample_help_explains_every_option():
    from gptcourse.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    sample = sub.choices["sample"]
    missing = [a.option_strings or a.dest for a in sample._actions if not a.help]
    assert missing == []
    assert "0 is greedy" in sample.format_help()


@pytest.mark.parametrize("option, value, why", [
    ("--temperature", "-1", "--temperature must be >= 0, got -1.0"),
    ("--top-p", "0", "--top-p must be in (0, 1], got 0.0"),
    ("--top-k", "0", "--top-k must be >= 1, got 0"),
])
def test_sample_refuses_an_out_of_range_option_in_one_line(tmp_path, capsys, option, value, why):
    assert main(["sample", str(tmp_path), option, value]) == 2  # refused before any loading
    captured = capsys.readouterr()
    assert captured.err == f"gptcourse sample: error: {why}\n" and captured.out == ""


def test_offline_prepare_without_a_tiktoken_cache_is_one_clear_line(tmp_path, capsys, monkeypatch):
    """No cached gpt2 files and no network (a proxy on a closed loopback port refuses every
    download at once): one line naming the file, its URL and TIKTOKEN_CACHE_DIR."""
    import socket

    import tiktoken.registry

    empty = tmp_path / "tiktoken-cache"
    empty.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(empty))
    monkeypatch.setenv("GPTCOURSE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # forget encodings loaded before
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{closed.getsockname()[1]}"
        for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
            monkeypatch.setenv(var, proxy)
        for var in ("no_proxy", "NO_PROXY"):
            monkeypatch.delenv(var, raising=False)
        assert main(["prepare", "tinyshakespeare", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("gptcourse prepare: error: tiktoken's 'gpt2' tokenizer needs "
                          "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/")
    assert f"TIKTOKEN_CACHE_DIR={empty}" in err and "--tokenizer char" in err
    assert list(empty.iterdir()) == []


def test_make_lab_passes_allow_root_only_to_root():
    import os
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parents[1]
    # -n: print the commands, run none; a stale install stamp only adds printed pip lines
    out = subprocess.run(["make", "-n", "-C", str(root), "lab", "LAB_ARGS=--no-browser"],
                         capture_output=True, text=True, check=True).stdout
    (lab,) = [s for s in out.splitlines() if "jupyter lab" in s]
    assert ("--allow-root" in lab) == (os.geteuid() == 0) and "--no-browser" in lab
