"""gptcourse.checkpoints on its own (no model): the names gptcourse.train re-exports, pruning,
and which checkpoint a resume means. Saving, loading and damage are in tests/test_train.py."""

from __future__ import annotations

import ast
import inspect

import pytest

from gptcourse import checkpoints, train
from gptcourse.checkpoints import (
    CheckpointError,
    list_checkpoints,
    prune_checkpoints,
    resolve_resume,
)


def _fake_checkpoint(root, step):
    """A finished-looking ``step_N`` folder (resolving does not verify ``latest``'s target)."""
    folder = root / f"step_{step:06d}"
    folder.mkdir(parents=True)
    (folder / "checkpoint.json").write_text("{}", encoding="utf-8")
    return folder


def test_train_reexports_the_same_objects():
    for name in ("CHECKPOINT_FORMAT", "CheckpointError", "CheckpointWarning", "find_checkpoint",
                 "list_checkpoints", "load_model"):
        assert name in train.__all__
        assert getattr(train, name) is getattr(checkpoints, name)


def test_train_imports_no_private_checkpoint_names():
    tree = ast.parse(inspect.getsource(train))
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module == "checkpoints" for alias in node.names]
    assert imported and not [n for n in imported if n.startswith("_")]
    assert set(imported) <= set(checkpoints.__all__)


def test_prune_keeps_the_newest_up_to_the_saved_step(tmp_path):
    for step in (100, 200, 300, 400, 900):  # step 900: a branch abandoned by a resume
        _fake_checkpoint(tmp_path, step)
    prune_checkpoints(tmp_path, keep=2, newest=tmp_path / "step_000400")
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "step_000300", "step_000400", "step_000900"]


def test_resume_true_without_checkpoints_is_a_new_run(tmp_path):
    assert resolve_resume(True, tmp_path) is None


def test_resume_require_without_checkpoints_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint in .* to resume from"):
        resolve_resume("require", tmp_path)


def test_resume_true_follows_latest(tmp_path):
    root = tmp_path / "checkpoints"
    _fake_checkpoint(root, 1)
    want = _fake_checkpoint(root, 2)
    (root / "latest").write_text("step_000002\n", encoding="utf-8")
    folder, note, meta = resolve_resume(True, tmp_path)
    assert (folder, note, meta) == (want, None, None)
