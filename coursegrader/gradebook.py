"""The gradebook that several graders share: SQLite on one machine, PostgreSQL across machines.

This is the one module that opens nbgrader's Gradebook: the others ask it for plain data (a student's
scores, an assignment's grades) or to write the few rows coursegrader writes itself.

nbgrader opens a short database session for each step of an autograde (the student, the submission,
each cell's score) and none while the notebook runs, so graders working at once meet only in those
moments. Two things make the meetings safe:

- **SQLite queues its writers.** Every transaction begins IMMEDIATE (it takes the write lock at once)
  and waits up to a minute for it. Without this, a session that read first and then writes can fail
  at once with "database is locked" when another grader writes (SQLite will not wait on a lock upgrade
  that could deadlock).
- **Locks that every grader sees**, around registering an assignment and around grading one student:
  a file lock beside an SQLite gradebook (filelock's FileLock), or a PostgreSQL advisory lock, which also
  spans machines.
  Two graders never grade one student at once; the second waits, then grades again and writes the
  same rows. A lock dies with its process (or its database connection), so a killed grader leaves none.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sqlite3
import zlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError

from .errors import CourseError

SQLITE_WAIT_SECONDS = 60
_queued = False


def queue_sqlite_writers() -> None:
    """Make every SQLite transaction of this process BEGIN IMMEDIATE and wait for the lock (once per process)."""
    global _queued
    if _queued:
        return
    _queued = True

    @event.listens_for(Engine, "connect")
    def _no_implicit_transactions(dbapi_connection, _record) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):
            dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" below decides how transactions start
            dbapi_connection.execute(f"PRAGMA busy_timeout = {SQLITE_WAIT_SECONDS * 1000}")

    @event.listens_for(Engine, "begin")
    def _begin_immediate(connection) -> None:
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def normalise_url(url: str) -> str:
    """Check a database URL given by a TA, and use psycopg (version 3) for PostgreSQL unless a driver is named."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise CourseError(f"not a database URL: {url!r} (e.g. postgresql://user@host/gradebook or "
                          "sqlite:////path/gradebook.db)") from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise CourseError(f"unsupported gradebook database {parsed.get_backend_name()!r}: use sqlite or postgresql")
    if parsed.drivername == "postgresql+psycopg" and importlib.util.find_spec("psycopg") is None:
        raise CourseError("a PostgreSQL gradebook needs psycopg: pip install -r requirements.txt")
    return parsed.render_as_string(hide_password=False)


def describe(url: str) -> str:
    """The URL without its password, for messages."""
    return make_url(url).render_as_string(hide_password=True)


@dataclass(frozen=True)
class Shard:
    """Share `index` of `count` (1-based): which students one of several machines grades.

    A student's share depends only on their id (CRC-32, the same on every machine and Python), so
    machines that list submitted/ at slightly different moments still never grade a student twice.
    """

    index: int
    count: int

    @classmethod
    def parse(cls, spec: str) -> Shard:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
        if not match or not 1 <= int(match[1]) <= int(match[2]):
            raise CourseError(f"--shard {spec!r}: expected I/N with 1 <= I <= N, e.g. --shard 2/4")
        return cls(int(match[1]), int(match[2]))

    def owns(self, student: str) -> bool:
        return zlib.crc32(student.encode()) % self.count == self.index - 1

    def select(self, students: list[str]) -> list[str]:
        return [s for s in students if self.owns(s)]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


class Locks:
    """Named locks shared by every grader of one gradebook (see the module docstring)."""

    def __init__(self, db_url: str):
        self.url = make_url(db_url)
        self._engine = None
        if self.url.get_backend_name() == "sqlite":
            database = self.url.database or ""
            if not database or database == ":memory:":
                raise CourseError("an in-memory SQLite gradebook cannot be shared: give it a file")
            path = Path(database)
            self.folder: Path | None = path.parent / f".{path.name}.locks"
        else:
            self.folder = None

    @contextmanager
    def hold(self, name: str) -> Iterator[None]:
        if self.folder is not None:
            self.folder.mkdir(exist_ok=True)
            safe = re.sub(r"[^\w.-]", "_", name) + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
            # flock underneath: released when the process dies, however it dies. No fallback to a soft lock (a
            # marker file), which a killed grader would leave behind; the file stays, as flock's lock files do.
            with FileLock(self.folder / f"{safe}.lock", fallback_to_soft=False, preserve_lock_file=True):
                yield
            return
        if self._engine is None:
            self._engine = create_engine(self.url, isolation_level="AUTOCOMMIT")
        key = int.from_bytes(hashlib.sha1(name.encode()).digest()[:8], "big", signed=True)
        with self._engine.connect() as connection:  # a session lock: the server drops it if we vanish
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})

    def registration(self, aid: str) -> AbstractContextManager[None]:
        return self.hold(f"register {aid}")

    def student(self, aid: str, student: str) -> AbstractContextManager[None]:
        return self.hold(f"grade {aid} {student}")


def snapshot(db_url: str, aid: str) -> dict[str, dict]:
    """Everything autograde wrote for `aid`, per student: each cell's scores and comments, and how many
    submissions the gradebook holds for them (one, or something went wrong). For comparing two runs."""
    from nbgrader.api import Gradebook, MissingEntry

    found: dict[str, dict] = {}
    with Gradebook(db_url) as gb:
        try:
            submissions = gb.find_assignment(aid).submissions
        except MissingEntry:
            return found
        for sub in submissions:
            entry = found.setdefault(sub.student.id, {"submissions": 0, "cells": {}})
            entry["submissions"] += 1
            for nb in sub.notebooks:
                for g in nb.grades:
                    entry["cells"][f"{nb.name}/{g.name}"] = (g.auto_score, g.manual_score, g.needs_manual_grade)
                for c in nb.comments:
                    entry["cells"][f"{nb.name}/{c.name} comment"] = (c.auto_comment, c.manual_comment)
    return found


def _opened(db_url: str):
    """nbgrader's Gradebook on `db_url` (a context manager), imported when first used: importing nbgrader takes
    about 2 s, and most commands need this module for its URLs and locks only."""
    from nbgrader.api import Gradebook

    return Gradebook(db_url)


def manual_cells(notebook) -> set[str]:
    """Names of the graded cells of a gradebook notebook that a TA grades: manually graded answers (grade cells
    that are also solution cells) and tasks. Every other graded cell is an autograded test cell."""
    return {c.name for c in notebook.solution_cells} | {c.name for c in notebook.task_cells}


def has_notebooks(db_url: str, aid: str) -> bool:
    """Does the gradebook know `aid` with its notebooks (and so its grade cells)? An assignment the formgrader
    made (a due date, a release) has none yet."""
    from nbgrader.api import MissingEntry

    with _opened(db_url) as gb:
        try:
            return bool(gb.find_assignment(aid).notebooks)
        except MissingEntry:
            return False


def record_ungraded(db_url: str, aid: str, student: str) -> None:
    """Give a submission that cannot be graded a row of zeros, as nbgrader does for a missing notebook."""
    with _opened(db_url) as gb:
        gb.update_or_create_student(student)
        submission = gb.update_or_create_submission(aid, student)
        for notebook in submission.notebooks:
            for grade in notebook.grades:
                grade.auto_score = 0
                grade.needs_manual_grade = False
        gb.db.commit()


def submission_scores(db_url: str, aid: str, student: str) -> tuple[dict[str, tuple[float, float]],
                                                                     dict[str, tuple[float | None, float]]]:
    """(autograded, manual) cells of the student's submission: grade_id -> (score, max score).

    A manual cell (a written answer or a task, graded by a TA) has score None while it waits for the TA."""
    auto, manual = {}, {}
    with _opened(db_url) as gb:
        for notebook in gb.find_submission(aid, student).notebooks:
            by_hand = manual_cells(notebook.notebook)
            for grade in notebook.grades:
                if grade.name in by_hand:
                    manual[grade.name] = (None if grade.needs_manual_grade else float(grade.score or 0.0),
                                          float(grade.max_score))
                else:
                    auto[grade.name] = (float(grade.score or 0.0), float(grade.max_score))
    return auto, manual


def export_csv(db_url: str, config, path: Path) -> Path:
    """nbgrader's CSV export of the whole gradebook into `path` (`config`: the course's nbgrader configuration)."""
    from nbgrader.plugins import CsvExportPlugin

    config.CsvExportPlugin.to = str(path)
    with _opened(db_url) as gb:
        CsvExportPlugin(config=config).export(gb)
    return path


@dataclass(frozen=True)
class GradedCell:
    """A graded cell of an assignment: an autograded test cell, or a written answer or task (manual) for a TA."""

    name: str
    max_score: float
    manual: bool


@dataclass(frozen=True)
class Grade:
    """One student's grade on one graded cell."""

    name: str
    score: float  # the manual score if a TA gave one, else the autograded one (nbgrader's Grade.score)
    max_score: float
    needs_manual_grade: bool


@dataclass
class AssignmentGrades:
    """What the gradebook holds on an assignment: its graded cells, and every submission's grades by student."""

    cells: list[GradedCell] = field(default_factory=list)  # in the gradebook's order (notebook, then kind)
    students: dict[str, list[Grade]] = field(default_factory=dict)  # sorted by student id


def assignment_grades(db_url: str, aid: str) -> AssignmentGrades | None:
    """Every graded cell of `aid` and every submission's grades on them; None if the gradebook has no `aid`."""
    from nbgrader.api import MissingEntry

    with _opened(db_url) as gb:
        try:
            assignment = gb.find_assignment(aid)
        except MissingEntry:
            return None
        by_hand = set().union(*(manual_cells(nb) for nb in assignment.notebooks))
        found = AssignmentGrades([GradedCell(c.name, float(c.max_score), c.name in by_hand)
                                  for nb in assignment.notebooks for c in [*nb.grade_cells, *nb.task_cells]])
        for sub in sorted(assignment.submissions, key=lambda s: s.student.id):
            found.students[sub.student.id] = [Grade(g.name, float(g.score or 0), float(g.max_score),
                                                    bool(g.needs_manual_grade))
                                              for nb in sub.notebooks for g in nb.grades]
    return found
