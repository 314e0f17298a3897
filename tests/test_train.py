"""gptcourse.train: schedule, optimizer groups, accumulation, evaluation, checkpoints, exact
resume in a new process, NaN guard, and DDP (gloo, 2 real processes) against one process.

Models are tiny (2 layers, 32 wide) on The Verdict at character level, so each test runs in
about a second on a CPU. Tolerances are stated where results are not bit-identical.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gptcourse import corpora
from gptcourse.data import ShardWriter, TokenShards
from gptcourse.model import GPT, GPTConfig
from gptcourse.tokenizer import get_tokenizer
from gptcourse.train import (
    CheckpointError,
    CheckpointWarning,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    amp_dtype,
    find_checkpoint,
    list_checkpoints,
    load_model,
    lr_at,
    optimizer_groups,
    read_metrics,
)

TINY = dict(block_size=32, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture(scope="module")
def verdict_shards(tmp_path_factory) -> Path:
    """The Verdict, characters: 90% train, 10% val, written as shards of 4,096 tokens."""
    folder = tmp_path_factory.mktemp("verdict")
    tok = get_tokenizer("char:the-verdict")
    ids = np.array(tok.encode(corpora.load_text("the-verdict")))
    cut = int(len(ids) * 0.9)
    w = ShardWriter(folder, vocab_size=tok.vocab_size, shard_tokens=4096)
    w.add("train", ids[:cut])
    w.add("val", ids[cut:])
    w.finish(tokenizer={"name": "char:the-verdict", "vocab_size": tok.vocab_size, "eot_id": None})
    return folder


def _trainer(shards: Path, out: Path, **kw) -> Trainer:
    train, val = TokenShards(shards, "train"), TokenShards(shards, "val")
    defaults = dict(out_dir=str(out), max_steps=20, batch_size=4, lr=3e-3, warmup_steps=2,
                    eval_interval=10, eval_batches=4, log_interval=1, progress=False, plots=False)
    defaults.update(kw)
    cfg = GPTConfig(vocab_size=train.vocab_size, **TINY)
    return Trainer(cfg, train, val, TrainConfig(**defaults), tokenizer=train.tokenizer())


# ------------------------------------------------------------------ schedule and optimizer


def test_warmup_is_linear_from_lr_over_warmup():
    assert lr_at(0, 1.0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_at(4, 1.0, 10, 100, 0.1) == pytest.approx(0.5)
    assert lr_at(9, 1.0, 10, 100, 0.1) == pytest.approx(1.0)


def test_cosine_decays_to_min_lr_through_the_midpoint():
    assert lr_at(10, 1.0, 10, 110, 0.1) == pytest.approx(1.0)
    assert lr_at(60, 1.0, 10, 110, 0.1) == pytest.approx(0.55)  # half way: (lr + min_lr) / 2
    assert lr_at(110, 1.0, 10, 110, 0.1) == pytest.approx(0.1)
    assert lr_at(500, 1.0, 10, 110, 0.1) == pytest.approx(0.1)
    lrs = [lr_at(s, 1.0, 10, 110, 0.1) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_linear_and_constant_schedules():
    assert lr_at(60, 1.0, 10, 110, 0.0, "linear") == pytest.approx(0.5)
    assert lr_at(60, 1.0, 10, 110, 0.0, "constant") == pytest.approx(1.0)


def test_weight_decay_only_on_matrices_and_each_parameter_once():
    model = GPT(GPTConfig(vocab_size=50, **TINY))
    decay, no_decay = optimizer_groups(model, 0.1)
    assert all(p.dim() >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.dim() < 2 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    ids = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # tied wte/lm_head once


def test_precision_choice_on_cpu():
    assert amp_dtype("cpu") == torch.float32
    assert amp_dtype("cpu", "bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="float16 autocast is not supported"):
        amp_dtype("cpu", "float16")


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="grad_accum must be >= 1, got 0"):
        TrainConfig(grad_accum=0)
    with pytest.raises(ValueError, match="unknown training settings \\['lr_max'\\]"):
        TrainConfig.from_dict({"lr_max": 1.0})
    with pytest.raises(ValueError, match="min_lr must be in"):
        TrainConfig(lr=1e-3, min_lr=1e-2)



@pytest.mark.parametrize(("field", "value"), [
    ("lr", "1e-3"), ("weight_decay", None), ("beta1", True), ("max_steps", 10.0),
    ("decay_steps", "500"), ("compile", 1), ("progress", "yes"),
])
def test_config_wrong_type_is_a_type_error(field, value):
    with pytest.raises(TypeError, match=f"{field} must be"):
        TrainConfig(**{field: value})


@pytest.mark.parametrize(("field", "value", "message"), [
    ("lr", 0.0, "lr must be > 0"), ("grad_clip", -1.0, "grad_clip must be >= 0"),
    ("weight_decay", math.nan, "weight_decay must be a finite number"),
    ("beta2", 1.0, r"beta2 must be in \[0, 1\)"), ("decay_steps", 0, "decay_steps must be >= 1"),
    ("eval_batches", -1, "eval_batches must be >= 0"),
])
def test_config_wrong_value_is_a_value_error(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_config_keeps_valid_values_as_given():
    c = TrainConfig(lr=1, max_steps=np.int64(5))
    assert c.to_dict()["lr"] == 1 and type(c.lr) is int  # checked, not converted
    assert type(c.max_steps) is int  # a numpy int becomes an int (JSON-serialisable)


# ------------------------------------------------------------------ steps and evaluation


def test_accumulation_splits_one_global_batch(verdict_shards, tmp_path):
    a = _trainer(verdict_shards, tmp_path / "a", batch_size=8, grad_accum=1)
    b = _trainer(verdict_shards, tmp_path / "b", batch_size=2, grad_accum=4)
    xa = torch.cat([x for x, _ in a.micro_batches(3)])
    xb = torch.cat([x for x, _ in b.micro_batches(3)])
    assert torch.equal(xa, xb)


def test_accumulated_step_equals_one_big_batch(verdict_shards, tmp_path):
    # tolerance: float32 sums in a different order, ~1e-7 relative
    a = _trainer(verdict_shards, tmp_path / "a", batch_size=8, grad_accum=1)
    b = _trainer(verdict_shards, tmp_path / "b", batch_size=2, grad_accum=4)
    la, lb = a.train_step()["loss"], b.train_step()["loss"]
    assert la == pytest.approx(lb, rel=1e-5)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_loss_falls_well_below_uniform(verdict_shards, tmp_path):
    t = _trainer(verdict_shards, tmp_path, max_steps=60, batch_size=8)
    history = t.fit()
    losses = [r["loss"] for r in history if "loss" in r]
    assert losses[0] > math.log(t.model_config.vocab_size) - 0.3
    assert losses[-1] < 3.25  # uniform is ln(61) = 4.11; character frequencies alone give ~3.1


def test_evaluate_is_the_token_mean_over_sequential_windows(verdict_shards, tmp_path):
    t = _trainer(verdict_shards, tmp_path)
    val = TokenShards(verdict_shards, "val")
    got = t.evaluate(max_batches=3)
    losses, n = [], 0
    t.model.eval()
    with torch.no_grad():
        for x, y in val.sequential(32, 4, max_batches=3):
            losses.append(t.model(x, y)[1].item() * y.numel())
            n += y.numel()
    assert got["tokens"] == n == 3 * 4 * 32
    assert got["loss"] == pytest.approx(sum(losses) / n, rel=1e-6)
    assert got["perplexity"] == pytest.approx(math.exp(got["loss"]), rel=1e-9)


def test_metrics_log_and_plots(verdict_shards, tmp_path):
    t = _trainer(verdict_shards, tmp_path, max_steps=10, plots=True, sample_interval=10,
                 sample_tokens=20)
    t.fit()
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 11))
    assert [r["step"] for r in records if "val_loss" in r] == [0, 10]
    assert any("sample" in r for r in records)
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert (tmp_path / "lr.png").stat().st_size > 1000


# ------------------------------------------------------------------ checkpoints


def test_checkpoint_round_trip_restores_everything(verdict_shards, tmp_path):
    t = _trainer(verdict_shards, tmp_path, max_steps=6, eval_interval=3)
    t.fit()
    u = _trainer(verdict_shards, tmp_path, max_steps=6, eval_interval=3)
    folder = u.load_checkpoint(tmp_path)
    assert folder.name == "step_000006" and u.step == 6 and u.tokens_seen == t.tokens_seen
    for a, b in zip(t.model.state_dict().values(), u.model.state_dict().values()):
        assert torch.equal(a, b)
    sa, sb = t.optimizer.state_dict()["state"], u.optimizer.state_dict()["state"]
    for k in sa:
        assert torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"])
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == [
        "step_000003", "step_000006"]


def test_old_checkpoints_are_pruned(verdict_shards, tmp_path):
    _trainer(verdict_shards, tmp_path, max_steps=8, eval_interval=2, keep_checkpoints=2).fit()
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == [
        "step_000006", "step_000008"]


class _MaskedBatches:
    """Evaluation data whose targets are partly -100 (padding / masked prompts), as in SFT."""

    vocab_size, path, entropy_per_token = 60, None, None

    def __init__(self, batches):
        self.batches = batches

    def sequential(self, block_size, batch_size, *, max_batches=None, rank=0, world_size=1):
        return iter(self.batches)


def test_evaluate_counts_only_scored_targets(verdict_shards, tmp_path):
    t = _trainer(verdict_shards, tmp_path)
    g = torch.Generator().manual_seed(0)
    batches = []
    for scored in (5, 60, 0):  # very different numbers of scored targets; one with none
        x = torch.randint(t.model_config.vocab_size, (2, 32), generator=g)
        y = torch.randint(t.model_config.vocab_size, (2, 32), generator=g)
        y.view(-1)[scored:] = -100
        batches.append((x, y))
    got = t.evaluate(_MaskedBatches(batches))
    t.model.eval()
    with torch.no_grad():  # every scored target counts once, whatever its batch
        logits = torch.cat([t.model(x)[0] for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    keep = y != -100
    expected = F.cross_entropy(logits[keep], y[keep]).item()
    assert got["tokens"] == 65
    assert got["loss"] == pytest.approx(expected, rel=1e-5)


def test_checkpoints_can_be_switched_off(verdict_shards, tmp_path):
    t = _trainer(verdict_shards, tmp_path, max_steps=4, eval_interval=2, checkpoints=False)
    t.fit()
    assert t.step == 4 and not (tmp_path / "checkpoints").exists()


def test_corrupt_checkpoint_is_a_clear_error(verdict_shards, tmp_path):
    _trainer(verdict_shards, tmp_path, max_steps=2, eval_interval=2).fit()
    weights = find_checkpoint(tmp_path) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        _trainer(verdict_shards, tmp_path).load_checkpoint(tmp_path)


def test_truncated_checkpoint_is_a_clear_error(verdict_shards, tmp_path):
    _trainer(verdict_shards, tmp_path, max_steps=2, eval_interval=2).fit()
    state = find_checkpoint(tmp_path) / "trainer.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(tmp_path)


def test_checkpoint_of_another_model_is_refused(verdict_shards, tmp_path):
    _trainer(verdict_shards, tmp_path, max_steps=2, eval_interval=2).fit()
    train = TokenShards(verdict_shards, "train")
    other = GPTConfig(vocab_size=train.vocab_size, **{**TINY, "n_layer": 3})
    with pytest.raises(CheckpointError, match="n_layer: checkpoint 2 vs requested 3"):
        Trainer(other, train, None, TrainConfig(out_dir=str(tmp_path), progress=False),
                resume="require")


def test_failed_save_keeps_the_last_good_checkpoint(verdict_shards, tmp_path, monkeypatch):
    t = _trainer(verdict_shards, tmp_path, max_steps=2, eval_interval=2)
    t.fit()
    good = find_checkpoint(tmp_path)

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    t.train_step()
    with pytest.raises(OSError, match="disk full"):
        t.save_checkpoint()
    assert find_checkpoint(tmp_path) == good
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")] == []
    load_model(tmp_path)  # still loads


def test_nan_loss_stops_naming_the_step_and_keeps_the_checkpoint(verdict_shards, tmp_path):
    t = _trainer(verdict_shards, tmp_path, max_steps=10, eval_interval=2)
    original = t.model.forward
    calls = {"n": 0}

    def poisoned(idx, targets=None, cache=None):
        logits, loss = original(idx, targets, cache)
        calls["n"] += t.model.training  # evaluation forwards do not count
        if calls["n"] > 3 and t.model.training:  # the 4th training forward: step 3
            loss = loss * float("nan")
        return logits, loss

    t.model.forward = poisoned
    with pytest.raises(TrainingDiverged, match="became nan at step 3") as err:
        t.fit()
    assert "step_000002" in str(err.value)
    assert find_checkpoint(tmp_path).name == "step_000002"
    assert t.step == 3  # the poisoned step never reached the optimizer


# ------------------------------------------------------------------ new processes


def _gptcourse(*args: str, cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPTCOURSE_PROFILE": "ci", "OMP_NUM_THREADS": "1", **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-m", "gptcourse", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out-dir", str(out), "--block-size", "32",
            "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--batch-size", "4",
            "--lr", "3e-3", "--warmup-steps", "3", "--decay-steps", "20", "--log-interval", "1",
            "--eval-interval", "5", "--eval-batches", "2", "--progress", "false",
            "--plots", "false", "--dropout", "0.1", *extra]


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run) if "loss" in r]


def test_resume_in_a_new_process_is_bit_identical(verdict_shards, tmp_path):
    """10 steps, save, resume in a new process, 10 more == 20 uninterrupted (dropout on)."""
    _gptcourse(*_train_args(verdict_shards, tmp_path / "whole", "--max-steps", "20"), cwd=tmp_path)
    _gptcourse(*_train_args(verdict_shards, tmp_path / "split", "--max-steps", "10"), cwd=tmp_path)
    _gptcourse(*_train_args(verdict_shards, tmp_path / "split", "--max-steps", "20", "--resume"),
               cwd=tmp_path)
    whole, split = _losses(tmp_path / "whole"), _losses(tmp_path / "split")
    assert len(whole) == len(split) == 20
    assert whole == split  # bit-identical floats


def test_ddp_two_processes_equal_one_process(verdict_shards, tmp_path):
    """torchrun, gloo, 2 ranks x grad_accum 1 == 1 process x grad_accum 2, within 1e-5."""
    common = ["--max-steps", "5", "--dropout", "0.0", "--eval-interval", "5"]
    _gptcourse(*_train_args(verdict_shards, tmp_path / "one", *common, "--grad-accum", "2"),
               cwd=tmp_path)
    env = {**os.environ, "GPTCOURSE_PROFILE": "ci", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "gptcourse", *_train_args(verdict_shards, tmp_path / "two", *common,
                                           "--grad-accum", "1")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 5
    np.testing.assert_allclose(two, one, rtol=0, atol=1e-5)
    val_one = [r["val_loss"] for r in read_metrics(tmp_path / "one") if "val_loss" in r]
    val_two = [r["val_loss"] for r in read_metrics(tmp_path / "two") if "val_loss" in r]
    np.testing.assert_allclose(val_two, val_one, rtol=0, atol=1e-5)
    meta = json.loads((find_checkpoint(tmp_path / "two") / "checkpoint.json").read_text())
    assert meta["world_size"] == 2 and meta["global_batch"] == 8


def test_sample_command_reads_the_checkpoint(verdict_shards, tmp_path):
    _gptcourse(*_train_args(verdict_shards, tmp_path / "run", "--max-steps", "5"), cwd=tmp_path)
    proc = _gptcourse("sample", str(tmp_path / "run"), "--prompt", "I had", "--max-new-tokens",
                      "30", "--num-samples", "2", "--seed", "1", cwd=tmp_path)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("# step 5 of")
    assert sum(line.startswith("I had") for line in lines) == 2


def test_training_into_a_used_folder_needs_resume(verdict_shards, tmp_path):
    from gptcourse.cli import main

    _gptcourse(*_train_args(verdict_shards, tmp_path / "run", "--max-steps", "2"), cwd=tmp_path)
    assert main(_train_args(verdict_shards, tmp_path / "run", "--max-steps", "4")) == 2
    shutil.rmtree(tmp_path / "run")


def test_compiled_training_matches_and_saves_clean_names(verdict_shards, tmp_path, monkeypatch):
    """compile=True goes through torch.compile; the "eager" backend keeps this test fast (no
    C++ code generation) while exercising dynamo's tracing and the `_orig_mod.` wrapper."""
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: real_compile(m, backend="eager"))
    plain = _trainer(verdict_shards, tmp_path / "plain", max_steps=3, eval_interval=3)
    compiled = _trainer(verdict_shards, tmp_path / "compiled", max_steps=3, eval_interval=3,
                        compile=True)
    assert compiled.train_model is not compiled.model
    a = [r["loss"] for r in plain.fit() if "loss" in r]
    b = [r["loss"] for r in compiled.fit() if "loss" in r]
    np.testing.assert_allclose(b, a, rtol=1e-6)  # same kernels; only fusion order may differ
    from safetensors import safe_open

    with safe_open(find_checkpoint(tmp_path / "compiled") / "model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if "_orig_mod" in k]


# ------------------------------------------------------------------ runs are never lost (issue 12)


@pytest.fixture(scope="module")
def finished_run(verdict_shards, tmp_path_factory) -> Path:
    """A 4-step run with checkpoints step_000002 and step_000004 (latest); copy before use."""
    out = tmp_path_factory.mktemp("finished") / "run"
    _trainer(verdict_shards, out, max_steps=4, eval_interval=2).fit()
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def _resumed(shards: Path, out: Path, resume, overwrite: bool = False, **kw) -> Trainer:
    train = TokenShards(shards, "train")
    defaults = dict(out_dir=str(out), max_steps=6, batch_size=4, lr=3e-3, warmup_steps=2,
                    eval_interval=2, eval_batches=4, log_interval=1, progress=False, plots=False)
    cfg = GPTConfig(vocab_size=train.vocab_size, **TINY)
    return Trainer(cfg, train, None, TrainConfig(**{**defaults, **kw}), resume=resume,
                   overwrite=overwrite)


def _break_latest(ckpts: Path, how: str) -> None:
    if how == "dangling":
        (ckpts / "latest").write_text("step_000099\n")
    elif how == "empty":
        (ckpts / "latest").write_text("")
    elif how == "deleted":
        (ckpts / "latest").unlink()
    else:  # "unfinished": latest names a folder whose save never wrote checkpoint.json
        (ckpts / "step_000004" / "checkpoint.json").unlink()


@pytest.mark.parametrize("how", ["dangling", "empty", "deleted", "unfinished"])
def test_resume_without_a_valid_latest_falls_back_to_the_newest_valid(
        verdict_shards, finished_run, tmp_path, how):
    run = _copy(finished_run, tmp_path)
    _break_latest(run / "checkpoints", how)
    if how != "unfinished":  # the newest checkpoint must also verify to be chosen
        weights = run / "checkpoints" / "step_000004" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.warns(CheckpointWarning, match="using the newest valid checkpoint"):
        t = _resumed(verdict_shards, run, "require")
    assert t.step == 2 and t.last_checkpoint.name == "step_000002"
    assert "step_000002" in t.resume_note


def test_resume_with_no_valid_checkpoint_names_what_it_found_and_keeps_it(
        verdict_shards, finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    (run / "checkpoints" / "latest").unlink()
    for step in (2, 4):
        (run / "checkpoints" / f"step_{step:06d}" / "trainer.pt").write_bytes(b"garbage")
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    for resume in (True, "require"):  # True starts a new run only when there is nothing
        with pytest.raises(CheckpointError) as err:
            _resumed(verdict_shards, run, resume)
        message = str(err.value)
        assert "no valid checkpoint" in message and "\n" not in message
        assert "step_000002/trainer.pt" in message and "step_000004/trainer.pt" in message
        assert "overwrite" in message
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_resume_true_starts_a_new_run_only_in_an_empty_folder(verdict_shards, tmp_path):
    assert _resumed(verdict_shards, tmp_path / "new", True).step == 0
    with pytest.raises(CheckpointError, match="no checkpoint in .* to resume from"):
        _resumed(verdict_shards, tmp_path / "new", "require")


def test_resume_from_a_chosen_checkpoint(verdict_shards, finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    t = _resumed(verdict_shards, run, run / "checkpoints" / "step_000002")
    assert t.step == 2 and t.resume_note is None


def test_new_run_over_existing_checkpoints_is_refused_before_writing(
        verdict_shards, finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    metrics = (run / "metrics.jsonl").read_text()
    t = _resumed(verdict_shards, run, False)
    with pytest.raises(CheckpointError, match="already holds checkpoints of another run"):
        t.fit()
    with pytest.raises(CheckpointError, match="resume=True .* overwrite=True"):
        t.save_checkpoint()
    assert (run / "metrics.jsonl").read_text() == metrics  # the old run's log is intact
    assert find_checkpoint(run).name == "step_000004"


def test_overwrite_deletes_the_old_checkpoints_and_starts_afresh(
        verdict_shards, finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    t = _resumed(verdict_shards, run, False, overwrite=True, max_steps=2)
    assert t.step == 0
    t.fit()
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_000002"]
    with pytest.raises(ValueError, match="exclude each other"):
        _resumed(verdict_shards, run, True, overwrite=True)


def test_pruning_orders_by_step_number_not_by_name(verdict_shards, tmp_path):
    t = _trainer(verdict_shards, tmp_path, keep_checkpoints=2)
    for step in (999_999, 1_000_000, 1_000_001):
        t.step = step
        t.save_checkpoint()
    # by name "step_999999" sorts last, and the newest two would have been pruned to one
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == [
        "step_1000000", "step_1000001"]
    assert find_checkpoint(tmp_path).name == "step_1000001"


def test_pruning_never_removes_latest_after_resuming_an_older_checkpoint(
        verdict_shards, finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    t = _resumed(verdict_shards, run, run / "checkpoints" / "step_000002", max_steps=3,
                 keep_checkpoints=1)
    t.fit()
    # step_000004 is a later step of the abandoned branch: left alone, not counted
    assert find_checkpoint(run).name == "step_000003"
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == [
        "step_000003", "step_000004"]


def test_a_killed_save_leaves_nothing_after_the_next_save(verdict_shards, finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    ckpts = run / "checkpoints"
    (ckpts / ".step_000006.k1ll3d").mkdir()
    (ckpts / ".step_000006.k1ll3d" / "model.safetensors").write_bytes(b"half")
    (ckpts / ".latest.x1.part").write_text("step_0")
    t = _resumed(verdict_shards, run, True)
    t.train_step()
    t.save_checkpoint()
    assert sorted(p.name for p in ckpts.iterdir() if p.name.startswith(".")) == []


def _edit_meta(folder: Path, edit) -> None:
    file = folder / "checkpoint.json"
    file.write_text(json.dumps(edit(json.loads(file.read_text()))))


def _bad_header(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    _edit_meta(folder, lambda m: {**m, "files": {**m["files"],
                                                 "model.safetensors": corpora.sha256_file(weights)}})


def _drop(key: str):
    return lambda m: {k: v for k, v in m.items() if k != key}


@pytest.mark.parametrize("damage, message", [
    (lambda f: _edit_meta(f, lambda m: [m]), "holds a JSON list, not an object"),
    (lambda f: _edit_meta(f, _drop("files")), "has no 'files' key"),
    (lambda f: _edit_meta(f, _drop("model_config")), "has no 'model_config' key"),
    (lambda f: _edit_meta(f, lambda m: {**m, "files": {}}), "lists no sha256 for model.safetensors"),
    (lambda f: _edit_meta(f, lambda m: {**m, "model_config": {**m["model_config"], "n_layr": 2}}),
     "model_config is not a valid GPTConfig"),
    (_bad_header, "model.safetensors cannot be loaded into the model"),
], ids=["list", "no-files", "no-model-config", "no-weights-sha", "bad-config", "bad-header"])
def test_damaged_checkpoint_is_one_line_naming_the_file(finished_run, tmp_path, damage, message):
    run = _copy(finished_run, tmp_path)
    damage(run / "checkpoints" / "step_000004")
    with pytest.raises(CheckpointError, match=message) as err:
        load_model(run)
    assert "step_000004" in str(err.value) and "\n" not in str(err.value)


def test_weights_are_verified_on_every_load(verdict_shards, finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    weights = run / "checkpoints" / "step_000004" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit: the file still parses
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its sha256"):
        load_model(run)
    with pytest.raises(CheckpointError, match="does not match its sha256"):
        _resumed(verdict_shards, run, True)


def test_tokenizer_that_does_not_fit_the_embedding_fails_at_load(finished_run, tmp_path):
    from gptcourse.serve import load_for_serving

    run = _copy(finished_run, tmp_path)
    _edit_meta(run / "checkpoints" / "step_000004",
               lambda m: {**m, "tokenizer": {"name": "gpt2"}})  # 50,257 ids, 61 rows
    with pytest.raises(CheckpointError, match="has 50,257 tokens but the model's embedding"):
        load_model(run)
    with pytest.raises(CheckpointError, match="does not belong to these weights"):
        load_for_serving(run, device="cpu")
