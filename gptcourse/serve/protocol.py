"""The server's requests: the OpenAI request schema (pydantic models), its errors in OpenAI's
shape, and :class:`Engine`, which turns a request body into a :class:`GenerationRequest`
(validated, the prompt tokenized) and can generate its text alone.
"""

import contextlib
import json
import reprlib
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from .. import validate

__all__ = ["CHAT_STOP", "ChatCompletionRequest", "ChatMessage", "CompletionRequest",
           "DEFAULT_MAX_TOKENS_CAP", "Engine", "GenerationRequest", "MIN_TEMPERATURE", "MIN_TOP_P",
           "ServeError", "StreamOptions", "decode_json"]

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


_longest_tokens: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


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
        max_tokens_cap = validate.integer("max_tokens_cap", max_tokens_cap, min=1)
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
        self.stats = {"tokens": 0}  # what pieces() generated (the server uses the batched engine's)

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
            from ..finetune.instruct import messages_to_prompt

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
        from ..batching import generate_pieces

        done = 0
        for piece in generate_pieces(self.model, self.tokenizer, req.prompt_ids, req.max_tokens,
                                     temperature=req.temperature, top_p=req.top_p,
                                     stop=req.stop, seed=req.seed):
            self.stats["tokens"] += piece[2] - done
            done = piece[2]
            yield piece
