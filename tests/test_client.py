"""gptcourse.client: the one OpenAI-compatible HTTP client (``gptcourse chat --url`` and the
LLM judge), against a fake server on 127.0.0.1: URLs, JSON and streamed replies, and errors
that say what went wrong."""

from __future__ import annotations

import json
import socket
from http.server import BaseHTTPRequestHandler

import pytest
from loopback import loopback_http

from gptcourse.client import APIError, Client, Unreachable, base_url


class _Fake(BaseHTTPRequestHandler):
    """/v1/models; /v1/chat/completions answers by the last message: "ERR" a 400 with
    OpenAI's error body, "TEXT" a body that is not JSON, "MIDERR" (streamed) an error event
    after one piece; otherwise "hello" (streamed: "hel", "lo")."""

    protocol_version = "HTTP/1.0"

    def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        self._send(200, json.dumps({"object": "list", "data": [{"id": "m1"}, {"id": "m2"}]}).encode())

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append((self.path, body))
        text = body["messages"][-1]["content"]
        if text == "ERR":
            err = {"error": {"message": "too long", "code": "context_length_exceeded"}}
            return self._send(400, json.dumps(err).encode())
        if text == "TEXT":
            return self._send(200, b"<html>oops</html>", "text/html")
        if not body.get("stream"):
            reply = {"choices": [{"message": {"role": "assistant", "content": "hello"}}]}
            return self._send(200, json.dumps(reply).encode())
        events = [{"choices": [{"delta": {"content": "hel"}}]}]
        events.append({"error": {"message": "boom", "code": "internal"}} if text == "MIDERR"
                      else {"choices": [{"delta": {"content": "lo"}}]})
        sse = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        self._send(200, sse.encode(), "text/event-stream")

    def log_message(self, format, *args) -> None:
        pass


@pytest.fixture
def url(monkeypatch):
    with loopback_http(_Fake, monkeypatch) as httpd:
        httpd.seen = []
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.seen


USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("given", ["http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/",
                                   "http://h:1/v1/chat/completions"])
def test_base_url_with_or_without_v1(given):
    assert base_url(given) == "http://h:1/v1"


def test_models_and_chat_with_a_key(url):
    root, seen = url
    client = Client(root, api_key="sk-1", timeout=10)
    assert client.models() == ["m1", "m2"]
    assert seen[0] == ("/v1/models", "Bearer sk-1")
    assert client.chat(USER, "m1", temperature=0, max_tokens=None) == "hello"
    assert seen[1] == ("/v1/chat/completions",
                       {"model": "m1", "messages": USER, "temperature": 0})  # None left out


def test_chat_stream_yields_the_pieces(url):
    root, seen = url
    assert list(Client(root + "/v1", timeout=10).chat_stream(USER, "m1")) == ["hel", "lo"]
    assert seen[-1][1]["stream"] is True


def test_http_error_carries_the_servers_message_and_code(url):
    root, _ = url
    with pytest.raises(APIError, match="answered HTTP 400: too long") as info:
        Client(root, timeout=10).chat_stream([{"role": "user", "content": "ERR"}], "m1")
    assert info.value.code == "context_length_exceeded" and info.value.status == 400


def test_an_error_event_while_streaming_is_raised(url):
    root, _ = url
    pieces = Client(root, timeout=10).chat_stream([{"role": "user", "content": "MIDERR"}], "m1")
    assert next(pieces) == "hel"
    with pytest.raises(APIError, match="failed: boom") as info:
        next(pieces)
    assert info.value.code == "internal"


def test_a_reply_that_is_not_json_is_named(url):
    root, _ = url
    with pytest.raises(APIError, match="not JSON"):
        Client(root, timeout=10, name="the judge").chat([{"role": "user", "content": "TEXT"}], "m")


def test_unreachable_server_says_so_with_the_hint():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = Client(f"http://127.0.0.1:{port}", timeout=5, name="the judge", hint="is it up?")
    with pytest.raises(Unreachable, match=r"cannot reach the judge at .*; is it up\?"):
        client.models()
