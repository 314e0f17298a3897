"""One prepared check on one CUDA GPU: ``make gpu-check`` (<= 8 minutes, no internet).

Sections, in this order, each with an estimated cost; a section starts only while the time
budget (``--budget-s``, default 420 s) still holds its estimate, else it is skipped with the
reason recorded:

``env``        torch, CUDA, the GPU, flash SDPA, which packages of ``PACKAGES`` are missing;
``train``      GPT-2 124M training tokens/s and MFU: bf16 autocast + ``torch.compile`` + SDPA
               (flash kernel forced), fused AdamW, batch 16 x 1024, median of timed steps;
``shakespeare`` the ``shakespeare-char-gpu`` preset through ``Trainer``: validation loss over the
               whole split and wall time (``--shakespeare-steps`` shortens it);
``generate``   GPT-2 124M KV-cache generation tokens/s (bf16 weights, batch 1, greedy);
``ddp``        DDP and FSDP (``fully_shard``) smoke: a few steps under ``torchrun`` on one GPU;
``notebooks``  lessons 00-05 and 07 with ``GPTCOURSE_PROFILE=gpu``, as many as fit, stated.

Results go to one JSON (``--out``, default bench/gpu_check.json) and a markdown table printed
and written beside it (``.md``). Without a CUDA GPU it says so and exits 2; ``--device cpu
--tiny`` runs every section at toy sizes on the CPU (lessons with the ``ci`` profile) to check
the script itself (its numbers mean nothing).

    python bench/gpu_check.py [--budget-s 420] [--skip-notebooks] [--out bench/gpu_check.json]
    python bench/gpu_check.py --device cpu --tiny --skip-notebooks   # does it run?
    python bench/gpu_check.py --list-packages                         # for bench/gpu_wheels.sh
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Python packages a bare CUDA machine with PyTorch may lack (pip name, import name): the one
# list bench/gpu_wheels.sh downloads wheels of and installs offline.
PACKAGES: list[tuple[str, str]] = [
    ("numpy", "numpy"), ("matplotlib", "matplotlib"), ("tiktoken", "tiktoken"),
    ("regex", "regex"), ("tqdm", "tqdm"), ("safetensors", "safetensors"),
    ("nbformat", "nbformat"), ("nbclient", "nbclient"), ("ipykernel", "ipykernel"),
    ("nbval", "nbval"), ("fastapi", "fastapi"), ("uvicorn", "uvicorn"),
    ("datasets", "datasets"),
]
LESSONS = ("00", "01", "02", "03", "04", "05", "07")
# Estimated seconds of each section on one H100/H200 (compile included): the budget check.
ESTIMATES = {"env": 5, "train": 90, "shakespeare": 150, "generate": 20, "ddp": 40,
             "notebooks": 60}


class NoGPU(RuntimeError):
    pass


# --------------------------------------------------------------------------------------
# Budget: run sections while their estimate fits, record why the others were skipped
# --------------------------------------------------------------------------------------


class Budget:
    """Seconds left of ``total``; ``clock`` is injectable for tests."""

    def __init__(self, total: float, clock: Callable[[], float] = time.perf_counter) -> None:
        self.total, self.clock, self.start = total, clock, clock()

    @property
    def left(self) -> float:
        return self.total - (self.clock() - self.start)

    def fits(self, seconds: float) -> bool:
        return self.left >= seconds


def run_sections(sections: list[tuple[str, Callable[[], dict]]], budget: Budget,
                 estimates: dict[str, float] | None = None) -> dict[str, dict]:
    """Run each ``(name, fn)`` whose estimate fits the budget left; a section that raises is
    recorded as failed and the rest still run. Every entry has ``status`` and ``seconds``."""
    estimates = ESTIMATES if estimates is None else estimates
    results: dict[str, dict] = {}
    for name, fn in sections:
        need = estimates.get(name, 0)
        if not budget.fits(need):
            results[name] = {"status": "skipped", "seconds": 0.0,
                             "reason": f"budget: {budget.left:.0f} s left, needs ~{need:.0f} s"}
            continue
        t0 = budget.clock()
        try:
            out = {"status": "ok", **fn()}
        except Exception as e:  # noqa: BLE001 -- a broken section must not lose the others
            out = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        out["seconds"] = round(budget.clock() - t0, 2)
        results[name] = out
        print(f"[gpu-check] {name}: {out['status']} in {out['seconds']:.0f} s "
              f"({budget.left:.0f} s of budget left)", flush=True)
    return results


# --------------------------------------------------------------------------------------
# Output: one JSON, one markdown table
# --------------------------------------------------------------------------------------

# (section, key, label, format) rows of the table
ROWS = [
    ("train", "tokens_per_s", "GPT-2 124M training tokens/s (bf16, compile, flash SDPA)", "{:,.0f}"),
    ("train", "mfu", "GPT-2 124M training MFU", "{:.1%}"),
    ("train", "step_ms", "GPT-2 124M step (16 x 1024 tokens), median ms", "{:.1f}"),
    ("shakespeare", "val_loss", "shakespeare-char-gpu validation loss (whole split)", "{:.4f}"),
    ("shakespeare", "train_seconds", "shakespeare-char-gpu training time, s", "{:.1f}"),
    ("shakespeare", "steps", "shakespeare-char-gpu steps", "{:d}"),
    ("generate", "tokens_per_s", "generation tokens/s, KV cache (GPT-2 124M, batch 1)", "{:,.0f}"),
    ("ddp", "ddp", "DDP smoke (torchrun, 1 GPU)", "{}"),
    ("ddp", "fsdp", "FSDP smoke (torchrun, 1 GPU)", "{}"),
    ("notebooks", "summary", "lessons 00-05, 07 executed", "{}"),
]


def markdown(results: dict[str, Any]) -> str:
    """The table of ``results`` (as :func:`main` writes them): measured rows, then each
    section's status, so a skipped or failed section shows why."""
    env = results.get("env", {})
    lines = [f"GPU check: {env.get('gpu', 'no GPU')}, torch {env.get('torch', '?')}, "
             f"budget {results.get('budget_s', '?')} s, {results.get('total_s', 0):.0f} s in all",
             *(["(--tiny: toy sizes, the numbers check the script and mean nothing)"]
               if results.get("tiny") else []),
             "", "| what | value |", "|---|---:|"]
    for section, key, label, fmt in ROWS:
        value = results.get(section, {}).get(key)
        if value is not None:
            lines.append(f"| {label} | {fmt.format(value)} |")
    lines += ["", "| section | status | s | note |", "|---|---|---:|---|"]
    for name in ESTIMATES:
        r = results.get(name)
        if r is None:
            continue
        note = r.get("reason") or r.get("error") or ""
        lines.append(f"| {name} | {r['status']} | {r.get('seconds', 0):.0f} | {note} |")
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    md = out.with_suffix(".md")
    md.write_text(markdown(results))
    return out, md


# --------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------


def missing_packages() -> list[str]:
    return [pip for pip, mod in PACKAGES if importlib.util.find_spec(mod) is None]


def section_env(device: str) -> dict:
    import torch

    out: dict[str, Any] = {"torch": torch.__version__, "python": sys.version.split()[0],
                           "device": device, "missing_packages": missing_packages(),
                           "data_dir": os.environ.get("GPTCOURSE_DATA_DIR"),
                           "tiktoken_cache": os.environ.get("TIKTOKEN_CACHE_DIR")}
    if device == "cuda":
        from torch.backends import cuda as bc

        out.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                   gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
                   bf16=torch.cuda.is_bf16_supported(), flash_sdp=bc.flash_sdp_enabled())
    return out


def gpt2_config(tiny: bool):
    from gptcourse.model import GPTConfig

    if tiny:
        return GPTConfig(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=64, dropout=0.0)
    return GPTConfig(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0)


def section_train(device: str, tiny: bool, steps: int = 20, warmup: int = 5) -> dict:
    """Training steps of GPT-2 124M: bf16 autocast, compiled, flash SDPA, fused AdamW."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from gptcourse.model import GPT
    from gptcourse.train import optimizer_groups

    cfg = gpt2_config(tiny)
    B, T = (4, cfg.block_size) if tiny else (16, cfg.block_size)
    steps, warmup = (3, 1) if tiny else (steps, warmup)
    torch.manual_seed(0)
    torch.set_float32_matmul_precision("high")
    model = GPT(cfg).to(device)
    opt = torch.optim.AdamW(optimizer_groups(model, 0.1), lr=6e-4, betas=(0.9, 0.95),
                            fused=device == "cuda")
    step_fn = model if tiny else torch.compile(model)
    dtype = torch.bfloat16
    x = torch.randint(0, cfg.vocab_size, (B, T + 1), device=device)
    backends = [SDPBackend.FLASH_ATTENTION] if device == "cuda" else [SDPBackend.MATH]
    times = []
    with sdpa_kernel(backends):  # a missing flash kernel fails here instead of falling back
        for i in range(warmup + steps):
            sync(device)
            t0 = time.perf_counter()
            with torch.autocast(device_type=device, dtype=dtype):
                _, loss = step_fn(x[:, :-1], x[:, 1:])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    tok_s = B * T / sec
    return {"params": model.num_params(), "batch": B, "block": T, "steps": steps,
            "step_ms": 1000 * sec, "tokens_per_s": tok_s,
            "mfu": model.estimate_mfu(tok_s, seq_len=T), "last_loss": float(loss.detach())}


def section_shakespeare(device: str, tiny: bool, steps: int | None) -> dict:
    """The shakespeare-char-gpu preset (nanoGPT's GPU setting) through Trainer."""
    import numpy as np

    from gptcourse import corpora, presets
    from gptcourse.data import TokenShards
    from gptcourse.tokenizer import get_tokenizer
    from gptcourse.train import TrainConfig, Trainer

    tok = get_tokenizer("char:tinyshakespeare")
    ids = np.array(tok.encode(corpora.load_text("tinyshakespeare")), dtype=np.int64)
    cut = int(len(ids) * 0.9)  # nanoGPT's split: first 90% train, last 10% validation
    if tiny:
        ids, cut = ids[:20_000], 18_000
    train = TokenShards.from_ids(ids[:cut], tok.vocab_size)
    val = TokenShards.from_ids(ids[cut:], tok.vocab_size)
    spec = presets.resolve("shakespeare-char-gpu")
    cfg = spec.model_config(vocab_size=tok.vocab_size)
    base = spec.train.to_dict()
    steps = steps or (4 if tiny else base["max_steps"])
    over: dict[str, Any] = {"max_steps": steps, "decay_steps": steps, "progress": False,
                            "plots": False, "checkpoints": False, "device": device,
                            "eval_interval": max(steps, 1) if tiny else base["eval_interval"]}
    if tiny:
        from dataclasses import replace

        cfg = replace(cfg, block_size=32, n_layer=1, n_head=2, n_embd=32)
        over.update(batch_size=4, eval_batches=2, compile=False, warmup_steps=1)
    with tempfile.TemporaryDirectory() as tmp:
        tc = TrainConfig(**{**base, **over, "out_dir": tmp})
        trainer = Trainer(cfg, train, val, tc)
        t0 = time.perf_counter()
        trainer.fit()
        seconds = time.perf_counter() - t0
        full = trainer.evaluate(max_batches=2 if tiny else 0)
    return {"steps": steps, "train_seconds": seconds, "val_loss": float(full["loss"]),
            "val_tokens": int(full["tokens"]), "goal": "nanoGPT ~1.47 after 5000 steps"}


def section_generate(device: str, tiny: bool, new: int = 256, prompt_len: int = 64) -> dict:
    import torch

    from gptcourse.generate import generate
    from gptcourse.model import GPT

    cfg = gpt2_config(tiny)
    new, prompt_len = (8, 4) if tiny else (new, prompt_len)
    torch.manual_seed(0)
    model = GPT(cfg).to(device).eval()
    if device == "cuda":
        model = model.to(torch.bfloat16)
    prompt = torch.randint(0, cfg.vocab_size, (1, prompt_len), device=device)
    generate(model, prompt, 4, temperature=0)  # warm-up
    times = []
    for _ in range(3):
        sync(device)
        t0 = time.perf_counter()
        out = generate(model, prompt, new, temperature=0, use_cache=True)
        sync(device)
        times.append(time.perf_counter() - t0)
    assert out.shape == (1, prompt_len + new), out.shape
    sec = statistics.median(times)
    return {"prompt_len": prompt_len, "new_tokens": new, "tokens_per_s": new / sec,
            "dtype": "bfloat16" if device == "cuda" else "float32"}


def section_ddp(device: str, tiny: bool, timeout: float) -> dict:
    """``torchrun --nproc_per_node 1`` this script's ``--worker ddp`` / ``fsdp``."""
    out: dict[str, Any] = {}
    for kind in ("ddp", "fsdp"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
               str(Path(__file__).resolve()), "--worker", kind, "--device", device]
        if tiny:
            cmd.append("--tiny")
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        last = (p.stdout.strip().splitlines() or [""])[-1]
        if p.returncode == 0 and last.startswith("{"):
            res = json.loads(last)
            out[kind] = f"ok: loss {res['first_loss']:.3f} -> {res['last_loss']:.3f}"
            out[f"{kind}_detail"] = res
        else:
            out[kind] = f"failed (exit {p.returncode})"
            out[f"{kind}_stderr"] = p.stderr[-2000:]
    if any(v.startswith("failed") for k, v in out.items() if k in ("ddp", "fsdp")):
        raise RuntimeError(f"ddp {out['ddp']}; fsdp {out['fsdp']}")
    return out


def worker(kind: str, device: str, tiny: bool, steps: int = 10) -> None:
    """One rank of the DDP or FSDP smoke: fit one fixed batch, print a JSON line."""
    import torch
    import torch.distributed as dist

    from gptcourse.model import GPT, GPTConfig

    rank = int(os.environ["LOCAL_RANK"])
    if device == "cuda":
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    torch.manual_seed(0)
    cfg = gpt2_config(True) if tiny else GPTConfig(vocab_size=50304, block_size=256, n_layer=4,
                                                    n_head=4, n_embd=256, dropout=0.0)
    model = GPT(cfg).to(device)
    if kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[rank] if device.startswith("cuda") else None)
    else:
        from torch.distributed.fsdp import fully_shard

        for block in model.transformer.h:
            fully_shard(block)
        fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, cfg.vocab_size, (4, cfg.block_size + 1), device=device)
    losses = []
    t0 = time.perf_counter()
    for _ in range(steps):
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16):
            _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
    seconds = time.perf_counter() - t0
    dist.destroy_process_group()
    if losses[-1] >= losses[0]:
        raise SystemExit(f"{kind}: loss did not fall on a fixed batch ({losses[0]:.3f} -> {losses[-1]:.3f})")
    print(json.dumps({"kind": kind, "steps": steps, "first_loss": losses[0],
                      "last_loss": losses[-1], "seconds": seconds}))


def section_notebooks(budget: Budget, profile: str = "gpu", lessons: tuple[str, ...] = LESSONS,
                      reserve: float = 5) -> dict:
    """``lessons`` in order with ``profile`` while the budget lasts (nbclient's timeout is per
    cell: a lesson starts with >= 30 s left and each cell may take what is left); outputs are
    not saved (the notebooks are read, executed in memory, and dropped)."""
    import nbformat

    from gptcourse.grading import execute_notebook

    done: dict[str, Any] = {}
    for n in lessons:
        path = next((ROOT / "notebooks").glob(f"{n}_*.ipynb"))
        left = budget.left - reserve
        if left < 30:
            done[path.stem] = f"skipped: {budget.left:.0f} s of budget left"
            continue
        nb = nbformat.read(str(path), as_version=4)
        t0 = time.perf_counter()
        try:
            execute_notebook(nb, path.parent, timeout=int(left), allow_errors=False,
                             env={"GPTCOURSE_PROFILE": profile})
            done[path.stem] = round(time.perf_counter() - t0, 1)
        except Exception as e:  # noqa: BLE001 -- record it, go on with the next lesson
            done[path.stem] = f"failed after {time.perf_counter() - t0:.0f} s: {type(e).__name__}: " \
                              f"{str(e).strip().splitlines()[-1][:200] if str(e).strip() else ''}"
    ran = [k for k, v in done.items() if isinstance(v, float)]
    return {"profile": profile, "lessons": done,
            "summary": f"{len(ran)} of {len(lessons)} ({profile} profile): {', '.join(k[:2] for k in ran) or 'none'}"}


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------


def check_device(device: str) -> str:
    """``cuda`` when asked for (the default) and present; raises NoGPU with how to proceed."""
    if device == "cpu":
        return "cpu"
    try:
        import torch
    except ImportError as e:
        raise NoGPU("torch is not installed: the GPU check needs PyTorch with CUDA") from e
    if not torch.cuda.is_available():
        raise NoGPU("no CUDA GPU found (torch.cuda.is_available() is False): run make gpu-check on a "
                    "machine with an NVIDIA GPU, or check the script with --device cpu --tiny")
    return "cuda"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-s", type=float, default=420, help="seconds for all sections (default 420)")
    p.add_argument("--skip-notebooks", action="store_true", help="leave out the lessons")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "gpu_check.json",
                   help="JSON path; the markdown table goes beside it as .md")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--tiny", action="store_true", help="toy sizes (with --device cpu: a dry run)")
    p.add_argument("--shakespeare-steps", type=int, default=None,
                   help="steps of the shakespeare-char-gpu run (default: the preset's 5000)")
    p.add_argument("--list-packages", action="store_true", help="print PACKAGES' pip names and exit")
    p.add_argument("--worker", choices=("ddp", "fsdp"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.list_packages:
        print(" ".join(pip for pip, _ in PACKAGES))
        return 0
    if args.worker:
        worker(args.worker, args.device, args.tiny)
        return 0
    try:
        device = check_device(args.device)
    except NoGPU as e:
        print(f"gpu-check: {e}", file=sys.stderr)
        return 2
    budget = Budget(args.budget_s)
    sections: list[tuple[str, Callable[[], dict]]] = [
        ("env", lambda: section_env(device)),
        ("train", lambda: section_train(device, args.tiny)),
        ("shakespeare", lambda: section_shakespeare(device, args.tiny, args.shakespeare_steps)),
        ("generate", lambda: section_generate(device, args.tiny)),
        ("ddp", lambda: section_ddp(device, args.tiny, timeout=max(budget.left, 1))),
    ]
    if not args.skip_notebooks:
        sections.append(("notebooks", lambda: section_notebooks(budget, "ci" if args.tiny else "gpu")))
    estimates = {k: (0 if args.tiny else v) for k, v in ESTIMATES.items()}
    results: dict[str, Any] = {"budget_s": args.budget_s, "tiny": args.tiny,
                               **run_sections(sections, budget, estimates)}
    if args.skip_notebooks:
        results["notebooks"] = {"status": "skipped", "seconds": 0.0, "reason": "--skip-notebooks"}
    results["total_s"] = round(args.budget_s - budget.left, 1)
    js, md = write_results(results, args.out)
    print(markdown(results))
    print(f"wrote {js} and {md}")
    return 1 if any(r.get("status") == "failed" for r in results.values() if isinstance(r, dict)) else 0


if __name__ == "__main__":
    sys.exit(main())
