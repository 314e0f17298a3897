"""The server against hostile and slow clients (issue 12, section 3): body limits, JSON bombs,
out-of-range numbers, unsupported fields, idle and slow connections, a full server, clients
that disconnect mid-body. Loopback only; every wait is bounded (a few seconds at most)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from openai_errors import openai_error as _error  # noqa: E402

from gptcourse.serve import background, create_app  # noqa: E402

CAP = 16
GOOD = {"prompt": "Hi", "max_tokens": 2, "seed": 0}


def _app(model, tokenizer, **kw):
    return create_app(model, tokenizer, model_name="tiny", max_tokens_cap=CAP, **kw)


@pytest.fixture
def client(model, tokenizer):
    with TestClient(_app(model, tokenizer, max_body_bytes=4096)) as c:
        yield c


@pytest.fixture(scope="module")
def server(model, tokenizer):
    with background(_app(model, tokenizer, max_body_bytes=4096)) as url:
        yield url


def _post_raw(client, raw: bytes, path: str = "/v1/completions"):
    return client.post(path, content=raw, headers={"Content-Type": "application/json"})


class _Log(logging.Handler):
    """Collects the records of uvicorn's server log (enter it after the server started:
    uvicorn's logging config replaces the handlers)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> _Log:
        logging.getLogger("uvicorn.error").addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger("uvicorn.error").removeHandler(self)


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=5)
    return s


def _read_all(s: socket.socket, timeout: float = 5.0) -> bytes:
    """What the server sends until it closes the connection (at most ``timeout`` seconds)."""
    s.settimeout(timeout)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


# ------------------------------------------------------------------ bodies


def test_a_body_over_the_limit_is_413(client):
    err = _error(client.post("/v1/completions", json={"prompt": "a" * 5000}), 413,
                 code="request_too_large")
    assert "4096 bytes" in err["message"]


def test_a_huge_content_length_is_refused_before_the_body_is_sent(server):
    with _connect(server) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000000000\r\n\r\n")
        answer = _read_all(s)  # the server answers and closes without waiting for 1 GB
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_too_large"


def test_a_body_that_does_not_arrive_is_408(model, tokenizer):
    app = _app(model, tokenizer, body_timeout=0.3)
    with background(app) as url, _connect(url) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"pro")
        answer = _read_all(s)
    assert answer.startswith(b"HTTP/1.1 408 ")


@pytest.mark.parametrize("raw, what", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    (b'{"prompt": "x", "seed": ' + b"9" * 5000 + b"}", "number"),
])
def test_json_bombs_are_400(model, tokenizer, raw, what):
    app = _app(model, tokenizer)
    with TestClient(app) as c:
        err = _error(_post_raw(c, raw), 400, code="invalid_json")
    assert what in err["message"]


def test_a_deep_but_parseable_prompt_is_a_type_error(client):
    raw = b'{"prompt": ' + b"[" * 500 + b"]" * 500 + b"}"
    _error(_post_raw(client, raw), 400, "prompt")


# ------------------------------------------------------------------ numbers at the edges


@pytest.mark.parametrize("seed", [2**64, -2**63 - 1, 10**4000])
def test_seeds_outside_int64_and_uint64_are_400(client, seed):
    _error(client.post("/v1/completions", json={**GOOD, "seed": seed}), 400, "seed", "invalid_value")


@pytest.mark.parametrize("seed", [2**64 - 1, -2**63, 2**63])
def test_seeds_at_the_edges_work(client, seed):
    assert client.post("/v1/completions", json={**GOOD, "seed": seed}).status_code == 200


@pytest.mark.parametrize("field, value", [
    ("temperature", 1e-39), ("temperature", 5e-5), ("top_p", 1e-46), ("top_p", 1e-7),
    ("temperature", 1e999), ("max_tokens", 10**4000),
])
def test_tiny_and_huge_sampling_numbers_are_400(client, field, value):
    raw = json.dumps({**GOOD, field: value}).replace("Infinity", "1e999").encode()
    _error(_post_raw(client, raw), 400, field)


def test_temperature_zero_and_the_smallest_allowed_values_work(client):
    from gptcourse.serve import MIN_TEMPERATURE, MIN_TOP_P

    for extra in ({"temperature": 0}, {"temperature": MIN_TEMPERATURE}, {"top_p": MIN_TOP_P}):
        assert client.post("/v1/completions", json={**GOOD, **extra}).status_code == 200, extra


def test_hostile_requests_do_not_break_the_next_pooled_request(server):
    bad = [json.dumps({**GOOD, "seed": 2**64}).encode(), json.dumps({**GOOD, "temperature": 1e-39}).encode(),
           json.dumps({**GOOD, "top_p": 1e-46}).encode(), b"[" * 100_000,
           b'{"prompt": "x", "seed": ' + b"9" * 5000 + b"}", b"{" + b" " * 5000 + b"}"]
    with httpx.Client(base_url=server, timeout=10) as c:
        for raw in bad:
            r = c.post("/v1/completions", content=raw, headers={"Content-Type": "application/json"})
            assert r.status_code in (400, 413), r.text
            ok = c.post("/v1/completions", json=GOOD)
            assert ok.status_code == 200, (raw[:40], ok.text)


# ------------------------------------------------------------------ fields the server does not do


@pytest.mark.parametrize("field, value", [
    ("logprobs", 2), ("logprobs", True), ("echo", True), ("best_of", 2), ("suffix", "end"),
    ("presence_penalty", 0.5), ("frequency_penalty", -1), ("logit_bias", {"50256": -100}),
])
def test_unsupported_fields_are_400_not_ignored(client, field, value):
    err = _error(client.post("/v1/completions", json={**GOOD, field: value}), 400, field,
                 "unsupported_parameter")
    assert "not supported" in err["message"]


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}),
    ("/v1/chat/completions", {"response_format": {"type": "json_object"}}),
    ("/v1/chat/completions", {"top_logprobs": 3, "logprobs": True}),
])
def test_unsupported_chat_fields_are_400(client, path, body):
    msgs = [{"role": "user", "content": "Hi"}]
    r = client.post(path, json={"messages": msgs, "max_tokens": 2, **body})
    _error(r, 400, code="unsupported_parameter")


def test_unsupported_fields_at_their_neutral_values_are_fine(client):
    neutral = {"logprobs": None, "echo": False, "best_of": 1, "presence_penalty": 0,
               "frequency_penalty": 0.0, "logit_bias": {}, "user": "me"}
    assert client.post("/v1/completions", json={**GOOD, **neutral}).status_code == 200


def test_unknown_fields_are_400(client):
    _error(client.post("/v1/completions", json={**GOOD, "temprature": 0.5}), 400, "temprature",
           "unknown_parameter")
    _error(client.post("/v1/completions", json={**GOOD, "stream_options": {"x": 1}}), 400,
           "stream_options")


def test_a_missing_field_says_so(client):
    err = _error(client.post("/v1/chat/completions", json={"max_tokens": 2}), 400, "messages",
                 "missing_required_parameter")
    assert "messages" in err["message"]


# ------------------------------------------------------------------ the schema


def test_openapi_json_describes_the_requests(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert {"CompletionRequest", "ChatCompletionRequest", "ChatMessage"} <= set(schemas)
    assert {"prompt", "max_tokens", "seed", "stop"} <= set(schemas["CompletionRequest"]["properties"])
    body = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatCompletionRequest"}


def test_openapi_json_needs_the_key_when_one_is_set(model, tokenizer):
    app = _app(model, tokenizer, api_key="k")
    c = TestClient(app)
    _error(c.get("/openapi.json"), 401, code="invalid_api_key")
    assert c.get("/openapi.json", headers={"Authorization": "Bearer k"}).status_code == 200
    assert c.get("/health").json()["auth"] is True


# ------------------------------------------------------------------ the event loop stays free


class _SlowTokenizer:
    """The GPT-2 tokenizer, whose encode waits until released (a quadratic BPE, say)."""

    def __init__(self, inner) -> None:
        self.inner, self.vocab_size, self.eot_id = inner, inner.vocab_size, inner.eot_id
        self.entered, self.release, self.calls = threading.Event(), threading.Event(), 0

    def encode(self, text: str) -> list[int]:
        self.calls += 1
        self.entered.set()
        self.release.wait(10)
        return self.inner.encode(text)

    def decode(self, ids) -> str:
        return self.inner.decode(ids)


def test_tokenization_runs_off_the_event_loop(model, tokenizer):
    slow = _SlowTokenizer(tokenizer)
    app = _app(model, slow)
    with background(app) as url:
        pending = threading.Thread(target=httpx.post, args=(url + "/v1/completions",),
                                   kwargs={"json": GOOD, "timeout": 20})
        pending.start()
        try:
            assert slow.entered.wait(5), "the request never reached the tokenizer"
            # while the prompt is being tokenized, the server still answers
            assert httpx.get(url + "/health", timeout=3).status_code == 200
        finally:
            slow.release.set()
            pending.join(20)


def test_a_prompt_too_long_for_the_context_is_not_tokenized(model, tokenizer):
    slow = _SlowTokenizer(tokenizer)
    slow.release.set()
    app = _app(model, slow, max_body_bytes=1 << 20)
    chars = app.state.engine.max_prompt_chars
    assert chars == 128 * 128  # the context times the longest GPT-2 token (128 bytes)
    with TestClient(app) as c:
        err = _error(c.post("/v1/completions", json={"prompt": "a" * (chars + 1)}), 400, "prompt",
                     "context_length_exceeded")
    assert "characters" in err["message"] and slow.calls == 0


# ------------------------------------------------------------------ connections


def test_idle_connections_neither_block_the_server_nor_stay_open(model, tokenizer):
    app = _app(model, tokenizer)
    with background(app, header_timeout=0.5, max_connections=16) as url, _Log() as log:
        idle = [_connect(url) for _ in range(50)]  # more than the limit, none sends a byte
        try:
            r = httpx.get(url + "/health", timeout=3)  # closes the oldest idle connection
            assert r.status_code == 200
            for s in idle:  # closed: by the limit at once, or by the header timeout
                assert _read_all(s, timeout=5) == b""
        finally:
            for s in idle:
                s.close()
    lines = [r.getMessage() for r in log.records]
    assert len(lines) == 1 and "--max-connections 16" in lines[0], lines  # not one per connection
    assert not any("Too many open files" in ln for ln in lines)


def test_a_client_sending_headers_slowly_is_cut_off(model, tokenizer):
    app = _app(model, tokenizer)
    with background(app, header_timeout=0.4) as url, _connect(url) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        start, closed = time.monotonic(), False
        while time.monotonic() - start < 5:  # one header byte every 0.1 s, forever
            try:
                s.sendall(b"X")
                s.settimeout(0.1)
                if s.recv(1024) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        assert closed, "the server kept a connection that never finished its headers"


def test_an_idle_keep_alive_connection_closes(model, tokenizer):
    app = _app(model, tokenizer)
    with background(app, keep_alive=0.3, header_timeout=5) as url, _connect(url) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = _read_all(s)  # the response, then the close after 0.3 s
    assert answer.startswith(b"HTTP/1.1 200 ") and b'"status":"ok"' in answer


def test_a_full_server_answers_503(model, tokenizer):
    app = _app(model, tokenizer, body_timeout=5)
    with background(app, max_connections=2, header_timeout=5) as url:
        busy = [_connect(url) for _ in range(2)]
        try:
            for s in busy:  # each is in the middle of sending a body: busy, not idle
                s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n"
                          b"Expect: 100-continue\r\n\r\n")
                assert s.recv(1024).startswith(b"HTTP/1.1 100 ")  # the app is reading its body
            with _connect(url) as s:
                answer = _read_all(s)
            assert answer.startswith(b"HTTP/1.1 503 ")
            assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "server_busy"
        finally:
            for s in busy:
                s.close()
        deadline = time.monotonic() + 5
        while True:  # once they are gone the server answers again
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server stayed full"
            time.sleep(0.05)


def test_a_client_disconnecting_mid_body_is_one_log_line(model, tokenizer):
    app = _app(model, tokenizer)
    with background(app, log_level="info") as url, _Log() as log:
        with _connect(url) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"pr")
            time.sleep(0.1)
        deadline = time.monotonic() + 5
        while not any("while sending its request body" in r.getMessage() for r in log.records):
            assert time.monotonic() < deadline, [r.getMessage() for r in log.records]
            time.sleep(0.02)
        assert httpx.get(url + "/health", timeout=3).status_code == 200
    assert not [r for r in log.records if r.levelno >= logging.ERROR or r.exc_info]
