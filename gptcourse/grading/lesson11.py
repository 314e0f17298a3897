"""Exercises of lesson 11, instruction fine-tuning and LoRA: the Alpaca prompt, the -100
collate (with and without prompt masking), a LoRA forward pass, merging LoRA into the weight,
counting LoRA's trainable parameters, and checking a response by normalised match."""

from __future__ import annotations

import random
from typing import Any

import torch
from torch import nn

from ..finetune.instruct import check_response, checkable_tasks, collate_instructions, format_prompt
from ..finetune.lora import LoRALinear, apply_lora, trainable_parameters
from ..model import GPT, GPTConfig
from . import Case, Task, close, exact_int, register, tensors

# -- references --------------------------------------------------------------------------------


def _format_prompt(record: dict) -> str:
    return format_prompt(record)


def _collate(batch: list, pad_id: int, mask_prompt: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    return collate_instructions(batch, pad_id, mask_prompt=mask_prompt)


def _lora_layer(W: torch.Tensor, b: torch.Tensor | None, A: torch.Tensor, B: torch.Tensor,
                alpha: float, r: int) -> LoRALinear:
    out_f, in_f = W.shape
    base = nn.Linear(in_f, out_f, bias=b is not None, dtype=W.dtype)
    layer = LoRALinear(base, r=r, alpha=alpha)
    with torch.no_grad():
        base.weight.copy_(W)
        if b is not None:
            base.bias.copy_(b)
        layer.A.copy_(A)
        layer.B.copy_(B)
    return layer


@torch.no_grad()
def _lora_forward(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, A: torch.Tensor,
                  B: torch.Tensor, alpha: float, r: int) -> torch.Tensor:
    return _lora_layer(W, b, A, B, alpha, r)(x)


@torch.no_grad()
def _merge_lora_weight(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, alpha: float,
                       r: int) -> torch.Tensor:
    layer = _lora_layer(W, None, A, B, alpha, r).merge()
    return layer.base.weight.detach().clone()


def _lora_param_count(n_layer: int, n_embd: int, target_modules: list[str], r: int) -> int:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=n_layer, n_head=1, n_embd=n_embd))
    apply_lora(model, target_modules, r=r)
    return trainable_parameters(model)[0]


def _check_response(record: dict, response: str) -> bool:
    return check_response(record, response)


# -- cases -------------------------------------------------------------------------------------

_R_INPUT = {"instruction": "Rewrite the sentence in passive voice.", "input": "The cat ate the fish.",
            "output": "The fish was eaten by the cat."}
_R_NO_INPUT = {"instruction": "Name a primary color.", "input": "", "output": "Red."}


def _format_cases() -> list[Case]:
    cases = [Case((dict(_R_INPUT),), label="with an input"),
             Case((dict(_R_NO_INPUT),), label="empty input: no '### Input:' section"),
             Case(({"instruction": "Say hello.", "output": "Hello!"},), label="no 'input' key at all"),
             Case(({"instruction": "Translate to French.", "input": "Good morning\nmy friend",
                    "output": "Bonjour mon ami"},), label="an input of two lines")]
    for r in checkable_tasks(4, seed=11, kinds=("upper", "add", "third_word", "count_words")):
        cases.append(Case((r,), label=f"checkable task ({r['kind']})"))
    cases += [Case(({"instruction": "Summarise the text.", "input": None, "output": "Short."},),
                   label="input None: no '### Input:' section"),
              Case(({"instruction": "Follow both steps.\n1. Read the word.\n2. Spell it backwards.",
                     "input": "level", "output": "level"},), label="an instruction of three lines"),
              Case(({"instruction": "Übersetze ins Englische.", "input": "Grüße — wie geht's? 🙂",
                     "output": "Greetings, how are you?"},), label="non-ASCII instruction and input"),
              Case(({"instruction": "Repeat the input.", "input": "  spaced  ", "output": "spaced"},),
                   label="an input with surrounding spaces: kept as it is")]
    for r in checkable_tasks(2, seed=12, kinds=("sort_words", "subtract")):
        cases.append(Case((r,), label=f"checkable task ({r['kind']})"))
    return cases


def _random_pairs(rng: random.Random, n: int) -> list[tuple[list[int], list[int]]]:
    return [([rng.randrange(1, 50) for _ in range(rng.randint(1, 7))],
             [rng.randrange(1, 50) for _ in range(rng.randint(0, 6))]) for _ in range(n)]


def _collate_cases(with_mask: bool) -> list[Case]:
    rng = random.Random(1100 + with_mask)
    fixed = [([([5, 6, 7], [8, 9])], 0), ([([5, 6, 7], [8, 9]), ([1, 2], [3])], 0),
             ([([4], [3, 2, 1]), ([7, 8, 9, 10], [])], 50256), ([([1, 2, 3], [4, 5]), ([6, 7, 8], [9, 10])], 99),
             (_random_pairs(rng, 3), 0), (_random_pairs(rng, 5), 0),
             ([([7], [])], 0), ([([5, 1, 5], [5, 2]), ([3], [5])], 5),
             ([([1, 2, 3, 4, 5, 6], [7, 8, 9]), ([1], [2]), ([3, 4], [])], 0),
             (_random_pairs(rng, 8), 0),
             ([([rng.randrange(50257) for _ in range(rng.randint(3, 20))],
                [rng.randrange(50257) for _ in range(rng.randint(0, 12))]) for _ in range(4)], 50256)]
    labels = ["one example: prompt [5, 6, 7], response [8, 9], pad/eot 0", "two examples, the second shorter",
              "a one-token prompt, an empty response, pad 50256", "same lengths: no padding",
              "3 random examples", "5 random examples",
              "a one-token prompt and no response: a single position",
              "pad_id 5 also occurs among the tokens", "the longest example first, then shorter ones",
              "8 random examples", "4 random longer examples, GPT-2 token ids, pad 50256"]
    if not with_mask:
        return [Case(args, label=label) for args, label in zip(fixed, labels)]
    return [Case((*args, mask), label=f"{label}, mask_prompt={mask}")
            for mask in (True, False) for args, label in zip(fixed, labels)]


_compare_xy = tensors("inputs", "targets")


def _lora_forward_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1103)
    cases = []
    for (batch, in_f, out_f, r, alpha, bias) in [((2, 3), 4, 5, 2, 4.0, True), ((6,), 8, 3, 1, 1.0, True),
                                                ((2, 2, 4), 16, 12, 4, 8.0, False),
                                                ((3,), 32, 96, 8, 16.0, True),
                                                ((), 6, 4, 2, 2.0, True), ((2, 3, 2), 5, 7, 5, 3.0, True),
                                                ((4,), 10, 1, 3, 1.5, False), ((5,), 1, 6, 1, 0.5, True)]:
        x = torch.randn(*batch, in_f, generator=g)
        W = torch.randn(out_f, in_f, generator=g) * 0.2
        b = torch.randn(out_f, generator=g) if bias else None
        A = torch.randn(r, in_f, generator=g) * 0.2
        B = torch.randn(out_f, r, generator=g) * 0.2
        cases.append(Case((x, W, b, A, B, alpha, r),
                          label=f"x {tuple(x.shape)}, W ({out_f}, {in_f}), r={r}, alpha={alpha:g}, "
                                f"bias {'yes' if bias else 'None'}"))
    x, W, b = torch.randn(2, 4, generator=g), torch.randn(3, 4, generator=g), torch.randn(3, generator=g)
    cases.append(Case((x, W, b, torch.randn(2, 4, generator=g), torch.zeros(3, 2), 16.0, 2),
                      label="B = 0: exactly the base layer"))
    x, b = torch.randn(3, 6, generator=g), torch.randn(4, generator=g)
    cases.append(Case((x, torch.zeros(4, 6), b, torch.randn(2, 6, generator=g), torch.randn(4, 2, generator=g),
                       4.0, 2), label="W = 0: only the bias and the low-rank path"))
    x, W = torch.randn(2, 8, dtype=torch.float64, generator=g), torch.randn(5, 8, dtype=torch.float64, generator=g)
    cases.append(Case((x, W, torch.randn(5, dtype=torch.float64, generator=g),
                       torch.randn(3, 8, dtype=torch.float64, generator=g),
                       torch.randn(5, 3, dtype=torch.float64, generator=g), 6.0, 3), label="float64 tensors"))
    return cases


def _merge_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1104)
    cases = []
    for out_f, in_f, r, alpha in [(3, 4, 1, 1.0), (5, 4, 2, 4.0), (12, 16, 4, 8.0), (96, 32, 8, 16.0),
                                  (1, 1, 1, 2.0), (1, 8, 1, 3.0), (6, 6, 6, 6.0), (10, 3, 2, 0.5),
                                  (256, 64, 16, 32.0)]:
        cases.append(Case((torch.randn(out_f, in_f, generator=g), torch.randn(r, in_f, generator=g),
                           torch.randn(out_f, r, generator=g), alpha, r),
                          label=f"W ({out_f}, {in_f}), r={r}, alpha={alpha:g}"
                                + (", full rank" if r == min(out_f, in_f) > 1 else "")))
    cases.append(Case((torch.randn(4, 5, generator=g), torch.randn(2, 5, generator=g), torch.zeros(4, 2), 8.0, 2),
                      label="B = 0: W unchanged"))
    cases.append(Case((torch.randn(7, 4, dtype=torch.float64, generator=g),
                       torch.randn(3, 4, dtype=torch.float64, generator=g),
                       torch.randn(7, 3, dtype=torch.float64, generator=g), 12.0, 3), label="float64 tensors"))
    return cases


def _count_cases() -> list[Case]:
    return [Case((1, 8, ["c_attn"], 2), label="1 layer, n_embd 8, c_attn, r=2"),
            Case((2, 16, ["c_attn", "c_proj"], 4), label="c_proj matches attention's and the MLP's"),
            Case((2, 16, ["attn.c_proj"], 4), label="only the attention's output projection"),
            Case((3, 32, ["c_fc"], 8), label="the MLP's first layer (n_embd -> 4 n_embd)"),
            Case((4, 64, ["c_attn", "c_proj", "c_fc"], 8), label="every linear layer of the blocks"),
            Case((12, 128, ["c_attn"], 16), label="12 layers, n_embd 128, c_attn, r=16"),
            Case((2, 16, ["mlp.c_proj"], 4), label="only the MLP's output projection (4 n_embd -> n_embd)"),
            Case((1, 4, ["attn.c_attn"], 1), label="'attn.c_attn' names the same layer as 'c_attn'; r=1"),
            Case((3, 24, ["c_fc", "mlp.c_proj"], 2), label="the whole MLP"),
            Case((2, 32, ["attn.c_attn", "attn.c_proj"], 32), label="the whole attention, r = n_embd"),
            Case((6, 48, ["c_proj"], 3), label="'c_proj' alone: both projections of 6 layers")]


def _check_cases() -> list[Case]:
    rec = {k: checkable_tasks(9, seed=5)[i] for i, k in enumerate(
        ("upper", "lower", "reverse_words", "sort_words", "third_word", "count_words", "add",
         "subtract", "sort_letters"))}
    up, low, third, add = rec["upper"], rec["lower"], rec["third_word"], rec["add"]
    cases = [Case((up, up["output"]), label="upper: exactly right"),
             Case((up, "  " + up["output"].replace(" ", "   ") + ".  "), label="upper: extra spaces and a full stop"),
             Case((up, up["output"].lower()), label="upper: right words, wrong case"),
             Case((low, low["output"]), label="lower: exactly right"),
             Case((low, low["output"].upper()), label="lower: wrong case"),
             Case((third, third["output"].capitalize() + "!"), label="third_word: capitalised, with '!'"),
             Case((third, f'"{third["output"]}"'), label="third_word: in double quotes"),
             Case((third, third["output"] + " word"), label="third_word: an extra word"),
             Case((add, add["output"]), label="add: the right number"),
             Case((add, add["output"] + "0"), label="add: a wrong number"),
             Case((add, f"'{add['output']}'."), label="add: quoted, with a full stop"),
             Case((rec["reverse_words"], rec["reverse_words"]["input"]),
                  label="reverse_words: the input unchanged"),
             Case((rec["sort_letters"], rec["sort_letters"]["output"].upper()),
                  label="sort_letters: upper case (case does not matter here)"),
             Case(({"instruction": "Name a color.", "input": "", "output": "Blue."}, "blue"),
                  label="a record without a kind: case-insensitive"),
             Case((rec["count_words"], "\n" + rec["count_words"]["output"] + "\n"),
                  label="count_words: surrounded by newlines")]
    return cases


def _compare_bool(expected: bool, got: Any) -> str | None:
    if not isinstance(got, bool):
        return f"expected True or False (a bool), got {type(got).__name__} {got!r}"
    return None if got == expected else f"{got} instead of {expected}"


register(Task("11.1", "format_prompt: the Alpaca prompt", _format_prompt, _format_cases,
              hint="preamble, a blank line, the instruction section; the input section only when the input is "
                   "non-empty; end with the response header and a newline"))
register(Task("11.2", "collate with padding and -100", lambda batch, pad_id: _collate(batch, pad_id),
              lambda: _collate_cases(False), _compare_xy,
              hint="each row is prompt + response + one pad token as end of text; inputs are the sequence without "
                   "its last token, targets without its first; pad the inputs with pad_id and the targets with "
                   "-100"))
register(Task("11.3", "collate with prompt masking", _collate, lambda: _collate_cases(True), _compare_xy,
              hint="as 11.2; with mask_prompt, the targets that are prompt tokens also become -100 (there is one "
                   "fewer of them than prompt tokens)"))
register(Task("11.4", "LoRA forward pass", _lora_forward, _lora_forward_cases, close(1e-5),
              hint="the frozen linear layer plus the low-rank path through A then B, scaled by alpha / r; no bias "
                   "when b is None"))
register(Task("11.5", "merge LoRA into the weight", _merge_lora_weight, _merge_cases, close(1e-5),
              hint="the low-rank update B A, scaled by alpha / r, added to a new copy of W"))
register(Task("11.6", "count LoRA's trainable parameters", _lora_param_count, _count_cases, exact_int,
              hint="a rank-r adapter on an (in, out) layer has r * (in + out) parameters; know the in and out of "
                   "each of the four projections; 'c_proj' matches both projections"))
register(Task("11.7", "check a response (normalised match)", _check_response, _check_cases, _compare_bool,
              hint="collapse whitespace, strip spaces and quotes, drop trailing punctuation, then compare; ignore "
                   "case except for the upper/lower kinds"))
