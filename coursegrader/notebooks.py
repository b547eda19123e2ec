"""Reading notebooks safely, finding nbgrader cells, and writing answers into a notebook.

A submission in `check` and `demo` is always "the release notebook with some answers written in",
exactly what a student hands in: the reference solution, a wrong answer from the catalogue, or nothing.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from .errors import CourseError

SOLUTION = ("BEGIN SOLUTION", "END SOLUTION")
HIDDEN_TESTS = ("BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
MARK_SCHEME = ("BEGIN MARK SCHEME", "END MARK SCHEME")  # a written answer's rubric, for the TA only
MARKERS = (*SOLUTION, *HIDDEN_TESTS, *MARK_SCHEME)
# An exercise's markdown heading: "### Exercise 2.3 (2 points)" (groups: the number, the points).
EXERCISE_HEADING = re.compile(r"^#+\s*Exercise\s+(\d+(?:\.\d+)*)\s*\((\d+(?:\.\d+)?) points?\)", re.M)


def read_notebook(path: Path) -> NotebookNode:
    """Read and validate a notebook; any problem becomes one CourseError line naming the file."""
    if not path.is_file():
        raise CourseError(f"{path}: notebook not found")
    try:
        text = path.read_text(encoding="utf-8")
        json.loads(text)
    except UnicodeDecodeError:
        raise CourseError(f"{path}: not a text file (is it really a notebook?)") from None
    except json.JSONDecodeError as exc:
        raise CourseError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    try:
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
    except Exception as exc:  # nbformat raises several types; all mean "not a notebook"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CourseError(f"{path}: not a Jupyter notebook ({first})") from None
    return nb


def nbgrader_meta(cell: NotebookNode) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def source_of(config, resources: dict) -> Path:
    """The source notebook of the notebook an nbgrader preprocessor is working on (resources["nbgrader"] names its
    assignment and notebook), in the course that `config` points at."""
    from nbgrader.coursedir import CourseDirectory

    ids = resources.get("nbgrader", {})
    coursedir = CourseDirectory(config=config)
    return Path(coursedir.format_path(coursedir.source_directory, ".", ids.get("assignment", "")),
                f"{ids.get('notebook', '')}.ipynb")


def grade_id(cell: NotebookNode) -> str | None:
    return nbgrader_meta(cell).get("grade_id")


def is_solution(cell: NotebookNode) -> bool:
    return bool(nbgrader_meta(cell).get("solution"))


def is_test(cell: NotebookNode) -> bool:
    """An autograded test cell: graded, not a solution, code."""
    meta = nbgrader_meta(cell)
    return bool(meta.get("grade")) and not meta.get("solution") and cell.cell_type == "code"


def is_written(cell: NotebookNode) -> bool:
    """A manually graded answer: a solution cell that carries points itself (nbgrader's "Manually graded answer").
    The autograder cannot score it; a TA does, in the formgrader."""
    meta = nbgrader_meta(cell)
    return bool(meta.get("grade")) and bool(meta.get("solution"))


def is_mark_scheme(cell: NotebookNode) -> bool:
    """A cell that holds a mark scheme region (the rubric of the written answer above it)."""
    return MARK_SCHEME[0] in cell.source


def solution_cells(nb: NotebookNode) -> dict[str, NotebookNode]:
    return {grade_id(c): c for c in nb.cells if is_solution(c)}


def points_by_test_cell(nb: NotebookNode) -> dict[str, float]:
    """grade_id -> points of every autograded test cell, in notebook order."""
    return {grade_id(c): float(nbgrader_meta(c).get("points", 0)) for c in nb.cells if is_test(c)}


def points_by_written_cell(nb: NotebookNode) -> dict[str, float]:
    """grade_id -> points of every written answer (graded by a TA, not by the tests), in notebook order."""
    return {grade_id(c): float(nbgrader_meta(c).get("points", 0)) for c in nb.cells if is_written(c)}


def hidden_points(nb: NotebookNode) -> tuple[float, float]:
    """(points of the test cells that hold hidden tests, all points). A test cell's points need all its tests,
    so these are the points a student cannot know they have from the visible tests alone."""
    cells = [c for c in nb.cells if is_test(c)]
    hidden = sum(float(nbgrader_meta(c).get("points", 0)) for c in cells if HIDDEN_TESTS[0] in c.source)
    return hidden, sum(float(nbgrader_meta(c).get("points", 0)) for c in cells)


def hidden_points_line(nb: NotebookNode) -> str:
    """The sentence at the top of every notebook that says how many points the hidden tests carry."""
    hidden, total = hidden_points(nb)
    share = f"all {total:g} points" if hidden == total else f"{hidden:g} of the {total:g} points"
    return f"**The hidden tests decide {share}.**"


def strip_markers(source: str) -> str:
    """The source without nbgrader's marker lines: what a student who solved the cell would have."""
    return "\n".join(line for line in source.splitlines() if not any(m in line for m in MARKERS))


def split_regions(source: str) -> tuple[list[str], list[str]]:
    """(secret, public) lines of a cell: inside solution / hidden-test / mark-scheme regions, and outside them."""
    secret, public, inside = [], [], False
    for line in source.splitlines():
        if any(line.strip().endswith(m) for m in (SOLUTION[0], HIDDEN_TESTS[0], MARK_SCHEME[0])):
            inside = True
        elif any(line.strip().endswith(m) for m in (SOLUTION[1], HIDDEN_TESTS[1], MARK_SCHEME[1])):
            inside = False
        else:
            (secret if inside else public).append(line)
    return secret, public


def with_answers(nb: NotebookNode, answers: Mapping[str, str]) -> NotebookNode:
    """A copy of `nb` whose solution cells named in `answers` hold the given code instead."""
    filled = copy.deepcopy(nb)
    cells = solution_cells(filled)
    for gid, code in answers.items():
        if gid not in cells:
            raise CourseError(f"no solution cell with grade_id '{gid}'")
        cells[gid].source = code.strip("\n")
    return filled


def write_notebook(nb: NotebookNode, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
