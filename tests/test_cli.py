"""The gptcourse command: demo, info and error handling."""

from __future__ import annotations

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
