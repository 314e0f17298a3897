"""Token ids -> final text pieces: what a streaming server may send of an answer so far.

A piece is ``(text, finish_reason, completion_tokens)``: text as it becomes final, held back
while its end may be the start of a stop string or of a UTF-8 character, the last piece with the
finish reason. Pure Python (no torch), shared by :mod:`gptcourse.batching` and :mod:`gptcourse.serve`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

__all__ = ["Piece", "TextAssembler", "held_back"]

#: ``(text, finish_reason, completion_tokens)``: finish_reason is None until the last piece
Piece = tuple[str, str | None, int]




def held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is the start of a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class TextAssembler:
    """One answer's text, fed one token id at a time.

    :meth:`feed` returns a piece when the token made more text final (``None`` if not yet),
    or the last piece when the token ended the answer (``eot``, or a stop string: the text is
    cut before it). :meth:`close` gives the last piece when generation ran out of tokens.
    Text is held back while its end may be the start of a stop string or an incomplete UTF-8
    character (decoded as U+FFFD).
    """

    def __init__(self, tokenizer, stop: Sequence[str] = (), eot: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.stop = list(stop)
        self.eot = eot
        self.ids: list[int] = []  # the answer's ids (without eot)
        self.text = ""  # their text, cut at a stop string once one appears
        self.sent = 0  # characters of text already handed out
        self.finish: str | None = None

    @property
    def done(self) -> bool:
        return self.finish is not None

    @property
    def tokens(self) -> int:
        """Completion tokens so far (end-of-text not counted)."""
        return len(self.ids)

    def feed(self, token: int) -> Piece | None:
        if self.finish is not None:
            raise RuntimeError("this answer is finished: feed it no more tokens")
        if token == self.eot:
            return self._end("stop")
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        # a stop string may straddle what was sent and the new text
        cuts = [i for i in (text.find(s, max(0, self.sent - len(s))) for s in self.stop) if i >= 0]
        if cuts:
            self.text = text[:min(cuts)]
            return self._end("stop")
        self.text = text
        safe = len(text) - held_back(text, self.stop)
        while safe > self.sent and text[safe - 1] == "\ufffd":  # maybe half a character
            safe -= 1
        if safe <= self.sent:
            return None
        piece = (text[self.sent:safe], None, len(self.ids))
        self.sent = safe
        return piece

    def close(self) -> Piece:
        """The last piece of an answer that ran out of tokens (finish ``"length"``)."""
        return self._end("length")

    def _end(self, finish: str) -> Piece:
        self.finish = finish
        return self.text[self.sent:], finish, len(self.ids)

    def pieces(self, tokens: Iterable[int]) -> Iterator[Piece]:
        """All pieces of an answer whose tokens are ``tokens`` (``"length"`` if they run out)."""
        for t in tokens:
            piece = self.feed(t)
            if piece is not None:
                yield piece
            if self.done:
                return
        yield self.close()
