"""Benchmark gptcourse.model.GPT against transformers.GPT2LMHeadModel on the CPU (fp32).

1. Training step (forward + backward + AdamW step + zero_grad), tokens/s, at two sizes.
2. Greedy generation of 256 new tokens after a 256-token prompt: ours with the KV cache,
   ours without, and Hugging Face ``generate(use_cache=True)``.

Both models get the same weights (ours are copied into HF's layout), dropout 0, and HF uses
``attn_implementation="sdpa"``. Warm-up steps are excluded, the median of the timed steps is
reported, and ours/HF alternate which runs first in each round. The loss is the same
``F.cross_entropy`` on both models' logits. ``torch.set_num_threads`` is left at its default.

    python bench/bench_model.py                 # the full run (a few minutes on 2 cores)
    python bench/bench_model.py --quick         # tiny step counts: check that it works
    python bench/bench_model.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from gptcourse.generate import generate
from gptcourse.model import GPT, GPTConfig


def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def make_pair(cfg: GPTConfig, seed: int = 0):
    """Our GPT and an HF GPT2LMHeadModel with identical weights (fp32, dropout 0)."""
    import transformers

    torch.manual_seed(seed)
    ours = GPT(cfg)
    hf_cfg = transformers.GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
        n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    hf = transformers.AutoModelForCausalLM.from_config(hf_cfg, attn_implementation="sdpa")
    assert hf.config._attn_implementation == "sdpa", hf.config._attn_implementation
    # copy ours -> HF (Conv1D weights are stored transposed)
    state = {}
    for k, v in ours.state_dict().items():
        if k.endswith(("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")):
            v = v.t()
        state[k] = v.contiguous()
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith(("attn.bias", "attn.masked_bias")) for k in missing), (missing, unexpected)
    return ours, hf


def median_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


# --------------------------------------------------------------------------------------
# Training step
# --------------------------------------------------------------------------------------


def bench_train(name: str, cfg: GPTConfig, batch: int, warmup: int, steps: int) -> dict:
    ours, hf = make_pair(cfg)
    ours.train()
    hf.train()
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size), generator=g)
    y = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size), generator=g)

    with torch.no_grad():  # same weights, same function
        l_ours = F.cross_entropy(ours(x)[0].view(-1, cfg.vocab_size), y.view(-1)).item()
        l_hf = F.cross_entropy(hf(input_ids=x).logits.view(-1, cfg.vocab_size), y.view(-1)).item()
    assert abs(l_ours - l_hf) < 1e-4, (l_ours, l_hf)

    def forward_ours():
        return ours(x, y)[1]

    def forward_hf():
        logits = hf(input_ids=x, use_cache=False).logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))

    runners = {}
    for key, model, fwd in (("ours", ours, forward_ours), ("hf", hf, forward_hf)):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)

        def step(model=model, fwd=fwd, opt=opt):
            loss = fwd()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        runners[key] = step

    times = {"ours": [], "hf": []}
    for r in range(warmup + steps):
        order = ("ours", "hf") if r % 2 == 0 else ("hf", "ours")
        for key in order:
            t0 = time.perf_counter()
            runners[key]()
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[key].append(dt)
    tokens = batch * cfg.block_size
    res = {"name": name, "config": cfg.to_dict(), "batch": batch, "tokens_per_step": tokens,
           "warmup": warmup, "steps": steps, "initial_loss": l_ours}
    for key in ("ours", "hf"):
        ms = median_ms(times[key])
        res[key] = {"median_ms": ms, "tokens_per_s": tokens / (ms / 1000), "times_ms": [1000 * t for t in times[key]]}
    res["speedup"] = res["ours"]["tokens_per_s"] / res["hf"]["tokens_per_s"]
    return res


# --------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------


def bench_generate(cfg: GPTConfig, prompt_len: int, new: int, repeats: int, nocache_repeats: int) -> dict:
    ours, hf = make_pair(cfg)
    ours.eval()
    hf.eval()
    prompt = torch.randint(0, cfg.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(prompt)

    def run_ours_cache():
        return generate(ours, prompt, new, temperature=0, use_cache=True)

    def run_ours_nocache():
        return generate(ours, prompt, new, temperature=0, use_cache=False)

    def run_hf():
        with torch.no_grad():
            return hf.generate(prompt, attention_mask=mask, do_sample=False, use_cache=True,
                               max_new_tokens=new, min_new_tokens=new, pad_token_id=0)

    outputs = {}
    times = {"ours_cache": [], "hf": [], "ours_nocache": []}
    # warm-up: one short run each
    generate(ours, prompt, 4, temperature=0, use_cache=True)
    with torch.no_grad():
        hf.generate(prompt, attention_mask=mask, do_sample=False, max_new_tokens=4, min_new_tokens=4, pad_token_id=0)
    for r in range(repeats):
        order = ("ours_cache", "hf") if r % 2 == 0 else ("hf", "ours_cache")
        for key in order:
            t0 = time.perf_counter()
            outputs[key] = (run_ours_cache if key == "ours_cache" else run_hf)()
            times[key].append(time.perf_counter() - t0)
    for _ in range(nocache_repeats):
        t0 = time.perf_counter()
        outputs["ours_nocache"] = run_ours_nocache()
        times["ours_nocache"].append(time.perf_counter() - t0)

    res = {"config": cfg.to_dict(), "prompt_len": prompt_len, "new_tokens": new, "repeats": repeats,
           "nocache_repeats": nocache_repeats}
    for key, ts in times.items():
        if ts:
            ms = median_ms(ts)
            res[key] = {"median_ms": ms, "tokens_per_s": new / (ms / 1000), "times_ms": [1000 * t for t in ts]}
    ref = outputs["ours_cache"]
    assert ref.shape == (1, prompt_len + new), ref.shape
    res["hf_same_tokens"] = bool(torch.equal(ref, outputs["hf"]))
    if "ours_nocache" in outputs:
        res["nocache_same_tokens"] = bool(torch.equal(ref, outputs["ours_nocache"]))
        res["cache_vs_nocache"] = res["ours_cache"]["tokens_per_s"] / res["ours_nocache"]["tokens_per_s"]
    res["cache_vs_hf"] = res["ours_cache"]["tokens_per_s"] / res["hf"]["tokens_per_s"]
    return res


# --------------------------------------------------------------------------------------


def table(results: dict) -> str:
    lines = [
        "| benchmark | ours | Hugging Face | ours / HF |",
        "|---|---:|---:|---:|",
    ]
    for t in results["train"]:
        c = t["config"]
        label = (f"train step {t['name']}: {c['n_layer']}L {c['n_head']}H {c['n_embd']}d, "
                 f"block {c['block_size']}, batch {t['batch']} (tokens/s)")
        lines.append(f"| {label} | {t['ours']['tokens_per_s']:,.0f} | {t['hf']['tokens_per_s']:,.0f} | "
                     f"{t['speedup']:.2f}x |")
    g = results.get("generate")
    if g:
        c = g["config"]
        head = (f"generate {g['new_tokens']} after {g['prompt_len']}, {c['n_layer']}L {c['n_head']}H "
                f"{c['n_embd']}d, greedy, batch 1")
        lines.append(f"| {head}, KV cache (new tokens/s) | {g['ours_cache']['tokens_per_s']:,.1f} | "
                     f"{g['hf']['tokens_per_s']:,.1f} | {g['cache_vs_hf']:.2f}x |")
        if "ours_nocache" in g:
            lines.append(f"| {head}, ours without cache (new tokens/s) | {g['ours_nocache']['tokens_per_s']:,.1f} "
                         f"| - | cache/no-cache {g['cache_vs_nocache']:.1f}x |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny step counts, to check the script runs")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=7, help="timed training steps per model (median)")
    p.add_argument("--steps-large", type=int, default=5, help="timed steps for the larger config")
    p.add_argument("--block-large", type=int, default=256, help="block size of training config (b)")
    p.add_argument("--gen-repeats", type=int, default=3, help="timed generations, ours-cache and HF")
    p.add_argument("--nocache-repeats", type=int, default=1, help="timed generations without cache")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--only", choices=["train", "generate"], default=None)
    p.add_argument("--json", type=str, default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.warmup, args.steps, args.steps_large, args.gen_repeats = 1, 2, 1, 1
        args.block_large, args.new_tokens, args.prompt_len = 64, 16, 32

    import transformers

    transformers.logging.set_verbosity_error()
    results = {
        "torch": torch.__version__, "transformers": transformers.__version__,
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "load_before": load(), "args": vars(args), "train": [],
    }
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} threads; load average {results['load_before']}", flush=True)
    t_start = time.perf_counter()
    if args.only in (None, "train"):
        small = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
        large = GPTConfig(vocab_size=65, block_size=args.block_large, n_layer=6, n_head=6, n_embd=384)
        for name, cfg, steps in (("a", small, args.steps), ("b", large, args.steps_large)):
            r = bench_train(name, cfg, batch=12, warmup=args.warmup, steps=steps)
            results["train"].append(r)
            print(f"train ({name}): ours {r['ours']['median_ms']:.1f} ms, HF {r['hf']['median_ms']:.1f} ms "
                  f"-> {r['speedup']:.2f}x", flush=True)
    if args.only in (None, "generate"):
        cfg = GPTConfig(vocab_size=65, block_size=512, n_layer=6, n_head=6, n_embd=384)
        g = bench_generate(cfg, args.prompt_len, args.new_tokens, args.gen_repeats, args.nocache_repeats)
        results["generate"] = g
        print(f"generate: ours+cache {g['ours_cache']['median_ms']:.0f} ms, HF {g['hf']['median_ms']:.0f} ms, "
              f"ours no cache {g.get('ours_nocache', {}).get('median_ms', float('nan')):.0f} ms; "
              f"same tokens as HF: {g['hf_same_tokens']}", flush=True)
    results["load_after"] = load()
    results["wall_s"] = time.perf_counter() - t_start
    print()
    print(table(results))
    print(f"\nload average before {results['load_before']}, after {results['load_after']}; "
          f"{results['wall_s']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
