"""nbgrader on one course root, through its Python API: generate a release, grade one student, give feedback,
and read that student's scores back.

`Grader` works on any course root: the real one (`autograde`, which grades a class with one Grader per
worker) or a scratch copy (`check`, `demo`). It grades one student at a time (`grade_student`); the class
is autograde.py's.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from nbgrader.apps import NbGraderAPI
from nbgrader.coursedir import CourseDirectory
from sqlalchemy.exc import SAWarning, SQLAlchemyError

from .course import Course
from .errors import CourseError
from .integrity import read_findings
from . import gradebook
from .gradebook import Locks, describe, queue_sqlite_writers
from .safety import refusal


@dataclass
class GradeResult:
    """One student's autograded assignment: per-test-cell (score, max score), or why it failed.

    `cells` holds the autograded test cells only: score, max_score and lost count nothing else. The cells a TA
    grades (written answers) are in `manual`, with score None while they wait for the TA: autograde cannot
    score them, and a cell waiting for a TA is never a lost one. (nbgrader itself gives 0 to a written answer
    left as released, "No response": that one does not wait.)
    """

    student: str
    assignment: str
    seconds: float
    error: str = ""  # empty when autograde succeeded
    cells: dict[str, tuple[float, float]] = field(default_factory=dict)
    manual: dict[str, tuple[float | None, float]] = field(default_factory=dict)  # grade_id -> (score or None, max)
    findings: list[dict] = field(default_factory=list)  # {"cell", "kind": "failure", "finding"}
    notes: list[str] = field(default_factory=list)  # graded, but a TA may want to know (extra files, ...)
    memory_mib: float = 0.0  # peak memory of the grading process and its largest kernel, when measured

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def score(self) -> float:
        return sum(s for s, _ in self.cells.values())

    @property
    def max_score(self) -> float:
        return sum(m for _, m in self.cells.values())

    @property
    def failures(self) -> list[dict]:
        """Cells whose code stopped the kernel, ran out of time or was not run: for a TA to look at."""
        return [f for f in self.findings if f["kind"] == "failure"]

    @property
    def lost(self) -> set[str]:
        """Test cells that did not get full points."""
        return {gid for gid, (s, m) in self.cells.items() if s < m}

    @property
    def waiting(self) -> list[str]:
        """The written answers (manually graded cells) that wait for a TA to grade them."""
        return [gid for gid, (s, _) in self.manual.items() if s is None]

    @property
    def manual_max(self) -> float:
        """The points a TA gives (written answers), on top of max_score."""
        return sum(m for _, m in self.manual.values())


GENERIC = ("Please see the", "There was an error processing")


def last_error_line(log: str) -> str:
    """The most telling line of an nbgrader log: the exception, else its last specific error, else its last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    exceptions = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Exit)\b.*:", line)]
    errors = [line for line in lines if "[ERROR]" in line and not any(g in line for g in GENERIC)]
    return (exceptions or errors or lines or ["failed without a message"])[-1]


# nbgrader 0.9.6's gradebook triggers SQLAlchemy autoflush warnings on every autograde; they are harmless.
warnings.filterwarnings("ignore", category=SAWarning)


def use_this_environment() -> None:
    """nbgrader runs `alembic` by name: make sure it finds this interpreter's, not another's. PATH is extended for
    the rest of the process on purpose, not set and restored around each call: the worker processes inherit it."""
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


class Grader:
    """nbgrader's API on one course root (the real course, or a scratch copy of it).

    Autograding runs as the course's nbgrader_config.py sets it up (see safety.py): through GuardedExecute,
    every kernel in a bubblewrap sandbox. `sandbox=False` is the explicit opt-out for trusted notebooks (the
    kernels still get a scratch HOME, TMPDIR and folder of their own). `refuse_unless_safe` raises CourseError
    with the reason when it could not grade safely; every run calls it before grading anyone.
    """

    def __init__(self, course: Course, root: Path, sandbox: bool = True, db_url: str | None = None):
        use_this_environment()
        queue_sqlite_writers()
        self.course = course
        self.root = root
        self.paths = course.at(root)  # the course's folders at this root
        self.config = course.nbgrader_config(root)
        if db_url:
            self.config.CourseDirectory.db_url = db_url
        self.sandboxed = sandbox
        if not sandbox:
            self.config.GuardedExecute.sandbox = False
        self.coursedir = CourseDirectory(config=self.config)
        self.api = NbGraderAPI(coursedir=self.coursedir, config=self.config)
        self.locks = Locks(self.db_url)

    def refuse_unless_safe(self) -> None:
        """Raise CourseError, saying why and what to do, unless autograding here is safe (see safety.py)."""
        problem = refusal(self.config)
        if problem:
            raise CourseError(problem)

    @property
    def db_url(self) -> str:
        return self.coursedir.db_url

    def generate(self, aid: str, release_dir: Path | None = None) -> None:
        """Generate the student version of `aid` (into release/, or `release_dir`) and register it."""
        api = self.api
        if release_dir is not None:  # a throw-away release: registers the assignment, leaves release/ alone
            config = self.course.nbgrader_config(self.root)
            config.CourseDirectory.db_url = self.db_url
            config.CourseDirectory.release_directory = str(release_dir)
            api = NbGraderAPI(coursedir=CourseDirectory(config=config), config=config)
        result = api.generate_assignment(aid, force=True, create=True)
        if not result["success"]:
            raise CourseError(f"{aid}: nbgrader could not generate the release: {last_error_line(result['log'])}")

    def register_assignment(self, aid: str) -> None:
        """Make sure the gradebook knows `aid` and its grade cells, without touching release/.

        Under the registration lock: graders that start at once on an empty gradebook (shards on several
        machines) would otherwise all create its tables and register the assignment."""
        try:
            with self.locks.registration(aid):
                if gradebook.has_notebooks(self.db_url, aid):
                    return
                with tempfile.TemporaryDirectory(prefix="release-") as tmp:
                    self.generate(aid, Path(tmp))
        except SQLAlchemyError as exc:  # a server that is down, a wrong password, a database that is not there
            first = str(exc.orig if getattr(exc, "orig", None) else exc).strip().splitlines()[0]
            raise CourseError(f"cannot use the gradebook {describe(self.db_url)}: {first}") from None

    def grade_student(self, aid: str, student: str) -> GradeResult:
        """Autograde one student's submission of `aid` with nbgrader, and read back their scores and findings."""
        self.refuse_unless_safe()
        start = time.perf_counter()
        result = self.api.autograde(aid, student, force=True, create=True)
        seconds = time.perf_counter() - start
        if not result["success"]:
            return GradeResult(student, aid, seconds, error=last_error_line(result.get("log", "")))
        folder = self.paths.autograded_dir(student, aid)
        findings = [f for nb in sorted(folder.glob("*.ipynb")) for f in read_findings(nb)]
        notes = [f"{f['cell']}: {f['finding']}" for f in findings if f["kind"] == "note"]
        auto, manual = self.scores(aid, student)
        return GradeResult(student, aid, seconds, cells=auto, manual=manual, notes=notes,
                           findings=[f for f in findings if f["kind"] != "note"])

    def record_ungraded(self, aid: str, student: str) -> None:
        """Give a submission that cannot be graded a row of zeros in the gradebook, as nbgrader does for a
        missing notebook, so exports and the formgrader show the student instead of leaving them out."""
        gradebook.record_ungraded(self.db_url, aid, student)

    def scores(self, aid: str, student: str) -> tuple[dict[str, tuple[float, float]], dict[str, tuple[float | None, float]]]:
        """(autograded, manual) cells of the student's submission: grade_id -> (score, max score).

        A manual cell (a written answer or a task, graded by a TA) has score None while it waits for the TA."""
        return gradebook.submission_scores(self.db_url, aid, student)

    def generate_feedback(self, aid: str) -> None:
        result = self.api.generate_feedback(aid, force=True)
        if not result["success"]:
            raise CourseError(f"{aid}: nbgrader could not generate feedback: {last_error_line(result['log'])}")

    def export_csv(self, path: Path) -> Path:
        return gradebook.export_csv(self.db_url, self.course.nbgrader_config(self.root), path)
