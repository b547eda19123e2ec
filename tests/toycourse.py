"""A two-exercise course built on the fly, so the tooling is tested in seconds and apart from the real notebooks."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]


def _cell(kind: str, source: str, **nbgrader) -> nbformat.NotebookNode:
    make = nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell
    cell = make(textwrap.dedent(source).strip("\n"))
    if nbgrader:
        cell.metadata["nbgrader"] = {"schema_version": 3, "task": False, **nbgrader}
    return cell


def solution(gid: str, source: str):
    return _cell("code", source, grade_id=gid, solution=True, grade=False, locked=False)


def tests(gid: str, points: float, source: str):
    return _cell("code", source, grade_id=gid, solution=False, grade=True, locked=True, points=points)


def written(gid: str, points: float, source: str):
    """A written answer: a manually graded markdown cell (nbgrader's "Manually graded answer")."""
    return _cell("markdown", source, grade_id=gid, solution=True, grade=True, locked=False, points=points)


def read_only(gid: str, source: str):
    """A locked markdown cell (nbgrader's "Read-only"): here, the mark scheme of the written answer above it."""
    return _cell("markdown", source, grade_id=gid, solution=False, grade=False, locked=True)


RUBRIC = "Full marks only if the answer names the factor 2 and says why it is linear."
MODEL_ANSWER = "Doubling is linear: it multiplies every entry by the factor 2."


def written_cells() -> list[nbformat.NotebookNode]:
    """The exercise heading, the answer cell and its mark scheme, as the course's notebooks have them."""
    return [
        _cell("markdown", "### Exercise 3 (2 points): written answer\n\nIn one sentence: what does `double` do?"),
        written("written_double", 2, f"""
            ### BEGIN SOLUTION
            {MODEL_ANSWER}
            ### END SOLUTION
        """),
        read_only("mark_scheme_double", f"""
            *Graded by a teaching assistant.*
            ### BEGIN MARK SCHEME
            {RUBRIC}
            ### END MARK SCHEME
        """),
    ]


def toy_notebook() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        _cell("markdown", "# Toy assignment"),
        _cell("code", "import numpy as np"),
        solution("double", '''
            def double(x):
                """Twice x."""
                ### BEGIN SOLUTION
                return 2 * np.asarray(x)
                ### END SOLUTION
        '''),
        tests("test_double", 2, '''
            assert double(1) == 2, "double(1) should be 2"
            ### BEGIN HIDDEN TESTS
            _twice = lambda v: 2 * np.asarray(v)  # a reference helper: a student's code must not reach it
            assert np.allclose(double(np.arange(5)), np.arange(0, 10, 2)), "double must work elementwise"
            assert np.allclose(double(np.arange(3.0)), _twice(np.arange(3.0))), "double must work on floats"
            ### END HIDDEN TESTS
        '''),
        solution("answer_quiz", '''
            ### BEGIN SOLUTION
            answer_quiz = {"b"}
            ### END SOLUTION
        '''),
        tests("test_answer_quiz", 1, '''
            assert isinstance(answer_quiz, set), "answer_quiz must be a set of letters"
            ### BEGIN HIDDEN TESTS
            assert set(answer_quiz) == {"b"}, "not the right choice"
            ### END HIDDEN TESTS
        '''),
    ]
    return nb


CATALOGUE = '''
[[wrong]]
id = "double/square"
cell = "double"
fails = ["test_double"]
mistake = "Squares instead of doubling."
code = """
def double(x):
    return np.asarray(x) ** 2
"""

[[wrong]]
id = "double/scalar-only"
cell = "double"
fails = ["test_double"]
mistake = "Works for 1 only."
code = """
def double(x):
    return 2
"""

[[wrong]]
id = "answer_quiz/a"
cell = "answer_quiz"
fails = ["test_answer_quiz"]
mistake = "Picks a."
code = 'answer_quiz = {"a"}'
'''


def make_toy_course(root: Path, *, release: bool = True, with_written: bool = False) -> Path:
    """Write a course with the single assignment `toy` under `root`; optionally generate its release.
    `with_written`: the notebook ends with a written answer (graded by a TA) and its mark scheme."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "nbgrader_config.py", root / "nbgrader_config.py")
    (root / "course.toml").write_text('[assignments.toy]\ntitle = "Toy"\nbudget_seconds = 30\n')
    (root / "source" / "toy").mkdir(parents=True, exist_ok=True)
    nb = toy_notebook()
    if with_written:
        nb.cells += written_cells()
    nbformat.write(nb, str(root / "source" / "toy" / "toy.ipynb"))
    (root / "tests" / "wrong_answers").mkdir(parents=True, exist_ok=True)
    (root / "tests" / "wrong_answers" / "toy.toml").write_text(CATALOGUE)
    if release:
        from coursegrader.course import Course
        from coursegrader.release import publish

        publish(Course.load(root), ["toy"])
    return root
