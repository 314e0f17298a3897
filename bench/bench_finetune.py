"""Benchmark classification fine-tuning on SMS spam (gptcourse.finetune.classify).

``spam --model course`` (the offline, CPU target: >= 95% test accuracy within 5 minutes on 2
cores, everything included) runs the whole recipe from nothing:

1. the UCI SMS Spam Collection, balanced (747 spam + 747 ham) and split 70/10/20, stratified,
   seed 123 -> 1,045 train / 149 validation / 300 test messages (Raschka's sizes);
2. a byte-level BPE of 1,024 tokens (+ ``<|endoftext|>``) trained on the **training texts
   only** (0.1 s) -- GPT-2's 50,257-token vocabulary would make the LM head of pretraining 50x
   more expensive on a CPU, and SMS spelling ("txt", "2morrow", "£1000") is not GPT-2's;
3. a 4-layer, 4-head, 128-wide GPT (block 128, dropout 0.1; 0.96 M parameters) pretrained as
   a language model on the unlabeled training texts (46,803 tokens, each message followed by
   ``<|endoftext|>``) with ``Trainer``: 400 steps of 8 x 128 tokens (~9 passes over the
   text), lr 2e-3, warmup 40, cosine to 2e-4. Only the training split is read: no validation
   or test text reaches the model before its test. (Shakespeare or the course's stories are
   far from SMS spelling; in-domain text is what the head needs.) Block 128 holds all but 5 of
   the 1,494 messages (those are cut to their first 127 tokens + ``<|endoftext|>``);
4. classification fine-tuning of every parameter (``set_trainable(clf, "all")``), the head on
   the hidden state of the last real token, every message ending with ``<|endoftext|>`` (one
   fixed "summary" position for the head), dynamic padding, AdamW lr 1e-3 cosine to 1e-4,
   warmup 20, weight decay 0.1, batch 16, 6 epochs;
5. accuracy, precision, recall and F1 (spam = positive) on the 300 test messages, and the
   wall time of all of the above (loading, tokenizer, pretraining, fine-tuning, testing).

``spam --model gpt2`` (or ``gpt2-medium``, or a local folder in Hugging Face's GPT-2 layout)
starts from ``GPT.from_pretrained`` and GPT-2's tokenizer instead (no pretraining; ``--mode``
chooses what trains, default all with lr 3e-5, 3 epochs, batch 8, as in the ``gpu`` profile).
It needs the weights: offline without a local copy it stops with a message saying so.

``spam --table`` pretrains once, then fine-tunes a copy for each option like Raschka's table
(head only / last block / last two blocks / all / LoRA r=8, alpha=16 on every linear layer of
the blocks) and prints test accuracy, F1, trainable parameters and seconds of each.

``instruct`` measures lesson 11's offline recipe (instruction fine-tuning of a small course
GPT) and what decides whether SFT teaches a *rule* or memorises examples:

1. Raschka's 1,100 instruction records split 935 / 55 / 110, and ``checkable_splits``:
   ``--checkable`` (default 27,000) checkable training records, 90 held-out (10 per kind), 45
   for validation, all disjoint;
2. a byte-level BPE of 1,024 tokens and a 4-layer, 4-head, 128-wide GPT (block 192, ``--pos``
   learned or rope) pretrained ``--pretrain-steps`` (500) steps of 12 x 192 tokens, lr 3e-3, on
   3,000 generated stories and the plain text (no template) of the 935 Alpaca training records
   and of every checkable training record (so both runs of ``--compare`` start from the same
   model; the lesson also keeps 2% of this text aside for a validation loss);
3. SFT with ``sft`` (prompt masked, lr 2e-3 cosine to 2e-4, batch 16, ``--sft-steps`` 3000) on
   the Alpaca training records plus the checkable training records;
4. the response loss on held-out Alpaca and checkable records, and exact-match accuracy (greedy,
   ``check_response``) on the 90 held-out checkable records and on the first 90 training
   records (10 per kind; in both SFT sets of ``--compare``).

``--compare N`` fine-tunes a second copy of the same pretrained model on only the first ``N``
checkable training records (same steps): seen many times, they are memorised (training accuracy
high, held-out low); ``--checkable`` records seen about once teach the rule.

Threads: on a shared 2-core machine OpenMP threads wait for each other when other jobs run
(a step can take 10x longer); ``--threads 0`` (default) uses one thread per core that the
1-minute load average leaves free (at least 1).

    python bench/bench_finetune.py spam                    # course model, the 5-minute target
    python bench/bench_finetune.py spam --table            # the options table
    python bench/bench_finetune.py spam --model gpt2       # GPT-2 124M (online or cached; GPU)
    python bench/bench_finetune.py spam --quick            # a few steps: does it run?
    python bench/bench_finetune.py instruct --compare 2700 # lesson 11's recipe, 2,700 vs 27,000
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
import warnings

import torch

from gptcourse import stories
from gptcourse.data import TokenShards
from gptcourse.finetune.classify import (
    SPAM_LABELS,
    ClassificationDataset,
    ClassifierConfig,
    GPTClassifier,
    evaluate_classifier,
    load_sms_spam,
    set_trainable,
    split_dataset,
    train_classifier,
)
from gptcourse.finetune.instruct import (
    CHECKABLE_KINDS,
    checkable_accuracy,
    checkable_splits,
    format_prompt,
    load_instruction_data,
    response_loss,
    sft,
    split_records,
)
from gptcourse.model import GPT, GPTConfig
from gptcourse.profiles import cpu_threads
from gptcourse.tokenizer import BPETokenizer, get_tokenizer
from gptcourse.train import TrainConfig, Trainer

MODES = ("head", "last_block", "last_2", "all", "lora")
# learning rates per mode: a frozen backbone (head, LoRA) takes larger steps
COURSE_LR = {"head": 3e-3, "last_block": 1e-3, "last_2": 1e-3, "all": 1e-3, "lora": 3e-3}
GPT2_LR = {"head": 1e-3, "last_block": 5e-5, "last_2": 5e-5, "all": 3e-5, "lora": 5e-4}


def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def pick_threads(requested: int) -> int:
    return requested if requested > 0 else cpu_threads()


# --------------------------------------------------------------------------------------
# The two starting points
# --------------------------------------------------------------------------------------


def pretrain(cfg: GPTConfig, ids: list[int], tok, args, t0: float, **train) -> tuple[GPT, dict]:
    """Pretrain a GPT of ``cfg`` on ``ids`` with ``Trainer`` (``train``: TrainConfig settings);
    the model in eval mode and what the scripts report about it (seconds since ``t0``)."""
    with tempfile.TemporaryDirectory() as tmp:
        tc = TrainConfig(out_dir=tmp, max_steps=args.pretrain_steps, eval_interval=10**9,
                         log_interval=25, checkpoints=False, plots=False, progress=args.progress,
                         seed=args.seed, **train)
        trainer = Trainer(cfg, TokenShards.from_ids(ids, tok.vocab_size), None, tc, tokenizer=tok)
        history = trainer.fit()
        trainer.close()
    info = {"tokenizer": tok.name, "pretrain_tokens": len(ids), "pretrain_steps": args.pretrain_steps,
            "pretrain_losses": [(r["step"], r["loss"]) for r in history if "loss" in r],
            "pretrain_seconds": time.perf_counter() - t0, "parameters": trainer.model.num_params()}
    return trainer.model.eval(), info


def course_model(train_texts: list[str], args) -> tuple[GPT, BPETokenizer, dict]:
    """BPE on the training texts, then a small GPT pretrained on them (see the docstring)."""
    t0 = time.perf_counter()
    tok = BPETokenizer.train("\n".join(train_texts), args.vocab, special_tokens=["<|endoftext|>"])
    ids: list[int] = []
    for text in train_texts:
        ids += tok.encode_ordinary(text) + [tok.eot_id]
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=args.layers, n_head=args.heads,
                    n_embd=args.embd, dropout=0.1)
    model, info = pretrain(cfg, ids, tok, args, t0, batch_size=8, lr=2e-3, weight_decay=0.1,
                           warmup_steps=max(1, args.pretrain_steps // 10), device="cpu")
    return model, tok, info


def pretrained_model(name: str) -> tuple[GPT, object, dict]:
    try:
        model = GPT.from_pretrained(name, dropout=0.0)
    except (OSError, FileNotFoundError, ImportError) as err:
        sys.exit(f"cannot load {name!r}: {err}\nGPT-2's weights come from the Hugging Face hub: run "
                 "this online once (or pass a local folder with config.json + model.safetensors); "
                 "offline, use --model course.")
    return model, get_tokenizer("gpt2"), {"parameters": model.num_params()}


# --------------------------------------------------------------------------------------
# Fine-tuning one option
# --------------------------------------------------------------------------------------


def finetune(backbone: GPT, tok, splits, mode: str, args, course: bool) -> dict:
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)  # the head's (and LoRA's) init: the same for every option
    clf = GPTClassifier(copy.deepcopy(backbone), labels=SPAM_LABELS)
    trainable, total = set_trainable(clf, mode)
    max_len = clf.block_size
    data = {k: ClassificationDataset(v, tok, max_length=max_len, append_eot=True)
            for k, v in splits.items()}
    lr = args.lr or (COURSE_LR if course else GPT2_LR)[mode]
    cfg = ClassifierConfig(epochs=args.epochs or (6 if course else 3), batch_size=16 if course else 8,
                           lr=lr, weight_decay=0.1, warmup_steps=20, lr_schedule="cosine",
                           progress=args.progress, seed=args.seed, device=args.device,
                           max_steps=args.max_steps)
    history = train_classifier(clf, data["train"], data["val"], cfg)
    result = evaluate_classifier(clf, data["test"])
    val = [r for r in history if "val_accuracy" in r]
    return {"mode": mode, "trainable": trainable, "total": total, "lr": lr,
            "epochs": cfg.epochs, "test_accuracy": result["accuracy"], "test_f1": result["f1"],
            "test_precision": result["precision"], "test_recall": result["recall"],
            "confusion": result["confusion"], "val_accuracy": val[-1]["val_accuracy"] if val else None,
            "truncated": data["test"].n_truncated + data["train"].n_truncated,
            "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------------------
# Instruction fine-tuning (lesson 11's offline recipe)
# --------------------------------------------------------------------------------------


def plain_text(record) -> str:
    """A record as ordinary text, no template: pretraining material."""
    return "\n".join(x for x in (record["instruction"], record["input"], record["output"]) if x)


def instruct_base(args) -> tuple[GPT, BPETokenizer, dict, dict]:
    t0 = time.perf_counter()
    alpaca = dict(zip(("train", "val", "test"), split_records(load_instruction_data())))
    checkable = checkable_splits(max(args.checkable, args.compare or 0), 90, n_val=45)
    texts = ([s.text for s in stories.generate(3000, seed=0)]
             + [plain_text(r) for r in alpaca["train"] + checkable["train"]])
    sample = "\n".join(texts[::3] + [format_prompt(r) for r in alpaca["train"][:200]])
    tok = BPETokenizer.train(sample, args.vocab, special_tokens=["<|endoftext|>"])
    ids: list[int] = []
    for text in texts:
        ids += [tok.eot_id] + tok.encode(text)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=192, n_layer=args.layers,
                    n_head=args.heads, n_embd=args.embd, pos_encoding=args.pos)
    model, info = pretrain(cfg, ids, tok, args, t0, batch_size=12, lr=3e-3, beta2=0.99,
                           warmup_steps=max(1, min(20, args.pretrain_steps // 5)), device=args.device)
    return model, tok, {**info, "pos_encoding": args.pos}, {"alpaca": alpaca, "checkable": checkable}


def instruct_sft(base: GPT, tok, data: dict, n_checkable: int, args) -> dict:
    t0 = time.perf_counter()
    model = copy.deepcopy(base).train()
    alpaca, checkable = data["alpaca"], data["checkable"]
    ck_train = checkable["train"][:n_checkable]
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the Alpaca records too long for block 192 are dropped
        tc = TrainConfig(out_dir=tmp, max_steps=args.sft_steps, batch_size=16, lr=2e-3, min_lr=2e-4,
                         warmup_steps=max(1, min(10, args.sft_steps // 10)), weight_decay=0.0,
                         eval_interval=10**9, eval_batches=0, log_interval=25, checkpoints=False,
                         plots=False, progress=args.progress, seed=args.seed, device=args.device)
        trainer = sft(model, tok, alpaca["train"] + ck_train, None, tc, mask_prompt=True,
                      long_prompts="drop")
        trainer.close()
    seconds = time.perf_counter() - t0
    model.eval()
    losses = [r["loss"] for r in trainer.history if "loss" in r]
    seen = ck_train[:90]  # 10 of each kind (record i has kind i % 9)
    held_out = checkable["test"]
    test_acc = checkable_accuracy(model, tok, held_out, max_new_tokens=24, progress=False)
    return {
        "checkable_records": n_checkable, "sft_steps": args.sft_steps,
        "passes": args.sft_steps * 16 / (len(alpaca["train"]) + n_checkable),
        "train_loss_last": sum(losses[-4:]) / len(losses[-4:]),
        "loss_alpaca_test": response_loss(model, tok, alpaca["test"], long_prompts="drop")["loss"],
        "loss_checkable_test": response_loss(model, tok, held_out)["loss"],
        "loss_checkable_seen": response_loss(model, tok, seen)["loss"],
        "accuracy_seen": checkable_accuracy(model, tok, seen, max_new_tokens=24,
                                            progress=False)["accuracy"],
        "accuracy_test": test_acc["accuracy"],
        "per_kind": {k: test_acc["per_kind"][k]["accuracy"] for k in CHECKABLE_KINDS},
        "sft_seconds": seconds,
    }


def run_instruct(args) -> None:
    threads = pick_threads(args.threads)
    torch.set_num_threads(threads)
    t0, load_start = time.perf_counter(), load()
    base, tok, info, data = instruct_base(args)
    logs = info["pretrain_losses"]
    print(f"course model: {info['parameters']:,} parameters ({args.pos} positions), {tok.name}; "
          f"pretrained {args.pretrain_steps} steps (loss {logs[0][1]:.3f} -> {logs[-1][1]:.3f}) in "
          f"{info['pretrain_seconds']:.1f} s; threads {threads}; load {load_start}")
    rows = []
    for n in [args.checkable] + ([args.compare] if args.compare else []):
        row = instruct_sft(base, tok, data, n, args)
        rows.append(row)
        print(f"  {n:,} checkable records ({row['passes']:.1f} passes): held-out accuracy "
              f"{row['accuracy_test']:.1%}, on training records {row['accuracy_seen']:.1%}; "
              f"response loss held-out {row['loss_checkable_test']:.3f} vs seen "
              f"{row['loss_checkable_seen']:.3f}; SFT {row['sft_seconds']:.0f} s", flush=True)
    wall, load_end = time.perf_counter() - t0, load()
    print()
    print("| checkable training records | passes | last training loss | response loss, seen | "
          "response loss, held-out | accuracy, seen | accuracy, held-out | Alpaca test loss |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['checkable_records']:,} | {r['passes']:.1f} | {r['train_loss_last']:.3f} | "
              f"{r['loss_checkable_seen']:.3f} | {r['loss_checkable_test']:.3f} | "
              f"{r['accuracy_seen']:.1%} | {r['accuracy_test']:.1%} | {r['loss_alpaca_test']:.3f} |")
    print("\nheld-out accuracy per kind:")
    for r in rows:
        print(f"  {r['checkable_records']:>6,}: " + ", ".join(f"{k} {v:.0%}" for k, v in r["per_kind"].items()))
    print(f"\nwall time {wall:.1f} s in all; load average {load_start} at the start, {load_end} at the end")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"task": "instruct", "info": info, "rows": rows, "wall_seconds": wall,
                       "threads": threads, "load_start": load_start, "load_end": load_end,
                       "args": vars(args)}, f, indent=2)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=["spam", "instruct"])
    ap.add_argument("--model", default="course",
                    help="course (pretrain a small GPT here), gpt2, gpt2-medium or a local HF folder")
    ap.add_argument("--table", action="store_true", help="every option: head .. lora")
    ap.add_argument("--mode", default=None, help=f"one of {MODES} (default: all)")
    ap.add_argument("--pretrain-steps", type=int, default=None,
                    help="spam: 400 (default), instruct: 500")
    ap.add_argument("--sft-steps", type=int, default=3000, help="instruct: SFT steps")
    ap.add_argument("--checkable", type=int, default=27000,
                    help="instruct: checkable training records")
    ap.add_argument("--compare", type=int, default=None,
                    help="instruct: also fine-tune on only this many checkable records")
    ap.add_argument("--pos", choices=["learned", "rope"], default="learned",
                    help="instruct: position encoding of the course model")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--embd", type=int, default=128)
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="0: one per core the load leaves free")
    ap.add_argument("--quick", action="store_true", help="tiny step counts: does it run?")
    ap.add_argument("--progress", action="store_true", help="progress bars")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    if args.pretrain_steps is None:
        args.pretrain_steps = 500 if args.task == "instruct" else 400
    if args.quick:
        args.pretrain_steps, args.max_steps, args.sft_steps = 5, 5, 5
        args.checkable = min(args.checkable, 90)
        args.compare = args.compare and min(args.compare, 45)
    if args.task == "instruct":
        if args.model != "course" or args.table or args.mode:
            ap.error("instruct runs the course model only (no --model, --table or --mode)")
        run_instruct(args)
        return
    if args.mode is not None and args.mode not in MODES:
        ap.error(f"--mode must be one of {MODES}")
    threads = pick_threads(args.threads)
    torch.set_num_threads(threads)
    course = args.model == "course"

    t0 = time.perf_counter()
    load_start = load()
    splits = split_dataset(load_sms_spam(), (0.7, 0.1, 0.2), seed=123)
    print(f"SMS spam: train {len(splits['train'])}, val {len(splits['val'])}, test "
          f"{len(splits['test'])} (balanced, stratified); threads {threads}; load {load_start}")
    if course:
        backbone, tok, info = course_model([t for t, _ in splits["train"]], args)
        logs = info["pretrain_losses"]
        print(f"course model: {info['parameters']:,} parameters, {tok.name}; pretrained "
              f"{info['pretrain_steps']} steps on {info['pretrain_tokens']:,} training-text tokens "
              f"(loss {logs[0][1]:.3f} at step {logs[0][0]} -> {logs[-1][1]:.3f}) in "
              f"{info['pretrain_seconds']:.1f} s")
    else:
        backbone, tok, info = pretrained_model(args.model)
        print(f"{args.model}: {info['parameters']:,} parameters")

    modes = MODES if args.table else (args.mode or "all",)
    rows = []
    for mode in modes:
        row = finetune(backbone, tok, splits, mode, args, course)
        rows.append(row)
        print(f"  {mode:>10}: test accuracy {row['test_accuracy']:.2%}, F1 {row['test_f1']:.4f} "
              f"(precision {row['test_precision']:.4f}, recall {row['test_recall']:.4f}), "
              f"confusion {row['confusion']}, val {row['val_accuracy']:.2%}, "
              f"{row['trainable']:,} of {row['total']:,} parameters trained, {row['seconds']:.1f} s"
              f"{'; ' + str(row['truncated']) + ' train/test texts cut to the block' if row['truncated'] else ''}")
    wall = time.perf_counter() - t0
    load_end = load()

    print()
    print("| option | trainable parameters | test accuracy | test F1 | seconds |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['trainable']:,} | {r['test_accuracy']:.2%} | {r['test_f1']:.4f} "
              f"| {r['seconds']:.1f} |")
    print(f"\nwall time {wall:.1f} s in all (model {args.model}); load average {load_start} at the "
          f"start, {load_end} at the end")
    if course and not args.table and not args.quick:
        ok = rows[0]["test_accuracy"] >= 0.95 and wall <= 300
        print(f"target (>= 95% test accuracy within 300 s): {'met' if ok else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "info": info, "rows": rows, "wall_seconds": wall,
                       "threads": threads, "load_start": load_start, "load_end": load_end,
                       "args": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()
