"""A small client for OpenAI-compatible HTTP servers, with the standard library only.

``gptcourse chat --url`` streams its answers through it, and the LLM judge of lesson 11
(:func:`gptcourse.finetune.judge.judge_responses`) asks for scores through it. Any server that
speaks the OpenAI API works: ``gptcourse serve``, llama.cpp, vLLM, Ollama, ...

    >>> client = Client("http://127.0.0.1:8000")                  # doctest: +SKIP
    >>> client.models()                                          # doctest: +SKIP
    ['gptcourse']
    >>> client.chat([{"role": "user", "content": "Hi"}], model="gptcourse")  # doctest: +SKIP

The URL may end in ``/v1`` or not (``/v1`` is added), or be the full
``.../v1/chat/completions`` address. Every failure is an :class:`APIError` whose message says
what went wrong in one line (the HTTP status and the server's own error message, a timeout,
a reply that is not JSON); a server that cannot be reached at all is :class:`Unreachable`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

__all__ = ["APIError", "Client", "Unreachable", "base_url"]


class APIError(RuntimeError):
    """A request that failed; ``code`` is OpenAI's error code (or None), ``status`` the HTTP
    status (or None when the server never answered)."""

    def __init__(self, message: str, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code, self.status = code, status


class Unreachable(APIError):
    """No connection: the server is not running, or the host or port is wrong."""


def base_url(url: str) -> str:
    """The API root ``.../v1`` of a server URL given with or without ``/v1`` (or as the full
    ``/v1/chat/completions`` address)."""
    base = url.rstrip("/")
    if base.endswith("/chat/completions"):
        base = base[: -len("/chat/completions")]
    return base if base.endswith("/v1") else base + "/v1"


def _error_message(raw: bytes, fallback: str) -> tuple[str, str | None]:
    """The server's message and code from OpenAI's ``{"error": {...}}`` body, else its text."""
    text = raw[:300].decode("utf-8", "replace").strip()
    try:
        info = json.loads(raw)["error"]
        return str(info.get("message") or text), info.get("code")
    except (ValueError, KeyError, TypeError, AttributeError):
        return text or fallback, None


class Client:
    """Requests to the OpenAI-compatible server at ``url``; ``api_key`` is sent as a Bearer
    token, ``timeout`` (seconds) bounds each wait for the server. ``name`` is how errors call
    the server ("the server", "the judge"); ``hint`` is added to the :class:`Unreachable`
    message (what to check)."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 600.0, *,
                 name: str = "the server", hint: str = "") -> None:
        self.base = base_url(url)
        self.api_key = api_key or None
        self.timeout = timeout
        self.name, self.hint = name, hint

    def __repr__(self) -> str:
        return f"Client({self.base!r})"

    def open(self, method: str, path: str, body: Mapping[str, Any] | None = None):
        """The HTTP response of ``method`` ``path`` (e.g. ``"/models"``), to read and close;
        a 4xx/5xx answer or no answer raises :class:`APIError`."""
        url = self.base + path
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)  # noqa: S310 (http(s) only)
        except urllib.error.HTTPError as err:
            message, code = _error_message(err.read(), str(err.reason))
            raise APIError(f"{self.name} at {url} answered HTTP {err.code}: {message}", code,
                           err.code) from None
        except urllib.error.URLError as err:
            if isinstance(err.reason, TimeoutError):
                raise self._timeout(url) from None
            hint = f"; {self.hint}" if self.hint else ""
            raise Unreachable(f"cannot reach {self.name} at {url} ({err.reason}){hint}") from None
        except TimeoutError:
            raise self._timeout(url) from None
        except OSError as err:  # connection reset and the like
            raise APIError(f"the connection to {self.name} at {url} failed: {err}") from None

    def _timeout(self, url: str) -> APIError:
        return APIError(f"{self.name} at {url} did not answer within {self.timeout} s")

    def request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """The JSON answer of ``method`` ``path`` (with ``body`` as JSON)."""
        with self.open(method, path, body) as resp:
            raw = resp.read()
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise APIError(f"{self.name} at {self.base + path} sent something that is not JSON: "
                           f"{raw[:200]!r}") from None

    def stream(self, path: str, body: Mapping[str, Any]) -> Iterator[dict]:
        """The events of a streamed ``POST path`` (server-sent ``data:`` lines, until
        ``[DONE]``). The request is sent, and its errors raised, before this returns; an
        ``{"error": ...}`` event raises :class:`APIError` while iterating. Closing the iterator
        early closes the connection (the server then stops generating)."""
        return self._events(self.open("POST", path, body))

    def _events(self, resp) -> Iterator[dict]:
        try:
            for raw in resp:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                event = json.loads(data)
                if "error" in event:
                    err = event["error"] or {}
                    raise APIError(f"{self.name} failed: {err.get('message')}", err.get("code"))
                yield event
        finally:
            resp.close()

    def models(self) -> list[str]:
        """The ids ``GET /models`` lists (possibly none)."""
        listing = self.request("GET", "/models")
        data = listing.get("data") if isinstance(listing, dict) else None
        return [str(m["id"]) for m in data or [] if isinstance(m, dict) and m.get("id")]

    def chat(self, messages: Sequence[Mapping[str, Any]], model: str, **options: Any) -> str:
        """The reply text of ``POST /chat/completions`` (``options``: temperature, max_tokens,
        ...; None values are left out)."""
        body = {"model": model, "messages": list(messages),
                **{k: v for k, v in options.items() if v is not None}}
        reply = self.request("POST", "/chat/completions", body)
        try:
            return str(reply["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise APIError(f"the reply of {self.name} has no choices[0].message.content: "
                           f"{str(reply)[:200]}") from None

    def chat_stream(self, messages: Sequence[Mapping[str, Any]], model: str,
                    **options: Any) -> Iterator[str]:
        """The reply text of a streamed ``POST /chat/completions``, piece by piece (see
        :meth:`stream`)."""
        body = {"model": model, "messages": list(messages), "stream": True,
                **{k: v for k, v in options.items() if v is not None}}
        return _deltas(self.stream("/chat/completions", body))


def _deltas(events: Iterator[dict]) -> Iterator[str]:
    try:
        for event in events:
            for choice in event.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    yield text
    finally:
        events.close()
