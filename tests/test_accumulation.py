"""Gradient accumulation and DDP weight micro-batches by their scored targets.

SFT batches score different numbers of targets (prompts and padding are -100). The step's
gradient must be that of the mean loss over every scored target of the global batch -- what
``Trainer.evaluate`` computes -- whether the batch is one micro-batch, four, or split over two
gloo processes. Tolerance 1e-6 absolute (float32 sums in a different order).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from accum_worker import CONFIG, SCORED, ScoredExamples, T, step_gradients

from gptcourse.model import GPT

ATOL = 1e-6


def _reference_gradient() -> list[torch.Tensor]:
    """By hand: sum of token losses over the whole batch / number of scored targets."""
    torch.manual_seed(1337)  # the Trainer's seed: the same initial weights
    model = GPT(CONFIG)
    data = ScoredExamples()
    logits, _ = model(data.x)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), data.y.view(-1), ignore_index=-100,
                           reduction="sum") / sum(SCORED)
    loss.backward()
    return [p.grad for p in model.parameters()]


def _assert_close(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert len(got) == len(want)
    worst = max(float((g - w).abs().max()) for g, w in zip(got, want))
    assert worst <= ATOL, f"gradients differ by up to {worst:.3g}"


@pytest.fixture(scope="module")
def reference():
    return _reference_gradient()


def test_one_micro_batch_is_the_token_mean_gradient(reference, tmp_path):
    _assert_close(step_gradients(1, 8, str(tmp_path)), reference)


def test_four_micro_batches_give_the_same_gradient(reference, tmp_path):
    # micro-batches score 17, 11, 18 and 0 targets: a mean of their means would differ
    _assert_close(step_gradients(4, 2, str(tmp_path)), reference)


def test_eight_micro_batches_with_empty_ones(reference, tmp_path):
    _assert_close(step_gradients(8, 1, str(tmp_path)), reference)


def test_a_mean_of_means_would_be_caught(reference):
    """The test's own power: weighting micro-batches equally gives a different gradient."""
    torch.manual_seed(1337)
    model = GPT(CONFIG)
    data = ScoredExamples()
    for m in range(4):
        x, y = data.x[2 * m:2 * m + 2], data.y[2 * m:2 * m + 2]
        _, loss = model(x, y)
        (loss / 4).backward()
    worst = max(float((p.grad - r).abs().max()) for p, r in zip(model.parameters(), reference))
    assert worst > 100 * ATOL


def test_every_token_scored_is_bit_identical_to_dividing_by_grad_accum(tmp_path):
    """Pretraining batches score every target: the weight is exactly 1/grad_accum."""
    data = ScoredExamples(scored=[T] * len(SCORED))
    torch.manual_seed(1337)
    model = GPT(CONFIG)
    for m in range(4):
        _, loss = model(data.x[2 * m:2 * m + 2], data.y[2 * m:2 * m + 2])
        (loss / 4).backward()
    got = step_gradients(4, 2, str(tmp_path), data=data)
    assert all(torch.equal(g, p.grad) for g, p in zip(got, model.parameters()))


def test_two_gloo_processes_give_the_same_gradient(reference, tmp_path):
    out = tmp_path / "grads.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = Path(__file__).with_name("accum_worker.py")
    # rank 0 scores 28 targets, rank 1 scores 18: DDP's plain average would be wrong
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(worker), str(out), "1", "4"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _assert_close(torch.load(out, weights_only=True), reference)
