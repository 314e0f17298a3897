"""The OpenAI-compatible server: validation, auth, completions, streaming, a real uvicorn
server with the openai client, concurrency and client disconnects."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from openai_errors import openai_error as _error  # noqa: E402

from gptcourse.finetune.instruct import format_prompt, messages_to_prompt  # noqa: E402
from gptcourse.serve import background, create_app, held_back  # noqa: E402

CAP = 64


@pytest.fixture
def client(model, tokenizer):
    app = create_app(model, tokenizer, model_name="tiny", max_tokens_cap=CAP)
    with TestClient(app) as c:
        yield c


def _events(text: str) -> list:
    """The JSON payloads of an SSE body, checking that it ends with [DONE]."""
    lines = [ln for ln in text.split("\n") if ln]
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]"
    return [json.loads(ln[6:]) for ln in lines[:-1]]


# ------------------------------------------------------------------ plain routes


def test_health_and_models(client):
    assert client.get("/health").json() == {"status": "ok", "model": "tiny", "auth": False}
    data = client.get("/v1/models").json()
    assert data["object"] == "list" and [m["id"] for m in data["data"]] == ["tiny"]
    assert client.get("/v1/models/tiny").json()["id"] == "tiny"
    assert _error(client.get("/v1/models/other"), 404)["code"] == "model_not_found"
    _error(client.get("/nope"), 404)


def test_api_key_is_required_when_set(model, tokenizer, monkeypatch):
    app = create_app(model, tokenizer, model_name="tiny", max_tokens_cap=CAP, api_key="s3cret")
    c = TestClient(app)
    body = {"prompt": "hi", "max_tokens": 2}
    assert _error(c.post("/v1/completions", json=body), 401)["code"] == "invalid_api_key"
    _error(c.post("/v1/completions", json=body, headers={"Authorization": "Bearer nope"}), 401)
    _error(c.get("/v1/models"), 401)
    assert c.get("/health").status_code == 200  # liveness probes need no key
    ok = c.post("/v1/completions", json=body, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize("body, param", [
    ({"prompt": 3}, "prompt"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "max_tokens": -5}, "max_tokens"),
    ({"prompt": "x", "max_tokens": CAP + 1}, "max_tokens"),
    ({"prompt": "x", "max_tokens": "10"}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 2.5}, "max_tokens"),
    ({"prompt": "x", "temperature": "hot"}, "temperature"),
    ({"prompt": "x", "temperature": 3}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "top_p": True}, "top_p"),
    ({"prompt": "x", "n": 2}, "n"),
    ({"prompt": "x", "seed": "1"}, "seed"),
    ({"prompt": "x", "stream": "yes"}, "stream"),
    ({"prompt": "x", "stop": 5}, "stop"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "hello " * 200}, "prompt"),  # longer than the 128-token context
    ({"prompt": "hello " * 100, "max_tokens": 60}, "max_tokens"),  # no room for 60 more
])
def test_bad_completion_requests_are_400_with_openai_errors(client, body, param):
    _error(client.post("/v1/completions", json=body), 400, param)


@pytest.mark.parametrize("body", [
    {},
    {"messages": []},
    {"messages": "hi"},
    {"messages": [{"role": "assistant", "content": "hi"}]},
    {"messages": [{"role": "wizard", "content": "hi"}]},
    {"messages": [{"role": "user", "content": ""}]},
])
def test_bad_chat_requests_are_400(client, body):
    _error(client.post("/v1/chat/completions", json=body), 400, "messages")


def test_bad_json_and_non_object_bodies(client):
    err = _error(client.post("/v1/completions", content=b"{not json",
                             headers={"Content-Type": "application/json"}), 400)
    assert err["type"] == "invalid_request_error" and "JSON" in err["message"]
    _error(client.post("/v1/completions", content=b"\xff\xfe"), 400)
    _error(client.post("/v1/chat/completions", json=[1, 2]), 400)
    _error(client.get("/v1/completions"), 405)


def test_long_prompt_is_context_length_exceeded(client):
    err = _error(client.post("/v1/chat/completions",
                             json={"messages": [{"role": "user", "content": "word " * 300}]}), 400)
    assert err["code"] == "context_length_exceeded"


# ------------------------------------------------------------------ completions


def test_completion_response_shape_and_seed(client, tokenizer):
    body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 12, "seed": 7}
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["object"] == "text_completion" and data["id"].startswith("cmpl-")
    assert data["model"] == "tiny"
    (choice,) = data["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] in ("length", "stop")
    usage = data["usage"]
    assert usage["prompt_tokens"] == len(tokenizer.encode("Once upon a time"))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] <= 12
    again = client.post("/v1/completions", json=body).json()
    assert again["choices"][0]["text"] == choice["text"]  # the same seed, the same text
    other = client.post("/v1/completions", json={**body, "seed": 8}).json()
    assert other["choices"][0]["text"] != choice["text"]


def test_each_request_is_counted_once(client):
    stats = client.app.state.engine.stats
    before = stats["requests"]
    r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2, "seed": 0})
    assert r.status_code == 200, r.text
    assert stats["requests"] - before == 1


def test_greedy_matches_the_library(client, model, tokenizer):
    from gptcourse.generate import generate

    ids = tokenizer.encode("The cat")
    out = generate(model, ids, 10, temperature=0, stop=tokenizer.eot_id)[0, len(ids):].tolist()
    want = tokenizer.decode([i for i in out if i != tokenizer.eot_id])
    r = client.post("/v1/completions", json={"prompt": "The cat", "max_tokens": 10,
                                             "temperature": 0})
    assert r.json()["choices"][0]["text"] == want


def test_stop_strings_cut_the_text_before_them(client):
    body = {"prompt": "A", "max_tokens": 30, "seed": 3}
    full = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    stop = full[10:14]
    cut = client.post("/v1/completions", json={**body, "stop": [stop, "\x00never"]}).json()
    assert cut["choices"][0]["text"] == full[:full.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"
    events = _events(client.post("/v1/completions", json={**body, "stop": stop,
                                                          "stream": True}).text)
    assert "".join(e["choices"][0]["text"] for e in events) == full[:full.index(stop)]


def test_held_back_is_the_longest_stop_prefix_at_the_end():
    assert held_back("hello wo", ["world"]) == 2
    assert held_back("hello", ["world"]) == 0
    assert held_back("abcab", ["abd", "bx"]) == 2


def test_chat_uses_the_instruction_template(client, tokenizer):
    msgs = [{"role": "user", "content": "Name a colour."}]
    assert messages_to_prompt(msgs) == format_prompt({"instruction": "Name a colour."})
    r = client.post("/v1/chat/completions", json={"messages": msgs, "max_tokens": 5, "seed": 1})
    data = r.json()
    assert data["object"] == "chat.completion" and data["id"].startswith("chatcmpl-")
    assert data["choices"][0]["message"]["role"] == "assistant"
    assert data["usage"]["prompt_tokens"] == len(tokenizer.encode(messages_to_prompt(msgs)))
    # max_completion_tokens is the newer name of max_tokens
    r2 = client.post("/v1/chat/completions",
                     json={"messages": msgs, "max_completion_tokens": 5, "seed": 1})
    assert r2.json()["choices"][0]["message"] == data["choices"][0]["message"]


def test_streams_equal_the_non_streamed_answer(client):
    body = {"prompt": "Hello", "max_tokens": 20, "seed": 11}
    whole = client.post("/v1/completions", json=body).json()["choices"][0]
    r = client.post("/v1/completions", json={**body, "stream": True,
                                             "stream_options": {"include_usage": True}})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = _events(r.text)
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] <= 20
    chunks = events[:-1]
    assert all(e["object"] == "text_completion" for e in chunks)
    assert "".join(e["choices"][0]["text"] for e in chunks) == whole["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["finish_reason"]

    msgs = [{"role": "user", "content": "Hi"}]
    chat = client.post("/v1/chat/completions",
                       json={"messages": msgs, "max_tokens": 15, "seed": 2}).json()["choices"][0]
    events = _events(client.post("/v1/chat/completions", json={
        "messages": msgs, "max_tokens": 15, "seed": 2, "stream": True}).text)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert text == chat["message"]["content"]
    assert events[-1]["choices"][0]["finish_reason"] == chat["finish_reason"]


# ------------------------------------------------------------------ a real server


@pytest.fixture(scope="module")
def server(model, tokenizer):
    """A uvicorn server on a free loopback port, in a thread; stopped after the tests."""
    app = create_app(model, tokenizer, model_name="tiny", max_tokens_cap=CAP)
    with background(app) as url:
        yield app, url


def test_the_openai_client_talks_to_a_real_server(server):
    openai = pytest.importorskip("openai")
    _, url = server
    client = openai.OpenAI(base_url=url + "/v1", api_key="anything", max_retries=0, timeout=20)
    assert [m.id for m in client.models.list()] == ["tiny"]
    done = client.completions.create(model="tiny", prompt="Once", max_tokens=8, seed=5)
    assert done.choices[0].finish_reason in ("length", "stop")
    assert done.usage.completion_tokens <= 8
    parts = client.completions.create(model="tiny", prompt="Once", max_tokens=8, seed=5,
                                      stream=True)
    assert "".join(p.choices[0].text for p in parts) == done.choices[0].text

    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    chat = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, seed=5)
    assert chat.choices[0].message.role == "assistant"
    parts = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, seed=5,
                                           stream=True)
    text = "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
    assert text == chat.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tiny", prompt="x", max_tokens=0)
    assert info.value.body["param"] == "max_tokens"


def test_64_concurrent_clients_each_get_the_answer_they_get_alone(server):
    """The load test: 64 clients at once (greedy and seeded, completions and chats, half
    streaming, prompts of different lengths) are batched, and each answer equals the same
    request made alone."""
    import httpx

    app, url = server
    prompts = ["In the beginning", "Once", "The quick brown fox jumps over the lazy dog and"]

    def body(i: int) -> tuple[str, dict]:
        sampling = {"temperature": 0} if i % 4 == 0 else {"seed": i, "temperature": 0.9}
        if i % 3 == 2:
            return "/v1/chat/completions", {"messages": [{"role": "user", "content": prompts[i % 3]}],
                                            "max_tokens": 12 + i % 7, **sampling}
        return "/v1/completions", {"prompt": prompts[i % 3], "max_tokens": 12 + i % 7, **sampling}

    def ask(i: int, stream: bool) -> str:
        route, b = body(i)
        r = httpx.post(url + route, json={**b, "stream": stream}, timeout=60)
        r.raise_for_status()
        if not stream:
            choice = r.json()["choices"][0]
            return choice["message"]["content"] if "message" in choice else choice["text"]
        events = [e["choices"][0] for e in _events(r.text) if e.get("choices")]
        return "".join(c.get("text") or c.get("delta", {}).get("content") or "" for c in events)

    n = 64
    alone = [ask(i, False) for i in range(n)]
    assert len(set(alone)) > n // 2  # different seeds and prompts mostly give different answers
    stats = app.state.engine.stats
    steps, rows = stats["steps"], stats["rows"]
    with ThreadPoolExecutor(n) as pool:
        together = list(pool.map(ask, range(n), [i % 2 == 1 for i in range(n)]))
    assert together == alone
    assert (stats["rows"] - rows) / (stats["steps"] - steps) > 2  # decoded in batches


def test_a_client_disconnecting_mid_stream_stops_generation(server, model, tokenizer):
    import httpx

    app, url = server
    stats = app.state.engine.stats
    before = dict(stats)
    body = {"prompt": "x", "max_tokens": CAP, "seed": 0, "stream": True}
    slow = threading.Event()
    forward = model.forward

    def slow_forward(*a, **k):  # ~20 ms a token, so that the stream is still running
        time.sleep(0.02)
        slow.set()
        return forward(*a, **k)

    model.forward = slow_forward
    try:
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            got = [next(lines) for _ in range(3)]
            assert all(g.startswith("data: ") or not g for g in got)
        # the connection is closed here, after a few tokens
        deadline = time.monotonic() + 5
        while stats["cancelled"] == before["cancelled"]:
            assert time.monotonic() < deadline, "the server did not notice the disconnect"
            time.sleep(0.02)
        time.sleep(0.2)
        tokens = stats["tokens"] - before["tokens"]
        assert tokens < CAP // 2
        time.sleep(0.2)
        assert stats["tokens"] - before["tokens"] == tokens  # generation has stopped
    finally:
        del model.forward
    # the server still answers
    r = httpx.post(url + "/v1/completions", json={"prompt": "y", "max_tokens": 2}, timeout=10)
    assert r.status_code == 200


def test_an_internal_error_is_a_json_500_not_a_traceback(model, tokenizer):
    import copy

    broken = copy.deepcopy(model)

    def boom(*a, **k):
        raise RuntimeError("boom")

    broken.forward = boom  # generation fails inside the batched engine's thread
    app = create_app(broken, tokenizer, model_name="tiny", max_tokens_cap=CAP)
    with TestClient(app, raise_server_exceptions=False) as c:
        err = _error(c.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}), 500)
        assert err["type"] == "server_error" and "boom" not in err["message"]
        events = _events(c.post("/v1/completions",
                                json={"prompt": "x", "max_tokens": 2, "stream": True}).text)
        # (the prefill's first token may come before the failing decode step)
        assert events[-1] == {"error": {"message": "internal error (GenerationError)",
                                        "type": "server_error", "param": None, "code": None}}
        assert app.state.engine.stats["failed"] == 2
        # the engine survives a failed step
        assert c.get("/health").status_code == 200


# ------------------------------------------------------------------ the command


def test_serve_command_loads_a_model_and_runs_uvicorn(model, tokenizer, tmp_path, monkeypatch):
    import uvicorn

    from gptcourse import cli
    from gptcourse.serve import load_for_serving

    model.save_pretrained(tmp_path / "tiny-gpt")
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    monkeypatch.setenv("GPTCOURSE_API_KEY", "k")
    assert cli.main(["serve", "--pretrained", str(tmp_path / "tiny-gpt"), "--port", "8123",
                     "--device", "cpu", "--max-tokens-cap", "7", "--header-timeout", "3",
                     "--max-connections", "9", "--max-body-bytes", "300"]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123  # loopback by default
    assert seen["http"].keywords == {"header_timeout": 3.0, "max_connections": 9}
    assert seen["timeout_keep_alive"] == 5.0 and seen["backlog"] == 128
    c = TestClient(seen["app"])
    auth = {"Authorization": "Bearer k"}
    assert c.get("/v1/models", headers=auth).json()["data"][0]["id"] == "tiny-gpt"
    assert c.get("/v1/models").status_code == 401  # the key came from the environment
    r = c.post("/v1/completions", json={"prompt": "a", "max_tokens": 8}, headers=auth)
    assert _error(r, 400, "max_tokens")["message"].endswith("got 8")
    r = c.post("/v1/completions", json={"prompt": "a" * 300}, headers=auth)
    assert _error(r, 413)["code"] == "request_too_large"
    with pytest.raises(ValueError, match="exactly one"):
        load_for_serving()
    with pytest.raises(SystemExit):
        cli.main(["serve"])  # neither --checkpoint nor --pretrained


def test_a_client_that_gives_up_on_a_plain_request_stops_it(server, model):
    import httpx

    app, url = server
    stats = app.state.engine.stats
    before = dict(stats)
    forward = model.forward

    def slow_forward(*a, **k):
        time.sleep(0.02)
        return forward(*a, **k)

    model.forward = slow_forward
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": CAP},
                       timeout=httpx.Timeout(10, read=0.15))
        deadline = time.monotonic() + 5
        while stats["cancelled"] == before["cancelled"]:
            assert time.monotonic() < deadline, "the server did not notice the disconnect"
            time.sleep(0.02)
        assert stats["tokens"] - before["tokens"] < CAP // 2
        assert stats["completed"] == before["completed"]
    finally:
        del model.forward


def test_chat_answers_end_at_the_next_template_section(model, tokenizer):
    from gptcourse.serve import CHAT_STOP

    engine = create_app(model, tokenizer, model_name="tiny", max_tokens_cap=CAP).state.engine
    msgs = [{"role": "user", "content": "Hi"}]
    req = engine.parse({"messages": msgs, "stop": "END"}, chat=True)
    assert req.stop == ["END", CHAT_STOP] and req.max_tokens == CAP
    assert engine.parse({"prompt": "Hi"}, chat=False).stop == []
    assert engine.parse({"prompt": "Hi"}, chat=False).max_tokens == 16
