"""gptcourse.tokenizer: byte-level BPE from scratch against tiktoken, the fast trainer against
the readable one, special tokens, persistence, bad input; CharTokenizer and get_tokenizer.

Every comparison is exact (token ids id for id, strings character for character): there is
no tolerance anywhere in this file. Hypothesis runs derandomized (profile ``ci`` in
conftest), so a failure reproduces; ``HYPOTHESIS_PROFILE=explore`` searches more widely.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata

import numpy as np
import pytest
import regex
import tiktoken
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gptcourse import corpora
from gptcourse.tokenizer import (
    GPT2_PATTERN,
    GPT4_PATTERN,
    BPETokenizer,
    CharTokenizer,
    TiktokenTokenizer,
    TokenizerFileError,
    bpe_merge,
    get_tokenizer,
    merge_word,
    train_merges_naive,
)

EOT = "<|endoftext|>"
#: HYPOTHESIS_SCALE=20 runs 20x the examples (with HYPOTHESIS_PROFILE=explore: random ones)
SCALE = int(os.environ.get("HYPOTHESIS_SCALE", "1"))


def examples(n: int) -> settings:
    return settings(max_examples=n * SCALE)


# --------------------------------------------------------------------------------------
# Fixtures (module scope: GPT-2's files are read once, the corpora loaded once)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2() -> BPETokenizer:
    return BPETokenizer.from_gpt2()


@pytest.fixture(scope="module")
def enc():
    return tiktoken.get_encoding("gpt2")


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return corpora.load_text("tinyshakespeare")


@pytest.fixture(scope="module")
def verdict() -> str:
    return corpora.load_text("the-verdict")


@pytest.fixture(scope="module")
def trained(shakespeare) -> BPETokenizer:
    """1024 tokens learned from the first 300k characters of Tiny Shakespeare, plus EOT."""
    return BPETokenizer.train(shakespeare[:300_000], 1025, special_tokens=[EOT])


@pytest.fixture(scope="module")
def trained_tt(trained):
    return trained.to_tiktoken()


# --------------------------------------------------------------------------------------
# Text strategies: every code point, plus the corners where tokenizers disagree.
# TEXT holds only strings that UTF-8 can encode (no lone surrogates): decode(encode(s)) == s
# can only hold for those. TEXT_ANY adds surrogates (U+D800..U+DFFF, which a Python str
# can hold), used where the expected result is tiktoken's, not the input itself.
# --------------------------------------------------------------------------------------

UTF8_CHAR = st.characters(codec="utf-8")  # U+0000..U+10FFFF but surrogates, unassigned included
ANY_CHAR = st.characters()  # every code point, surrogates included
CONTROL = st.characters(min_codepoint=0x00, max_codepoint=0x1F) | st.characters(
    min_codepoint=0x7F, max_codepoint=0x9F
)
EMOJI = st.one_of(
    st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF),
    st.characters(min_codepoint=0x2600, max_codepoint=0x27BF),
    st.sampled_from(["\u200d", "\ufe0f", "\U0001f3fb", "👨‍👩‍👧", "🏳️‍🌈", "🇫🇷"]),
)
COMBINING = st.characters(min_codepoint=0x300, max_codepoint=0x36F) | st.characters(
    categories=["Mn", "Mc", "Me"]
)
CJK = st.one_of(
    st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),  # ideographs
    st.characters(min_codepoint=0x3000, max_codepoint=0x30FF),  # CJK punctuation, kana
    st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3),  # hangul
    st.characters(min_codepoint=0xFF00, max_codepoint=0xFFEF),  # full-width forms
)
SPACE = st.sampled_from(
    [" ", "  ", "\t", "\n", "\r", "\r\n", "\x0b", "\x0c", "\x85", "\xa0", "\u2009", "\u2028", "\u3000", "\u200b", "\ufeff"]
)
SPACE_RUN = st.lists(SPACE, min_size=1, max_size=40).map("".join)
CONTRACTION = st.sampled_from(
    ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "'", "''", "’s", " 's", "'st", "'ved"]
)
NUMBER = st.one_of(
    st.from_regex(r"[0-9]{1,14}", fullmatch=True),
    st.integers().map(str),
    st.floats(allow_nan=False).map(str),
    st.characters(categories=["Nd", "Nl", "No"]),
)
WORD = st.sampled_from(
    ["the", " the", "The", " world", "Hello", "don", " I", "naïve", " café", " Ünïcödé", "ASCII", "a", "z", "x"]
)
UTF8_PIECE = st.one_of(
    st.text(UTF8_CHAR, min_size=1, max_size=8),
    st.text(CONTROL, min_size=1, max_size=5),
    st.lists(EMOJI, min_size=1, max_size=5).map("".join),
    st.text(COMBINING, min_size=1, max_size=4),
    st.text(CJK, min_size=1, max_size=8),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=10),
    SPACE_RUN,
    CONTRACTION,
    NUMBER,
    WORD,
)
SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)  # rare in ANY_CHAR
ANY_PIECE = UTF8_PIECE | st.text(ANY_CHAR, min_size=1, max_size=8) | st.text(SURROGATE, min_size=1, max_size=2)
TEXT = st.one_of(st.text(), st.lists(UTF8_PIECE, max_size=30).map("".join))
TEXT_ANY = st.one_of(st.text(ANY_CHAR), st.lists(ANY_PIECE, max_size=30).map("".join))
SPECIAL_PIECE = st.sampled_from([EOT, "<|endoftext", "endoftext|>", "<|"])
TEXT_WITH_SPECIAL = st.lists(UTF8_PIECE | SPECIAL_PIECE, max_size=20).map("".join)
TEXT_ANY_WITH_SPECIAL = st.lists(ANY_PIECE | SPECIAL_PIECE, max_size=20).map("".join)


# --------------------------------------------------------------------------------------
# GPT-2 from its files == tiktoken's gpt2
# --------------------------------------------------------------------------------------


def test_gpt2_vocabulary_is_tiktokens(gpt2, enc):
    assert gpt2.vocab_size == enc.n_vocab == 50257
    assert gpt2.special_tokens == {EOT: 50256} and gpt2.eot_id == 50256
    assert len(gpt2.merges) == 50000
    assert gpt2.mergeable_ranks == enc._mergeable_ranks
    assert gpt2.pattern == GPT2_PATTERN == enc._pat_str


def test_gpt2_from_explicit_files(gpt2):
    tok = BPETokenizer.from_gpt2(corpora.path("gpt2-encoder"), corpora.path("gpt2-vocab"))
    assert tok.merges == gpt2.merges and tok.mergeable_ranks == gpt2.mergeable_ranks


def test_gpt2_matches_tiktoken_on_tinyshakespeare(gpt2, enc, shakespeare):
    assert gpt2.encode(shakespeare) == enc.encode(shakespeare)


def test_gpt2_matches_tiktoken_on_the_verdict(gpt2, enc, verdict):
    assert gpt2.encode(verdict) == enc.encode(verdict)


@examples(500)
@given(TEXT_ANY)
@example("")
@example("hello world")
@example("I'm here, they've gone; it's 2024!  \n\n\t end   ")
@example("\r\n\r\n  \r\n")
@example("'''ss 'S 'LL 'll's")
@example("\x00\x01\x1f\x7f\x80\x9f")
@example("👨‍👩‍👧 e\u0301 한국어 日本語 ١٢٣ ½ Ⅻ")
@example(" " * 50 + "x" + "\t" * 30 + "\n" * 20)
def test_gpt2_matches_tiktoken_on_generated_text(gpt2, enc, text):
    assert gpt2.encode(text, disallowed_special=()) == enc.encode(text, disallowed_special=())


@examples(200)
@given(TEXT_ANY_WITH_SPECIAL)
def test_gpt2_matches_tiktoken_with_special_tokens_allowed(gpt2, enc, text):
    assert gpt2.encode(text, allowed_special="all") == enc.encode(text, allowed_special="all")


def _first_differences(gpt2, enc, make, code_points, limit=10):
    out = []
    for c in code_points:
        s = make(chr(c))
        if gpt2.encode(s) != enc.encode(s):
            out.append(f"U+{c:04X} {unicodedata.category(chr(c))} {s!r}")
            if len(out) == limit:
                break
    return out


def test_gpt2_matches_tiktoken_on_every_code_point(enc):
    """Each code point assigned in this Python's Unicode tables (an unassigned one may be a
    letter in a newer Unicode that `regex` knows and tiktoken's Rust regex does not yet), in the contexts where GPT-2's regex classes decide the split: before a
    contraction (letter/number vs punctuation), after a space, doubled, before a newline.
    (A fresh tokenizer: a million one-off chunks would fill the shared one's chunk cache.)"""
    gpt2 = BPETokenizer.from_gpt2()

    def make(c: str) -> str:
        return f"{c}'s {c}{c}\n"

    code_points = [c for c in range(0x110000)
                   if not 0xD800 <= c <= 0xDFFF and unicodedata.category(chr(c)) != "Cn"]
    bad_blocks = []
    for lo in range(0, len(code_points), 1 << 15):
        block = code_points[lo : lo + (1 << 15)]
        s = "".join(make(chr(c)) for c in block)
        if gpt2.encode(s) != enc.encode(s):
            bad_blocks.append(block)
    differences = [d for b in bad_blocks[:4] for d in _first_differences(gpt2, enc, make, b, 3)]
    assert not differences, (
        f"{len(bad_blocks)} blocks of 32768 code points differ from tiktoken, e.g. {differences} "
        f"(a split differs where `regex` {regex.__version__} and tiktoken's Rust regex classify "
        "a code point differently, e.g. when their Unicode versions differ)"
    )


@pytest.mark.parametrize(
    "text",
    ["a\ud800b", "\udfff", "x\ud83d", "\ud83d\ude00", "it's\udc80 ok", "\ud800\ud800 \ud800"],
    ids=["lone-high", "lone-low", "trailing-high", "pair", "after-word", "several"],
)
def test_gpt2_lone_surrogates_encode_like_tiktoken(gpt2, enc, text):
    """tiktoken encodes a str with surrogate code points (e.g. from JSON or a file read with
    errors='surrogateescape') by re-decoding it as UTF-16 with errors='replace'."""
    assert gpt2.encode(text) == enc.encode(text)


# --------------------------------------------------------------------------------------
# decode
# --------------------------------------------------------------------------------------


@examples(300)
@given(TEXT)
@example("")
@example("👨‍👩‍👧 e\u0301 \x00 \r\n")
def test_gpt2_decode_encode_roundtrip(gpt2, text):
    assert gpt2.decode(gpt2.encode(text, disallowed_special=())) == text


@examples(300)
@given(TEXT)
@example("")
@example("unseen: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🦜 \x00\x7f")
def test_trained_decode_encode_roundtrip(trained, text):
    assert trained.decode(trained.encode(text, disallowed_special=())) == text


@examples(300)
@given(TEXT_WITH_SPECIAL)
def test_trained_roundtrip_with_special_tokens(trained, text):
    ids = trained.encode(text, allowed_special="all")
    assert trained.decode(ids) == text


def byte_ids(tok, data: bytes) -> list[int]:
    return [tok.mergeable_ranks[bytes([b])] for b in data]


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"\x80", "\ufffd"),  # a lone continuation byte
        (b"\xbf\xbf", "\ufffd\ufffd"),
        ("€".encode()[:2], "\ufffd"),  # a truncated 3-byte character: one replacement
        ("🙂".encode()[:3] + b"a", "\ufffda"),  # a truncated 4-byte character, then ASCII
        (b"\xc0\xaf", "\ufffd\ufffd"),  # an overlong encoding
        (b"\xed\xa0\x80", "\ufffd\ufffd\ufffd"),  # an encoded surrogate
        (b"\xff", "\ufffd"),
        (b"ok\xe2\x82", "ok\ufffd"),
    ],
)
def test_gpt2_decode_invalid_utf8_like_tiktoken(gpt2, enc, data, expected):
    ids = byte_ids(gpt2, data)
    assert gpt2.decode(ids) == enc.decode(ids) == expected
    assert gpt2.decode_bytes(ids) == enc.decode_bytes(ids) == data


@examples(300)
@given(
    st.lists(
        st.one_of(st.integers(0, 255).map(lambda b: ("byte", b)), st.integers(0, 50256).map(lambda i: ("id", i))),
        max_size=20,
    )
)
def test_gpt2_decode_any_ids_like_tiktoken(gpt2, enc, items):
    ids = [gpt2.mergeable_ranks[bytes([v])] if kind == "byte" else v for kind, v in items]
    assert gpt2.decode(ids) == enc.decode(ids)


@examples(200)
@given(st.lists(st.integers(0, 1024), max_size=20))
def test_trained_decode_any_ids_like_tiktoken(trained, trained_tt, ids):
    assert trained.decode(ids) == trained_tt.decode(ids)


def test_decode_accepts_arrays_and_tensors(gpt2):
    ids = gpt2.encode("Hello world")
    assert gpt2.decode(np.array(ids)) == gpt2.decode(torch.tensor(ids)) == gpt2.decode(tuple(ids)) == "Hello world"


# --------------------------------------------------------------------------------------
# Training: the fast trainer == the readable one, id for id
# --------------------------------------------------------------------------------------

SMALL_TEXTS = [
    "aaaaaaa",
    "aaaa aaaa aaaaaaaaa",
    "abababab",
    "abababab ababab abab",
    "aaabdaaabac",
    "hello world, hello worlds! Hello? hello.",
    "日本語日本語日本日本 日本語",
    "🙂🙂🙂🙂 🙂🙂🙂 🙂",
    "éééé eée éeé",
    "the cat's hat's  \n\n the   cat\t\tsat\r\n\r\n",
    "1234512345 12 123 1234",
    "ab" * 40 + " " + "ba" * 40,
]


def naive(text: str, vocab_size: int, pattern: str = GPT2_PATTERN):
    return train_merges_naive([c.encode("utf-8") for c in regex.findall(pattern, text)], vocab_size - 256)


@pytest.mark.parametrize("pattern", [GPT2_PATTERN, GPT4_PATTERN], ids=["gpt2", "gpt4"])
@pytest.mark.parametrize("text", SMALL_TEXTS)
def test_train_matches_naive_on_small_texts(text, pattern):
    vocab_size = 256 + 30
    tok = BPETokenizer.train(text, vocab_size, pattern=pattern)
    assert tok.merges == naive(text, vocab_size, pattern)


@pytest.mark.parametrize("start, length, vocab_size", [(0, 3000, 356), (500_000, 2000, 300), (1_000_000, 4000, 400)])
def test_train_matches_naive_on_shakespeare_slices(shakespeare, start, length, vocab_size):
    text = shakespeare[start : start + length]
    assert BPETokenizer.train(text, vocab_size).merges == naive(text, vocab_size)


def test_train_matches_naive_on_the_verdict(verdict):
    text = verdict[:5000]
    assert BPETokenizer.train(text, 320).merges == naive(text, 320)


REPETITIVE = st.text(st.sampled_from(list("ab ab\n'sé日🙂1")), max_size=300)


@examples(150)
@given(st.one_of(REPETITIVE, TEXT), st.integers(256, 256 + 40))
@example("aaaaaaa", 260)
@example("abababab", 300)
@example("日日日日日 日日日", 270)
def test_train_matches_naive_on_generated_text(text, vocab_size):
    assert BPETokenizer.train(text, vocab_size).merges == naive(text, vocab_size)


def test_train_gives_vocab_size_tokens(shakespeare):
    for vocab_size in (256, 300, 1000):
        tok = BPETokenizer.train(shakespeare[:100_000], vocab_size)
        assert tok.vocab_size == vocab_size
        assert len(tok.mergeable_ranks) == vocab_size
        assert sorted(tok.mergeable_ranks.values()) == list(range(vocab_size))


def test_train_stops_when_pairs_run_out():
    tok = BPETokenizer.train("ab", 1000)
    assert tok.vocab_size == 257 and tok.mergeable_ranks[b"ab"] == 256


def test_train_merges_are_consistent_with_the_vocabulary(trained):
    for left, right, new in trained.merges:
        assert trained.vocab[new] == trained.vocab[left] + trained.vocab[right]


def test_train_is_deterministic(shakespeare):
    text = shakespeare[:50_000]
    a, b = BPETokenizer.train(text, 600), BPETokenizer.train(text, 600)
    assert a.merges == b.merges and a.mergeable_ranks == b.mergeable_ranks


def test_train_is_deterministic_across_hash_seeds(tmp_path):
    """String hashing is randomized per process; the merges must not depend on it."""
    code = (
        "import json, sys; from gptcourse.tokenizer import BPETokenizer; "
        "text = 'the cat sat on the mat; that hat is the cat\\'s hat! ' * 20 + 'xyzzy ' * 7; "
        "print(json.dumps(BPETokenizer.train(text, 320).merges))"
    )
    outs = []
    for seed in ("1", "2", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outs.append(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)
    assert outs[0] == outs[1] == outs[2] and json.loads(outs[0])


def test_train_with_progress_bar_gives_the_same_merges():
    text = "hello hello world " * 30
    assert BPETokenizer.train(text, 280, progress=True).merges == BPETokenizer.train(text, 280).merges


# --------------------------------------------------------------------------------------
# to_tiktoken: the same vocabulary in Rust
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("start", [0, 300_000, 700_000, 1_050_000])
def test_to_tiktoken_matches_encode_on_shakespeare(trained, trained_tt, shakespeare, start):
    text = shakespeare[start : start + 60_000]
    assert trained_tt.encode(text) == trained.encode(text)


@examples(300)
@given(TEXT_ANY_WITH_SPECIAL)
def test_to_tiktoken_matches_encode_on_generated_text(trained, trained_tt, text):
    assert trained_tt.encode(text, allowed_special="all") == trained.encode(text, allowed_special="all")
    assert trained_tt.encode(text, disallowed_special=()) == trained.encode(text, disallowed_special=())


def test_to_tiktoken_decodes_the_same(trained, trained_tt, verdict):
    ids = trained.encode(verdict)
    assert trained_tt.decode(ids) == trained.decode(ids) == verdict
    assert trained_tt.n_vocab == trained.vocab_size


# --------------------------------------------------------------------------------------
# One long chunk (issue 12): bpe_merge, the heap merge encode() uses, equals the readable
# rescan (`_bpe`) and tiktoken, and does O(n) vocabulary lookups (the rescan: O(n^2))
# --------------------------------------------------------------------------------------

#: pieces whose repeats make long chunks with many equal-rank pairs (ties)
REPEAT_UNIT = st.sampled_from([b"a", b"b", b"ab", b" ", b"\n", b"1", b"!", b"'", "é".encode(), "日".encode(), b"aaab"])
PIECE = st.one_of(st.binary(max_size=40), st.lists(REPEAT_UNIT, max_size=60).map(b"".join))


@examples(300)
@given(PIECE)
@example(b"")
@example(b"a" * 200)
@example(b"ab" * 99 + b"a")
def test_bpe_merge_matches_the_rescan_on_gpt2(gpt2, piece):
    assert bpe_merge(piece, gpt2.mergeable_ranks) == gpt2._bpe(piece)


@examples(300)
@given(PIECE)
def test_bpe_merge_matches_the_rescan_on_trained(trained, piece):
    assert bpe_merge(piece, trained.mergeable_ranks) == trained._bpe(piece)


LONG_CHUNKS = ["a" * 20_000, "ab" * 10_000, "1" * 20_000, "!" * 20_000, " " * 20_000, "\n" * 20_000,
               "é" * 10_000, "日" * 7_000, " " + "z" * 20_000, "aaab" * 5_000]


@pytest.mark.parametrize("text", LONG_CHUNKS, ids=lambda t: f"{t[:4]!r}x{len(t)}")
def test_gpt2_matches_tiktoken_on_one_long_chunk(gpt2, enc, text):
    assert gpt2.encode(text) == enc.encode(text)


@pytest.mark.parametrize("text", LONG_CHUNKS[:4], ids=lambda t: f"{t[:4]!r}x{len(t)}")
def test_to_tiktoken_matches_encode_on_one_long_chunk(trained, trained_tt, text):
    assert trained.encode(text) == trained_tt.encode(text)


class CountingRanks(dict):
    """mergeable_ranks that count their lookups and stop the test past ``budget``."""

    def __init__(self, ranks: dict[bytes, int], budget: int) -> None:
        super().__init__(ranks)
        self.lookups, self.budget = 0, budget

    def _count(self) -> None:
        self.lookups += 1
        assert self.lookups <= self.budget, f"more than {self.budget} vocabulary lookups"

    def get(self, key, default=None):
        self._count()
        return super().get(key, default)

    def __getitem__(self, key):
        self._count()
        return super().__getitem__(key)


@pytest.mark.parametrize("text", ["a" * 16_384, "ab" * 8_192], ids=["16KB-of-a", "16KB-of-ab"])
def test_encode_one_long_chunk_does_linear_work(gpt2, text):
    """The issue's 16 KB one-letter prompt: the old encode rescanned every pair per merge
    (~10^8 lookups, ~25 s); the heap does < 4 per byte: n - 1 pairs, <= 2 new per merge, n ids."""
    tok = BPETokenizer(gpt2.mergeable_ranks, gpt2.special_tokens, merges=gpt2.merges)
    tok.mergeable_ranks = CountingRanks(gpt2.mergeable_ranks, budget=4 * len(text))
    assert tok.encode(text) == gpt2.encode(text)


def test_long_chunks_are_not_cached(gpt2):
    tok = BPETokenizer(gpt2.mergeable_ranks, gpt2.special_tokens, merges=gpt2.merges)
    tok.encode(" hello" + " x" * 3 + " " + "a" * 5_000)
    assert set(tok._cache) == {" hello", " x"}


def test_merge_word_replaces_pairs_left_to_right():
    assert merge_word((1, 1, 1, 2, 1, 1), (1, 1), 9) == (9, 1, 2, 9)


# --------------------------------------------------------------------------------------
# Special tokens (tiktoken's rules)
# --------------------------------------------------------------------------------------


def test_special_token_in_text_raises_by_default(gpt2, enc):
    with pytest.raises(ValueError) as info:
        gpt2.encode(f"x{EOT}y")
    assert EOT in str(info.value) and "allowed_special" in str(info.value)
    with pytest.raises(ValueError):  # tiktoken agrees
        enc.encode(f"x{EOT}y")


@pytest.mark.parametrize("allowed", ["all", {EOT}, frozenset([EOT]), [EOT]], ids=["all", "set", "frozenset", "list"])
def test_allowed_special_gives_the_special_id(gpt2, enc, allowed):
    text = f"x{EOT}y {EOT}{EOT}z"
    ids = gpt2.encode(text, allowed_special=allowed)
    assert ids == enc.encode(text, allowed_special="all")
    assert ids.count(50256) == 3


def test_disallowed_special_empty_encodes_as_text(gpt2, enc):
    text = f"x{EOT}y"
    ids = gpt2.encode(text, disallowed_special=())
    assert ids == enc.encode(text, disallowed_special=()) == gpt2.encode_ordinary(text)
    assert 50256 not in ids and gpt2.decode(ids) == text


def test_partial_special_token_is_ordinary_text(gpt2, enc):
    text = "<|endoftext| and <|endoftext"
    assert gpt2.encode(text) == enc.encode(text)


@pytest.mark.parametrize("arg", ["allowed_special", "disallowed_special"])
def test_unknown_special_name_raises(gpt2, arg):
    with pytest.raises(ValueError, match="<|pad|>"):
        gpt2.encode("hello", **{arg: {"<|pad|>"}})


def test_special_argument_must_not_be_a_plain_string(gpt2):
    with pytest.raises(TypeError):
        gpt2.encode("hello", allowed_special=EOT)


def test_trained_special_tokens_get_ids_after_the_merges(verdict):
    text = verdict[:6000].replace("\n\n", EOT).replace(", ", ",<|pad|>")
    tok = BPETokenizer.train(text, 300, special_tokens=[EOT, "<|pad|>"])
    assert tok.vocab_size == 300
    assert tok.special_tokens == {EOT: 298, "<|pad|>": 299}
    assert max(tok.mergeable_ranks.values()) == 297 and tok.eot_id == 298
    ids = tok.encode("hi<|pad|> world<|endoftext|>", allowed_special="all")
    assert ids[-1] == 298 and 299 in ids
    assert tok.decode(ids) == "hi<|pad|> world<|endoftext|>"
    with pytest.raises(ValueError, match="allowed_special"):
        tok.encode("hi<|pad|>")


def test_trained_special_tokens_never_take_part_in_merges():
    text = "ab<|endoftext|>ab<|endoftext|>" * 50
    tok = BPETokenizer.train(text, 300, special_tokens=[EOT])
    # the only pair left once the specials are cut out: "<|", "|>", "endoftext" never merge
    assert tok.merges == [(ord("a"), ord("b"), 256)]
    assert tok.special_tokens == {EOT: 257}


def test_train_with_special_tokens_matches_naive_on_the_pieces(verdict):
    text = verdict[:8000].replace("\n\n", EOT)
    tok = BPETokenizer.train(text, 320, special_tokens=[EOT])
    chunks = [c.encode() for piece in text.split(EOT) for c in regex.findall(GPT2_PATTERN, piece)]
    assert tok.merges == train_merges_naive(chunks, 320 - 257)


# --------------------------------------------------------------------------------------
# save / load
# --------------------------------------------------------------------------------------


def test_save_load_roundtrip(trained, tmp_path, shakespeare):
    path = trained.save(tmp_path / "sub" / "tok.json")
    loaded = BPETokenizer.load(path)
    assert loaded.merges == trained.merges
    assert loaded.mergeable_ranks == trained.mergeable_ranks
    assert loaded.special_tokens == trained.special_tokens and loaded.pattern == trained.pattern
    text = shakespeare[-20_000:] + EOT + "🙂 café"
    assert loaded.encode(text, allowed_special="all") == trained.encode(text, allowed_special="all")
    assert os.listdir(tmp_path / "sub") == ["tok.json"]  # no temporary file left


def test_save_load_roundtrip_gpt2(gpt2, tmp_path, verdict):
    loaded = BPETokenizer.load(gpt2.save(tmp_path / "gpt2.json"))
    assert loaded.merges == gpt2.merges and loaded.mergeable_ranks == gpt2.mergeable_ranks
    assert loaded.encode(verdict) == gpt2.encode(verdict)


def test_save_load_keeps_a_custom_pattern(tmp_path):
    tok = BPETokenizer.train("Hello WORLD 12345 hello world", 270, pattern=GPT4_PATTERN)
    loaded = BPETokenizer.load(tok.save(tmp_path / "t.json"))
    assert loaded.pattern == GPT4_PATTERN and loaded.merges == tok.merges


def _saved_doc(tmp_path):
    tok = BPETokenizer.train("hello world hello there", 270, special_tokens=[EOT])
    return json.loads(tok.save(tmp_path / "good.json").read_text(encoding="utf-8"))


def _corrupt(doc, change):
    doc = json.loads(json.dumps(doc))
    change(doc)
    return json.dumps(doc)


CORRUPTIONS = {
    "not-json": lambda doc: "this is not JSON",
    "empty": lambda doc: "",
    "truncated": lambda doc: json.dumps(doc)[: len(json.dumps(doc)) // 2],
    "a-list": lambda doc: "[1, 2, 3]",
    "wrong-format": lambda doc: _corrupt(doc, lambda d: d.update(format="gptcourse.char")),
    "no-format": lambda doc: _corrupt(doc, lambda d: d.pop("format")),
    "wrong-version": lambda doc: _corrupt(doc, lambda d: d.update(version=2)),
    "byte-ids-255": lambda doc: _corrupt(doc, lambda d: d.update(byte_ids=d["byte_ids"][:255])),
    "byte-ids-duplicate": lambda doc: _corrupt(doc, lambda d: d["byte_ids"].__setitem__(0, 1)),
    "byte-ids-not-ints": lambda doc: _corrupt(doc, lambda d: d["byte_ids"].__setitem__(0, "0")),
    "merge-undefined-id": lambda doc: _corrupt(doc, lambda d: d["merges"].__setitem__(0, [0, 99_999, 256])),
    "merge-not-triple": lambda doc: _corrupt(doc, lambda d: d["merges"].__setitem__(0, [0, 1])),
    "merge-reuses-id": lambda doc: _corrupt(doc, lambda d: d["merges"].append([0, 1, 256])),
    "bad-pattern": lambda doc: _corrupt(doc, lambda d: d.update(pattern="(unclosed")),
    "special-clash": lambda doc: _corrupt(doc, lambda d: d.update(special_tokens={EOT: 256})),
    "special-not-int": lambda doc: _corrupt(doc, lambda d: d.update(special_tokens={EOT: "269"})),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_load_corrupt_file_raises_tokenizer_file_error(tmp_path, kind):
    path = tmp_path / "bad.json"
    path.write_text(CORRUPTIONS[kind](_saved_doc(tmp_path)), encoding="utf-8")
    with pytest.raises(TokenizerFileError) as info:
        BPETokenizer.load(path)
    assert isinstance(info.value, ValueError)
    assert "bad.json" in str(info.value)


def test_load_binary_garbage_raises_tokenizer_file_error(tmp_path):
    path = tmp_path / "bin.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TokenizerFileError):
        BPETokenizer.load(path)


def test_load_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        BPETokenizer.load(tmp_path / "nope.json")


def test_tokenizer_file_error_is_a_value_error():
    assert issubclass(TokenizerFileError, ValueError)


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("vocab_size", [255, 0, -1, 100])
def test_train_vocab_size_below_256_raises(vocab_size):
    with pytest.raises(ValueError, match="256"):
        BPETokenizer.train("hello", vocab_size)


def test_train_vocab_size_must_leave_room_for_specials():
    with pytest.raises(ValueError, match="257"):
        BPETokenizer.train("hello", 256, special_tokens=[EOT])


@pytest.mark.parametrize("vocab_size", [300.0, "300", True, None, [300]])
def test_train_vocab_size_must_be_an_int(vocab_size):
    with pytest.raises(TypeError, match="vocab_size"):
        BPETokenizer.train("hello", vocab_size)


@pytest.mark.parametrize("specials", [[""], [EOT, EOT], [None]])
def test_train_bad_special_tokens_raise(specials):
    with pytest.raises(ValueError, match="special"):
        BPETokenizer.train("hello", 300, special_tokens=specials)


@pytest.mark.parametrize("text", [b"hello", None, ["hello"], 42])
def test_train_text_must_be_a_str(text):
    with pytest.raises(TypeError):
        BPETokenizer.train(text, 300)


@pytest.mark.parametrize("text", [b"hello", None, ["hello"], 42])
def test_encode_text_must_be_a_str(gpt2, trained, text):
    for tok in (gpt2, trained, get_tokenizer("gpt2"), CharTokenizer("abc")):
        with pytest.raises(TypeError):
            tok.encode(text)
    with pytest.raises(TypeError):
        gpt2.encode_ordinary(text)


@pytest.mark.parametrize(
    "ids, pos, bad, error",
    [
        ([15496, 50257], 1, "50257", ValueError),
        ([15496, 995, -1], 2, "-1", ValueError),
        ([10 ** 9], 0, "1000000000", ValueError),
        ([15496, 2.0], 1, "2.0", TypeError),
        (["15496"], 0, "'15496'", TypeError),
        ([15496, None], 1, "None", TypeError),
        ([True], 0, "True", TypeError),
    ],
)
def test_decode_bad_id_names_id_and_position(gpt2, ids, pos, bad, error):
    for tok in (gpt2, get_tokenizer("gpt2")):
        with pytest.raises(error) as info:
            tok.decode(ids)
        msg = str(info.value)
        assert bad in msg and f"position {pos}" in msg


def test_decode_trained_id_past_the_vocabulary(trained):
    with pytest.raises(ValueError, match="1025"):
        trained.decode([1, 1025])


@pytest.mark.parametrize("ids", [5, "abc", b"abc", None])
def test_decode_needs_a_sequence(gpt2, ids):
    with pytest.raises(TypeError):
        gpt2.decode(ids)


# --------------------------------------------------------------------------------------
# CharTokenizer
# --------------------------------------------------------------------------------------


def test_char_roundtrip(shakespeare):
    tok = CharTokenizer.from_text(shakespeare)
    text = shakespeare[:5000]
    ids = tok.encode(text)
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert tok.vocab_size == 65 and tok.chars == sorted(set(shakespeare))


@examples(100)
@given(st.text(min_size=1))
def test_char_roundtrip_any_text(text):
    tok = CharTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text


def test_char_ids_follow_sorted_alphabet():
    tok = CharTokenizer.from_text("hello")
    assert tok.chars == ["e", "h", "l", "o"] and tok.encode("hello") == [1, 0, 2, 2, 3]


def test_char_unknown_char_names_char_and_position():
    tok = CharTokenizer.from_text("abc ")
    with pytest.raises(ValueError) as info:
        tok.encode("ab cz")
    assert "'z'" in str(info.value) and "position 4" in str(info.value)


def test_char_decode_bad_id(shakespeare):
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match="position 1"):
        tok.decode([0, 3])


def test_char_save_load(tmp_path, shakespeare):
    tok = CharTokenizer.from_text(shakespeare)
    loaded = CharTokenizer.load(tok.save(tmp_path / "char.json"))
    assert loaded.chars == tok.chars
    assert loaded.encode(shakespeare[:2000]) == tok.encode(shakespeare[:2000])


def test_char_load_corrupt_file(tmp_path):
    (tmp_path / "c.json").write_text('{"format": "gptcourse.char"', encoding="utf-8")
    with pytest.raises(TokenizerFileError):
        CharTokenizer.load(tmp_path / "c.json")
    (tmp_path / "d.json").write_text('{"format": "gptcourse.bpe", "chars": ["a"]}', encoding="utf-8")
    with pytest.raises(TokenizerFileError):
        CharTokenizer.load(tmp_path / "d.json")


def test_char_needs_characters():
    with pytest.raises(ValueError):
        CharTokenizer("")
    with pytest.raises(ValueError):
        CharTokenizer(["ab", "c"])


# --------------------------------------------------------------------------------------
# get_tokenizer
# --------------------------------------------------------------------------------------


def test_get_tokenizer_gpt2_is_tiktoken(enc, verdict):
    tok = get_tokenizer("gpt2")
    assert isinstance(tok, TiktokenTokenizer)
    assert tok.encode(verdict) == enc.encode(verdict)
    assert tok.vocab_size == 50257 and tok.eot_id == 50256
    assert tok.encode(f"a{EOT}", allowed_special="all") == enc.encode(f"a{EOT}", allowed_special="all")
    assert tok.decode(tok.encode(verdict)) == verdict


def test_get_tokenizer_gpt2_bpe_is_ours(gpt2):
    tok = get_tokenizer("gpt2-bpe")
    assert isinstance(tok, BPETokenizer) and tok.merges == gpt2.merges


def test_get_tokenizer_char_with_text():
    tok = get_tokenizer("char", text="hello")
    assert isinstance(tok, CharTokenizer) and tok.chars == ["e", "h", "l", "o"]


def test_get_tokenizer_char_default_is_tinyshakespeare(shakespeare):
    tok = get_tokenizer("char")
    assert tok.vocab_size == 65 and tok.chars == sorted(set(shakespeare))
    assert "".join(tok.chars[:3]) == "\n !" and tok.encode("First") == [18, 47, 56, 57, 58]


def test_get_tokenizer_char_named_corpus(verdict):
    assert get_tokenizer("char:the-verdict").chars == sorted(set(verdict))


@pytest.fixture(scope="module")
def bytes_tok():
    return get_tokenizer("bytes")


@examples(100)
@given(TEXT)
def test_get_tokenizer_bytes_roundtrip(bytes_tok, text):
    ids = bytes_tok.encode(text, disallowed_special=())
    assert ids == list(text.encode("utf-8"))
    assert bytes_tok.decode(ids) == text


def test_get_tokenizer_bytes_has_256_tokens():
    tok = get_tokenizer("bytes")
    assert tok.vocab_size == 256 and tok.merges == [] and tok.encode("é") == [0xC3, 0xA9]


def test_get_tokenizer_loads_saved_bpe(trained, tmp_path, verdict):
    path = trained.save(tmp_path / "mine.json")
    tok = get_tokenizer(str(path))
    assert isinstance(tok, BPETokenizer) and tok.merges == trained.merges
    assert tok.encode(verdict) == trained.encode(verdict)


def test_get_tokenizer_loads_saved_char(tmp_path):
    path = CharTokenizer.from_text("hello").save(tmp_path / "char.json")
    tok = get_tokenizer(str(path))
    assert isinstance(tok, CharTokenizer) and tok.chars == ["e", "h", "l", "o"]


def test_get_tokenizer_corrupt_saved_file(tmp_path):
    (tmp_path / "broken.json").write_text('{"format": "gptcourse.bpe", "version": 1', encoding="utf-8")
    with pytest.raises(TokenizerFileError):
        get_tokenizer(str(tmp_path / "broken.json"))


@pytest.mark.parametrize("name", ["gpt-2", "GPT2", "bpe", "", "missing.json"])
def test_get_tokenizer_unknown_name_lists_options(name):
    with pytest.raises(ValueError) as info:
        get_tokenizer(name)
    msg = str(info.value)
    for option in ("gpt2", "char", "bytes"):
        assert option in msg


def test_get_tokenizer_name_must_be_a_str(tmp_path):
    with pytest.raises(TypeError):
        get_tokenizer(None)  # type: ignore[arg-type]
