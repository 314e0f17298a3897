"""Exercise notebooks: pristine ones grade 0/N, a wrong answer is caught, the task list comes
from the registry (not from the notebook's check cells). Solutions: tests/test_solutions.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from gptcourse import notebooks
from gptcourse.grading import grade

ROOT = Path(__file__).resolve().parent.parent
PAIRS = list(notebooks.exercise_pairs(ROOT))
IDS = [sol.stem for sol, _ in PAIRS]


def test_every_lesson_has_exercise_and_solution():
    lessons = {p.name for p in (ROOT / "notebooks").glob("[0-9]*.ipynb") if not p.name.startswith("00")}
    assert lessons <= {p.name for p in (ROOT / "exercises").glob("*.ipynb")}
    assert lessons <= {p.name for p in (ROOT / "solutions").glob("*.ipynb")}


def test_exercises_are_generated_from_solutions():
    assert notebooks.cmd_check(ROOT) == 0


@pytest.mark.parametrize(("solution", "exercise"), PAIRS, ids=IDS)
def test_pristine_exercise_grades_zero(solution, exercise):
    report = grade(exercise)
    assert report.total >= 5
    assert [r[2] for r in report.rows] == ["not attempted"] * report.total, report.table()
    assert report.score == 0
    assert not report.errors, report.table()


def _notebook(path: Path, *sources: str, metadata: dict | None = None) -> Path:
    nb = nbformat.v4.new_notebook(metadata=metadata or {})
    nb.cells = [nbformat.v4.new_code_cell(src) for src in sources]
    nbformat.write(nb, path)
    return path


def test_a_deleted_check_cell_counts_as_not_attempted(tmp_path):
    # the only check left passes; lesson 1's other seven tasks must still be counted
    path = _notebook(tmp_path / "01_tokenization.ipynb",
                     "from gptcourse.grading import check\n"
                     "check('1.1', lambda text: list(text.encode('utf-8')))")
    report = grade(path)
    assert report.total == 8 and report.score == 1, report.table()
    status = {r[0]: r[2] for r in report.rows}
    assert status["1.3"] == "not attempted"
    assert any("the check cell for 1.3 is missing" in e for e in report.errors)


def test_a_check_cell_that_did_not_run_is_not_run(tmp_path):
    path = _notebook(tmp_path / "01_tokenization.ipynb",
                     "from gptcourse.grading import check\nif False:\n    check('1.1', lambda text: [])")
    status = {r[0]: r[2] for r in grade(path).rows}
    assert status["1.1"] == "not run"


def test_renamed_exercise_is_graded_by_its_metadata(tmp_path):
    nb = nbformat.read(ROOT / "exercises" / "02_embeddings_and_data.ipynb", as_version=4)
    assert nb.metadata["gptcourse"] == {"lesson": 2}
    path = _notebook(tmp_path / "my copy.ipynb", "x = 1", metadata=dict(nb.metadata))
    report = grade(path)
    assert [r[0] for r in report.rows] == [f"2.{k}" for k in range(1, 7)]


def test_wrong_implementation_is_reported_with_its_failing_case(tmp_path):
    nb = nbformat.read(ROOT / "solutions" / "01_tokenization.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.startswith("def merge("):
            # forgets to skip the second id of a merged pair
            cell.source = (
                "def merge(ids, pair, new_id):\n"
                "    out = []\n"
                "    for i, x in enumerate(ids):\n"
                "        out.append(new_id if tuple(ids[i:i + 2]) == tuple(pair) else x)\n"
                "    return out\n"
            )
            break
    else:
        pytest.fail("merge cell not found")
    path = tmp_path / "01_wrong.ipynb"
    nbformat.write(nb, path)
    report = grade(path)
    status = {r[0]: r[2] for r in report.rows}
    assert status["1.3"] == "failed"
    assert status["1.1"] == "passed"
    table = report.table()
    assert "✗" in table and "score: " in table
    # the failing case is shown under the table: input, expected and got
    assert "merge(ids=" in table and "expected:" in table and "got:" in table


def test_grade_cli_exit_codes(tmp_path):
    ex = ROOT / "exercises" / "01_tokenization.ipynb"
    bad = subprocess.run([sys.executable, "-m", "gptcourse", "grade", str(ex)], capture_output=True, text=True)
    assert bad.returncode == 1 and "score: 0/" in bad.stdout
    # every lesson-1 task checked against its reference: full marks without running a solution
    sol = _notebook(tmp_path / "01_references.ipynb",
                    "from gptcourse.grading import check, get_task, lesson_task_ids\n"
                    "for t in lesson_task_ids(1):\n    check(t, get_task(t).reference)")
    good = subprocess.run([sys.executable, "-m", "gptcourse", "grade", str(sol)], capture_output=True, text=True)
    assert good.returncode == 0 and "score: 8/8" in good.stdout


def test_grade_cli_rejects_a_notebook_of_no_known_lesson(tmp_path, capsys):
    from gptcourse.cli import main

    assert main(["grade", str(_notebook(tmp_path / "mine.ipynb"))]) == 2
    assert "NN_ prefix" in capsys.readouterr().err


def test_stub_replaces_the_solution_block():
    src = "def f(x):\n    '''doc'''\n    # BEGIN SOLUTION\n    return x\n    # END SOLUTION\n"
    out = notebooks.strip_solution(src, "1.1")
    assert "return x" not in out
    assert "    raise NotImplementedError('Exercise 1.1: UTF-8 bytes of a string')" in out
    with pytest.raises(ValueError):
        notebooks.strip_solution("# BEGIN SOLUTION\nx = 1\n", "1.1")
