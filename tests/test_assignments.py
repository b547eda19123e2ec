"""Static checks of every assignment's notebooks and catalogue: fast, no kernel needed."""

from __future__ import annotations

import ast
import re
from collections import Counter

import pytest

from coursegrader.catalogue import load_catalogue
from coursegrader.course import Course
from coursegrader.notebooks import (EXERCISE_HEADING, HIDDEN_TESTS, MARK_SCHEME, SOLUTION, grade_id, hidden_points_line,
                                    is_mark_scheme, is_solution, is_test, is_written, nbgrader_meta, points_by_test_cell,
                                    points_by_written_cell, read_notebook)
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
    """Every autograded answer has its test cell; a written answer (graded by a TA) has none."""
    pending = None
    for cell in source.cells:
        if is_solution(cell) and not is_written(cell):
            assert pending is None, f"{aid}: solution '{pending}' has no test cell before the next exercise"
            pending = grade_id(cell)
        elif is_test(cell):
            assert pending is not None, f"{aid}: test cell '{grade_id(cell)}' follows no solution cell"
            assert grade_id(cell) == f"test_{pending}", f"{aid}: test cell '{grade_id(cell)}' should be 'test_{pending}'"
            pending = None
    assert pending is None, f"{aid}: solution '{pending}' has no test cell"


def test_points_add_up(source, aid):
    """Each 'Exercise X.Y (N points)' heading carries the points of its test cell (or of its written answer), and
    the title states the autograded total and the written answers' points apart."""
    graded = [(grade_id(c), float(nbgrader_meta(c)["points"])) for c in source.cells if is_test(c) or is_written(c)]
    headings = [float(p) for c in source.cells if c.cell_type == "markdown" and not is_written(c)
                for _, p in EXERCISE_HEADING.findall(c.source)]
    assert headings == [p for _, p in graded], f"{aid}: exercise headings {headings} vs graded cells {graded}"
    total = sum(points_by_test_cell(source).values())
    assert re.search(rf"\b{total:g} points\b", source.cells[0].source), f"{aid}: the title cell must state the total, {total:g} points"
    written = sum(points_by_written_cell(source).values())
    if written:
        assert re.search(rf"\b{written:g} more points\b", source.cells[0].source), \
            f"{aid}: the title cell must say that a TA grades the written answers, {written:g} more points"


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
    for cell in (c for c in source.cells if is_solution(c) and not is_written(c)):
        gid = grade_id(cell)
        assert "BEGIN SOLUTION" in cell.source, f"{aid}/{gid}: no solution markers"
        tree = ast.parse(cell.source)
        defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assigned = [t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)]
        assert gid in defined + assigned, f"{aid}/{gid}: the cell should define '{gid}'"


def test_catalogue_has_two_wrong_answers_per_exercise(course, source, aid):
    entries = load_catalogue(course.catalogue_file(aid), aid, source)
    counts = Counter(e.cell for e in entries)
    thin = [gid for gid in (grade_id(c) for c in source.cells if is_solution(c) and not is_written(c)) if counts[gid] < 2]
    assert not thin, f"{aid}: fewer than two wrong answers in the catalogue for {thin}"
    graded_by_hand = {e.id for e in entries if e.cell in points_by_written_cell(source)}
    assert not graded_by_hand, f"{aid}: catalogue entries for written answers, which autograde cannot score: {graded_by_hand}"


def test_one_written_answer_with_its_mark_scheme_after_it(source, aid):
    """One written answer (a manually graded markdown cell, 1-2 points) whose model answer sits between the solution
    markers, so that the release shows "YOUR ANSWER HERE"; right after it a locked read-only markdown cell holds its
    mark scheme. Locked with a grade_id is what makes autograde restore the mark scheme for the formgrader
    (nbgrader_config.py); a mark scheme anywhere else would silently not reach the TA."""
    cells = source.cells
    written = [i for i, c in enumerate(cells) if is_written(c)]
    assert len(written) == 1, f"{aid}: expected one written answer, found {len(written)}"
    for i in written:
        answer, rubric = cells[i], cells[i + 1] if i + 1 < len(cells) else None
        gid, meta = grade_id(answer), nbgrader_meta(answer)
        assert answer.cell_type == "markdown" and not meta.get("locked"), f"{aid}/{gid}: a written answer is an editable markdown cell"
        assert 1 <= float(meta["points"]) <= 2, f"{aid}/{gid}: a written answer is worth 1 or 2 points"
        lines = [line.strip() for line in answer.source.splitlines()]
        assert lines[0].endswith(SOLUTION[0]) and lines[-1].endswith(SOLUTION[1]) and len(lines) > 3, \
            f"{aid}/{gid}: the cell is the model answer between the solution markers, and nothing else"
        assert rubric is not None and is_mark_scheme(rubric), f"{aid}/{gid}: the next cell must hold its mark scheme"
        rmeta = nbgrader_meta(rubric)
        assert rubric.cell_type == "markdown" and rmeta.get("locked") and rmeta.get("grade_id") \
            and not rmeta.get("grade") and not rmeta.get("solution") and not rmeta.get("task"), \
            f"{aid}/{gid}: the mark scheme cell must be a locked read-only markdown cell with a grade_id"
        inside = rubric.source.split(MARK_SCHEME[0])[1].split(MARK_SCHEME[1])[0]
        assert MARK_SCHEME[1] in rubric.source and "point" in inside and len(inside) > 200, \
            f"{aid}/{gid}: the mark scheme says what earns each point"
        assert rubric.source.split(MARK_SCHEME[0])[0].strip(), \
            f"{aid}/{gid}: keep a visible line before the mark scheme, so that students do not see an empty cell"
    stray = [i for i, c in enumerate(cells) if is_mark_scheme(c) and i - 1 not in written]
    assert not stray, f"{aid}: mark schemes in cells {stray}, which do not follow a written answer"


def test_notebook_has_a_figure_and_a_widget(source, aid):
    code = "\n".join(c.source for c in source.cells if c.cell_type == "code")
    assert "plt." in code or "matplotlib" in code, f"{aid}: no figure"
    assert "ipywidgets" in code or "interact" in code, f"{aid}: no widget"


def test_release_exists_without_secrets(course, aid):
    text = course.release_notebook(aid).read_text(encoding="utf-8")
    for marker in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS", "MARK SCHEME"):
        assert marker not in text, f"release/{aid} contains '{marker}'"


def test_quiz_hidden_tests_compare_a_plain_set(source, aid):
    """`answer == {...}` lets a set subclass whose __eq__ always says yes pass; `set(answer) == {...}` does not."""
    bare = [line.strip() for cell in source.cells if is_test(cell)
            for line in cell.source.splitlines() if re.search(r"assert\s+answer_\w+\s*==", line)]
    assert not bare, f"{aid}: compare set(answer_...) in hidden quiz tests: {bare}"
