"""Serve a GPT over HTTP with OpenAI's API: ``/v1/completions``, ``/v1/chat/completions``.

    gptcourse serve --checkpoint runs/instruct          # a course checkpoint
    gptcourse serve --pretrained gpt2 --port 8000       # GPT-2 weights from the hub

Any OpenAI client then talks to it::

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
    client.chat.completions.create(model="gpt2", messages=[{"role": "user", "content": "Hi"}])

What the server does:

* ``POST /v1/completions`` (``prompt``) and ``POST /v1/chat/completions`` (``messages``, turned
  into the instruction lesson's Alpaca prompt by
  :func:`gptcourse.finetune.instruct.messages_to_prompt`), with ``max_tokens`` (default 16
  for a completion, for a chat the cap or what the context leaves; ``max_completion_tokens``
  is read too), ``temperature`` (0: greedy), ``top_p``, ``stop`` (a string or up to 4; left
  out of the text, as OpenAI does), ``n=1``, ``seed`` and ``stream`` (server-sent events
  ending with ``data: [DONE]``; ``stream_options.include_usage`` adds a usage chunk).
  Generation ends at the end-of-text token; a chat answer also ends at ``"\\n###"``, where
  the model would start the template's next section (as the lesson's ``generate_responses``).
  The ``model`` field is not checked: the server has one model. ``GET /v1/models`` and
  ``GET /health`` (open even with an API key) too.
* Bad requests get OpenAI's error body ``{"error": {"message", "type", "param", "code"}}``
  with status 400 (401 for a missing or wrong API key, 404 for an unknown route), never a
  traceback. A prompt that leaves no room in the model's context, or a ``max_tokens`` that
  does not fit after it, is ``context_length_exceeded``.
* One model, one worker thread: requests queue for the model (an asyncio lock), and
  generation runs off the event loop. A request with a ``seed`` samples with its own
  ``torch.Generator``, so its answer is the same whether it ran alone or among others.
* A client that disconnects (streaming or not) stops its generation at the next token.
"""

import argparse
import asyncio
import concurrent.futures
import contextlib
import hmac
import json
import os
import secrets
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ServeError", "add_arguments", "create_app", "load_for_serving", "main", "run"]

#: default cap on ``max_tokens`` (a request may not ask for more)
DEFAULT_MAX_TOKENS_CAP = 512
#: ``max_tokens`` of a completion that does not set it (OpenAI's legacy default)
DEFAULT_COMPLETION_TOKENS = 16
#: a chat answer also ends where the model starts a new ``### ...`` section of the template
CHAT_STOP = "\n###"


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
# request parsing and validation
# --------------------------------------------------------------------------------------


@dataclass
class _Request:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float | None
    stop: list[str]
    seed: int | None
    stream: bool
    include_usage: bool


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def _number(body: Mapping, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body.get(name)
    if v is None:
        return default
    if not _is_number(v):
        raise ServeError(f"'{name}' must be a number, got {json.dumps(v)}", param=name,
                         code="invalid_type")
    if v < lo or v > hi or (lo_open and v == lo):
        left = "(" if lo_open else "["
        raise ServeError(f"'{name}' must be in {left}{lo}, {hi}], got {v}", param=name,
                         code="invalid_value")
    return float(v)


def _stop(body: Mapping) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    items = [v] if isinstance(v, str) else v
    if (not isinstance(items, list) or len(items) > 4
            or any(not isinstance(s, str) or not s for s in items)):
        raise ServeError("'stop' must be a non-empty string or a list of up to 4 of them",
                         param="stop", code="invalid_type")
    return list(items)


class _Engine:
    """The model, its tokenizer and the one worker thread that runs it."""

    def __init__(self, model, tokenizer, model_name: str, max_tokens_cap: int) -> None:
        if not _is_int(max_tokens_cap) or max_tokens_cap < 1:
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
        self.created = int(time.time())
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gptcourse-serve")
        self._locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.stats = {"requests": 0, "completed": 0, "cancelled": 0, "tokens": 0}

    def lock(self) -> asyncio.Lock:
        """The queue for the model, one per event loop (tests may run several loops)."""
        loop = asyncio.get_running_loop()
        if loop not in self._locks:
            self._locks[loop] = asyncio.Lock()
        return self._locks[loop]

    # ---------------------------------------------------------------- parsing
    def encode(self, text: str, param: str) -> list[int]:
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

    def parse(self, body: Any, chat: bool) -> _Request:
        if not isinstance(body, dict):
            raise ServeError("the request body must be a JSON object")
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise ServeError("'model' must be a string", param="model", code="invalid_type")
        if chat:
            from .finetune.instruct import messages_to_prompt

            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise ServeError("'messages' must be a non-empty list of {role, content}",
                                 param="messages", code="invalid_type" if messages else None)
            try:
                text = messages_to_prompt(messages)
            except ValueError as err:
                raise ServeError(str(err), param="messages") from None
            param = "messages"
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if isinstance(prompt, list):
                raise ServeError("'prompt' must be one string (batches of prompts are not "
                                 "supported)", param="prompt", code="invalid_value")
            if not isinstance(prompt, str):
                raise ServeError("'prompt' must be a string", param="prompt",
                                 code="invalid_type")
            text, param = prompt, "prompt"
        n = body.get("n")
        if n is not None and (isinstance(n, bool) or n != 1):
            raise ServeError("only n=1 is supported", param="n", code="invalid_value")
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise ServeError("'stream' must be true or false", param="stream", code="invalid_type")
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise ServeError("'stream_options' must be an object", param="stream_options",
                             code="invalid_type")
        seed = body.get("seed")
        if seed is not None and not _is_int(seed):
            raise ServeError("'seed' must be an integer", param="seed", code="invalid_type")
        temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
        top_p = _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
        stop = _stop(body)

        prompt_ids = self.encode(text, param)
        room = self.block_size - len(prompt_ids)
        if room < 1:
            raise ServeError(f"this model's context is {self.block_size} tokens, and the {param} "
                             f"has {len(prompt_ids)}: shorten it", param=param,
                             code="context_length_exceeded")
        key = "max_tokens"
        max_tokens = body.get(key)
        if chat and max_tokens is None and body.get("max_completion_tokens") is not None:
            key = "max_completion_tokens"
            max_tokens = body[key]
        if max_tokens is None:
            max_tokens = min(self.max_tokens_cap, room) if chat else min(DEFAULT_COMPLETION_TOKENS, room)
        elif not _is_int(max_tokens):
            raise ServeError(f"'{key}' must be an integer", param=key, code="invalid_type")
        elif max_tokens < 1 or max_tokens > self.max_tokens_cap:
            raise ServeError(f"'{key}' must be between 1 and {self.max_tokens_cap}, got "
                             f"{max_tokens}", param=key, code="invalid_value")
        elif max_tokens > room:
            raise ServeError(f"this model's context is {self.block_size} tokens; the {param} "
                             f"({len(prompt_ids)}) plus {key} ({max_tokens}) exceed it",
                             param=key, code="context_length_exceeded")
        if chat:  # like the lesson's generate_responses: a new "### Instruction:" ends the answer
            stop = [*stop, CHAT_STOP]
        return _Request(prompt_ids, max_tokens, temperature, None if top_p >= 1 else top_p,
                        stop, seed, bool(stream), bool((options or {}).get("include_usage")))

    # ---------------------------------------------------------------- generation
    def pieces(self, req: _Request) -> Iterator[tuple[str, str | None, int]]:
        """Yield ``(text, finish_reason, completion_tokens)``: text as it becomes final (held
        back while it may be the start of a stop string or of a character); the last piece
        has the finish reason (``"stop"`` or ``"length"``)."""
        import torch

        from .generate import stream

        gen = torch.Generator(device=self.device)
        if req.seed is not None:
            gen.manual_seed(req.seed)
        else:
            gen.manual_seed(secrets.randbits(63))
        steps = stream(self.model, req.prompt_ids, req.max_tokens, temperature=req.temperature,
                       top_p=req.top_p, stop=self.eot, generator=gen)
        ids: list[int] = []
        sent = 0
        finish = "length"
        text = ""
        try:
            for step in steps:
                t = int(step[0])
                if t == self.eot:
                    finish = "stop"
                    break
                ids.append(t)
                self.stats["tokens"] += 1
                text = self.tokenizer.decode(ids)
                cuts = [i for i in (text.find(s, max(0, sent - len(s))) for s in req.stop) if i >= 0]
                if cuts:
                    text = text[:min(cuts)]
                    finish = "stop"
                    break
                safe = len(text) - _held_back(text, req.stop)
                while safe > sent and text[safe - 1] == "\ufffd":  # maybe half a character
                    safe -= 1
                if safe > sent:
                    yield text[sent:safe], None, len(ids)
                    sent = safe
        finally:
            steps.close()
        yield text[sent:], finish, len(ids)


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is the start of a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


# --------------------------------------------------------------------------------------
# the app
# --------------------------------------------------------------------------------------


def create_app(model, tokenizer, *, model_name: str = "gptcourse",
               max_tokens_cap: int = DEFAULT_MAX_TOKENS_CAP, api_key: str | None = None):
    """A FastAPI app serving ``model`` with OpenAI's completions and chat completions API.

    ``max_tokens_cap`` bounds ``max_tokens``; with ``api_key`` every ``/v1`` route needs the
    header ``Authorization: Bearer <api_key>`` (``/health`` stays open). ``app.state.engine``
    holds the model and counters (``engine.stats``).
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    engine = _Engine(model, tokenizer, model_name, max_tokens_cap)

    @asynccontextmanager
    async def lifespan(app):
        yield
        engine.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="gptcourse", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.engine = engine

    def error(err: ServeError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.exception_handler(ServeError)
    async def _serve_error(request, exc: ServeError):
        return error(exc)

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

    async def read_json(request: Request) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ServeError(f"the request body is not valid JSON: {err}",
                             code="invalid_json") from None

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": engine.model_name}

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
        req = engine.parse(await read_json(request), chat)
        engine.stats["requests"] += 1
        rid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        created = int(time.time())
        head = {"id": rid, "object": "chat.completion" if chat else "text_completion",
                "created": created, "model": engine.model_name}

        def usage(n: int) -> dict:
            p = len(req.prompt_ids)
            return {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n}

        loop = asyncio.get_running_loop()

        async def run_pieces():
            """The pieces of ``req``, one step at a time on the worker thread (hold the
            lock); stops early when the client has gone away."""
            it = engine.pieces(req)
            try:
                while not await request.is_disconnected():
                    piece = await loop.run_in_executor(engine.executor, next, it, None)
                    if piece is None:
                        return
                    yield piece
                    if piece[1] is not None:
                        return
            finally:
                # the worker may be inside next(it): close it there, after that step
                with contextlib.suppress(RuntimeError):  # the executor is shut down
                    engine.executor.submit(it.close)

        if not req.stream:
            async with engine.lock():
                pieces = [p async for p in run_pieces()]
            if not pieces or pieces[-1][1] is None:  # nobody is waiting for the answer
                engine.stats["cancelled"] += 1
                return Response(status_code=499)
            engine.stats["completed"] += 1
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
            done = False
            try:
                async with engine.lock():
                    if chat:
                        yield chunk(None, None, role=True)
                    async for text, finish, n in run_pieces():
                        if text or finish is None:
                            yield chunk(text, None)
                        if finish is None:
                            continue
                        yield chunk(None, finish)
                        if req.include_usage:
                            yield f"data: {json.dumps({**chunk_head, 'choices': [], 'usage': usage(n)})}\n\n"
                        yield "data: [DONE]\n\n"
                        done = True
            except Exception as exc:  # the headers are sent: report it as an event
                err = ServeError(f"internal error ({type(exc).__name__})", status=500,
                                 type="server_error")
                yield f"data: {json.dumps(err.body())}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                engine.stats["completed" if done else "cancelled"] += 1

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await complete(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await complete(request, chat=True)

    return app


# --------------------------------------------------------------------------------------
# loading and running
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def background(app, host: str = "127.0.0.1", port: int = 0, timeout: float = 20.0
               ) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yields the base URL
    (``http://host:port``; ``port=0`` picks a free one) and stops the server on exit.
    For notebooks, tests and benchmarks; ``gptcourse serve`` runs in the foreground.

    The socket is created with ``IPPROTO_TCP`` so asyncio sets ``TCP_NODELAY`` on accepted
    connections, as ``uvicorn.run`` does (with protocol 0 it does not, and every keep-alive
    response waits ~40 ms for a delayed ACK)."""
    import socket
    import threading

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
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
    return p


def run(args: argparse.Namespace) -> int:
    """Load the model named by ``args`` (see :func:`add_arguments`) and serve it with uvicorn."""
    import uvicorn

    model, tokenizer, name = load_for_serving(args.checkpoint, args.pretrained, args.device)
    api_key = args.api_key or os.environ.get("GPTCOURSE_API_KEY") or None
    app = create_app(model, tokenizer, model_name=args.model_name or name,
                     max_tokens_cap=args.max_tokens_cap, api_key=api_key)
    if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print(f"warning: serving on {args.host} without an API key: anyone who can reach this "
              "address can use the model")
    print(f"serving {args.model_name or name} on http://{args.host}:{args.port}/v1 "
          f"({model.num_params():,} parameters; API key {'required' if api_key else 'off'})")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="python -m gptcourse.serve",
                                                   description=__doc__.splitlines()[0]))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
