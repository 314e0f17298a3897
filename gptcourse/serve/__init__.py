"""Serve a GPT over HTTP with OpenAI's API: ``/v1/completions``, ``/v1/chat/completions``.

    gptcourse serve --checkpoint runs/instruct          # a course checkpoint
    gptcourse serve --pretrained gpt2 --port 8000       # GPT-2 weights from the hub

Any OpenAI client then talks to it, and a browser gets a chat page at ``http://127.0.0.1:8000/``::

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
    client.chat.completions.create(model="gpt2", messages=[{"role": "user", "content": "Hi"}])

What the server does:

* ``POST /v1/completions`` (``prompt``) and ``POST /v1/chat/completions`` (``messages``, turned
  into the instruction lesson's Alpaca prompt by
  :func:`gptcourse.finetune.instruct.messages_to_prompt`), with ``max_tokens`` (default 16
  for a completion, for a chat the cap or what the context leaves; ``max_completion_tokens``
  is read too), ``temperature`` (0: greedy, else at least :data:`MIN_TEMPERATURE`), ``top_p``
  (at least :data:`MIN_TOP_P`), ``stop`` (a string or up to 4; left out of the text, as OpenAI
  does), ``n=1``, ``seed`` (OpenAI's int64, or up to ``2**64 - 1``) and ``stream`` (server-sent
  events ending with ``data: [DONE]``; ``stream_options.include_usage`` adds a usage chunk).
  Generation ends at the end-of-text token; a chat answer also ends at ``"\\n###"``, where
  the model would start the template's next section (as the lesson's ``generate_responses``).
  The ``model`` field is not checked: the server has one model. ``GET /v1/models``,
  ``GET /openapi.json`` (the request schema), ``GET /health`` and the chat page ``GET /``
  (both open even with an API key; ``/health`` says whether one is needed) too.
* Requests are pydantic models (:class:`CompletionRequest`, :class:`ChatCompletionRequest`).
  Bad requests get OpenAI's error body ``{"error": {"message", "type", "param", "code"}}``
  with status 400, never a traceback: a wrong type or value, an unknown field, a field the
  server does not implement (``logprobs``, ``echo``, ``best_of``, penalties, tools ...; each is
  accepted only at its do-nothing value), JSON that is invalid, nested too deeply or has a
  number with too many digits. 401 is a missing or wrong API key, 404 an unknown route, 413 a
  body over ``max_body_bytes`` (refused before it is read), 408 a body not sent within
  ``body_timeout``. A prompt that leaves no room in the model's context, or a ``max_tokens``
  that does not fit after it, is ``context_length_exceeded`` (a prompt with more characters
  than the context could hold is refused before it is tokenized).
* Nothing slow runs on the event loop: JSON decoding, validation and tokenization run on a
  small thread pool, generation on the thread of a :class:`gptcourse.batching.BatchedEngine`.
  Concurrent requests are decoded together (continuous batching: up to ``max_batch`` at once,
  joining and leaving the batch between steps; more wait their turn). Each request samples
  with its own ``torch.Generator`` (seeded by ``seed``), so its answer is the same whether it
  ran alone or among others.
* A client that disconnects (streaming or not, also while it waits for a slot) stops its
  generation at the next step; one that disconnects while sending its body is one line in
  the log.
* Slow and idle clients (see :func:`server_options`): a connection must send its request
  headers within ``header_timeout`` seconds (also between keep-alive requests), an idle
  keep-alive connection closes after ``keep_alive`` seconds, and at most ``max_connections``
  are open: a new one closes the oldest idle connection, or is answered 503 when all are
  busy. So the server never runs out of file descriptors, and the log stays short.
"""

import argparse
import os

from ..textpieces import held_back
from .app import DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_BATCH, DEFAULT_MAX_BODY_BYTES, create_app
from .connections import (
    DEFAULT_BACKLOG,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_KEEP_ALIVE,
    DEFAULT_MAX_CONNECTIONS,
    background,
    server_options,
)
from .protocol import (
    CHAT_STOP,
    DEFAULT_MAX_TOKENS_CAP,
    MIN_TEMPERATURE,
    MIN_TOP_P,
    ChatCompletionRequest,
    CompletionRequest,
    Engine,
    GenerationRequest,
    ServeError,
)

__all__ = ["CHAT_STOP", "ChatCompletionRequest", "CompletionRequest", "DEFAULT_MAX_TOKENS_CAP",
           "Engine", "GenerationRequest", "MIN_TEMPERATURE", "MIN_TOP_P", "ServeError",
           "add_arguments", "background", "create_app", "held_back", "load_for_serving", "main",
           "run", "server_options"]


def load_for_serving(checkpoint: str | os.PathLike | None = None, pretrained: str | None = None,
                     device: str | None = None):
    """``(model, tokenizer, model_name)`` from a course checkpoint (a run or checkpoint folder)
    or GPT-2 weights (``pretrained``: a hub id such as ``"gpt2"`` or a local folder) -- one
    of the two."""
    from pathlib import Path

    from .. import profiles

    if (checkpoint is None) == (pretrained is None):
        raise ValueError("give exactly one of --checkpoint PATH or --pretrained NAME")
    device = profiles.device(device)
    if checkpoint is not None:
        from ..train import load_model

        model, tokenizer, _ = load_model(checkpoint, device=device)
        if tokenizer is None:
            raise ValueError(f"{checkpoint} recorded no tokenizer; cannot turn text into ids")
        path = Path(checkpoint).resolve()
        name = path.parent.parent.name if path.parent.name == "checkpoints" else path.name
        return model, tokenizer, name
    from ..model import GPT
    from ..tokenizer import get_tokenizer

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
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                   help="requests decoded together; more wait for a slot (default "
                        f"{DEFAULT_MAX_BATCH}; 1: one at a time). The KV cache holds this many "
                        "sequences of the model's context")
    g = p.add_argument_group("limits (slow, idle and hostile clients)")
    g.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help=f"larger request bodies are refused with 413 (default {DEFAULT_MAX_BODY_BYTES})")
    g.add_argument("--body-timeout", type=float, default=DEFAULT_BODY_TIMEOUT,
                   help=f"seconds to receive a request body, else 408 (default {DEFAULT_BODY_TIMEOUT:g})")
    g.add_argument("--header-timeout", type=float, default=DEFAULT_HEADER_TIMEOUT,
                   help="seconds a connection has to send its request headers "
                        f"(default {DEFAULT_HEADER_TIMEOUT:g})")
    g.add_argument("--keep-alive", type=float, default=DEFAULT_KEEP_ALIVE,
                   help=f"seconds an idle keep-alive connection stays open (default {DEFAULT_KEEP_ALIVE:g})")
    g.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS,
                   help="open connections at most: a new one closes the oldest idle one, or gets 503 "
                        f"(default {DEFAULT_MAX_CONNECTIONS})")
    g.add_argument("--backlog", type=int, default=DEFAULT_BACKLOG,
                   help=f"connections waiting to be accepted (default {DEFAULT_BACKLOG})")
    return p


def run(args: argparse.Namespace) -> int:
    """Load the model named by ``args`` (see :func:`add_arguments`) and serve it with uvicorn."""
    import uvicorn

    model, tokenizer, name = load_for_serving(args.checkpoint, args.pretrained, args.device)
    api_key = args.api_key or os.environ.get("GPTCOURSE_API_KEY") or None
    app = create_app(model, tokenizer, model_name=args.model_name or name,
                     max_tokens_cap=args.max_tokens_cap, api_key=api_key,
                     max_body_bytes=args.max_body_bytes, body_timeout=args.body_timeout,
                     max_batch=args.max_batch)
    if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print(f"warning: serving on {args.host} without an API key: anyone who can reach this "
              "address can use the model")
    print(f"serving {args.model_name or name} on http://{args.host}:{args.port}/v1, a chat page on "
          f"http://{args.host}:{args.port}/ ({model.num_params():,} parameters; API key "
          f"{'required' if api_key else 'off'})")
    uvicorn.run(app, **server_options(args.host, args.port, header_timeout=args.header_timeout,
                                      keep_alive=args.keep_alive, max_connections=args.max_connections,
                                      backlog=args.backlog))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="python -m gptcourse.serve",
                                                   description=__doc__.splitlines()[0]))
    return run(parser.parse_args(argv))
