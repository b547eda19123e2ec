"""Grading a class several students at a time, several graders at a time, and across machines.

One small class of the toy course (reference, blank, three wrong answers, a tamperer, a crash and a
broken file) is graded serially once; every other way of grading it must write the same gradebook rows
and report the same scores, findings and notes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from toycourse import make_toy_course

import postgres
from conftest import needs_sandbox
from coursegrader import autograde, sampleclass
from coursegrader.course import Course
from coursegrader.gradebook import Shard, snapshot

pytestmark = needs_sandbox  # the class has a tamperer and a crash

STUDENTS = ["blank", "broken", "crash", "reference", "tamper", "wrong-1", "wrong-2", "wrong-3"]


def class_course(dest: Path) -> Path:
    root = make_toy_course(dest)
    course = Course.load(root)
    for sub in sampleclass.plan(course, "toy", exact=True, hostile=True):
        sampleclass.hand_in(course, root, sub)
    (root / "submitted" / "broken" / "toy").mkdir(parents=True)
    (root / "submitted" / "broken" / "toy" / "toy.ipynb").write_text('{"cells": [')
    return root


def sqlite_url(root: Path) -> str:
    return f"sqlite:///{root}/gradebook.db"


def rows(outcome: autograde.Run) -> dict[str, tuple]:
    """What the report says of each student (not how long it took)."""
    return {r.student: (r.error, r.cells, [(f["cell"], f["kind"], f["finding"]) for f in r.findings], r.notes)
            for r in outcome.results}


def cli(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "coursegrader", "autograde", "toy", *args], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})


def finish(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 1, f"exit code {process.returncode} (1: someone could not be graded)\n{out}\n{err}"
    assert "could not grade: broken" in out, out
    return out


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    root = class_course(tmp_path_factory.mktemp("serial") / "course")
    outcome = autograde.run(Course.load(root), "toy", jobs=1)
    assert sorted(rows(outcome)) == STUDENTS
    assert rows(outcome)["reference"][1] == {"test_double": (2.0, 2.0), "test_answer_quiz": (1.0, 1.0)}
    assert rows(outcome)["crash"][2], "the crash must be flagged, or this class tests too little"
    assert rows(outcome)["tamper"][1] == {"test_double": (0.0, 2.0), "test_answer_quiz": (0.0, 1.0)}, "a tamperer gains nothing"
    written = snapshot(sqlite_url(root), "toy")
    assert sorted(written) == STUDENTS and all(s["submissions"] == 1 for s in written.values())
    return outcome, written


def test_parallel_grading_writes_what_serial_grading_writes(serial, tmp_path):
    outcome, written = serial
    root = class_course(tmp_path / "course")
    parallel = autograde.run(Course.load(root), "toy", jobs=2)
    assert parallel.jobs == 2
    assert rows(parallel) == rows(outcome), "two workers reported other scores, findings or notes than one"
    assert snapshot(sqlite_url(root), "toy") == written, "two workers wrote other gradebook rows than one"
    assert 0 < parallel.peak_memory_mib < 1536, f"a worker peaked at {parallel.peak_memory_mib:.0f} MiB"
    summary = autograde.format_summary(parallel)
    assert "7 of 8 graded" in summary and "2 worker(s)" in summary and "flagged by the integrity check: crash" in summary


def test_two_graders_at_once_then_again_leave_one_consistent_gradebook(serial, tmp_path):
    _, written = serial
    root = class_course(tmp_path / "course")
    graders = [cli(root, "--jobs", "2"), cli(root, "--jobs", "2")]
    for grader in graders:
        finish(grader)
    assert snapshot(sqlite_url(root), "toy") == written, "two graders at once left other rows than one grader"
    finish(cli(root))  # the same class once more: grades replaced, not doubled
    assert snapshot(sqlite_url(root), "toy") == written, "grading again changed or doubled the rows"


def test_shards_split_the_class_by_student_id():
    students = [f"s{i:03d}" for i in range(300)]
    shares = [Shard(i, 4).select(students) for i in range(1, 5)]
    assert sorted(sum(shares, [])) == students, "every student in exactly one share"
    assert all(50 < len(share) < 100 for share in shares), [len(s) for s in shares]
    assert Shard(2, 4).select(students[::-1]) == shares[1][::-1], "a share must not depend on the listing"
    assert Shard.parse(" 3/4 ") == Shard(3, 4)


@pytest.mark.parametrize("args, message", [
    (["--shard", "3/2"], "expected I/N with 1 <= I <= N"),
    (["--shard", "x"], "expected I/N"),
    (["--jobs", "0"], "--jobs 0: give at least 1"),
    (["--db", "mysql://h/db"], "unsupported gradebook database 'mysql'"),
    (["--db", "::not a url"], "not a database URL"),
    (["--db", "postgresql://nobody@127.0.0.1:1/gradebook"], "cannot use the gradebook postgresql+psycopg://nobody@127.0.0.1:1"),
])
def test_bad_grading_options_give_one_line(toy_course, args, message):
    out, err = cli(toy_course.root, *args).communicate(timeout=120)
    assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.fixture(scope="module")
def postgres_url():
    if postgres.bindir() is None:
        if os.environ.get("CI"):
            pytest.fail("CI must test the PostgreSQL gradebook: .ci/run installs Debian's postgresql")
        pytest.skip("PostgreSQL is not installed (Debian package: postgresql)")
    with postgres.server() as url:
        yield url


def test_two_machines_grade_shards_into_one_postgres_gradebook(serial, postgres_url, tmp_path):
    outcome, written = serial
    root = class_course(tmp_path / "course")
    shares = [Shard(i, 2).select(STUDENTS) for i in (1, 2)]
    assert all(shares), f"pick students that fill both shards: {shares}"
    machines = [cli(root, "--db", postgres_url, "--shard", f"{i}/2", "--jobs", "1") for i in (1, 2)]
    outputs = [machine.communicate(timeout=600) for machine in machines]
    for (out, err), share in zip(outputs, shares):
        graded = {line.split()[0] for line in out.splitlines() if line.split() and line.split()[0] in STUDENTS}
        assert graded == set(share), f"a machine graded {sorted(graded)}, its share is {share}\n{out}\n{err}"
    assert snapshot(postgres_url, "toy") == written, "the shards wrote other rows into PostgreSQL than SQLite holds"
    assert not snapshot(sqlite_url(root), "toy"), "with --db, no grade may go to the SQLite gradebook"
    reports = sorted(p.relative_to(root).as_posix() for p in root.glob("reports/toy/*/grades.csv"))
    assert reports == ["reports/toy/shard-1-of-2/grades.csv", "reports/toy/shard-2-of-2/grades.csv"]
