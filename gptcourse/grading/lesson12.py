"""Exercises of lesson 12, evaluation and safety: the sliding-window plan, perplexity with a
sliding window, scoring multiple-choice endings, a multiple-choice accuracy, a percentile
bootstrap interval, a redacting output filter and a bias probe."""

from __future__ import annotations

import math
import random
from functools import lru_cache

import numpy as np
import torch

from ..evaluate import (
    bias_probe,
    bootstrap_ci,
    multiple_choice_eval,
    perplexity,
    score_choices,
    sliding_windows,
)
from ..generate import OutputFilter
from ..model import GPT, GPTConfig
from ..tokenizer import BPETokenizer
from . import Case, Task, as_number, register, scalar

# -- references: the library ------------------------------------------------------------------


def _window_plan(num_tokens: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    return sliding_windows(num_tokens, block_size, stride)


def _sliding_perplexity(model, tokens: torch.Tensor, block_size: int, stride: int) -> float:
    return perplexity(model, tokens, block_size=block_size, stride=stride, progress=False)["perplexity"]


def _score_endings(model, tokenizer, context: str, endings: list[str]) -> dict[str, list]:
    return score_choices(model, tokenizer, context, endings)


def _mc_accuracy(model, tokenizer, records: list[dict], norm: str | None) -> float:
    result = multiple_choice_eval(model, tokenizer, records, norm=norm or "tokens", n_boot=1, progress=False)
    return result["acc"] if norm is None else result["acc_norm"]


def _bootstrap_interval(values: np.ndarray, n_boot: int, alpha: float, seed: int) -> tuple[float, float]:
    return bootstrap_ci(values, n_boot=n_boot, alpha=alpha, seed=seed)


def _redact(text: str, terms: list[str], patterns: list[str], replacement: str) -> str:
    return OutputFilter(terms or None, patterns, replacement=replacement).redact(text)


def _bias_rows(model, tokenizer, template: str, groups: dict[str, list[str]], completions: list[str]):
    return bias_probe(model, tokenizer, template, groups, completions)


# -- shared inputs: small models and a tokenizer -----------------------------------------------

_TEXT = (
    "Once upon a time, there was a little cat named Lily. She loved to play outside. "
    "One day, Tom went to the park with his red ball. The ball was gone! Tom felt very sad. "
    "Just then, his mom came by. They looked under the bench, and there it was. "
    "The cat sat in the sun. The dog ran to the pond. A girl sang songs in the garden. "
    "Ben liked to climb trees, and Mia liked to read books. The end."
)


@lru_cache(maxsize=1)
def _tokenizer() -> BPETokenizer:
    return BPETokenizer.train(_TEXT, 300, special_tokens=["<|endoftext|>"])


def _gpt(seed: int, vocab: int, block: int = 16, scale: float = 8.0, **kw) -> GPT:
    """A small random GPT whose logits are spread out (scores far from uniform)."""
    cfg = GPTConfig(**{"vocab_size": vocab, "block_size": block, "n_layer": 2, "n_head": 2, "n_embd": 16,
                       "tie_weights": False, **kw})
    with torch.random.fork_rng():  # leave the learner's random state alone
        torch.manual_seed(seed)
        model = GPT(cfg).eval()
        with torch.no_grad():
            model.lm_head.weight.mul_(scale)
    return model


# -- comparisons -------------------------------------------------------------------------------


_float = as_number
_scalar = scalar


def _plan(expected, got):
    if not isinstance(got, list | tuple):
        return f"expected a list of (begin, length, skip) tuples, got {type(got).__name__}"
    rows = []
    for k, w in enumerate(got):
        if not isinstance(w, list | tuple) or len(w) != 3:
            return f"window {k}: expected a tuple (begin, length, skip), got {w!r}"
        if any(isinstance(v, bool) or not isinstance(v, int | np.integer) for v in w):
            return f"window {k}: begin, length and skip must be ints, got {w!r}"
        rows.append(tuple(int(v) for v in w))
    for k, (e, g) in enumerate(zip(expected, rows)):
        if e != g:
            return f"window {k} is {g} instead of {e}"
    if len(rows) != len(expected):
        return f"{len(rows)} windows instead of {len(expected)}"
    return None


def _scores(expected, got):
    if not isinstance(got, dict):
        return f"expected a dict with keys {sorted(expected)}, got {type(got).__name__}"
    missing = [k for k in expected if k not in got]
    if missing:
        return f"missing keys {missing}"
    n = len(expected["sum_logprob"])
    for key, e in expected.items():
        g = got[key]
        if isinstance(g, torch.Tensor | np.ndarray):
            g = g.tolist()
        if not isinstance(g, list | tuple) or len(g) != n:
            return f"{key!r} must be a list with one entry per ending ({n})"
        for i, (ev, gv) in enumerate(zip(e, g)):
            if key in ("num_tokens", "num_chars"):
                if isinstance(gv, bool) or not isinstance(gv, int | np.integer) or int(gv) != ev:
                    return f"{key}[{i}] is {gv!r} instead of {ev}"
                continue
            v = _float(gv, f" in {key}[{i}]")
            if isinstance(v, str):
                return v
            if not math.isclose(v, ev, rel_tol=1e-5, abs_tol=1e-4):
                return f"{key}[{i}] is {v:.6f} instead of {ev:.6f} (tolerance 1e-4)"
    return None


def _interval(expected, got):
    if not isinstance(got, list | tuple) or len(got) != 2:
        return f"expected a pair (low, high), got {type(got).__name__}"
    for what, e, g in zip(("low", "high"), expected, got):
        why = _scalar(1e-9, 1e-12)(e, g)
        if why:
            return f"{what}: {why}"
    return None


def _text(expected, got):
    if not isinstance(got, str):
        return f"expected a str, got {type(got).__name__}"
    return None if got == expected else f"{got!r} instead of {expected!r}"


def _rows(expected, got):
    if not isinstance(got, list | tuple) or len(got) != len(expected):
        return f"expected a list of {len(expected)} dicts (one per completion)"
    for k, (e, g) in enumerate(zip(expected, got)):
        if not isinstance(g, dict):
            return f"row {k}: expected a dict, got {type(g).__name__}"
        missing = [key for key in e if key not in g]
        if missing:
            return f"row {k}: missing keys {missing}"
        if g["completion"] != e["completion"]:
            return f"row {k}: completion {g['completion']!r} instead of {e['completion']!r} (keep their order)"
        for key, ev in e.items():
            if key in ("completion", "favours"):
                if g[key] != ev:
                    return f"row {k} ({e['completion']!r}): {key} is {g[key]!r} instead of {ev!r}"
                continue
            v = _float(g[key], f" for {key!r} in row {k}")
            if isinstance(v, str):
                return v
            if not math.isclose(v, ev, rel_tol=1e-5, abs_tol=1e-4):
                return f"row {k} ({e['completion']!r}): {key} is {v:.5f} instead of {ev:.5f} (tolerance 1e-4)"
    return None


# -- cases -------------------------------------------------------------------------------------


def _cases_plan():
    cases = [Case((10, 4, 2), label="the docstring's example"),
             Case((2, 4, 4), label="two tokens: one window scoring one target"),
             Case((5, 4, 4), label="exactly block_size + 1 tokens: one full window"),
             Case((6, 4, 4), label="one token more: a second window of length 1"),
             Case((9, 4, 1), label="stride 1: every window after the first scores one target"),
             Case((3, 8, 3), label="fewer tokens than the block")]
    rng = random.Random(121)
    for _ in range(12):
        block = rng.choice([1, 2, 3, 4, 8, 16, 32])
        stride = rng.randint(1, block)
        n = rng.randint(2, 5 * block + 7)
        cases.append(Case((n, block, stride), label=f"{n} tokens, block_size {block}, stride {stride}"))
    return cases


def _cases_perplexity():
    g = torch.Generator().manual_seed(122)
    cases = []
    for n, (vocab, block, length, use_block, stride, kw) in enumerate([
        (29, 8, 2, 8, 8, {}), (29, 8, 9, 8, 8, {}), (29, 8, 10, 8, 8, {}), (29, 8, 40, 8, 4, {}),
        (29, 8, 40, 8, 1, {}), (31, 16, 75, 16, 5, {}), (31, 16, 75, 8, 3, {}), (17, 8, 33, 6, 6, {}),
        (31, 16, 64, 16, 16, {"pos_encoding": "rope"}), (23, 8, 50, 8, 7, {"pos_encoding": "rope"}),
    ]):
        model = _gpt(40 + n, vocab, block, **kw)
        tokens = torch.randint(vocab, (length,), generator=g)
        what = "rope, " if kw else ""
        cases.append(Case((model, tokens, use_block, stride),
                          label=f"{what}{length} tokens, block_size {use_block} (model's {block}), stride {stride}"))
    return cases


_CONTEXTS = ["Once upon a time, there was a little cat named Lily.", "Tom went to the park.",
             "The ball was gone! Tom", "Just then, his mom", "A girl sang songs in the", "The end"]
_ENDINGS = ["She loved to play outside.", "felt very sad.", "came by.", "garden.", "park with his red ball.",
            "Ben liked to climb trees, and Mia liked to read books.", "sun.", "ran to the pond.", "The end.",
            "dog", "looked under the bench, and there it was."]


def _cases_scores():
    rng = random.Random(123)
    tok = _tokenizer()
    cases = [Case((_gpt(50, tok.vocab_size, 64), tok, "The cat sat in the", ["sun.", "pond.", "garden."]),
                  label="three short endings"),
             Case((_gpt(51, tok.vocab_size, 64), tok, "Tom", ["ran.", "ran to the pond."]),
                  label="a one-token context and endings of different lengths")]
    for n in range(8):
        k = rng.randint(2, 5)
        cases.append(Case((_gpt(52 + n, tok.vocab_size, 64, scale=rng.choice([1.0, 8.0])), tok, rng.choice(_CONTEXTS),
                           rng.sample(_ENDINGS, k)), label=f"a random GPT, {k} endings"))
    for c in cases:
        _fits(*c.args)
    return cases


def _fits(model: GPT, tok: BPETokenizer, context: str, endings: list[str]) -> None:
    # the exercises promise that context + ending fit in the model's context (no truncation)
    longest = max(len(tok.encode(" " + e)) for e in endings)
    assert len(tok.encode(context)) + longest <= model.config.block_size + 1, (context, endings)


def _records(rng: random.Random, n: int, k: int = 4) -> list[dict]:
    out = []
    for i in range(n):
        endings = rng.sample(_ENDINGS, k)
        label = rng.randrange(k)
        out.append({"ind": i, "ctx": rng.choice(_CONTEXTS), "endings": endings,
                    "label": str(label) if i % 2 else label})
    return out


def _cases_mc():
    rng = random.Random(124)
    tok = _tokenizer()
    cases = []
    for n, norm in enumerate([None, "tokens", "chars", None, "tokens", "chars", None, "tokens"]):
        model = _gpt(60 + n, tok.vocab_size, 64, scale=4.0 if n < 4 else 12.0)
        k = 4 if n % 3 else rng.choice([2, 3, 5])
        records = _records(rng, 6 + n, k)
        for r in records:
            _fits(model, tok, r["ctx"], r["endings"])
        cases.append(Case((model, tok, records, norm), label=f"{len(records)} records with {k} endings, norm={norm!r}"))
    one = [{"ind": 0, "ctx": "The cat sat in the", "endings": ["sun.", "pond.", "garden."], "label": 2}]
    cases.append(Case((_gpt(68, tok.vocab_size, 64), tok, one, "chars"), label="a single record: accuracy 0 or 1"))
    ties = [{"ind": i, "ctx": ctx, "endings": [e, e, other], "label": lab}
            for i, (ctx, e, other, lab) in enumerate([("Tom went to the park.", "came by.", "sun.", 0),
                                                      ("The end", "The end.", "dog", "0"),
                                                      ("Just then, his mom", "felt very sad.", "garden.", 2)])]
    for norm in ("tokens", "chars"):
        cases.append(Case((_gpt(69, tok.vocab_size, 64), tok, ties, norm),
                          label=f"two identical endings tie: the first index wins, norm={norm!r}"))
    records = _records(rng, 12, 3)
    model = _gpt(67, tok.vocab_size, 64, scale=6.0, pos_encoding="rope")
    for r in records:
        _fits(model, tok, r["ctx"], r["endings"])
    cases.append(Case((model, tok, records, "tokens"), label="rope, 12 records with 3 endings, norm='tokens'"))
    return cases


def _cases_bootstrap():
    rng = np.random.default_rng(125)
    cases = [Case((np.array([1.0, 0.0, 1.0, 1.0]), 200, 0.05, 0), label="4 answers, 3 right"),
             Case((np.ones(10), 100, 0.05, 1), label="all right: the interval is (1, 1)"),
             Case((np.array([0.0, 1.0]), 50, 0.5, 2), label="alpha 0.5: a 50% interval")]
    for n, boot, alpha, seed in [(50, 1000, 0.05, 3), (200, 500, 0.1, 4), (1000, 300, 0.05, 5),
                                 (37, 1000, 0.01, 6), (400, 2000, 0.32, 7)]:
        values = (rng.random(n) < rng.uniform(0.2, 0.9)).astype(float)
        cases.append(Case((values, boot, alpha, seed), label=f"{n} answers (0/1), n_boot {boot}, alpha {alpha}, seed {seed}"))
    cases.append(Case((rng.normal(3.0, 1.0, 60), 800, 0.05, 8), label="60 real-valued scores (not only 0/1)"))
    cases.append(Case((np.array([0.7]), 100, 0.05, 9), label="a single value: every resample is that value"))
    cases.append(Case((np.array([1.0, 0.0, 0.0, 1.0, 1.0]), 1, 0.05, 10), label="n_boot 1: low and high are the same mean"))
    cases.append(Case((np.zeros(25), 300, 0.2, 11), label="all wrong: the interval is (0, 0)"))
    cases.append(Case((rng.normal(-2.0, 5.0, 9), 777, 0.9, 12), label="9 negative-leaning scores, alpha 0.9: a narrow interval"))
    return cases


def _cases_redact():
    email, phone = r"[\w.+-]+@[\w-]+\.[\w.]+", r"\b\d{3}[-. ]\d{3}[-. ]\d{4}\b"
    return [
        Case(("Darn! Call 555-1234.", ["darn"], [r"\d{3}-\d{4}"], "[filtered]"), label="the OutputFilter docstring"),
        Case(("The monster hid. MONSTER! monsters?", ["monster"], [], "***"),
             label="case is ignored; 'monsters' is another word"),
        Case(("A first-class class, not an ass.", ["ass"], [], "#"), label="whole words only: not inside 'class'"),
        Case(("Lily's ball and Lilybell's kite", ["lily"], [], "[name]"), label="an apostrophe ends a word"),
        Case(("He was very\n  scared and afraid.", ["very scared", "afraid"], [], "[x]"),
             label="a phrase: its space matches any run of whitespace"),
        Case(("Mail tom@example.com or call 555-123-4567 now.", [], [email, phone], "[filtered]"),
             label="patterns only: an e-mail and a phone number"),
        Case(("Write to ANNA@Mail.org!", ["anna"], [email], "[filtered]"),
             label="a term inside a pattern's match: the overlapping matches merge into one"),
        Case(("dark dark dark", ["dark"], [], "[dark]"), label="three matches, separated by spaces"),
        Case(("Nothing to hide here.", ["monster"], [r"\d+"], "[filtered]"), label="no match: the text unchanged"),
        Case(("abc123def", [], [r"\d", r"c1"], "_"), label="overlapping matches merge ('c1' and '1'); touching ones ('2', '3') stay separate"),
        Case(("ab12", [], [r"[a-z]+", r"\d+"], "<>"), label="touching but not overlapping: two replacements"),
    ]


def _cases_probe():
    tok = _tokenizer()
    cases = [Case((_gpt(70, tok.vocab_size, 64), tok, "The {X} went to the",
                   {"cat": ["cat", "little cat"], "dog": ["dog", "big dog"]}, ["park.", "pond.", "garden."]),
                  label="two groups of two fillers, three completions"),
             Case((_gpt(71, tok.vocab_size, 64), tok, "{X} liked to",
                   {"she": ["Lily", "Mia"], "he": ["Tom", "Ben", "Sam"], "it": ["The dog"]},
                   ["read books.", "climb trees.", "sing songs."]),
                  label="three groups of different sizes, the placeholder first")]
    rng = random.Random(126)
    for n in range(4):
        fillers = ["Lily", "Tom", "the cat", "the dog", "a girl", "his mom"]
        rng.shuffle(fillers)
        cases.append(Case((_gpt(72 + n, tok.vocab_size, 64, scale=rng.choice([2.0, 8.0])), tok,
                           rng.choice(["Then {X} ran to the", "{X} felt very", "One day, {X} went to the"]),
                           {"a": fillers[:2], "b": fillers[2:4], "c": fillers[4:]}, rng.sample(_ENDINGS, 3)),
                          label="a random GPT, three groups"))
    cases.append(Case((_gpt(76, tok.vocab_size, 64), tok, "The {X} sat in the", {"x": ["cat"], "y": ["cat"]},
                       ["sun.", "pond."]), label="two groups with the same filler: gap 0, favours the first group"))
    cases.append(Case((_gpt(77, tok.vocab_size, 64), tok, "One day, {X} went to the", {"girl": ["a girl"], "boy": ["Tom"]},
                       ["park."]), label="one filler per group and a single completion"))
    cases.append(Case((_gpt(78, tok.vocab_size, 64, scale=4.0, pos_encoding="rope"), tok, "The dog and {X}",
                       {"cat": ["the cat", "Lily"], "mom": ["his mom"]}, ["ran to the pond.", "sun.", "dog", "came by."]),
                      label="rope, four completions, the placeholder last"))
    fillers = ["Lily", "Tom", "Mia", "Ben", "the cat", "the dog", "a girl", "his mom"]
    rng.shuffle(fillers)
    cases.append(Case((_gpt(79, tok.vocab_size, 64, scale=8.0), tok, "{X} felt very",
                       {"g1": fillers[:3], "g2": fillers[3:4], "g3": fillers[4:6], "g4": fillers[6:]},
                       ["sad.", "garden.", "sun."]), label="four groups of sizes 3, 1, 2, 2"))
    for c in cases:
        model, tok_, template, groups, completions = c.args
        for fillers in groups.values():
            for f in fillers:
                _fits(model, tok_, template.replace("{X}", f), completions)
    return cases


for _task in [
    Task("12.1", "the sliding-window plan", _window_plan, _cases_plan, compare=_plan,
         hint="each window scores the targets after those already scored; a window holds at most block_size "
              "tokens and starts stride after the previous one; stop when every target is scored"),
    Task("12.2", "perplexity with a sliding window", _sliding_perplexity, _cases_perplexity, compare=_scalar(1e-5),
         hint="follow the plan: one model call per window, log-softmax, the targets' log-probabilities after the "
              "skipped ones; perplexity is exp of the total over the number of scored targets"),
    Task("12.3", "scoring multiple-choice endings", _score_endings, _cases_scores, compare=_scores,
         hint="encode the context and each ending (with a leading space) separately; one model call on the "
              "concatenation minus its last token; the ending's scores are the log-probabilities at the positions "
              "that predict its tokens"),
    Task("12.4", "multiple-choice accuracy", _mc_accuracy, _cases_mc, compare=_scalar(1e-9, 1e-12),
         hint="score every record's endings; the prediction is the best score under the chosen normalisation "
              "(sum, per token or per character), the first on ties; the accuracy is the share of correct "
              "predictions"),
    Task("12.5", "a percentile bootstrap interval", _bootstrap_interval, _cases_bootstrap, compare=_interval,
         hint="resample indices with replacement n_boot times from a generator seeded with seed, all at once; "
              "take the mean of each resample; the interval is the alpha / 2 and 1 - alpha / 2 quantiles"),
    Task("12.6", "a redacting output filter", _redact, _cases_redact, compare=_text,
         hint="find every span first (terms as whole words, case-insensitive, any whitespace between their words; "
              "patterns case-insensitive), then merge overlapping spans, then replace each merged span once"),
    Task("12.7", "a bias probe", _bias_rows, _cases_probe, compare=_rows,
         hint="score the completions after the template filled with each filler; a group's value is the mean over "
              "its fillers; the gap is the largest group value minus the smallest; favours names the largest "
              "(the first on a tie)"),
]:
    register(_task)
