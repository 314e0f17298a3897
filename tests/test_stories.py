"""gptcourse.stories: the generated children's-story corpus and its exact log-probabilities.

Exactness is checked three ways: the parser (``logprob``) agrees with generation to 1e-9 and
finds exactly one derivation per story; changing one choice in a text moves the log-probability
by exactly the log-ratio of the two options; and enumerating every completion of a story's last
choices gives distinct texts whose probabilities sum to the probability of the shared prefix
(to 1e-9). Sizes are small: the whole file runs in a few seconds.
"""

from __future__ import annotations

import ast
import hashlib
import math
import random
import re
import unicodedata
from itertools import combinations

import pytest

from gptcourse import corpora, stories, stories_engine, stories_grammar
from gptcourse.corpora import CorpusError
from gptcourse.stories import SEPARATOR, Story
from gptcourse.tokenizer import CharTokenizer


@pytest.fixture(scope="module")
def sample() -> list[Story]:
    return stories.generate(2000, seed=11)


# --------------------------------------------------------------------------------------
# Generation: reproducible, varied, clean
# --------------------------------------------------------------------------------------


def test_same_seed_same_stories():
    assert stories.generate(50, seed=3) == stories.generate(50, seed=3)
    it = stories.iter_stories(seed=3)
    assert [next(it) for _ in range(50)] == stories.generate(50, seed=3)


def test_the_corpus_is_pinned_byte_for_byte():
    """Moving the grammar's tables out of the engine changed no story: the sha256 of 500 stories
    taken before the move (lessons' saved outputs and the benches' floors depend on them)."""
    digest = hashlib.sha256(stories.text(500, seed=0).encode()).hexdigest()
    assert digest == "439a991f63fb44cbcdae382c2136874d85b0e424e2434ecd0bf36d28a83a86b8"


def test_grammar_tables_stay_importable_from_stories():
    from gptcourse.stories import ADJ, COLOR, NAMES_F, TOY, T  # noqa: F401 (lessons use them)

    assert stories.TOY is stories_grammar.TOY and isinstance(stories.NAMES, stories_engine.Table)


def test_stories_modules_import_no_private_names():
    import gptcourse

    root = __import__("pathlib").Path(gptcourse.__file__).parent
    for name in ("stories.py", "stories_engine.py", "stories_grammar.py"):
        for node in ast.walk(ast.parse((root / name).read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert not [a.name for a in node.names if a.name.startswith("_")], name


def test_different_seeds_differ():
    a, b = stories.generate(20, seed=0), stories.generate(20, seed=1)
    assert sum(x.text == y.text for x, y in zip(a, b)) == 0


def test_generation_uses_no_global_random_state():
    random.seed(0)
    a = stories.generate(5, seed=2)
    random.seed(1)
    assert stories.generate(5, seed=2) == a
    state = random.getstate()
    stories.generate(5, seed=2)
    assert random.getstate() == state


def test_generate_rejects_bad_n():
    assert stories.generate(0) == []
    with pytest.raises(ValueError, match="n must be >= 0, got -1"):
        stories.generate(-1)
    for bad in (2.0, True):  # a wrong type is a TypeError
        with pytest.raises(TypeError, match="n must be an int"):
            stories.generate(bad)


def test_text_joins_stories_with_the_separator():
    t = stories.text(30, seed=4)
    parts = t.split(SEPARATOR)
    assert parts[-1] == "" and parts[:-1] == [s.text for s in stories.generate(30, seed=4)]
    assert stories.text(30, seed=4) is t  # cached


def test_text_is_clean(sample):
    for s in sample:
        t = s.text
        assert unicodedata.normalize("NFC", t) == t
        assert t.isascii() and all(ch == "\n" or 32 <= ord(ch) < 127 for ch in t)
        assert "  " not in t and SEPARATOR not in t
        assert all(line and line == line.strip() for line in t.split("\n"))
        assert t.endswith(" The end.") and t.count("The end.") == 1
        assert t.count('"') % 2 == 0
        assert 250 <= len(t) <= 1000, len(t)


def test_lengths_are_a_few_hundred_characters(sample):
    lengths = [len(s.text) for s in sample]
    assert 450 <= sum(lengths) / len(lengths) <= 700


def test_no_duplicates_and_few_near_duplicates(sample):
    """Word 5-gram shingles: Jaccard > 0.8 for < 1% of pairs (all pairs of 300 stories)."""
    assert len({s.text for s in sample}) == len(sample)

    def shingles(text):
        w = text.split()
        return {" ".join(w[i : i + 5]) for i in range(len(w) - 4)}

    sets = [shingles(s.text) for s in sample[:300]]
    high = sum(len(a & b) / len(a | b) > 0.8 for a, b in combinations(sets, 2))
    assert high / (300 * 299 / 2) < 0.01
    assert high <= 2


def test_vocabulary_is_small_and_covers_the_stories(sample):
    d = stories.describe()
    assert 300 <= d["vocabulary"] <= 1000 and d["plots"] == 6
    assert d["choice_tables"] > 50 and d["options"] > 3 * d["choice_tables"]
    used = {w.lower() for s in sample for w in re.findall(r"[A-Za-z]+", s.text)}
    assert used <= set(d["words"])


# --------------------------------------------------------------------------------------
# Consistency: the hero stays the hero, pronouns agree, the lost toy is the one found
# --------------------------------------------------------------------------------------

NAMES = set(stories.NAMES.texts)
OPENING_NAME = re.compile(r"named (\w+)[ .]|^(\w+) was a ")


def hero(text: str) -> str:
    m = OPENING_NAME.search(text.split(".")[0] + ".")
    return m.group(1) or m.group(2)


def test_the_hero_named_first_stays_the_hero(sample):
    """The opening names only the hero, who is named again in every paragraph but the last."""
    for s in sample:
        h = hero(s.text)
        paragraphs = s.text.split("\n")
        assert {n for n in NAMES if re.search(rf"\b{n}\b", paragraphs[0])} == {h}, s.text
        assert all(re.search(rf"\b{h}\b", p) for p in paragraphs[:-1]), s.text
        assert len(re.findall(rf"\b{h}\b", s.text)) >= 3


@pytest.mark.parametrize("kid, other", [("girl", r"\b(he|him|his|himself)\b"), ("boy", r"\b(she|her|hers|herself)\b")])
def test_pronouns_agree_with_the_hero(sample, kid, other):
    """Stories with only a girl (boy) and women (men) in them never use the other pronouns."""
    male = set(stories.NAMES_M.texts) | {"Dad", "Grandpa", "Mr. Owl", "big dog"}
    female = set(stories.NAMES_F.texts) | {"Mom", "Grandma", "Mrs. Goose", "sister", "'s mom"}
    forbid = male if kid == "girl" else female
    checked = 0
    for s in sample:
        if f" {kid} named " not in s.text.split("\n")[0] or any(re.search(rf"\b{x}\b", s.text) for x in forbid):
            continue
        checked += 1
        assert not re.search(other, s.text, flags=re.IGNORECASE), s.text
    assert checked >= 20


def test_the_lost_toy_is_the_one_found(sample):
    colors, toys = "|".join(stories.COLOR.texts), "|".join(stories.TOY.texts)
    setup = re.compile(rf"(?:had a|favorite toy was a|gave (?:him|her) a) ({colors}) ({toys})\b")
    checked = 0
    for s in sample:
        m = setup.search(s.text)
        if not m:
            continue
        checked += 1
        toy = m.group(2)
        last = s.text.split("\n")[-1]
        assert re.search(rf"\b(his|her) {toy}\b", last), s.text
        assert not any(re.search(rf"\b{t}\b", s.text) for t in stories.TOY.texts if t != toy and t not in toy)
    assert checked >= 100


# --------------------------------------------------------------------------------------
# Exact log-probabilities
# --------------------------------------------------------------------------------------


def test_logprob_round_trip_is_exact(sample):
    for s in sample[:600]:
        lps = stories.derivations(s.text)
        assert len(lps) == 1  # unambiguous: one derivation
        assert lps[0] == pytest.approx(s.logprob, abs=1e-9)
        assert stories.logprob(s.text) == pytest.approx(s.logprob, abs=1e-9)
        assert -200 < s.logprob < 0


def first_sentence_swap(text: str, old: str, new: str) -> str:
    head, dot, rest = text.partition(".")
    return head.replace(old, new, 1) + dot + rest


def test_changing_one_choice_changes_logprob_by_the_option_ratio(sample):
    """"a little" -> "a small" in the first sentence: exactly log(3/8) (weights 3 and 8)."""
    adj = dict(zip(stories.ADJ.texts, stories.ADJ.weights))
    done = 0
    for s in sample:
        if "a little " not in s.text.partition(".")[0]:
            continue
        swapped = first_sentence_swap(s.text, "a little ", "a small ")
        assert stories.logprob(swapped) == pytest.approx(
            s.logprob + math.log(adj["small"] / adj["little"]), abs=1e-9
        )
        done += 1
    assert done >= 100


def test_impossible_texts_get_minus_infinity(sample):
    s = next(x for x in sample if x.text.count(hero(x.text)) >= 3)
    h = hero(s.text)
    other = next(n for n in stories.NAMES_F.texts + stories.NAMES_M.texts if n not in s.text)
    i = s.text.rfind(h)
    bad = [
        "",
        s.text[:-1],  # no final period
        s.text.removesuffix(" The end."),
        s.text + " The end.",
        s.text + SEPARATOR,
        s.text.replace(" ", "  ", 1),
        s.text + " ",
        s.text[:i] + other + s.text[i + len(h) :],  # the hero renamed once, not everywhere
        s.text.replace(".", "!", 1),
        s.text.lower(),
        "The end.",
    ]
    for t in bad:
        assert stories.logprob(t) == -math.inf, t


def test_pronoun_swapped_once_is_impossible(sample):
    swaps = {" he ": " she ", " she ": " he ", " his ": " her ", " him ": " her "}
    done = 0
    for s in sample[:300]:
        for old, new in swaps.items():
            if old in s.text:
                i = s.text.rfind(old)
                assert stories.logprob(s.text[:i] + new + s.text[i + len(old) :]) == -math.inf
                done += 1
                break
    assert done >= 100


def test_consistent_renaming_gives_another_finite_logprob(sample):
    """Renaming the hero everywhere is another story: finite, and its own probability."""
    s = next(x for x in sample if hero(x.text) == "Tom" and "Ned" not in x.text)
    renamed = re.sub(r"\bTom\b", "Ned", s.text)
    lp = stories.logprob(renamed)
    assert math.isfinite(lp) and lp < s.logprob  # Ned (weight 2) is rarer than Tom (9)


def test_logprob_rejects_non_text():
    with pytest.raises(TypeError):
        stories.logprob(b"The end.")  # type: ignore[arg-type]


class _Script(stories_engine.Writer):
    """A writer that takes its choices from ``script`` and, past it, forks every option."""

    def __init__(self, script, record=None):
        super().__init__(rng=record)
        self.script, self.path, self.forks, self.lps = script, [], [], []

    def _index(self, t):
        k = len(self.path)
        if self.rng is not None:  # recording a sampled derivation
            i = super()._index(t)
        elif k < len(self.script):
            i = self.script[k]
        else:
            i = 0
            self.forks.extend(self.path + [j] for j in range(1, len(t)))
        self.path.append(i)
        self.lps.append(t.logp[i])
        return i


def completions(prefix, cap):
    """Every (text, logprob) that continues the choices ``prefix``; None if more than ``cap``."""
    out, todo = [], [list(prefix)]
    while todo:
        w = _Script(todo.pop())
        stories_grammar.story(w)
        out.append(("".join(w.out), w.lp))
        todo.extend(w.forks)
        if len(out) > cap:
            return None
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_completions_of_a_prefix_sum_to_its_probability(seed):
    """Fix a story's first choices; enumerate all endings: distinct texts, total = P(prefix)."""
    w = _Script([], record=random.Random(seed))
    stories_grammar.story(w)
    path, lps = w.path, w.lps
    best = None
    for m in range(1, len(path)):  # the most trailing choices whose subtree has <= 1500 leaves
        leaves = completions(path[: len(path) - m], cap=1500)
        if leaves is None:
            break
        best = (m, leaves)
    m, leaves = best
    assert m >= 4 and len(leaves) >= 20
    prefix_lp = math.fsum(lps[: len(path) - m])
    total = math.fsum(math.exp(lp - prefix_lp) for _, lp in leaves)
    assert total == pytest.approx(1.0, abs=1e-9)
    assert len({t for t, _ in leaves}) == len(leaves)  # different choices, different texts
    for t, lp in random.Random(seed).sample(leaves, 40):
        assert stories.logprob(t) == pytest.approx(lp, abs=1e-9)


def test_every_choice_table_is_a_distribution():
    for t in stories_engine.TABLES:
        assert math.fsum(t.probs) == pytest.approx(1.0, abs=1e-12)
        assert all(p > 0 for p in t.probs) and t.cum[-1] == 1.0
        assert math.fsum(math.exp(lp) for lp in t.logp) == pytest.approx(1.0, abs=1e-12)
    assert any(len(set(t.probs)) > 1 for t in stories_engine.TABLES)  # skewed, not all uniform


# --------------------------------------------------------------------------------------
# Entropy
# --------------------------------------------------------------------------------------


def test_entropy_totals(sample):
    e = stories.entropy(sample)
    assert e.stories == len(sample)
    assert e.characters == sum(len(s.text) + len(SEPARATOR) for s in sample)
    assert e.nats == pytest.approx(-sum(s.logprob for s in sample), rel=1e-12)
    assert e.nats_per_char == pytest.approx(e.nats / e.characters, rel=1e-12)
    assert e.nats_per_story == pytest.approx(e.nats / e.stories, rel=1e-12)
    assert e.per_token(e.characters) == pytest.approx(e.nats_per_char, rel=1e-12)
    assert 0 < e.stderr_nats_per_char < 0.01 * e.nats_per_char


def test_entropy_estimate_is_stable_across_seeds():
    a, b = stories.entropy(n=2000, seed=1), stories.entropy(n=2000, seed=2)
    assert abs(a.nats_per_char - b.nats_per_char) < 3 * math.hypot(a.stderr_nats_per_char, b.stderr_nats_per_char)
    assert 0.02 < a.nats_per_char < 0.2 and 15 < a.nats_per_story < 60


def test_floor_per_token_with_characters_is_nats_per_char(sample):
    tok = CharTokenizer.from_text(stories.text(2000, seed=11))
    assert tok.eot_id is None
    assert stories.floor_per_token(sample, tok) == pytest.approx(stories.entropy(sample).nats_per_char, rel=1e-12)


def test_floor_per_token_counts_one_end_of_text_per_story():
    class Words:
        eot_id = 0

        def encode(self, text):
            return text.split(" ")

    few = stories.generate(10, seed=5)
    tokens = sum(len(s.text.split(" ")) + 1 for s in few)
    assert stories.floor_per_token(few, Words()) == pytest.approx(-sum(s.logprob for s in few) / tokens)


# --------------------------------------------------------------------------------------
# As a corpus
# --------------------------------------------------------------------------------------


def test_corpora_load_text_stories():
    assert "stories" in corpora.names() and corpora.names() == sorted(corpora.names())
    t = corpora.load_text("stories")
    assert t == stories.text() and t.count(SEPARATOR) == stories.DEFAULT_STORIES
    assert 2_000_000 < len(t) < 10_000_000
    assert "grammar" in corpora.description("stories")


def test_corpora_path_stories_explains_it_is_generated():
    with pytest.raises(CorpusError) as info:
        corpora.path("stories")
    msg = str(info.value)
    assert "generated in memory" in msg and "load_text" in msg and "gptcourse.stories" in msg
