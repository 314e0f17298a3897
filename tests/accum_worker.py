"""Helpers for tests/test_accumulation.py: a batch of SFT-like examples whose numbers of scored
targets differ widely, and the gradient of one ``Trainer`` step on it. Run under ``torchrun``
it writes rank 0's (all-reduced) gradient to the file given as its argument."""

from __future__ import annotations

import sys

import numpy as np
import torch

from gptcourse.model import GPTConfig
from gptcourse.train import TrainConfig, Trainer

VOCAB, T = 64, 16
#: scored targets per example (the rest are -100): 1 to 16, and two with nothing to learn
SCORED = [1, 16, 2, 9, 3, 15, 0, 0]
GLOBAL_BATCH = len(SCORED)
CONFIG = GPTConfig(vocab_size=VOCAB, block_size=T, n_layer=2, n_head=2, n_embd=32)


class ScoredExamples:
    """The Trainer's data interface over fixed examples: step ``s`` takes all of them in order."""

    path = None
    entropy_per_token = None
    vocab_size = VOCAB

    def __init__(self, seed: int = 0, scored: list[int] | None = None) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(0, VOCAB, (GLOBAL_BATCH, T), generator=g)
        self.y = torch.randint(0, VOCAB, (GLOBAL_BATCH, T), generator=g)
        for i, n in enumerate(SCORED if scored is None else scored):
            self.y[i, : T - n] = -100  # an SFT answer: only the last n targets are scored

    def random_offsets(self, n, block_size=None, *, seed, step):
        return np.arange(n) % GLOBAL_BATCH

    def windows(self, indices, block_size=None):
        idx = torch.as_tensor(np.asarray(indices))
        return self.x[idx], self.y[idx]


def step_gradients(grad_accum: int, batch_size: int, out_dir: str,
                   data: ScoredExamples | None = None) -> list[torch.Tensor]:
    """The gradient the optimizer receives in the first ``Trainer`` step (no clipping)."""
    config = TrainConfig(out_dir=out_dir, max_steps=1, batch_size=batch_size,
                         grad_accum=grad_accum, grad_clip=0.0, warmup_steps=0, progress=False,
                         plots=False, checkpoints=False, device="cpu", dtype="float32")
    trainer = Trainer(CONFIG, data or ScoredExamples(), None, config)
    seen: list[torch.Tensor] = []
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        seen[:] = [p.grad.detach().clone() for p in trainer.model.parameters()]
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    trainer.train_step()
    trainer.close()
    return seen


if __name__ == "__main__":  # torchrun --nproc_per_node=2 accum_worker.py OUT GRAD_ACCUM BATCH
    grads = step_gradients(int(sys.argv[2]), int(sys.argv[3]), str(sys.argv[1]) + ".run")
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(grads, sys.argv[1])
