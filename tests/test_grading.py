"""The self-grading framework: check() verdicts, reports and the lesson task registry."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import nbformat
import pytest

from gptcourse import grading, notebooks
from gptcourse.grading import Case, Task, check, get_task, run_check, same, task_ids

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def registry():
    """The loaded task registry, restored after the test (which may register tasks)."""
    task_ids()  # load every lesson now, whatever ran before
    saved = dict(grading._TASKS)
    yield grading._TASKS
    grading._TASKS.clear()
    grading._TASKS.update(saved)


def _utf8(s):
    return list(s.encode("utf-8"))


def _stub(s):
    raise NotImplementedError("Exercise 1.1: UTF-8 bytes of a string")


def test_correct_answer_passes_every_case():
    res = run_check("1.1", _utf8)
    assert res.status == "passed" and bool(res)
    assert res.passed == res.total >= 20


def test_wrong_answer_reports_first_failing_case():
    res = run_check("1.1", lambda s: [ord(c) for c in s])  # code points, not bytes
    assert res.status == "failed" and not res
    assert "case" in res.detail and "expected" in res.detail and "got" in res.detail
    # the first failing case is the first non-ASCII input, shown with the learner's argument name
    assert "s='h\u00e9llo w\u00f6rld'" in res.detail


def test_stub_is_not_attempted():
    res = run_check("1.1", _stub)
    assert res.status == "not attempted"
    assert "not attempted yet" in res.report


def test_exception_in_learner_code_is_reported_not_raised():
    res = run_check("1.3", lambda ids, pair, new_id: ids[10**9])
    assert res.status == "failed"
    assert "raised IndexError" in res.detail


def test_not_implemented_after_some_cases_is_a_failure():
    def partial(s):
        if not s.isascii():
            raise NotImplementedError("unicode later")
        return list(s.encode())

    assert run_check("1.1", partial).status == "failed"


def test_missing_return_is_explained():
    res = run_check("1.2", lambda ids: None)
    assert res.status == "failed" and "returned None" in res.detail


def test_non_callable_is_a_failure():
    res = run_check("1.1", 42)
    assert res.status == "failed" and "expected a function" in res.detail


def test_unknown_task_id_raises_keyerror_listing_known_ids():
    with pytest.raises(KeyError, match="1.1"):
        check("99.9", _utf8)


def test_check_prints_one_report(capsys):
    check("1.1", _utf8)
    out = capsys.readouterr().out
    assert out.startswith("✓ Exercise 1.1") and out.count("\n") == 1


def test_report_never_shows_reference_source():
    for tid in task_ids():
        task = get_task(tid)
        res = run_check(tid, lambda *a, **k: "definitely wrong")
        source = inspect.getsource(task.reference)
        body = [ln.strip() for ln in source.splitlines()[1:] if len(ln.strip()) > 12]
        assert not any(line in res.report for line in body), tid


def test_changing_an_argument_in_place_fails_a_pure_task():
    torch = pytest.importorskip("torch")

    def top_k_in_place(logits, k):  # right values, but the caller's logits now hold -inf
        if k < logits.size(-1):
            logits[logits < torch.topk(logits, k).values[..., -1:]] = float("-inf")
        return logits

    res = run_check("5.3", top_k_in_place)
    assert res.status == "failed"
    assert "changed its argument 'logits' in place" in res.detail
    assert "logits = logits.clone()" in res.detail


def test_clearing_a_list_argument_is_reported_with_its_name():
    def mutating(ids):
        counts = {}
        for p in zip(ids, ids[1:]):
            counts[p] = counts.get(p, 0) + 1
        ids.clear()
        return counts

    res = run_check("1.2", mutating)
    assert res.status == "failed" and "changed its argument 'ids' in place" in res.detail


def test_a_task_that_changes_its_arguments_can_opt_out(registry):
    def push(stack, x):
        stack.append(x)
        return len(stack)

    cases = lambda: [Case(([1, 2], 3)), Case(([], 0))]  # noqa: E731
    grading.register(Task("99.1", "push (pure)", push, cases))
    grading.register(Task("99.2", "push (changes its argument)", push, cases, pure=False))
    assert run_check("99.1", push).status == "failed"
    assert run_check("99.2", push).status == "passed"


def test_time_limit_stops_an_endless_loop():
    def forever(text, n):
        while True:
            pass

    res = run_check("1.4", forever, time_limit=0.5)
    assert res.status == "failed" and "longer than" in res.detail


@pytest.mark.parametrize("tid", task_ids())
def test_reference_passes_its_own_task(tid):
    task = get_task(tid)
    assert len(task.cases()) >= 10
    assert run_check(tid, task.reference).status == "passed"


def test_same_is_lenient_about_container_types_only():
    assert same([1, 2], (1, 2)) is None
    assert same({(1, 2): 3}, {(1, 2): 3}) is None
    assert same({(1, 2): 3}, {(1, 2): 4}) is not None
    assert same(1.0, 1.0 + 1e-9) is None
    assert same(1.0, 1.1) is not None
    assert same("a", ["a"]) is not None


def test_same_a_str_is_not_a_number():
    assert "got str" in same(1.0, "1.0")


def test_same_a_bool_is_not_a_number():
    assert same(1.0, True) is not None
    assert same(1, True) is not None
    assert same(True, 1) is not None
    assert same(True, True) is None and same(False, True) is not None


def test_same_an_int_equals_a_float_of_the_same_value():
    assert same(3, 3.0) is None and same(3.0, 3) is None
    assert same(3, 3.5) is not None


def test_same_compares_floats_inside_containers_within_tolerance():
    assert same([1.0, {"a": 2.0}], [1.0 + 1e-9, {"a": 2.0 - 1e-9}]) is None
    assert same([1.0, [True]], [1.0, [1]]) is not None


def test_same_names_the_first_differing_position():
    assert same([1, [2, 3]], [1, [2, 4]]) == "at [1][1]: 4 instead of 3"
    assert same({"a": [1, 2]}, {"a": [1, 2, 3]}) == "at ['a']: 3 items instead of 2"


def test_same_compares_tensors_with_tolerance():
    torch = pytest.importorskip("torch")
    x = torch.ones(3)
    assert same(x, x + 1e-7) is None
    assert "shape" in same(x, torch.ones(4))
    assert same(x, x + 1) is not None


def test_register_rejects_bad_and_duplicate_ids(registry):
    t = Task("1.1", "dup", _utf8, lambda: [Case(("a",))])
    with pytest.raises(ValueError):
        grading.register(t)
    with pytest.raises(ValueError):
        grading.register(Task("one", "bad id", _utf8, lambda: []))
    assert registry["1.1"] is not t


# -- messages ----------------------------------------------------------------------------


def _train_bpe_first_seen(text, num_merges):
    """BPE whose ties go to the pair seen first, not the smallest pair."""
    ids, merges = list(text.encode("utf-8")), []
    for k in range(num_merges):
        counts = {}
        for p in zip(ids, ids[1:]):
            counts[p] = counts.get(p, 0) + 1
        if not counts:
            break
        pair, out, i = max(counts, key=counts.get), [], 0
        while i < len(ids):
            hit = tuple(ids[i:i + 2]) == pair
            out.append(256 + k if hit else ids[i])
            i += 2 if hit else 1
        ids = out
        merges.append((*pair, 256 + k))
    return merges


def test_bpe_tie_failure_is_a_small_labelled_case_naming_the_merge():
    res = run_check("1.4", _train_bpe_first_seen)
    assert res.status == "failed"
    head = res.detail.splitlines()[0]
    assert "tie" in head and "smaller pair wins" in head
    assert "text='zyzy abab'" in res.detail
    assert "merge 0 (counting from 0) is (122, 121, 256) instead of (97, 98, 256)" in res.detail


def test_causal_mask_failure_gives_the_position():
    torch = pytest.importorskip("torch")
    res = run_check("3.2", lambda T: torch.ones(T, T, dtype=torch.bool).triu())
    assert "values differ first at index (0, 1): True instead of False" in res.detail


def test_float_tensor_failure_gives_the_position_of_the_largest_difference():
    pytest.importorskip("torch")
    res = run_check("3.1", lambda q, k: q @ k.transpose(-2, -1))  # forgets the 1/sqrt(d)
    assert re.search(r"max abs diff [\d.]+ at index \(\d+, \d+\): ", res.detail)


def test_sampling_failure_says_which_token_differs():
    torch = pytest.importorskip("torch")
    from gptcourse.generate import filter_logits

    def ignores_top_p(logits, temperature, top_k, top_p, seed):
        g = torch.Generator().manual_seed(seed)
        probs = torch.softmax(filter_logits(logits / temperature, top_k=top_k), dim=-1)
        return torch.multinomial(probs, 1, generator=g).squeeze(-1)

    res = run_check("5.5", ignores_top_p)
    assert res.status == "failed" and "top_p 0.9" in res.detail.splitlines()[0]
    assert re.search(r"token ids differ at 1 of 2 positions, first at index \(0,\): \d+ instead of \d+", res.detail)


def test_sse_parser_that_drops_the_last_content_event_fails():
    def drop_last(body):  # stops at the event before [DONE], unread
        events = [ln[len("data: "):] for ln in body.splitlines() if ln.startswith("data: ")]
        out = []
        for event, after in zip(events, events[1:]):
            if after == "[DONE]":
                break
            for c in json.loads(event).get("choices", []):
                out.append((c["delta"].get("content") if "delta" in c else c.get("text")) or "")
        return "".join(out)

    res = run_check("13.5", drop_last)
    assert res.status == "failed" and "the last content chunk also carries the finish reason" in res.detail


# -- hints -------------------------------------------------------------------------------


def _solution_code() -> dict[str, list[str]]:
    """Code lines of each task's solution block (solutions/*.ipynb), by task id."""
    out: dict[str, list[str]] = {}
    for sol in sorted((ROOT / "solutions").glob("[0-9]*.ipynb")):
        nb = nbformat.read(sol, as_version=4)
        for k, cell in enumerate(nb.cells):
            if cell.cell_type == "code" and "# BEGIN SOLUTION" in cell.source:
                block = cell.source.split("# BEGIN SOLUTION", 1)[1].split("# END SOLUTION", 1)[0]
                out.setdefault(notebooks._next_task(nb.cells, k + 1), []).extend(block.splitlines())
    return out


def test_hints_point_to_the_idea_not_the_code():
    solutions = _solution_code()
    for tid in task_ids():
        task = get_task(tid)
        hint = task.hint
        assert hint, f"{tid} has no hint"
        # no function call and no assignment: a hint is prose, not a line to paste
        assert not re.search(r"[A-Za-z_][\w.]*\(", hint), (tid, hint)
        assert not re.search(r"\w\s*=\s*\w", hint), (tid, hint)
        code = solutions.get(tid, []) + inspect.getsource(task.reference).splitlines()[1:]
        for line in code:
            line = line.split("#")[0].strip()
            if len(line) >= 12:
                assert line not in hint, (tid, line)


# -- which lesson a notebook grades ------------------------------------------------------


def test_notebook_lesson_from_the_file_name():
    nb = nbformat.v4.new_notebook()
    assert grading.notebook_lesson("somewhere/03_attention.ipynb", nb) == 3


def test_notebook_lesson_from_metadata_survives_a_rename():
    nb = nbformat.v4.new_notebook(metadata={"gptcourse": {"lesson": 5}})
    assert grading.notebook_lesson("my copy.ipynb", nb) == 5


def test_notebook_lesson_unknown_says_how_to_fix():
    with pytest.raises(ValueError, match="NN_ prefix"):
        grading.notebook_lesson("attention.ipynb", nbformat.v4.new_notebook())


def test_lesson_task_ids_come_from_the_registry():
    assert grading.lesson_task_ids(1) == [f"1.{k}" for k in range(1, 9)]
    assert grading.lesson_task_ids(13)[0] == "13.1" and "1.3" not in grading.lesson_task_ids(13)


def test_skip_unfinished_reports_the_stub_instead_of_raising(capsys):
    with grading.skip_unfinished():
        _stub("x")
    out = capsys.readouterr().out
    assert "not yet" in out and "Exercise 1.1" in out


def test_skip_unfinished_lets_other_errors_through():
    with pytest.raises(ZeroDivisionError), grading.skip_unfinished():
        _ = 1 / 0
