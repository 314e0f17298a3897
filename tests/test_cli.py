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
