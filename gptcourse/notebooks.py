"""Notebook housekeeping: exercises from solutions, executing lessons with saved outputs.

Each solution notebook ``solutions/NN_name.ipynb`` is the source of its exercise notebook:
code between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` becomes a stub that raises
``NotImplementedError("Exercise N.M: title")`` (the id comes from the next ``check(...)`` call),
and outputs are cleared. The exercise's metadata records its lesson (``gptcourse.lesson``), so
``gptcourse grade`` knows which tasks to expect even when the file is renamed.

    python -m gptcourse.notebooks exercises            # regenerate exercises/ from solutions/
    python -m gptcourse.notebooks execute notebooks solutions   # run in place, save outputs
    python -m gptcourse.notebooks check                # exercises/ are in sync (exit 1 if not)
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
BEGIN = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION\s*$")
END = re.compile(r"^[ \t]*# END SOLUTION\s*$")
CHECK = re.compile(r"""\bcheck\(\s*["'](\d+\.\d+)["']""")


def _next_task(cells, start: int) -> str | None:
    for cell in cells[start:]:
        if cell.cell_type == "code":
            m = CHECK.search(cell.source)
            if m:
                return m.group(1)
    return None


def strip_solution(source: str, task_id: str | None) -> str:
    """Replace every solution block in a cell's source with a NotImplementedError stub."""
    from .grading import get_task

    title = get_task(task_id).title if task_id else "write this code"
    out: list[str] = []
    inside = False
    for line in source.split("\n"):
        m = BEGIN.match(line)
        if m:
            if inside:
                raise ValueError("nested # BEGIN SOLUTION")
            inside = True
            label = f"Exercise {task_id}: {title}" if task_id else title
            out.append(f"{m.group('indent')}raise NotImplementedError({label!r})")
        elif END.match(line):
            if not inside:
                raise ValueError("# END SOLUTION without # BEGIN SOLUTION")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError("# BEGIN SOLUTION without # END SOLUTION")
    return "\n".join(out)


def make_exercise(solution, lesson: int | None = None):
    """The exercise notebook for a solution notebook (a new object; outputs cleared), its
    metadata naming ``lesson`` when given."""
    nb = copy.deepcopy(solution)
    if lesson is not None:
        nb.metadata["gptcourse"] = {"lesson": lesson}
    for k, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            if "# BEGIN SOLUTION" in cell.source:
                cell.source = strip_solution(cell.source, _next_task(nb.cells, k + 1))
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.pop("execution", None)  # timestamps of the run that made the solution
        elif cell.cell_type == "markdown":
            cell.source = cell.source.replace("(solution)", "(exercise)").replace(
                "Solutions —", "Exercises —"
            )
    return nb


def _same(a, b) -> bool:
    strip = lambda nb: (nb.metadata.get("gptcourse"), [(c.cell_type, c.source) for c in nb.cells])  # noqa: E731
    return strip(a) == strip(b)


def _exercise_for(sol: Path):
    from .grading import notebook_lesson

    nb = nbformat.read(str(sol), as_version=4)
    return make_exercise(nb, notebook_lesson(sol, nb))


def exercise_pairs(root: Path = ROOT):
    for sol in sorted((root / "solutions").glob("[0-9]*.ipynb")):
        yield sol, root / "exercises" / sol.name


def write(nb, path: Path) -> None:
    _, nb = nbformat.validator.normalize(nb)
    nbformat.validate(nb)
    nbformat.write(nb, str(path))


def cmd_exercises(root: Path = ROOT) -> int:
    for sol, ex in exercise_pairs(root):
        write(_exercise_for(sol), ex)
        print(f"wrote {ex.relative_to(root)}")
    return 0


def cmd_check(root: Path = ROOT) -> int:
    bad = 0
    for sol, ex in exercise_pairs(root):
        want = _exercise_for(sol)
        if not ex.exists() or not _same(want, nbformat.read(str(ex), as_version=4)):
            print(f"{ex.relative_to(root)} is out of date: run python -m gptcourse.notebooks exercises")
            bad += 1
    return 1 if bad else 0


def execute(path: Path, timeout: int = 1800) -> float:
    """Execute a notebook in place (outputs saved); returns the seconds it took."""
    from .grading import execute_notebook

    nb = nbformat.read(str(path), as_version=4)
    t0 = time.perf_counter()
    execute_notebook(nb, path.parent, timeout=timeout, allow_errors=False)
    write(nb, path)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gptcourse.notebooks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("exercises", help="regenerate exercises/ from solutions/")
    sub.add_parser("check", help="fail when exercises/ is out of date")
    p = sub.add_parser("execute", help="execute notebooks in place, saving outputs")
    p.add_argument("paths", nargs="+", help="notebooks or folders of notebooks")
    args = parser.parse_args(argv)
    if args.cmd == "exercises":
        return cmd_exercises()
    if args.cmd == "check":
        return cmd_check()
    files: list[Path] = []
    for p in map(Path, args.paths):
        files += sorted(p.glob("[0-9]*.ipynb")) if p.is_dir() else [p]
    profile = os.environ.get("GPTCOURSE_PROFILE", "(detected)")
    for f in files:
        print(f"executing {f} (profile {profile}) ...", flush=True)
        print(f"  done in {execute(f):.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
