"""``gptcourse chat``: the scripted loop in-process (streaming, history, /reset, /quit, EOF,
Ctrl-C), against a real uvicorn server (streamed answer = the server's own answer), and
history trimming when the context is full."""

from __future__ import annotations

import io
import socket

import pytest

pytest.importorskip("fastapi")

from gptcourse.chat import Chat, LocalBackend, RemoteBackend  # noqa: E402
from gptcourse.client import Client  # noqa: E402
from gptcourse.finetune.instruct import messages_to_prompt  # noqa: E402
from gptcourse.serve import background, create_app  # noqa: E402
from gptcourse.tokenizer import BPETokenizer  # noqa: E402

TEXT = ("Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nSay hello to the cat.\n\n### Response:\n"
        "Hello, cat! The cat sat on the mat and the dog ran after the ball. ") * 20


@pytest.fixture(scope="module")
def tokenizer():
    return BPETokenizer.train(TEXT, 320, special_tokens=["<|endoftext|>"])


# the served model is tests/serving/conftest.py's, over this file's tokenizer


class Recorder(io.StringIO):
    """An output stream that counts its writes (to see that answers arrive in pieces)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, s: str) -> int:
        self.writes.append(s)
        return super().write(s)


def _spy(backend) -> list[list[dict]]:
    """Record the messages of every reply the backend is asked for."""
    seen: list[list[dict]] = []
    reply = backend.reply

    def spy(messages, **options):
        seen.append([dict(m) for m in messages])
        return reply(messages, **options)

    backend.reply = spy
    return seen


# ------------------------------------------------------------------ in-process


def test_local_chat_streams_keeps_history_resets_and_quits(model, tokenizer):
    backend = LocalBackend(model, tokenizer, "tiny")
    seen = _spy(backend)
    chat = Chat(backend, system="You are terse.", max_tokens=12, temperature=1.0, seed=3)
    out = Recorder()
    inp = io.StringIO("hello there\n\nhow are you\n/reset\nagain\n/quit\nnever read\n")
    assert chat.loop(inp, out) == 0
    text = out.getvalue()
    assert text.startswith("chatting with tiny (in this process)")
    assert "[history cleared]" in text and "never read" not in str(seen)
    assert len(seen) == 3  # the empty line asks nothing
    first, second, third = seen
    system = {"role": "system", "content": "You are terse."}
    assert first == [system, {"role": "user", "content": "hello there"}]
    # the second prompt carries the first turn, with the answer that was streamed
    assert second[:2] == first and second[2]["role"] == "assistant"
    assert second[3] == {"role": "user", "content": "how are you"}
    answer = second[2]["content"]
    assert answer and f"tiny> {answer}\n" in text
    assert sum(1 for w in out.writes if w and w in answer) >= 2  # streamed in pieces
    assert third == [system, {"role": "user", "content": "again"}]  # /reset cleared it
    assert len(chat.history) == 2
    # the answer is the library's generation for that prompt and seed
    from gptcourse.serve import Engine

    req = Engine(model, tokenizer, "x", 128).parse(
        {"messages": first, "max_tokens": 12, "temperature": 1.0, "seed": 3}, chat=True)
    assert "".join(p[0] for p in backend.engine.pieces(req)) == answer
    backend.close()


def test_eof_ctrl_c_and_unknown_commands_end_cleanly(model, tokenizer):
    backend = LocalBackend(model, tokenizer, "tiny")
    out = io.StringIO()
    assert Chat(backend).loop(io.StringIO("/help\n"), out) == 0  # EOF after /help
    assert "unknown command /help" in out.getvalue()

    class CtrlC(io.StringIO):
        def readline(self, *a):
            raise KeyboardInterrupt

    assert Chat(backend).loop(CtrlC(), io.StringIO()) == 0

    # Ctrl-C during an answer stops that answer only; the turn is not kept
    chat = Chat(backend, max_tokens=20, temperature=1.0, seed=0)

    def interrupted(messages, **options):
        yield "par"
        raise KeyboardInterrupt

    def refused(messages, **options):
        raise KeyboardInterrupt

    for reply in (interrupted, refused):
        backend.reply = reply
        out = io.StringIO()
        assert chat.ask("hi", out) is None and chat.history == []
        assert "[answer interrupted; this turn is not kept]" in out.getvalue()
    backend.close()


def test_history_is_trimmed_from_the_oldest_turns_to_fit_the_context(model, tokenizer):
    backend = LocalBackend(model, tokenizer, "tiny")
    seen = _spy(backend)
    chat = Chat(backend, max_tokens=16, temperature=0.0)
    out = io.StringIO()
    messages = [f"turn {i}: the cat sat on the mat and the dog ran" for i in range(6)]
    for m in messages:
        assert chat.ask(m, out) is not None
    text = out.getvalue()
    assert "[history trimmed: dropped the" in text and "128-token context" in text
    for msgs in seen:  # every prompt left the answer its 16 tokens
        assert len(tokenizer.encode(messages_to_prompt(msgs))) + 16 <= 128
    last = seen[-1]
    assert last[-1]["content"] == messages[-1]
    kept = [m["content"] for m in last if m["role"] == "user"]
    assert kept == messages[len(messages) - len(kept):] and len(kept) < len(messages)
    # a message that cannot fit even alone is an error, and no turn is kept
    before = list(chat.history)
    out = io.StringIO()
    assert chat.ask("the cat sat on the mat " * 40, out) is None
    assert "[error:" in out.getvalue() and "context" in out.getvalue()
    assert chat.history == before  # the history survives a failed turn
    backend.close()


# ------------------------------------------------------------------ against a server


@pytest.fixture(scope="module")
def server(model, tokenizer):
    """A uvicorn server on a free loopback port, in a thread (as in test_serve.py)."""
    app = create_app(model, tokenizer, model_name="tiny", max_tokens_cap=64, api_key="k")
    with background(app) as url:
        yield app, url + "/v1"


def _post(url: str, body: dict) -> dict:
    return Client(url, "k", timeout=20).request("POST", "/chat/completions", body)


def test_chat_command_against_a_server_streams_the_servers_answer(server, model, tokenizer,
                                                                   monkeypatch):
    from gptcourse import cli

    app, url = server
    monkeypatch.setattr("sys.stdin", io.StringIO("hello there\nand more\n"))
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    assert cli.main(["chat", "--url", url, "--api-key", "k", "--system", "Be kind.",
                     "--max-tokens", "10", "--temperature", "1", "--top-p", "0.9",
                     "--seed", "7"]) == 0
    text = out.getvalue()
    assert text.startswith(f"chatting with tiny ({url})")
    answers = [line[len("you> tiny> "):] for line in text.splitlines()
               if line.startswith("you> tiny> ")]
    assert len(answers) == 2
    system = {"role": "system", "content": "Be kind."}
    first = [system, {"role": "user", "content": "hello there"}]
    second = [*first, {"role": "assistant", "content": answers[0]},
              {"role": "user", "content": "and more"}]
    for messages, answer in zip([first, second], answers):
        done = _post(url, {"messages": messages, "max_tokens": 10, "temperature": 1,
                           "top_p": 0.9, "seed": 7})
        assert done["choices"][0]["message"]["content"] == answer
    assert answers[0]  # the tiny model said something
    # in-process generation gives the same answer for the same seed
    local = LocalBackend(model, tokenizer, "tiny")
    assert "".join(local.reply(first, max_tokens=10, temperature=1, top_p=0.9, seed=7)) == answers[0]
    local.close()
    assert cli.main(["chat", "--url", url]) == 2  # no API key: the server says 401


def test_remote_history_is_trimmed_on_context_length_exceeded(server):
    _, url = server
    backend = RemoteBackend(url, api_key="k")
    assert backend.name == "tiny"
    seen = _spy(backend)
    chat = Chat(backend, max_tokens=8, temperature=0.0)
    long = "the cat sat on the mat and the dog ran after the ball " * 2
    chat.history = [m for i in range(6) for m in ({"role": "user", "content": f"{i} {long}"},
                                                  {"role": "assistant", "content": long})]
    out = io.StringIO()
    assert chat.ask("hello", out) is not None
    assert "[history trimmed: dropped the" in out.getvalue()
    assert "server's context" in out.getvalue()
    assert len(seen) > 1 and len(seen[-1]) < len(seen[0])
    assert chat.history[-2] == {"role": "user", "content": "hello"}
    out = io.StringIO()
    before = list(chat.history)
    assert chat.ask(long * 10, out) is None and "context" in out.getvalue()
    assert chat.history == before and "trimmed" not in out.getvalue()


def test_unreachable_server_is_a_clear_error(capsys):
    from gptcourse import cli

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    assert cli.main(["chat", "--url", f"http://127.0.0.1:{port}/v1"]) == 2
    assert "cannot reach" in capsys.readouterr().err
