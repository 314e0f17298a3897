"""The check of an OpenAI-shaped error answer, shared by the serving tests."""

from __future__ import annotations


def openai_error(r, status: int, param: str | None = None, code: str | None = None) -> dict:
    """``r``'s ``{"error": {...}}`` body, checked: the status, OpenAI's four fields, a message
    and no traceback, and ``param`` / ``code`` when given."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] and "Traceback" not in r.text
    if param is not None:
        assert body["error"]["param"] == param
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]
