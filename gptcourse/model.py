"""The GPT model: GPT-2's architecture in one readable file.

Token + position embeddings -> ``n_layer`` pre-LayerNorm Transformer blocks (causal
multi-head self-attention, then a GELU MLP, each on a residual path) -> final LayerNorm ->
a linear head over the vocabulary, its weight tied to the token embedding.

Names follow GPT-2 / nanoGPT (``wte``, ``wpe``, ``h``, ``ln_1``, ``attn.c_attn``, ``attn.c_proj``,
``mlp.c_fc``, ``mlp.c_proj``, ``ln_f``, ``lm_head``) so OpenAI's checkpoints load with a plain
mapping (:meth:`GPT.from_pretrained`) and ours save in the Hugging Face layout
(:meth:`GPT.save_pretrained`). Positions are learned (GPT-2) or rotary (``pos_encoding="rope"``,
RoFormer / Llama).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import validate

__all__ = [
    "GPTConfig",
    "CausalSelfAttention",
    "MLP",
    "Block",
    "GPT",
    "KVCache",
    "SlotKVCache",
    "PRESETS",
    "CONV1D_WEIGHTS",
]


@dataclass(frozen=True)
class GPTConfig:
    """Hyper-parameters of a GPT. Validated on creation; see :data:`PRESETS`."""

    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    tie_weights: bool = True
    pos_encoding: str = "learned"
    rope_base: float = 10000.0
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        # (frozen: object.__setattr__ stores the checked value, e.g. a numpy int as an int)
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            object.__setattr__(self, name, validate.integer(name, getattr(self, name), min=1))
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"e.g. n_embd={self.n_head * max(1, round(self.n_embd / self.n_head))}"
            )
        for name in ("bias", "tie_weights"):
            validate.flag(name, getattr(self, name))
        for name in ("rope_base", "layer_norm_eps"):
            validate.number(name, getattr(self, name), min=0, min_open=True)
        validate.number("dropout", self.dropout, min=0, max=1, max_open=True)
        validate.choice("pos_encoding", self.pos_encoding, ("learned", "rope"))
        if self.pos_encoding == "rope" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head size, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def preset(cls, name: str, **overrides) -> GPTConfig:
        """A named configuration (``gpt2``, ``gpt2-medium``, ..., ``tiny``, ``mini``, ``small``)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        known = {f.name for f in fields(cls)}
        bad = set(overrides) - known
        if bad:
            raise ValueError(f"unknown GPTConfig fields {sorted(bad)}; known: {sorted(known)}")
        return replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, GPTConfig] = {
    # OpenAI's GPT-2 family (vocab 50257, context 1024)
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    # small models for a CPU (set vocab_size to your tokenizer's)
    "tiny": GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=64),
    "mini": GPTConfig(vocab_size=512, block_size=128, n_layer=4, n_head=4, n_embd=128),
    "small": GPTConfig(vocab_size=4096, block_size=256, n_layer=6, n_head=6, n_embd=384),
}


# --------------------------------------------------------------------------------------
# KV cache and rotary positions
# --------------------------------------------------------------------------------------


class KVCache:
    """Keys and values of past positions, one pair of buffers per layer.

    Buffers are allocated once for ``max_len`` positions; ``length`` is how many are filled.
    :meth:`GPT.forward` appends the new positions' keys and values and advances ``length``.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int | None = None,
                 device=None, dtype=torch.float32) -> None:
        self.max_len = max_len or config.block_size
        shape = (batch_size, config.n_head, self.max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys/values for ``layer``; return all keys/values so far."""
        start, end = self.length, self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} were needed")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    @classmethod
    def over(cls, k: list[torch.Tensor], v: list[torch.Tensor]) -> KVCache:
        """An empty cache that writes into existing buffers, one (B, n_head, max_len,
        head_dim) pair per layer (e.g. one row of a :class:`SlotKVCache`)."""
        cache = cls.__new__(cls)
        cache.k, cache.v, cache.max_len, cache.length = list(k), list(v), k[0].size(2), 0
        return cache


class SlotKVCache:
    """A KV cache of ``max_batch`` rows ("slots"), each holding its own sequence.

    For continuous batching (:mod:`gptcourse.batching`): requests join and leave, so every
    row has its own filled length, ``lengths[row]``. A forward of ``B`` rows uses rows
    ``0..B-1``: each row's new tokens sit at that row's next positions, their keys/values are
    written there, and each row attends only to its own filled positions (a boolean mask; the
    rest of the row may hold stale keys of an earlier request). :meth:`row` is a batch-1
    :class:`KVCache` over one row's buffers, to prefill a prompt exactly as ``generate`` does.
    """

    def __init__(self, config: GPTConfig, max_batch: int, max_len: int | None = None,
                 device=None, dtype=torch.float32) -> None:
        self.max_len = max_len or config.block_size  # positions per row
        shape = (max_batch, config.n_head, self.max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.lengths = [0] * max_batch  # filled positions of each row (a free row: 0)
        self._pos: torch.Tensor | None = None  # (B, T) positions of the current forward's tokens
        self._mask: torch.Tensor | None = None  # (B, 1, T, S) which keys each query may see

    @property
    def length(self) -> int:
        """The longest row (what :meth:`GPT.forward` checks against ``block_size``)."""
        return max(self.lengths)

    def row(self, i: int) -> KVCache:
        """An empty batch-1 :class:`KVCache` writing into row ``i`` (set ``lengths[i]`` to its
        ``length`` afterwards)."""
        return KVCache.over([k[i:i + 1] for k in self.k], [v[i:i + 1] for v in self.v])

    def move(self, src: int, dst: int) -> None:
        """Copy row ``src`` (keys, values, length) into row ``dst`` and free ``src``."""
        if src == dst:
            return
        n = self.lengths[src]
        for buf in (*self.k, *self.v):
            buf[dst, :, :n] = buf[src, :, :n]
        self.lengths[dst], self.lengths[src] = n, 0

    def begin(self, B: int, T: int, device=None) -> torch.Tensor:
        """Positions (B, T) of ``T`` new tokens in each of rows ``0..B-1``; builds their mask
        and advances the rows' lengths (called by :meth:`GPT.forward`)."""
        past = torch.tensor(self.lengths[:B], device=device)
        self._pos = past[:, None] + torch.arange(T, device=device)
        keys = torch.arange(max(self.lengths[:B]) + T, device=device)
        self._mask = (keys <= self._pos[..., None])[:, None]  # query at p sees keys 0..p
        for i in range(B):
            self.lengths[i] += T
        return self._pos

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write new keys/values (B, n_head, T, head_dim) at each row's positions; return
        rows ``0..B-1`` up to the longest one (use with :attr:`mask`)."""
        B, S = k.size(0), self._mask.size(-1)
        if S > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {S} were needed")
        rows = torch.arange(B, device=k.device)[:, None]
        self.k[layer][rows, :, self._pos] = k.transpose(1, 2)  # indexed: (B, T, n_head, head_dim)
        self.v[layer][rows, :, self._pos] = v.transpose(1, 2)
        return self.k[layer][:B, :, :S], self.v[layer][:B, :, :S]

    @property
    def mask(self) -> torch.Tensor:
        """(B, 1, T, S) boolean: which keys each new token may attend to."""
        return self._mask


def rope_cache(head_dim: int, positions: torch.Tensor, base: float = 10000.0):
    """cos and sin tables for rotary embeddings at ``positions`` (shape (T, head_dim/2), or
    (B, T, head_dim/2) for positions of shape (B, T))."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    angles = positions.float()[..., None] * inv_freq
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (even, odd) pair of channels of ``x`` (B, nh, T, hd) by its position angle."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


# --------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each position sees only itself and the past.

    ``attn_impl="sdpa"`` uses ``F.scaled_dot_product_attention`` (flash / memory-efficient
    kernels on a GPU); ``"naive"`` writes the softmax(QK^T/sqrt(d))V out and can return the
    attention weights for plots.
    """

    def __init__(self, config: GPTConfig, attn_impl: str = "sdpa") -> None:
        super().__init__()
        if attn_impl not in ("sdpa", "naive"):
            raise ValueError(f"attn_impl must be 'sdpa' or 'naive', got {attn_impl!r}")
        self.config = config
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.attn_impl = attn_impl
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: KVCache | SlotKVCache | None = None, layer: int = 0,
                return_weights: bool = False):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        past = cache.length if cache is not None else 0
        if cache is not None:
            k, v = cache.update(layer, k, v)
        S = k.size(2)  # keys: past + new positions
        # rows of a slot cache sit at positions of their own: each has its own mask
        slot_mask = cache.mask if isinstance(cache, SlotKVCache) else None
        dropout = self.config.dropout if self.training else 0.0
        weights = None
        if self.attn_impl == "naive" or return_weights:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            mask = slot_mask if slot_mask is not None else (
                torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=past))
            att = att.masked_fill(~mask, float("-inf"))
            weights = F.softmax(att, dim=-1)
            y = self.attn_dropout(weights) @ v
        elif slot_mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=slot_mask, dropout_p=dropout)
        elif past == 0 or T == 1:
            # a fresh sequence: the usual causal mask; one new token: it may see everything
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=(past == 0 and T > 1))
        else:  # several new tokens after a cached past: queries sit at the end of the keys
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        y = self.resid_dropout(self.c_proj(y))
        return (y, weights) if return_weights else y


class MLP(nn.Module):
    """Position-wise feed-forward: Linear(C, 4C) -> GELU (tanh approximation) -> Linear(4C, C)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig, attn_impl: str = "sdpa") -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config, attn_impl)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, rope=None, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), rope=rope, cache=cache, layer=layer)
        return x + self.mlp(self.ln_2(x))


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------

#: Hugging Face GPT-2 stores these as Conv1D, i.e. weight of shape (in, out): transpose them.
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


class GPT(nn.Module):
    """A GPT language model. ``forward(idx, targets=None)`` returns ``(logits, loss)``."""

    def __init__(self, config: GPTConfig, attn_impl: str = "sdpa") -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        modules = dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, attn_impl) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias),
        )
        if config.pos_encoding == "learned":
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer) so the residual
        # stream's variance does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # -- forward --------------------------------------------------------------------------

    def _check_inputs(self, idx, targets, past: int) -> None:
        if not isinstance(idx, torch.Tensor):
            raise TypeError(f"idx must be a torch.Tensor of token ids, got {type(idx).__name__}")
        if idx.dim() != 2:
            hint = "; add a batch dimension with idx[None]" if idx.dim() == 1 else ""
            raise ValueError(f"idx must have shape (batch, time), got {tuple(idx.shape)}{hint}")
        if idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"idx must hold integer token ids, got dtype {idx.dtype}; use idx.long()")
        T = idx.size(1)
        if T == 0:
            raise ValueError("idx has no tokens (time dimension is 0)")
        if past + T > self.config.block_size:
            where = f" after {past} cached positions" if past else ""
            raise ValueError(
                f"block_size is {self.config.block_size} but the input has {past + T} tokens{where}; "
                "crop the input (idx[:, -block_size:]) or raise block_size"
            )
        if idx.device.type != "cuda":  # on CUDA this check would sync; the kernel asserts instead
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= self.config.vocab_size:
                bad = hi if hi >= self.config.vocab_size else lo
                raise ValueError(
                    f"token id {bad} is outside the vocabulary 0..{self.config.vocab_size - 1}; "
                    "does the tokenizer match the model's vocab_size?"
                )
        if targets is not None:
            if not isinstance(targets, torch.Tensor) or targets.shape != idx.shape:
                shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
                raise ValueError(f"targets must have the same shape as idx {tuple(idx.shape)}, got {shape}")

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | SlotKVCache | None = None):
        """Logits (B, T, vocab) for every position, and the mean cross-entropy if ``targets``
        are given (positions with target -100 are ignored; when all are, the loss is 0 with
        zero gradients rather than NaN, so a padded batch with nothing to learn is harmless).

        With a :class:`SlotKVCache`, the B rows of ``idx`` continue the sequences of the
        cache's rows ``0..B-1``, each from its own length."""
        self._check_inputs(idx, targets, cache.length if cache is not None else 0)
        logits = self.lm_head(self._hidden(idx, cache))
        loss = None
        if targets is not None:
            targets = targets.reshape(-1).long()
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets,
                                   ignore_index=-100, reduction="sum")
            loss = loss / (targets != -100).sum().clamp(min=1)
        return logits, loss

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The final hidden states (B, T, n_embd) -- embeddings, every block, ``ln_f``: what
        ``forward`` feeds the vocabulary head (``lm_head(hidden_states(idx))`` are the
        logits). Fine-tuning heads (e.g. a classifier) read these."""
        self._check_inputs(idx, None, cache.length if cache is not None else 0)
        return self._hidden(idx, cache)

    def _hidden(self, idx: torch.Tensor, cache: KVCache | SlotKVCache | None) -> torch.Tensor:
        past = cache.length if cache is not None else 0
        idx = idx.long()
        B, T = idx.shape
        if isinstance(cache, SlotKVCache):
            positions = cache.begin(B, T, idx.device)  # (B, T): each row from its own length
        else:
            positions = torch.arange(past, past + T, device=idx.device)
        x = self.transformer.wte(idx)
        rope = None
        if self.config.pos_encoding == "learned":
            x = x + self.transformer.wpe(positions)
        else:
            rope = rope_cache(self.config.head_dim, positions, self.config.rope_base)
            if positions.dim() == 2:  # per-row positions: broadcast over the heads
                rope = (rope[0][:, None], rope[1][:, None])
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, rope=rope, cache=cache, layer=i)
        if cache is not None and not isinstance(cache, SlotKVCache):
            cache.length += T
        return self.transformer.ln_f(x)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        p = next(self.parameters())
        return KVCache(self.config, batch_size, max_len, device=p.device, dtype=p.dtype)

    # -- accounting -----------------------------------------------------------------------

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters (tied weights counted once). ``non_embedding`` leaves out the
        position embedding -- and the token embedding too when it is not tied to the head,
        matching the "N" of scaling-law papers."""
        n = sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())
        if non_embedding:
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
            if not self.config.tie_weights:
                n -= self.transformer.wte.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token: 6N for the weights plus 12 * L * H * Q * T for attention
        (PaLM, appendix B), with N the non-embedding parameters."""
        cfg = self.config
        T = seq_len or cfg.block_size
        return 6 * self.num_params(non_embedding=True) + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * T

    def estimate_mfu(self, tokens_per_second: float, peak_flops: float | None = None,
                     seq_len: int | None = None) -> float:
        """Model FLOPs utilisation: achieved training FLOP/s over the device's peak."""
        peak = peak_flops or peak_flops_of_device()
        return self.flops_per_token(seq_len) * tokens_per_second / peak

    # -- checkpoints in Hugging Face's GPT-2 layout ---------------------------------------

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, dtype: torch.dtype | None = None,
                        **overrides) -> GPT:
        """Load GPT-2 weights in Hugging Face layout: a local folder with ``config.json`` and
        ``model.safetensors`` (or ``pytorch_model.bin``), or a hub id such as ``"gpt2"``,
        downloaded with ``huggingface_hub``. ``overrides`` may set e.g. ``dropout``."""
        folder = Path(name_or_path)
        if not folder.is_dir():
            folder = _download_from_hub(str(name_or_path))
        cfg_file = folder / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{folder} has no config.json; is it a GPT-2 checkpoint folder?")
        hf = json.loads(cfg_file.read_text())
        if hf.get("model_type", "gpt2") != "gpt2":
            raise ValueError(f"{folder} holds a {hf.get('model_type')!r} model, not GPT-2")
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"activation {act!r} is not GPT-2's tanh GELU; this loader cannot map it")
        for flag, ok in (("scale_attn_by_inverse_layer_idx", False), ("scale_attn_weights", True)):
            if hf.get(flag, ok) != ok:
                raise ValueError(f"{folder}: {flag}={hf[flag]} changes attention; this GPT-2 loader does not support it")
        config = GPTConfig(
            vocab_size=hf["vocab_size"], block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
            n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
            layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            tie_weights=hf.get("tie_word_embeddings", True),
        )
        config = replace(config, **overrides)
        state = _read_state_dict(folder)
        model = cls(config)
        model.load_hf_state_dict(state)
        if dtype is not None:
            model = model.to(dtype)
        return model.eval()

    def load_hf_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy a Hugging Face GPT-2 state dict into this model (Conv1D weights transposed)."""
        own = self.state_dict()
        state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
        state = {(k if k.startswith(("transformer.", "lm_head")) else f"transformer.{k}"): v
                 for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
        if "lm_head.weight" not in state and self.config.tie_weights:
            state["lm_head.weight"] = state.get("transformer.wte.weight")
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"checkpoint does not match the model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
            )
        with torch.no_grad():
            for k, v in state.items():
                if k.endswith(CONV1D_WEIGHTS):
                    v = v.t()
                if v.shape != own[k].shape:
                    raise ValueError(
                        f"{k}: checkpoint has shape {tuple(v.shape)} but the model expects "
                        f"{tuple(own[k].shape)}; does config.json match the weights?"
                    )
                own[k].copy_(v)

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` in Hugging Face's GPT-2 layout, so
        ``transformers.GPT2LMHeadModel.from_pretrained(folder)`` loads this model."""
        from safetensors.torch import save_file

        cfg = self.config
        if cfg.pos_encoding != "learned" or not cfg.bias:
            raise ValueError("the GPT-2 layout needs learned positions and biases "
                             f"(this model has pos_encoding={cfg.pos_encoding!r}, bias={cfg.bias})")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for k, v in self.state_dict().items():
            k = k.removeprefix("_orig_mod.")
            if k == "lm_head.weight" and cfg.tie_weights:
                continue  # tied: stored once, as wte
            v = v.detach().float().cpu()
            if k.endswith(CONV1D_WEIGHTS):
                v = v.t()
            tensors[k] = v.contiguous()
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        hf_config = {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": cfg.vocab_size, "n_positions": cfg.block_size, "n_ctx": cfg.block_size,
            "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": None,
            "activation_function": "gelu_new", "layer_norm_epsilon": cfg.layer_norm_eps,
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
            "initializer_range": 0.02, "tie_word_embeddings": cfg.tie_weights,
            "scale_attn_weights": True, "use_cache": True,
            # GPT-2's <|endoftext|> only where the vocabulary has it: any other id would make
            # transformers' generate() stop at an ordinary token
            "bos_token_id": 50256 if cfg.vocab_size > 50256 else None,
            "eos_token_id": 50256 if cfg.vocab_size > 50256 else None,
        }
        (folder / "config.json").write_text(json.dumps(hf_config, indent=2))
        return folder


def _read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    st, pt = folder / "model.safetensors", folder / "pytorch_model.bin"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    if pt.is_file():
        return torch.load(str(pt), map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder} has neither model.safetensors nor pytorch_model.bin")


def _download_from_hub(name: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:  # pragma: no cover - huggingface_hub comes with datasets
        raise ImportError("loading from the hub needs huggingface_hub: pip install huggingface_hub") from err
    try:
        return Path(snapshot_download(name, allow_patterns=["config.json", "model.safetensors"]))
    except Exception as err:
        raise OSError(
            f"could not get {name!r} from the Hugging Face hub ({type(err).__name__}: {err}). "
            "Offline? Pass the path of a local folder with config.json and model.safetensors."
        ) from err


_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12,
              "T4": 65e12, "V100": 125e12, "4090": 165e12, "3090": 71e12}


def peak_flops_of_device() -> float:
    """Dense bf16/fp16 peak FLOP/s of the current GPU (a table of common ones), else a
    nominal 1 TFLOP/s for a CPU so MFU stays a comparable number."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        for key, flops in _PEAK_BF16.items():
            if key in name:
                return flops
        return 312e12
    return 1e12
