"""Text generation: greedy, temperature, top-k, top-p, stop tokens, streaming, a KV cache.

``generate(model, idx, max_new_tokens, ...)`` returns the prompt followed by the new ids;
``stream(...)`` yields the new ids one step at a time (a tokenizer is needed only for stop strings).

Each step runs the model on the context, takes the logits of the last position, divides them
by the temperature, keeps the ``top_k`` most likely tokens and/or the smallest set whose
probability reaches ``top_p``, and samples (``temperature <= 0`` takes the argmax: greedy).
With ``use_cache=True`` the keys and values of past positions are kept (:class:`KVCache`), so
each step feeds one token instead of the whole context. Once the context is longer than
``block_size`` it is cropped to the last ``block_size`` tokens; with learned positions that
shifts every position, so the cache is rebuilt from the cropped context (exactly what the
no-cache path computes).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .model import GPT

__all__ = ["generate", "stream", "filter_logits"]


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not isinstance(temperature, (int, float)) or temperature != temperature:
        raise ValueError(f"temperature must be a number, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set the logits outside the top-k / nucleus (top-p) set to -inf. ``logits``: (B, V)."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already reach top_p
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _stop_ids(stop, tokenizer) -> tuple[set[int], list[str]]:
    """Split ``stop`` (an id, a string, or a sequence of them) into token ids and strings."""
    if stop is None:
        return set(), []
    items = [stop] if isinstance(stop, (int, str)) else list(stop)
    ids = {s for s in items if isinstance(s, int) and not isinstance(s, bool)}
    strings = [s for s in items if isinstance(s, str)]
    if len(ids) + len(strings) != len(items):
        raise TypeError(f"stop must hold token ids (int) or strings, got {stop!r}")
    if strings and tokenizer is None:
        raise ValueError("stop strings need tokenizer=... to decode the generated ids")
    return ids, strings


def _prompt(model: GPT, idx: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """The prompt as a (B, T) long tensor on the model's device, ids checked."""
    if not isinstance(idx, torch.Tensor):
        idx = torch.tensor([list(idx)], dtype=torch.long)
    if idx.dim() == 1:
        idx = idx[None]
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(f"the prompt must have shape (batch, time) with time >= 1, got {tuple(idx.shape)}")
    idx = idx.to(next(model.parameters()).device).long()
    if (idx < 0).any() or (idx >= model.config.vocab_size).any():
        raise ValueError(f"prompt ids must be in 0..{model.config.vocab_size - 1}")
    return idx


def stream(
    model: GPT,
    idx: torch.Tensor | Sequence[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: int | str | Sequence[int | str] | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    tokenizer=None,
) -> Iterator[torch.Tensor]:
    """Yield the new token ids step by step, as a (B,) tensor per step.

    Generation stops after ``max_new_tokens``, or when every row has produced a stop token id
    or (with ``tokenizer``) its decoded text ends with a stop string. A row that has stopped
    repeats its stop token while the others continue.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
    _check_sampling(temperature, top_k, top_p)
    stop_ids, stop_strings = _stop_ids(stop, tokenizer)
    idx = _prompt(model, idx)
    # arguments are checked above, when stream() is called; the loop runs when iterated
    return _steps(model, idx, max_new_tokens, temperature, top_k, top_p, stop_ids, stop_strings,
                  use_cache, generator, tokenizer)


@torch.no_grad()
def _steps(model, idx, max_new_tokens, temperature, top_k, top_p, stop_ids, stop_strings,
           use_cache, generator, tokenizer) -> Iterator[torch.Tensor]:
    device = idx.device
    block = model.config.block_size
    was_training = model.training
    model.eval()
    try:
        B = idx.size(0)
        seq = idx
        cache = None
        done = torch.zeros(B, dtype=torch.bool, device=device)
        last_stop = torch.zeros(B, dtype=torch.long, device=device)
        new_ids: list[list[int]] = [[] for _ in range(B)]
        # a stop string can span several tokens, and a character several byte tokens: decode
        # a window of the latest ids wide enough to hold the longest stop string
        window = max((len(s.encode("utf-8")) for s in stop_strings), default=0) + 4
        for _ in range(max_new_tokens):
            if use_cache:
                if cache is None or cache.length >= block:
                    cache = model.new_cache(B)
                    logits, _ = model(seq[:, -block:], cache=cache)
                else:
                    logits, _ = model(seq[:, -1:], cache=cache)
            else:
                logits, _ = model(seq[:, -block:])
            logits = logits[:, -1, :].float()
            if temperature <= 0:
                nxt = logits.argmax(dim=-1)
            else:
                logits = filter_logits(logits / temperature, top_k, top_p)
                probs = torch.softmax(logits, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            nxt = torch.where(done, last_stop, nxt)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            yield nxt
            for b in range(B):
                if done[b]:
                    continue
                t = int(nxt[b])
                hit = t in stop_ids
                if stop_strings and not hit:
                    new_ids[b].append(t)
                    tail = tokenizer.decode(new_ids[b][-window:])
                    hit = any(s in tail for s in stop_strings)
                if hit:
                    done[b] = True
                    last_stop[b] = t
            if done.all():
                break
    finally:
        model.train(was_training)


def generate(
    model: GPT,
    idx: torch.Tensor | Sequence[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: int | str | Sequence[int | str] | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    tokenizer=None,
) -> torch.Tensor:
    """The prompt followed by up to ``max_new_tokens`` generated ids, shape (B, T + new).

    See :func:`stream` for the options. ``temperature <= 0`` is greedy decoding; pass a seeded
    ``torch.Generator`` for reproducible sampling.
    """
    prompt = _prompt(model, idx)
    steps = list(stream(model, prompt, max_new_tokens, temperature, top_k, top_p, stop,
                        use_cache, generator, tokenizer))
    if not steps:
        return prompt
    return torch.cat([prompt, torch.stack(steps, dim=1)], dim=1)
