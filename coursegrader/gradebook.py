"""The gradebook that several graders share: SQLite on one machine, PostgreSQL across machines.

nbgrader opens a short database session for each step of an autograde (the student, the submission,
each cell's score) and none while the notebook runs, so graders working at once meet only in those
moments. Two things make the meetings safe:

- **SQLite queues its writers.** Every transaction begins IMMEDIATE (it takes the write lock at once)
  and waits up to a minute for it. Without this, a session that read first and then writes can fail
  at once with "database is locked" when another grader writes (SQLite will not wait on a lock upgrade
  that could deadlock).
- **Locks that every grader sees**, around registering an assignment and around grading one student:
  a file lock beside an SQLite gradebook, or a PostgreSQL advisory lock, which also spans machines.
  Two graders never grade one student at once; the second waits, then grades again and writes the
  same rows. A lock dies with its process (or its database connection), so a killed grader leaves none.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import re
import sqlite3
import zlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

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
            with open(self.folder / f"{safe}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed or the process dies
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
