"""The adversarial suite: a class of cheats, bombs, broken files and honest students, autograded for real.

One `coursegrader autograde` run over the whole class (tests/adversarial.py), then one assertion per
student. The sandbox must be on in CI; on a machine without bubblewrap the sandbox-only cases are skipped.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from adversarial import FULL, RIGHT, WRONG, Case, cases, hand_in, snoop_cell
from toycourse import make_toy_course

from coursegrader import autograde
from coursegrader.course import Course
from coursegrader.grading import Grader
from coursegrader.sandbox import SANDBOX_UIDS, unavailable_reason

pytestmark = pytest.mark.pipeline

NO_SANDBOX = unavailable_reason()
if NO_SANDBOX and os.environ.get("CI"):
    raise RuntimeError(f"CI must run the adversarial suite in the sandbox: {NO_SANDBOX}")

FAST = "\n# Adversarial suite: short limits so that the loops cost seconds, not minutes.\n" \
       "c.Execute.timeout = 5\nc.GuardedExecute.notebook_timeout = 120\n"


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
    class_ = [c for c in cases(root, listener) if not (c.sandbox_only and NO_SANDBOX)]
    for case in class_:
        case.write(root / "release" / "toy" / "toy.ipynb", root / "submitted" / case.student / "toy")
    os.environ["COURSEGRADER_TEST_SECRET"] = "a TA's token"
    try:
        outcome = autograde.run(Course.load(root), "toy")  # one worker per core, as a TA runs it
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
    tampered = {f["cell"] for f in res.findings if f["kind"] == "tamper"}
    assert tampered == case.tampered, f"{student}: integrity report flags {tampered}, should flag {case.tampered}"
    failed = {f["cell"] for f in res.findings if f["kind"] == "failure"}
    assert failed == case.failed, f"{student}: cells reported as stopping the kernel {failed}, expected {case.failed}"
    if case.note:
        assert any(case.note in n for n in res.notes), f"{student}: notes {res.notes} should mention {case.note!r}"


def _outputs(root, student: str) -> str:
    nb = nbformat.read(str(root / "autograded" / student / "toy" / "toy.ipynb"), 4)
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.skipif(bool(NO_SANDBOX), reason=f"needs the sandbox ({NO_SANDBOX})")
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
    """Negative control: the same cell, graded with --no-sandbox, reads the hidden tests. The snoop is real."""
    root = make_course(tmp_path / "course")
    secrets = {"source": str(root / "source" / "toy" / "toy.ipynb")}
    case = Case("snoop", hand_in(RIGHT, [("", snoop_cell(secrets, str(root / "x.py"), listener))]))
    case.write(root / "release" / "toy" / "toy.ipynb", root / "submitted" / "snoop" / "toy")
    (res,) = autograde.run(Course.load(root), "toy", sandbox=False).results
    assert {gid: s for gid, (s, _) in res.cells.items()} == FULL
    line = next(line for line in _outputs(root, "snoop").splitlines() if line.startswith("SNOOP "))
    seen = json.loads(line[len("SNOOP "):])
    assert seen["source"] == "READ" and seen["loopback"] == "CONNECTED", seen


def test_outputs_are_capped_in_notebook_and_feedback(graded):
    root = graded[0]
    for student in ("crash-big-print", "crash-big-error"):
        size = (root / "autograded" / student / "toy" / "toy.ipynb").stat().st_size
        assert size < 500_000, f"{student}: the autograded notebook is {size:,} bytes"
    size = (root / "autograded" / "crash-big-display" / "toy" / "toy.ipynb").stat().st_size
    assert size < 2_500_000, f"crash-big-display displayed 5 MB and kept {size:,} bytes (cap: 2 MB per cell)"
    Grader(Course.load(root), root).feedback("toy")
    page = root / "feedback" / "crash-big-print" / "toy" / "toy.html"
    assert page.stat().st_size < 1_000_000, f"feedback page is {page.stat().st_size:,} bytes"
    assert "output truncated" in page.read_text(encoding="utf-8")


@pytest.mark.skipif(bool(NO_SANDBOX), reason=f"needs the sandbox ({NO_SANDBOX})")
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
    assert set(rows) == set(class_), set(class_) ^ set(rows)
    assert rows["bad-json"]["graded"] == "no" and "not valid JSON" in rows["bad-json"]["reason"]
    assert int(rows["cheat-transformer"]["integrity_findings"]) >= 2
    with (root / "reports" / "toy" / "integrity.csv").open() as f:
        flagged = {(row["student"], row["cell"]) for row in csv.DictReader(f) if row["kind"] == "tamper"}
    assert ("cheat-allclose", "test_double") in flagged
    assert "Integrity report" in report and "cheat-ast" in report
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        assert gb.find_submission("toy", "bad-json").score == 0, "an ungradable submission gets a row of zeros"


def test_cli_autograde_warns_once_without_sandbox(tmp_path):
    root = make_course(tmp_path / "course")
    Case("alice", hand_in(RIGHT)).write(
        root / "release" / "toy" / "toy.ipynb", root / "submitted" / "alice" / "toy")
    done = subprocess.run([sys.executable, "-m", "coursegrader", "autograde", "toy", "--no-sandbox"], cwd=root,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    warnings = [line for line in done.stderr.splitlines() if "WITHOUT a sandbox" in line]
    assert len(warnings) == 1, done.stderr
    assert (root / "reports" / "toy" / "grades.csv").is_file()


def test_honest_grades_equal_plain_nbgrader(tmp_path):
    """The hardening changes nothing for honest work: the sample class scores cell for cell as under plain nbgrader."""
    from nbgrader.api import Gradebook
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    from coursegrader import sampleclass

    root = make_course(tmp_path / "course")
    course = Course.load(root)
    grader = Grader(course, root)
    subs = sampleclass.plan(course, "toy")
    ours = {sub.student: res.cells for sub, res in sampleclass.grade(course, grader, subs)}
    config = course.nbgrader_config(root)
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


def test_probes_ride_on_the_cells_of_an_honest_notebook(tmp_path, monkeypatch):
    """A test cell and the cell before it carry the integrity probe in their own requests, so an honest notebook
    costs one probe round trip (the baseline) and no more; a test that fails gets probes of its own and is graded
    as before. (Speed: each round trip is about 20 ms, and a notebook has about 30 of them to save.)"""
    from jupyter_core.utils import run_sync

    from coursegrader.execution import GuardedExecute

    root = make_course(tmp_path / "course")
    for student, answers in (("honest", RIGHT), ("wrong", {**RIGHT, "double": WRONG["double"]})):
        hand_in(answers)(root / "release" / "toy" / "toy.ipynb", root / "submitted" / student / "toy")
    sent: list[str] = []
    original = GuardedExecute._async_probe

    async def counted(self, import_them=False, timeout=None, detail=()):
        sent.append("baseline" if import_them else "detail" if detail else "probe")
        return await original(self, import_them, timeout, detail)

    monkeypatch.setattr(GuardedExecute, "_probe", run_sync(counted))
    grader = Grader(Course.load(root), root)
    honest = grader.autograde("toy", "honest")
    assert (honest.cells, honest.findings) == ({gid: (points, points) for gid, points in FULL.items()}, [])
    assert sent == ["baseline"], f"an honest notebook sent probes of their own: {sent}"
    sent.clear()
    wrong = grader.autograde("toy", "wrong")
    assert wrong.cells["test_double"] == (0.0, 2.0) and not wrong.findings
    assert sent == ["baseline", "probe"], f"a failed test cell needs exactly one probe of its own (after it): {sent}"


@pytest.mark.skipif(bool(NO_SANDBOX), reason=f"needs the sandbox ({NO_SANDBOX})")
def test_sandbox_costs_under_a_third_of_a_second_per_notebook(capsys):
    from coursegrader.sandboxcost import measure

    plain, boxed = measure(repeats=5)
    with capsys.disabled():
        print(f"\n  kernel start, median of 5: {plain:.2f} s plain, {boxed:.2f} s sandboxed ({boxed - plain:+.2f} s)")
    assert boxed - plain < 0.3, f"the sandbox adds {boxed - plain:.2f} s to every kernel start (target: < 0.3 s)"


def test_links_planted_by_a_kernel_write_nothing_outside_it(graded):
    root = graded[0]
    assert (root / "victim.txt").read_text() == "precious", "grading wrote through a student's symlink"
    assert (root / "victim-dir").stat().st_uid == os.getuid(), "grading chowned a folder a student's symlink named"
    assert not list((root / "victim-dir").iterdir()), "grading wrote into a folder a student's symlink named"
    assert not (root / "autograded" / "plant-symlinks" / "toy" / "toy.ipynb").is_symlink()
