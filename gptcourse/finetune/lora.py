"""LoRA: low-rank adapters on frozen linear layers (Hu et al., 2021), from scratch.

A fine-tuned weight is ``W + dW``. LoRA learns ``dW`` as a product of two thin matrices,
``dW = B @ A * (alpha / r)`` with ``A`` of shape (r, in) and ``B`` of shape (out, r), and keeps
``W`` frozen. Only ``r * (in + out)`` numbers per layer are trained instead of ``in * out``::

    y = x @ W.T + b  +  dropout(x) @ A.T @ B.T * (alpha / r)
        \\ frozen /     \\________ trainable, starts at 0 ________/

``A`` starts like an ``nn.Linear`` weight (Kaiming-uniform, as in the paper's code and PEFT)
and ``B`` at zero, so a freshly wrapped model computes exactly what it computed before. After
training, :meth:`LoRALinear.merge` folds ``B @ A * scaling`` into ``W``: inference then costs
nothing extra, and :meth:`LoRALinear.unmerge` takes it out again.

* :class:`LoRALinear` -- one wrapped ``nn.Linear``;
* :func:`apply_lora` -- wrap the matching linear layers of a model and freeze everything else;
* :func:`merge_lora` / :func:`unmerge_lora` -- fold the adapters in and out (``remove=True``
  replaces each wrapper by a plain merged ``nn.Linear``, e.g. before ``save_pretrained``);
* :func:`lora_state_dict` / :func:`load_lora_state_dict` -- only the adapters (kilobytes);
* :func:`trainable_parameters`, :func:`training_memory`, :func:`compare_memory` -- what LoRA saves.

**Which layers match** (``target_modules`` and ``train_extra``): a name without wildcards matches
a module whose dotted name *is* that name or *ends with* ``"." + name``, so ``"c_attn"`` matches
``transformer.h.0.attn.c_attn`` in every block, ``"attn.c_proj"`` only the attention's output
projection and ``"c_proj"`` both the attention's and the MLP's. A name with ``*``, ``?`` or ``[``
is a shell-style pattern (``fnmatch``) matched against the whole dotted name, e.g.
``"transformer.h.1.*"`` or ``"*.h.[01].mlp.c_fc"``.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from .. import validate

__all__ = [
    "DEFAULT_TARGETS",
    "LoRALinear",
    "apply_lora",
    "compare_memory",
    "load_lora_state_dict",
    "lora_layers",
    "lora_state_dict",
    "match_modules",
    "merge_lora",
    "trainable_parameters",
    "training_memory",
    "unmerge_lora",
]

# every linear layer inside GPT's blocks: attention in/out and the MLP's two layers
DEFAULT_TARGETS: tuple[str, ...] = ("c_attn", "c_proj", "c_fc")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update ``B @ A * (alpha / r)``.

    >>> layer = LoRALinear(nn.Linear(64, 192), r=8, alpha=16)
    >>> layer.A.shape, layer.B.shape
    (torch.Size([8, 64]), torch.Size([192, 8]))
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        r = _check_hyper(r, alpha, dropout)
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.r, self.alpha = r, float(alpha)
        self.scaling = self.alpha / r
        w = base.weight
        self.A = nn.Parameter(torch.empty(r, base.in_features, device=w.device, dtype=w.dtype))
        self.B = nn.Parameter(torch.zeros(base.out_features, r, device=w.device, dtype=w.dtype))
        # the same init as nn.Linear's weight (and PEFT's lora_A): Kaiming-uniform, a=sqrt(5)
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The base weight (merged or not); present so code that reads ``.weight`` still works."""
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def delta_weight(self) -> torch.Tensor:
        """``B @ A * scaling``: what training added to the base weight (out, in)."""
        return (self.B @ self.A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:  # the update is inside base.weight already
            return y
        return y + (self.dropout(x) @ self.A.t() @ self.B.t()) * self.scaling

    @torch.no_grad()
    def merge(self) -> LoRALinear:
        """Fold the update into the base weight (``W += B @ A * scaling``). Idempotent.
        Unmerge before training again: a merged layer sends no gradient to ``A`` and ``B``."""
        if not self.merged:
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
            self.merged = True
        return self

    @torch.no_grad()
    def unmerge(self) -> LoRALinear:
        """Take the update out of the base weight again (``W -= B @ A * scaling``). Idempotent."""
        if self.merged:
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
            self.merged = False
        return self

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"alpha={self.alpha:g}, scaling={self.scaling:g}, merged={self.merged}")


def _check_hyper(r: int, alpha: float, dropout: float) -> int:
    """``r`` as an int, once the three are checked."""
    r = validate.integer("LoRA rank r", r, min=1)
    validate.number("LoRA alpha", alpha, min=0, min_open=True)
    validate.number("LoRA dropout", dropout, min=0, max=1, max_open=True)
    return r


# --------------------------------------------------------------------------------------
# Finding modules by name
# --------------------------------------------------------------------------------------


def _as_names(names: str | Iterable[str], what: str) -> list[str]:
    if isinstance(names, str):
        names = [names]
    names = list(names)
    if any(not isinstance(n, str) or not n for n in names):
        raise TypeError(f"{what} must be non-empty strings, got {names!r}")
    return names


def _matches(pattern: str, name: str) -> bool:
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return name == pattern or name.endswith("." + pattern)


def _linear_names(model: nn.Module) -> list[str]:
    """Dotted names of the plain linear layers (not the ones inside a LoRALinear)."""
    inside = {f"{n}.base" for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and n not in inside and n]


def match_modules(model: nn.Module, patterns: str | Iterable[str]) -> list[str]:
    """Dotted names of ``model``'s modules matched by ``patterns`` (see the module docstring for
    the rule), in model order. Every pattern must match something, else ``ValueError``."""
    patterns = _as_names(patterns, "module names")
    names = [n for n, _ in model.named_modules() if n]
    found, unmatched = [], []
    for p in patterns:
        hits = [n for n in names if _matches(p, n)]
        if not hits:
            unmatched.append(p)
        found.extend(hits)
    if unmatched:
        raise ValueError(f"{unmatched} match no module of the model; some module names: "
                         f"{_summarise(names)}")
    return sorted(set(found), key=names.index)


def _summarise(names: Sequence[str], limit: int = 12) -> str:
    """Names with the block index folded (``transformer.h.*.attn.c_attn``) so the list stays short."""
    import re

    folded = list(dict.fromkeys(re.sub(r"\.\d+\.", ".*.", n) for n in names))
    more = f" ... ({len(folded) - limit} more)" if len(folded) > limit else ""
    return ", ".join(folded[:limit]) + more


def _get_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


# --------------------------------------------------------------------------------------
# Applying, merging, saving
# --------------------------------------------------------------------------------------


def apply_lora(model: nn.Module, target_modules: str | Iterable[str] = DEFAULT_TARGETS, r: int = 8,
               alpha: float = 16.0, dropout: float = 0.0,
               train_extra: str | Iterable[str] = ()) -> nn.Module:
    """Replace the ``nn.Linear`` layers named by ``target_modules`` with :class:`LoRALinear`
    (in place) and freeze every other parameter, except those of the modules named in
    ``train_extra`` (e.g. ``"head"``, a classification head), which stay trainable.

    Names follow the rule of the module docstring. A target that matches no linear layer is a
    ``ValueError`` listing the linear layers there are; so is a linear layer whose weight is
    tied to another module (GPT's ``lm_head`` shares ``wte``: merging would change both).
    Returns ``model``; :func:`trainable_parameters` counts what is left to train.
    """
    _check_hyper(r, alpha, dropout)
    targets = _as_names(target_modules, "target_modules")
    if not targets:
        raise ValueError("target_modules is empty; name at least one linear layer, e.g. 'c_attn'")
    linears = _linear_names(model)
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    chosen, unmatched = [], []
    for t in targets:
        again = [n for n in wrapped if _matches(t, n)]
        if again:
            raise ValueError(f"{again[:3]} already have LoRA adapters; merge_lora(model, remove=True) "
                             "first to apply LoRA again")
        hits = [n for n in linears if _matches(t, n)]
        if not hits:
            unmatched.append(t)
        chosen.extend(hits)
    if unmatched:
        raise ValueError(
            f"LoRA target(s) {unmatched} match no nn.Linear of the model. Linear layers: "
            f"{_summarise(linears)}. A plain name matches a whole name or its last parts "
            "('c_attn', 'attn.c_proj'); use * for patterns ('transformer.h.1.*')")
    chosen = sorted(set(chosen), key=linears.index)
    extra = match_modules(model, train_extra) if _as_names(train_extra, "train_extra") else []

    owners: dict[int, list[str]] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for p_name, p in module.named_parameters(recurse=False, remove_duplicate=False):
            owners.setdefault(id(p), []).append(f"{mod_name}.{p_name}" if mod_name else p_name)
    for name in chosen:
        weight = model.get_submodule(name).weight
        others = [o for o in owners.get(id(weight), []) if o != f"{name}.weight"]
        if others:
            raise ValueError(f"{name}.weight is tied to {others[0]}; merging LoRA into it would "
                             "change both. Leave it out of target_modules")

    for p in model.parameters():
        p.requires_grad_(False)
    for name in chosen:
        parent, child = _get_parent(model, name)
        setattr(parent, child, LoRALinear(getattr(parent, child), r=r, alpha=alpha, dropout=dropout))
    for layer in lora_layers(model).values():
        layer.A.requires_grad_(True)
        layer.B.requires_grad_(True)
    for name in extra:
        for p in model.get_submodule(name).parameters():
            p.requires_grad_(True)
    return model


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The model's :class:`LoRALinear` layers by dotted name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def _require_lora(model: nn.Module) -> dict[str, LoRALinear]:
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers; call apply_lora(model, ...) first")
    return layers


def merge_lora(model: nn.Module, remove: bool = False) -> nn.Module:
    """Fold every adapter into its base weight (in place). ``remove=True`` also replaces each
    :class:`LoRALinear` by its plain merged ``nn.Linear`` (still frozen), so the model has its
    original structure and state-dict keys again (``save_pretrained`` works)."""
    for name, layer in _require_lora(model).items():
        layer.merge()
        if remove:
            parent, child = _get_parent(model, name)
            setattr(parent, child, layer.base)
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Take every adapter back out of its base weight (in place), e.g. to train further."""
    for layer in _require_lora(model).values():
        layer.unmerge()
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapters: ``{"<layer>.A": ..., "<layer>.B": ...}`` (detached copies)."""
    out = {}
    for name, layer in _require_lora(model).items():
        out[f"{name}.A"] = layer.A.detach().clone()
        out[f"{name}.B"] = layer.B.detach().clone()
    return out


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy adapters saved by :func:`lora_state_dict` into a model with the same LoRA layers
    (apply_lora with the same targets and r first). Layers must be unmerged."""
    layers = _require_lora(model)
    want = {f"{n}.{k}" for n in layers for k in ("A", "B")}
    missing, unexpected = sorted(want - set(state)), sorted(set(state) - want)
    if missing or unexpected:
        raise ValueError(f"LoRA state does not match the model: missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}; were the same target_modules used?")
    with torch.no_grad():
        for name, layer in layers.items():
            if layer.merged:
                raise ValueError(f"{name} is merged; unmerge_lora(model) before loading adapters")
            for key in ("A", "B"):
                param, value = getattr(layer, key), state[f"{name}.{key}"]
                if value.shape != param.shape:
                    raise ValueError(f"{name}.{key}: saved shape {tuple(value.shape)}, model has "
                                     f"{tuple(param.shape)} (a different r?)")
                param.copy_(value)


# --------------------------------------------------------------------------------------
# Counting parameters and memory
# --------------------------------------------------------------------------------------


def _unique(model: nn.Module) -> list[nn.Parameter]:
    return list({id(p): p for p in model.parameters()}.values())  # tied weights once


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts; tied weights count once."""
    params = _unique(model)
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def training_memory(model: nn.Module) -> dict[str, int]:
    """Bytes a training step keeps beyond activations, for the model as it is now: all
    weights, one gradient per trainable weight and AdamW's two moments (``exp_avg``,
    ``exp_avg_sq``, in the parameter's dtype). Activations are left out (they depend on the
    batch and grow with frozen layers too)."""
    params = _unique(model)
    trainable = [p for p in params if p.requires_grad]
    weights = sum(p.numel() * p.element_size() for p in params)
    grads = sum(p.numel() * p.element_size() for p in trainable)
    return {"parameters": sum(p.numel() for p in params),
            "trainable": sum(p.numel() for p in trainable),
            "weights": weights, "gradients": grads, "optimizer": 2 * grads,
            "total": weights + 3 * grads}


def compare_memory(model: nn.Module, target_modules: str | Iterable[str] = DEFAULT_TARGETS,
                   r: int = 8) -> dict[str, dict[str, int]]:
    """``{"full": ..., "lora": ...}``: :func:`training_memory` figures for training every
    parameter against training rank-``r`` adapters on ``target_modules``, worked out from the
    shapes alone (``model`` is not changed)."""
    _check_hyper(r, 1.0, 0.0)
    params = _unique(model)
    size = params[0].element_size() if params else 4
    total = sum(p.numel() for p in params)
    weights = sum(p.numel() * p.element_size() for p in params)
    targets = _as_names(target_modules, "target_modules")
    names = [n for n in _linear_names(model) if any(_matches(t, n) for t in targets)]
    if not names:
        raise ValueError(f"{targets} match no nn.Linear; linear layers: {_summarise(_linear_names(model))}")
    adapters = sum(r * (m.in_features + m.out_features) for m in map(model.get_submodule, names))

    def row(trainable: int, extra_weights: int) -> dict[str, int]:
        grads = trainable * size
        return {"parameters": total + extra_weights // size, "trainable": trainable,
                "weights": weights + extra_weights, "gradients": grads, "optimizer": 2 * grads,
                "total": weights + extra_weights + 3 * grads}

    return {"full": row(total, 0), "lora": row(adapters, adapters * size)}
