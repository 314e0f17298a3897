"""Exercises of lesson 07, pretraining: the loss, perplexity, the learning-rate schedule, weight
decay groups, gradient accumulation, gradient clipping and a checkpoint round trip."""

from __future__ import annotations

import math
import os
import tempfile

import torch
import torch.nn.functional as F
from torch import nn

from ..model import GPT, GPTConfig
from ..train import lr_at, optimizer_groups
from . import Case, Task, as_number, close, register, scalar

# -- references: the library's pieces ---------------------------------------------------------


def _token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # GPT.forward's cross-entropy (float32, ignore_index -100), one value per position
    B, T, V = logits.shape
    return F.cross_entropy(logits.float().reshape(-1, V), targets.reshape(-1).long(), ignore_index=-100,
                           reduction="none").view(B, T)


def _corpus_perplexity(batches) -> float:
    # what Trainer.evaluate does: total nats over total scored tokens, then exp
    nats, tokens = 0.0, 0
    for losses, targets in batches:
        keep = targets != -100
        nats += float(losses.double()[keep].sum())
        tokens += int(keep.sum())
    return math.exp(nats / tokens)


def _lr_at(step: int, lr: float, warmup_steps: int, decay_steps: int, min_lr: float) -> float:
    return lr_at(step, lr, warmup_steps, decay_steps, min_lr, schedule="cosine")


def _decay_split(model: nn.Module) -> tuple[list[str], list[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = optimizer_groups(model, 0.1)
    return [names[id(p)] for p in decay["params"]], [names[id(p)] for p in no_decay["params"]]


def _train_steps(model: GPT, optimizer: torch.optim.Optimizer, steps, max_norm: float):
    # one big batch per step (the micro-batches concatenated): what accumulation must reproduce
    log = []
    for micro_batches in steps:
        x = torch.cat([xb for xb, _ in micro_batches])
        y = torch.cat([yb for _, yb in micro_batches])
        _, loss = model(x, y)
        loss.backward()
        norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        log.append((loss.item(), float(norm)))
    return log


def _clip_grad_norm(grads: list[torch.Tensor], max_norm: float):
    params = [nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    norm = nn.utils.clip_grad_norm_(params, max_norm)
    return [p.grad for p in params], float(norm)


def _checkpoint_round_trip(folder: str, model: GPT, optimizer, step: int, new_model: GPT, new_optimizer):
    # the library's layout: weights in safetensors, the rest (optimizer, step) with torch.save
    from safetensors.torch import load_model, save_model

    save_model(model, f"{folder}/reference.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "step": step}, f"{folder}/reference.pt")
    load_model(new_model, f"{folder}/reference.safetensors")
    state = torch.load(f"{folder}/reference.pt", weights_only=True)
    new_optimizer.load_state_dict(state["optimizer"])
    return new_model, new_optimizer, state["step"]


# -- comparisons ---------------------------------------------------------------------------


_number = as_number
_scalar = scalar


def _names(expected, got):
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return "expected a pair (decay_names, no_decay_names)"
    for label, e, g in zip(("decay_names", "no_decay_names"), expected, got):
        if not isinstance(g, (list, tuple)) or not all(isinstance(n, str) for n in g):
            return f"{label} must be a list of parameter names (strings)"
        if list(g) != list(e):
            missing, extra = [n for n in e if n not in g], [n for n in g if n not in e]
            if missing or extra:
                return f"{label}: missing {missing}, unexpected {extra}"
            return f"{label}: the right names in the wrong order (keep the order of named_parameters())"
    return None


def _log(expected, got):
    if not isinstance(got, (list, tuple)) or len(got) != len(expected):
        return f"expected a list of {len(expected)} (loss, grad_norm) pairs, got {type(got).__name__}" + (
            f" of length {len(got)}" if isinstance(got, (list, tuple)) else "")
    for k, (e, g) in enumerate(zip(expected, got)):
        if not isinstance(g, (list, tuple)) or len(g) != 2:
            return f"step {k}: expected a pair (loss, grad_norm), got {_short_type(g)}"
        for what, ev, gv in (("loss", e[0], g[0]), ("grad_norm", e[1], g[1])):
            v = _number(gv, f" for the {what}")
            if isinstance(v, str):
                return f"step {k}: {v}"
            if not math.isclose(v, ev, rel_tol=1e-4, abs_tol=1e-6):
                return f"step {k}: {what} {v:.6g} instead of {ev:.6g} (relative tolerance 1e-4)"
    return None


def _short_type(x) -> str:
    return type(x).__name__


_grads_close = close(1e-6, 1e-5)


def _clipped(expected, got):
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return "expected a pair (clipped_grads, total_norm)"
    grads, norm = got
    if not isinstance(grads, (list, tuple)) or len(grads) != len(expected[0]):
        return f"clipped_grads must be a list of {len(expected[0])} tensors"
    v = _number(norm, " for total_norm")
    if isinstance(v, str):
        return v
    if not math.isclose(v, expected[1], rel_tol=1e-5, abs_tol=1e-7):
        return f"total_norm {v:.7g} instead of {expected[1]:.7g}"
    for k, (e, g) in enumerate(zip(expected[0], grads)):
        reason = _grads_close(e, g)
        if reason:
            return f"clipped_grads[{k}]: {reason}"
    return None


def _continue_one_step(model: GPT, optimizer) -> None:
    g = torch.Generator().manual_seed(77)
    V, T = model.config.vocab_size, model.config.block_size
    x, y = torch.randint(V, (3, T), generator=g), torch.randint(V, (3, T), generator=g)
    _, loss = model(x, y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _round_trip(expected, got):
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        return "expected a tuple (new_model, new_optimizer, step)"
    model, opt, step = got
    if not isinstance(model, GPT) or not isinstance(opt, torch.optim.Optimizer):
        return "return the new_model and new_optimizer you were given, with the checkpoint loaded into them"
    if isinstance(step, torch.Tensor) and step.numel() == 1:
        step = step.item()
    if isinstance(step, bool) or not isinstance(step, int) or step != expected[2]:
        return f"step {step!r} instead of {expected[2]}"
    e_model, e_opt, _ = expected
    for (name, e), g in zip(e_model.state_dict().items(), model.state_dict().values()):
        if not torch.equal(e, g):
            return f"after loading, weight {name} differs from the saved model"
    e_lr = [grp["lr"] for grp in e_opt.param_groups]
    g_lr = [grp["lr"] for grp in opt.param_groups]
    if e_lr != g_lr:
        return f"after loading, the optimizer's learning rates are {g_lr} instead of {e_lr}"
    _continue_one_step(e_model, e_opt)
    _continue_one_step(model, opt)
    for (name, e), g in zip(e_model.state_dict().items(), model.state_dict().values()):
        if not torch.equal(e, g):
            diff = float((e - g).abs().max())
            return (f"one more training step gives different weights ({name}: max abs diff {diff:.3g}): "
                    "was the optimizer's state (Adam's moments and step count) saved and loaded?")
    return None


# -- cases -----------------------------------------------------------------------------------


def _cases_token_losses():
    g = torch.Generator().manual_seed(71)
    cases = [Case((torch.zeros(1, 3, 8), torch.tensor([[0, 5, 7]])), label="uniform logits: ln(8) everywhere")]
    for B, T, V in [(1, 1, 2), (2, 3, 5), (4, 8, 16), (2, 16, 100), (3, 5, 7), (1, 32, 50), (2, 4, 1000)]:
        cases.append(Case((2 * torch.randn(B, T, V, generator=g), torch.randint(V, (B, T), generator=g)),
                          label=f"B={B}, T={T}, V={V}"))
    t = torch.randint(9, (3, 6), generator=g)
    t[0, :2] = -100
    t[2, 3:] = -100
    cases.append(Case((torch.randn(3, 6, 9, generator=g), t), label="some targets are -100: their loss is 0"))
    cases.append(Case((torch.randn(2, 4, 6, generator=g), torch.full((2, 4), -100)),
                      label="every target is -100: all zeros"))
    cases.append(Case((1000 * torch.randn(2, 4, 6, generator=g), torch.randint(6, (2, 4), generator=g)),
                      label="huge logits: subtract the max before exp (or use log_softmax)"))
    return cases


def _cases_perplexity():
    g = torch.Generator().manual_seed(72)
    cases = [Case(([(torch.full((1, 4), math.log(50.0)), torch.ones(1, 4, dtype=torch.long))],),
                  label="every loss is ln 50: perplexity 50"),
             Case(([(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))],), label="zero loss: perplexity 1")]
    # batches with very different numbers of scored tokens: a mean of the batch means is wrong
    small = (torch.full((1, 2), 0.5), torch.ones(1, 2, dtype=torch.long))
    big = (torch.full((4, 8), 2.0), torch.ones(4, 8, dtype=torch.long))
    cases.append(Case(([small, big],), label="2 tokens at loss 0.5 and 32 at loss 2.0: weight by tokens"))
    for n, (B, T) in enumerate([(2, 8), (3, 5), (1, 16), (4, 4), (2, 32)]):
        batches = []
        for _ in range(n + 1):
            losses = 4 * torch.rand(B, T, generator=g)
            targets = torch.randint(50, (B, T), generator=g)
            targets[torch.rand(B, T, generator=g) < 0.3] = -100
            losses[targets == -100] = 99.0  # garbage where nothing is scored
            targets.view(-1)[0] = 7          # at least one scored token per batch
            batches.append((losses, targets))
        cases.append(Case((batches,), label=f"{n + 1} batch(es) of {B}x{T}, ~30% of targets -100 (losses 99 there)"))
    one = (torch.tensor([[0.25, 7.0]]), torch.tensor([[3, -100]]))
    cases.append(Case(([one],), label="a single scored token of loss 0.25"))
    empty = (torch.full((2, 3), 5.0), torch.full((2, 3), -100))
    cases.append(Case(([empty, (torch.full((1, 4), 1.0), torch.ones(1, 4, dtype=torch.long))],),
                      label="a batch with every target -100 contributes nothing"))
    return cases


def _cases_lr():
    cases = []
    settings = [(1e-3, 10, 100, 1e-4), (6e-4, 0, 50, 6e-5), (3e-3, 5, 5, 3e-4), (1.0, 20, 60, 0.0),
                (2e-3, 100, 1500, 2e-4), (5e-4, 3, 40, 5e-4)]
    for lr, wu, dec, mn in settings:
        steps = sorted({0, 1, max(wu - 1, 0), wu, wu + 1, (wu + dec) // 2, dec - 1, dec, dec + 1, 2 * dec + 7,
                        *range(0, dec + 10, max(1, dec // 6))})
        for s in steps:
            cases.append(Case((s, lr, wu, dec, mn), label=f"step {s}, lr={lr}, warmup_steps={wu}, "
                                                           f"decay_steps={dec}, min_lr={mn}"))
    return cases


def _gpt(seed: int, **kw) -> GPT:
    cfg = GPTConfig(**{"vocab_size": 23, "block_size": 8, "n_layer": 2, "n_head": 2, "n_embd": 8, **kw})
    with torch.random.fork_rng():  # leave the learner's random state alone
        torch.manual_seed(seed)
        return GPT(cfg)


def _cases_decay():
    frozen = _gpt(4)
    frozen.transformer.wpe.weight.requires_grad_(False)
    frozen.transformer.h[0].ln_1.bias.requires_grad_(False)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        other = nn.Sequential(nn.Embedding(10, 4), nn.Conv1d(4, 6, 3), nn.LayerNorm(6), nn.Linear(6, 2),
                              nn.Linear(2, 2, bias=False))
        other.register_parameter("scale", nn.Parameter(torch.ones(())))
    with torch.random.fork_rng():
        torch.manual_seed(7)
        lin = nn.Linear(3, 4)
        frozen_all = _gpt(8, n_layer=1)
        for n, p in frozen_all.named_parameters():
            p.requires_grad_(n.endswith("ln_f.weight") or n.endswith("c_fc.weight"))
        mixed = nn.ModuleDict({"emb": nn.Embedding(5, 3), "norm": nn.LayerNorm(3), "head": nn.Linear(3, 5)})
        mixed.register_buffer("mask", torch.ones(3, 3))  # a buffer is not a parameter
    return [
        Case((_gpt(1),), label="a GPT with learned positions and tied head"),
        Case((_gpt(9, n_layer=1, n_head=1),), label="a one-layer GPT"),
        Case((_gpt(11, pos_encoding="rope", bias=False, tie_weights=False),), label="rope, no biases, untied head"),
        Case((lin,), label="a single nn.Linear: weight decays, bias does not"),
        Case((frozen_all,), label="only ln_f.weight and the c_fc weights are trainable"),
        Case((mixed,), label="a ModuleDict with a buffer (buffers are not parameters)"),
        Case((_gpt(2, pos_encoding="rope"),), label="rotary positions: no wpe"),
        Case((_gpt(3, tie_weights=False),), label="untied head: lm_head.weight is its own matrix"),
        Case((_gpt(6, bias=False),), label="bias=False"),
        Case((frozen,), label="wpe and one bias frozen (requires_grad=False): leave them out"),
        Case((other,), label="not a GPT: embedding, Conv1d (3-D weight), LayerNorm, linears, a 0-D scale"),
    ]


def _batches(g, V, T, n_micro, micro):
    return [(torch.randint(V, (micro, T), generator=g), torch.randint(V, (micro, T), generator=g))
            for _ in range(n_micro)]


def _cases_train_steps():
    g = torch.Generator().manual_seed(75)
    cases = []
    for n, (opt_name, lr, n_steps, n_micro, micro, max_norm) in enumerate([
        ("SGD", 0.5, 2, 2, 2, 100.0), ("SGD", 1.0, 2, 4, 1, 1e3), ("SGD", 0.3, 2, 3, 2, 0.5),
        ("AdamW", 1e-2, 2, 2, 3, 1.0), ("AdamW", 3e-2, 2, 4, 2, 0.1), ("AdamW", 1e-2, 2, 1, 4, 1.0),
        ("SGD", 0.5, 3, 2, 1, 100.0), ("AdamW", 1e-2, 3, 3, 1, 100.0), ("SGD", 2.0, 2, 2, 2, 0.05),
        ("AdamW", 5e-3, 1, 2, 2, 1.0),
    ]):
        model = _gpt(10 + n, n_layer=1 if n >= 6 else 2)
        opt = (torch.optim.SGD(model.parameters(), lr=lr) if opt_name == "SGD"
               else torch.optim.AdamW(optimizer_groups(model, 0.1), lr=lr, betas=(0.9, 0.95)))
        steps = [_batches(g, 23, 8, n_micro, micro) for _ in range(n_steps)]
        cases.append(Case((model, opt, steps, max_norm),
                          label=f"{opt_name} lr={lr}: {n_steps} steps of {n_micro} micro-batches of {micro}, "
                                f"max_norm={max_norm}"))
    return cases


def _cases_clip():
    g = torch.Generator().manual_seed(76)
    cases = [Case(([torch.tensor([3.0, 4.0])], 1.0), label="one gradient of norm 5, max_norm 1: scale by ~1/5"),
             Case(([torch.tensor([3.0]), torch.tensor([[4.0]])], 10.0), label="norm 5 below max_norm 10: unchanged"),
             Case(([torch.zeros(3), torch.zeros(2, 2)], 1.0), label="all zero: unchanged, norm 0")]
    for shapes, max_norm, scale in [([(4, 4), (4,)], 1.0, 1.0), ([(8, 3), (3,), (3, 2, 2)], 0.5, 0.1),
                                    ([(16, 16)], 100.0, 1.0), ([(5,), (5,), (5,)], 0.01, 3.0),
                                    ([(32, 8), (8,), (8, 32), (32,)], 2.0, 0.05), ([(2, 3, 4)], 1.0, 10.0),
                                    ([(1,)], 0.1, 1.0)]:
        grads = [scale * torch.randn(*s, generator=g) for s in shapes]
        cases.append(Case((grads, max_norm), label=f"shapes {shapes}, max_norm {max_norm}"))
    return cases


_TMP: tempfile.TemporaryDirectory | None = None


def _cases_round_trip():
    global _TMP
    if _TMP is None:  # removed when the interpreter exits
        _TMP = tempfile.TemporaryDirectory(prefix="gptcourse-7.7-")
    cases = []
    for n, (kw, trained_steps, lr) in enumerate([
        ({}, 2, 3e-4), ({"pos_encoding": "rope"}, 3, 1e-4), ({"tie_weights": False}, 1, 5e-4), ({}, 0, 2e-4),
        ({"n_layer": 1}, 1, 1e-3), ({"bias": False}, 2, 6e-4), ({"n_layer": 1, "n_head": 1}, 4, 3e-5),
        ({"n_layer": 1, "pos_encoding": "rope", "tie_weights": False}, 2, 2e-4), ({"n_layer": 1}, 3, 0.0),
        ({"n_embd": 16, "n_layer": 1}, 1, 1e-4),
    ]):
        model = _gpt(20 + n, **kw)
        opt = torch.optim.AdamW(optimizer_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.95))
        with torch.random.fork_rng():
            torch.manual_seed(30 + n)
            for _ in range(trained_steps):
                _continue_one_step(model, opt)
        for grp in opt.param_groups:  # the schedule's current value, as a Trainer leaves it
            grp["lr"] = lr
        new_model = _gpt(40 + n, **kw)
        new_opt = torch.optim.AdamW(optimizer_groups(new_model, 0.1), lr=1e-3, betas=(0.9, 0.95))
        folder = f"{_TMP.name}/case{n}"
        os.makedirs(folder, exist_ok=True)
        cases.append(Case((folder, model, opt, 100 * n + trained_steps, new_model, new_opt),
                          label=f"a GPT ({kw or 'default'}) after {trained_steps} AdamW steps, lr now {lr}"))
    return cases


for _task in [
    Task("7.1", "per-token cross-entropy", _token_losses, _cases_token_losses, compare=close(1e-5),
         hint="log-softmax stays stable if you subtract each row's maximum first; pick each target's log-"
              "probability and negate it; positions whose target is -100 get a loss of 0 (look one up safely, "
              "then zero it)"),
    Task("7.2", "perplexity of a corpus", _corpus_perplexity, _cases_perplexity, compare=_scalar(1e-5),
         hint="perplexity is exp of the mean loss per scored token over the whole corpus: add up losses and "
              "counts across batches, not the per-batch means"),
    Task("7.3", "warmup + cosine learning rate", _lr_at, _cases_lr, compare=_scalar(1e-9, 1e-15),
         hint="linear warmup that reaches lr at the end of warmup, then a half cosine from lr down to min_lr "
              "until decay_steps, then min_lr"),
    Task("7.4", "weight-decay parameter groups", _decay_split, _cases_decay, compare=_names,
         hint="matrices (2 or more dimensions) get weight decay, vectors (biases, LayerNorm gains) do not; frozen "
              "parameters go in neither list"),
    Task("7.5", "gradient accumulation", _train_steps, _cases_train_steps, compare=_log, pure=False,
         hint="scale each micro-batch's loss by the number of micro-batches so the gradients add up to the mean; "
              "after the last micro-batch clip, step and reset the gradients; log the step's mean loss and the "
              "norm before clipping"),
    Task("7.6", "global gradient-norm clipping", _clip_grad_norm, _cases_clip, compare=_clipped,
         hint="the global norm is over all gradients together (the square root of all squares summed); scale "
              "every gradient by the same factor, never above 1; return new tensors"),
    Task("7.7", "checkpoint round trip", _checkpoint_round_trip, _cases_round_trip, compare=_round_trip, pure=False,
         hint="a checkpoint is one file holding the model's and the optimizer's state dicts and the step; write "
              "it in folder, read it back, and load each state into the new objects"),
]:
    register(_task)
