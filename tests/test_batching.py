"""gptcourse.batching: continuous batching gives every request the answer it gets alone.

Tiny random models (2 layers x 64, a byte-level vocabulary of 256 bytes + end-of-text, so
answers hold partial UTF-8 characters, end-of-text and stop strings); fixed seeds. Pieces
(text, finish_reason, completion_tokens) are compared exactly with
``generate_pieces`` (the request alone, through ``generate.stream``). Tests that need a
definite schedule step the engine with a gate on the model's calls instead of timing it.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest
import torch

from gptcourse.batching import BatchedEngine, GenerationError, TextAssembler, generate_pieces
from gptcourse.generate import generate
from gptcourse.model import GPT, GPTConfig, SlotKVCache
from gptcourse.tokenizer import BPETokenizer

EOT = 256


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: these tiny models gain nothing from more, and on a loaded machine
    two threads per op made this file ~10x slower (spinning OpenMP workers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    return BPETokenizer({bytes([b]): b for b in range(256)}, {"<|endoftext|>": EOT})


def make_model(pos_encoding: str = "learned", seed: int = 0, attn_impl: str = "sdpa",
               preset: str | None = None) -> GPT:
    """2 layers x 64 wide (or a course preset), an untied head, vocabulary 257."""
    torch.manual_seed(seed)
    if preset is not None:
        cfg = GPTConfig.preset(preset, vocab_size=257, pos_encoding=pos_encoding, tie_weights=False)
    else:
        cfg = GPTConfig(vocab_size=257, block_size=64, n_layer=2, n_head=2, n_embd=64,
                        pos_encoding=pos_encoding, tie_weights=False)
    model = GPT(cfg, attn_impl=attn_impl).eval()
    with torch.no_grad():  # logits of std ~1: sampling far from uniform, few greedy near-ties
        model.lm_head.weight.mul_(10)
    return model


def alone(model, tok, ids, **kw) -> list:
    return list(generate_pieces(model, tok, ids, **kw))


def random_requests(n: int, seed: int) -> list[tuple[list[int], dict]]:
    """Prompts of 1..20 bytes; greedy and sampled (temperature, top-p, top-k); stop strings."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ids = [rng.randrange(32, 127) for _ in range(rng.randint(1, 20))]
        kw = dict(max_tokens=rng.randint(1, 40), temperature=rng.choice([0.0, 0.7, 1.0, 1.3]),
                  top_p=rng.choice([None, 0.9]), top_k=rng.choice([None, None, 20]), seed=i,
                  stop=rng.choice([(), ("a",), ("e", "xy"), ("\ufffd\ufffd",)]))
        out.append((ids, kw))
    return out


class Gate:
    """Wraps the model's calls (``forward`` for decode steps, ``hidden_states`` for
    prefills): records each call's batch size, and while closed lets through only the calls
    :meth:`release` allows."""

    def __init__(self, model: GPT) -> None:
        self.sizes: list[int] = []
        self.permits = threading.Semaphore(0)
        self.opened = False
        for name in ("forward", "hidden_states"):
            setattr(model, name, self._gated(getattr(model, name)))

    def _gated(self, method):
        def gated(idx, *args, **kwargs):
            self.sizes.append(idx.size(0))
            if not self.opened and not self.permits.acquire(timeout=20):
                raise RuntimeError("test gate: no permit within 20 s")
            return method(idx, *args, **kwargs)
        return gated

    def release(self, n: int) -> None:
        self.permits.release(n)

    def open(self) -> None:
        self.opened = True
        self.permits.release(1000)

    def wait_calls(self, n: int) -> None:
        """Until the engine has reached its n-th forward (and waits there if no permit)."""
        deadline = time.monotonic() + 20
        while len(self.sizes) < n:
            assert time.monotonic() < deadline, f"the engine made {len(self.sizes)} of {n} calls"
            time.sleep(0.002)


# --------------------------------------------------------------------------------------
# The model's slot cache
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
@pytest.mark.parametrize("attn_impl", ["sdpa", "naive"])
def test_slot_cache_rows_continue_their_own_sequences(pos_encoding, attn_impl):
    model = make_model(pos_encoding, attn_impl=attn_impl)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 257, (1, n), generator=g) for n in (9, 3, 14)]
    nxt = torch.randint(0, 257, (3, 2), generator=g)
    slots, slots2 = SlotKVCache(model.config, max_batch=4), SlotKVCache(model.config, 3)
    with torch.no_grad():
        for cache in (slots, slots2):
            for row, p in enumerate(prompts):  # stale keys in the row must not matter
                cache.k[0][row].fill_(7.0)
                view = cache.row(row)
                model(p, cache=view)
                cache.lengths[row] = view.length
        one_by_one = torch.stack([model(nxt[:, j:j + 1], cache=slots)[0][:, 0] for j in range(2)], 1)
        both = model(nxt, cache=slots2)[0]  # two new tokens per row at once
        for row, p in enumerate(prompts):
            ref = model(torch.cat([p, nxt[row:row + 1]], dim=1))[0][0, -2:]
            # float32, batch 3 vs batch 1 without a cache
            torch.testing.assert_close(one_by_one[row], ref, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(both[row], ref, atol=1e-4, rtol=1e-4)
    assert slots.lengths == [11, 5, 16, 0] and slots2.lengths == [11, 5, 16]


def test_slot_cache_move_copies_a_row_and_frees_the_source():
    model = make_model()
    slots = SlotKVCache(model.config, max_batch=3)
    with torch.no_grad():
        view = slots.row(2)
        model(torch.tensor([[1, 2, 3, 4]]), cache=view)
    slots.lengths[2] = view.length
    slots.move(2, 0)
    assert slots.lengths == [4, 0, 0]
    assert torch.equal(slots.k[1][0, :, :4], slots.k[1][2, :, :4])


# --------------------------------------------------------------------------------------
# Text pieces
# --------------------------------------------------------------------------------------


def test_text_assembler_holds_back_stop_prefixes_and_partial_characters(tok):
    asm = TextAssembler(tok, stop=["ab"], eot=EOT)
    assert asm.feed(ord("x")) == ("x", None, 1)
    assert asm.feed(ord("a")) is None  # "a" may start "ab"
    assert asm.feed(0xC3) == ("a", None, 3)  # not "ab"; but half of "é" is held back
    assert asm.feed(0xA9) == ("é", None, 4)
    assert asm.feed(ord("a")) is None
    assert asm.feed(ord("b")) == ("", "stop", 6)  # the stop string is left out
    assert asm.done and asm.text == "xaé"
    with pytest.raises(RuntimeError, match="finished"):
        asm.feed(ord("c"))
    asm = TextAssembler(tok, stop=["ab"], eot=EOT)
    assert [asm.feed(ord("a")), asm.close()] == [None, ("a", "length", 1)]  # held text at the end
    assert list(TextAssembler(tok, eot=EOT).pieces([ord("h"), EOT, ord("i")])) == [
        ("h", None, 1), ("", "stop", 1)]


def test_pieces_alone_equal_the_servers_one_at_a_time_engine(tok):
    """generate_pieces (TextAssembler + stream) gives serve's ``Engine.pieces`` pieces."""
    pytest.importorskip("fastapi")
    from gptcourse.serve import create_app

    model = make_model()
    engine = create_app(model, tok, max_tokens_cap=40).state.engine
    bodies = [{"prompt": "Hello", "max_tokens": 30, "temperature": 0},
              {"prompt": "ab", "max_tokens": 40, "seed": 3, "stop": ["e", "\ufffd\ufffd"]},
              {"prompt": "xyz", "max_tokens": 40, "seed": 1, "top_p": 0.9}]
    for body in bodies:
        req = engine.parse(body, chat=False)
        want = list(engine.pieces(req))
        got = alone(model, tok, req.prompt_ids, max_tokens=req.max_tokens,
                    temperature=req.temperature, top_p=req.top_p, stop=req.stop, seed=req.seed)
        assert got == want


# --------------------------------------------------------------------------------------
# Same answers as alone
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("pos_encoding, preset", [("learned", None), ("rope", None),
                                                  ("learned", "mini")])
def test_greedy_and_seeded_answers_equal_alone_with_random_arrivals(tok, pos_encoding, preset):
    model = make_model(pos_encoding, preset=preset)
    requests = random_requests(24, seed=1)
    want = [alone(model, tok, ids, **kw) for ids, kw in requests]
    rng = random.Random(2)
    with BatchedEngine(model, tok, max_batch=8) as engine:
        handles = []
        for ids, kw in requests:
            handles.append(engine.submit(ids, **kw))
            if rng.random() < 0.5:  # arrivals spread over the running batch
                time.sleep(rng.random() * 0.005)
        got = [list(h) for h in handles]
        stats = dict(engine.stats)
    assert got == want
    finishes = {p[-1][1] for p in want}
    assert finishes == {"stop", "length"}  # end-of-text / stop strings and max_tokens covered
    assert stats["completed"] == 24 and stats["rows"] > stats["steps"]  # it did batch


def test_requests_join_and_leave_a_running_batch(tok):
    model = make_model()
    a_ids, b_ids, c_ids = [72, 105], [66], [67, 68, 69]
    want = [alone(model, tok, ids, max_tokens=n, temperature=0) for ids, n in
            [(a_ids, 50), (b_ids, 4), (c_ids, 3)]]
    gate = Gate(model)
    with BatchedEngine(model, tok, max_batch=4) as engine:
        a = engine.submit(a_ids, 50, temperature=0)
        gate.release(6)  # A's prefill and 5 steps, then the engine waits in its 7th forward
        gate.wait_calls(7)
        b = engine.submit(b_ids, 4, temperature=0)
        gate.release(5)  # B joins, decodes with A and leaves; the 12th forward waits
        gate.wait_calls(12)
        got_b = list(b)
        c = engine.submit(c_ids, 3, temperature=0)
        gate.open()
        got = [list(a), got_b, list(c)]
    assert got == want
    # batch size of each forward: A alone; B's prefill, A+B for B's 3 more tokens; A alone;
    # C's prefill, A+C; A alone to its 50th token
    assert gate.sizes == [1] * 8 + [2] * 3 + [1, 1] + [2] * 2 + [1] * 37


def test_stop_strings_end_of_text_and_max_tokens_like_alone(tok):
    model = make_model()
    free = alone(model, tok, [80, 81], max_tokens=40, temperature=0)
    text = "".join(p[0] for p in free)
    stop = text[10:12]  # a stop string the greedy answer surely reaches
    eot_seed = next(s for s in range(100)
                    if alone(model, tok, [65], max_tokens=40, seed=s)[-1][1] == "stop")
    cases = [([80, 81], dict(max_tokens=40, temperature=0, stop=[stop])),
             ([65], dict(max_tokens=40, seed=eot_seed)),
             ([80, 81], dict(max_tokens=7, temperature=0))]
    want = [alone(model, tok, ids, **kw) for ids, kw in cases]
    with BatchedEngine(model, tok, max_batch=4) as engine:
        got = [engine.submit(ids, **kw).result() for ids, kw in cases]
    assert [g[1] for g in got] == ["stop", "stop", "length"]
    assert got[0][0] == text[:text.index(stop)] and got[2][2] == 7
    assert got == [("".join(p[0] for p in w), w[-1][1], w[-1][2]) for w in want]


def test_async_consumers_get_their_answers(tok):
    model = make_model("rope")
    requests = random_requests(8, seed=3)
    want = [alone(model, tok, ids, **kw) for ids, kw in requests]

    async def consume(engine, ids, kw):
        return [p async for p in engine.submit(ids, **kw)]

    async def main(engine):
        return await asyncio.gather(*(consume(engine, ids, kw) for ids, kw in requests))

    async def leave_early(engine):
        req = engine.submit([65], 50, temperature=0)
        pieces = req.__aiter__()
        await pieces.__anext__()
        await pieces.aclose()  # what ``break`` + the loop's async-generator cleanup do
        return req

    with BatchedEngine(model, tok, max_batch=4) as engine:
        got = asyncio.run(main(engine))
        assert asyncio.run(leave_early(engine)).cancelled
    assert list(got) == want


def test_real_bpe_text_equals_alone():
    """GPT-2's tokenizer: multi-byte tokens, partial characters across tokens."""
    from gptcourse.tokenizer import get_tokenizer

    gpt2 = get_tokenizer("gpt2")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=gpt2.vocab_size, block_size=64, n_layer=1, n_head=2,
                          n_embd=32)).eval()
    prompts = [gpt2.encode_ordinary(t) for t in ("Once upon a time", "Hi", "The café, naïve")]
    requests = []
    for ids in prompts:
        for temperature, stop in ((0.0, ()), (1.0, ("e",))):
            requests.append((ids, dict(max_tokens=24, temperature=temperature, stop=stop,
                                       seed=len(requests))))
    want = [alone(model, gpt2, ids, **kw) for ids, kw in requests]
    with BatchedEngine(model, gpt2, max_batch=4) as engine:
        handles = [engine.submit(ids, **kw) for ids, kw in requests]
        assert [list(h) for h in handles] == want


def test_64_concurrent_submitters_each_get_the_answer_alone(tok):
    model = make_model()
    requests = random_requests(64, seed=4)
    want = [alone(model, tok, ids, **kw) for ids, kw in requests]
    got: list = [None] * 64
    with BatchedEngine(model, tok, max_batch=16) as engine:
        barrier = threading.Barrier(64)

        def client(i: int) -> None:
            barrier.wait()
            ids, kw = requests[i]
            got[i] = list(engine.submit(ids, **kw))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        stats = dict(engine.stats)
    assert got == want
    assert stats["requests"] == stats["completed"] == 64


# --------------------------------------------------------------------------------------
# Cancellation, failures, closing
# --------------------------------------------------------------------------------------


def test_cancelling_frees_the_slot_at_the_next_step(tok):
    model = make_model()
    want_b = alone(model, tok, [66], max_tokens=5, temperature=0)
    gate = Gate(model)
    with BatchedEngine(model, tok, max_batch=1) as engine:
        a = engine.submit([65], 50, temperature=0)
        b = engine.submit([66], 5, temperature=0)  # waits: the only slot is A's
        gate.release(3)
        gate.wait_calls(4)  # A has 3 tokens; its 4th step waits
        a.cancel()
        gate.open()
        got_a, got_b = list(a), list(b)
        stats = dict(engine.stats)
    assert got_a[-1] == ("", "cancelled", 4)  # the step under way finished, then A left
    assert got_b == want_b  # ... and B got its slot
    assert gate.sizes == [1] * 9 and stats["cancelled"] == 1 and engine.active == 0


def test_leaving_the_iterator_early_cancels_the_request(tok):
    model = make_model()
    # a prompt whose first token is a whole character, so it is a piece at once
    prompt = next([p] for p in range(65, 91)
                  if alone(model, tok, [p], max_tokens=5, temperature=0)[0][1:] == (None, 1))
    gate = Gate(model)
    with BatchedEngine(model, tok, max_batch=2) as engine:
        req = engine.submit(prompt, 50, temperature=0)
        gate.release(1)  # the prefill
        it = iter(req)
        assert next(it)[2] == 1
        gate.wait_calls(2)  # the first decode step waits
        it.close()  # the consumer is gone
        assert req.cancelled
        gate.open()
        assert list(req)[-1] == ("", "cancelled", 2)
        assert engine.stats["cancelled"] == 1


def test_an_exception_in_one_request_fails_that_request_only(tok):
    model = make_model()
    want_ok = alone(model, tok, [66, 67], max_tokens=20, temperature=0)
    poison = int(generate(model, [80], 1, temperature=0)[0, -1])  # the doomed answer's first
    assert poison not in generate(model, [66, 67], 20, temperature=0)[0, 2:].tolist()

    class Poisoned(BPETokenizer):
        def decode(self, ids, errors="replace"):
            if poison in ids:
                raise KeyError("poisoned token")
            return super().decode(ids, errors)

    bad_tok = Poisoned(tok.mergeable_ranks, tok.special_tokens)
    with BatchedEngine(model, bad_tok, max_batch=4) as engine:
        doomed = engine.submit([80], 20, temperature=0)
        fine = engine.submit([66, 67], 20, temperature=0)
        with pytest.raises(GenerationError, match="KeyError") as info:
            list(doomed)
        assert isinstance(info.value.__cause__, KeyError)
        assert list(fine) == want_ok
        assert engine.stats["failed"] == 1


def test_an_error_in_the_shared_forward_fails_that_step_and_the_engine_goes_on(tok):
    model = make_model()
    want = alone(model, tok, [70], max_tokens=6, temperature=0)
    forward = model.forward
    calls = []

    def flaky(idx, *args, **kwargs):
        calls.append(idx.size(0))
        if len(calls) == 3:
            raise RuntimeError("device lost")
        return forward(idx, *args, **kwargs)

    model.forward = flaky
    with BatchedEngine(model, tok, max_batch=4) as engine:
        with pytest.raises(GenerationError, match="device lost"):
            list(engine.submit([70], 6, temperature=0))
        assert list(engine.submit([70], 6, temperature=0)) == want
    assert engine.active == 0 and engine.cache.lengths == [0] * 4  # (closed: last step done)


def test_close_does_not_hang_and_fails_what_is_left(tok):
    model = make_model()
    want = [alone(model, tok, [65 + i], max_tokens=60, temperature=0) for i in range(2)]
    gate = Gate(model)
    engine = BatchedEngine(model, tok, max_batch=2)
    handles = [engine.submit([65 + i], 60, temperature=0) for i in range(6)]
    gate.release(2)
    gate.wait_calls(3)  # two prefills done; the first decode step waits
    closer = threading.Thread(target=engine.close)
    closer.start()
    while not engine._closed:  # close() has flagged the thread
        time.sleep(0.001)
    gate.open()
    closer.join(timeout=20)
    assert not closer.is_alive() and not engine._thread.is_alive()
    for h, w in zip(handles, want + [None] * 4):
        with pytest.raises(GenerationError, match="closed"):
            h.result()
        if w is not None:
            assert w[-1][2] > 2  # (they were not about to finish)
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit([65], 2)
    engine.close()  # twice is fine


@pytest.mark.parametrize("ids, kw, match", [
    ([], {}, "non-empty"),
    ([300], {}, "0..256"),
    ([1], {"max_tokens": 0}, "max_tokens must be >= 1"),
    ([1] * 60, {"max_tokens": 6}, "room for 5 new tokens"),
    ([1], {"temperature": float("nan")}, "temperature"),
    ([1], {"top_p": 0.0}, "top_p"),
    ([1], {"stop": [""]}, "stop"),
    ([1], {"seed": "7"}, "seed"),
    ([1], {"seed": 2**64}, "seed"),
])
def test_bad_requests_raise_at_submit(tok, ids, kw, match):
    with BatchedEngine(make_model(), tok, max_batch=2) as engine:
        with pytest.raises((ValueError, TypeError), match=match):
            engine.submit(ids, **{"max_tokens": 4, **kw})


def test_bad_engine_settings_and_a_smaller_max_len(tok):
    model = make_model()
    with pytest.raises(ValueError, match="max_batch"):
        BatchedEngine(model, tok, max_batch=0)
    with pytest.raises(ValueError, match="max_len"):
        BatchedEngine(model, tok, max_len=0)
    with pytest.raises(ValueError, match="block_size"):
        BatchedEngine(model, tok, max_len=65)
    with BatchedEngine(model, tok, max_batch=2, max_len=16) as engine:
        assert engine.cache.k[0].shape == (2, 2, 16, 32)
        with pytest.raises(ValueError, match="room for 7 new tokens"):
            engine.submit([1] * 10, 8)
        want = alone(model, tok, [1] * 10, max_tokens=7, temperature=0)
        assert list(engine.submit([1] * 10, 7, temperature=0)) == want
