"""Text generation: greedy, temperature, top-k, top-p, stop tokens, streaming, a KV cache.

``generate(model, idx, max_new_tokens, ...)`` returns the prompt followed by the new ids;
``stream(...)`` yields the new ids one step at a time (a tokenizer is needed only for stop strings).

Each step runs the model on the context, takes the logits of the last position, divides them
by the temperature, keeps the ``top_k`` most likely tokens and/or the smallest set whose
probability reaches ``top_p``, and samples (``temperature <= 0`` takes the argmax: greedy).
Extreme values never give NaN: a temperature as small as 5e-324 is greedy, one as large as
1e300 uniform over the kept tokens, +inf logits share the probability, and top-p always keeps
the most likely token (the rule is in :func:`sampling_probs`).
With ``use_cache=True`` the keys and values of past positions are kept (:class:`KVCache`), so
each step feeds one token instead of the whole context. Once the context is longer than
``block_size`` it is cropped to the last ``block_size`` tokens; with learned positions that
shifts every position, so the cache is rebuilt from the cropped context (exactly what the
no-cache path computes).

Safety: :class:`OutputFilter` (a whole-word :class:`~gptcourse.data.clean.Blocklist` plus
regular expressions) checks the *text* of what is generated. ``generate`` / ``stream`` take it
as ``output_filter=`` with ``action="stop"``: a row stops before the token that would make its
generated text contain a match, and that token is never emitted. Redaction (``action="redact"``)
rewrites text, so it lives in :func:`generate_text`, which returns decoded strings.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence

import torch

from . import validate
from .data.clean import Blocklist
from .model import GPT

__all__ = ["OutputFilter", "check_sampling", "filter_logits", "generate", "generate_text",
           "sampling_probs", "stream"]


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> float:
    """Validate the sampling arguments; returns ``temperature`` as a float (an int too large
    for a float becomes ``inf``)."""
    try:
        t = validate.number("temperature", temperature, finite=False)  # inf: uniform
    except OverflowError:  # an int too large for a float, e.g. 10**400
        t = math.inf if temperature > 0 else -math.inf
    if math.isnan(t):
        raise ValueError(f"temperature must be a number, got {temperature!r}")
    if top_k is not None:
        validate.integer("top_k", top_k, min=1)
    if top_p is not None:
        validate.number("top_p", top_p, min=0, max=1, min_open=True)
    return t


def _finite_max(logits: torch.Tensor) -> torch.Tensor:
    """``logits`` with a finite maximum in every row and the distribution softmax tends to:
    a row holding +inf gives all its probability, in equal shares, to its +inf entries
    (they become 0, the others -inf); a row of only -inf becomes uniform (all 0). Rows with
    a finite maximum are returned bit for bit."""
    top = logits.amax(dim=-1, keepdim=True)
    pos, neg = top == math.inf, top == -math.inf
    if not bool((pos | neg).any()):
        return logits
    zero, ninf = logits.new_zeros(()), logits.new_full((), -math.inf)
    out = torch.where(pos, torch.where(logits == math.inf, zero, ninf), logits)
    return torch.where(neg, zero, out)


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set the logits outside the top-k / nucleus (top-p) set to -inf. ``logits``: (..., V).

    ``top_k`` keeps the ``k`` largest logits and any that tie with the k-th. ``top_p`` keeps
    the most likely tokens until their probability reaches ``top_p``, and always the most
    likely one, however small ``top_p`` is (even 5e-324, which float32 rounds to 0). +inf
    logits share all the probability (so top-p keeps among them); a row of only -inf counts
    as uniform. Never produces NaN from finite or infinite logits.
    """
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(_finite_max(sorted_logits), dim=-1)
        # drop a token when the tokens ranked above it already reach top_p; never the first
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


#: above this temperature float32 ``logits / temperature`` rounds distinct logits together
_HUGE_TEMPERATURE = 1e30


def sampling_probs(logits: torch.Tensor, temperature: float, top_k: int | None,
                   top_p: float | None) -> torch.Tensor:
    """The distribution one sampling step draws from: softmax of the filtered (B, V)
    ``logits / temperature``, for a temperature > 0.

    Ordinary values (finite logits, 0 < temperature <= 1e30 and no overflow) take the
    plain float32 path, ``softmax(filter_logits(logits / temperature, top_k, top_p))``.
    A row where that would give NaN -- the division overflows (temperature below ~1e-38,
    or subnormal: 1e-45, 5e-324), a logit is +inf, every logit is -inf -- or a temperature
    above 1e30 (1e300, inf) is computed in float64 on the CPU instead: :func:`_finite_max`,
    top-k on the logits themselves (dividing by a positive temperature keeps their order),
    then ``(logits - max) / temperature``, whose maximum is 0, so nothing overflows, then
    top-p. In exact arithmetic both paths are the same distribution. So a tiny temperature
    is greedy -- the argmax gets all the probability, shared equally by exact ties -- and a
    huge one is uniform over the tokens top-k / top-p keep. NaN logits raise ValueError.
    """
    ok = None
    if temperature <= _HUGE_TEMPERATURE:
        scaled = logits / temperature
        probs = torch.softmax(filter_logits(scaled, top_k, top_p), dim=-1)
        ok = scaled.amax(dim=-1, keepdim=True).isfinite() & ~scaled.isnan().any(dim=-1, keepdim=True)
        if bool(ok.all()):
            return probs
    if bool(logits.isnan().any()):
        raise ValueError("the model's logits contain NaN (a diverged or broken model?), so "
                         "there is no distribution to sample from")
    x = filter_logits(_finite_max(logits.detach().cpu().double()), top_k)
    shift = x - x.amax(dim=-1, keepdim=True)  # <= 0; -inf stays -inf (-inf / inf would be NaN)
    limit = torch.where(shift == -math.inf, shift, shift / temperature)
    exact = torch.softmax(filter_logits(limit, top_p=top_p), dim=-1).to(logits.device, logits.dtype)
    return exact if ok is None else torch.where(ok, probs, exact)


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


class OutputFilter:
    """Find, redact or stop on unwanted text in a model's output: a blocklist plus regexes.

    * ``blocklist`` -- whole words or phrases, ignoring case, with the rule of
      :class:`gptcourse.data.clean.Blocklist` (``"ass"`` hits "Ass!" but not "class"; the
      spaces of a phrase match any whitespace). A :class:`Blocklist`, a list of terms,
      ``"default"`` (:data:`~gptcourse.data.clean.DEFAULT_BLOCKLIST`) or a path to a file.
    * ``patterns`` -- regular expressions (strings, compiled with ``re.IGNORECASE`` when
      ``ignore_case``, or compiled ``re.Pattern`` objects used as they are), e.g. a phone
      number or an e-mail address.
    * ``action`` -- what generation does about a match: ``"stop"`` ends the row *before*
      the token that would complete the match (see :func:`stream`); ``"redact"`` lets the
      model run on and replaces each match in the decoded text by ``replacement``
      (:func:`generate_text`, :meth:`redact`).

    :meth:`apply` does on a finished text what the action does: redact, or cut the text at
    the start of the first match. A filter catches strings, not meaning: paraphrases,
    misspellings ("sh1t"), other languages and harmful content without a listed word pass.

    >>> f = OutputFilter(["darn"], patterns=[r"\\d{3}-\\d{4}"])
    >>> f.redact("Darn! Call 555-1234.")
    '[filtered]! Call [filtered].'
    """

    ACTIONS = ("redact", "stop")

    def __init__(
        self,
        blocklist: Blocklist | Iterable[str] | str | os.PathLike | None = None,
        patterns: Iterable[str | re.Pattern[str]] = (),
        *,
        replacement: str = "[filtered]",
        action: str = "redact",
        ignore_case: bool = True,
    ) -> None:
        if action not in self.ACTIONS:
            raise ValueError(f"action must be one of {self.ACTIONS}, got {action!r}")
        if not isinstance(replacement, str):
            raise TypeError(f"replacement must be a string, got {type(replacement).__name__}")
        if isinstance(patterns, (str, re.Pattern)):
            raise TypeError("patterns takes a list of regular expressions, e.g. "
                            "patterns=[r'\\d{3}-\\d{4}'], not one pattern")
        self.blocklist: Blocklist | None = Blocklist.coerce(blocklist)
        compiled: list[re.Pattern[str]] = []
        for p in patterns:
            if isinstance(p, re.Pattern):
                compiled.append(p)
            elif isinstance(p, str):
                try:
                    compiled.append(re.compile(p, re.IGNORECASE if ignore_case else 0))
                except re.error as err:
                    raise ValueError(f"pattern {p!r} is not a valid regular expression: {err}") from None
            else:
                raise TypeError(f"patterns must be strings or compiled re.Pattern, got {p!r}")
            if compiled[-1].search("") is not None:
                raise ValueError(f"pattern {compiled[-1].pattern!r} matches the empty string, "
                                 "so it would match every text")
        if (self.blocklist is None or not len(self.blocklist)) and not compiled:
            raise ValueError("an OutputFilter needs blocklist terms and/or patterns")
        self.patterns: tuple[re.Pattern[str], ...] = tuple(compiled)
        self.replacement = replacement
        self.action = action

    def spans(self, text: str, start: int = 0) -> list[tuple[int, int]]:
        """The ``(start, end)`` character spans of all matches, overlaps merged, in order.

        ``text[:start]`` is context only (a prompt): a match counts when it ends after
        ``start`` (so "cl" + "ass" is the word "class", not "ass"), and its span is clipped to
        begin at ``start`` at the earliest.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        found = list(self.blocklist.spans(text)) if self.blocklist is not None else []
        found += [m.span() for rx in self.patterns for m in rx.finditer(text)]
        found = [(max(a, start), b) for a, b in found if b > max(a, start)]
        merged: list[tuple[int, int]] = []
        for a, b in sorted(found):
            if merged and a < merged[-1][1]:
                merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
            else:
                merged.append((a, b))
        return merged

    def matches(self, text: str, start: int = 0) -> list[str]:
        """The matched pieces of ``text`` (after ``start``; overlaps merged), in order."""
        return [text[a:b] for a, b in self.spans(text, start)]

    def blocked(self, text: str, start: int = 0) -> bool:
        """Whether ``text`` (after the context ``text[:start]``) contains a match."""
        return bool(self.spans(text, start))

    def redact(self, text: str, start: int = 0) -> str:
        """``text`` with every match (after ``start``) replaced by ``replacement``."""
        out, last = [], 0
        for a, b in self.spans(text, start):
            out += [text[last:a], self.replacement]
            last = b
        return "".join(out) + text[last:]

    def apply(self, text: str) -> str:
        """What the action does to a finished text: redact it, or (``"stop"``) cut it at the
        start of the first match."""
        if self.action == "redact":
            return self.redact(text)
        spans = self.spans(text)
        return text[: spans[0][0]] if spans else text

    def __repr__(self) -> str:
        terms = len(self.blocklist) if self.blocklist is not None else 0
        return (f"OutputFilter({terms} terms, {len(self.patterns)} patterns, "
                f"action={self.action!r}, replacement={self.replacement!r})")


def _check_output_filter(output_filter, tokenizer, batch: int):
    """The fill id of rows the filter stops (``None`` when no batch needs one)."""
    if output_filter is None:
        return None
    if not isinstance(output_filter, OutputFilter):
        raise TypeError(f"output_filter must be an OutputFilter, got {type(output_filter).__name__}")
    if output_filter.action != "stop":
        raise ValueError("generate()/stream() return token ids, which cannot be redacted: use "
                         "OutputFilter(..., action='stop') here, or generate_text(...) (or "
                         "output_filter.redact(tokenizer.decode(ids))) to redact the text")
    if tokenizer is None:
        raise ValueError("output_filter needs tokenizer=... to decode the generated ids")
    if batch > 1:
        fill = getattr(tokenizer, "eot_id", None)
        if fill is None:
            raise ValueError("output_filter with a batch of prompts fills the rows it stops "
                             "with the tokenizer's end-of-text id, and this tokenizer has none; "
                             "generate one prompt at a time")
        return int(fill)
    return None


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
    output_filter: OutputFilter | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the new token ids step by step, as a (B,) tensor per step.

    Generation stops after ``max_new_tokens``, or when every row has produced a stop token id
    or (with ``tokenizer``) its decoded text ends with a stop string. A row that has stopped
    repeats its stop token while the others continue.

    ``output_filter`` (an :class:`OutputFilter` with ``action="stop"``; needs ``tokenizer``):
    before a token is emitted, the row's text with it -- the generated text, read after the
    last 32 prompt tokens as context -- is checked; if it now holds a match the token is
    dropped and the row stops. With one prompt generation simply ends; in a batch the
    stopped row yields the tokenizer's end-of-text id from then on. The text emitted never
    contains a match, but it may end with the start of one (" sh" before "it" completes a
    word: a stream cannot take back what it has sent), and a listed word that ends the text
    so far counts (whole-word matching cannot wait for the next character), so "ass" stops
    "assess" early -- the safe side.
    """
    max_new_tokens = validate.integer("max_new_tokens", max_new_tokens, min=0)
    temperature = check_sampling(temperature, top_k, top_p)
    stop_ids, stop_strings = _stop_ids(stop, tokenizer)
    idx = _prompt(model, idx)
    fill = _check_output_filter(output_filter, tokenizer, idx.size(0))
    # arguments are checked above, when stream() is called; the loop runs when iterated
    return _steps(model, idx, max_new_tokens, temperature, top_k, top_p, stop_ids, stop_strings,
                  use_cache, generator, tokenizer, output_filter, fill)


#: prompt tokens decoded in front of the generated text when an output filter checks it
_FILTER_CONTEXT = 32


@torch.no_grad()
def _steps(model, idx, max_new_tokens, temperature, top_k, top_p, stop_ids, stop_strings,
           use_cache, generator, tokenizer, output_filter=None, fill=None
           ) -> Iterator[torch.Tensor]:
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
        if output_filter is not None:
            # each row's prompt tail (context for whole-word matches) and generated ids
            tails = [idx[b, -_FILTER_CONTEXT:].tolist() for b in range(B)]
            offsets = [len(tokenizer.decode(t)) for t in tails]
            kept: list[list[int]] = [[] for _ in range(B)]
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
                probs = sampling_probs(logits, temperature, top_k, top_p)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            nxt = torch.where(done, last_stop, nxt)
            if output_filter is not None:
                emitted = ~done
                for b in range(B):
                    if done[b]:
                        continue
                    t = int(nxt[b])
                    text = tokenizer.decode(tails[b] + kept[b] + [t])
                    if output_filter.blocked(text, offsets[b]):
                        done[b], emitted[b] = True, False
                        if fill is not None:
                            nxt[b] = last_stop[b] = fill
                    else:
                        kept[b].append(t)
                if not emitted.any():
                    break  # every row has stopped and none has a new token to emit
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
    output_filter: OutputFilter | None = None,
) -> torch.Tensor:
    """The prompt followed by up to ``max_new_tokens`` generated ids, shape (B, T + new).

    See :func:`stream` for the options. ``temperature <= 0`` is greedy decoding; pass a seeded
    ``torch.Generator`` for reproducible sampling. ``output_filter`` (``action="stop"``) ends a
    row before a token that would complete a match; for redacted *text* use
    :func:`generate_text`.
    """
    prompt = _prompt(model, idx)
    steps = list(stream(model, prompt, max_new_tokens, temperature, top_k, top_p, stop,
                        use_cache, generator, tokenizer, output_filter))
    if not steps:
        return prompt
    return torch.cat([prompt, torch.stack(steps, dim=1)], dim=1)


def encode_or_eot(tokenizer, text: str, what: str = "prompt") -> list[int]:
    """The ids of ``text``; an empty text is the tokenizer's end-of-text token alone (where
    documents start), so a model can be conditioned on "nothing"."""
    ids = list(tokenizer.encode(text)) if text else []
    if ids:
        return ids
    eot = getattr(tokenizer, "eot_id", None)
    if eot is None:
        raise ValueError(f"the {what} is empty and the tokenizer has no end-of-text token to "
                         f"start from; give a {what}")
    return [eot]


def generate_text(
    model: GPT,
    tokenizer,
    prompt: str | Sequence[str],
    max_new_tokens: int,
    *,
    output_filter: OutputFilter | None = None,
    **kwargs,
) -> str | list[str]:
    """The text the model adds to ``prompt`` (a string, or a list of them, one by one).

    ``kwargs`` go to :func:`generate` (``temperature``, ``top_k``, ``top_p``, ``stop``,
    ``use_cache``, ``generator``). The returned text is the decoded new ids (after the
    prompt), without the prompt. With ``output_filter``:

    * ``action="stop"`` -- generation runs with the filter (:func:`stream`): the text ends
      before the token that would have completed a match;
    * ``action="redact"`` -- generation is not changed; each match in the new text (read
      after the prompt, so a word the prompt starts counts whole) is replaced by the
      filter's ``replacement``. The ids are not redacted: use :func:`generate` for them.

    An empty prompt starts from the tokenizer's end-of-text token. Unless ``stop`` is given,
    generation stops at the tokenizer's end-of-text token, which is left out of the returned
    text (``stop=()`` runs on through it).
    """
    if isinstance(prompt, str):
        return _generate_one(model, tokenizer, prompt, max_new_tokens, output_filter, kwargs)
    prompts = list(prompt)
    if any(not isinstance(p, str) for p in prompts):
        raise TypeError("prompt must be a string or a sequence of strings")
    return [_generate_one(model, tokenizer, p, max_new_tokens, output_filter, kwargs)
            for p in prompts]


def _generate_one(model, tokenizer, prompt: str, max_new_tokens, output_filter, kwargs) -> str:
    if output_filter is not None and not isinstance(output_filter, OutputFilter):
        raise TypeError(f"output_filter must be an OutputFilter, got {type(output_filter).__name__}")
    for key in ("tokenizer", "idx", "output_filter"):
        if key in kwargs:
            raise TypeError(f"generate_text() takes no {key}= keyword argument here")
    ids = encode_or_eot(tokenizer, prompt, "prompt")
    eot = getattr(tokenizer, "eot_id", None)
    stop_at_eot = "stop" not in kwargs and eot is not None
    if stop_at_eot:
        kwargs = {**kwargs, "stop": eot}
    stop_filter = output_filter if output_filter is not None and output_filter.action == "stop" else None
    out = generate(model, ids, max_new_tokens, tokenizer=tokenizer, output_filter=stop_filter, **kwargs)
    new = out[0, len(ids):].tolist()
    if stop_at_eot and eot in new:  # the text ended there
        new = new[:new.index(eot)]
    if output_filter is None or stop_filter is not None:
        return tokenizer.decode(new)
    # redact the new text, read after the prompt's tail for whole-word context
    tail = ids[-_FILTER_CONTEXT:]
    offset = len(tokenizer.decode(tail))
    full = tokenizer.decode(tail + new)
    return output_filter.redact(full, offset)[offset:]
