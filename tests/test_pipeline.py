"""gptcourse.data.clean / dedup / prepare: the text pipeline from documents to shards.

Fixed seeds throughout. MinHash tolerances come from its standard error: the fraction of equal
entries among ``k`` permutations is a binomial mean with standard deviation
``sqrt(J (1 - J) / k)`` around the true Jaccard similarity ``J``.
"""

from __future__ import annotations

import json
import math

import datasets
import numpy as np
import pytest
from datasets import Dataset

from gptcourse import corpora
from gptcourse.data import TokenShards
from gptcourse.data.clean import (
    DEFAULT_BLOCKLIST,
    Blocklist,
    QualityFilter,
    check_duplicate_lines,
    check_length,
    check_symbols,
    check_top_ngrams,
    check_word_length,
    normalize,
)
from gptcourse.data.dedup import (
    LSH,
    MinHash,
    dedup_key,
    exact_duplicates,
    jaccard,
    near_duplicates,
    optimal_bands,
)
from gptcourse.data.prepare import (
    Report,
    SourceError,
    clean_dataset,
    load_documents,
    prepare,
    split_mask,
    tokenize_to_shards,
)
from gptcourse.tokenizer import CharTokenizer, Tokenizer, get_tokenizer

# ordinary English prose, 57 words: passes every Gopher rule
PROSE = (
    "The river ran past the old mill where the miller kept his grain. Every morning he "
    "walked along the bank, counted the boats, and greeted the fishermen who sold him "
    "their catch. In winter the water froze, and the children skated from the bridge to "
    "the church while their parents watched from the warm kitchens of the village houses."
)


@pytest.fixture(autouse=True)
def _quiet_datasets():
    datasets.disable_progress_bars()
    yield
    datasets.enable_progress_bars()


def _words(n: int, start: int = 0, prefix: str = "w") -> list[str]:
    return [f"{prefix}{i}" for i in range(start, start + n)]


# --------------------------------------------------------------------------------------
# normalize
# --------------------------------------------------------------------------------------


def test_normalize_composes_unicode_nfc():
    assert normalize("Cafe\u0301") == "Caf\u00e9"
    assert normalize("e\u0301") == normalize("\u00e9")


def test_normalize_composes_across_a_dropped_invisible_character():
    # soft hyphen / zero-width space between "e" and its combining accent
    assert normalize("cafe\u00ad\u0301") == normalize("cafe\u200b\u0301") == "caf\u00e9"
    assert normalize(normalize("cafe\u00ad\u0301")) == normalize("cafe\u00ad\u0301")


def test_normalize_drops_control_characters_but_keeps_newline_and_tab():
    assert normalize("a\x00b\x07c\x1bd\x7fe\u200bf\ufeffg") == "abcdefg"
    assert normalize("a\tb\nc") == "a\tb\nc"
    assert normalize("non\u00a0breaking\u2009thin\u3000wide") == "non breaking thin wide"


def test_normalize_line_ends_trailing_space_and_blank_lines():
    assert normalize("one \r\ntwo\t\rthree") == "one\ntwo\nthree"
    assert normalize("a\n\n\n\n\nb\n \n\t\n\nc") == "a\n\nb\n\nc"
    assert normalize("  \n  indented stays\n\n") == "indented stays"
    assert normalize("    code:\n        x = 1") == "code:\n        x = 1"


def test_normalize_is_idempotent_on_a_real_corpus():
    text = corpora.load_text("tinyshakespeare")[:50_000]
    once = normalize(text)
    assert normalize(once) == once
    assert once.startswith("First Citizen:\nBefore we proceed")


# --------------------------------------------------------------------------------------
# quality rules: one passing and one failing text each
# --------------------------------------------------------------------------------------


def test_length_rule_counts_chars_and_words():
    assert check_length(PROSE, min_words=50, max_words=100) is None
    assert check_length("only four words here", min_words=5) == "too_few_words"
    assert check_length(" ".join(["word"] * 11), max_words=10) == "too_many_words"
    assert check_length("abc", min_chars=4) == "too_few_chars"
    assert check_length("x" * 11, max_chars=10) == "too_many_chars"


def test_symbol_rule_limits_hashes_and_ellipses():
    assert check_symbols(PROSE) is None
    tags = "great day #sun #beach #fun #summer #love #happy at the sea..."
    assert check_symbols(tags) == "symbol_ratio"  # 7 symbols / 10 words > 0.1


def test_alphabetic_rule_needs_words_with_letters():
    assert check_symbols("the price was 12 dollars") is None  # 4 of 5 words: 0.8
    assert check_symbols("12 34 56 78 90 items") == "non_alphabetic"  # 1 of 6


def test_word_length_rule_keeps_mean_between_3_and_10():
    assert check_word_length(PROSE) is None
    assert check_word_length("a b c d e f") == "word_length"
    assert check_word_length("supercalifragilistic antidisestablishment") == "word_length"


def test_duplicate_lines_rule():
    lines = [f"line number {i} says something" for i in range(10)]
    assert check_duplicate_lines("\n".join(lines)) is None
    repeated = "\n".join(lines[:5] + ["buy now"] * 5)  # 4 of 10 lines repeat an earlier one
    assert check_duplicate_lines(repeated) == "duplicate_lines"


def test_top_ngram_rule_does_not_depend_on_which_tied_ngram_comes_first():
    # "a b" and "longword another" both occur twice; the longer covers 30 of 92 characters
    first = ("a b river stone longword another quiet garden a b silver letter longword another "
             "morning window yellow bridge")
    second = ("longword another river stone a b quiet garden longword another silver letter a b "
              "morning window yellow bridge")
    assert check_top_ngrams(first) == check_top_ngrams(second) == "repeated_ngram"


def test_top_ngram_rule_counts_characters_of_the_most_repeated_ngram():
    assert check_top_ngrams(PROSE) is None
    spam = "click here " * 10 + PROSE  # "click here" covers 90 of ~330 word characters
    assert check_top_ngrams(spam) == "repeated_ngram"
    # an n-gram seen once is no repetition, however short the text
    assert check_top_ngrams("Speak, speak.") is None


def test_quality_filter_reports_the_first_failing_rule():
    qf = QualityFilter()
    assert qf(PROSE) is None  # 57 words
    assert qf("short text") == "too_few_words"
    assert qf(("#tag " * 60).strip()) == "symbol_ratio"
    assert qf(PROSE + " #a #b #c #d #e #f #g #h") == "symbol_ratio"  # 8 of 65 words
    short = QualityFilter.short_documents()
    assert short("All:\nSpeak, speak.") is None
    assert short("GLOUCESTER:") == "word_length"  # a speaker's name alone


def test_quality_filter_validates_thresholds():
    with pytest.raises(ValueError, match="min_words"):
        QualityFilter(min_words=10, max_words=5)
    with pytest.raises(ValueError, match="fraction"):
        QualityFilter(min_alpha_fraction=1.5)


def test_blocklist_matches_whole_words_ignoring_case():
    bl = Blocklist(["ass", "bad word"])
    assert bl("A first-class answer to assess.") is None
    assert bl("What an ASS!") == "blocklist"
    assert bl("a bad   word here") == "blocklist"  # phrases match across spacing
    assert bl("badword") is None
    assert bl.find("Ass, ass and class") == ["Ass", "ass"]


def test_blocklist_from_file_and_default(tmp_path):
    f = tmp_path / "terms.txt"
    f.write_text("# my list\nfoo\n\nbar baz  # a phrase\n", encoding="utf-8")
    bl = Blocklist.from_file(f)
    assert bl.terms == ("bar baz", "foo")
    assert bl("the Foo.") == "blocklist" and bl("food") is None
    assert Blocklist.coerce(str(f)).terms == bl.terms
    assert Blocklist.coerce("default") is DEFAULT_BLOCKLIST and len(DEFAULT_BLOCKLIST) > 5
    assert DEFAULT_BLOCKLIST(PROSE) is None


# --------------------------------------------------------------------------------------
# dedup
# --------------------------------------------------------------------------------------


def test_exact_dedup_ignores_case_spacing_and_unicode_form():
    texts = ["Hello  World", "hello world\n", "Caf\u00e9 au lait", "Cafe\u0301 au  lait",
             "Hello, World"]
    assert dedup_key(texts[0]) == dedup_key(texts[1])
    assert exact_duplicates(texts) == [1, 3]


def test_minhash_estimates_jaccard_within_its_standard_error():
    # shingles = single words (ngram=1), so two word sets with a known overlap have a known J
    k = 256
    mh = MinHash(num_perm=k, ngram=1, seed=0)
    rng = np.random.default_rng(0)
    for overlap in (20, 67, 89):  # J = o / (200 - o): 0.11, 0.50, 0.80
        errors = []
        for _ in range(20):
            base = int(rng.integers(0, 10**6))
            a = _words(100, base)
            b = _words(100, base + 100 - overlap)
            true = jaccard(mh.shingles(" ".join(a)), mh.shingles(" ".join(b)))
            assert true == pytest.approx(overlap / (200 - overlap))
            est = MinHash.similarity(mh.signature(" ".join(a)), mh.signature(" ".join(b)))
            errors.append(est - true)
        sd = math.sqrt(true * (1 - true) / k)
        assert max(abs(e) for e in errors) <= 4 * sd  # each estimate: 4 standard errors
        assert abs(np.mean(errors)) <= 4 * sd / math.sqrt(20)  # unbiased on average


def test_minhash_shingles_default_ngram_5_and_known_jaccard():
    mh = MinHash(num_perm=128, ngram=5, seed=1)
    a = _words(204)
    b = a[:194] + _words(10, prefix="x")  # 190 shared shingles of 200 + 10 new: J = 190/210
    true = jaccard(mh.shingles(" ".join(a)), mh.shingles(" ".join(b)))
    assert true == pytest.approx(190 / 210)
    est = MinHash.similarity(mh.signature(" ".join(a)), mh.signature(" ".join(b)))
    assert abs(est - true) <= 4 * math.sqrt(true * (1 - true) / 128)


def test_universal_hash_is_exact_modulo_the_mersenne_prime():
    from gptcourse.data.dedup import _permute

    p = (1 << 61) - 1
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.integers(0, p, 200, dtype=np.uint64),
                        np.array([0, 1, p - 1], dtype=np.uint64)])
    a = np.concatenate([rng.integers(1, p, 30, dtype=np.uint64), np.array([p - 1], np.uint64)])
    b = np.concatenate([rng.integers(0, p, 30, dtype=np.uint64), np.array([p - 1], np.uint64)])
    got = _permute(x, a, b)
    want = [[(int(ai) * int(xi) + int(bi)) % p for ai, bi in zip(a, b)] for xi in x]
    assert got.tolist() == want  # Python's big ints as the reference: no overflow anywhere


def test_minhash_is_seeded_and_ignores_punctuation_and_case():
    text = "The cat sat on the mat, and the dog sat on the log."
    a = MinHash(seed=3).signature(text)
    assert np.array_equal(a, MinHash(seed=3).signature(text.upper().replace(",", " ;")))
    assert not np.array_equal(a, MinHash(seed=4).signature(text))
    assert MinHash().signature("").tolist() == [MinHash.EMPTY] * 128


def test_lsh_s_curve_and_band_choice():
    lsh = LSH(20, 5)
    assert lsh.threshold == pytest.approx((1 / 20) ** (1 / 5))
    assert lsh.probability(0.8) == pytest.approx(1 - (1 - 0.8**5) ** 20)
    assert optimal_bands(0.8, 128) == (9, 13)
    b, r = optimal_bands(0.5, 128)
    assert b * r <= 128 and 0.4 < (1 / b) ** (1 / r) < 0.6


def _pairs_with_jaccard(n_pairs: int, changed: int, prefix: str) -> list[str]:
    """``n_pairs`` (original, edited) pairs of 204-word texts whose last ``changed`` words are
    replaced: J = (200 - changed) / (200 + changed) over 5-word shingles."""
    texts = []
    for p in range(n_pairs):
        a = _words(204, prefix=f"{prefix}{p}_")
        b = a[: 204 - changed] + _words(changed, prefix=f"{prefix}{p}_new")
        texts += [" ".join(a), " ".join(b)]
    return texts


def test_near_duplicates_catch_pairs_at_0_9_and_not_at_0_3():
    # LSH for 0.8 with verification: a pair at J=0.905 is a candidate with probability 0.9993
    # and its estimate falls below 0.8 with probability ~1e-4; a pair at J=0.30 is a candidate
    # with probability 3e-5 and would fail verification anyway
    high = _pairs_with_jaccard(50, 10, "h")  # J = 190/210 = 0.905
    low = _pairs_with_jaccard(50, 108, "l")  # J = 92/308 = 0.299
    drop = near_duplicates(high + low, threshold=0.8, num_perm=128, ngram=5, seed=0)
    assert drop == list(range(1, 100, 2))  # every edited copy at 0.9, nothing at 0.3


def test_near_duplicates_keep_the_first_of_a_cluster():
    base = _words(300)
    texts = [" ".join(base[:-k] + _words(k, prefix="z")) if k else " ".join(base)
             for k in (0, 3, 6)] + [" ".join(_words(300, prefix="other"))]
    assert near_duplicates(texts) == [1, 2]


# --------------------------------------------------------------------------------------
# clean_dataset
# --------------------------------------------------------------------------------------


SENTENCES = [
    "The river ran past the old mill where the miller kept his grain and counted the boats.",
    "In winter the children skated from the bridge to the church while their parents watched.",
    "A small red fox crept through the tall grass looking for mice near the old stone wall.",
    "The library opened at nine and the librarian sorted the returned books by their colour.",
]


def _messy_dataset() -> tuple[Dataset, list[str]]:
    a, b, c, d = SENTENCES
    texts = [
        a,  # kept
        "   \n\t ",  # empty
        "too short",  # too_few_words (min_words=5 below)
        b.replace("parents", "shitty parents"),  # blocklist
        c,  # kept
        c.upper(),  # exact duplicate of the previous one (case)
        a.replace("boats", "ships"),  # near duplicate of the first: J = 12/14 over 5-grams
        d + "\r\n\r\n\r\n\r\n",  # kept (normalized)
    ]
    return Dataset.from_dict({"text": texts, "n": list(range(len(texts)))}), texts


def test_clean_dataset_drops_by_rule_and_counts_add_up():
    ds, texts = _messy_dataset()
    out, report = clean_dataset(ds, quality=QualityFilter(min_words=5), threshold=0.7,
                                progress=False)
    assert out["n"] == [0, 4, 7]
    assert out["text"][2] == normalize(texts[7])
    d = report.dropped
    assert (d["empty"], d["too_few_words"], d["blocklist"], d["exact_duplicate"],
            d["near_duplicate"]) == (1, 1, 1, 1, 1)
    assert report.documents_in == report.documents_out + sum(d.values()) == 8
    assert report.characters_in == sum(len(t) for t in texts)
    dropped_chars = sum(c for _, _, c in report.steps)
    assert report.characters_normalized == report.characters_out + dropped_chars
    assert report.characters_out == sum(len(t) for t in out["text"])
    table = report.table()
    assert "near_duplicate" in table and "output" in table
    assert Report.from_dict(report.to_dict()) == report


def test_clean_dataset_options_switch_steps_off():
    ds, _ = _messy_dataset()
    out, report = clean_dataset(ds, quality=None, blocklist=None, exact_dedup=False,
                                near_dedup=False, progress=False)
    assert out["n"] == [0, 2, 3, 4, 5, 6, 7]  # only the empty text goes
    assert [s[0] for s in report.steps] == ["empty"]


def test_clean_dataset_in_two_processes_gives_the_same_result():
    text = corpora.load_text("tinyshakespeare")[:150_000]
    docs = [p for p in text.split("\n\n") if p]
    ds = Dataset.from_dict({"text": docs + docs[:50]})  # 50 exact duplicates at the end
    one, r1 = clean_dataset(ds, quality=QualityFilter.short_documents(), num_proc=1,
                            batch_size=200, progress=False)
    two, r2 = clean_dataset(ds, quality=QualityFilter.short_documents(), num_proc=2,
                            batch_size=200, progress=False)
    assert r1 == r2 and one["text"] == two["text"]
    assert r1.dropped["exact_duplicate"] >= 50


def test_clean_dataset_nulls_logprob_of_changed_texts():
    ds = Dataset.from_dict({"text": ["clean text here", "dirty  \r\ntext"],
                            "logprob": [-1.0, -2.0]})
    out, _ = clean_dataset(ds, quality=None, near_dedup=False, progress=False)
    assert out["logprob"] == [-1.0, None]


# --------------------------------------------------------------------------------------
# tokenize_to_shards
# --------------------------------------------------------------------------------------


def _read_split(folder, split):
    ts = TokenShards(folder, split)
    return ts, ts.read(0, len(ts)).tolist()


def test_shards_round_trip_with_eot_before_each_document(tmp_path):
    docs = ["First document.", "Second one, with <|endoftext|> as plain text.", "Third."]
    meta = tokenize_to_shards(Dataset.from_dict({"text": docs}), "gpt2", tmp_path,
                              val_fraction=0, progress=False)
    ts, ids = _read_split(tmp_path, "train")
    tok = ts.tokenizer()
    assert ids.count(50256) == 3 and ids[0] == 50256
    assert tok.decode(ids) == "".join("<|endoftext|>" + d for d in docs)
    assert meta["dtype"] == "uint16" and list(meta["splits"]) == ["train"]
    stats = meta["split_stats"]["train"]
    assert stats == {"documents": 3, "characters": sum(map(len, docs)), "nats": None}
    assert meta["tokenizer"]["name"] == "gpt2" and meta["tokenizer"]["eot_id"] == 50256


def test_shards_without_eot_put_blank_lines_between_documents(tmp_path):
    docs = ["ab c", "ca b", "bb"]
    tok = CharTokenizer("abc \n")
    tokenize_to_shards(Dataset.from_dict({"text": docs}), tok, tmp_path, val_fraction=0,
                       progress=False)
    ts, ids = _read_split(tmp_path, "train")
    assert ts.tokenizer().decode(ids) == "ab c\n\nca b\n\nbb"
    assert (tmp_path / "tokenizer.json").is_file()


class _WideTokenizer(Tokenizer):
    """Characters shifted past 65,535: a vocabulary that needs uint32."""

    name = "wide"

    @property
    def vocab_size(self) -> int:
        return 70_000

    @property
    def eot_id(self) -> int:
        return 69_999

    def encode(self, text, allowed_special=()):
        return [65_536 + ord(c) for c in text]

    def decode(self, ids):
        return "".join("|" if i == 69_999 else chr(i - 65_536) for i in ids)


def test_shard_dtype_is_uint16_or_uint32_by_vocabulary(tmp_path):
    ds = Dataset.from_dict({"text": ["hi", "yo"]})
    meta = tokenize_to_shards(ds, _WideTokenizer(), tmp_path / "wide", val_fraction=0,
                              progress=False)
    assert meta["dtype"] == "uint32"
    _, ids = _read_split(tmp_path / "wide", "train")
    assert _WideTokenizer().decode(ids) == "|hi|yo"
    meta = tokenize_to_shards(ds, "gpt2", tmp_path / "gpt2", val_fraction=0, progress=False)
    assert meta["dtype"] == "uint16"


def test_num_proc_2_writes_byte_identical_shards(tmp_path):
    text = corpora.load_text("tinyshakespeare")[:200_000]
    ds = Dataset.from_dict({"text": [p for p in text.split("\n\n") if p]})
    metas = []
    for n in (1, 2):
        metas.append(tokenize_to_shards(ds, "gpt2", tmp_path / str(n), num_proc=n,
                                        batch_size=100, shard_tokens=20_000, progress=False))
    assert metas[0]["splits"] == metas[1]["splits"]  # token counts and sha256 of every shard
    for f in sorted((tmp_path / "1").glob("*.bin")):
        assert f.read_bytes() == (tmp_path / "2" / f.name).read_bytes()


def test_validation_split_is_a_stable_seeded_draw():
    texts = [f"document number {i}" for i in range(4000)]
    mask = split_mask(texts, 0.1, seed=0)
    assert abs(mask.mean() - 0.1) < 4 * math.sqrt(0.1 * 0.9 / 4000)  # binomial, 4 sd
    order = np.random.default_rng(0).permutation(4000)
    shuffled = split_mask([texts[i] for i in order], 0.1, seed=0)
    assert np.array_equal(shuffled, mask[order])  # depends on the text, not its position
    assert not np.array_equal(split_mask(texts, 0.1, seed=1), mask)
    assert split_mask(["a", "b"], 0.01).tolist().count(True) == 1  # never an empty split


def test_val_split_holds_the_drawn_documents_in_order(tmp_path):
    docs = [f"Story {i}: the fox ran." for i in range(60)]
    tokenize_to_shards(Dataset.from_dict({"text": docs}), "gpt2", tmp_path,
                       val_fraction=0.2, seed=5, progress=False)
    is_val = split_mask(docs, 0.2, seed=5)
    tok = get_tokenizer("gpt2")
    for split, pick in (("train", ~is_val), ("val", is_val)):
        ts, ids = _read_split(tmp_path, split)
        assert ts.documents == int(pick.sum())
        want = [d for d, p in zip(docs, pick) if p]
        assert tok.decode(ids) == "".join("<|endoftext|>" + d for d in want)


def test_existing_shards_need_overwrite(tmp_path):
    ds = Dataset.from_dict({"text": ["a b", "c d"]})
    tokenize_to_shards(ds, "gpt2", tmp_path, val_fraction=0, progress=False)
    with pytest.raises(Exception, match="overwrite"):
        tokenize_to_shards(ds, "gpt2", tmp_path, val_fraction=0, progress=False)
    tokenize_to_shards(ds, "gpt2", tmp_path, val_fraction=0, progress=False, overwrite=True)


# --------------------------------------------------------------------------------------
# load_documents and prepare
# --------------------------------------------------------------------------------------


def test_load_registered_corpora_as_documents():
    ds = load_documents("tinyshakespeare")
    assert len(ds) == 7222 and ds[0]["text"].startswith("First Citizen:\nBefore")
    sms = load_documents("sms-spam")
    assert len(sms) == 5574 and not sms[0]["text"].startswith(("ham\t", "spam\t"))
    assert len(load_documents("the-verdict", sample_by="document")) == 1


def test_load_jsonl_with_another_text_column(tmp_path):
    f = tmp_path / "docs.jsonl"
    f.write_text("\n".join(json.dumps({"body": f"doc {i}", "id": i}) for i in range(5)),
                 encoding="utf-8")
    ds = load_documents(f, text_column="body", cache_dir=tmp_path / "cache")
    assert ds["text"] == [f"doc {i}" for i in range(5)] and "id" in ds.column_names
    with pytest.raises(SourceError, match="no column 'content'"):
        load_documents(f, text_column="content", cache_dir=tmp_path / "cache")


def test_load_txt_folder_by_paragraph_or_document(tmp_path):
    folder = tmp_path / "books"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("Para one.\n\nPara two.\n", encoding="utf-8")
    (folder / "sub" / "b.txt").write_text("Para three.", encoding="utf-8")
    (folder / ".hidden.txt").write_text("skip me", encoding="utf-8")
    by_par = load_documents(folder, cache_dir=tmp_path / "c1")
    assert sorted(t.strip() for t in by_par["text"]) == ["Para one.", "Para three.",
                                                         "Para two."]
    by_doc = load_documents(folder, sample_by="document", cache_dir=tmp_path / "c2")
    assert len(by_doc) == 2
    assert len(load_documents(str(folder / "*.txt"), cache_dir=tmp_path / "c3")) == 2


def test_empty_file_is_a_clear_error_not_a_datasets_traceback(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match="empty.txt is empty \\(0 bytes\\)"):
        prepare(empty, tmp_path / "out", tokenizer="char", verbose=False)
    (tmp_path / "more.txt").write_text("Some words.\n", encoding="utf-8")  # one empty file is fine
    assert load_documents(tmp_path, cache_dir=tmp_path / "c")["text"] == ["Some words.\n"]


LATIN1 = "Caf\u00e9 au lait.\n\nNa\u00efve r\u00e9sum\u00e9.\n".encode("latin-1")


@pytest.mark.parametrize("streaming", [False, True])
def test_latin1_file_names_the_file_the_byte_and_the_fix(tmp_path, streaming):
    f = tmp_path / "latin.txt"
    f.write_bytes(LATIN1)
    with pytest.raises(SourceError) as err:
        prepare(f, tmp_path / "out", tokenizer="char", streaming=streaming, verbose=False)
    message = str(err.value)
    assert f"{f} is not valid utf-8: byte 3 is b'\\xe9 au'" in message
    assert "--encoding latin-1" in message and "\n" not in message


def test_encoding_option_reads_latin1_text(tmp_path):
    f = tmp_path / "latin.txt"
    f.write_bytes(LATIN1)
    ds = load_documents(f, encoding="latin-1", cache_dir=tmp_path / "c")
    assert [t.strip() for t in ds["text"]] == ["Caf\u00e9 au lait.", "Na\u00efve r\u00e9sum\u00e9."]
    with pytest.raises(SourceError, match="unknown encoding 'klingon'"):
        load_documents(f, encoding="klingon", cache_dir=tmp_path / "c")


def test_prepare_removes_what_a_killed_prepare_left(tmp_path):
    out = tmp_path / "out"
    (out / ".cache-k1ll3d" / "arrow").mkdir(parents=True)
    (out / ".train_000000.bin.x1.part").write_bytes(b"\x00")
    prepare("stories", out, tokenizer="char", max_documents=20, clean=False, verbose=False)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_arguments_of_the_wrong_type_are_type_errors_before_any_work(tmp_path):
    with pytest.raises(TypeError, match="max_documents must be an int, got 20.0"):
        prepare("stories", tmp_path / "out", tokenizer="char", max_documents=20.0, verbose=False)
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\), got 1.0"):
        prepare("stories", tmp_path / "out", tokenizer="char", val_fraction=1.0, verbose=False)
    assert not (tmp_path / "out").exists()
    ds = Dataset.from_dict({"text": ["a b", "c d"]})
    with pytest.raises(TypeError, match="batch_size must be an int, got '8'"):
        tokenize_to_shards(ds, CharTokenizer.from_text("abcd "), tmp_path / "s", batch_size="8")
    with pytest.raises(TypeError, match="val_fraction must be a number, got None"):
        tokenize_to_shards(ds, CharTokenizer.from_text("abcd "), tmp_path / "s", val_fraction=None)
    with pytest.raises(TypeError, match="num_proc must be an int, got True"):
        clean_dataset(ds, num_proc=True, progress=False)


def test_unknown_tokenizer_fails_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="unknown tokenizer 'nope'"):
        prepare("tinyshakespeare", tmp_path / "out", tokenizer="nope", verbose=False)
    with pytest.raises(ValueError, match="bpe:N"):
        prepare("tinyshakespeare", tmp_path / "out", tokenizer="bpe:many", verbose=False)
    assert not (tmp_path / "out").exists()


def test_unknown_source_is_a_clear_error():
    with pytest.raises(SourceError, match="unknown source 'no-such-corpus'.*tinyshakespeare"):
        load_documents("no-such-corpus")
    with pytest.raises(SourceError, match="not a text corpus"):
        load_documents("gpt2-vocab")


def test_offline_hub_name_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(SourceError, match="hub dataset 'someone/some-corpus'.*local path"):
        load_documents("hf:someone/some-corpus")


def test_prepare_tinyshakespeare_with_gpt2(tmp_path, capsys):
    meta = prepare("tinyshakespeare", tmp_path, tokenizer="gpt2", num_proc=1)
    printed = capsys.readouterr().out
    assert "exact_duplicate" in printed and "tokens/s" in printed
    report = meta["report"]
    assert report["documents_in"] == 7222
    assert report["documents_out"] == sum(meta["split_stats"][s]["documents"]
                                          for s in ("train", "val"))
    assert 0.97 < report["documents_out"] / report["documents_in"] < 1.0
    train, val = TokenShards(tmp_path, "train", verify=True), TokenShards(tmp_path, "val")
    assert len(train) + len(val) > 300_000 and 0.05 < len(val) / len(train) < 0.2
    x, y = train.windows([0, 1000], 64)
    assert x.shape == (2, 64) and int(x[0, 0]) == 50256
    assert "First Citizen" in train.tokenizer().decode(train.read(0, 400).tolist())
    assert not any(p.name.startswith(".cache") for p in tmp_path.iterdir())  # cache removed


def test_prepare_tinyshakespeare_with_char_tokenizer(tmp_path):
    meta = prepare("tinyshakespeare", tmp_path, tokenizer="char", near_dedup=False,
                   max_documents=2000, verbose=False)
    assert meta["tokenizer"]["name"] == "tokenizer.json" and meta["vocab_size"] < 80
    ts = TokenShards(tmp_path, "train")
    tok = ts.tokenizer()
    assert isinstance(tok, CharTokenizer)
    text = tok.decode(ts.read(0, len(ts)).tolist())
    assert text.startswith("First Citizen:\nBefore we proceed") and "\n\n" in text
    assert ts.documents + TokenShards(tmp_path, "val").documents == \
        meta["report"]["documents_out"]


def test_prepare_trains_a_bpe_tokenizer_on_the_training_documents(tmp_path):
    meta = prepare("the-verdict", tmp_path, tokenizer="bpe:300", verbose=False)
    assert meta["tokenizer"] == {"name": "tokenizer.json", "vocab_size": 300, "eot_id": 299,
                                 "kind": "BPETokenizer"}
    ts = TokenShards(tmp_path, "train")
    ids = ts.read(0, len(ts)).tolist()
    assert ids[0] == 299 and ids.count(299) == ts.documents
    assert "Jack Gisburn" in ts.tokenizer().decode(ids)


def test_prepare_stories_records_the_entropy_floor(tmp_path):
    stories = pytest.importorskip("gptcourse.stories")
    meta = prepare("stories:300", tmp_path, tokenizer="gpt2", seed=0, verbose=False)
    val = TokenShards(tmp_path, "val")
    items = stories.generate(300, 0)
    is_val = split_mask([s.text for s in items], 0.1, seed=0)
    assert meta["report"]["documents_out"] == 300  # generated text: nothing to clean
    want_nats = -math.fsum(s.logprob for s, v in zip(items, is_val) if v)
    assert val.nats == pytest.approx(want_nats, rel=1e-12)
    floor = stories.floor_per_token([s for s, v in zip(items, is_val) if v],
                                    get_tokenizer("gpt2"))
    assert val.entropy_per_token == pytest.approx(floor, rel=1e-12)


@pytest.mark.parametrize("streaming", [False, True])
def test_prepare_from_jsonl_without_cleaning(tmp_path, streaming):
    f = tmp_path / "in.jsonl"
    docs = [f"record {i} says hello" for i in range(20)]
    f.write_text("\n".join(json.dumps({"text": d}) for d in docs), encoding="utf-8")
    meta = prepare(f, tmp_path / "out", clean=False, val_fraction=0, verbose=False,
                   streaming=streaming, max_documents=15)
    assert meta["report"]["documents_out"] == 15 and meta["source"] == str(f)
    ts, ids = _read_split(tmp_path / "out", "train")
    assert ts.tokenizer().decode(ids) == "".join("<|endoftext|>" + d for d in docs[:15])
