"""gptcourse.finetune.instruct: the Alpaca prompt format, chat messages, collate (padding,
-100, prompt masking, truncation), InstructionData under the Trainer (SFT lowers the response
loss; exact resume), response generation, checkable tasks and the LLM judge (against a fake
OpenAI-compatible server on 127.0.0.1).

Models are tiny (2 layers, 32 wide) over raw bytes plus an end-of-text token (vocabulary 257),
so every test runs in about a second on a CPU. Tolerances are stated where results are not
bit-identical.
"""

from __future__ import annotations

import ast
import hashlib
import json
import socket
from http.server import BaseHTTPRequestHandler

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from loopback import loopback_http

from gptcourse.finetune.instruct import (
    CHECKABLE_KINDS,
    PREAMBLE,
    InstructionData,
    check_response,
    checkable_accuracy,
    checkable_splits,
    checkable_tasks,
    collate_instructions,
    encode_record,
    extract_response,
    format_example,
    format_prompt,
    generate_responses,
    judge_responses,
    load_instruction_data,
    messages_to_prompt,
    parse_score,
    response_loss,
    save_responses,
    score_checkable,
    sft,
    split_records,
)
from gptcourse.model import GPT, GPTConfig
from gptcourse.tokenizer import ENDOFTEXT, BPETokenizer, get_tokenizer
from gptcourse.train import TrainConfig, Trainer

EOT = 256
TINY = dict(vocab_size=257, block_size=256, n_layer=2, n_head=2, n_embd=32)

RECORD = {"instruction": "Rewrite the sentence.", "input": "The cat sat.", "output": "A cat sat."}
NO_INPUT = {"instruction": "Name a color.", "input": "", "output": "Blue."}


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    """Raw bytes (ids 0..255) and <|endoftext|> = 256."""
    return BPETokenizer({bytes([b]): b for b in range(256)}, special_tokens={ENDOFTEXT: EOT},
                        name="bytes+eot")


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**TINY))


# ------------------------------------------------------------------ prompt format


def test_format_prompt_with_input_is_alpaca_exactly():
    assert format_prompt(RECORD) == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nRewrite the sentence.\n\n### Input:\n"
        "The cat sat.\n\n### Response:\n"
    )


def test_format_prompt_without_input_has_no_input_section():
    expected = f"{PREAMBLE}\n\n### Instruction:\nName a color.\n\n### Response:\n"
    assert format_prompt(NO_INPUT) == expected
    assert format_prompt({"instruction": "Name a color."}) == expected  # input missing


def test_format_example_appends_the_output():
    assert format_example(RECORD) == format_prompt(RECORD) + "A cat sat."


@pytest.mark.parametrize("instruction", ["", "   \n"])
def test_empty_instruction_is_an_error(instruction):
    with pytest.raises(ValueError, match="empty instruction"):
        format_prompt({"instruction": instruction, "input": "x", "output": "y"})


def test_load_instruction_data_reads_raschkas_1100_records():
    records = load_instruction_data()
    assert len(records) == 1100
    assert all(set(r) >= {"instruction", "input", "output"} for r in records)
    train, val, test = split_records(records)
    assert (len(train), len(val), len(test)) == (935, 55, 110)  # Raschka's split
    assert train[0] == records[0] and test[-1] == records[-1]  # seed=None keeps the order


def test_load_instruction_data_names_the_bad_record(tmp_path):
    f = tmp_path / "data.json"
    f.write_text(json.dumps([NO_INPUT, {"instruction": " ", "input": "", "output": "y"}]))
    with pytest.raises(ValueError, match="record 1 .* empty instruction"):
        load_instruction_data(f)
    f.write_text(json.dumps([{"instruction": "a", "input": ""}]))
    with pytest.raises(ValueError, match="record 0 .* no 'output'"):
        load_instruction_data(f)


def test_split_records_with_a_seed_is_a_reproducible_partition():
    records = [{"instruction": str(i), "output": ""} for i in range(100)]
    a = split_records(records, seed=3)
    assert a == split_records(records, seed=3)
    assert [len(s) for s in a] == [85, 5, 10]
    assert sorted(r["instruction"] for s in a for r in s) == sorted(str(i) for i in range(100))
    assert a[0][:5] != records[:5]


# ------------------------------------------------------------------ chat messages


def test_one_user_message_gives_the_alpaca_prompt():
    assert messages_to_prompt([{"role": "user", "content": "Name a color."}]) == \
        format_prompt(NO_INPUT)


def test_system_replaces_the_preamble_and_turns_alternate():
    prompt = messages_to_prompt([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": [{"type": "text", "text": "Another."}]},
    ])
    assert prompt == ("You are terse.\n\n### Instruction:\nName a color.\n\n### Response:\nBlue."
                      "\n\n### Instruction:\nAnother.\n\n### Response:\n")


@pytest.mark.parametrize("messages, match", [
    ([], "non-empty"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "last message"),
    ([{"role": "user", "content": "  "}], "empty"),
    ([{"role": "tool", "content": "x"}], "role 'tool'"),
])
def test_bad_chats_are_errors(messages, match):
    with pytest.raises(ValueError, match=match):
        messages_to_prompt(messages)


# ------------------------------------------------------------------ collate


BATCH = [([1, 2, 3], [4, 5]), ([6, 7], [8])]  # (prompt ids, response ids)


def test_collate_shifts_pads_and_keeps_the_eot_target():
    x, y = collate_instructions(BATCH, pad_id=99)
    # examples: 1 2 3 4 5 EOT(=pad 99) and 6 7 8 99
    assert x.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 99, 99]]
    assert y.tolist() == [[2, 3, 4, 5, 99], [7, 8, 99, -100, -100]]
    assert x.dtype == y.dtype == torch.long


def test_collate_matches_raschkas_custom_collate_fn():
    """His version: append one pad, pad to the longest, shift, then every pad target after the
    first becomes -100. With pad == eot ours gives the same tensors."""
    batch = [([5, 6, 7], [8, 9, 10]), ([1], [2]), ([3, 4], [])]
    pad = 0
    longest = max(len(p) + len(r) + 1 for p, r in batch)
    xs, ys = [], []
    for p, r in batch:
        item = p + r + [pad]
        padded = item + [pad] * (longest - len(item))
        inputs, targets = torch.tensor(padded[:-1]), torch.tensor(padded[1:])
        idx = torch.nonzero(targets == pad).squeeze()
        if idx.numel() > 1:
            targets[idx[1:]] = -100
        xs.append(inputs)
        ys.append(targets)
    x, y = collate_instructions(batch, pad_id=pad)
    torch.testing.assert_close(x, torch.stack(xs), rtol=0, atol=0)
    torch.testing.assert_close(y, torch.stack(ys), rtol=0, atol=0)


def test_mask_prompt_masks_exactly_the_prompt_targets():
    x, y = collate_instructions(BATCH, pad_id=99, mask_prompt=True)
    # targets that are prompt tokens (2, 3 / 7) are masked; response and eot remain
    assert y.tolist() == [[-100, -100, 4, 5, 99], [-100, 8, 99, -100, -100]]
    assert x.tolist() == collate_instructions(BATCH, pad_id=99)[0].tolist()


def test_collate_uses_a_separate_eot_and_custom_ignore_index():
    x, y = collate_instructions(BATCH, pad_id=0, eot_id=50, ignore_index=-1)
    assert x.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 0, 0]]  # the eot is only a target here
    assert y.tolist() == [[2, 3, 4, 5, 50], [7, 8, 50, -1, -1]]


def test_collate_truncates_to_max_length():
    x, y = collate_instructions(BATCH, pad_id=99, max_length=3)
    assert x.tolist() == [[1, 2, 3], [6, 7, 8]]
    assert y.tolist() == [[2, 3, 4], [7, 8, 99]]


def test_collate_max_length_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="max_length must be an int, got 3.0"):
        collate_instructions(BATCH, pad_id=99, max_length=3.0)
    with pytest.raises(ValueError, match="max_length must be >= 1, got 0"):
        collate_instructions(BATCH, pad_id=99, max_length=0)


def test_checkable_tasks_n_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="n must be an int, got True"):
        checkable_tasks(True)


def test_prompt_longer_than_the_context_is_a_clear_error():
    with pytest.raises(ValueError, match="prompt has 3 tokens but the context is 2; shorten it "
                                         "or raise block_size"):
        collate_instructions(BATCH, pad_id=99, max_length=2)
    x, _ = collate_instructions(BATCH, pad_id=99, max_length=2, long_prompts="truncate")
    assert x.tolist() == [[1, 2], [6, 7]]


# ------------------------------------------------------------------ InstructionData


def test_encode_record_tokenizes_prompt_and_output_separately(tok):
    prompt, response = encode_record(RECORD, tok)
    assert tok.decode(prompt) == format_prompt(RECORD) and tok.decode(response) == "A cat sat."
    # with GPT-2's BPE the split equals tokenizing the whole example (the prompt ends in "\n")
    gpt2 = get_tokenizer("gpt2")
    p, r = encode_record(RECORD, gpt2)
    assert p + r == gpt2.encode(format_example(RECORD))


def test_data_needs_an_end_of_text_token():
    with pytest.raises(ValueError, match="no end-of-text token; pass eot_id"):
        InstructionData([RECORD], get_tokenizer("bytes"))


def test_too_long_prompts_error_drop_or_truncate(tok):
    records = [NO_INPUT, RECORD]
    limit = len(format_prompt(NO_INPUT)) + 5  # bytes: one token per character
    with pytest.raises(ValueError, match=r"record 1: prompt has \d+ tokens but the context is"):
        InstructionData(records, tok, max_length=limit)
    with pytest.warns(UserWarning, match="dropped 1 of 2"):
        data = InstructionData(records, tok, max_length=limit, long_prompts="drop")
    assert len(data) == 1 and data.dropped == [1]
    data = InstructionData(records, tok)  # no max_length: checked against the Trainer's block
    with pytest.raises(ValueError, match="example 1: prompt has"):
        data.windows([0], limit)


def test_random_offsets_are_seeded_epoch_permutations(tok):
    data = InstructionData(checkable_tasks(10, seed=0), tok)
    steps = [data.random_offsets(4, 256, seed=7, step=s) for s in range(5)]  # 2 epochs
    flat = np.concatenate(steps)
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert np.array_equal(data.random_offsets(4, 256, seed=7, step=3), steps[3])  # pure
    fresh = InstructionData(checkable_tasks(10, seed=0), tok)  # no cached state
    assert np.array_equal(fresh.random_offsets(4, 256, seed=7, step=3), steps[3])
    assert not np.array_equal(data.random_offsets(4, 256, seed=8, step=3), steps[3])


def test_windows_fit_the_block_and_the_model_takes_shorter_batches(tok):
    data = InstructionData(checkable_tasks(6, seed=0, kinds=["add", "third_word"]), tok,
                           mask_prompt=True)
    x, y = data.windows([0, 1, 2], 256)
    assert x.shape == y.shape and x.shape[0] == 3
    assert x.shape[1] == max(data.lengths[:3]) - 1 < 256
    _, loss = tiny_gpt()(x, y)
    assert torch.isfinite(loss)


def test_sequential_covers_every_example_once_across_ranks(tok):
    data = InstructionData(checkable_tasks(7, seed=0), tok)
    one = [x for x, _ in data.sequential(256, 2)]
    assert sum(len(x) for x in one) == 7
    ranks = [[x for x, _ in data.sequential(256, 2, rank=r, world_size=2)] for r in range(2)]
    assert [len(b) for b in ranks] == [2, 2]
    assert torch.equal(ranks[0][1], one[2]) and torch.equal(ranks[1][0], one[1])
    assert sum(len(x) for x in data.sequential(256, 2, max_batches=2)) == 4


# ------------------------------------------------------------------ SFT with the Trainer


def _config(tmp_path, **kw) -> TrainConfig:
    defaults = dict(out_dir=str(tmp_path / "run"), max_steps=40, batch_size=8, lr=3e-3,
                    warmup_steps=2, eval_interval=40, eval_batches=0, log_interval=1,
                    checkpoints=False, progress=False, plots=False, device="cpu")
    defaults.update(kw)
    return TrainConfig(**defaults)


def test_sft_lowers_the_response_loss(tok, tmp_path):
    train, held_out = checkable_tasks(32, seed=0), checkable_tasks(16, seed=1)
    model = tiny_gpt()
    before = response_loss(model, tok, held_out)["loss"]
    trainer = sft(model, tok, train, held_out, _config(tmp_path), mask_prompt=True)
    after = response_loss(model, tok, held_out)
    # from ~ln(257) = 5.5 nats per byte; 40 steps learn at least the bytes of the answers
    assert before > 5.0 and after["loss"] < before - 1.5, (before, after)
    assert trainer.model is model
    # the Trainer's validation loss is the response loss (weighted by scored tokens)
    assert trainer.history[-1]["val_loss"] == pytest.approx(after["loss"], rel=1e-5)


def test_trainer_evaluate_equals_response_loss(tok, tmp_path):
    records = checkable_tasks(12, seed=2)
    model = tiny_gpt(1)
    data = InstructionData(records, tok, mask_prompt=True)
    trainer = Trainer(model.config, data, data, _config(tmp_path, batch_size=5), model=model)
    got = trainer.evaluate(data)
    want = response_loss(model, tok, records, batch_size=3)
    assert got["tokens"] == want["tokens"]
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)
    # and by hand: the mean over every response target of every example
    x, y = data.windows(range(12), 256)
    with torch.no_grad():
        logits, _ = model(x)
    manual = F.cross_entropy(logits.view(-1, 257), y.view(-1), ignore_index=-100)
    assert got["loss"] == pytest.approx(float(manual), rel=1e-5)


def test_resume_replays_the_same_batches(tok, tmp_path):
    records = checkable_tasks(20, seed=3)
    data = InstructionData(records, tok)

    def run(out, **kw):
        cfg = _config(tmp_path, out_dir=str(tmp_path / out), max_steps=6, batch_size=4,
                      checkpoints=True, checkpoint_interval=3, eval_interval=100, **kw)
        return Trainer(GPTConfig(**TINY), data, None, cfg, tokenizer=tok)

    straight = run("a")
    straight.fit()
    resumed = run("b")
    resumed.fit(3)
    again = run("b")  # a new trainer, as after a crash
    again.load_checkpoint(tmp_path / "b" / "checkpoints" / "step_000003")
    again.fit()
    losses = [r["loss"] for r in straight.history if "loss" in r]
    replay = [r["loss"] for r in again.history if "loss" in r]
    assert replay == pytest.approx(losses[3:], rel=1e-6, abs=0)
    for (name, p), q in zip(straight.model.named_parameters(), again.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)


# ------------------------------------------------------------------ generation


def test_extract_response_cuts_at_the_next_header():
    assert extract_response("  Blue.\n\n### Instruction:\nMore") == "Blue."
    assert extract_response("### Response:\nBlue.") == "Blue."
    assert extract_response("a # b ## c") == "a # b ## c"


def test_generate_responses_is_reproducible_and_batching_does_not_change_it(tok):
    records = checkable_tasks(6, seed=4)
    model = tiny_gpt(2)
    one = generate_responses(model, tok, records, max_new_tokens=8, batch_size=1, progress=False)
    many = generate_responses(model, tok, records, max_new_tokens=8, batch_size=6, progress=False)
    assert one == many
    assert [{k: v for k, v in r.items() if k != "model_response"} for r in one] == records
    sampled = [generate_responses(model, tok, records, max_new_tokens=8, temperature=1.0,
                                  seed=5, progress=False) for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_generate_responses_batch_size_is_checked(tok):
    with pytest.raises(TypeError, match="batch_size must be an int, got 2.0"):
        generate_responses(tiny_gpt(2), tok, [RECORD], batch_size=2.0, progress=False)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        generate_responses(tiny_gpt(2), tok, [RECORD], batch_size=0, progress=False)


def test_generate_responses_rejects_a_prompt_longer_than_the_context(tok):
    model = GPT(GPTConfig(**{**TINY, "block_size": 64}))
    with pytest.raises(ValueError, match=r"record 0: prompt has \d+ tokens but the context is 64"):
        generate_responses(model, tok, [RECORD], progress=False)


def test_save_responses_writes_json(tmp_path):
    rows = [{**RECORD, "model_response": "Ünïcode ✓"}]
    path = save_responses(tmp_path / "out" / "responses.json", rows)
    assert json.loads(path.read_text(encoding="utf-8")) == rows


# ------------------------------------------------------------------ checkable tasks


def test_checkable_tasks_are_deterministic_balanced_and_distinct():
    a = checkable_tasks(45, seed=0)
    assert a == checkable_tasks(45, seed=0) and a != checkable_tasks(45, seed=1)
    assert [r["kind"] for r in a[:9]] == list(CHECKABLE_KINDS)
    assert len({(r["instruction"], r["input"]) for r in a}) == 45


def test_checkable_records_are_pinned():
    """Splitting instruct.py changed no record: sha256 of the JSON taken before the split
    (lesson 11's saved outputs depend on these exact records)."""
    def digest(obj):
        return hashlib.sha256(json.dumps(obj).encode()).hexdigest()

    assert digest(checkable_tasks(900, seed=0)) == (
        "3ee864fa9de0c65e2c14a87fbcd27a4d830e21217a6c72d12e0dfc9f4576aa4c")
    assert digest(checkable_splits(270, 90, seed=3)) == (
        "1e211d040eea1572aa4e55bc9a3659d1096a05f12ba67fb01df5a72a2ff6627f")


def test_checkable_splits_are_disjoint_balanced_and_deterministic():
    sets = checkable_splits(900, 90, n_val=20, seed=0)
    assert sets == checkable_splits(900, 90, n_val=20, seed=0)
    assert sets["train"] == checkable_tasks(900, seed=0)
    assert [len(sets[k]) for k in ("train", "val", "test")] == [900, 20, 90]
    keys = {k: {(r["instruction"], r["input"]) for r in v} for k, v in sets.items()}
    assert len(keys["val"]) == 20 and len(keys["test"]) == 90          # distinct within each
    assert not (keys["train"] & keys["test"] or keys["train"] & keys["val"] or keys["val"] & keys["test"])
    assert [r["kind"] for r in sets["test"]] == list(CHECKABLE_KINDS) * 10  # interleaved, 10 per kind


def test_checkable_splits_find_unseen_records_of_a_crowded_kind():
    # 4,000 of the 5,202 distinct "add" records go to training; 60 more must still be found
    sets = checkable_splits(4000, 60, n_val=0, kinds=["add"])
    assert len(sets["test"]) == 60 and sets["val"] == []
    assert not {(r["instruction"], r["input"]) for r in sets["test"]} & {
        (r["instruction"], r["input"]) for r in sets["train"]}


def test_checkable_splits_errors():
    with pytest.raises(ValueError, match="multiple of the 9 kinds"):
        checkable_splits(90, 10)
    with pytest.raises(ValueError, match="n_train must be >= 0, got -1"):
        checkable_splits(-1, 9)
    with pytest.raises(TypeError, match="n_test must be an int, got 9.0"):
        checkable_splits(9, 9.0)
    with pytest.raises(ValueError, match="cannot find 300 records of kinds \\['add'\\]"):
        checkable_splits(5000, 300, n_val=0, kinds=["add"])


def test_checkable_outputs_are_right():
    for r in checkable_tasks(90, seed=5):
        words, kind = r["input"].split(), r["kind"]
        expected = {
            "upper": r["input"].upper(), "lower": r["input"].lower(),
            "reverse_words": " ".join(reversed(words)), "sort_words": " ".join(sorted(words)),
            "third_word": words[2] if len(words) > 2 else None, "count_words": str(len(words)),
            "sort_letters": "".join(sorted(r["input"])),
        }.get(kind)
        if kind in ("add", "subtract"):
            a, b = (int(t) for t in __import__("re").findall(r"\d+", r["instruction"]))
            expected = str(a + b) if kind == "add" else str(max(a, b) - min(a, b))
        assert r["output"] == expected, r


@pytest.mark.parametrize("record, response, ok", [
    ({"kind": "add", "output": "68"}, "68", True),
    ({"kind": "add", "output": "68"}, " 68.\n", True),
    ({"kind": "add", "output": "68"}, '"68"', True),
    ({"kind": "add", "output": "68"}, "69", False),
    ({"kind": "add", "output": "68"}, "680", False),
    ({"kind": "reverse_words", "output": "b a"}, "B  A!", True),  # case ignored here
    ({"kind": "reverse_words", "output": "b a"}, "a b", False),
    ({"kind": "upper", "output": "RED SKY"}, "RED SKY.", True),
    ({"kind": "upper", "output": "RED SKY"}, "Red Sky", False),  # the case is the task
    ({"kind": "lower", "output": "red sky"}, "RED SKY", False),
])
def test_check_response_normalises_but_rejects_wrong_answers(record, response, ok):
    assert check_response(record, response) is ok


def test_check_response_accepts_every_canonical_output():
    assert all(check_response(r, r["output"]) for r in checkable_tasks(45, seed=6))
    with pytest.raises(ValueError, match="unknown kind"):
        check_response({"kind": "poetry", "output": "x"}, "x")


def test_score_checkable_counts_per_kind():
    records = checkable_tasks(4, seed=0, kinds=["add", "upper"])
    answers = [records[0]["output"], "wrong", records[2]["output"] + ".", records[3]["output"]]
    result = score_checkable([{**r, "model_response": a} for r, a in zip(records, answers)])
    assert (result["correct"], result["total"], result["accuracy"]) == (3, 4, 0.75)
    assert result["per_kind"]["upper"] == {"correct": 1, "total": 2, "accuracy": 0.5}
    assert [r["correct"] for r in result["responses"]] == [True, False, True, True]


def test_checkable_accuracy_runs_a_model(tok):
    result = checkable_accuracy(tiny_gpt(), tok, checkable_tasks(9, seed=1), max_new_tokens=4,
                                progress=False)
    assert result["total"] == 9 and 0 <= result["accuracy"] <= 1
    assert set(result["per_kind"]) == set(CHECKABLE_KINDS)


# ------------------------------------------------------------------ the judge


class _Judge(BaseHTTPRequestHandler):
    """A fake OpenAI-compatible server: /v1/models, and /v1/chat/completions answering
    "Score: 80", a 500 when the response says FAIL, and no number when it says MUMBLE."""

    protocol_version = "HTTP/1.0"

    def _send(self, code: int, payload) -> None:
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self._send(200, {"object": "list", "data": [{"id": "fake-judge", "object": "model"}]})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, dict(self.headers), body))
        content = body["messages"][0]["content"]
        if "FAIL" in content:
            self._send(500, {"error": {"message": "boom"}})
            return
        reply = "I cannot say" if "MUMBLE" in content else "Score: 80"
        self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant",
                                                                "content": reply}}]})

    def log_message(self, format, *args) -> None:
        pass


@pytest.fixture
def judge_url(monkeypatch):
    for var in ("GPTCOURSE_JUDGE_URL", "GPTCOURSE_JUDGE_MODEL", "GPTCOURSE_JUDGE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    with loopback_http(_Judge, monkeypatch) as httpd:
        httpd.requests = []
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.requests


def test_judge_scores_through_an_openai_compatible_endpoint(judge_url, monkeypatch):
    url, requests = judge_url
    monkeypatch.setenv("GPTCOURSE_JUDGE_URL", url + "/v1")
    monkeypatch.setenv("GPTCOURSE_JUDGE_API_KEY", "sk-test")
    rows = [{**RECORD, "model_response": "A cat sat."}, {**NO_INPUT, "model_response": "Red"}]
    result = judge_responses(rows, progress=False)
    assert result["scores"] == [80, 80] and result["mean"] == 80 and result["failed"] == 0
    assert result["model"] == "fake-judge"  # the first model /v1/models lists
    path, headers, body = requests[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer sk-test"
    assert body["model"] == "fake-judge" and body["temperature"] == 0
    content = body["messages"][0]["content"]
    assert "The cat sat." in content and "`A cat sat.`" in content and "0 to 100" in content


def test_judge_records_per_response_failures_without_crashing(judge_url, capsys):
    url, _ = judge_url
    rows = [{**RECORD, "model_response": r} for r in ("fine", "FAIL", "MUMBLE", "fine")]
    result = judge_responses(rows, url=url, model="m", progress=False)
    assert result["scores"] == [80, None, None, 80] and result["mean"] == 80
    assert result["failed"] == 2
    assert "HTTP 500" in result["errors"][1] and "boom" in result["errors"][1]
    assert "no integer" in result["errors"][2]
    assert "2 of 4 responses could not be scored" in capsys.readouterr().out


def test_judge_reports_an_unreachable_server(capsys, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rows = [{**RECORD, "model_response": "x"}] * 3
    result = judge_responses(rows, url=f"http://127.0.0.1:{port}", model="m", timeout=5,
                             progress=False)
    assert result["scores"] == [None] * 3 and result["mean"] is None
    assert "cannot reach the judge" in result["errors"][0]
    assert result["errors"][2].startswith("not sent")


def test_judge_without_a_url_is_skipped_with_a_message(monkeypatch, capsys):
    monkeypatch.delenv("GPTCOURSE_JUDGE_URL", raising=False)
    assert judge_responses([{**RECORD, "model_response": "x"}]) is None
    assert "skipped: set GPTCOURSE_JUDGE_URL=" in capsys.readouterr().out


@pytest.mark.parametrize("text, score", [("85", 85), ("Score: 7/10", 7), (" 100.", 100)])
def test_parse_score_takes_the_first_integer(text, score):
    assert parse_score(text) == score


@pytest.mark.parametrize("text", ["none", "150", "-3"])
def test_parse_score_rejects_missing_or_out_of_range(text):
    with pytest.raises(ValueError):
        parse_score(text)


# ------------------------------------------------------------------ the layout


def test_instruct_re_exports_the_modules_that_do_the_work():
    from gptcourse import finetune
    from gptcourse.finetune import checkable, instruct, judge, records, responses, supervised

    homes = {name: mod for mod in (records, supervised, responses, checkable, judge)
             for name in mod.__all__}
    for name in instruct.__all__:
        assert getattr(instruct, name) is getattr(homes[name], name), name
        if name in finetune.__all__:
            assert getattr(finetune, name) is getattr(instruct, name), name


def test_finetune_modules_import_no_private_names():
    """No module of gptcourse.finetune (nor the HTTP client) imports another's private name."""
    import gptcourse

    root = __import__("pathlib").Path(gptcourse.__file__).parent
    for path in [*sorted((root / "finetune").glob("*.py")), root / "client.py"]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert not [a.name for a in node.names if a.name.startswith("_")], path.name
