"""The adversarial suite: a class of cheats, bombs, broken files and honest students, autograded for real.

One `coursegrader autograde` run over the whole class (tests/adversarial.py), then one assertion per
student. The sandbox must be on in CI; on a machine without bubblewrap the hostile cases are skipped and the
others are graded with the explicit opt-out (scratch HOME, TMPDIR and folder, no sandbox).
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pytest
from adversarial import FULL, RIGHT, Case, cases, hand_in, snoop_cell
from conftest import REPO, NO_SANDBOX, SANDBOX, TRUSTED, needs_sandbox
from toycourse import make_toy_course

from coursegrader import autograde
from coursegrader.feedback import feedback_leaks, hidden_test_lines
from coursegrader.notebooks import read_notebook
from coursegrader.table import uncell
from coursegrader.course import Course
from coursegrader.nbgrader_api import Grader
from coursegrader.safety import as_nbgrader_ships
from coursegrader.sandbox import SANDBOX_UIDS

pytestmark = pytest.mark.pipeline

# Short limits, so that the loops cost seconds, not minutes: 5 s a cell; a notebook has its budget (30 s in the
# toy course.toml), no more; 3 MB of outputs.
FAST = "\n# Adversarial suite: short limits.\nc.Execute.timeout = 5\nc.NotebookTimeLimit.budget_factor = 1\n" \
       "c.CapOutputs.max_notebook_output_bytes = 3_000_000\n"


def make_course(path):
    root = make_toy_course(path)
    (root / "nbgrader_config.py").write_text((root / "nbgrader_config.py").read_text() + FAST)
    return root


@pytest.fixture(scope="module")
def listener():
    """A TCP server on the grader's loopback: a sandboxed kernel must not reach it."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


@pytest.fixture(scope="module")
def graded(tmp_path_factory, listener):
    root = make_course(tmp_path_factory.mktemp("adversarial") / "course")
    config_before = (root / "nbgrader_config.py").read_text()
    (root / "victim.txt").write_text("precious")  # what plant-symlinks tries to overwrite as root
    (root / "victim-dir").mkdir()
    class_ = [c for c in cases(root, listener) if SANDBOX or not c.hostile]
    for case in class_:
        case.write(root / "release" / "toy" / "toy.ipynb", root / "submitted" / case.student / "toy")
    os.environ["COURSEGRADER_TEST_SECRET"] = "a TA's token"
    try:
        outcome = autograde.run(Course.load(root), "toy", **TRUSTED)  # one worker per core, as a TA runs it
    finally:
        del os.environ["COURSEGRADER_TEST_SECRET"]
    results = outcome.results
    autograde.save_reports(results, root / "reports" / "toy")
    report = autograde.format_report(outcome)
    print(report)
    return root, {c.student: c for c in class_}, {r.student: r for r in results}, report, config_before


@pytest.mark.parametrize("student", [c.student for c in cases(Path("/nonexistent"), 0)])
def test_student_gets_what_they_should(graded, student):
    root, class_, results, report, _ = graded
    if student not in class_:
        pytest.skip(f"needs the sandbox ({NO_SANDBOX})")
    case: Case = class_[student]
    res = results[student]
    if case.scores is None:
        assert not res.ok, f"{student} should not be graded"
        assert case.reason in res.error, f"{student}: reason given: {res.error!r}, expected to mention {case.reason!r}"
        line = next(line for line in report.splitlines() if line.startswith(student + " "))
        assert "NOT GRADED" in line, line
        return
    assert res.ok, f"{student} was not graded: {res.error}"
    scores = {gid: s for gid, (s, _) in res.cells.items()}
    assert scores == case.scores, f"{student}: scored {scores}, should score {case.scores}"
    assert res.max_score == sum(FULL.values()), f"{student}: out of {res.max_score}, not {sum(FULL.values())}"
    tampered = [f for f in res.findings if f["kind"] not in ("failure", "note")]
    assert not tampered, f"{student}: unexpected findings {tampered}"
    failed = {f["cell"] for f in res.findings if f["kind"] == "failure"}
    assert failed == case.failed, f"{student}: cells reported as stopping the kernel {failed}, expected {case.failed}"
    if case.note:
        assert any(case.note in n for n in res.notes), f"{student}: notes {res.notes} should mention {case.note!r}"
    if case.max_seconds:
        assert res.seconds < case.max_seconds, f"{student} held a grading worker for {res.seconds:.0f} s"


def _outputs(root, student: str) -> str:
    nb = nbformat.read(str(root / "autograded" / student / "toy" / "toy.ipynb"), 4)
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


@needs_sandbox
def test_sandbox_denies_reads_writes_network_and_secrets(graded):
    root, _, _, _, config_before = graded
    line = next(line for line in _outputs(root, "snoop").splitlines() if line.startswith("SNOOP "))
    seen = json.loads(line[len("SNOOP "):])
    assert set(seen) == {"source", "gradebook", "other-student", "home", "shadow", "append-config", "loopback",
                         "internet", "secret-env"}, seen
    allowed = {k: v for k, v in seen.items() if v != "denied"}
    assert not allowed, f"the sandboxed kernel could do this: {allowed}"
    assert (root / "nbgrader_config.py").read_text() == config_before, "a student's cell changed nbgrader_config.py"


def test_snoop_reads_everything_without_the_sandbox(tmp_path, listener):
    """Negative control: the snoop's code, graded with --no-sandbox, reads a file and reaches the loopback. The
    snoop is real. It is pointed only at what this test made: a readable file and the test's own listener."""
    root = make_course(tmp_path / "course")
    (tmp_path / "secret.txt").write_text("readable")
    cell = snoop_cell({"secret": str(tmp_path / "secret.txt")}, str(tmp_path / "appended.py"), listener)
    Case("control", hand_in(RIGHT, [("", cell)])).write(root / "release" / "toy" / "toy.ipynb",
                                                        root / "submitted" / "control" / "toy")
    (res,) = autograde.run(Course.load(root), "toy", sandbox=False).results
    assert {gid: s for gid, (s, _) in res.cells.items()} == FULL
    line = next(line for line in _outputs(root, "control").splitlines() if line.startswith("SNOOP "))
    seen = json.loads(line[len("SNOOP "):])
    assert seen["secret"] == "READ" and seen["loopback"] == "CONNECTED", seen


@needs_sandbox
def test_no_hidden_test_reaches_the_student(graded):
    """The tests run in a kernel of their own: no record the student's kernel keeps (input history, linecache, the
    caller's frame) holds a hidden test, so neither the student's outputs nor their feedback can show one."""
    root = graded[0]
    source = read_notebook(root / "source" / "toy" / "toy.ipynb")
    hidden = hidden_test_lines(source)
    assert "_twice = lambda v: 2 * np.asarray(v)  # a reference helper: a student's code must not reach it" in hidden
    printed = _outputs(root, "snoop-history")
    assert "CALLER" in printed and "IN" in printed, printed[:500]
    assert not [line for line in hidden if line in printed], "a hidden test reached the student's kernel"
    Grader(Course.load(root), root).generate_feedback("toy")
    for student in ("snoop-history", "snoop-exception", "cheat-caller-globals"):
        page = (root / "feedback" / student / "toy" / "toy.html").read_text(encoding="utf-8")
        submitted = read_notebook(root / "submitted" / student / "toy" / "toy.ipynb")
        assert not feedback_leaks(source, page, submitted), f"{student}'s feedback shows a hidden test"


@needs_sandbox
def test_outputs_are_capped_in_notebook_and_feedback(graded):
    root = graded[0]
    for student in ("crash-big-print", "crash-big-error"):
        size = (root / "autograded" / student / "toy" / "toy.ipynb").stat().st_size
        assert size < 500_000, f"{student}: the autograded notebook is {size:,} bytes"
    size = (root / "autograded" / "crash-big-display" / "toy" / "toy.ipynb").stat().st_size
    assert size < 2_500_000, f"crash-big-display displayed 5 MB and kept {size:,} bytes (cap: 2 MB per cell)"
    size = (root / "autograded" / "crash-many-outputs" / "toy" / "toy.ipynb").stat().st_size
    assert size < 3_500_000, f"crash-many-outputs displayed 7.6 MB and kept {size:,} bytes (cap: 3 MB per notebook)"
    Grader(Course.load(root), root).generate_feedback("toy")
    page = root / "feedback" / "crash-big-print" / "toy" / "toy.html"
    assert page.stat().st_size < 1_000_000, f"feedback page is {page.stat().st_size:,} bytes"
    assert "output truncated" in page.read_text(encoding="utf-8")
    page = root / "feedback" / "crash-many-outputs" / "toy" / "toy.html"
    assert page.stat().st_size < 4_500_000, f"feedback page is {page.stat().st_size:,} bytes"


@needs_sandbox
def test_no_process_outlives_its_sandbox(graded):
    if os.geteuid() != 0:
        pytest.skip("the kernels ran as the grader's own user")
    root = graded[0]
    time.sleep(1)  # the last kernel's namespace is torn down asynchronously
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:  # a kernel's working folder is its student's folder under this course (other graders may run)
            if os.stat(f"/proc/{pid}").st_uid in SANDBOX_UIDS and str(root) in os.readlink(f"/proc/{pid}/cwd"):
                left.append(pid)
        except OSError:
            pass
    assert not left, f"{len(left)} processes of this class's kernels still run after grading (pids {left[:10]})"


def test_every_student_has_a_row_in_the_reports(graded):
    root, class_, results, report, _ = graded
    with (root / "reports" / "toy" / "grades.csv").open() as f:
        rows = {row["student"]: row for row in csv.DictReader(f)}
    assert "'=1+2" in rows, f"a student id that starts a formula must start with an apostrophe in the CSV: {sorted(rows)}"
    assert {uncell(s) for s in rows} == set(class_), set(class_) ^ {uncell(s) for s in rows}
    assert rows["bad-json"]["graded"] == "no" and "not valid JSON" in rows["bad-json"]["reason"]
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        assert gb.find_submission("toy", "bad-json").score == 0, "an ungradable submission gets a row of zeros"
    if not SANDBOX:
        return
    assert int(rows["crash-exit"]["integrity_findings"]) == 1 and int(rows["cheat-transformer"]["integrity_findings"]) == 0
    with (root / "reports" / "toy" / "integrity.csv").open() as f:
        findings = list(csv.DictReader(f))
    assert {row["kind"] for row in findings} <= {"failure", "note"}, "a finding of another kind"
    assert ("crash-exit", "double") in {(row["student"], row["cell"]) for row in findings}
    assert "Integrity report" in report and "crash-segfault" in report
    assert "\x1b" not in report and "\r" not in report, "student text reached the terminal with its control characters"
    assert "\\x1b[2K" in report, "the escape sequence in a student's class name must be shown, escaped"
    assert all("\x1b" not in value for row in findings for value in row.values())


def test_every_grading_path_refuses_without_bubblewrap(tmp_path):
    """No bubblewrap: coursegrader autograde, check and demo, and plain nbgrader autograde, refuse in one line and
    grade nobody; with the explicit opt-out they grade (an honest notebook), and say that it was unsandboxed."""
    root = make_course(tmp_path / "course")
    where = 'import os\nprint("WHERE", os.environ["HOME"], os.environ["TMPDIR"], os.getcwd(), "JUPYTER_TOKEN" in os.environ)'
    Case("alice", hand_in(RIGHT, [("", where)])).write(root / "release" / "toy" / "toy.ipynb",
                                                      root / "submitted" / "alice" / "toy")
    env = {**os.environ, "COURSEGRADER_BWRAP": str(tmp_path / "no-such-bwrap"), "JUPYTER_TOKEN": "a TA's token"}
    nbgrader = str(Path(sys.executable).parent / "nbgrader")

    def run(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=root, capture_output=True, text=True, env=env)

    for command in (["autograde", "toy"], ["check", "toy"], ["demo"]):
        done = run(sys.executable, "-m", "coursegrader", *command)
        assert done.returncode == 2, f"coursegrader {' '.join(command)}: exit {done.returncode}\n{done.stderr}"
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "refusing to grade" in lines[0] and "apt-get install bubblewrap" in lines[0] \
            and "--no-sandbox" in lines[0], done.stderr
    done = run(nbgrader, "autograde", "toy")
    assert done.returncode != 0 and "refusing to grade" in done.stdout + done.stderr, done.stdout + done.stderr
    assert not (root / "autograded").exists(), "a refused run graded someone"

    done = run(sys.executable, "-m", "coursegrader", "autograde", "toy", "--no-sandbox")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "UNSANDBOXED" in done.stdout and "alice    3      3" in done.stdout, done.stdout
    home, tmpdir, cwd, token = next(line.split()[1:] for line in _outputs(root, "alice").splitlines()
                                    if line.startswith("WHERE "))
    assert home == tmpdir and Path(home).name.startswith("home-") and home != os.environ["HOME"], home
    assert Path(cwd).name.startswith("work-") and not Path(cwd).is_relative_to(root), f"the kernel worked in {cwd}"
    assert token == "False", "the TA's Jupyter token reached the unsandboxed kernel"
    done = run(nbgrader, "autograde", "toy", "--force", "--GuardedExecute.sandbox=False")
    assert done.returncode == 0 and "WITHOUT the sandbox" in done.stdout + done.stderr, done.stdout + done.stderr


@pytest.mark.skipif(os.environ.get("COURSEGRADER_NESTED") == "1", reason="runs this module: not inside itself")
def test_adversarial_module_without_bubblewrap_touches_nothing_outside(tmp_path):
    """This module, run as on a machine without bubblewrap, with a throw-away HOME: it passes (the hostile cases
    are skipped, the rest graded with the opt-out), and HOME, its parent folder and the temporary folder's
    .ipython are as they were."""
    home = tmp_path / "home"
    home.mkdir()
    tmp = Path(tempfile.mkdtemp(prefix="n-", dir=tmp_path.parents[2]))  # short: IPC socket paths are made below it
    (home / ".bashrc").write_text("# a user's shell set-up\n")

    def state() -> dict[str, object]:
        return {"home": sorted(str(p.relative_to(tmp_path)) for p in home.rglob("*")),
                "parent": sorted(p.name for p in tmp_path.iterdir()), "bashrc": (home / ".bashrc").read_text(),
                "home is a folder": home.is_dir() and not home.is_symlink(),
                "tmp .ipython": (tmp / ".ipython").exists(), "/tmp/.ipython": Path("/tmp/.ipython").exists()}

    before = state()
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env.update(HOME=str(home), TMPDIR=str(tmp), COURSEGRADER_BWRAP=str(tmp_path / "no-such-bwrap"),
               COURSEGRADER_NESTED="1")
    done = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider",
                           "-k", "student_gets or every_student or links_planted or snoop_reads"],
                          cwd=tmp_path, capture_output=True, text=True, env=env)
    summary = (done.stdout.strip().splitlines() or [""])[-1]
    assert done.returncode == 0, f"the module failed without bubblewrap: {summary}\n{done.stdout[-3000:]}"
    assert "skipped" in summary, f"without bubblewrap the hostile cases must be skipped: {summary}"
    assert state() == before, f"something changed outside the tests' folders: {before} -> {state()}"


@pytest.mark.parametrize("fork_students", [True, False], ids=["forked", "own-sandbox"])
def test_honest_grades_equal_plain_nbgrader(tmp_path, fork_students):
    """The hardening changes nothing for honest work: the sample class scores cell for cell as under plain nbgrader,
    whether the students' kernels are forked from a template (as root, sandboxed) or start a sandbox each."""
    from nbgrader.api import Gradebook
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    from coursegrader import sampleclass

    if not fork_students and not (SANDBOX and os.geteuid() == 0):
        pytest.skip("students' kernels are forked only as root in the sandbox: the other case is the only one here")
    root = make_course(tmp_path / "course")
    if not fork_students:
        (root / "nbgrader_config.py").write_text((root / "nbgrader_config.py").read_text()
                                                 + "c.GuardedExecute.fork_students = False\n")
    course = Course.load(root)
    grader = Grader(course, root, **TRUSTED)
    subs = sampleclass.plan(course, "toy")
    ours = {sub.student: res.cells for sub, res in sampleclass.grade(course, grader, subs)}
    config = course.nbgrader_config(root)
    as_nbgrader_ships(config)
    config.CourseDirectory.autograded_directory = "autograded-plain"
    plain_api = NbGraderAPI(coursedir=CourseDirectory(config=config), config=config)
    plain = {}
    for sub in subs:
        assert plain_api.autograde("toy", sub.student, force=True, create=True)["success"]
        with Gradebook(grader.db_url) as gb:
            plain[sub.student] = {g.name: (float(g.score), float(g.max_score))
                                  for nb in gb.find_submission("toy", sub.student).notebooks for g in nb.grades}
    assert ours == plain
    assert ours["reference"] == {"test_double": (2.0, 2.0), "test_answer_quiz": (1.0, 1.0)}


@needs_sandbox
def test_sandbox_costs_under_a_third_of_a_second_per_notebook(capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from sandbox_cost import measure

    plain, boxed = measure(repeats=5)
    with capsys.disabled():
        print(f"\n  kernel start, median of 5: {plain:.2f} s plain, {boxed:.2f} s sandboxed ({boxed - plain:+.2f} s)")
    assert boxed - plain < 0.3, f"the sandbox adds {boxed - plain:.2f} s to every kernel start (target: < 0.3 s)"


@needs_sandbox
def test_links_planted_by_a_kernel_write_nothing_outside_it(graded):
    root = graded[0]
    assert (root / "victim.txt").read_text() == "precious", "grading wrote through a student's symlink"
    assert (root / "victim-dir").stat().st_uid == os.getuid(), "grading chowned a folder a student's symlink named"
    assert not list((root / "victim-dir").iterdir()), "grading wrote into a folder a student's symlink named"
    assert not (root / "autograded" / "plant-symlinks" / "toy" / "toy.ipynb").is_symlink()
