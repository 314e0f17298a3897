"""The FastAPI app: routes, API key, body limits, and generation with continuous batching."""

import asyncio
import concurrent.futures
import hmac
import json
import logging
import secrets
import time

from .. import validate
from .protocol import (
    DEFAULT_MAX_TOKENS_CAP,
    ChatCompletionRequest,
    CompletionRequest,
    Engine,
    ServeError,
)

__all__ = ["DEFAULT_BODY_TIMEOUT", "DEFAULT_MAX_BATCH", "DEFAULT_MAX_BODY_BYTES", "create_app"]

#: defaults of the app's limits (the connection limits are in :mod:`.connections`)
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_BODY_TIMEOUT = 30.0
#: requests decoded together (the batched engine's KV cache holds this many sequences)
DEFAULT_MAX_BATCH = 16
#: how often a waiting or generating request checks whether its client is still there (s)
DISCONNECT_POLL = 0.1

log = logging.getLogger("uvicorn.error")  # the server's log, formatted by uvicorn


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

    max_body_bytes = validate.integer("max_body_bytes", max_body_bytes, min=1)
    body_timeout = validate.number("body_timeout", body_timeout, min=0, min_open=True)
    from ..batching import BatchedEngine

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

    def too_large() -> ServeError:  # a new one each time: a raised exception keeps its traceback
        return ServeError(f"the request body is over this server's limit of {max_body_bytes} bytes",
                          status=413, code="request_too_large")

    async def read_body(request: Request) -> bytes:
        """The body, refused (413) as soon as it is known to be over the limit."""
        size = request.headers.get("content-length", "")
        if size.isdigit() and (len(size) > 18 or int(size) > max_body_bytes):
            raise too_large()
        chunks, n = [], 0
        try:
            async with asyncio.timeout(body_timeout):
                async for chunk in request.stream():
                    n += len(chunk)
                    if n > max_body_bytes:
                        raise too_large()
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

