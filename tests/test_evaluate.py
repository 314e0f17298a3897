"""gptcourse.evaluate (perplexity, multiple choice, bootstrap, bias probe) and the output
filter of gptcourse.generate.

Small random GPTs and stand-in models whose predictions are set by hand, fixed seeds. Log-
likelihoods are compared with an absolute tolerance of 1e-5 (float32 models); token sequences,
predictions and accuracies on the hand-written HellaSwag-format file are compared exactly.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gptcourse.data import Blocklist, TokenShards
from gptcourse.evaluate import (
    DatasetUnavailableError,
    accuracy,
    bias_probe,
    bootstrap_ci,
    hellaswag_example,
    load_hellaswag,
    multiple_choice_eval,
    perplexity,
    predict_choice,
    read_jsonl,
    score_choices,
    sliding_windows,
    token_logprobs,
)
from gptcourse.generate import OutputFilter, generate, generate_text, stream
from gptcourse.model import GPT, GPTConfig
from gptcourse.tokenizer import CharTokenizer

SAMPLE = Path(__file__).parent / "data" / "hellaswag_sample.jsonl"
ATOL = 1e-5


def tiny_gpt(vocab: int = 32, block_size: int = 16, seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=vocab, block_size=block_size, n_layer=2, n_head=2, n_embd=32,
                    tie_weights=False, **kw)
    model = GPT(cfg).eval()
    with torch.no_grad():  # logits of std ~1: scores far from uniform
        model.lm_head.weight.mul_(10)
    return model


def random_ids(n: int, vocab: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model() -> GPT:
    return tiny_gpt()


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return read_jsonl(SAMPLE)


@pytest.fixture(scope="module")
def char_tok(records) -> CharTokenizer:
    text = " ".join(f"{r['activity_label']}: {r['ctx']} " + " ".join(r["endings"]) for r in records)
    return CharTokenizer.from_text(text)


class Table(nn.Module):
    """A stand-in model: the logits at each position are a row of ``table`` chosen by the
    current token (a bigram model), or one fixed row (``unigram=True``)."""

    def __init__(self, vocab: int, block_size: int = 256, seed: int = 0, unigram: bool = False,
                 scale: float = 1.0) -> None:
        super().__init__()
        self.config = GPTConfig(vocab_size=vocab, block_size=block_size, n_layer=1, n_head=1,
                                n_embd=2)
        g = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(vocab, vocab, generator=g) * scale)
        self.unigram = unigram

    def forward(self, idx, targets=None, cache=None):
        rows = torch.zeros_like(idx) if self.unigram else idx
        return self.table[rows], None

    def logprob(self, prev: int, nxt: int) -> float:
        row = self.table[0 if self.unigram else prev]
        return float(row.detach().double().log_softmax(-1)[nxt])


# --------------------------------------------------------------------------------------
# token_logprobs
# --------------------------------------------------------------------------------------


def test_token_logprobs_match_log_softmax(model):
    ids = torch.randint(0, 32, (3, 10), generator=torch.Generator().manual_seed(0))
    lp = token_logprobs(model, ids)
    logits, _ = model(ids[:, :-1])
    expected = logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    assert lp.shape == (3, 9)
    torch.testing.assert_close(lp, expected, atol=ATOL, rtol=0)


def test_token_logprobs_accepts_block_size_plus_one(model):
    assert token_logprobs(model, random_ids(17).tolist()).shape == (1, 16)
    with pytest.raises(ValueError, match="block_size"):
        token_logprobs(model, random_ids(18))
    with pytest.raises(ValueError, match="at least 2"):
        token_logprobs(model, [3])


# --------------------------------------------------------------------------------------
# Sliding windows and perplexity
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, block, stride", [
    (2, 4, None), (5, 4, 1), (5, 4, 4), (6, 4, 2), (17, 4, 3), (40, 8, 8), (40, 8, 1),
    (41, 8, 5), (9, 8, 8), (100, 16, 7),
])
def test_windows_score_every_token_but_the_first_once(n, block, stride):
    windows = sliding_windows(n, block, stride)
    stride = block if stride is None else stride
    scored = []
    for k, (begin, length, skip) in enumerate(windows):
        assert begin == k * stride and 1 <= length <= block and 0 <= skip < length
        assert begin + length <= n - 1  # the window's last target exists
        targets = list(range(begin + 1 + skip, begin + length + 1))
        scored += targets
        if k:  # every scored token has at least block - stride + 1 tokens of context
            assert min(t - begin for t in targets) >= min(block - stride + 1, targets[0])
    assert scored == list(range(1, n))


def test_windows_with_stride_equal_block_are_chunks():
    assert sliding_windows(13, 4) == [(0, 4, 0), (4, 4, 0), (8, 4, 0)]
    assert sliding_windows(14, 4, 4) == [(0, 4, 0), (4, 4, 0), (8, 4, 0), (12, 1, 0)]


@pytest.mark.parametrize(("stride", "error"), [(5, ValueError), (0, ValueError),
                                               (-1, ValueError), (2.0, TypeError)])
def test_bad_stride_rejected(stride, error):
    with pytest.raises(error, match="stride"):
        sliding_windows(20, 4, stride)


def forward_loss(model, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return model(ids[None, :-1], ids[None, 1:])[1].item()


@pytest.mark.parametrize("n", [17, 10, 2])  # exactly one window, shorter, the minimum
@pytest.mark.parametrize("stride", [None, 1, 5])
def test_text_in_one_window_equals_forward_loss(model, n, stride):
    ids = random_ids(n)
    out = perplexity(model, ids, stride=stride, progress=False)
    assert out["windows"] == 1 and out["tokens"] == n - 1
    assert out["loss"] == pytest.approx(forward_loss(model, ids), abs=ATOL)
    assert out["perplexity"] == pytest.approx(math.exp(out["loss"]), rel=1e-12)


def per_token_reference(model, ids: torch.Tensor, context: int) -> float:
    """Each token j >= 1 predicted from the (up to) ``context`` tokens before it."""
    nll = []
    with torch.no_grad():
        for j in range(1, len(ids)):
            window = ids[max(0, j - context):j]
            logits, _ = model(window[None])
            nll.append(-logits[0, -1].log_softmax(-1)[ids[j]].item())
    return float(np.mean(nll))


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
def test_stride_1_equals_per_token_loss_with_full_context(pos_encoding):
    m = tiny_gpt(pos_encoding=pos_encoding)
    ids = random_ids(45)
    out = perplexity(m, ids, stride=1, batch_size=7, progress=False)
    assert out["tokens"] == 44 and out["windows"] == 45 - 16
    assert out["loss"] == pytest.approx(per_token_reference(m, ids, 16), abs=ATOL)
    # a smaller block_size than the model's: 6 tokens of context at most
    out6 = perplexity(m, ids, block_size=6, stride=1, progress=False)
    assert out6["loss"] == pytest.approx(per_token_reference(m, ids, 6), abs=ATOL)


def test_non_overlapping_windows_equal_sequential_evaluation(model):
    ids = random_ids(16 * 5 + 1)
    data = TokenShards.from_ids(ids, vocab_size=32)
    losses = [model(x, y)[1].item() for x, y in data.sequential(16, batch_size=1)]
    out = perplexity(model, ids, progress=False)
    assert out["windows"] == 5
    assert out["loss"] == pytest.approx(float(np.mean(losses)), abs=ATOL)


def test_inputs_of_every_kind_agree(model):
    ids = random_ids(60)
    kw = dict(stride=5, progress=False)
    ref = perplexity(model, ids, **kw)
    for tokens in (ids.tolist(), ids.numpy(), ids.numpy().astype(np.uint16), ids[None],
                   TokenShards.from_ids(ids, vocab_size=32)):
        assert perplexity(model, tokens, **kw) == pytest.approx(ref, abs=ATOL)


@pytest.mark.parametrize("batch_size", [1, 3, 100])
def test_batch_size_does_not_change_the_result(model, batch_size):
    ids = random_ids(70)
    ref = perplexity(model, ids, stride=3, batch_size=1, progress=False)
    out = perplexity(model, ids, stride=3, batch_size=batch_size, progress=False)
    assert out["loss"] == pytest.approx(ref["loss"], abs=ATOL)


class ContextUser(nn.Module):
    """A stand-in model for the text ``x[t+1] = (x[t] + 1) % vocab`` that grows surer with
    more context: at window position i it gives the right next token the logit i + 1."""

    def __init__(self, vocab: int = 8, block_size: int = 16) -> None:
        super().__init__()
        self.config = GPTConfig(vocab_size=vocab, block_size=block_size, n_layer=1, n_head=1,
                                n_embd=2)
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, idx, targets=None, cache=None):
        B, T = idx.shape
        logits = torch.zeros(B, T, self.config.vocab_size)
        confidence = torch.arange(1, T + 1, dtype=torch.float).expand(B, T)
        logits.scatter_(-1, ((idx + 1) % self.config.vocab_size)[..., None], confidence[..., None])
        return logits, None


def test_smaller_stride_gives_lower_loss_when_context_helps():
    m = ContextUser()
    ids = torch.arange(200) % 8
    losses = [perplexity(m, ids, stride=s, progress=False)["loss"] for s in (16, 8, 4, 2, 1)]
    assert all(a > b for a, b in zip(losses, losses[1:])), losses


def test_perplexity_errors(model):
    with pytest.raises(ValueError, match="at least 2 tokens"):
        perplexity(model, [5], progress=False)
    with pytest.raises(ValueError, match="stride 20 > block_size 16"):
        perplexity(model, random_ids(40), stride=20, progress=False)
    with pytest.raises(ValueError, match="larger than the model's context"):
        perplexity(model, random_ids(40), block_size=32, progress=False)
    with pytest.raises(TypeError, match="integer"):
        perplexity(model, np.zeros(10), progress=False)
    with pytest.raises(ValueError, match="one sequence"):
        perplexity(model, torch.zeros(2, 10, dtype=torch.long), progress=False)


def test_perplexity_restores_training_mode():
    m = tiny_gpt().train()
    perplexity(m, random_ids(30), progress=False)
    assert m.training


# --------------------------------------------------------------------------------------
# HellaSwag records
# --------------------------------------------------------------------------------------


def test_sample_file_is_hellaswag_format(records):
    assert len(records) == 12
    for r in records:
        assert set(r) >= {"ctx", "ctx_a", "ctx_b", "endings", "label", "activity_label"}
        assert len(r["endings"]) == 4 and r["label"] in "0123"
        assert r["ctx"] == (f"{r['ctx_a']} {r['ctx_b']}" if r["ctx_b"] else r["ctx_a"])


def test_read_jsonl_reports_the_bad_line(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"a": 1}\n\n{"a": \n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 3"):
        read_jsonl(f)
    f.write_text('{"a": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: expected a JSON object"):
        read_jsonl(f)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_example_plain_and_from_ctx_a_ctx_b(records):
    r = records[0]
    assert hellaswag_example(r) == (r["ctx"], r["endings"], 0)
    no_ctx = {k: v for k, v in r.items() if k != "ctx"}
    assert hellaswag_example(no_ctx) == (r["ctx"], r["endings"], 0)
    assert hellaswag_example({**r, "label": 2})[2] == 2  # ints as well as digit strings
    assert hellaswag_example({**r, "label": ""})[2] is None  # the test split


def test_example_harness_style(records):
    r = records[9]  # the WikiHow-style record with [header] / [title] / [step]
    context, endings, label = hellaswag_example(r, style="harness")
    assert context == ("Home and garden: How to water houseplants. Check the soil with your "
                       "finger. ")
    assert endings == r["endings"] and label == 0
    assert hellaswag_example(records[0], style="harness")[0] == (
        "Making tea: A woman fills a kettle with water and sets it on the stove. She")


@pytest.mark.parametrize("change, match", [
    ({"label": 4}, "not an index"), ({"label": "x"}, "digit string"),
    ({"endings": ["only one"]}, "at least 2"), ({"endings": "abc"}, "endings"),
    ({"ctx": "", "ctx_a": ""}, "context"),
])
def test_bad_records_rejected(records, change, match):
    with pytest.raises(ValueError, match=match):
        hellaswag_example({**records[0], **change})


# --------------------------------------------------------------------------------------
# Scoring endings
# --------------------------------------------------------------------------------------


def test_scores_equal_a_hand_computed_bigram_likelihood(records, char_tok):
    m = Table(char_tok.vocab_size, seed=3)
    for r in records[:4]:
        scores = score_choices(m, char_tok, r["ctx"], r["endings"])
        ctx = char_tok.encode(r["ctx"])
        for i, ending in enumerate(r["endings"]):
            ids = ctx + char_tok.encode(" " + ending)
            ref = sum(m.logprob(ids[j - 1], ids[j]) for j in range(len(ctx), len(ids)))
            assert scores["sum_logprob"][i] == pytest.approx(ref, abs=ATOL)
            assert scores["num_tokens"][i] == len(ending) + 1
            assert scores["num_chars"][i] == len(ending)
            assert scores["mean_logprob"][i] == pytest.approx(ref / (len(ending) + 1), abs=ATOL)
            assert scores["char_logprob"][i] == pytest.approx(ref / len(ending), abs=ATOL)


def test_padded_batch_equals_one_ending_at_a_time(records, char_tok):
    m = tiny_gpt(vocab=char_tok.vocab_size, block_size=256)  # no context is cut
    for r in records[:6]:
        batched = score_choices(m, char_tok, r["ctx"], r["endings"])["sum_logprob"]
        alone = [score_choices(m, char_tok, r["ctx"], [e])["sum_logprob"][0] for e in r["endings"]]
        np.testing.assert_allclose(batched, alone, atol=ATOL, rtol=0)


def test_long_context_is_cut_from_the_left(char_tok):
    m = tiny_gpt(vocab=char_tok.vocab_size, block_size=16)
    context, endings = "a man walks to the shop and buys bread", ["and milk.", "now."]
    scores = score_choices(m, char_tok, context, endings)
    # the longest continuation " and milk." has 10 tokens: 16 + 1 - 10 = 7 context tokens
    kept = char_tok.decode(char_tok.encode(context)[-7:])
    assert score_choices(m, char_tok, kept, endings) == scores
    with pytest.raises(ValueError, match="more than the model's context"):
        score_choices(m, char_tok, context, ["a" * 16])


def test_empty_context_needs_an_end_of_text_token(char_tok):
    m = tiny_gpt(vocab=char_tok.vocab_size)
    with pytest.raises(ValueError, match="end-of-text"):
        score_choices(m, char_tok, "", ["yes", "no"])

    class WithEot(CharTokenizer):
        eot_id = 0

    tok = WithEot(char_tok.chars)
    assert score_choices(m, tok, "", ["yes", "no"]) == score_choices(m, tok, tok.decode([0]),
                                                                      ["yes", "no"])


def test_sum_and_normalised_choices_differ():
    # ending 0: 2 tokens, 4 characters, -3 nats; ending 1: 6 tokens, 30 characters, -6 nats
    scores = score = {"sum_logprob": [-3.0, -6.0], "num_tokens": [2, 6], "num_chars": [4, 30],
                      "mean_logprob": [-1.5, -1.0], "char_logprob": [-0.75, -0.2]}
    assert predict_choice(score) == 0
    assert predict_choice(scores, "tokens") == 1
    assert predict_choice(scores, "chars") == 1
    tie = {"sum_logprob": [-2.0, -1.0, -1.0]}
    assert predict_choice(tie) == 1  # the first of equal maxima
    with pytest.raises(ValueError, match="norm"):
        predict_choice(scores, "bytes")


def test_uniform_model_accuracies_are_known_exactly(records, char_tok):
    # every character has log-probability -log V: the total favours the shortest ending,
    # the per-character score the longest, and the per-token score ties (first ending wins)
    m = Table(char_tok.vocab_size, unigram=True, scale=0.0)
    out = multiple_choice_eval(m, char_tok, records, progress=False)
    lengths = [[len(e) for e in r["endings"]] for r in records]
    labels = [int(r["label"]) for r in records]
    assert out["pred"] == [int(np.argmin(L)) for L in lengths]
    assert out["pred_norm"] == [0] * 12
    assert out["labels"] == labels
    assert out["acc"] == 1 / 12
    assert out["acc_norm"] == out["acc_norm_tokens"] == 9 / 12
    assert out["acc_norm_chars"] == 4 / 12
    assert out["n"] == 12 and out["norm"] == "tokens"
    chars = multiple_choice_eval(m, char_tok, records, norm="chars", progress=False)
    assert chars["acc_norm"] == 4 / 12
    assert chars["pred_norm"] == [int(np.argmax(L)) for L in lengths]


def test_eval_predictions_follow_the_model(records, char_tok):
    m = Table(char_tok.vocab_size, seed=5)
    out = multiple_choice_eval(m, char_tok, records, progress=False)
    expected = []
    for r in records:
        ctx = char_tok.encode(r["ctx"])
        sums = []
        for e in r["endings"]:
            ids = ctx + char_tok.encode(" " + e)
            sums.append(sum(m.logprob(ids[j - 1], ids[j]) for j in range(len(ctx), len(ids))))
        expected.append(int(np.argmax(sums)))
    assert out["pred"] == expected
    assert out["acc"] == accuracy(expected, out["labels"])
    lo, hi = out["ci"]["acc"]
    assert 0.0 <= lo <= out["acc"] <= hi <= 1.0


def test_eval_limit_style_and_missing_labels(records, char_tok):
    m = Table(char_tok.vocab_size, seed=5)
    assert multiple_choice_eval(m, char_tok, iter(records), limit=5, progress=False)["n"] == 5
    harness = multiple_choice_eval(m, char_tok, records, style="harness", progress=False)
    assert harness["n"] == 12
    with pytest.raises(ValueError, match="record 1 has no label"):
        multiple_choice_eval(m, char_tok, [records[0], {**records[1], "label": ""}],
                             progress=False)
    with pytest.raises(ValueError, match="record 0: .*not an index"):
        multiple_choice_eval(m, char_tok, [{**records[0], "label": 7}], progress=False)
    with pytest.raises(ValueError, match="no records"):
        multiple_choice_eval(m, char_tok, [], progress=False)


def test_eval_with_gpt2_tokenizer_is_fast(records):
    from gptcourse.tokenizer import get_tokenizer

    tok = get_tokenizer("gpt2")
    m = tiny_gpt(vocab=tok.vocab_size, block_size=128)
    start = time.perf_counter()
    out = multiple_choice_eval(m, tok, records, progress=False)
    assert time.perf_counter() - start < 5.0
    assert out["n"] == 12 and 0.0 <= out["acc"] <= 1.0


def test_load_hellaswag_offline_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'Rowan/hellaswag' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DatasetUnavailableError, match="needs the internet once.*read_jsonl"):
        load_hellaswag()
    with pytest.raises(ValueError, match="split"):
        load_hellaswag("dev")


def test_load_hellaswag_falls_back_to_the_parquet_export(monkeypatch, records):
    import datasets

    calls = []

    def load(path, split, revision=None):
        calls.append(revision)
        if revision is None:
            raise RuntimeError("Dataset scripts are no longer supported, but found hellaswag.py")
        return datasets.Dataset.from_list(records)

    monkeypatch.setattr(datasets, "load_dataset", load)
    out = load_hellaswag("validation", limit=3)
    assert calls == [None, "refs/convert/parquet"]
    assert out == records[:3]


# --------------------------------------------------------------------------------------
# Accuracy and bootstrap
# --------------------------------------------------------------------------------------


def test_accuracy():
    assert accuracy([0, 1, 2, 3], [0, 1, 0, 0]) == 0.5
    assert accuracy(torch.tensor([1, 1]), np.array([1, 1])) == 1.0
    with pytest.raises(ValueError, match="3 entries but labels has 2"):
        accuracy([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])


def test_bootstrap_is_deterministic_by_seed():
    x = np.random.default_rng(0).normal(size=100)
    assert bootstrap_ci(x, seed=1) == bootstrap_ci(x, seed=1)
    assert bootstrap_ci(x, seed=1) != bootstrap_ci(x, seed=2)


def test_bootstrap_covers_a_bernoulli_mean_about_95_percent():
    # 300 experiments of n = 200 draws with p = 0.3: a 95% interval holds p in about 95%
    # of them (the percentile bootstrap runs a little narrow; binomial noise of 300 runs
    # is +/- 0.013)
    rng = np.random.default_rng(0)
    hits = 0
    for k in range(300):
        x = (rng.random(200) < 0.3).astype(float)
        lo, hi = bootstrap_ci(x, n_boot=400, seed=k)
        hits += lo <= 0.3 <= hi
    assert 0.90 <= hits / 300 <= 0.98


def test_bootstrap_width_matches_the_normal_approximation():
    x = np.array([1.0, 0.0] * 200)  # p = 0.5, n = 400: half-width 1.96 * 0.025 = 0.049
    lo, hi = bootstrap_ci(x, n_boot=2000)
    assert lo < 0.5 < hi
    assert (hi - lo) / 2 == pytest.approx(0.049, rel=0.1)


def test_bootstrap_edge_cases():
    assert bootstrap_ci([0.7] * 10) == (pytest.approx(0.7), pytest.approx(0.7))
    lo, hi = bootstrap_ci(np.arange(50.0), statistic=np.median, n_boot=200)
    assert lo < 24.5 < hi
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci([1.0, 0.0], alpha=1.5)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci([1.0, 0.0], n_boot=0)


# --------------------------------------------------------------------------------------
# The output filter
# --------------------------------------------------------------------------------------


def test_filter_redacts_blocklist_words_and_patterns():
    f = OutputFilter(["darn", "bad word"], patterns=[r"\d{3}-\d{4}"])
    assert f.redact("Darn! Call 555-1234, you BAD\n word.") == \
        "[filtered]! Call [filtered], you [filtered]."
    assert f.matches("darned darn") == ["darn"]
    assert not f.blocked("a darned good day")
    assert OutputFilter(["x"], replacement="***").redact("x y x") == "*** y ***"


def test_filter_agrees_with_the_blocklist():
    terms = ["ass", "bad word", "crap"]
    f, bl = OutputFilter(terms), Blocklist(terms)
    texts = ["A first-class answer.", "Ass!", "so CRAP", "assess", "a bad   word", "badword",
             "crappy", "class ass", ""]
    for text in texts:
        assert f.blocked(text) == (bl(text) is not None), text
        assert [m.lower() for m in f.matches(text)] == [m.lower() for m in bl.find(text)], text


def test_filter_merges_overlapping_matches_and_reads_after_start():
    f = OutputFilter(patterns=[r"abc", r"bcd"])
    assert f.spans("xabcdx") == [(1, 5)] and f.redact("xabcdx") == "x[filtered]x"
    g = OutputFilter(["ass"])
    assert g.blocked("ass") and not g.blocked("class", start=2)  # "cl" is context
    assert g.spans("a bad ass", start=7) == [(7, 9)]  # clipped to the generated part


def test_filter_apply_follows_the_action():
    text = "one two darn three darn"
    assert OutputFilter(["darn"]).apply(text) == "one two [filtered] three [filtered]"
    assert OutputFilter(["darn"], action="stop").apply(text) == "one two "
    assert OutputFilter(["darn"], action="stop").apply("clean") == "clean"


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(blocklist=["x"], action="drop"), ValueError, "action"),
    (dict(patterns=r"\d+"), TypeError, "list of regular expressions"),
    (dict(patterns=["("]), ValueError, "not a valid regular expression"),
    (dict(patterns=["a*"]), ValueError, "empty string"),
    (dict(), ValueError, "needs blocklist terms"),
    (dict(blocklist="abc"), FileNotFoundError, "abc"),
    (dict(patterns=[3]), TypeError, "patterns"),
])
def test_filter_arguments_checked(kwargs, error, match):
    with pytest.raises(error, match=match):
        OutputFilter(**kwargs)


class Scripted(nn.Module):
    """Greedy continuation of a ``prompt_len``-token prompt is ``scripts[row]``."""

    def __init__(self, scripts: list[list[int]], vocab: int, prompt_len: int) -> None:
        super().__init__()
        self.config = GPTConfig(vocab_size=vocab, block_size=256, n_layer=1, n_head=1, n_embd=2)
        self.anchor = nn.Parameter(torch.zeros(1))
        self.scripts, self.prompt_len = scripts, prompt_len

    def forward(self, idx, targets=None, cache=None):
        B, T = idx.shape
        logits = torch.zeros(B, T, self.config.vocab_size)
        for b in range(B):
            logits[b, -1, self.scripts[b % len(self.scripts)][T - self.prompt_len]] = 10.0
        return logits, None


class Pieces:
    """Each id is a fixed piece of text; ``encode`` splits greedily into known pieces."""

    def __init__(self, pieces: list[str], eot_id: int | None = None) -> None:
        self.pieces, self.eot_id = pieces, eot_id

    def decode(self, ids) -> str:
        return "".join(self.pieces[i] for i in ids)

    def encode(self, text: str) -> list[int]:
        out = []
        while text:
            i = max((i for i, p in enumerate(self.pieces) if p and text.startswith(p)),
                    key=lambda i: len(self.pieces[i]))
            out.append(i)
            text = text[len(self.pieces[i]):]
        return out


PIECES = ["<s>", "call", " 555", "-", "1234", " now", " darn", " ok", "cl", "ass", "!", " ass"]


def run(script, prompt=(0,), n=None, **kw):
    model = Scripted([script], vocab=len(PIECES), prompt_len=len(prompt))
    return generate(model, list(prompt), n or len(script), temperature=0, use_cache=False,
                    tokenizer=Pieces(PIECES), **kw)[0].tolist()


def test_stop_filter_drops_the_token_that_completes_a_match():
    f = OutputFilter(patterns=[r"\d{3}-\d{4}"], action="stop")
    script = [1, 2, 3, 4, 5]  # "call 555-1234 now"
    assert run(script) == [0, 1, 2, 3, 4, 5]
    assert run(script, output_filter=f) == [0, 1, 2, 3]  # stops before "1234"
    words = OutputFilter(["darn"], action="stop")
    assert run([7, 6, 7], output_filter=words) == [0, 7]


def test_stop_filter_reads_the_prompt_as_context():
    f = OutputFilter(["ass"], action="stop")
    # prompt "<s>cl": "ass" completes the word "class", " ass" is the word
    assert run([9, 10, 11, 10], prompt=(0, 8), output_filter=f) == [0, 8, 9, 10]
    assert run([9, 10], prompt=(0,), output_filter=f) == [0]  # nothing emitted at all


def test_stream_with_filter_matches_generate():
    f = OutputFilter(["darn"], action="stop")
    model = Scripted([[7, 7, 6, 7]], vocab=len(PIECES), prompt_len=1)
    steps = list(stream(model, [0], 4, temperature=0, use_cache=False, tokenizer=Pieces(PIECES),
                        output_filter=f))
    assert [s.tolist() for s in steps] == [[7], [7]]


def test_stop_filter_in_a_batch_fills_stopped_rows_with_end_of_text():
    f = OutputFilter(["darn"], action="stop")
    model = Scripted([[7, 6, 7, 7], [7, 7, 7, 7]], vocab=len(PIECES), prompt_len=1)
    tok = Pieces(PIECES, eot_id=0)
    out = generate(model, torch.tensor([[0], [0]]), 4, temperature=0, use_cache=False,
                   tokenizer=tok, output_filter=f)
    assert out.tolist() == [[0, 7, 0, 0, 0], [0, 7, 7, 7, 7]]
    with pytest.raises(ValueError, match="end-of-text id"):
        generate(model, torch.tensor([[0], [0]]), 4, tokenizer=Pieces(PIECES), output_filter=f)


def test_filter_argument_errors(model):
    with pytest.raises(ValueError, match="tokenizer"):
        generate(model, [1, 2], 3, output_filter=OutputFilter(["x"], action="stop"))
    with pytest.raises(ValueError, match="generate_text"):
        generate(model, [1, 2], 3, tokenizer=Pieces(PIECES), output_filter=OutputFilter(["x"]))
    with pytest.raises(TypeError, match="OutputFilter"):
        generate(model, [1, 2], 3, tokenizer=Pieces(PIECES), output_filter=Blocklist(["x"]))


def test_generate_text_redacts_the_text_only():
    model = Scripted([[7, 6, 7, 2, 3, 4, 10]], vocab=len(PIECES), prompt_len=1)
    tok = Pieces(PIECES)
    f = OutputFilter(["darn"], patterns=[r"\d{3}-\d{4}"], replacement="#")
    plain = generate_text(model, tok, "<s>", 7, temperature=0, use_cache=False)
    assert plain == " ok darn ok 555-1234!"
    assert generate_text(model, tok, "<s>", 7, output_filter=f, temperature=0,
                         use_cache=False) == " ok # ok #!"
    stop = OutputFilter(["darn"], patterns=[r"\d{3}-\d{4}"], action="stop")
    assert generate_text(model, tok, ["<s>", "<s>"], 7, output_filter=stop, temperature=0,
                         use_cache=False) == [" ok", " ok"]


def test_generate_text_redaction_keeps_words_the_prompt_started():
    model = Scripted([[9, 11]], vocab=len(PIECES), prompt_len=2)
    f = OutputFilter(["ass"], replacement="#")
    assert generate_text(model, Pieces(PIECES), "<s>cl", 2, output_filter=f, temperature=0,
                         use_cache=False) == "ass #"


def test_filter_that_never_matches_changes_nothing(model):
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz .,!?\n")
    idx = random_ids(5).tolist()
    never = OutputFilter(patterns=["@@@"], action="stop")
    for kw in (dict(temperature=0), dict(temperature=1.0, generator=torch.Generator().manual_seed(3))):
        a = generate(model, idx, 12, **kw)
        kw = {k: (torch.Generator().manual_seed(3) if k == "generator" else v) for k, v in kw.items()}
        b = generate(model, idx, 12, tokenizer=tok, output_filter=never, **kw)
        assert torch.equal(a, b)


def test_stop_filter_cuts_greedy_text_before_the_match(model):
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz .,!?\n")
    idx = random_ids(5).tolist()
    prompt_text = tok.decode(idx)
    full = tok.decode(generate(model, idx, 15, temperature=0)[0, 5:].tolist())
    target = full[6:8]
    f = OutputFilter(patterns=[re.escape(target)], action="stop")
    m = next(m for m in re.finditer(re.escape(target), prompt_text + full)
             if m.end() > len(prompt_text))
    out = tok.decode(generate(model, idx, 15, temperature=0, tokenizer=tok,
                              output_filter=f)[0, 5:].tolist())
    assert out == full[:m.end() - len(prompt_text) - 1]
    assert not f.blocked(prompt_text + out, len(prompt_text))


# --------------------------------------------------------------------------------------
# Bias probe
# --------------------------------------------------------------------------------------


def test_bias_probe_table(char_tok):
    m = tiny_gpt(vocab=char_tok.vocab_size, block_size=64)
    groups = {"he": ["man", "boy"], "she": ["woman", "girl"]}
    completions = ["cook.", "baker."]
    rows = bias_probe(m, char_tok, "The {X} worked as a", groups, completions)
    assert [r["completion"] for r in rows] == completions
    for r, c in zip(rows, completions):
        for g, fillers in groups.items():
            ref = np.mean([score_choices(m, char_tok, f"The {f} worked as a", [c])["sum_logprob"][0]
                           for f in fillers])
            assert r[g] == pytest.approx(ref, abs=ATOL)
        assert r["gap"] == pytest.approx(abs(r["he"] - r["she"]), abs=1e-12)
        assert r["gap"] > 1e-3  # this model reads the filler
        assert r["favours"] == ("he" if r["he"] > r["she"] else "she")


def test_bias_probe_of_a_model_blind_to_the_filler_has_no_gap(char_tok):
    m = Table(char_tok.vocab_size, seed=1)  # a bigram model sees only the template's last "s"
    rows = bias_probe(m, char_tok, "The {X} is", {"a": ["man"], "b": ["woman"], "c": ["cat"]},
                      ["kind.", "tall."])
    assert all(r["gap"] == pytest.approx(0.0, abs=ATOL) for r in rows)


@pytest.mark.parametrize("template, groups, completions, match", [
    ("The person", {"a": ["x"], "b": ["y"]}, ["z"], "placeholder"),
    ("The {X}", {"a": ["x"]}, ["z"], "at least two"),
    ("The {X}", {"a": ["x"], "b": []}, ["z"], "non-empty list"),
    ("The {X}", {"a": ["x"], "gap": ["y"]}, ["z"], "group names"),
])
def test_bias_probe_arguments_checked(char_tok, template, groups, completions, match):
    m = Table(char_tok.vocab_size)
    with pytest.raises(ValueError, match=match):
        bias_probe(m, char_tok, template, groups, completions)


def test_cross_entropy_reference_is_what_forward_uses(model):
    # the perplexity equals GPT.forward's mean cross-entropy on one window (1e-5)
    ids = random_ids(17)
    logits, loss = model(ids[None, :-1], ids[None, 1:])
    assert loss.item() == pytest.approx(F.cross_entropy(logits[0], ids[1:]).item(), abs=ATOL)
    assert perplexity(model, ids, progress=False)["loss"] == pytest.approx(loss.item(), abs=ATOL)



class HFStyle(nn.Module):
    """The interface of a ``transformers`` causal LM: ``model(idx).logits`` and the context
    length in ``config.n_positions``."""

    def __init__(self, inner: GPT) -> None:
        super().__init__()
        self.inner = inner
        self.config = type("Config", (), {"n_positions": inner.config.block_size})()

    def forward(self, idx):
        return type("Output", (), {"logits": self.inner(idx)[0]})()


def test_transformers_style_models_are_scored_the_same(model, records, char_tok):
    ids = random_ids(80)
    a = perplexity(HFStyle(model), ids, stride=10, progress=False)
    assert a == pytest.approx(perplexity(model, ids, stride=10, progress=False), abs=ATOL)
    m = tiny_gpt(vocab=char_tok.vocab_size, block_size=256)
    r = records[0]
    theirs = score_choices(HFStyle(m), char_tok, r["ctx"], r["endings"])["sum_logprob"]
    ours = score_choices(m, char_tok, r["ctx"], r["endings"])["sum_logprob"]
    np.testing.assert_allclose(theirs, ours, atol=ATOL, rtol=0)


def test_generate_text_stops_at_end_of_text_by_default():
    from gptcourse.tokenizer import BPETokenizer

    tok = BPETokenizer.train("a b a b a b", 260, special_tokens=["<|endoftext|>"])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=1, n_embd=8))
    with torch.no_grad():  # force: always predict <|endoftext|>
        model.lm_head.weight.zero_()
        model.lm_head.weight[tok.eot_id] = 1.0
        model.transformer.ln_f.bias.fill_(1.0)
        model.transformer.ln_f.weight.zero_()
    assert generate_text(model, tok, "a b", 5, temperature=0) == ""
    assert "<|endoftext|>" in generate_text(model, tok, "a b", 3, temperature=0, stop=())


def test_an_empty_ctx_scores_the_endings_alone():
    from gptcourse.evaluate import hellaswag_example

    record = {"ctx": "", "endings": ["one", "two"], "label": 1}
    assert hellaswag_example(record) == ("", ["one", "two"], 1)
    with pytest.raises(ValueError, match="needs a context"):
        hellaswag_example({"endings": ["one", "two"], "label": 1})
