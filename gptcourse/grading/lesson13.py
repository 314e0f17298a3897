"""Exercises of lesson 13, serving: the held-back prefix of a streamed text, stop strings, the
pieces a streaming server sends, a chat chunk as a server-sent event, parsing an SSE stream and
validating a completion request -- graded against :mod:`gptcourse.serve`."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import torch

from ..serve import Engine, ServeError, held_back
from ..textpieces import TextAssembler
from . import Case, Task, register

# -- references ---------------------------------------------------------------------------------


def _held_back_ref(text: str, stops: list[str]) -> int:
    return held_back(text, stops)


def _apply_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[:min(cuts)], True) if cuts else (text, False)


class _TokenTexts:
    """A tokenizer whose token ``i`` is the text ``texts[i]`` (for :func:`_stream_pieces`)."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def decode(self, ids: list[int]) -> str:
        return "".join(self.texts[i] for i in ids)


def _stream_pieces(tokens: list[str], stops: list[str]) -> tuple[list[str], str]:
    """The server's streaming loop (:class:`gptcourse.textpieces.TextAssembler`, what
    ``Engine.pieces`` runs) over token texts that decode alone; empty pieces left out."""
    pieces = list(TextAssembler(_TokenTexts(tokens), stops).pieces(range(len(tokens))))
    return [text for text, _, _ in pieces if text], pieces[-1][1]


def _chat_chunk(head: dict, content: str | None, finish_reason: str | None, role: bool = False) -> str:
    """The server's chat ``chunk`` (in ``create_app``)."""
    delta: dict = {"role": "assistant", "content": ""} if role else (
        {"content": content} if content is not None else {})
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"


def _parse_sse(body: str) -> str:
    out = []
    for line in body.splitlines():
        if not line.startswith("data: "):
            continue
        payload = line[len("data: "):]
        if payload == "[DONE]":
            break
        for choice in json.loads(payload).get("choices", []):
            delta = choice.get("delta")
            out.append((delta.get("content") if delta is not None else choice.get("text")) or "")
    return "".join(out)


class _Bytes:
    """A byte-level tokenizer: one id per UTF-8 byte, end-of-text 256."""

    eot_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class _Shape:
    """Just enough of a model for ``Engine.parse``: a config with block_size."""

    def __init__(self, block_size: int) -> None:
        self.config = SimpleNamespace(block_size=block_size)

    def eval(self):
        return self

    def parameters(self):
        yield torch.zeros(1)


def _validate(body, max_tokens_cap: int, block_size: int) -> dict | None:
    engine = Engine(_Shape(block_size), _Bytes(), "m", max_tokens_cap)
    try:
        engine.parse(body, chat=False)
    except ServeError as err:
        return err.body()
    return None


# -- comparisons ----------------------------------------------------------------------------------


def _event(expected: str, got) -> str | None:
    if not isinstance(got, str):
        return f"expected a str, got {type(got).__name__}"
    if not got.startswith("data: ") or not got.endswith("\n\n") or "\n" in got[:-2]:
        return "an event is one line 'data: <json>' followed by a blank line ('\\n\\n' at the end)"
    try:
        obj = json.loads(got[6:])
    except json.JSONDecodeError as err:
        return f"the payload is not JSON: {err}"
    want = json.loads(expected[6:])
    return None if obj == want else f"payload {json.dumps(obj)} != expected {json.dumps(want)}"


def _error_body(expected, got) -> str | None:
    if expected is None:
        return None if got is None else f"the request is valid: expected None, got {got!r}"
    if not isinstance(got, dict) or set(got) != {"error"} or not isinstance(got["error"], dict):
        return f"expected {{'error': {{...}}}}, got {got!r}"
    err = got["error"]
    if set(err) != {"message", "type", "param", "code"}:
        return f"the error needs exactly the keys message, type, param, code; got {sorted(err)}"
    if not isinstance(err["message"], str) or not err["message"]:
        return "the message must be a non-empty string"
    want = expected["error"]
    for key in ("type", "param", "code"):
        if err[key] != want[key]:
            return f"{key} = {err[key]!r}, expected {want[key]!r} (message: {want['message']})"
    return None


# -- cases -----------------------------------------------------------------------------------------

_STOPS = [[], ["\n"], ["###"], ["\n###"], ["The End"], ["ab", "b"], ["aaa"], ["\n\n", "."], ["xy", "yz", "z"]]


def _cases_held_back():
    rng = random.Random(0)
    cases = [Case(("Once upon a #", ["###"]), label="'#' may start '###'"),
             Case(("Once upon a ##", ["###"])), Case(("abc", [])), Case(("", ["x"])),
             Case(("The", ["The End"])), Case(("he\n", ["\n###", "\n\n"])), Case(("aa", ["aaa"])),
             Case(("xyz", ["yzw", "zq"])), Case(("end.", ["."]), label="a full stop string is 0 here")]
    for _ in range(20):
        stops = rng.choice(_STOPS[1:])
        text = "".join(rng.choice("ab#\n xyz.TheEnd") for _ in range(rng.randint(0, 10)))
        cases.append(Case((text, stops)))
    return cases


def _cases_apply_stop():
    rng = random.Random(1)
    cases = [Case(("Hello.\n### Instruction:", ["\n###"])), Case(("no stop here", ["\n\n"])),
             Case(("abc", [])), Case(("a.b\n\nc", ["\n\n", "."]), label="the earliest stop wins"),
             Case(("xxyz", ["yz", "xy"])), Case(("stop", ["stop"])), Case(("", ["a"]))]
    for _ in range(15):
        stops = rng.choice(_STOPS)
        text = "".join(rng.choice("ab#\n xyz.") for _ in range(rng.randint(0, 14)))
        cases.append(Case((text, stops)))
    return cases


def _cases_pieces():
    rng = random.Random(2)
    cases = [Case((["Once", " upon", " a", " time", "."], []), label="no stop strings"),
             Case((["Hi", " there", "\n", "###", " Instruction"], ["\n###"]), label="chat stop"),
             Case((["The", " E", "nd", " of"], ["The End"])),
             Case((["a", "b", "c"], ["bd"]), label="held back, then released"),
             Case(([], ["x"]), label="no tokens"),
             Case((["ab", "cab", "d"], ["abd"])), Case((["x.y"], ["."]))]
    alphabet = ["a", "b", "ab", "#", "##", "\n", " x", "yz", ".", "The", " End", "z"]
    for _ in range(20):
        stops = rng.choice(_STOPS)
        toks = [rng.choice(alphabet) for _ in range(rng.randint(1, 10))]
        cases.append(Case((toks, stops)))
    return cases


def _head(k: int) -> dict:
    return {"id": f"chatcmpl-{k:024x}", "object": "chat.completion.chunk", "created": 1700000000 + k,
            "model": "stories"}


def _cases_chunk():
    return [Case((_head(0), None, None), {"role": True}, label="the first chunk: the role"),
            Case((_head(1), "Once", None)), Case((_head(2), " upon a time", None)),
            Case((_head(3), "", None), label="empty content is still sent"),
            Case((_head(4), None, "stop"), label="the last chunk: an empty delta and the finish reason"),
            Case((_head(5), None, "length")), Case((_head(6), 'say "hi"\n', None)),
            Case((_head(7), "é ✓ 日本", None)), Case((_head(8), "x", "stop")),
            Case((_head(9), None, None), {"role": False})]


def _sse_body(text: str, rng: random.Random, chat: bool, usage: bool, noise: bool, ending: str = "empty") -> str:
    """A server's event stream for ``text``. ``ending``: "empty" -- a content-free chunk carries the
    finish reason (as our server does); "content" -- the last content chunk carries it; "none" --
    no finish chunk, the last content chunk comes right before ``[DONE]``."""
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 5)))) if len(text) > 1 else []
    parts = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])] if text else []
    head = _head(rng.randrange(1000))
    if not chat:
        head = {**head, "object": "text_completion"}
    finish = "stop" if chat else "length"
    events = []
    if chat:
        events.append(_chat_chunk(head, None, None, role=True))
    for k, p in enumerate(parts):
        reason = finish if ending == "content" and k == len(parts) - 1 else None
        if chat:
            events.append(_chat_chunk(head, p, reason))
        else:
            c = {"index": 0, "text": p, "logprobs": None, "finish_reason": reason}
            events.append(f"data: {json.dumps({**head, 'choices': [c]})}\n\n")
        if noise and rng.random() < 0.5:
            events.append(": keep-alive\n\n")
    if ending == "empty" or not parts:
        if chat:
            events.append(_chat_chunk(head, None, finish))
        else:
            c = {"index": 0, "text": "", "logprobs": None, "finish_reason": finish}
            events.append(f"data: {json.dumps({**head, 'choices': [c]})}\n\n")
    if usage:
        u = {"prompt_tokens": 5, "completion_tokens": len(parts), "total_tokens": 5 + len(parts)}
        events.append(f"data: {json.dumps({**head, 'choices': [], 'usage': u})}\n\n")
    events.append("data: [DONE]\n\n")
    return "".join(events)


def _cases_parse():
    rng = random.Random(3)
    texts = ["Once upon a time", "", "a", "Tom had a red ball.\nHe liked it.", "é ✓ 日本",
             'quotes " and \\ backslash', "data: [DONE] inside the text"]
    cases = []
    for t in texts:
        cases.append(Case((_sse_body(t, rng, chat=True, usage=False, noise=False),), label=f"chat {t[:12]!r}"))
    for i, t in enumerate(texts[:5]):
        cases.append(Case((_sse_body(t, rng, chat=i % 2 == 0, usage=True, noise=True),),
                          label="with a usage chunk and comments"))
        cases.append(Case((_sse_body(t, rng, chat=False, usage=False, noise=False),), label="completion chunks"))
    for i, t in enumerate([texts[0], texts[3], texts[4], texts[2]]):
        chat = i % 2 == 0
        cases.append(Case((_sse_body(t, rng, chat, False, False, ending="content"),),
                          label=f"{'chat' if chat else 'completion'}: the last content chunk also carries the "
                                f"finish reason"))
        cases.append(Case((_sse_body(t, rng, not chat, False, False, ending="none"),),
                          label="no finish chunk: the last content event comes right before [DONE]"))
    cases.append(Case((_sse_body("before", rng, True, False, False) + _sse_body("after", rng, True, False, False),),
                      label="nothing after [DONE] counts"))
    return cases


def _cases_validate():
    ok = {"prompt": "Once upon a time", "max_tokens": 8}

    def case(label, cap=64, block=128, **changes):
        body = {**ok, **changes}
        return Case((body, cap, block), label=label)

    return [
        case("a valid request"),
        Case(([1, 2],), {"max_tokens_cap": 64, "block_size": 128}, label="the body is not an object"),
        case("model not a string", model=3),
        case("a prompt list of one string is fine", prompt=["hi"]),
        case("a batch of prompts", prompt=["a", "b"]),
        case("prompt missing", prompt=None),
        case("prompt a number", prompt=7),
        case("n=2", n=2), case("n=True", n=True), case("n=1 is fine", n=1),
        case("stream a string", stream="yes"), case("stream_options a list", stream_options=[1]),
        case("seed a float", seed=1.5), case("seed True", seed=True), case("seed 0 is fine", seed=0),
        case("temperature too high", temperature=2.5), case("temperature a string", temperature="0"),
        case("temperature 0 is fine", temperature=0), case("temperature NaN", temperature=float("nan")),
        case("top_p 0", top_p=0), case("top_p 1 is fine", top_p=1), case("top_p 1.2", top_p=1.2),
        case("stop empty string", stop=""), case("five stops", stop=list("abcde")),
        case("stop a number", stop=3), case("stop list fine", stop=["\n", "."]),
        case("max_tokens over the cap", max_tokens=65), case("max_tokens 0", max_tokens=0),
        case("max_tokens float", max_tokens=8.0), case("max_tokens missing is fine", max_tokens=None),
        case("prompt fills the context", block=16),
        case("prompt + max_tokens exceed the context", block=20),
        case("prompt + max_tokens fit exactly", block=24),
        case("an empty prompt is one token", prompt="", block=9),
        case("non-ASCII counts bytes", prompt="日本語", block=12, max_tokens=4),
        case("non-ASCII just fits", prompt="日本語", block=13, max_tokens=4),
    ]


for _task in [
    Task("13.1", "the held-back end of a streamed text", _held_back_ref, _cases_held_back,
         hint="hold back the longest end of the text that is the start (but not the whole) of some stop string"),
    Task("13.2", "apply stop strings", _apply_stop, _cases_apply_stop,
         hint="cut at the earliest place any stop string occurs and say whether you cut"),
    Task("13.3", "the pieces a streaming server sends", _stream_pieces, _cases_pieces,
         hint="after each token, cut at a stop string if one appeared (finish 'stop'); otherwise send the new "
              "text up to what must be held back (13.1); at the end send whatever is left"),
    Task("13.4", "a chat chunk as a server-sent event", _chat_chunk, _cases_chunk, compare=_event,
         hint="the first chunk carries the role, later ones the content (an empty delta when there is none); one "
              "choice; the event is 'data: ' plus the JSON and a blank line"),
    Task("13.5", "parse an SSE stream into text", _parse_sse, _cases_parse,
         hint="only 'data: ' lines are events; '[DONE]' ends the stream; chat chunks carry text in the delta, "
              "completion chunks in 'text'; any chunk may carry text, also the one with the finish reason"),
    Task("13.6", "validate a completion request", _validate, _cases_validate, compare=_error_body,
         hint="check the fields in the order the server does, returning the first error; a list of one prompt "
              "string counts as that string; the context left is block_size minus the prompt's tokens (at least "
              "1)"),
]:
    register(_task)
