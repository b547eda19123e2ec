"""The wrong-answer catalogue: plausible student mistakes that the hidden tests must reject.

Kept in tests/wrong_answers/<assignment>.toml (not in source/, whose files nbgrader copies into the
release). Each entry replaces the whole source of one solution cell and names the test cells that must
lose points; every other test cell must keep its points.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from nbformat import NotebookNode

from .errors import CourseError
from .notebooks import solution_cells, points_by_test_cell


@dataclass(frozen=True)
class WrongAnswer:
    id: str
    assignment: str
    cell: str  # grade_id of the solution cell whose source `code` replaces
    fails: frozenset[str]  # grade_ids of the test cells that must lose points
    mistake: str
    code: str


def load_catalogue(path: Path, assignment: str, source_nb: NotebookNode) -> list[WrongAnswer]:
    """Load and validate one assignment's catalogue against its source notebook."""
    if not path.is_file():
        return []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise CourseError(f"{path}: not valid TOML ({exc})") from None
    solutions, tests = solution_cells(source_nb), points_by_test_cell(source_nb)
    entries, seen = [], set()
    for i, raw in enumerate(data.get("wrong", []), start=1):
        where = f"{path.name} entry {i} ({raw.get('id', '?')})"
        missing = {"id", "cell", "fails", "mistake", "code"} - raw.keys()
        if missing:
            raise CourseError(f"{where}: missing {', '.join(sorted(missing))}")
        if raw["id"] in seen:
            raise CourseError(f"{where}: duplicate id")
        if raw["cell"] not in solutions:
            raise CourseError(f"{where}: no solution cell '{raw['cell']}' in the notebook")
        unknown = set(raw["fails"]) - tests.keys()
        if unknown or not raw["fails"]:
            raise CourseError(f"{where}: 'fails' must name test cells of the notebook (unknown: {sorted(unknown)})")
        seen.add(raw["id"])
        entries.append(
            WrongAnswer(raw["id"], assignment, raw["cell"], frozenset(raw["fails"]), raw["mistake"], raw["code"])
        )
    return entries


def group_into_rounds(entries: list[WrongAnswer]) -> list[list[WrongAnswer]]:
    """Pack wrong answers into as few submissions as possible, so that a class is cheap to grade.

    Within one round no two entries touch the same solution cell or name the same test cell, so the
    expected outcome of a round is the union of its entries' `fails`. A round whose outcome differs is
    re-graded one entry at a time to say which entry is wrong (see sampleclass.judge).
    """
    rounds: list[list[WrongAnswer]] = []
    for entry in entries:
        for group in rounds:
            if all(e.cell != entry.cell and not (e.fails & entry.fails) for e in group):
                group.append(entry)
                break
        else:
            rounds.append([entry])
    return rounds
