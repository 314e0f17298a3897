"""Serve a GPT over HTTP with OpenAI's API: ``/v1/completions``, ``/v1/chat/completions``.

    gptcourse serve --checkpoint runs/instruct          # a course checkpoint
    gptcourse serve --pretrained gpt2 --port 8000       # GPT-2 weights from the hub

Any OpenAI client then talks to it, and a browser gets a chat page at ``http://127.0.0.1:8000/``::

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
    client.chat.completions.create(model="gpt2", messages=[{"role": "user", "content": "Hi"}])

What the server does:

* ``POST /v1/completions`` (``prompt``) and ``POST /v1/chat/completions`` (``messages``, turned
  into the instruction lesson's Alpaca prompt by
  :func:`gptcourse.finetune.instruct.messages_to_prompt`), with ``max_tokens`` (default 16
  for a completion, for a chat the cap or what the context leaves; ``max_completion_tokens``
  is read too), ``temperature`` (0: greedy, else at least :data:`MIN_TEMPERATURE`), ``top_p``
  (at least :data:`MIN_TOP_P`), ``stop`` (a string or up to 4; left out of the text, as OpenAI
  does), ``n=1``, ``seed`` (OpenAI's int64, or up to ``2**64 - 1``) and ``stream`` (server-sent
  events ending with ``data: [DONE]``; ``stream_options.include_usage`` adds a usage chunk).
  Generation ends at the end-of-text token; a chat answer also ends at ``"\\n###"``, where
  the model would start the template's next section (as the lesson's ``generate_responses``).
  The ``model`` field is not checked: the server has one model. ``GET /v1/models``,
  ``GET /openapi.json`` (the request schema), ``GET /health`` and the chat page ``GET /``
  (both open even with an API key; ``/health`` says whether one is needed) too.
* Requests are pydantic models (:class:`CompletionRequest`, :class:`ChatCompletionRequest`).
  Bad requests get OpenAI's error body ``{"error": {"message", "type", "param", "code"}}``
  with status 400, never a traceback: a wrong type or value, an unknown field, a field the
  server does not implement (``logprobs``, ``echo``, ``best_of``, penalties, tools ...; each is
  accepted only at its do-nothing value), JSON that is invalid, nested too deeply or has a
  number with too many digits. 401 is a missing or wrong API key, 404 an unknown route, 413 a
  body over ``max_body_bytes`` (refused before it is read), 408 a body not sent within
  ``body_timeout``. A prompt that leaves no room in the model's context, or a ``max_tokens``
  that does not fit after it, is ``context_length_exceeded`` (a prompt with more characters
  than the context could hold is refused before it is tokenized).
* Nothing slow runs on the event loop: JSON decoding, validation and tokenization run on a
  small thread pool, generation on the thread of a :class:`gptcourse.batching.BatchedEngine`.
  Concurrent requests are decoded together (continuous batching: up to ``max_batch`` at once,
  joining and leaving the batch between steps; more wait their turn). Each request samples
  with its own ``torch.Generator`` (seeded by ``seed``), so its answer is the same whether it
  ran alone or among others.
* A client that disconnects (streaming or not, also while it waits for a slot) stops its
  generation at the next step; one that disconnects while sending its body is one line in
  the log.
* Slow and idle clients (see :func:`server_options`): a connection must send its request
  headers within ``header_timeout`` seconds (also between keep-alive requests), an idle
  keep-alive connection closes after ``keep_alive`` seconds, and at most ``max_connections``
  are open: a new one closes the oldest idle connection, or is answered 503 when all are
  busy. So the server never runs out of file descriptors, and the log stays short.
"""

import argparse
import asyncio
import concurrent.futures
import contextlib
import functools
import hmac
import json
import logging
import os
import reprlib
import secrets
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from .batching import held_back

__all__ = ["ChatCompletionRequest", "CompletionRequest", "Engine", "GenerationRequest",
           "ServeError", "add_arguments", "background", "create_app", "held_back",
           "load_for_serving", "main", "run", "server_options"]

#: default cap on ``max_tokens`` (a request may not ask for more)
DEFAULT_MAX_TOKENS_CAP = 512
#: ``max_tokens`` of a completion that does not set it (OpenAI's legacy default)
DEFAULT_COMPLETION_TOKENS = 16
#: a chat answer also ends where the model starts a new ``### ...`` section of the template
CHAT_STOP = "\n###"
#: the smallest temperature above 0 (smaller ones overflow float32 logits; 0 is greedy)
MIN_TEMPERATURE = 1e-4
#: the smallest top_p (it already keeps only the most likely token; smaller ones underflow float32)
MIN_TOP_P = 1e-6
#: a seed is OpenAI's int64, or an unsigned 64-bit int: what ``torch.Generator.manual_seed`` takes
SEED_RANGE = (-2**63, 2**64)
#: defaults of the server's limits (see :func:`server_options` and :func:`create_app`)
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_BODY_TIMEOUT = 30.0
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_KEEP_ALIVE = 5.0
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_BACKLOG = 128
#: requests decoded together (the batched engine's KV cache holds this many sequences)
DEFAULT_MAX_BATCH = 16
#: how often a waiting or generating request checks whether its client is still there (s)
DISCONNECT_POLL = 0.1

log = logging.getLogger("uvicorn.error")  # the server's log, formatted by uvicorn


class ServeError(Exception):
    """An error answered to the client as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, message: str, *, status: int = 400, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.type, self.param, self.code = message, status, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


# --------------------------------------------------------------------------------------
# the request schema (pydantic) and its errors in OpenAI's shape
# --------------------------------------------------------------------------------------


def _bad(code: str, message: str) -> PydanticCustomError:
    """A validation error whose type is the OpenAI error code."""
    return PydanticCustomError(code, message)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class _Sampling(BaseModel):
    """The fields completions and chat completions share."""

    model_config = ConfigDict(extra="forbid", strict=True)  # strict: 8.0 is not an int, "1" no number

    model: str | None = None
    n: int | None = Field(None, description="only 1")
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], lt=SEED_RANGE[1])
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False,
                                      description=f"0 (greedy) or in [{MIN_TEMPERATURE}, 2]")
    top_p: float | None = Field(None, ge=MIN_TOP_P, le=1, allow_inf_nan=False)
    stop: str | list[str] | None = Field(None, description="a string or up to 4")
    max_tokens: int | None = Field(None, ge=1)
    user: str | None = Field(None, description="an end-user id; it does not change the answer")

    @field_validator("n", mode="before")
    @classmethod
    def _only_one(cls, v: Any) -> Any:
        if v is not None and (isinstance(v, bool) or v != 1):
            raise _bad("invalid_value", f"only n=1 is supported, got {reprlib.repr(v)}")
        return v

    @field_validator("temperature")
    @classmethod
    def _not_tiny(cls, v: float | None) -> float | None:
        if v is not None and 0 < v < MIN_TEMPERATURE:
            raise _bad("invalid_value", f"'temperature' must be 0 (greedy) or at least "
                       f"{MIN_TEMPERATURE}, got {v}")
        return v

    @field_validator("stop", mode="before")
    @classmethod
    def _stops(cls, v: Any) -> Any:
        items = [v] if isinstance(v, str) else v
        if v is not None and (not isinstance(items, list) or len(items) > 4
                              or any(not isinstance(s, str) or not s for s in items)):
            raise _bad("invalid_type", "'stop' must be a non-empty string or a list of up to 4 of them")
        return v


class CompletionRequest(_Sampling):
    """The body of ``POST /v1/completions``."""

    prompt: str | list[str] = Field(description="one string (or a list of exactly one)")

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, v: Any) -> Any:
        if isinstance(v, list) and len(v) == 1 and isinstance(v[0], str):
            return v[0]
        if isinstance(v, list):
            raise _bad("invalid_value", "'prompt' must be one string (batches of prompts are not supported)")
        if not isinstance(v, str):
            raise _bad("invalid_type", "'prompt' must be a string")
        return v


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatCompletionRequest(_Sampling):
    """The body of ``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="the newer name of max_tokens")


#: fields of OpenAI's API this server does not implement, with the values that ask for nothing
_UNSUPPORTED: dict[str, tuple] = {
    "logprobs": (False,), "top_logprobs": (0,), "echo": (False,), "best_of": (1,), "suffix": ("",),
    "presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "logit_bias": ({},),
    "tools": ([],), "tool_choice": ("none",), "functions": ([],), "function_call": ("none",),
    "response_format": ({"type": "text"},),
}


def _check_unsupported(body: dict) -> dict:
    """``body`` without the unsupported fields that ask for nothing; a 400 for one that asks."""
    for name, neutral in _UNSUPPORTED.items():
        v = body.get(name)
        if v is not None and not any(type(v) is type(n) and v == n for n in neutral):
            raise ServeError(f"'{name}' is not supported by this server (got {reprlib.repr(v)}); "
                             "leave it out", param=name, code="unsupported_parameter")
    return {k: v for k, v in body.items() if k not in _UNSUPPORTED}


_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal",
                 "too_short", "too_long", "string_too_short", "literal_error"}


def _openai_error(exc: ValidationError) -> ServeError:
    """The first of pydantic's errors as a 400 in OpenAI's shape."""
    err = exc.errors(include_url=False)[0]
    loc = err["loc"]
    param = str(loc[0]) if loc else None
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    kind = err["type"]
    if kind in ("invalid_type", "invalid_value"):  # our own validators say it in full
        return ServeError(err["msg"], param=param, code=kind)
    if kind == "missing":
        return ServeError(f"missing required parameter '{where}'", param=param,
                          code="missing_required_parameter")
    if kind == "extra_forbidden":
        return ServeError(f"unknown parameter '{where}': this server does not know it", param=param,
                          code="unknown_parameter")
    code = "invalid_value" if kind in _RANGE_ERRORS else "invalid_type"
    msg = err["msg"][:1].lower() + err["msg"][1:]
    return ServeError(f"invalid '{where}': {msg}, got {reprlib.repr(err.get('input'))}",
                      param=param, code=code)


def decode_json(raw: bytes) -> Any:
    """``json.loads(raw)`` with its failures (bad JSON, too deep, too many digits) as 400s."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ServeError("the request body is nested too deeply", code="invalid_json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ServeError(f"the request body is not valid JSON: {err}", code="invalid_json") from None
    except ValueError as err:  # int("9" * 5000): Python's limit on the digits of an int
        raise ServeError(f"the request body has a number Python will not read: {err}",
                         code="invalid_json") from None


# --------------------------------------------------------------------------------------
# the engine: parse a request, generate its pieces
# --------------------------------------------------------------------------------------


@dataclass
class GenerationRequest:
    """A validated request, what the generation code needs (and nothing of HTTP)."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float | None
    stop: list[str]
    seed: int | None
    stream: bool
    include_usage: bool


_longest_tokens: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()


def _longest_token(tokenizer) -> int | None:
    """An upper bound on the UTF-8 bytes of one token (so a text of more than ``block_size``
    times this many characters cannot fit the context), or None for an unknown vocabulary."""
    n = getattr(tokenizer, "vocab_size", None)
    if not isinstance(n, int) or n <= 0:
        return None
    with contextlib.suppress(TypeError):
        if tokenizer in _longest_tokens:
            return _longest_tokens[tokenizer]
    # a replacement character (3 bytes) stands for at least one byte: the bound stays an upper one
    longest = max(len(tokenizer.decode([i]).encode("utf-8")) for i in range(n))
    with contextlib.suppress(TypeError):
        _longest_tokens[tokenizer] = longest
    return longest


class Engine:
    """The model and its tokenizer: :meth:`parse` turns a request body into a
    :class:`GenerationRequest` (validated, the prompt tokenized); :meth:`pieces` generates its
    text alone, in the calling thread (``gptcourse chat`` uses both in-process; the server
    generates with a :class:`~gptcourse.batching.BatchedEngine` instead, which gives the same
    pieces)."""

    def __init__(self, model, tokenizer, model_name: str, max_tokens_cap: int) -> None:
        if isinstance(max_tokens_cap, bool) or not isinstance(max_tokens_cap, int) or max_tokens_cap < 1:
            raise ValueError(f"max_tokens_cap must be a positive int, got {max_tokens_cap!r}")
        if tokenizer is None:
            raise ValueError("serving needs a tokenizer to turn text into ids")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_tokens_cap = max_tokens_cap
        self.block_size = model.config.block_size
        self.device = next(model.parameters()).device
        self.eot = getattr(tokenizer, "eot_id", None)
        longest = _longest_token(tokenizer)
        #: a longer prompt (in characters) cannot fit the context: refused before tokenizing
        self.max_prompt_chars = None if longest is None else self.block_size * longest
        self.created = int(time.time())
        self.stats = {"requests": 0, "completed": 0, "cancelled": 0, "tokens": 0}

    # ---------------------------------------------------------------- parsing
    def encode(self, text: str, param: str) -> list[int]:
        if self.max_prompt_chars is not None and len(text) > self.max_prompt_chars:
            raise ServeError(f"this model's context is {self.block_size} tokens, and the {param} "
                             f"has {len(text)} characters, more than that many tokens can hold: "
                             "shorten it", param=param, code="context_length_exceeded")
        enc = getattr(self.tokenizer, "encode_ordinary", None) or self.tokenizer.encode
        try:
            ids = list(enc(text)) if text else []
        except (ValueError, KeyError) as err:
            raise ServeError(f"'{param}' cannot be tokenized: {err}", param=param) from None
        if not ids:
            if self.eot is None:
                raise ServeError(f"'{param}' is empty", param=param)
            ids = [self.eot]
        return ids

    def parse_json(self, raw: bytes, chat: bool) -> GenerationRequest:
        """:meth:`parse` of a raw JSON body (the server runs this off the event loop)."""
        return self.parse(decode_json(raw), chat)

    def parse(self, body: Any, chat: bool) -> GenerationRequest:
        """Validate a request body (a dict) and tokenize its prompt; a :class:`ServeError`
        (status 400) says what is wrong."""
        if not isinstance(body, dict):
            raise ServeError("the request body must be a JSON object")
        body = _check_unsupported(body)
        try:
            r = (ChatCompletionRequest if chat else CompletionRequest).model_validate(body)
        except ValidationError as exc:
            raise _openai_error(exc) from None
        if isinstance(r, ChatCompletionRequest):
            from .finetune.instruct import messages_to_prompt

            try:
                text = messages_to_prompt([m.model_dump(exclude_none=True) for m in r.messages])
            except ValueError as err:
                raise ServeError(str(err), param="messages") from None
            param = "messages"
        else:
            text, param = str(r.prompt), "prompt"

        prompt_ids = self.encode(text, param)
        room = self.block_size - len(prompt_ids)
        if room < 1:
            raise ServeError(f"this model's context is {self.block_size} tokens, and the {param} "
                             f"has {len(prompt_ids)}: shorten it", param=param,
                             code="context_length_exceeded")
        key, max_tokens = "max_tokens", r.max_tokens
        if isinstance(r, ChatCompletionRequest) and max_tokens is None and r.max_completion_tokens is not None:
            key, max_tokens = "max_completion_tokens", r.max_completion_tokens
        if max_tokens is None:
            max_tokens = min(self.max_tokens_cap if chat else DEFAULT_COMPLETION_TOKENS, room)
        elif max_tokens > self.max_tokens_cap:
            raise ServeError(f"'{key}' must be between 1 and {self.max_tokens_cap}, got "
                             f"{reprlib.repr(max_tokens)}", param=key, code="invalid_value")
        elif max_tokens > room:
            raise ServeError(f"this model's context is {self.block_size} tokens; the {param} "
                             f"({len(prompt_ids)}) plus {key} ({max_tokens}) exceed it",
                             param=key, code="context_length_exceeded")
        stop = [r.stop] if isinstance(r.stop, str) else list(r.stop or [])
        if chat:  # like the lesson's generate_responses: a new "### Instruction:" ends the answer
            stop = [*stop, CHAT_STOP]
        top_p = 1.0 if r.top_p is None else r.top_p
        return GenerationRequest(
            prompt_ids, max_tokens, 1.0 if r.temperature is None else r.temperature,
            None if top_p >= 1 else top_p, stop, r.seed, bool(r.stream),
            bool(r.stream_options and r.stream_options.include_usage))

    # ---------------------------------------------------------------- generation
    def pieces(self, req: GenerationRequest) -> Iterator[tuple[str, str | None, int]]:
        """Yield ``(text, finish_reason, completion_tokens)``: text as it becomes final (held
        back while it may be the start of a stop string or of a character); the last piece
        has the finish reason (``"stop"`` or ``"length"``). One request alone, generated in
        this thread (:func:`gptcourse.batching.generate_pieces`)."""
        from .batching import generate_pieces

        done = 0
        for piece in generate_pieces(self.model, self.tokenizer, req.prompt_ids, req.max_tokens,
                                     temperature=req.temperature, top_p=req.top_p,
                                     stop=req.stop, seed=req.seed):
            self.stats["tokens"] += piece[2] - done
            done = piece[2]
            yield piece


_Engine, _Request, _held_back = Engine, GenerationRequest, held_back  # the old private names


# --------------------------------------------------------------------------------------
# the app
# --------------------------------------------------------------------------------------


class _ClientGone(Exception):
    """The client closed the connection before it had sent its whole request body."""


def _openapi_components() -> tuple[dict, dict]:
    """JSON schemas of the two request bodies, referenced from ``/openapi.json``'s components."""
    from pydantic.json_schema import models_json_schema

    refs, defs = models_json_schema(
        [(CompletionRequest, "validation"), (ChatCompletionRequest, "validation")],
        ref_template="#/components/schemas/{model}")
    return ({"completions": refs[(CompletionRequest, "validation")],
             "chat": refs[(ChatCompletionRequest, "validation")]}, defs["$defs"])


def create_app(model, tokenizer, *, model_name: str = "gptcourse",
               max_tokens_cap: int = DEFAULT_MAX_TOKENS_CAP, api_key: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               body_timeout: float = DEFAULT_BODY_TIMEOUT,
               max_batch: int = DEFAULT_MAX_BATCH):
    """A FastAPI app serving ``model`` with OpenAI's completions and chat completions API.

    ``max_tokens_cap`` bounds ``max_tokens``; with ``api_key`` every ``/v1`` route and
    ``/openapi.json`` need the header ``Authorization: Bearer <api_key>`` (``/health`` and the
    chat page ``/`` stay open). A request body over ``max_body_bytes`` is a 413, one not
    received within ``body_timeout`` seconds a 408. Up to ``max_batch`` requests are decoded
    together (``max_batch=1``: one at a time); the KV cache holds ``max_batch`` sequences of
    ``block_size`` tokens. ``app.state.engine`` parses requests, ``app.state.batched`` (a
    :class:`~gptcourse.batching.BatchedEngine`) generates; ``engine.stats`` counts requests,
    completed / cancelled / failed ones and tokens. Connection limits are the server's: see
    :func:`server_options`.
    """
    from contextlib import asynccontextmanager
    from importlib import resources

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect

    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be a positive int, got {max_body_bytes!r}")
    from .batching import BatchedEngine

    engine = Engine(model, tokenizer, model_name, max_tokens_cap)
    batched = BatchedEngine(model, tokenizer, max_batch=max_batch)
    engine.stats = batched.stats  # one set of counters: the generating engine's
    # JSON decoding, validation and tokenization: off the event loop, beside generation
    parser = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="gptcourse-parse")
    page = resources.files("gptcourse").joinpath("static/chat.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app):
        yield
        batched.close()
        parser.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="gptcourse", summary="an OpenAI-compatible server for a course GPT",
                  lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.state.batched = batched

    def error(err: ServeError, close: bool = False) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else {}
        if close:  # the rest of the body is still on its way: do not keep the connection
            headers["Connection"] = "close"
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.exception_handler(ServeError)
    async def _serve_error(request, exc: ServeError):
        return error(exc, close=exc.status in (408, 413))

    @app.exception_handler(_ClientGone)
    async def _client_gone(request, exc):
        client = request.client
        log.info("%s closed the connection while sending its request body",
                 f"{client.host}:{client.port}" if client else "a client")
        return Response(status_code=499)  # nobody reads it

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        return error(ServeError(f"invalid request: {exc.errors()}", status=422))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return error(ServeError(str(exc.detail), status=exc.status_code,
                                code="not_found" if exc.status_code == 404 else None))

    @app.exception_handler(Exception)
    async def _internal_error(request, exc):
        return error(ServeError(f"internal error ({type(exc).__name__})", status=500,
                                type="server_error"))

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                 api_key.encode()):
            raise ServeError("missing or incorrect API key: send 'Authorization: Bearer <key>'",
                             status=401, code="invalid_api_key")

    too_large = ServeError(f"the request body is over this server's limit of {max_body_bytes} bytes",
                           status=413, code="request_too_large")

    async def read_body(request: Request) -> bytes:
        """The body, refused (413) as soon as it is known to be over the limit."""
        size = request.headers.get("content-length", "")
        if size.isdigit() and (len(size) > 18 or int(size) > max_body_bytes):
            raise too_large
        chunks, n = [], 0
        try:
            async with asyncio.timeout(body_timeout):
                async for chunk in request.stream():
                    n += len(chunk)
                    if n > max_body_bytes:
                        raise too_large
                    chunks.append(chunk)
        except ClientDisconnect:
            raise _ClientGone() from None
        except TimeoutError:
            raise ServeError(f"the request body did not arrive within {body_timeout:g} s",
                             status=408, code="request_timeout") from None
        return b"".join(chunks)

    @app.get("/", include_in_schema=False)
    async def chat_page():
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": engine.model_name, "auth": api_key is not None}

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request):
        check_key(request)
        return JSONResponse(app.openapi())

    def model_card() -> dict:
        return {"id": engine.model_name, "object": "model", "created": engine.created,
                "owned_by": "gptcourse"}

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def one_model(name: str, request: Request):
        check_key(request)
        if name != engine.model_name:
            raise ServeError(f"the model {name!r} does not exist; this server has "
                             f"{engine.model_name!r}", status=404, param="model",
                             code="model_not_found")
        return model_card()

    async def complete(request: Request, chat: bool):
        check_key(request)
        raw = await read_body(request)
        loop = asyncio.get_running_loop()
        req = await loop.run_in_executor(parser, engine.parse_json, raw, chat)
        engine.stats["requests"] += 1
        rid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        created = int(time.time())
        head = {"id": rid, "object": "chat.completion" if chat else "text_completion",
                "created": created, "model": engine.model_name}

        def usage(n: int) -> dict:
            p = len(req.prompt_ids)
            return {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n}

        # generation: the batched engine's thread; this request leaves the batch when its
        # client goes away (polled, also while the request waits for a slot)
        job = batched.submit(req.prompt_ids, req.max_tokens, temperature=req.temperature,
                             top_p=req.top_p, stop=req.stop, seed=req.seed)

        async def watch_client():
            while not await request.is_disconnected():
                await asyncio.sleep(DISCONNECT_POLL)
            job.cancel()

        watcher = asyncio.create_task(watch_client())

        if not req.stream:
            try:
                pieces = [p async for p in job]
            finally:
                watcher.cancel()
                job.cancel()  # a no-op once the answer is complete
            if pieces[-1][1] == "cancelled":  # nobody is waiting for the answer
                return Response(status_code=499)
            text = "".join(p[0] for p in pieces)
            _, finish, n = pieces[-1]
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": text},
                          "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            return {**head, "choices": [choice], "usage": usage(n)}

        chunk_head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}

        def chunk(text: str | None, finish: str | None, role: bool = False) -> str:
            if chat:
                delta: dict = {"role": "assistant", "content": ""} if role else (
                    {"content": text} if text is not None else {})
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": None,
                          "finish_reason": finish}
            return f"data: {json.dumps({**chunk_head, 'choices': [choice]})}\n\n"

        async def events():
            try:
                if chat:
                    yield chunk(None, None, role=True)
                async for text, finish, n in job:
                    if finish == "cancelled":
                        return
                    if text or finish is None:
                        yield chunk(text, None)
                    if finish is None:
                        continue
                    yield chunk(None, finish)
                    if req.include_usage:
                        yield f"data: {json.dumps({**chunk_head, 'choices': [], 'usage': usage(n)})}\n\n"
                    yield "data: [DONE]\n\n"
            except Exception as exc:  # the headers are sent: report it as an event
                err = ServeError(f"internal error ({type(exc).__name__})", status=500,
                                 type="server_error")
                yield f"data: {json.dumps(err.body())}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                watcher.cancel()
                job.cancel()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    refs, schemas = _openapi_components()

    def body_schema(name: str) -> dict:
        return {"requestBody": {"required": True, "content": {"application/json": {"schema": refs[name]}}}}

    @app.post("/v1/completions", openapi_extra=body_schema("completions"))
    async def completions(request: Request):
        return await complete(request, chat=False)

    @app.post("/v1/chat/completions", openapi_extra=body_schema("chat"))
    async def chat_completions(request: Request):
        return await complete(request, chat=True)

    base_openapi = app.openapi

    def openapi_with_schemas() -> dict:
        """FastAPI's schema of the routes, plus the request models the routes point to."""
        if app.openapi_schema is None:
            base_openapi().setdefault("components", {}).setdefault("schemas", {}).update(schemas)
        return app.openapi_schema

    app.openapi = openapi_with_schemas
    return app


# --------------------------------------------------------------------------------------
# connections: a header timeout and a connection limit for uvicorn
# --------------------------------------------------------------------------------------


def _guarded_protocol():
    """uvicorn's h11 protocol, with a deadline for request headers and a connection limit."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        last_warning = 0.0  # the "connection limit" warning: at most one every 10 s

        def __init__(self, *args: Any, header_timeout: float, max_connections: int, **kw: Any) -> None:
            super().__init__(*args, **kw)
            self.header_timeout, self.max_connections = header_timeout, max_connections
            self.deadline: asyncio.TimerHandle | None = None
            self.refused = False
            self.born = time.monotonic()

        def idle(self) -> bool:
            """No request in progress (maybe part of one's headers)."""
            return self.cycle is None or self.cycle.response_complete

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > self.max_connections:
                idle = [c for c in self.connections
                        if c is not self and isinstance(c, GuardedH11Protocol) and c.idle()]
                self.warn(f"{len(self.connections) - 1} connections open, the limit "
                          f"(--max-connections {self.max_connections}): closing idle ones"
                          + ("" if idle else ", refusing new ones with 503"))
                if not idle:
                    self.refuse()
                    return
                oldest = min(idle, key=lambda c: c.born)
                oldest.transport.close()
                oldest.connections.discard(oldest)  # connection_lost comes later
            self.arm()

        def warn(self, message: str) -> None:
            now = time.monotonic()
            if now - GuardedH11Protocol.last_warning > 10:
                GuardedH11Protocol.last_warning = now
                self.logger.warning(message)

        def refuse(self) -> None:
            err = ServeError("the server is at its connection limit; retry in a moment", status=503,
                             type="server_error", code="server_busy")
            body = json.dumps(err.body()).encode()
            self.transport.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                                 b"retry-after: 1\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
                                 % (len(body), body))
            self.transport.close()
            self.connections.discard(self)
            self.refused = True  # what arrives before the close is dropped

        def arm(self) -> None:
            """Close the connection unless a request's headers arrive within the timeout."""
            self.disarm()
            self.deadline = self.loop.call_later(self.header_timeout, self.expire)

        def disarm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

        def expire(self) -> None:
            if self.idle() and not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self.refused:
                return
            cycle = self.cycle
            super().data_received(data)
            if self.cycle is not cycle:  # a request's headers are complete
                self.disarm()

        def on_response_complete(self) -> None:
            cycle = self.cycle
            super().on_response_complete()
            if self.transport.is_closing():
                self.disarm()
            elif self.cycle is cycle:  # waiting for the next request (keep-alive)
                self.arm()
            else:  # a pipelined request started at once
                self.disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self.disarm()
            super().connection_lost(exc)

    return GuardedH11Protocol


def server_options(host: str = "127.0.0.1", port: int = 8000, *,
                   header_timeout: float = DEFAULT_HEADER_TIMEOUT,
                   keep_alive: float = DEFAULT_KEEP_ALIVE,
                   max_connections: int = DEFAULT_MAX_CONNECTIONS,
                   backlog: int = DEFAULT_BACKLOG, log_level: str = "info") -> dict:
    """Keyword arguments of ``uvicorn.run`` / ``uvicorn.Config`` for a server that survives
    slow and idle clients: request headers must arrive within ``header_timeout`` seconds of
    connecting (or of the previous response), an idle keep-alive connection closes after
    ``keep_alive`` seconds, and at most ``max_connections`` connections are open (the oldest
    idle one is closed for a new one; 503 when all are busy). ``max_connections`` is lowered
    to stay under the process's limit on open files."""
    for name, v in (("header_timeout", header_timeout), ("keep_alive", keep_alive)):
        if not v > 0:
            raise ValueError(f"{name} must be a positive number of seconds, got {v!r}")
    if max_connections < 1 or backlog < 1:
        raise ValueError(f"max_connections and backlog must be positive, got {max_connections}, {backlog}")
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft != resource.RLIM_INFINITY and max_connections > soft - 64:
            max_connections = max(1, soft - 64)  # keep files for the model, logs, the listener
    http = functools.partial(_guarded_protocol(), header_timeout=header_timeout,
                             max_connections=max_connections)
    return {"host": host, "port": port, "http": http, "timeout_keep_alive": keep_alive,
            "backlog": backlog, "log_level": log_level}


# --------------------------------------------------------------------------------------
# loading and running
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def background(app, host: str = "127.0.0.1", port: int = 0, timeout: float = 20.0,
               **options: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yields the base URL
    (``http://host:port``; ``port=0`` picks a free one) and stops the server on exit.
    For notebooks, tests and benchmarks; ``gptcourse serve`` runs in the foreground.
    ``options`` are :func:`server_options`' (``header_timeout``, ``max_connections``, ...;
    ``log_level`` defaults to ``"warning"`` here).

    The socket is created with ``IPPROTO_TCP`` so asyncio sets ``TCP_NODELAY`` on accepted
    connections, as ``uvicorn.run`` does (with protocol 0 it does not, and every keep-alive
    response waits ~40 ms for a delayed ACK)."""
    import socket
    import threading

    import uvicorn

    kw = server_options(host, port, **{"log_level": "warning", **options})
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", **kw))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"uvicorn did not start on {host}:{sock.getsockname()[1]}")
            time.sleep(0.02)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def load_for_serving(checkpoint: str | os.PathLike | None = None, pretrained: str | None = None,
                     device: str | None = None):
    """``(model, tokenizer, model_name)`` from a course checkpoint (a run or checkpoint folder)
    or GPT-2 weights (``pretrained``: a hub id such as ``"gpt2"`` or a local folder) -- one
    of the two."""
    from pathlib import Path

    from . import profiles

    if (checkpoint is None) == (pretrained is None):
        raise ValueError("give exactly one of --checkpoint PATH or --pretrained NAME")
    device = profiles.device(device)
    if checkpoint is not None:
        from .train import load_model

        model, tokenizer, _ = load_model(checkpoint, device=device)
        if tokenizer is None:
            raise ValueError(f"{checkpoint} recorded no tokenizer; cannot turn text into ids")
        path = Path(checkpoint).resolve()
        name = path.parent.parent.name if path.parent.name == "checkpoints" else path.name
        return model, tokenizer, name
    from .model import GPT
    from .tokenizer import get_tokenizer

    model = GPT.from_pretrained(pretrained).to(device).eval()
    return model, get_tokenizer("gpt2"), Path(str(pretrained)).name


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``gptcourse serve`` (also ``python -m gptcourse.serve``)."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a run or checkpoint folder written by gptcourse train")
    src.add_argument("--pretrained", help="GPT-2 weights: a hub id (gpt2, gpt2-medium, ...) or folder")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: env GPTCOURSE_API_KEY)")
    p.add_argument("--max-tokens-cap", type=int, default=DEFAULT_MAX_TOKENS_CAP,
                   help=f"the most tokens one request may ask for (default {DEFAULT_MAX_TOKENS_CAP})")
    p.add_argument("--model-name", default=None, help="the model id clients see")
    p.add_argument("--device", default=None, help="default: best available")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                   help="requests decoded together; more wait for a slot (default "
                        f"{DEFAULT_MAX_BATCH}; 1: one at a time). The KV cache holds this many "
                        "sequences of the model's context")
    g = p.add_argument_group("limits (slow, idle and hostile clients)")
    g.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help=f"larger request bodies are refused with 413 (default {DEFAULT_MAX_BODY_BYTES})")
    g.add_argument("--body-timeout", type=float, default=DEFAULT_BODY_TIMEOUT,
                   help=f"seconds to receive a request body, else 408 (default {DEFAULT_BODY_TIMEOUT:g})")
    g.add_argument("--header-timeout", type=float, default=DEFAULT_HEADER_TIMEOUT,
                   help="seconds a connection has to send its request headers "
                        f"(default {DEFAULT_HEADER_TIMEOUT:g})")
    g.add_argument("--keep-alive", type=float, default=DEFAULT_KEEP_ALIVE,
                   help=f"seconds an idle keep-alive connection stays open (default {DEFAULT_KEEP_ALIVE:g})")
    g.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS,
                   help="open connections at most: a new one closes the oldest idle one, or gets 503 "
                        f"(default {DEFAULT_MAX_CONNECTIONS})")
    g.add_argument("--backlog", type=int, default=DEFAULT_BACKLOG,
                   help=f"connections waiting to be accepted (default {DEFAULT_BACKLOG})")
    return p


def run(args: argparse.Namespace) -> int:
    """Load the model named by ``args`` (see :func:`add_arguments`) and serve it with uvicorn."""
    import uvicorn

    model, tokenizer, name = load_for_serving(args.checkpoint, args.pretrained, args.device)
    api_key = args.api_key or os.environ.get("GPTCOURSE_API_KEY") or None
    app = create_app(model, tokenizer, model_name=args.model_name or name,
                     max_tokens_cap=args.max_tokens_cap, api_key=api_key,
                     max_body_bytes=args.max_body_bytes, body_timeout=args.body_timeout,
                     max_batch=args.max_batch)
    if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print(f"warning: serving on {args.host} without an API key: anyone who can reach this "
              "address can use the model")
    print(f"serving {args.model_name or name} on http://{args.host}:{args.port}/v1, a chat page on "
          f"http://{args.host}:{args.port}/ ({model.num_params():,} parameters; API key "
          f"{'required' if api_key else 'off'})")
    uvicorn.run(app, **server_options(args.host, args.port, header_timeout=args.header_timeout,
                                      keep_alive=args.keep_alive, max_connections=args.max_connections,
                                      backlog=args.backlog))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="python -m gptcourse.serve",
                                                   description=__doc__.splitlines()[0]))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
