"""Classification fine-tuning (gptcourse.finetune.classify): the spam file and its errors,
balanced stratified splits, padding, last-token pooling (equal within 1e-5, fp32, to running
the text alone), what each set_trainable mode trains (exact counts), metrics on a hand-made
example (exact), a tiny training run that must reach 100%, and a classifier on a checkpoint
loaded with GPT.from_pretrained."""

from __future__ import annotations

import random

import pytest
import torch
from matplotlib.figure import Figure

from gptcourse.finetune.classify import (
    SPAM_LABELS,
    ClassificationDataset,
    ClassifierConfig,
    GPTClassifier,
    classification_metrics,
    classify_text,
    collate,
    encode_text,
    evaluate_classifier,
    load_sms_spam,
    plot_confusion,
    plot_history,
    predict,
    set_trainable,
    split_dataset,
    train_classifier,
)
from gptcourse.finetune.lora import lora_layers
from gptcourse.model import GPT, GPTConfig
from gptcourse.tokenizer import CharTokenizer
from gptcourse.train import Trainer, TrainingDiverged, optimizer_groups

ATOL = 1e-5
# C = 8: a block has 12 C^2 + 13 C = 872 parameters; wte 100 x 8 = 800, wpe 16 x 8 = 128,
# ln_f 16, head 8 x 2 + 2 = 18
CFG = GPTConfig(vocab_size=100, block_size=16, n_layer=2, n_head=2, n_embd=8)
BLOCK, HEAD, LN_F, EMB = 872, 18, 16, 928
TOTAL = EMB + 2 * BLOCK + LN_F + HEAD  # 2706
LORA = 2 * 256  # rank 2 on c_attn, attn.c_proj, c_fc, mlp.c_proj (see test_lora.py)


def classifier(seed: int = 0, pooling: str = "last", cfg: GPTConfig = CFG) -> GPTClassifier:
    torch.manual_seed(seed)
    return GPTClassifier(GPT(cfg), pooling=pooling, labels=SPAM_LABELS).eval()


def write(tmp_path, text: str):
    path = tmp_path / "spam.tsv"
    path.write_text(text, encoding="utf-8")
    return path


def synthetic(n0: int, n1: int) -> list[tuple[str, int]]:
    """Unique texts: n0 of class 0, n1 of class 1."""
    return [(f"ham {i}", 0) for i in range(n0)] + [(f"spam {i}", 1) for i in range(n1)]


# --------------------------------------------------------------------------------------
# The file
# --------------------------------------------------------------------------------------


def test_load_sms_spam_real_file():
    examples = load_sms_spam()
    assert len(examples) == 5574
    assert sum(label for _, label in examples) == 747
    assert examples[0] == ("Go until jurong point, crazy.. Available only in bugis n great world "
                           "la e buffet... Cine there got amore wat...", 0)
    assert examples[2][1] == 1


def test_load_sms_spam_parses_and_skips_blank_lines(tmp_path):
    path = write(tmp_path, "ham\tsee you at 5\n\nSPAM\tWIN a prize\tnow\r\n")
    assert load_sms_spam(path) == [("see you at 5", 0), ("WIN a prize\tnow", 1)]


def test_unknown_label_names_line_and_label(tmp_path):
    path = write(tmp_path, "ham\tok\nspma\tfree entry\n")
    with pytest.raises(ValueError, match=r"line 2: unknown label 'spma'"):
        load_sms_spam(path)


def test_line_without_tab(tmp_path):
    with pytest.raises(ValueError, match="line 1: no tab"):
        load_sms_spam(write(tmp_path, "ham ok\n"))


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_file(tmp_path, text):
    with pytest.raises(ValueError, match="empty"):
        load_sms_spam(write(tmp_path, text))


# --------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------


def test_split_sms_sizes_like_raschka():
    splits = split_dataset(load_sms_spam())
    assert {k: len(v) for k, v in splits.items()} == {"train": 1045, "val": 149, "test": 300}
    assert sum(y for part in splits.values() for _, y in part) == 747  # balanced: 747 + 747
    assert [sum(y for _, y in splits[k]) for k in ("train", "val", "test")] == [522, 75, 150]


def test_split_balanced_stratified_disjoint():
    examples = synthetic(100, 30)
    splits = split_dataset(examples, seed=7)
    assert {k: len(v) for k, v in splits.items()} == {"train": 42, "val": 6, "test": 12}
    for name, size in (("train", 21), ("val", 3), ("test", 6)):
        labels = [y for _, y in splits[name]]
        assert labels.count(0) == labels.count(1) == size, name
    texts = [t for part in splits.values() for t, _ in part]
    assert len(texts) == len(set(texts)) == 60  # disjoint
    assert set(texts) <= {t for t, _ in examples}
    assert sum(t.startswith("spam") for t in texts) == 30  # every minority example is used


def test_split_unbalanced_keeps_proportions():
    splits = split_dataset(synthetic(80, 20), balance=False)
    for name, frac in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
        labels = [y for _, y in splits[name]]
        assert abs(labels.count(1) - 20 * frac) <= 1 and abs(labels.count(0) - 80 * frac) <= 1


def test_split_deterministic_by_seed():
    examples = synthetic(50, 20)
    assert split_dataset(examples, seed=1) == split_dataset(examples, seed=1)
    assert split_dataset(examples, seed=1) != split_dataset(examples, seed=2)


def test_split_dedup():
    examples = [("a", 0), ("a", 0), ("b", 0), ("c", 1), ("d", 1)]
    splits = split_dataset(examples, (0.5, 0.0, 0.5), dedup=True)
    texts = sorted(t for part in splits.values() for t, _ in part)
    assert texts == ["a", "b", "c", "d"]


@pytest.mark.parametrize("fractions", [(0.7, 0.1), (0.7, 0.2, 0.2), (1.1, -0.1, 0.0)])
def test_split_bad_fractions(fractions):
    with pytest.raises(ValueError, match="fractions"):
        split_dataset(synthetic(5, 5), fractions)


# --------------------------------------------------------------------------------------
# Tokens and padding
# --------------------------------------------------------------------------------------


def test_collate_dynamic_and_fixed_padding():
    batch = [([5, 6, 7], 0), ([8], 1)]
    ids, lengths, labels = collate(batch, pad_id=99)
    assert ids.tolist() == [[5, 6, 7], [8, 99, 99]]
    assert lengths.tolist() == [3, 1] and labels.tolist() == [0, 1]
    assert collate(batch, pad_id=0, pad_to=5).ids.shape == (2, 5)
    with pytest.raises(ValueError, match="shorter"):
        collate(batch, pad_to=2)


def test_dataset_truncation_and_eot():
    tok = CharTokenizer.from_text("abcdefgh")
    ds = ClassificationDataset([("abcdefgh", 1), ("abc", 0)], tok, max_length=5)
    assert ds[0] == ([0, 1, 2, 3, 4], 1) and ds.n_truncated == 1
    assert ds.pad_id == 0  # no end-of-text token: pad with 0
    with pytest.raises(ValueError, match="truncate=True"):
        ClassificationDataset([("abcdefgh", 1)], tok, max_length=5, truncate=False)
    with pytest.raises(ValueError, match="end-of-text"):
        ClassificationDataset([("abc", 1)], tok, append_eot=True)


def test_dataset_with_gpt2_tokenizer():
    from gptcourse.tokenizer import get_tokenizer

    tok = get_tokenizer("gpt2")
    ds = ClassificationDataset([("Hello world", 0), ("WIN a FREE prize now!!!", 1)], tok,
                               append_eot=True)
    assert ds.pad_id == 50256 and ds[0][0][-1] == 50256
    assert ds[0][0][:-1] == tok.encode("Hello world")
    longest = next(iter(ds.loader(2, padding="longest")))
    dynamic = next(iter(ds.loader(1, padding="dynamic")))
    assert longest.ids.shape == (2, ds.max_length) and dynamic.ids.shape == (1, len(ds[0][0]))


def test_empty_text_is_an_error():
    tok = CharTokenizer.from_text("ab")
    with pytest.raises(ValueError, match="example 1: the text is empty"):
        ClassificationDataset([("a", 0), ("", 1)], tok)


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------


def test_hidden_states_give_the_logits():
    clf = classifier()
    x = torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(0))
    h = clf.backbone.hidden_states(x)
    torch.testing.assert_close(clf.backbone.lm_head(h), clf.backbone(x)[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_pooling_reads_real_tokens_only(pooling):
    clf = classifier(pooling=pooling)
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 100, (n,), generator=g).tolist() for n in (12, 3, 7)]
    ids, lengths, _ = collate([(s, 0) for s in seqs], pad_id=42)
    ids[1, 3:] = torch.randint(0, 100, (9,), generator=g)  # pads can be anything
    batched = clf(ids, lengths)
    for row, seq in enumerate(seqs):
        alone = clf(torch.tensor([seq]))  # no padding: every position is real
        torch.testing.assert_close(batched[row], alone[0], atol=ATOL, rtol=0)
    if pooling == "last":  # the head reads position lengths - 1
        h = clf.backbone.hidden_states(ids)
        torch.testing.assert_close(clf.features(ids, lengths)[1], h[1, 2], atol=0, rtol=0)


def test_bad_lengths_and_too_long_inputs():
    clf = classifier()
    with pytest.raises(ValueError, match="lengths"):
        clf(torch.zeros(2, 4, dtype=torch.long), torch.tensor([4, 5]))
    with pytest.raises(ValueError, match="block_size"):
        clf(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("mode,trainable", [
    ("head", HEAD),
    ("last_block", HEAD + BLOCK + LN_F),  # 906
    ("last_2", HEAD + 2 * BLOCK + LN_F),  # 1778
    (1, HEAD + BLOCK + LN_F),
    ("all", TOTAL),  # 2706
])
def test_set_trainable_counts(mode, trainable):
    clf = classifier()
    assert set_trainable(clf, mode) == (trainable, TOTAL)
    assert sum(p.numel() for p in clf.parameters() if p.requires_grad) == trainable


def test_set_trainable_last_block_is_the_last():
    clf = classifier()
    set_trainable(clf, "last_block")
    h = clf.backbone.transformer.h
    assert all(p.requires_grad for p in h[1].parameters())
    assert not any(p.requires_grad for p in h[0].parameters())
    assert not clf.backbone.transformer.wte.weight.requires_grad


def test_set_trainable_lora():
    clf = classifier()
    assert set_trainable(clf, "lora", r=2) == (HEAD + LORA, TOTAL + LORA)
    assert len(lora_layers(clf)) == 8
    assert set_trainable(clf, "head") == (HEAD, TOTAL + LORA)  # adapters stay, frozen
    assert set_trainable(clf, "lora") == (HEAD + LORA, TOTAL + LORA)  # applied once


@pytest.mark.parametrize("mode", ["everything", 0, 3, True])
def test_set_trainable_bad_mode(mode):
    with pytest.raises((ValueError, TypeError)):
        set_trainable(classifier(), mode)


# --------------------------------------------------------------------------------------
# Metrics and figures
# --------------------------------------------------------------------------------------


def test_metrics_hand_made():
    # tp 3, fn 1, fp 2, tn 4
    m = classification_metrics([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 1, 1, 0, 0, 0, 0])
    assert m["confusion"] == [[4, 2], [1, 3]]
    assert m["accuracy"] == pytest.approx(0.7, abs=1e-12)
    assert m["precision"] == pytest.approx(0.6, abs=1e-12)
    assert m["recall"] == pytest.approx(0.75, abs=1e-12)
    assert m["f1"] == pytest.approx(2 / 3, abs=1e-12)


def test_metrics_nothing_predicted_positive():
    m = classification_metrics([1, 0, 0], [0, 0, 0])
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)
    assert m["confusion"] == [[2, 0], [1, 0]]
    with pytest.raises(ValueError, match="2 predictions"):
        classification_metrics([1, 0, 0], [0, 0])


def test_figures():
    fig = plot_confusion([[140, 10], [5, 145]], SPAM_LABELS)
    assert isinstance(fig, Figure) and fig.axes
    history = [{"step": 10, "epoch": 0.5, "loss": 0.6, "accuracy": 0.6, "lr": 1e-3},
               {"step": 20, "epoch": 1.0, "train_loss": 0.4, "train_accuracy": 0.8,
                "val_loss": 0.45, "val_accuracy": 0.78}]
    fig = plot_history(history)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    with pytest.raises(ValueError):
        plot_confusion([[1, 2]], SPAM_LABELS)


# --------------------------------------------------------------------------------------
# Training and prediction
# --------------------------------------------------------------------------------------

TOY = GPTConfig(vocab_size=6, block_size=16, n_layer=2, n_head=2, n_embd=32)
TOY_TOK = CharTokenizer.from_text("abcdex")


def toy_data(n: int, seed: int) -> list[tuple[str, int]]:
    """Label 1 when an 'x' appears anywhere in the text: the last token must look back."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        chars = [rng.choice("abcde") for _ in range(rng.randint(3, 12))]
        if i % 2:
            chars[rng.randrange(len(chars))] = "x"
        out.append(("".join(chars), i % 2))
    return out


def test_tiny_training_run_reaches_100_percent():
    train = ClassificationDataset(toy_data(256, 0), TOY_TOK)
    test = ClassificationDataset(toy_data(64, 1), TOY_TOK)
    clf = classifier(cfg=TOY)
    set_trainable(clf, "all")
    cfg = ClassifierConfig(epochs=8, batch_size=16, lr=3e-3, weight_decay=0.0, progress=False,
                           device="cpu", seed=0, eval_batches=1)
    history = train_classifier(clf, train, test, cfg)
    result = evaluate_classifier(clf, test)
    assert result["accuracy"] == 1.0, history[-1]
    assert result["confusion"] == [[32, 0], [0, 32]]
    evals = [r for r in history if "val_accuracy" in r]
    assert len(evals) == 8 and evals[-1]["val_accuracy"] == 1.0
    logs = [r for r in history if "loss" in r]
    assert logs[-1]["loss"] < logs[0]["loss"]
    texts = [t for t, _ in toy_data(64, 1)]
    assert predict(clf, TOY_TOK, texts) == result["predictions"]
    assert classify_text(clf, TOY_TOK, "abxab") == "spam"


def test_train_rejects_frozen_model_and_long_texts():
    clf = classifier(cfg=TOY)
    train = ClassificationDataset(toy_data(8, 0), TOY_TOK)
    for p in clf.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="set_trainable"):
        train_classifier(clf, train, None, ClassifierConfig(progress=False, device="cpu"))
    long = ClassificationDataset([("ab" * 10, 0)], TOY_TOK)
    set_trainable(clf, "all")
    with pytest.raises(ValueError, match="max_length=16"):
        train_classifier(clf, long, None, ClassifierConfig(progress=False, device="cpu"))


def test_training_steps_through_the_trainer(monkeypatch):
    """One training loop in the library: every optimizer step is Trainer.train_step."""
    calls = []
    step = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self: calls.append(1) or step(self))
    train = ClassificationDataset(toy_data(40, 0), TOY_TOK)
    clf = classifier(cfg=TOY)
    set_trainable(clf, "head")
    cfg = ClassifierConfig(epochs=2, batch_size=8, progress=False, device="cpu")
    history = train_classifier(clf, train, None, cfg)
    assert len(calls) == 10 and history[-1]["step"] == 10  # 5 batches a epoch, 2 epochs


def test_training_equals_a_plain_adamw_loop():
    """The same batches, order and updates as AdamW over data.loader(shuffle=True, seed):
    weights equal to 1e-6 (no dropout, no clipping: only float rounding may differ)."""
    train = ClassificationDataset(toy_data(40, 0), TOY_TOK)
    cfg = ClassifierConfig(epochs=2, batch_size=8, lr=3e-3, grad_clip=0.0, progress=False,
                           device="cpu", seed=5)
    clf = classifier(cfg=TOY)
    set_trainable(clf, "all")
    ref = classifier(cfg=TOY)
    set_trainable(ref, "all")
    train_classifier(clf, train, None, cfg)
    opt = torch.optim.AdamW(optimizer_groups(ref, cfg.weight_decay), lr=cfg.lr)
    ref.train()
    loader = train.loader(cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=True)
    for _ in range(cfg.epochs):
        for ids, lengths, labels in loader:
            torch.nn.functional.cross_entropy(ref(ids, lengths), labels).backward()
            opt.step()
            opt.zero_grad()
    for (name, a), b in zip(clf.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


def test_a_diverging_run_raises_the_trainers_error():
    train = ClassificationDataset(toy_data(16, 0), TOY_TOK)
    clf = classifier(cfg=TOY)
    set_trainable(clf, "head")
    with torch.no_grad():
        clf.head.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="at step 0"):
        train_classifier(clf, train, None, ClassifierConfig(progress=False, device="cpu"))


def test_restore_best_and_max_steps():
    train = ClassificationDataset(toy_data(64, 0), TOY_TOK)
    clf = classifier(cfg=TOY)
    set_trainable(clf, "head")
    cfg = ClassifierConfig(epochs=3, max_steps=10, batch_size=8, eval_interval=5, lr=1e-2,
                           restore_best=True, progress=False, device="cpu")
    history = train_classifier(clf, train, train, cfg)
    assert [r["step"] for r in history if "val_accuracy" in r and "train_loss" in r] == [5, 10]
    assert history[-1]["restored_step"] in (5, 10)


@pytest.mark.parametrize("kwargs", [dict(epochs=0), dict(lr=0), dict(padding="left"),
                                    dict(lr_schedule="step"), dict(max_steps=0)])
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        ClassifierConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(batch_size=8.0), dict(max_steps="10"), dict(lr=None),
                                    dict(grad_clip=True), dict(warmup_steps=1.5)])
def test_config_wrong_type_is_a_type_error(kwargs):
    with pytest.raises(TypeError, match=f"{next(iter(kwargs))} must be"):
        ClassifierConfig(**kwargs)


def test_dataset_and_head_arguments_of_the_wrong_type_are_type_errors():
    with pytest.raises(TypeError, match="example 1: label must be an int, got '0'"):
        ClassificationDataset([("abc", 1), ("abd", "0")], TOY_TOK)
    with pytest.raises(ValueError, match="example 0: label must be >= 0, got -1"):
        ClassificationDataset([("abc", -1)], TOY_TOK)
    with pytest.raises(TypeError, match="max_length must be an int, got 4.0"):
        ClassificationDataset([("abc", 1)], TOY_TOK, max_length=4.0)
    with pytest.raises(TypeError, match="num_classes must be an int, got 2.0"):
        GPTClassifier(GPT(CFG), num_classes=2.0)
    with pytest.raises(ValueError, match="num_classes must be >= 2, got 1"):
        GPTClassifier(GPT(CFG), num_classes=1)


def test_encode_text_too_long_not_allowed():
    with pytest.raises(ValueError, match="block_size"):
        encode_text(TOY_TOK, "abcde" * 4, max_length=16, truncate=False)
    assert encode_text(TOY_TOK, "abcde" * 4, max_length=16) == TOY_TOK.encode("abcde" * 4)[:16]


def test_classifier_on_a_pretrained_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")
    from gptcourse.tokenizer import get_tokenizer

    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257))
    hf.save_pretrained(tmp_path)
    clf = GPTClassifier(GPT.from_pretrained(tmp_path), labels=SPAM_LABELS)
    tok = get_tokenizer("gpt2")
    assert set_trainable(clf, "last_block")[0] > 0
    preds, probs = predict(clf, tok, ["Hi, see you soon", "WIN a FREE cruise!! Call now"],
                           return_probs=True)
    assert len(preds) == 2 and set(preds) <= {0, 1}
    assert all(abs(sum(p) - 1) < 1e-5 for p in probs)
    assert classify_text(clf, tok, "Free entry in 2 a wkly comp") in SPAM_LABELS
    long_text = "word " * 100  # 100 tokens > block_size 64: cut to the model's context
    assert len(predict(clf, tok, [long_text])) == 1
