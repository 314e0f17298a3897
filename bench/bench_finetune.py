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

Threads: on a shared 2-core machine OpenMP threads wait for each other when other jobs run
(a step can take 10x longer); ``--threads 0`` (default) uses one thread per core that the
1-minute load average leaves free (at least 1).

    python bench/bench_finetune.py spam                    # course model, the 5-minute target
    python bench/bench_finetune.py spam --table            # the options table
    python bench/bench_finetune.py spam --model gpt2       # GPT-2 124M (online or cached; GPU)
    python bench/bench_finetune.py spam --quick            # a few steps: does it run?
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time

import torch

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


def course_model(train_texts: list[str], args) -> tuple[GPT, BPETokenizer, dict]:
    """BPE on the training texts, then a small GPT pretrained on them (see the docstring)."""
    t0 = time.perf_counter()
    tok = BPETokenizer.train("\n".join(train_texts), args.vocab, special_tokens=["<|endoftext|>"])
    ids: list[int] = []
    for text in train_texts:
        ids += tok.encode_ordinary(text) + [tok.eot_id]
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=args.layers, n_head=args.heads,
                    n_embd=args.embd, dropout=0.1)
    shards = TokenShards.from_ids(ids, tok.vocab_size)
    with tempfile.TemporaryDirectory() as tmp:
        tc = TrainConfig(out_dir=tmp, max_steps=args.pretrain_steps, batch_size=8, lr=2e-3,
                         warmup_steps=max(1, args.pretrain_steps // 10), weight_decay=0.1,
                         eval_interval=10**9, log_interval=25, checkpoints=False, plots=False,
                         progress=args.progress, seed=args.seed, device="cpu")
        trainer = Trainer(cfg, shards, None, tc)
        history = trainer.fit()
        trainer.close()
    logs = [(r["step"], r["loss"]) for r in history if "loss" in r]
    info = {"tokenizer": tok.name, "pretrain_tokens": len(ids), "pretrain_steps": args.pretrain_steps,
            "pretrain_losses": logs,
            "pretrain_seconds": time.perf_counter() - t0, "parameters": trainer.model.num_params()}
    return trainer.model.eval(), tok, info


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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=["spam"])
    ap.add_argument("--model", default="course",
                    help="course (pretrain a small GPT here), gpt2, gpt2-medium or a local HF folder")
    ap.add_argument("--table", action="store_true", help="every option: head .. lora")
    ap.add_argument("--mode", default=None, help=f"one of {MODES} (default: all)")
    ap.add_argument("--pretrain-steps", type=int, default=400)
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
    if args.quick:
        args.pretrain_steps, args.max_steps = 5, 5
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
