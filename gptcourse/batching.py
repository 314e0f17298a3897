"""Continuous batching: one model answers many concurrent requests, one decode step for all.

    engine = BatchedEngine(model, tokenizer, max_batch=16)
    req = engine.submit(prompt_ids, max_tokens=64, temperature=0.8, top_p=0.95, seed=1,
                        stop=["\\n\\n"])
    for text, finish, n in req:          # from asyncio: ``async for text, finish, n in req``
        print(text, end="")
    engine.close()

Decoding one request at a time leaves a CPU or GPU mostly idle: each step reads every weight
of the model to compute one token. Decoding B requests together reads the weights once for B
tokens, so until the arithmetic becomes the bottleneck, B answers cost about as much as one.

How it works. :class:`BatchedEngine` owns one background thread, the only one that touches the
model, and a :class:`~gptcourse.model.SlotKVCache` of ``max_batch`` rows ("slots") of
``max_len`` positions (default ``block_size``) per layer. The thread loops:

1. **admit** -- waiting requests take the free rows. Each new prompt is prefilled alone
   (batch 1) into its row, and its first token is sampled from the last position's logits
   (the vocabulary head runs on that position only).
2. **decode** -- one forward for all active rows at once: each row is fed its latest token at
   its own position (per-row position ids for learned or rotary positions, and a mask over
   the row's filled keys), and each row is sampled with its own settings and generator.
3. **retire** -- rows that finished (end-of-text, a stop string, ``max_tokens``), were
   cancelled or failed leave. The last active row moves into the freed one, so the active
   requests always fill rows ``0..n-1`` and a step computes no empty rows.

Requests join and leave between any two steps ("iteration-level scheduling", as in the Orca
serving system): a new request waits for at most one step, not for the batch to drain.

Same answers as alone. A request's tokens are chosen as :func:`gptcourse.generate.stream`
chooses them for that request alone: greedy takes the argmax; sampling divides the row's
logits by its temperature and applies its top-k / top-p (``stream``'s own function), and
draws with ``torch.multinomial`` on the (1, vocab) probabilities from the request's own
``torch.Generator`` (seeded from ``seed``), one draw per step -- the same random numbers as alone, whoever else is in the
batch. The logits themselves can differ from batch-1 logits in the last bits (matrix
products of another shape are blocked differently, and attention runs with a mask), so a
near-tie could in principle go the other way; the tests check on the course's small models
that greedy and seeded answers equal ``stream``'s, token for token.

Text. :class:`TextAssembler` turns one request's token ids into text pieces
``(text, finish_reason, completion_tokens)``: text as it becomes final, held back while it may
be the start of a stop string or of a UTF-8 character, the last piece with the finish reason
(``"stop"``: end-of-text or a stop string, which is left out; ``"length"``: ``max_tokens``;
``"cancelled"``: after :meth:`Request.cancel`).
:func:`generate_pieces` (one request alone, with ``stream``) and the engine both use it, so
their pieces are equal.

Failures. An exception while preparing or sampling one request fails that request only; one
in the shared forward fails the requests of that step. A failed request's iterator raises
:class:`GenerationError`; the thread carries on. :meth:`BatchedEngine.close` stops the thread
and fails whatever is still waiting or running, so no consumer hangs.
"""

from __future__ import annotations

import asyncio
import queue
import secrets
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence

import torch

from . import validate
from .generate import check_sampling, sampling_probs, stream
from .model import GPT, SlotKVCache
from .textpieces import Piece, TextAssembler, held_back

__all__ = ["BatchedEngine", "GenerationError", "Piece", "Request", "TextAssembler", "held_back",
           "generate_pieces"]



class GenerationError(RuntimeError):
    """Generation of a request failed (its cause is chained) or the engine was closed."""


def _generator(device, seed: int | None) -> torch.Generator:
    """A request's own generator: seeded by ``seed``, else by fresh random bits."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed if seed is not None else secrets.randbits(63))
    return gen


def generate_pieces(model: GPT, tokenizer, prompt_ids: Sequence[int], max_tokens: int, *,
                    temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None, stop: Sequence[str] = (),
                    seed: int | None = None) -> Iterator[Piece]:
    """The pieces of one request generated alone with :func:`gptcourse.generate.stream`
    (the one-at-a-time engine): what :meth:`BatchedEngine.submit` yields for it too."""
    eot = getattr(tokenizer, "eot_id", None)
    gen = _generator(next(model.parameters()).device, seed)
    steps = stream(model, list(prompt_ids), max_tokens, temperature=temperature, top_k=top_k,
                   top_p=top_p, stop=eot, generator=gen)
    try:
        yield from TextAssembler(tokenizer, stop, eot).pieces(int(s[0]) for s in steps)
    finally:
        steps.close()


# --------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------


class Request:
    """A submitted request (see :meth:`BatchedEngine.submit`). Iterate it for its pieces --
    ``for`` in a thread, ``async for`` in an event loop -- or call :meth:`result`.
    :meth:`cancel` (or leaving the loop early) frees its slot at the next step."""

    def __init__(self, prompt_ids: list[int], max_tokens: int, temperature: float,
                 top_k: int | None, top_p: float | None, stop: list[str], seed: int | None,
                 assembler: TextAssembler, generator: torch.Generator) -> None:
        self.prompt_ids, self.max_tokens = prompt_ids, max_tokens
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.stop, self.seed = stop, seed
        self.cancelled = False
        # engine side (its thread only)
        self._assembler, self._generator = assembler, generator
        self._steps = 0  # tokens sampled, end-of-text included
        self._last = -1  # the latest token, fed to the model at the next step
        self._over = False  # last piece or error queued
        # consumer side: pieces or a GenerationError, and the event loop to wake
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._consumed = False

    def cancel(self) -> None:
        """Stop generating (thread-safe). The engine ends the request at its next step with
        a last piece whose finish reason is ``"cancelled"``."""
        self.cancelled = True

    def _put(self, item: Piece | GenerationError) -> None:  # engine thread
        self._queue.put(item)
        loop, event = self._loop, self._event
        if loop is not None and event is not None:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the consumer's loop is closed: nobody is waiting
                pass

    def _take(self, item) -> Piece:
        if isinstance(item, GenerationError):
            self._consumed = True
            raise item
        if item[1] is not None:
            self._consumed = True
        return item

    def __iter__(self) -> Iterator[Piece]:
        try:
            while not self._consumed:
                yield self._take(self._queue.get())
        finally:
            if not self._consumed:  # the consumer left early
                self.cancel()

    async def _aiter(self) -> AsyncIterator[Piece]:
        self._event = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        try:
            while not self._consumed:
                self._event.clear()  # before looking, so a put after the look wakes us
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    await self._event.wait()
                    continue
                yield self._take(item)
        finally:
            if not self._consumed:
                self.cancel()

    def __aiter__(self) -> AsyncIterator[Piece]:
        return self._aiter()

    def result(self) -> Piece:
        """Wait for the whole answer: ``(text, finish_reason, completion_tokens)``."""
        pieces = list(self)
        return "".join(p[0] for p in pieces), pieces[-1][1], pieces[-1][2]


# --------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------


class BatchedEngine:
    """Serve concurrent requests on ``model`` with continuous batching (module docstring).

    ``max_batch`` requests decode together; more wait their turn, first come first served.
    The KV cache holds ``max_batch`` x ``max_len`` positions per layer (default
    ``block_size``; a smaller ``max_len`` saves memory and caps prompt + answer length).
    The engine puts the model in eval mode; while it is open, its thread should be the only
    one running the model. Generation ends at the tokenizer's end-of-text token.

    ``stats`` counts requests, completed / cancelled / failed ones, completion tokens,
    decode steps and the rows they computed (``rows / steps`` is the mean batch size).
    """

    def __init__(self, model: GPT, tokenizer, max_batch: int = 16,
                 max_len: int | None = None) -> None:
        max_batch = validate.integer("max_batch", max_batch, min=1)
        if max_len is not None:
            max_len = validate.integer("max_len", max_len, min=1)
        if max_len is not None and max_len > model.config.block_size:
            raise ValueError(f"max_len ({max_len}) cannot exceed the model's block_size "
                             f"({model.config.block_size})")
        if tokenizer is None:
            raise ValueError("BatchedEngine needs a tokenizer to turn ids into text")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.eot: int | None = getattr(tokenizer, "eot_id", None)
        self.max_batch = max_batch
        p = next(model.parameters())
        self.device = p.device
        self.cache = SlotKVCache(model.config, max_batch, max_len, device=p.device, dtype=p.dtype)
        self.stats = {"requests": 0, "completed": 0, "cancelled": 0, "failed": 0, "tokens": 0,
                      "steps": 0, "rows": 0}
        self._waiting: deque[Request] = deque()
        self._active: list[Request] = []  # row i of the cache holds _active[i]
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="gptcourse-batching", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- public API
    def submit(self, prompt_ids: Sequence[int], max_tokens: int, *, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None,
               stop: str | Sequence[str] = (), seed: int | None = None) -> Request:
        """Queue a request (from any thread) and return it; iterate it for its pieces.

        ``temperature <= 0`` is greedy; ``seed`` seeds the request's own generator (none:
        fresh random bits); ``stop`` strings end the answer and are left out of its text.
        Bad arguments raise ``ValueError`` / ``TypeError`` here, not in the iterator.
        """
        vocab, room = self.model.config.vocab_size, self.cache.max_len
        ids = list(prompt_ids)
        if not ids or any(isinstance(t, bool) or not isinstance(t, int) for t in ids):
            raise ValueError("prompt_ids must be a non-empty sequence of int token ids")
        if min(ids) < 0 or max(ids) >= vocab:
            raise ValueError(f"prompt ids must be in 0..{vocab - 1}; does the tokenizer match the model?")
        max_tokens = validate.integer("max_tokens", max_tokens, min=1)
        if len(ids) + max_tokens - 1 > room:  # the last new token is never fed back
            raise ValueError(f"the engine holds {room} positions per request: a prompt of "
                             f"{len(ids)} tokens leaves room for {max(0, room - len(ids) + 1)} "
                             f"new tokens, not {max_tokens}; shorten the prompt or lower max_tokens")
        temperature = check_sampling(temperature, top_k, top_p)  # as a float
        stops = [stop] if isinstance(stop, str) else list(stop)
        if any(not isinstance(s, str) or not s for s in stops):
            raise TypeError(f"stop must be a non-empty string or a sequence of them, got {stop!r}")
        if seed is not None:  # the range torch.Generator.manual_seed takes
            seed = validate.integer("seed", seed, min=-2**63, max=2**64 - 1)
        req = Request(ids, max_tokens, temperature, top_k, top_p, stops, seed,
                      TextAssembler(self.tokenizer, stops, self.eot),
                      _generator(self.device, seed))
        with self._cv:
            if self._closed:
                raise RuntimeError("this BatchedEngine is closed; create a new one")
            self._waiting.append(req)
            self.stats["requests"] += 1
            self._cv.notify()
        return req

    def close(self, timeout: float = 30.0) -> None:
        """Stop the thread (after its current step); waiting and running requests fail with
        :class:`GenerationError`. Idempotent."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> BatchedEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def active(self) -> int:
        """Requests decoding now (the rows in use)."""
        return len(self._active)

    # ---------------------------------------------------------------- the loop
    def _run(self) -> None:
        try:
            with torch.no_grad():  # grad mode is per thread
                while True:
                    with self._cv:
                        while not (self._closed or self._waiting or self._active):
                            self._cv.wait()
                        if self._closed:
                            return
                        new = self._take_waiting(self.max_batch - len(self._active))
                    try:
                        self._step(new)
                    except Exception as err:  # a bug in the loop: fail those in it, go on
                        for req in self._active + new:
                            self._fail(req, err)
                        self._active.clear()
                        self.cache.lengths[:] = [0] * self.max_batch
        finally:
            with self._cv:
                self._closed = True
                left = self._active + list(self._waiting)
                self._waiting.clear()
            for req in left:
                self._fail(req, None)

    def _take_waiting(self, free: int) -> list[Request]:
        """Up to ``free`` waiting requests (call with the lock held); cancelled ones end."""
        new: list[Request] = []
        while self._waiting and len(new) < free:
            req = self._waiting.popleft()
            if req.cancelled:
                self._end_cancelled(req)
            else:
                new.append(req)
        return new

    def _step(self, new: list[Request]) -> None:
        for req in new:
            self._admit(req)
        self._retire()  # done at the first token, failed, or cancelled meanwhile
        if self._active:
            self._decode()
            self._retire()

    def _admit(self, req: Request) -> None:
        """Give ``req`` the next free row, prefill its prompt there, sample its first token."""
        row = len(self._active)
        self._active.append(req)
        try:
            view = self.cache.row(row)  # batch 1, as stream() prefills
            prompt = torch.tensor([req.prompt_ids], device=self.device)
            hidden = self.model.hidden_states(prompt, cache=view)
            self.cache.lengths[row] = view.length
            # the vocabulary head on the last position only: the others' logits are not used
            logits = self.model.lm_head(hidden[:, -1, :])
            self._emit(req, self._sample(req, logits.float()))
        except Exception as err:
            self._fail(req, err)

    def _decode(self) -> None:
        """One step for every active row: feed each its latest token, sample the next."""
        active = self._active
        idx = torch.tensor([[req._last] for req in active], device=self.device)
        self.stats["steps"] += 1
        self.stats["rows"] += len(active)
        try:
            logits, _ = self.model(idx, cache=self.cache)
        except Exception as err:  # the shared forward: every row of this step fails
            for req in active:
                self._fail(req, err)
            return
        logits = logits[:, -1, :].float()
        greedy = logits.argmax(dim=-1).tolist()  # one sync for all greedy rows
        for i, req in enumerate(active):
            try:
                t = greedy[i] if req.temperature <= 0 else self._sample(req, logits[i:i + 1])
                self._emit(req, t)
            except Exception as err:
                self._fail(req, err)

    @staticmethod
    def _sample(req: Request, logits: torch.Tensor) -> int:
        """The next token from (1, vocab) logits, exactly as stream() picks it."""
        if req.temperature <= 0:
            return int(logits.argmax(dim=-1))
        probs = sampling_probs(logits, req.temperature, req.top_k, req.top_p)
        return int(torch.multinomial(probs, 1, generator=req._generator))

    def _emit(self, req: Request, token: int) -> None:
        """Hand ``token`` to the request's text; queue any piece; note when it is over."""
        asm = req._assembler
        req._steps += 1
        req._last = token
        before = asm.tokens
        piece = asm.feed(token)
        self.stats["tokens"] += asm.tokens - before
        if piece is not None:
            req._put(piece)
        if not asm.done and req._steps >= req.max_tokens:
            req._put(asm.close())
        if asm.done:
            req._over = True
            self.stats["completed"] += 1

    def _fail(self, req: Request, err: BaseException | None) -> None:
        if req._over:
            return
        req._over = True
        if err is None:
            error = GenerationError("the engine was closed before this request finished")
        else:
            error = GenerationError(f"generation failed: {type(err).__name__}: {err}")
            error.__cause__ = err
            self.stats["failed"] += 1
        req._put(error)

    def _end_cancelled(self, req: Request) -> None:
        if not req._over:
            req._over = True
            self.stats["cancelled"] += 1
            req._put(("", "cancelled", req._assembler.tokens))

    def _retire(self) -> None:
        """Free the rows of requests that are over or cancelled; keep rows 0..n-1 in use."""
        active = self._active
        for row in reversed(range(len(active))):  # from the end: moved rows are kept ones
            req = active[row]
            if not (req._over or req.cancelled):
                continue
            self._end_cancelled(req)  # (no-op unless it was cancelled)
            last = len(active) - 1
            if row != last:
                self.cache.move(last, row)
            else:
                self.cache.lengths[row] = 0
            active[row] = active[last]
            active.pop()
