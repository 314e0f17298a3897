"""The self-grading framework: check() verdicts, reports and the lesson task registry."""

from __future__ import annotations

import inspect

import pytest

from gptcourse import grading
from gptcourse.grading import Case, Task, check, get_task, run_check, same, task_ids


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


def test_learner_cannot_corrupt_the_inputs():
    def mutating(ids):
        counts = {}
        for p in zip(ids, ids[1:]):
            counts[p] = counts.get(p, 0) + 1
        ids.clear()  # mutates its argument; the reference must still see the original
        return counts

    assert run_check("1.2", mutating).status == "passed"


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


def test_same_compares_tensors_with_tolerance():
    torch = pytest.importorskip("torch")
    x = torch.ones(3)
    assert same(x, x + 1e-7) is None
    assert "shape" in same(x, torch.ones(4))
    assert same(x, x + 1) is not None


def test_register_rejects_bad_and_duplicate_ids():
    t = Task("1.1", "dup", _utf8, lambda: [Case(("a",))])
    with pytest.raises(ValueError):
        grading.register(t)
    with pytest.raises(ValueError):
        grading.register(Task("one", "bad id", _utf8, lambda: []))


def test_skip_unfinished_reports_the_stub_instead_of_raising(capsys):
    with grading.skip_unfinished():
        _stub("x")
    out = capsys.readouterr().out
    assert "not yet" in out and "Exercise 1.1" in out


def test_skip_unfinished_lets_other_errors_through():
    with pytest.raises(ZeroDivisionError), grading.skip_unfinished():
        _ = 1 / 0
