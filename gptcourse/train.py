"""Pretraining: ``TrainConfig`` and ``Trainer``, from a laptop CPU to ``torchrun`` on many GPUs.

One optimizer step of :meth:`Trainer.fit` is

1. draw the step's global batch of random windows -- the offsets depend only on
   ``(seed, step)`` (:meth:`gptcourse.data.TokenShards.random_offsets`), so a resumed run sees
   the same batches, and under DDP each rank takes its own slice of the same global batch;
2. ``grad_accum`` micro-batches of forward + backward (mixed precision where it pays; DDP's
   gradient all-reduce only on the last one, ``no_sync`` before). Each micro-batch's mean loss
   is weighted by its share of the step's scored targets (those not -100, counted over every
   micro-batch and rank), so the gradient is that of the mean loss over all scored tokens of
   the global batch -- not a mean of per-batch means, which would over-weight a short SFT
   answer. When every token is scored (pretraining) the weight is exactly ``1 / grad_accum``,
   and results are bit-identical to dividing by ``grad_accum``;
3. stop on a NaN/inf loss (naming the step; no checkpoint is written after it);
4. clip the global gradient norm, set the learning rate (linear warmup, cosine decay), AdamW
   step (weight decay only on matrices, fused on CUDA).

Around it: evaluation on the validation split (loss, perplexity, distance to the entropy floor
when the data knows it), samples, a JSONL metrics log, loss/LR plots and checkpoints.

Checkpoints (``checkpoints/step_NNNNNN`` folders, written atomically, verified on every read)
and the rules for resuming a run, which ``Trainer(resume=...)`` and ``gptcourse train`` share,
are described in :mod:`gptcourse.checkpoints`, which holds the code that finds, verifies, loads
and prunes them; the Trainer saves and restores its own state with them.

Scale-out: launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the trainer joins
the process group (NCCL on GPUs, gloo on CPUs), wraps the model in DDP, and only rank 0 logs,
samples and saves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from . import validate
from .checkpoints import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    CheckpointWarning,
    checkpoint_names,
    find_checkpoint,
    list_checkpoints,
    load_model,
    load_weights,
    locate_checkpoint,
    prune_checkpoints,
    read_checkpoint_meta,
    remove_partial_saves,
    resolve_resume,
)
from .corpora import sha256_file
from .data import TokenShards
from .data.shards import write_atomic
from .model import GPT, GPTConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "CheckpointWarning",
    "Distributed",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "amp_dtype",
    "find_checkpoint",
    "list_checkpoints",
    "load_model",
    "lr_at",
    "optimizer_groups",
    "read_metrics",
]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything about a training run except the model's shape (that is :class:`GPTConfig`).

    ``batch_size`` is the micro-batch of one process; one optimizer step sees
    ``batch_size * grad_accum * world_size`` windows of ``block_size`` tokens.
    """

    out_dir: str = "runs/train"
    max_steps: int = 1000
    batch_size: int = 12
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float | None = None  # default lr / 10
    warmup_steps: int = 100
    decay_steps: int | None = None  # cosine reaches min_lr here; default max_steps
    lr_schedule: str = "cosine"  # cosine | linear | constant
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 turns clipping off
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    compile: bool = False
    device: str = "auto"
    seed: int = 1337
    eval_interval: int = 250
    eval_batches: int = 20  # 0: the whole validation split
    log_interval: int = 10
    checkpoint_interval: int = 0  # 0: at every evaluation and at the end
    keep_checkpoints: int = 2
    checkpoints: bool = True  # False: write none (sweeps and quick experiments)
    sample_interval: int = 0  # 0: no samples during training
    sample_tokens: int = 200
    sample_prompt: str = ""
    sample_temperature: float = 0.8
    sample_top_k: int | None = 40
    progress: bool = True
    plots: bool = True

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "eval_interval", "log_interval",
                     "keep_checkpoints", "sample_tokens"):
            setattr(self, name, validate.integer(name, getattr(self, name), min=1))
        for name in ("warmup_steps", "eval_batches", "checkpoint_interval", "sample_interval"):
            setattr(self, name, validate.integer(name, getattr(self, name), min=0))
        if self.decay_steps is not None:
            self.decay_steps = validate.integer("decay_steps", self.decay_steps, min=1)
        # numbers are checked, not converted: an int lr stays an int in to_dict()
        validate.number("lr", self.lr, min=0, min_open=True)
        for name in ("weight_decay", "eps", "grad_clip", "sample_temperature"):
            validate.number(name, getattr(self, name), min=0)
        for name in ("beta1", "beta2"):
            validate.number(name, getattr(self, name), min=0, max=1, max_open=True)
        if self.min_lr is not None and not 0 <= validate.number("min_lr", self.min_lr) <= self.lr:
            raise ValueError(f"min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        for name in ("compile", "checkpoints", "progress", "plots"):
            validate.flag(name, getattr(self, name))
        validate.choice("lr_schedule", self.lr_schedule, ("cosine", "linear", "constant"))
        validate.choice("dtype", self.dtype, ("auto", "float32", "bfloat16", "float16"))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict (e.g. a TOML table), naming any unknown key."""
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(values) - known)
        if bad:
            raise ValueError(f"unknown training settings {bad}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------
# The pieces: schedule, optimizer groups, precision, distributed setup
# --------------------------------------------------------------------------------------


def lr_at(step: int, lr: float, warmup_steps: int, decay_steps: int, min_lr: float,
          schedule: str = "cosine") -> float:
    """Learning rate of optimizer step ``step`` (0-based).

    Linear warmup ``lr * (step + 1) / warmup_steps`` for the first ``warmup_steps`` steps, then
    a decay from ``lr`` to ``min_lr`` ending at ``decay_steps`` (half a cosine, or a straight
    line), then ``min_lr``. ``constant`` keeps ``lr`` after the warmup.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    if step >= decay_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    if schedule == "linear":
        return lr - (lr - min_lr) * progress
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def optimizer_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: weight decay on matrices (>= 2-D: linear and embedding
    weights), none on biases and LayerNorm gains. Tied weights appear once."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def amp_dtype(device: str | torch.device, requested: str = "auto") -> torch.dtype:
    """The autocast dtype: bf16 on GPUs that support it, fp16 on older CUDA GPUs (T4, V100;
    with a GradScaler), fp32 on CPU and MPS unless asked otherwise."""
    kind = torch.device(device).type
    if requested != "auto":
        dtype = getattr(torch, requested)
        if kind == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise ValueError("this GPU has no bfloat16 support; use dtype float16 (or auto)")
        if kind == "cpu" and dtype == torch.float16:
            raise ValueError("float16 autocast is not supported for training on CPU; "
                             "use float32 or bfloat16")
        return dtype
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


@dataclass(frozen=True)
class Distributed:
    """Where this process sits in a ``torchrun`` job (rank 0 of 1 when run alone)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        """Read ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` (set by ``torchrun``)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world)

    def init(self, device: str) -> None:
        """Join the process group (NCCL for CUDA devices, gloo otherwise)."""
        if self.enabled and not dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            dist.init_process_group(backend=backend)

    def all_mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value /= self.world_size
        return value

    def all_sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value


def _resolve_device(name: str, ddp: Distributed) -> str:
    from . import profiles

    device = profiles.device() if name == "auto" else profiles.device(name)
    if device == "cuda" and ddp.enabled:
        device = f"cuda:{ddp.local_rank}"
    return device


# --------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (``path``: the file or its run folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line]


# --------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class Trainer:
    """Train a :class:`GPT` on :class:`TokenShards`.

    >>> trainer = Trainer(GPTConfig.preset("mini", vocab_size=ts.vocab_size), ts, val,
    ...                   TrainConfig(max_steps=500, out_dir="runs/mini"))   # doctest: +SKIP
    >>> trainer.fit()                                                       # doctest: +SKIP

    ``resume`` (the table in :mod:`gptcourse.checkpoints`; the CLI's flags mean the same):

    * ``False`` (default): a new run. If ``config.out_dir`` already holds checkpoints, ``fit()``
      and ``save_checkpoint()`` refuse (a :class:`CheckpointError` before anything is written)
      unless this trainer loads one of them with :meth:`load_checkpoint`;
    * ``True``: continue from the newest valid checkpoint in ``out_dir`` (``latest``, or when
      that is unusable the highest valid step, with a :class:`CheckpointWarning`); a new run
      when ``out_dir`` holds no checkpoints at all, an error when it holds only invalid ones;
    * ``"require"``: the same, but no checkpoint at all is an error too;
    * a path (``str`` or ``os.PathLike``): continue from that run, ``checkpoints`` folder or
      ``step_N`` checkpoint (checkpoints are then written to ``out_dir`` as usual).

    ``overwrite=True`` deletes ``out_dir/checkpoints`` first and starts a new run (with
    ``resume`` it is an error). ``resume_note`` says why an older checkpoint was used, if one
    was. ``model`` may be given to start from existing weights (e.g.
    :meth:`GPT.from_pretrained`); its config must equal ``model_config``.

    On CUDA the Trainer turns on TF32 for float32 matmuls and convolutions
    (``torch.backends.cuda.matmul.allow_tf32`` / ``cudnn.allow_tf32``, process-wide): on
    Ampere and newer GPUs fp32 matmuls then run on tensor cores with a 10-bit mantissa, as
    nanoGPT does. Set both back to False after creating the Trainer for strict fp32.
    """

    def __init__(self, model_config: GPTConfig, train_data: TokenShards,
                 val_data: TokenShards | None = None, config: TrainConfig | None = None, *,
                 tokenizer=None, model: GPT | None = None,
                 resume: bool | str | os.PathLike = False, overwrite: bool = False) -> None:
        self.config = config = config or TrainConfig()
        self.model_config = model_config
        if train_data.vocab_size > model_config.vocab_size:
            raise ValueError(
                f"the data uses {train_data.vocab_size:,} token ids but the model's vocab_size "
                f"is {model_config.vocab_size:,}; set vocab_size >= {train_data.vocab_size}"
            )
        self.train_data, self.val_data = train_data, val_data
        self.tokenizer = tokenizer
        self.ddp = Distributed.from_env()
        self.device = _resolve_device(config.device, self.ddp)
        self.ddp.init(self.device)
        self.device_type = torch.device(self.device).type
        if self.device_type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.dtype = amp_dtype(self.device, config.dtype)
        self.out_dir = Path(config.out_dir)

        # same initial weights on every rank, then a different dropout stream per rank
        torch.manual_seed(config.seed)
        if model is None:
            model = GPT(model_config)
        elif model.config != model_config:
            raise ValueError("model.config differs from model_config")
        self.model = model.to(self.device)
        torch.manual_seed(config.seed + self.ddp.rank)

        groups = optimizer_groups(self.model, config.weight_decay)
        extra = {"fused": True} if self.device_type == "cuda" else {}
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2),
                                           eps=config.eps, **extra)
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=self.dtype == torch.float16)
        self.step = 0
        self.tokens_seen = 0
        self.history: list[dict[str, Any]] = []
        self.last_checkpoint: Path | None = None
        self.resume_note: str | None = None
        self._foreign: list[str] = []  # another run's checkpoints in out_dir: never overwrite
        root = self.out_dir / "checkpoints"
        resume = False if resume is None else resume
        if overwrite:
            if resume is not False:
                raise ValueError("resume and overwrite exclude each other: overwrite starts a "
                                 "new run over the old checkpoints, resume continues them")
            if self.ddp.is_main:
                shutil.rmtree(root, ignore_errors=True)
        elif resume is not False:
            located = resolve_resume(resume, self.out_dir)
            if located is not None:
                folder, self.resume_note, meta = located
                if self.resume_note:
                    warnings.warn(self.resume_note, CheckpointWarning, stacklevel=2)
                self._restore(folder, meta)
        else:
            self._foreign = checkpoint_names(root)

        wrapped: nn.Module = self.model
        if config.compile:
            wrapped = torch.compile(wrapped)
        if self.ddp.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.ddp.local_rank] if self.device_type == "cuda" else None
            wrapped = DDP(wrapped, device_ids=ids)
        self.train_model = wrapped

    # ------------------------------------------------------------------ facts

    @property
    def global_batch(self) -> int:
        """Windows per optimizer step, over all ranks and micro-batches."""
        return self.config.batch_size * self.config.grad_accum * self.ddp.world_size

    @property
    def tokens_per_step(self) -> int:
        """Tokens in one optimizer step at full length (``tokens_seen`` counts the batches'
        real lengths, which padded fine-tuning batches may keep below ``block_size``)."""
        return self.global_batch * self.model_config.block_size

    def lr(self, step: int | None = None) -> float:
        c = self.config
        step = self.step if step is None else step
        min_lr = c.lr / 10 if c.min_lr is None else c.min_lr
        return lr_at(step, c.lr, c.warmup_steps, c.decay_steps or c.max_steps, min_lr,
                     c.lr_schedule)

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.device_type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    # ------------------------------------------------------------------ one step

    def micro_batches(self, step: int, on_device: bool = True
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's ``grad_accum`` micro-batches of optimizer step ``step`` (on the
        training device, or as the data returns them with ``on_device=False``).

        The global batch's offsets depend only on ``(seed, step)``; micro-batch ``m`` of rank
        ``r`` is slice ``r * grad_accum + m`` of it, so N processes with ``grad_accum=A`` see
        exactly the windows one process sees with ``grad_accum=N*A``.
        """
        c, T = self.config, self.model_config.block_size
        offsets = self.train_data.random_offsets(self.global_batch, T, seed=c.seed, step=step)
        for m in range(c.grad_accum):
            k = self.ddp.rank * c.grad_accum + m
            x, y = self.train_data.windows(offsets[k * c.batch_size:(k + 1) * c.batch_size], T)
            yield (self._to_device(x), self._to_device(y)) if on_device else (x, y)

    def train_step(self) -> dict[str, float]:
        """One optimizer step; returns its loss (the mean over the global batch's scored
        targets), lr and gradient norm."""
        c = self.config
        self.train_model.train()
        lr = self.lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        tokens = 0
        batches = list(self.micro_batches(self.step, on_device=False))
        # the step's loss is the mean over ALL its scored targets, on every micro-batch and rank
        scored = [int((y != -100).sum()) for _, y in batches]
        total = sum(scored)
        if self.ddp.enabled:
            total = int(self.ddp.all_sum(torch.tensor(total, dtype=torch.int64,
                                                      device=self.device)))
        for m, (x, y) in enumerate(batches):
            x, y = self._to_device(x), self._to_device(y)
            tokens += x.numel()  # padded SFT batches can be shorter than block_size
            last = m == c.grad_accum - 1
            sync = contextlib.nullcontext() if last or not self.ddp.enabled \
                else self.train_model.no_sync()
            with sync:
                with self._autocast():
                    _, loss = self.train_model(x, y)
                # DDP averages gradients over ranks, so weight n_m / total by world_size; the
                # divisor is exactly grad_accum when every token is scored (bit-identical)
                if scored[m]:
                    loss = loss / (total / (scored[m] * self.ddp.world_size))
                else:  # nothing to learn here, but DDP still needs this backward
                    loss = loss * 0.0
                self.scaler.scale(loss).backward()
            loss_sum += loss.detach().float()
        loss_value = float(self.ddp.all_mean(loss_sum))
        if not math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            where = (f"; the last good checkpoint is {self.last_checkpoint}"
                     if self.last_checkpoint else "; no checkpoint was written yet")
            raise TrainingDiverged(
                f"the training loss became {loss_value} at step {self.step} (lr {lr:.3g}){where}. "
                "Lower the learning rate, raise warmup_steps, or keep grad_clip on; with float16 "
                "try bfloat16 or float32."
            )
        grad_norm = float("nan")
        if c.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += tokens * self.ddp.world_size
        return {"loss": loss_value, "lr": lr, "grad_norm": grad_norm}

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self, data: TokenShards | None = None,
                 max_batches: int | None = None) -> dict[str, float]:
        """Mean cross-entropy per token over sequential windows of ``data`` (default: the
        validation split), its perplexity, and the entropy floor when the data knows it.

        ``max_batches`` (default ``config.eval_batches``; 0 = all) bounds the work; under DDP
        the ranks share the windows and the result is the global mean.
        """
        data = data if data is not None else self.val_data
        if data is None:
            raise ValueError("no validation data: pass val_data to Trainer or data= here")
        if max_batches is None:
            max_batches = self.config.eval_batches
        was_training = self.model.training
        self.model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        batches = data.sequential(self.model_config.block_size, self.config.batch_size,
                                  max_batches=max_batches or None, rank=self.ddp.rank,
                                  world_size=self.ddp.world_size)
        for x, y in batches:
            x, y = self._to_device(x), self._to_device(y)
            with self._autocast():
                _, loss = self.model(x, y)
            scored = (y != -100).sum()  # targets of -100 (padding, masked prompts) do not count
            total[0] += loss.double() * scored  # a batch with nothing scored has loss 0
            total[1] += scored
        self.model.train(was_training)
        total = self.ddp.all_sum(total)
        loss = float(total[0] / total[1])
        out = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": int(total[1])}
        floor = data.entropy_per_token
        if floor is not None:
            out["floor"] = floor
        return out

    @torch.no_grad()
    def sample(self, prompt: str | None = None, max_new_tokens: int | None = None,
               seed: int | None = None) -> str:
        """A sample from the model (needs a tokenizer); seeded, and leaves the global RNG alone."""
        from .generate import generate

        if self.tokenizer is None:
            raise ValueError("sampling needs a tokenizer: pass tokenizer= to Trainer")
        c = self.config
        prompt = c.sample_prompt if prompt is None else prompt
        ids = self.tokenizer.encode(prompt) if prompt else []
        eot = getattr(self.tokenizer, "eot_id", None)
        if not ids:
            ids = [eot if eot is not None else 0]
        gen = torch.Generator(device=self.device).manual_seed(c.seed if seed is None else seed)
        was_training = self.model.training
        self.model.eval()
        with self._autocast():
            out = generate(self.model, torch.tensor([ids], device=self.device),
                           max_new_tokens or c.sample_tokens, temperature=c.sample_temperature,
                           top_k=c.sample_top_k, stop=eot, generator=gen)
        self.model.train(was_training)
        new = [i for i in out[0, len(ids):].tolist() if i != eot]
        return prompt + self.tokenizer.decode(new)

    # ------------------------------------------------------------------ checkpoints

    def _tokenizer_record(self, folder: Path) -> dict[str, Any] | None:
        tok = self.tokenizer
        if tok is None:
            return None
        if hasattr(tok, "save"):
            tok.save(folder / "tokenizer.json")
            return {"name": "tokenizer.json"}
        return {"name": getattr(tok, "name", None) or "gpt2"}

    def _check_not_foreign(self) -> None:
        if self._foreign:
            shown = ", ".join(self._foreign[-3:])
            raise CheckpointError(
                f"{self.out_dir} already holds checkpoints of another run ({shown}); continue "
                "it with resume=True (CLI: --resume), start over with overwrite=True (CLI: "
                "--overwrite; deletes them), or choose another out_dir")

    def save_checkpoint(self, extra: dict[str, Any] | None = None) -> Path | None:
        """Write ``checkpoints/step_NNNNNN`` atomically and point ``latest`` at it (rank 0
        only; other ranks return None). Checkpoints beyond the newest ``keep_checkpoints``
        (by step; later steps of an abandoned branch are left alone) go, never ``latest``."""
        self._check_not_foreign()
        if not self.ddp.is_main:
            return None
        from safetensors.torch import save_model

        root = self.out_dir / "checkpoints"
        root.mkdir(parents=True, exist_ok=True)
        remove_partial_saves(root)  # left by a save that was killed
        name = f"step_{self.step:06d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
        try:
            save_model(self.model, str(tmp / "model.safetensors"))
            state = {
                "step": self.step,
                "tokens_seen": self.tokens_seen,
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            }
            torch.save(state, tmp / "trainer.pt")
            files = ["model.safetensors", "trainer.pt"]
            record = self._tokenizer_record(tmp)
            if record and record["name"] == "tokenizer.json":
                files.append("tokenizer.json")
            meta = {
                "format": CHECKPOINT_FORMAT,
                "step": self.step,
                "tokens_seen": self.tokens_seen,
                "model_config": self.model_config.to_dict(),
                "train_config": self.config.to_dict(),
                "world_size": self.ddp.world_size,
                "global_batch": self.global_batch,
                "tokenizer": record,
                "data": str(self.train_data.path) if self.train_data.path else None,
                "files": {f: sha256_file(tmp / f) for f in files},
                **(extra or {}),
            }
            (tmp / "checkpoint.json").write_text(json.dumps(meta, indent=2) + "\n",
                                                 encoding="utf-8")
            final = root / name
            if final.exists():  # the same step saved again (e.g. after a resume): replace it
                shutil.rmtree(final)
            tmp.chmod(0o777 & ~_umask())  # mkdtemp makes a private folder
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        write_atomic(root / "latest", name + "\n")
        self.last_checkpoint = final
        prune_checkpoints(root, self.config.keep_checkpoints, final)
        return final

    def load_checkpoint(self, path: str | os.PathLike) -> Path:
        """Restore weights, optimizer, grad scaler, RNG, step and tokens seen from ``path`` (a
        run folder, its ``checkpoints`` folder or one checkpoint; see :func:`find_checkpoint`).
        The model configuration must equal this trainer's."""
        folder, note, meta = locate_checkpoint(path)
        if note:
            warnings.warn(note, CheckpointWarning, stacklevel=2)
        return self._restore(folder, meta)

    def _restore(self, folder: Path, meta: dict[str, Any] | None) -> Path:
        meta = meta or read_checkpoint_meta(folder)
        if "trainer.pt" not in meta["files"]:
            raise CheckpointError(f"{folder} holds weights only (no trainer.pt) and cannot be "
                                  "resumed; start a new run from them with Trainer(model=...)")
        saved = meta["model_config"]
        wanted = self.model_config.to_dict()
        diff = {k: (saved.get(k), wanted.get(k)) for k in wanted if saved.get(k) != wanted.get(k)}
        if diff:
            listing = ", ".join(f"{k}: checkpoint {a!r} vs requested {b!r}"
                                for k, (a, b) in diff.items())
            raise CheckpointError(f"{folder} holds a different model ({listing}); use the same "
                                  "model settings, or a new out_dir to start afresh")
        load_weights(self.model, folder, str(self.device))
        try:
            state = torch.load(folder / "trainer.pt", map_location="cpu", weights_only=True)
            missing = [k for k in ("step", "tokens_seen", "optimizer", "scaler", "rng_cpu",
                                   "rng_cuda") if k not in state]
            if missing:
                raise ValueError(f"it has no {', '.join(missing)}")
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["rng_cpu"])
            if state["rng_cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["rng_cuda"])
        except Exception as err:  # a damaged file that still matched its checksum is unlikely
            why = " ".join(str(err).split())
            raise CheckpointError(f"{folder}/trainer.pt cannot be restored: {why:.300}") from err
        if self.ddp.rank:
            torch.manual_seed(self.config.seed + self.ddp.rank + state["step"])
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        self.last_checkpoint = folder
        root = self.out_dir / "checkpoints"
        same_run = root.is_dir() and folder.parent.resolve() == root.resolve()
        self._foreign = [] if same_run else checkpoint_names(root)
        return folder

    # ------------------------------------------------------------------ logging

    def _log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if not self.ddp.is_main:
            return
        with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _start_log(self) -> None:
        """Keep only the records up to the step we start from (a resumed run rewrites the
        steps after its checkpoint)."""
        self._check_not_foreign()  # before a new run's log replaces an old run's
        if not self.ddp.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(self.out_dir) if r.get("step", 0) <= self.step]
        if self.step == 0:
            kept = []
        with open(self.out_dir / "metrics.jsonl", "w", encoding="utf-8") as f:
            for r in kept:
                f.write(json.dumps(r) + "\n")
        run = {"model_config": self.model_config.to_dict(), "train_config": self.config.to_dict(),
               "world_size": self.ddp.world_size, "device": self.device,
               "dtype": str(self.dtype).removeprefix("torch."),
               "params": self.model.num_params(), "tokens_per_step": self.tokens_per_step}
        (self.out_dir / "run.json").write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")

    def plot(self) -> list[Path]:
        """Save ``loss.png`` (train and validation, with the entropy floor when known) and
        ``lr.png`` in the run folder; returns their paths."""
        from matplotlib.figure import Figure  # no pyplot: no backend, no global figure state

        from .plots import lines, loss_curve

        records = read_metrics(self.out_dir)
        train = [r for r in records if "loss" in r]
        evals = [r for r in records if "val_loss" in r]
        if not train:
            return []
        fig = Figure(figsize=(6, 3.8))
        ax = fig.subplots()
        loss_curve([r["step"] for r in train], [r["loss"] for r in train], ax=ax,
                   val_steps=[r["step"] for r in evals], val_losses=[r["val_loss"] for r in evals],
                   title=f"{self.out_dir.name}: loss", smooth=5 if len(train) >= 20 else 0)
        floors = [r["floor"] for r in evals if r.get("floor") is not None]
        if floors:
            ax.axhline(floors[-1], color="k", ls=":", lw=1, label="entropy floor")
            ax.legend(fontsize=8)
        fig.tight_layout()
        loss_png = self.out_dir / "loss.png"
        fig.savefig(loss_png, dpi=110)
        fig = Figure(figsize=(6, 3))
        ax = fig.subplots()
        lines([r["step"] for r in train], {"learning rate": [r["lr"] for r in train]}, ax=ax,
              xlabel="step", ylabel="lr", title="learning-rate schedule", marker=None)
        fig.tight_layout()
        lr_png = self.out_dir / "lr.png"
        fig.savefig(lr_png, dpi=110)
        return [loss_png, lr_png]

    # ------------------------------------------------------------------ the loop

    def _eval_record(self) -> dict[str, Any]:
        result = self.evaluate()
        record = {"step": self.step, "val_loss": result["loss"], "val_ppl": result["perplexity"]}
        if "floor" in result:
            record["floor"] = result["floor"]
        return record

    def fit(self, steps: int | None = None) -> list[dict[str, Any]]:
        """Train until ``config.max_steps`` (or for at most ``steps`` more steps), evaluating,
        sampling, logging and checkpointing on the way. Returns the metric records."""
        from tqdm.auto import tqdm

        c = self.config
        end = c.max_steps if steps is None else min(c.max_steps, self.step + steps)
        self._start_log()
        ckpt_every = c.checkpoint_interval or c.eval_interval
        if self.step == 0 and self.val_data is not None:
            self._log(self._eval_record())
        show = c.progress and self.ddp.is_main
        bar = tqdm(total=end, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not show, leave=True)
        t_last, tokens_last = time.perf_counter(), self.tokens_seen
        try:
            while self.step < end:
                out = self.train_step()
                if self.step % c.log_interval == 0 or self.step == end:
                    now = time.perf_counter()
                    tok_s = (self.tokens_seen - tokens_last) / max(now - t_last, 1e-9)
                    mfu = self.model.estimate_mfu(tok_s / self.ddp.world_size,
                                                  seq_len=self.model_config.block_size)
                    self._log({"step": self.step, "loss": out["loss"], "lr": out["lr"],
                               "grad_norm": out["grad_norm"], "tokens": self.tokens_seen,
                               "tokens_per_sec": tok_s, "mfu": mfu})
                    post = {"loss": f"{out['loss']:.4f}", "tok/s": f"{tok_s:,.0f}"}
                    if self.device_type == "cuda":
                        post["mfu"] = f"{100 * mfu:.1f}%"
                    bar.set_postfix(post, refresh=False)
                bar.update(self.step - bar.n)
                paused = time.perf_counter()
                finished = self.step == c.max_steps
                if self.val_data is not None and (self.step % c.eval_interval == 0 or finished):
                    record = self._eval_record()
                    self._log(record)
                    gap = (f", {record['val_loss'] - record['floor']:+.3f} above the floor"
                           if "floor" in record else "")
                    if show:
                        bar.write(f"step {self.step}: val loss {record['val_loss']:.4f}{gap}")
                if (c.sample_interval and self.tokenizer is not None and self.ddp.is_main
                        and self.step % c.sample_interval == 0):
                    text = self.sample()
                    self._log({"step": self.step, "sample": text})
                    if show:
                        bar.write(f"--- sample at step {self.step} ---\n{text}\n---")
                if c.checkpoints and (self.step % ckpt_every == 0 or self.step == end):
                    self.save_checkpoint()
                # evaluation and checkpoints do not count against tokens/s
                t_last += time.perf_counter() - paused
                if self.step % c.log_interval == 0:
                    t_last, tokens_last = time.perf_counter(), self.tokens_seen
        finally:
            bar.close()
        if c.plots and self.ddp.is_main:
            self.plot()
        return self.history

    def close(self) -> None:
        """Leave the process group (under torchrun): wait until every rank is done, drop the
        DDP wrapper (it holds the group), then destroy the group while the interpreter is fully
        alive. A group left for interpreter shutdown to clean up can abort a rank at exit
        (gloo's worker threads: "terminate called without an active exception", SIGABRT)."""
        if self.ddp.enabled and dist.is_initialized():
            import gc

            dist.barrier()
            self.train_model = self.model
            gc.collect()
            dist.destroy_process_group()

