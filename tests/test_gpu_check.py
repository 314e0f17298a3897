"""bench/gpu_check.py: the no-GPU refusal, the budget that skips sections, the JSON/markdown
writer. The GPU sections themselves need a CUDA GPU; their CPU dry run is `--device cpu --tiny`."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_without_cuda_it_says_so_and_exits_non_zero(tmp_path):
    p = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "r.json")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "no CUDA GPU" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "r.json").exists()


def test_budget_skips_sections_whose_estimate_no_longer_fits(gc):
    clock = FakeClock()
    budget = gc.Budget(100, clock=clock)
    ran = []

    def section(name, cost):
        def fn():
            ran.append(name)
            clock.now += cost
            return {"value": cost}
        return name, fn

    results = gc.run_sections([section("a", 30), section("b", 50), section("c", 10)], budget,
                              {"a": 20, "b": 40, "c": 25})
    # a: 100 left >= 20, runs 30; b: 70 >= 40, runs 50; c: 20 < 25, skipped
    assert ran == ["a", "b"]
    assert results["a"] == {"status": "ok", "value": 30, "seconds": 30}
    assert results["c"]["status"] == "skipped"
    assert "20 s left, needs ~25 s" in results["c"]["reason"]


def test_a_failing_section_is_recorded_and_the_rest_still_run(gc):
    def boom():
        raise RuntimeError("flash kernel missing")

    results = gc.run_sections([("a", boom), ("b", lambda: {"x": 1})], gc.Budget(10, FakeClock()), {})
    assert results["a"]["status"] == "failed"
    assert results["a"]["error"] == "RuntimeError: flash kernel missing"
    assert results["b"]["status"] == "ok"


def test_writer_makes_one_json_and_a_markdown_table(gc, tmp_path):
    results = {
        "budget_s": 420, "tiny": False, "total_s": 300.0,
        "env": {"status": "ok", "seconds": 1, "gpu": "NVIDIA H200", "torch": "2.13.0"},
        "train": {"status": "ok", "seconds": 50, "tokens_per_s": 612345.6, "mfu": 0.4567, "step_ms": 26.8},
        "shakespeare": {"status": "ok", "seconds": 120, "val_loss": 1.47123, "train_seconds": 110.0,
                        "steps": 5000},
        "generate": {"status": "failed", "seconds": 2, "error": "RuntimeError: boom"},
        "notebooks": {"status": "skipped", "seconds": 0, "reason": "budget: 10 s left, needs ~60 s"},
    }
    js, md = gc.write_results(results, tmp_path / "out" / "check.json")
    assert json.loads(js.read_text()) == results
    assert md == tmp_path / "out" / "check.md"
    table = md.read_text()
    assert "NVIDIA H200, torch 2.13.0, budget 420 s, 300 s in all" in table
    assert "| GPT-2 124M training tokens/s (bf16, compile, flash SDPA) | 612,346 |" in table
    assert "| GPT-2 124M training MFU | 45.7% |" in table
    assert "| shakespeare-char-gpu validation loss (whole split) | 1.4712 |" in table
    assert "| generate | failed | 2 | RuntimeError: boom |" in table
    assert "| notebooks | skipped | 0 | budget: 10 s left, needs ~60 s |" in table
    assert "tokens/s, KV cache" not in table  # no value, no row


def test_package_list_is_printed_for_the_wheels_script(gc):
    p = subprocess.run([sys.executable, str(SCRIPT), "--list-packages"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0
    assert p.stdout.split() == [pip for pip, _ in gc.PACKAGES]
    assert {"nbval", "nbclient", "ipykernel", "fastapi", "uvicorn", "datasets"} <= set(p.stdout.split())


def test_cpu_dry_run_of_the_measuring_sections(gc):
    # toy sizes on the CPU: the code paths of the GPU sections, not their numbers
    train = gc.section_train("cpu", tiny=True)
    assert train["tokens_per_s"] > 0 and train["mfu"] > 0 and train["steps"] == 3
    gen = gc.section_generate("cpu", tiny=True)
    assert gen["new_tokens"] == 8 and gen["tokens_per_s"] > 0
    sh = gc.section_shakespeare("cpu", tiny=True, steps=2)
    assert sh["steps"] == 2 and 0 < sh["val_loss"] < 10


def test_lessons_are_skipped_with_the_reason_when_the_budget_is_spent(gc):
    out = gc.section_notebooks(gc.Budget(20, FakeClock()), "ci", ("00", "01"))
    assert out["lessons"] == {"00_setup": "skipped: 20 s of budget left",
                              "01_tokenization": "skipped: 20 s of budget left"}
    assert out["summary"] == "0 of 2 (ci profile): none"


def test_a_lesson_runs_in_memory_and_is_counted(gc):
    path = ROOT / "notebooks" / "00_setup.ipynb"
    before = path.read_bytes()
    out = gc.section_notebooks(gc.Budget(300), "ci", ("00",))
    assert isinstance(out["lessons"]["00_setup"], float)
    assert out["summary"] == "1 of 1 (ci profile): 00"
    assert path.read_bytes() == before  # outputs are not written back
