"""`coursegrader autograde ASSIGNMENT`: grade the real submissions in submitted/ with a progress bar.

Each notebook is read before grading, so a broken one is reported with a clear reason instead of an
nbgrader traceback; the command exits non-zero naming every student who could not be graded.
"""

from __future__ import annotations

from tqdm import tqdm

from .course import Course
from .errors import CourseError
from .grading import Grader, GradeResult
from .notebooks import read_notebook
from .table import fmt, render


def submissions(course: Course, aid: str) -> list[str]:
    """Students with a folder submitted/<student>/<aid>/."""
    submitted = course.root / "submitted"
    students = sorted(p.parent.name for p in submitted.glob(f"*/{aid}") if p.is_dir())
    if not students:
        raise CourseError(f"no submissions for {aid}: expected {submitted}/<student>/{aid}/{aid}.ipynb")
    return students


def problem_with(course: Course, aid: str, student: str) -> str:
    """Why this submission cannot be graded, or '' if it can."""
    folder = course.root / "submitted" / student / aid
    expected = folder / f"{aid}.ipynb"
    try:
        read_notebook(expected)
    except CourseError as exc:
        problem = str(exc).replace(str(course.root) + "/", "")
        others = sorted(p.name for p in folder.glob("*.ipynb")) if not expected.exists() else []
        return problem + (f" (the folder has {', '.join(others)}: renamed?)" if others else "")
    return ""


def run(course: Course, aid: str, students: list[str] | None = None) -> list[GradeResult]:
    grader = Grader(course, course.root)
    grader.ensure_registered(aid)
    results = []
    failures = 0
    with tqdm(students or submissions(course, aid), desc=f"autograde {aid}", unit="student") as bar:
        for student in bar:
            problem = problem_with(course, aid, student)
            result = GradeResult(student, aid, 0.0, error=problem) if problem else grader.autograde(aid, student)
            failures += not result.ok
            bar.set_postfix(failed=failures)
            results.append(result)
    return results


def format_report(results: list[GradeResult]) -> str:
    rows = [(r.student, fmt(r.score) if r.ok else "-", fmt(r.max_score) if r.ok else "-",
             f"{r.seconds:.1f}", "ok" if r.ok else f"NOT GRADED: {r.error}") for r in results]
    graded = sum(r.ok for r in results)
    summary = f"\n{graded} of {len(results)} graded"
    failed = [r.student for r in results if not r.ok]
    if failed:
        summary += f"; could not grade: {', '.join(failed)}"
    return render(("student", "score", "max", "seconds", "status"), rows) + summary
