"""Automatically checkable instructions: tasks whose answer a program can check.

:func:`checkable_tasks` generates records (case conversion, word order, sorting, the third
word, counting words, small sums and differences, sorting letters) as a pure function of the
seed; :func:`checkable_splits` gives disjoint training and held-out sets;
:func:`check_response` compares a response with the canonical output after normalising it;
:func:`score_checkable` and :func:`checkable_accuracy` give the accuracy, overall and per kind.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from .. import validate
from .responses import generate_responses

__all__ = [
    "CHECKABLE_KINDS",
    "check_response",
    "checkable_accuracy",
    "checkable_splits",
    "checkable_tasks",
    "score_checkable",
]

_WORDS = (
    "apple bird blue boat book bread cat chair city cloud cold dog door dream egg fast field "
    "fish flower forest friend garden gold green hat hill horse house ice island king lake "
    "lamp leaf light lion milk moon mountain music night ocean orange paper park pen pink "
    "queen rain red river road rock rose sand ship shoe silver sky slow small snow song star "
    "stone storm sun table tall tea tiger tree warm water whale white wind window winter wolf "
    "yellow young"
).split()

_INSTRUCTIONS = {
    "upper": ("Convert the following phrase to upper case.",
              "Rewrite the following text in capital letters."),
    "lower": ("Convert the following phrase to lower case.",
              "Rewrite the following text in small letters."),
    "reverse_words": ("Reverse the order of the words in the following phrase.",
                      "Write the words of the following phrase in reverse order."),
    "sort_words": ("Sort the words of the following phrase in alphabetical order.",
                   "Arrange the following words alphabetically."),
    "third_word": ("Repeat the third word of the following sentence.",
                   "What is the third word of the following sentence?"),
    "count_words": ("How many words are in the following sentence?",
                    "Count the words in the following sentence."),
    "add": ("What is {a} + {b}?", "Add {a} and {b}."),
    "subtract": ("What is {a} - {b}?", "Subtract {b} from {a}."),
    "sort_letters": ("Sort the letters of the following word alphabetically.",
                     "Write the letters of the following word in alphabetical order."),
}
CHECKABLE_KINDS: tuple[str, ...] = tuple(_INSTRUCTIONS)
_CASE_SENSITIVE = {"upper", "lower"}


def _checkable(kind: str, rng: random.Random) -> dict[str, str]:
    instruction = rng.choice(_INSTRUCTIONS[kind])
    words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 6))]
    phrase = " ".join(words)
    if kind == "upper":
        return {"instruction": instruction, "input": phrase, "output": phrase.upper()}
    if kind == "lower":
        mixed = " ".join(w.upper() if rng.random() < 0.5 else w.capitalize() for w in words)
        return {"instruction": instruction, "input": mixed, "output": phrase}
    if kind == "reverse_words":
        return {"instruction": instruction, "input": phrase, "output": " ".join(words[::-1])}
    if kind == "sort_words":
        return {"instruction": instruction, "input": phrase, "output": " ".join(sorted(words))}
    if kind == "third_word":
        return {"instruction": instruction, "input": phrase, "output": words[2]}
    if kind == "count_words":
        return {"instruction": instruction, "input": phrase, "output": str(len(words))}
    if kind == "add":
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        return {"instruction": instruction.format(a=a, b=b), "input": "", "output": str(a + b)}
    if kind == "subtract":
        a = rng.randint(0, 99)
        b = rng.randint(0, a)
        return {"instruction": instruction.format(a=a, b=b), "input": "", "output": str(a - b)}
    # sort_letters: a word from the list or a made-up one (enough distinct inputs)
    word = rng.choice(_WORDS) if rng.random() < 0.3 else "".join(
        rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 6)))
    return {"instruction": instruction, "input": word, "output": "".join(sorted(word))}


def checkable_tasks(n: int, seed: int = 0,
                    kinds: Sequence[str] | None = None) -> list[dict[str, str]]:
    """``n`` distinct instruction records whose answers a program can check.

    Kinds (:data:`CHECKABLE_KINDS`): ``upper`` / ``lower`` (case conversion of a phrase),
    ``reverse_words``, ``sort_words``, ``third_word`` ("repeat the third word"),
    ``count_words``, ``add`` / ``subtract`` (small non-negative integers), ``sort_letters``
    (of a listed or a made-up word).
    Record ``i`` has kind ``kinds[i % len(kinds)]`` (balanced), two phrasings per kind, words
    from a fixed list of 100 common words; each record carries its ``kind`` and a canonical
    ``output``. A pure function of ``(n, seed, kinds)``; :func:`checkable_splits` gives disjoint
    training and held-out sets.
    """
    kinds = tuple(CHECKABLE_KINDS if kinds is None else kinds)
    unknown = [k for k in kinds if k not in _INSTRUCTIONS]
    if unknown or not kinds:
        raise ValueError(f"unknown kinds {unknown}; choose from {CHECKABLE_KINDS}")
    n = validate.integer("n", n, min=0)
    rng = random.Random(f"gptcourse.checkable:{seed}")
    seen: set[tuple[str, str]] = set()
    out: list[dict[str, str]] = []
    while len(out) < n:
        kind = kinds[len(out) % len(kinds)]
        for _ in range(1000):
            r = _checkable(kind, rng)
            if (r["instruction"], r["input"]) not in seen:
                break
        else:
            raise ValueError(f"cannot make {n} distinct records of kinds {kinds}; ask for fewer")
        seen.add((r["instruction"], r["input"]))
        out.append({**r, "kind": kind})
    return out


def checkable_splits(n_train: int, n_test: int, n_val: int = 45, seed: int = 0,
                     kinds: Sequence[str] | None = None) -> dict[str, list[dict[str, str]]]:
    """Disjoint ``train`` / ``val`` / ``test`` sets of checkable instructions.

    ``train`` is ``checkable_tasks(n_train, seed)``; ``val`` and ``test`` hold only records
    whose (instruction, input) pair is not in ``train`` nor in each other, drawn from other
    seeds. ``test`` has ``n_test // len(kinds)`` records of each kind, kinds interleaved
    (``n_test`` must be a multiple of the number of kinds, so every kind is measured on as many
    records). A pure function of its arguments.

    How many *distinct* training records there are matters more than how many steps train on
    them: a small model that sees a few thousand records many times memorises them (training
    loss near 0, held-out loss high), while one that sees tens of thousands about once has to
    learn the rule (copy, reverse, count) -- lesson 11 and ``bench/bench_finetune.py instruct``
    measure it.
    """
    kinds = tuple(CHECKABLE_KINDS if kinds is None else kinds)
    n_train, n_test, n_val = (validate.integer(name, n, min=0) for name, n in
                              (("n_train", n_train), ("n_test", n_test), ("n_val", n_val)))
    if kinds and n_test % len(kinds):
        raise ValueError(f"n_test must be a multiple of the {len(kinds)} kinds (the same number of "
                         f"test records per kind), got {n_test}")
    train = checkable_tasks(n_train, seed=seed, kinds=kinds)
    seen = {(r["instruction"], r["input"]) for r in train}

    def fresh(n_per_kind: int, offset: int) -> list[list[dict[str, str]]]:
        """n_per_kind unseen records of each kind (marked seen), as one list per kind."""
        per_kind: dict[str, list[dict[str, str]]] = {k: [] for k in kinds}
        for attempt in range(1, 9):
            try:
                batch = checkable_tasks(len(kinds) * n_per_kind * 2 * attempt,
                                        seed=seed + offset + 1000 * attempt, kinds=kinds)
            except ValueError:  # more than the kinds have distinct records
                break
            for r in batch:
                key = (r["instruction"], r["input"])
                if key not in seen and len(per_kind[r["kind"]]) < n_per_kind:
                    seen.add(key)
                    per_kind[r["kind"]].append(r)
            if all(len(v) == n_per_kind for v in per_kind.values()):
                return list(per_kind.values())
        short = [k for k, v in per_kind.items() if len(v) < n_per_kind]
        raise ValueError(f"cannot find {n_per_kind} records of kinds {short} that are not in the "
                         f"{n_train} training records; ask for fewer")

    test_by_kind = fresh(n_test // len(kinds), 1) if n_test else [[] for _ in kinds]
    test = [lst[i] for i in range(n_test // len(kinds)) for lst in test_by_kind]
    val_by_kind = fresh(-(-n_val // len(kinds)), 2) if n_val else [[] for _ in kinds]
    val = [lst[i] for i in range(-(-n_val // len(kinds))) for lst in val_by_kind][:n_val]
    return {"train": train, "val": val, "test": test}


def _normalise(text: str, case_sensitive: bool) -> str:
    text = " ".join(str(text).split())
    text = text.strip("\"'`").rstrip(".!?;:,").strip().strip("\"'`").strip()
    return text if case_sensitive else text.casefold()


def check_response(record: Mapping[str, Any], response: str) -> bool:
    """Whether ``response`` matches the record's canonical ``output`` after normalising both.

    Normalising: whitespace runs become one space, surrounding spaces and quotes go, trailing
    punctuation (``. ! ? ; : ,``) goes. Case matters only for the case-conversion kinds
    (``upper``, ``lower``); elsewhere the match ignores case.
    """
    if not isinstance(record, Mapping) or not isinstance(record.get("output"), str):
        raise ValueError("record must be a dict with an 'output' string (see checkable_tasks)")
    if not isinstance(response, str):
        return False
    kind = record.get("kind")
    if kind is not None and kind not in _INSTRUCTIONS:
        raise ValueError(f"unknown kind {kind!r}; checkable kinds are {CHECKABLE_KINDS}")
    sensitive = kind in _CASE_SENSITIVE
    return _normalise(response, sensitive) == _normalise(record["output"], sensitive)


def score_checkable(responses: Sequence[Mapping[str, Any]],
                    key: str = "model_response") -> dict[str, Any]:
    """Accuracy of responses (records with ``key``): ``{"accuracy", "correct", "total",
    "per_kind": {kind: {"accuracy", "correct", "total"}}, "responses"}`` where each response
    gains ``"correct": bool``."""
    scored, per_kind = [], {}
    for r in responses:
        ok = check_response(r, r.get(key, ""))
        scored.append({**r, "correct": ok})
        stats = per_kind.setdefault(r.get("kind", "other"), {"correct": 0, "total": 0})
        stats["correct"] += ok
        stats["total"] += 1
    for stats in per_kind.values():
        stats["accuracy"] = stats["correct"] / stats["total"]
    correct = sum(r["correct"] for r in scored)
    return {"accuracy": correct / len(scored) if scored else float("nan"), "correct": correct,
            "total": len(scored), "per_kind": per_kind, "responses": scored}


def checkable_accuracy(model, tokenizer, records: Sequence[Mapping[str, Any]], *,
                       max_new_tokens: int = 32, batch_size: int = 16, progress: bool = True,
                       **generate_kwargs) -> dict[str, Any]:
    """Generate responses to checkable records (greedy unless told otherwise) and score them:
    see :func:`score_checkable` for the result."""
    responses = generate_responses(model, tokenizer, records, max_new_tokens=max_new_tokens,
                                   batch_size=batch_size, progress=progress, **generate_kwargs)
    return score_checkable(responses)
