"""Chat with a GPT in the terminal: streamed answers, a history, ``/reset`` and ``/quit``.

    gptcourse chat --checkpoint runs/instruct            # a course checkpoint, in this process
    gptcourse chat --pretrained gpt2                      # GPT-2 weights from the hub
    gptcourse chat --url http://127.0.0.1:8000/v1         # a running `gptcourse serve`

In-process, each turn is the server's own generation (:class:`gptcourse.serve`'s engine: the
chat template of :func:`gptcourse.finetune.instruct.messages_to_prompt`, the end-of-text token
and ``"\\n###"`` end an answer), so an answer equals what ``gptcourse serve`` sends for the same
messages and ``--seed``. With ``--url`` the answer streams from ``POST /chat/completions``
(server-sent events; any OpenAI-compatible server) through :class:`gptcourse.client.Client`.

The history (every earlier turn, after the ``--system`` message) goes with each new message.
When the prompt would not fit the model's context -- in-process: the prompt plus the answer's
room (``--max-tokens``, else a quarter of the context, at most 256) exceed it; with a server:
it answers ``context_length_exceeded`` -- the oldest turns are dropped, and the chat says so.
``/reset`` clears the history, ``/quit`` (or end of input, or Ctrl-C at the prompt) ends the
chat; Ctrl-C during an answer stops that answer only (the turn is not kept).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import IO, Any

from .client import APIError, Client

__all__ = ["Chat", "ChatError", "LocalBackend", "RemoteBackend", "add_arguments", "main", "run"]

#: the answer's room kept free of history when --max-tokens is not set (also <= context / 4)
DEFAULT_ANSWER_ROOM = 256
HELP = "commands: /reset clears the history, /quit exits (so does Ctrl-D or Ctrl-C)"


class ChatError(Exception):
    """A turn that could not be answered; ``code`` is OpenAI's error code (or None)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class LocalBackend:
    """Generate in this process with ``model`` and ``tokenizer`` (the server's engine)."""

    def __init__(self, model, tokenizer, name: str = "gptcourse", max_tokens_cap: int | None = None):
        from .serve import DEFAULT_MAX_TOKENS_CAP, Engine

        self.context: int | None = model.config.block_size
        cap = max_tokens_cap or min(DEFAULT_MAX_TOKENS_CAP, model.config.block_size)
        self.engine = Engine(model, tokenizer, name, cap)
        self.name = name
        self.where = "in this process"

    def count(self, messages: list[dict]) -> int | None:
        """Tokens of the prompt the chat ``messages`` make."""
        from .finetune.instruct import messages_to_prompt

        return len(self.engine.encode(messages_to_prompt(messages), "messages"))

    def reply(self, messages: list[dict], **options: Any) -> Iterator[str]:
        """The answer's text as it is generated. Errors (a prompt too long...) are raised here,
        before the iterator is returned."""
        from .serve import ServeError

        body = {"messages": messages, **{k: v for k, v in options.items() if v is not None}}
        try:
            req = self.engine.parse(body, chat=True)
        except ServeError as err:
            raise ChatError(err.message, err.code) from None
        return _texts(self.engine.pieces(req))

    def close(self) -> None:
        """Nothing to release: generation runs in the caller's thread."""


def _texts(pieces) -> Iterator[str]:
    try:
        for text, _, _ in pieces:
            if text:
                yield text
    finally:
        pieces.close()


class RemoteBackend:
    """Stream answers from an OpenAI-compatible server at ``url`` (with or without ``/v1``),
    through :class:`gptcourse.client.Client`."""

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None,
                 timeout: float = 600.0) -> None:
        self.client = Client(url, api_key, timeout)
        self.context = None  # the API does not say; the server's errors tell
        self.where = self.client.base
        if model is None:
            try:
                model = (self.client.models() or ["gptcourse"])[0]
            except APIError as err:
                raise ChatError(str(err), err.code) from None
        self.name = model

    def count(self, messages: list[dict]) -> int | None:
        return None

    def reply(self, messages: list[dict], **options: Any) -> Iterator[str]:
        try:  # the request is sent here: a 4xx/5xx is raised before the iterator is returned
            pieces = self.client.chat_stream(messages, self.name, **options)
        except APIError as err:
            raise ChatError(str(err), err.code) from None
        return _as_chat_errors(pieces)

    def close(self) -> None:
        pass


def _as_chat_errors(pieces: Iterator[str]) -> Iterator[str]:
    """``pieces``, with the client's errors while streaming raised as ChatError."""
    try:
        yield from pieces
    except APIError as err:
        raise ChatError(str(err), err.code) from None
    finally:
        pieces.close()  # the server stops generating when we leave early


class Chat:
    """A conversation: the system message, the turns so far and the sampling options."""

    def __init__(self, backend, system: str | None = None, max_tokens: int | None = None,
                 temperature: float | None = None, top_p: float | None = None,
                 seed: int | None = None) -> None:
        self.backend = backend
        self.system = system
        self.options = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
                        "seed": seed}
        self.history: list[dict] = []  # user and assistant messages, in pairs

    def reset(self) -> None:
        self.history.clear()

    def messages(self, text: str, history: list[dict] | None = None) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        history = self.history if history is None else history
        return [*head, *history, {"role": "user", "content": text}]

    def _answer_room(self, context: int) -> int:
        return self.options["max_tokens"] or min(DEFAULT_ANSWER_ROOM, max(1, context // 4))

    def ask(self, text: str, out: IO[str]) -> str | None:
        """Answer ``text`` (streamed to ``out``), then keep the turn in the history. Returns the
        answer, or None when the turn failed (the error is written to ``out``; the history is
        left as it was)."""
        history = list(self.history)  # trimmed for this turn; kept only if the turn succeeds
        context = self.backend.context
        if context is not None:  # in-process: count the tokens before asking
            room = self._answer_room(context)
            while history and self.backend.count(self.messages(text, history)) + room > context:
                del history[:2]
        while True:
            try:
                pieces = self.backend.reply(self.messages(text, history), **self.options)
                break
            except ChatError as err:
                if err.code == "context_length_exceeded" and history:
                    del history[:2]  # a server: drop the oldest turn and ask again
                    continue
                out.write(f"[error: {err}]\n")
                out.flush()
                return None
            except KeyboardInterrupt:  # e.g. waiting for a busy server to start answering
                out.write("\n[answer interrupted; this turn is not kept]\n")
                out.flush()
                return None
        dropped = (len(self.history) - len(history)) // 2
        if dropped:
            fit = f"the model's {context}-token context" if context else "the server's context"
            out.write(f"[history trimmed: dropped the {dropped} oldest turn"
                      f"{'s' if dropped > 1 else ''} to fit {fit}]\n")
        out.write(f"{self.backend.name}> ")
        out.flush()
        parts: list[str] = []
        try:
            for piece in pieces:
                parts.append(piece)
                out.write(piece)
                out.flush()
        except KeyboardInterrupt:
            out.write("\n[answer interrupted; this turn is not kept]\n")
            out.flush()
            return None
        except ChatError as err:
            out.write(f"\n[error: {err}]\n")
            out.flush()
            return None
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
        out.write("\n")
        out.flush()
        answer = "".join(parts)
        self.history = [*history, {"role": "user", "content": text},
                        {"role": "assistant", "content": answer}]
        return answer

    def loop(self, inp: IO[str] | None = None, out: IO[str] | None = None) -> int:
        """Read messages from ``inp`` (default: the terminal) until ``/quit`` or end of input;
        answers go to ``out`` (default: stdout). Returns 0."""
        out = out or sys.stdout
        tty = inp is None and sys.stdin.isatty()
        inp = inp or sys.stdin
        out.write(f"chatting with {self.backend.name} ({self.backend.where}). {HELP}\n")
        out.flush()
        while True:
            try:
                if tty:
                    line = input("you> ")  # line editing where the terminal has it
                else:
                    out.write("you> ")
                    out.flush()
                    line = inp.readline()
                    if not line:
                        raise EOFError
            except (EOFError, KeyboardInterrupt):
                out.write("\n")
                out.flush()
                return 0
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                command = text.split()[0].lower()
                if command in ("/quit", "/exit", "/q"):
                    return 0
                if command == "/reset":
                    self.reset()
                    out.write("[history cleared]\n")
                else:
                    out.write(f"[unknown command {command}; {HELP}]\n")
                out.flush()
                continue
            self.ask(line.rstrip("\r\n"), out)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``gptcourse chat`` (also ``python -m gptcourse.chat``)."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a run or checkpoint folder (generate in this process)")
    src.add_argument("--pretrained", help="GPT-2 weights: a hub id or folder (in this process)")
    src.add_argument("--url", help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--api-key", default=None,
                   help="with --url: the server's key (default: env GPTCOURSE_API_KEY)")
    p.add_argument("--model", default=None, help="with --url: the model id (default: the server's first)")
    p.add_argument("--system", default=None, help="a system message (replaces the template's preamble)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="the most tokens per answer (default: the server's default)")
    p.add_argument("--temperature", type=float, default=None, help="0: greedy (default 1)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling (default: off)")
    p.add_argument("--seed", type=int, default=None, help="the same seed gives the same answers")
    p.add_argument("--device", default=None, help="in this process: default best available")
    return p


def run(args: argparse.Namespace, inp: IO[str] | None = None, out: IO[str] | None = None) -> int:
    """Open the model or server named by ``args`` (see :func:`add_arguments`) and chat."""
    import os

    if args.max_tokens is not None and args.max_tokens < 1:
        raise ValueError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    if args.url:
        try:
            backend = RemoteBackend(args.url, args.api_key or os.environ.get("GPTCOURSE_API_KEY"),
                                    args.model)
        except ChatError as err:
            raise RuntimeError(str(err)) from None
    else:
        from .serve import load_for_serving

        model, tokenizer, name = load_for_serving(args.checkpoint, args.pretrained, args.device)
        backend = LocalBackend(model, tokenizer, name)
    chat = Chat(backend, system=args.system, max_tokens=args.max_tokens,
                temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    try:
        return chat.loop(inp, out)
    finally:
        backend.close()


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="python -m gptcourse.chat",
                                                   description=__doc__.splitlines()[0]))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
