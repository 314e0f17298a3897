"""An LLM judge: scores responses 0-100 through any OpenAI-compatible chat endpoint.

:func:`judge_responses` asks a server (``GPTCOURSE_JUDGE_URL``, e.g. a local llama.cpp / vLLM /
Ollama server) for a score per response, through :class:`gptcourse.client.Client`, and skips
with a message when no URL is configured; :func:`parse_score` reads the score of a reply.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..client import APIError, Client, Unreachable
from .records import check_record, format_prompt

__all__ = ["JUDGE_PROMPT", "judge_responses", "parse_score"]

JUDGE_PROMPT = (
    "Given the input `{prompt}` and correct output `{output}`, score the model response "
    "`{response}` on a scale from 0 to 100, where 100 is the best score. "
    "Respond with the integer number only."
)
_SKIPPED = ("judge skipped: set GPTCOURSE_JUDGE_URL=http://HOST:PORT (any OpenAI-compatible "
            "server: llama.cpp, vLLM, Ollama, ...) and optionally GPTCOURSE_JUDGE_MODEL and "
            "GPTCOURSE_JUDGE_API_KEY to score the responses")


def parse_score(text: str) -> int:
    """The first integer in the judge's reply, which must lie in 0..100 (else ValueError)."""
    m = re.search(r"-?\d+", text or "")
    if not m:
        raise ValueError(f"no integer in the judge's reply {text[:200]!r}")
    score = int(m.group())
    if not 0 <= score <= 100:
        raise ValueError(f"the judge's score {score} is outside 0..100 (reply {text[:200]!r})")
    return score


def judge_responses(responses: Sequence[Mapping[str, Any]], url: str | None = None,
                    model: str | None = None, api_key: str | None = None, *,
                    timeout: float = 60.0, key: str = "model_response",
                    template: str = JUDGE_PROMPT, progress: bool = True) -> dict[str, Any] | None:
    """Score each response 0-100 with an LLM judge behind an OpenAI-compatible chat endpoint.

    ``url`` (default ``$GPTCOURSE_JUDGE_URL``), e.g. ``http://127.0.0.1:8080`` -- requests go
    to ``{url}/v1/chat/completions`` (a URL ending in ``/v1`` works too). ``model`` (default
    ``$GPTCOURSE_JUDGE_MODEL``, else the first model ``/v1/models`` lists, else
    ``"default"``), ``api_key`` (default ``$GPTCOURSE_JUDGE_API_KEY``; sent as a Bearer token).
    The judge gets ``template`` filled with the prompt, the reference output and the response
    (Raschka's wording) at temperature 0; the first integer of its reply is the score.

    Returns ``{"scores", "mean", "errors", "failed", "model", "url"}``: ``scores[i]`` is None
    and ``errors[i]`` says why when response ``i`` could not be scored (HTTP error, no
    integer, ...); ``mean`` is over the scored ones (None if none). Nothing raises midway;
    when the server cannot be reached the remaining responses are not sent. Without a URL it
    prints how to set one and returns None.
    """
    from tqdm.auto import tqdm

    url = url or os.environ.get("GPTCOURSE_JUDGE_URL")
    if not url:
        print(_SKIPPED)
        return None
    api_key = api_key or os.environ.get("GPTCOURSE_JUDGE_API_KEY") or None
    client = Client(url, api_key, timeout, name="the judge",
                    hint="is the server running, and is GPTCOURSE_JUDGE_URL right?")
    model = model or os.environ.get("GPTCOURSE_JUDGE_MODEL")
    if not model:
        try:
            model = (client.models() or ["default"])[0]
        except APIError:  # any server that does not list models: let it pick
            model = "default"
    scores: list[int | None] = []
    errors: list[str | None] = []
    unreachable: str | None = None
    for i, r in enumerate(tqdm(responses, desc="judge", unit="response", disable=not progress)):
        if unreachable is not None:
            scores.append(None)
            errors.append(f"not sent: {unreachable}")
            continue
        try:
            check_record(r, f"response {i}")
            content = template.format(prompt=format_prompt(r).rstrip(),
                                      output=r.get("output", ""), response=r.get(key, ""))
            text = client.chat([{"role": "user", "content": content}], model, temperature=0)
            scores.append(parse_score(text))
            errors.append(None)
        except Unreachable as err:
            unreachable = str(err)
            scores.append(None)
            errors.append(unreachable)
        except (APIError, ValueError, TypeError) as err:
            scores.append(None)
            errors.append(str(err))
    valid = [s for s in scores if s is not None]
    failed = len(scores) - len(valid)
    if failed:
        first = next(e for e in errors if e)
        print(f"judge: {failed} of {len(scores)} responses could not be scored; first error: {first}")
    return {"scores": scores, "mean": sum(valid) / len(valid) if valid else None,
            "errors": errors, "failed": failed, "model": model,
            "url": client.base + "/chat/completions"}
