"""Unit tests of the course tooling, on the toy course (seconds, independent of the real notebooks)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from coursegrader import check, sampleclass
from coursegrader.catalogue import WrongAnswer, group_into_rounds, load_catalogue
from coursegrader.course import Course
from coursegrader.errors import CourseError
from coursegrader.notebooks import read_notebook, strip_markers, with_answers
from coursegrader.release import find_leaks, secret_lines
from conftest import SANDBOX, TRUSTED, TRUSTED_FLAGS
from toycourse import CATALOGUE, make_toy_course


def run_cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coursegrader", *args], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})


# --- notebooks -----------------------------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    ('{"cells": [', "not valid JSON"),
    ('{"hello": 1}', "not a Jupyter notebook"),
    ("\xff\xfe", None),
])
def test_bad_notebooks_give_one_clear_line(tmp_path, content, message):
    path = tmp_path / "nb.ipynb"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(CourseError) as err:
        read_notebook(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    if message:
        assert message in str(err.value)


def test_missing_notebook(tmp_path):
    with pytest.raises(CourseError, match="notebook not found"):
        read_notebook(tmp_path / "nope.ipynb")


def test_a_line_both_visible_and_hidden_is_not_secret():
    from coursegrader.notebooks import split_regions

    src = "import warnings\nassert f(1) == 2, 'msg'\n### BEGIN HIDDEN TESTS\nimport warnings\nassert f(3) == 6, 'hidden'\n### END HIDDEN TESTS"
    secret, public = split_regions(src)
    assert secret == ["import warnings", "assert f(3) == 6, 'hidden'"]
    assert public == ["import warnings", "assert f(1) == 2, 'msg'"]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src)]
    assert secret_lines(nb) == {"assert f(3) == 6, 'hidden'"}


def test_strip_markers_keeps_the_solution():
    src = "def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION"
    assert strip_markers(src) == "def f():\n    return 1"


def test_with_answers_replaces_only_named_cells(toy_course):
    nb = read_notebook(toy_course.release_notebook("toy"))
    filled = with_answers(nb, {"double": "def double(x):\n    return 2 * x"})
    sources = {c.metadata.get("nbgrader", {}).get("grade_id"): c.source for c in filled.cells}
    assert sources["double"] == "def double(x):\n    return 2 * x"
    assert sources["answer_quiz"] == {c.metadata.get("nbgrader", {}).get("grade_id"): c.source for c in nb.cells}["answer_quiz"]
    with pytest.raises(CourseError, match="no solution cell"):
        with_answers(nb, {"nope": "x = 1"})


# --- release -------------------------------------------------------------------------------------

def test_release_has_no_secrets(toy_course):
    source = read_notebook(toy_course.source_notebook("toy"))
    release = read_notebook(toy_course.release_notebook("toy"))
    assert find_leaks(source, release) == []
    assert "return 2 * np.asarray(x)" in secret_lines(source)
    text = toy_course.release_notebook("toy").read_text()
    assert "np.arange(0, 10, 2)" not in text and "return 2 * np.asarray(x)" not in text


def test_leak_check_finds_a_solution_line_and_a_hidden_test(toy_course):
    source = read_notebook(toy_course.source_notebook("toy"))
    release = read_notebook(toy_course.release_notebook("toy"))
    release.cells.append(nbformat.v4.new_code_cell("    return 2 * np.asarray(x)"))
    release.cells.append(nbformat.v4.new_code_cell('assert set(answer_quiz) == {"b"}, "not the right choice"'))
    leaks = find_leaks(source, release)
    assert len(leaks) == 2 and all("solution or hidden-test line" in leak for leak in leaks)


def test_out_of_date_release_is_detected(tmp_path):
    root = make_toy_course(tmp_path / "c")
    course = Course.load(root)
    from coursegrader.release import out_of_sync

    assert out_of_sync(course, ["toy"]) == {"toy": []}
    nb = read_notebook(course.source_notebook("toy"))
    nb.cells[0].source += "\nA new sentence."
    nbformat.write(nb, str(course.source_notebook("toy")))
    assert out_of_sync(course, ["toy"])["toy"] == ["toy.ipynb: differs from a fresh generation"]


# --- catalogue -----------------------------------------------------------------------------------

def test_catalogue_loads_and_validates(toy_course, tmp_path):
    nb = read_notebook(toy_course.source_notebook("toy"))
    entries = load_catalogue(toy_course.catalogue_file("toy"), "toy", nb)
    assert [e.id for e in entries] == ["double/square", "double/scalar-only", "answer_quiz/a"]
    bad = tmp_path / "bad.toml"
    bad.write_text(CATALOGUE.replace('fails = ["test_answer_quiz"]', 'fails = ["test_nope"]'))
    with pytest.raises(CourseError, match="test_nope"):
        load_catalogue(bad, "toy", nb)
    bad.write_text(CATALOGUE.replace('cell = "answer_quiz"', 'cell = "nope"'))
    with pytest.raises(CourseError, match="no solution cell 'nope'"):
        load_catalogue(bad, "toy", nb)


def test_rounds_never_share_a_cell_or_a_test():
    def w(i, cell, fails):
        return WrongAnswer(f"w{i}", "a", cell, frozenset(fails), "", "")

    entries = [w(1, "f", {"tf"}), w(2, "f", {"tf"}), w(3, "g", {"tg"}), w(4, "h", {"tf", "th"}), w(5, "g", {"tg"})]
    rounds = group_into_rounds(entries)
    assert sorted(e.id for r in rounds for e in r) == [e.id for e in entries]
    for r in rounds:
        assert len({e.cell for e in r}) == len(r)
        assert sum(len(e.fails) for e in r) == len(set().union(*(e.fails for e in r)))
    assert len(rounds) == 3


# --- grading -------------------------------------------------------------------------------------

def test_check_passes_on_the_toy_course(toy_course):
    (report,) = check.run(toy_course, ["toy"], **TRUSTED)
    assert report.ok, report.verdict.problems
    assert (report.verdict.points, report.verdict.reference, report.verdict.blank) == (3, 3, 0)
    assert len(report.verdict.caught) == report.wrong_total == 3


def test_check_names_wrong_answers_that_the_catalogue_gets_wrong(tmp_path):
    root = make_toy_course(tmp_path / "c")
    catalogue = root / "tests" / "wrong_answers" / "toy.toml"
    # 1. An entry that is not a mistake at all: the tests rightly keep its points, so check must say so.
    harmless = '\n[[wrong]]\nid = "double/harmless"\ncell = "double"\nfails = ["test_double"]\nmistake = "None."\n' \
               'code = """\ndef double(x):\n    return np.asarray(x) + np.asarray(x)\n"""\n'
    # 2. A mistake that also costs the quiz's points, which the entry does not name: it rewrites the student's own
    # later cells (the tests, in a kernel of their own, cannot be reached this way; the quiz's answer can).
    rewrite = "get_ipython().input_transformers_post.append(lambda lines: [l.replace('\"b\"', '\"a\"') for l in lines])"
    text = catalogue.read_text().replace('def double(x):\n    return 2\n', f'def double(x):\n    return 2\n{rewrite}\n')
    catalogue.write_text(text + harmless)
    (report,) = check.run(Course.load(root), ["toy"], **TRUSTED)
    problems = report.verdict.problems
    assert not report.ok
    assert any("double/harmless" in p and "keeps its points" in p for p in problems), problems
    assert any("double/scalar-only" in p and "also loses points on ['test_answer_quiz']" in p for p in problems), problems
    assert sorted(report.verdict.caught) == ["answer_quiz/a", "double/square"]


def test_sample_class_plan(toy_course):
    subs = sampleclass.plan(toy_course, "toy")
    assert [s.student for s in subs] == ["reference", "blank", "mistakes-1", "mistakes-2"]
    exact = sampleclass.plan(toy_course, "toy", exact=True)
    assert [s.student for s in exact][2:] == ["wrong-1", "wrong-2", "wrong-3"]


# --- command line --------------------------------------------------------------------------------

def test_cli_bad_input_is_one_line(toy_course):
    for args, expected in [(["check", "nope"], "unknown assignment 'nope'"),
                           (["autograde", "toy", *TRUSTED_FLAGS], "no submissions for toy")]:
        result = run_cli(toy_course.root, *args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().count("\n") == 0 and expected in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_cli_outside_a_course(tmp_path):
    result = run_cli(tmp_path, "check")
    assert result.returncode == 2 and "not inside a course" in result.stderr


def test_autograde_grades_good_and_names_broken_submissions(tmp_path):
    root = make_toy_course(tmp_path / "c")
    course = Course.load(root)
    good = root / "submitted" / "alice" / "toy" / "toy.ipynb"
    # alice hands in the solution; bob broken JSON; carol JSON that is not a notebook; dave nothing.
    sampleclass.hand_in(course, root, sampleclass.Submission("alice", "toy"))
    assert good.is_file()
    for student, content in [("bob", '{"cells": ['), ("carol", '{"hello": 1}')]:
        (root / "submitted" / student / "toy").mkdir(parents=True)
        (root / "submitted" / student / "toy" / "toy.ipynb").write_text(content)
    (root / "submitted" / "dave" / "toy").mkdir(parents=True)
    (root / "submitted" / "erin" / "toy").mkdir(parents=True)
    shutil.copy2(good, root / "submitted" / "erin" / "toy" / "toy (1).ipynb")  # renamed by the browser
    shutil.rmtree(root / "release")  # autograde must not need release/: it registers the assignment itself
    result = run_cli(root, "autograde", "toy", *TRUSTED_FLAGS)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.split()}
    assert "ok" in lines["alice"] and lines["alice"].split()[1:3] == ["3", "3"]
    assert "not valid JSON" in lines["bob"]
    assert "not a Jupyter notebook" in lines["carol"]
    assert "toy.ipynb is missing" in lines["dave"] and "renamed?" not in lines["dave"]
    assert "renamed?" not in lines["carol"], "an invalid notebook under the right name is not a renamed one"
    assert "toy.ipynb is missing" in lines["erin"] and "toy (1).ipynb: renamed?" in lines["erin"]
    assert "could not grade: bob, carol, dave, erin" in result.stdout
    assert (root / "autograded" / "alice" / "toy" / "toy.ipynb").is_file()


def test_autograde_registers_an_assignment_the_formgrader_left_without_notebooks(tmp_path):
    """Setting a due date or releasing in the formgrader (as on the course hub) makes the assignment's gradebook
    row without its notebooks: autograde must still register them, and keep the due date."""
    from nbgrader.api import Gradebook

    root = make_toy_course(tmp_path / "c")
    course = Course.load(root)
    course_id = course.nbgrader_config().CourseDirectory.course_id
    (root / "gradebook.db").unlink()  # the toy course comes registered: start from a gradebook without it
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}", course_id=course_id) as gb:
        gb.update_or_create_assignment("toy", duedate="2030-01-01 12:00:00")
        assert not gb.find_assignment("toy").notebooks
    sampleclass.hand_in(course, root, sampleclass.Submission("alice", "toy"))
    result = run_cli(root, "autograde", "toy", *TRUSTED_FLAGS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split()[1:3] for line in result.stdout.splitlines() if line.startswith("alice")] == [["3", "3"]]
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}", course_id=course_id) as gb:
        assert str(gb.find_assignment("toy").duedate) == "2030-01-01 12:00:00"


def test_feedback_hides_hidden_tests_but_keeps_the_message(tmp_path):
    from coursegrader.feedback import HIDDEN_NOTE, short_error, visible_part

    src = "assert f(1) == 2, 'visible'\n### BEGIN HIDDEN TESTS\nassert f(3) == 6, 'secret'\n### END HIDDEN TESTS"
    assert visible_part(src) == "assert f(1) == 2, 'visible'\n" + HIDDEN_NOTE
    err = nbformat.v4.new_output("error", ename="AssertionError", evalue="f(3) should be 6",
                                 traceback=["\x1b[0;31m---> 3 assert f(3) == 6, 'secret'", "AssertionError: f(3) should be 6"])
    assert short_error(err).traceback == ["AssertionError: f(3) should be 6"]


def test_check_catches_feedback_that_shows_hidden_tests(tmp_path):
    """The negative control: with nbgrader's own feedback preprocessors the hidden tests show, and check says so."""
    root = make_toy_course(tmp_path / "c")
    config = root / "nbgrader_config.py"
    config.write_text(config.read_text().split("c.GenerateFeedback.preprocessors")[0])
    (report,) = check.run(Course.load(root), ["toy"], **TRUSTED)
    assert any("shows a hidden test" in p and "np.arange(0, 10, 2)" in p for p in report.verdict.problems), \
        report.verdict.problems


def test_demo_grades_gives_feedback_and_exports(tmp_path):
    root = make_toy_course(tmp_path / "c")
    result = run_cli(root, "demo", *TRUSTED_FLAGS)  # the hostile students only in the sandbox
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reference   3/3" in result.stdout and "blank       0/3" in result.stdout
    demo = root / "demo"
    grades = (demo / "grades.csv").read_text().splitlines()
    assert len(grades) == 1 + (6 if SANDBOX else 4) and grades[1].startswith("toy,") and "reference" in grades[1]
    students = ["reference", "blank", "mistakes-1", "mistakes-2"] + (["tamper", "crash"] if SANDBOX else [])
    for student in students:
        assert (demo / "feedback" / student / "toy" / "toy.html").is_file(), f"no feedback for {student}"
    assert not list(demo.glob("feedback/*/toy/*.integrity.json")), "integrity findings are for the TA, not feedback"
    page = (demo / "feedback" / "mistakes-1" / "toy" / "toy.html").read_text()
    assert "np.arange(0, 10, 2)" not in page, "the feedback shows a hidden test"
    assert "AssertionError: double(1) should be 2" in page, "the feedback must say which test failed and why"
    mistakes = (demo / "mistakes.csv").read_text().splitlines()
    assert len(mistakes) == 1 + 3 and all(line.endswith(",yes") for line in mistakes[1:])
    page = (demo / "reports" / "toy" / "report.html").read_text()
    n = len(students)
    assert 'id="histogram"' in page and f"{n} students, {n} graded" in page, "the demo must write each grade report"
    if SANDBOX:  # the hostile students
        assert "tamper      0/3" in result.stdout and "crash       1/3" in result.stdout
        assert "Integrity report" in result.stdout and "toy/crash" in result.stdout
        assert "crash" in page.split("Students to look at")[1], "the flagged student belongs under 'Students to look at'"

@pytest.mark.parametrize("lecturer", [False, True])
def test_lab_opens_release_for_a_student_and_source_for_a_lecturer(course, tmp_path, lecturer):
    """`make lab`: the served page config switches nbgrader's lecturer tools off for a student only."""
    import json
    import re

    from coursegrader import lab
    from servers import jupyterlab

    argv, env = lab.command(course, lecturer, tmp_path / "config")
    assert (f"--ServerApp.root_dir={course.root}" if lecturer else f"--ServerApp.root_dir={course.root / 'release'}") in argv
    assert ("--LabApp.default_url=/lab/tree/source" in argv) == lecturer
    env.update(JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"))
    with jupyterlab(argv, env, course.root, tmp_path / "lab.log") as running:
        page = running.get("/lab").decode()
    config = json.loads(re.search(r'id="jupyter-config-data"[^>]*>(.*?)</script>', page, re.S).group(1))
    disabled = set(config.get("disabledExtensions", []))
    off = {"@jupyter/nbgrader:formgrader", "@jupyter/nbgrader:create-assignment"}
    if lecturer:
        assert not off & disabled, f"the lecturer's JupyterLab must keep nbgrader's tools, but {off & disabled} are off"
    else:
        assert off <= disabled, f"a student's JupyterLab must not offer {off - disabled}"
        assert "@jupyter/nbgrader:validate-assignment" not in disabled, "students keep the Validate button"


# --- the tests' kernel: which names a test takes from the notebook ----------------------------------

LOAD_CHANNEL = """
import json, socket, sys
from IPython.core.interactiveshell import InteractiveShell
from coursegrader import split, proxy
shell = InteractiveShell.instance()
before = set(shell.user_ns)
a, b = socket.socketpair()
result = shell.run_cell(split.load_code(b.fileno(), proxy.STUDENT))
module = sys.modules.get(proxy.MODULE)
print(json.dumps([result.success, sorted(set(shell.user_ns) - before), module is not None and module.PEER.side]))
"""


def test_the_channel_loads_as_a_module_and_binds_no_name_in_the_notebook():
    import json

    done = subprocess.run([sys.executable, "-c", LOAD_CHANNEL], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stderr
    ok, added, side = json.loads(done.stdout.strip().splitlines()[-1])
    assert ok and side == "S", done.stdout
    assert [n for n in added if not n.startswith("_")] == [], f"loading the channel bound {added} in the notebook"


def test_a_test_takes_from_the_notebook_only_names_the_source_defines(tmp_path):
    from coursegrader import proxy, split

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import numpy as np\nfrom torch import nn\nDATA = [1]\nfor i in range(2):\n    pass"),
                nbformat.v4.new_code_cell("def double(x):\n    inner = 2\n    return inner * x\nclass Model:\n    attr = 1"),
                nbformat.v4.new_code_cell("_expected = 4\nassert double(2) == _expected")]
    nb.cells[2].metadata["nbgrader"] = {"grade": True, "solution": False, "locked": True, "points": 1,
                                        "grade_id": "test_double", "schema_version": 3}
    path = tmp_path / "source.ipynb"
    nbformat.write(nb, str(path))
    names = split.notebook_names(str(path), path.stat().st_mtime_ns)
    assert names == {"np", "nn", "DATA", "i", "double", "Model"}, names
    read = proxy.names_loaded(split.python_of("_expected = f(DATA)\nprint(len(np.zeros(3)), In, _i3, double, _expected)"))
    assert read == {"f", "DATA", "np", "double", "_expected"}, read
    assert "_expected" not in names, "a name only a test defines is never fetched from the student"


def test_every_command_takes_verbose_and_quiet():
    from coursegrader.cli import parser

    p = parser()
    commands = p._subparsers._group_actions[0].choices  # argparse keeps its subcommands there
    needs = {"autograde": ["01_mle_kl"], "report": ["01_mle_kl"]}
    for name in commands:
        for flags in (["-v"], ["-vv"], ["-q"]):
            args = p.parse_args([name, *flags, *needs.get(name, [])])
            assert (args.verbose, args.quiet) == (len(flags[0]) - 1 if "v" in flags[0] else 0, flags == ["-q"]), name
    with pytest.raises(SystemExit):
        p.parse_args(["check", "-v", "-q"])
