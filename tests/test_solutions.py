"""Solution notebooks: every cell runs without an error and the notebook grades N/N.

Each solution is executed once, here: nbval does not also run solutions/ (see testpaths in
pyproject.toml), since grading a notebook executes every cell of it anyway. A module of its
own, so that pytest-xdist's loadscope can run it beside tests/test_exercises.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gptcourse.grading import grade

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9]*.ipynb"))


@pytest.mark.parametrize("solution", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_solution_runs_without_errors_and_grades_full_marks(solution):
    report = grade(solution)
    assert not report.raised, "\n".join(report.raised)
    assert report.total >= 5
    assert report.score == report.total, report.table()
