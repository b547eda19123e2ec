"""Static checks of every assignment's notebooks and catalogue: fast, no kernel needed."""

from __future__ import annotations

import ast
import re
from collections import Counter

import pytest

from coursegrader.catalogue import load_catalogue
from coursegrader.course import Course
from coursegrader.notebooks import (EXERCISE_HEADING, HIDDEN_TESTS, grade_id, hidden_points_line, is_solution, is_test,
                                    nbgrader_meta, points_by_test_cell, read_notebook)
from conftest import REPO

LIVE = Course.load(REPO).live()


@pytest.fixture(params=LIVE)
def aid(request) -> str:
    return request.param


@pytest.fixture
def source(course, aid):
    return read_notebook(course.source_notebook(aid))


def test_there_is_at_least_one_assignment():
    assert LIVE, "no assignment has a source notebook yet"


def test_no_outputs_saved_in_source(source, aid):
    for index, cell in enumerate(source.cells):
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{aid} cell {index}: outputs saved in source/"


def test_grade_ids_unique_and_present(source, aid):
    ids = [grade_id(c) for c in source.cells if nbgrader_meta(c)]
    assert None not in ids, f"{aid}: an nbgrader cell has no grade_id"
    dupes = [gid for gid, n in Counter(ids).items() if n > 1]
    assert not dupes, f"{aid}: duplicate grade_ids {dupes}"


def test_every_solution_has_its_test_cell_next(source, aid):
    pending = None
    for cell in source.cells:
        if is_solution(cell):
            assert pending is None, f"{aid}: solution '{pending}' has no test cell before the next exercise"
            pending = grade_id(cell)
        elif is_test(cell):
            assert pending is not None, f"{aid}: test cell '{grade_id(cell)}' follows no solution cell"
            assert grade_id(cell) == f"test_{pending}", f"{aid}: test cell '{grade_id(cell)}' should be 'test_{pending}'"
            pending = None
    assert pending is None, f"{aid}: solution '{pending}' has no test cell"


def test_points_add_up(source, aid):
    """Each 'Exercise X.Y (N points)' heading carries the points of its test cell, and the title states the total."""
    points, headings = points_by_test_cell(source), []
    for cell in source.cells:
        if cell.cell_type == "markdown":
            headings += [float(p) for _, p in EXERCISE_HEADING.findall(cell.source)]
    assert headings == list(points.values()), f"{aid}: exercise headings {headings} vs test cell points {list(points.values())}"
    total = sum(points.values())
    assert re.search(rf"\b{total:g} points\b", source.cells[0].source), f"{aid}: the title cell must state the total, {total:g} points"


def test_title_says_how_many_points_the_hidden_tests_decide(source, aid):
    """So that 'all visible tests passed' is not read as full marks (the sentence is computed from the cells)."""
    line = hidden_points_line(source)
    assert line in source.cells[0].source, f"{aid}: the title cell must say {line!r}"


def test_visible_tests_say_what_they_checked(source, aid):
    """Each test cell's visible part ends by printing what it checked and that hidden tests check more."""
    for cell in filter(is_test, source.cells):
        visible = ast.parse(cell.source.split(HIDDEN_TESTS[0])[0])
        said = [ast.unparse(node.args[0]) for node in ast.walk(visible) if isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "print" and node.args]
        assert any("checked" in text and "hidden" in text for text in said), (
            f"{aid}/{grade_id(cell)}: the visible tests must print what they checked and that the hidden tests check more")


def test_test_cells_have_visible_and_hidden_tests_with_messages(source, aid):
    for cell in filter(is_test, source.cells):
        gid = grade_id(cell)
        assert HIDDEN_TESTS[0] in cell.source, f"{aid}/{gid}: no hidden tests"
        visible = cell.source.split(HIDDEN_TESTS[0])[0]
        assert "assert" in visible, f"{aid}/{gid}: no visible test"
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Assert):
                assert node.msg is not None, f"{aid}/{gid} line {node.lineno}: an assert without a message"
        last = ast.parse(cell.source).body[-1]
        assert not isinstance(last, ast.Expr) or isinstance(last.value, ast.Call), \
            f"{aid}/{gid}: ends with an expression; nbgrader would read a number as partial credit"


def test_solution_cells_hold_one_answer(source, aid):
    for cell in filter(is_solution, source.cells):
        gid = grade_id(cell)
        assert "BEGIN SOLUTION" in cell.source, f"{aid}/{gid}: no solution markers"
        tree = ast.parse(cell.source)
        defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assigned = [t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)]
        assert gid in defined + assigned, f"{aid}/{gid}: the cell should define '{gid}'"


def test_catalogue_has_two_wrong_answers_per_exercise(course, source, aid):
    entries = load_catalogue(course.catalogue_file(aid), aid, source)
    counts = Counter(e.cell for e in entries)
    thin = [gid for gid in (grade_id(c) for c in source.cells if is_solution(c)) if counts[gid] < 2]
    assert not thin, f"{aid}: fewer than two wrong answers in the catalogue for {thin}"


def test_notebook_has_a_figure_and_a_widget(source, aid):
    code = "\n".join(c.source for c in source.cells if c.cell_type == "code")
    assert "plt." in code or "matplotlib" in code, f"{aid}: no figure"
    assert "ipywidgets" in code or "interact" in code, f"{aid}: no widget"


def test_release_exists_without_secrets(course, aid):
    text = course.release_notebook(aid).read_text(encoding="utf-8")
    for marker in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        assert marker not in text, f"release/{aid} contains '{marker}'"


def test_quiz_hidden_tests_compare_a_plain_set(source, aid):
    """`answer == {...}` lets a set subclass whose __eq__ always says yes pass; `set(answer) == {...}` does not."""
    bare = [line.strip() for cell in source.cells if is_test(cell)
            for line in cell.source.splitlines() if re.search(r"assert\s+answer_\w+\s*==", line)]
    assert not bare, f"{aid}: compare set(answer_...) in hidden quiz tests: {bare}"
