"""`coursegrader autograde ASSIGNMENT`: grade the real submissions in submitted/, several at once.

Every submission gets a row: graded (with its integrity findings and notes) or not graded with the
reason, and a row of zeros in the gradebook. One bad submission never stops the batch. The rows are
printed and saved as reports/<assignment>/grades.csv and integrity.csv.

With `jobs` > 1, worker processes (started as workers.py says) each grade one student at a time with a
grader of their own (its own sandbox uid and kernel), exactly as serial grading does, so the rows written
are the same; the gradebook is shared safely (see gradebook.py). `shard` grades only one machine's share
of the class.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .course import Course
from . import logs
from .errors import CourseError
from .gradebook import Shard
from .nbgrader_api import Grader, GradeResult
from .sanitize import source_grade_ids
from .submissions import triage
from .workers import context
from .table import fmt, printable, render, row


def submitters(course: Course, aid: str) -> list[str]:
    """Students with a folder submitted/<student>/<aid>/."""
    students = course.submitters(aid)
    if not students:
        raise CourseError(f"no submissions for {aid}: expected {course.submitted_notebook('<student>', aid)}")
    return students


def shipped_files(course: Course, aid: str) -> set[str]:
    """Files the assignment provides besides its notebooks (data): not the student's extra files."""
    folder = course.source_dir(aid)
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.suffix != ".ipynb"}


def grade_submission(course: Course, grader: Grader, aid: str, student: str) -> GradeResult:
    """Grade one student under their lock (no other grader works on them meanwhile). Whatever goes wrong
    becomes this student's row, so one submission never stops the batch."""
    try:
        with grader.locks.student(aid, student):
            source = course.source_notebook(aid)
            found = triage(grader.paths.submitted_dir(student, aid), [aid], shipped_files(course, aid),
                            grade_ids=source_grade_ids(str(source), source.stat().st_mtime_ns))
            if not found.gradable:
                grader.record_ungraded(aid, student)
                result = GradeResult(student, aid, 0.0, error=found.problem)
            else:
                result = grader.grade_student(aid, student)
                result.notes.extend(found.notes)
    except Exception as exc:  # a grader problem (database, disk), not the student's: say what it was
        result = GradeResult(student, aid, 0.0, error=f"grading stopped: {exc.__class__.__name__}: {exc}")
    result.memory_mib = peak_memory_mib()
    return result


def peak_memory_mib() -> float:
    """Peak resident memory of this grading process plus that of its largest kernel so far: the most one
    worker has held at once (Linux reports ru_maxrss in KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kernels = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + kernels) / 1024


@dataclass
class Run:
    """One `autograde` of a class: the rows in the order asked for, and how the run went."""

    assignment: str
    results: list[GradeResult] = field(default_factory=list)
    jobs: int = 1
    seconds: float = 0.0
    shard: Shard | None = None
    sandboxed: bool = True

    @property
    def peak_memory_mib(self) -> float:
        return max((r.memory_mib for r in self.results), default=0.0)


# --- worker processes: one grader each, built once ---------------------------------------------
_worker: tuple[Course, Grader] | None = None


def _start_worker(course_root: Path, sandbox: bool, db_url: str | None, log_level: int) -> None:
    global _worker
    logs.configure(log_level)  # a worker logs as its command does (-v, -vv, -q)
    course = Course.load(course_root)
    _worker = (course, Grader(course, course.root, sandbox=sandbox, db_url=db_url))


def _grade_in_worker(aid: str, student: str) -> GradeResult:
    course, grader = _worker
    return grade_submission(course, grader, aid, student)


def run(course: Course, aid: str, students: list[str] | None = None, sandbox: bool = True,
        jobs: int | None = None, db_url: str | None = None, shard: Shard | None = None) -> Run:
    """Grade `students` (default: every submission, or the shard's share) with `jobs` workers (default: one per core)."""
    start = time.perf_counter()
    grader = Grader(course, course.root, sandbox=sandbox, db_url=db_url)
    grader.refuse_unless_safe()  # before anything else: an unsafe run grades nobody
    grader.register_assignment(aid)
    students = students or submitters(course, aid)
    if shard is not None:
        students = shard.select(students)
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(students)))
    outcome = Run(aid, jobs=jobs, shard=shard, sandboxed=sandbox)
    done: dict[str, GradeResult] = {}
    label = f"autograde {aid}" + (f" (shard {shard})" if shard else "") + (f", {jobs} at once" if jobs > 1 else "")
    with tqdm(total=len(students), desc=label, unit="student") as bar:
        def finished(result: GradeResult) -> None:
            done[result.student] = result
            bar.update()
            bar.set_postfix(failed=sum(not r.ok for r in done.values()),
                            flagged=sum(bool(r.failures) for r in done.values()))

        if jobs == 1:
            for student in students:
                finished(grade_submission(course, grader, aid, student))
        else:
            with ProcessPoolExecutor(jobs, mp_context=context(), initializer=_start_worker,
                                     initargs=(course.root, sandbox, db_url,
                                               logging.getLogger().getEffectiveLevel())) as pool:
                futures = {pool.submit(_grade_in_worker, aid, s): s for s in students}
                for future in as_completed(futures):
                    try:
                        finished(future.result())
                    except Exception as exc:  # the worker process itself died (killed, out of memory)
                        finished(GradeResult(futures[future], aid, 0.0,
                                             error=f"the grading worker failed: {exc.__class__.__name__}: {exc}"))
    outcome.results = [done[s] for s in students]
    outcome.seconds = time.perf_counter() - start
    return outcome


def status(r: GradeResult) -> str:
    if not r.ok:
        return f"NOT GRADED: {r.error}"
    parts = [f"FLAGGED: {len(r.failures)} cell(s) stopped the kernel or ran out of time"] if r.failures else ["ok"]
    if r.waiting:
        parts.append(f"waiting for a TA: {' '.join(r.waiting)}")
    return "; ".join(parts + r.notes)


def save_reports(results: list[GradeResult], folder: Path) -> tuple[Path, Path]:
    """grades.csv (one row per student, with the reason when not graded) and integrity.csv (one row per finding).

    score and max_score are the autograded points; waiting_for_ta names the written answers a TA still has to
    grade (worth written_points in all, on top of max_score)."""
    folder.mkdir(parents=True, exist_ok=True)
    grades, findings = folder / "grades.csv", folder / "integrity.csv"
    with grades.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["student", "score", "max_score", "graded", "reason", "integrity_findings", "notes", "seconds",
                      "waiting_for_ta", "written_points"])
        for r in results:
            out.writerow(row([r.student, fmt(r.score) if r.ok else 0, fmt(r.max_score) if r.ok else "",
                              "yes" if r.ok else "no", r.error, len(r.failures), " | ".join(r.notes), f"{r.seconds:.1f}",
                              " ".join(r.waiting), fmt(r.manual_max) if r.ok and r.manual else ""]))
    with findings.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["student", "cell", "kind", "finding"])
        for r in results:
            out.writerows(row([r.student, x["cell"], x["kind"], x["finding"]]) for x in r.findings)
    return grades, findings


def save_run(outcome: Run, folder: Path) -> Path:
    """run.json: how the run went (students, workers, seconds, peak memory), for scripts and the benchmark."""
    path = folder / "run.json"
    results = outcome.results
    path.write_text(json.dumps({
        "assignment": outcome.assignment, "students": len(results), "graded": sum(r.ok for r in results),
        "flagged": sum(bool(r.failures) for r in results), "jobs": outcome.jobs, "sandboxed": outcome.sandboxed,
        "shard": str(outcome.shard) if outcome.shard else None, "seconds": round(outcome.seconds, 2),
        "peak_memory_mib_per_worker": round(outcome.peak_memory_mib, 1),
    }, indent=1) + "\n", encoding="utf-8")
    return path


def format_integrity(results: list[GradeResult], label=lambda r: r.student) -> str:
    rows = [(label(r), x["cell"], x["kind"], x["finding"]) for r in results for x in r.findings]
    if not rows:
        return "Integrity report: nothing found."
    return ("Integrity report ('failure': the code stopped the kernel or ran out of time, and the cells listed "
            "scored 0; 'note': graded as usual):\n" + render(("student", "cell", "kind", "finding"), rows))


def format_summary(outcome: Run) -> str:
    """One paragraph for the end of a run: how many, how fast, what needs a human."""
    results = outcome.results
    graded = sum(r.ok for r in results)
    rate = 60 * len(results) / outcome.seconds if outcome.seconds else 0.0
    lines = [f"{graded} of {len(results)} graded" + (f" (shard {outcome.shard})" if outcome.shard else "")
             + f" in {outcome.seconds:.1f} s with {outcome.jobs} worker(s): {rate:.1f} submissions per minute; "
             f"peak memory per worker {outcome.peak_memory_mib:,.0f} MiB"]
    if not outcome.sandboxed:
        lines.append("UNSANDBOXED (--no-sandbox): student code ran with your permissions, in scratch folders")
    failed = [printable(r.student) for r in results if not r.ok]
    if failed:
        lines.append(f"could not grade: {', '.join(failed)}")
    flagged = [printable(r.student) for r in results if r.failures]
    if flagged:
        lines.append(f"flagged by the integrity check: {', '.join(flagged)}")
    waiting = [r for r in results if r.ok and r.waiting]
    if waiting:
        lines.append(f"written answers waiting for a TA (the formgrader's Manual Grading; not counted in the scores "
                     f"above): {sum(len(r.waiting) for r in waiting)} in {len(waiting)} submission(s)")
    return "\n".join(lines)


def format_report(outcome: Run) -> str:
    rows = [(r.student, fmt(r.score) if r.ok else "0", fmt(r.max_score) if r.ok else "-",
             f"{r.seconds:.1f}", status(r)) for r in outcome.results]
    return "\n".join([render(("student", "score", "max", "seconds", "status"), rows), "",
                      format_integrity(outcome.results), "", format_summary(outcome)])
