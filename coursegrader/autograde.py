"""`coursegrader autograde ASSIGNMENT`: grade the real submissions in submitted/ with a progress bar.

Every submission gets a row: graded (with its integrity findings and notes) or not graded with the
reason, and a row of zeros in the gradebook. One bad submission never stops the batch. The rows are
printed and saved as reports/<assignment>/grades.csv and integrity.csv.
"""

from __future__ import annotations

import csv
from pathlib import Path

from tqdm import tqdm

from .course import Course
from .errors import CourseError
from .grading import Grader, GradeResult
from .submissions import inspect
from .table import fmt, render


def submissions(course: Course, aid: str) -> list[str]:
    """Students with a folder submitted/<student>/<aid>/."""
    submitted = course.root / "submitted"
    students = sorted(p.parent.name for p in submitted.glob(f"*/{aid}") if p.is_dir())
    if not students:
        raise CourseError(f"no submissions for {aid}: expected {submitted}/<student>/{aid}/{aid}.ipynb")
    return students


def shipped_files(course: Course, aid: str) -> set[str]:
    """Files the assignment provides besides its notebooks (data): not the student's extra files."""
    folder = course.root / "source" / aid
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.suffix != ".ipynb"}


def grade_one(course: Course, grader: Grader, aid: str, student: str) -> GradeResult:
    found = inspect(grader.root / "submitted" / student / aid, [aid], shipped_files(course, aid))
    if not found.gradable:
        grader.record_ungraded(aid, student)
        return GradeResult(student, aid, 0.0, error=found.problem)
    result = grader.autograde(aid, student)
    result.notes.extend(found.notes)
    return result


def run(course: Course, aid: str, students: list[str] | None = None, sandbox: bool = True) -> list[GradeResult]:
    grader = Grader(course, course.root, sandbox=sandbox)
    grader.ensure_registered(aid)
    results = []
    failures = flagged = 0
    with tqdm(students or submissions(course, aid), desc=f"autograde {aid}", unit="student") as bar:
        for student in bar:
            result = grade_one(course, grader, aid, student)
            failures += not result.ok
            flagged += bool(result.tampering)
            bar.set_postfix(failed=failures, flagged=flagged)
            results.append(result)
    return results


def status(r: GradeResult) -> str:
    if not r.ok:
        return f"NOT GRADED: {r.error}"
    parts = [f"FLAGGED: {len(r.tampering)} integrity finding(s)"] if r.tampering else ["ok"]
    failures = len(r.findings) - len(r.tampering)
    if failures:
        parts.append(f"{failures} cell(s) stopped the kernel or ran out of time")
    return "; ".join(parts + r.notes)


def save_reports(results: list[GradeResult], folder: Path) -> tuple[Path, Path]:
    """grades.csv (one row per student, with the reason when not graded) and integrity.csv (one row per finding)."""
    folder.mkdir(parents=True, exist_ok=True)
    grades, findings = folder / "grades.csv", folder / "integrity.csv"
    with grades.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["student", "score", "max_score", "graded", "reason", "integrity_findings", "notes", "seconds"])
        for r in results:
            out.writerow([r.student, fmt(r.score) if r.ok else 0, fmt(r.max_score) if r.ok else "",
                          "yes" if r.ok else "no", r.error, len(r.tampering), " | ".join(r.notes), f"{r.seconds:.1f}"])
    with findings.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["student", "cell", "kind", "finding"])
        for r in results:
            out.writerows([r.student, x["cell"], x["kind"], x["finding"]] for x in r.findings)
    return grades, findings


def format_integrity(results: list[GradeResult], label=lambda r: r.student) -> str:
    rows = [(label(r), x["cell"], x["kind"], x["finding"]) for r in results for x in r.findings]
    if not rows:
        return "Integrity report: nothing found."
    return ("Integrity report (test cells listed here scored 0; 'tamper': the tests may have been fooled, "
            "'failure': the code stopped the kernel or ran out of time):\n" + render(("student", "cell", "kind", "finding"), rows))


def format_report(results: list[GradeResult]) -> str:
    rows = [(r.student, fmt(r.score) if r.ok else "0", fmt(r.max_score) if r.ok else "-",
             f"{r.seconds:.1f}", status(r)) for r in results]
    graded = sum(r.ok for r in results)
    summary = f"\n{graded} of {len(results)} graded"
    failed = [r.student for r in results if not r.ok]
    if failed:
        summary += f"; could not grade: {', '.join(failed)}"
    flagged = [r.student for r in results if r.tampering]
    if flagged:
        summary += f"; flagged: {', '.join(flagged)}"
    return "\n".join([render(("student", "score", "max", "seconds", "status"), rows) + summary, "",
                      format_integrity(results)])
