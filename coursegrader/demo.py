"""`coursegrader demo`: grade a sample class end to end, as a TA would, in demo/.

The class: `reference` (the solution), `blank` (the release untouched) and `mistakes-<r>` (the solution
with one round of catalogued wrong answers written in). Runs autograde, generate_feedback, the grade report
of each assignment (reports/<assignment>/report.html) and the CSV export, then prints the scores and where
to find the grades, the reports and the feedback. Scores are autograded points: the written answers of the
reference and the mistake students wait for a TA, and are shown as waiting, never as lost.
"""

from __future__ import annotations

import csv
from pathlib import Path

from tqdm import tqdm

from . import report, sampleclass
from .autograde import format_integrity, save_reports
from .course import Course
from .nbgrader_api import Grader, GradeResult
from .table import fmt, render


def run(course: Course, aids: list[str], dest: Path,
        sandbox: bool = True) -> tuple[list[tuple[sampleclass.Submission, GradeResult]], Path]:
    scratch = course.make_scratch_course(dest, aids)
    grader = Grader(course, scratch.root, sandbox=sandbox)
    grader.refuse_unless_safe()
    # The hostile students are graded only in the sandbox: with --no-sandbox the class is our own, trusted code.
    plans = [sub for aid in aids for sub in sampleclass.plan(course, aid, hostile=sandbox)]
    with tqdm(total=len(plans) + len(aids), desc="demo class", unit="nb", leave=False) as bar:
        results = []
        for aid in aids:
            grader.generate(aid)
            subs = [s for s in plans if s.assignment == aid]
            graded = sampleclass.grade(course, grader, subs, progress=lambda s: bar.update())
            grader.generate_feedback(aid)
            save_report(course, scratch.root, aid, [res for _, res in graded])
            results += graded
            bar.update()
    csv = grader.export_csv(scratch.root / "grades.csv")
    return results, csv


def save_report(course: Course, root: Path, aid: str, graded: list[GradeResult]) -> list[Path]:
    """What a TA gets after `coursegrader autograde` and `report`: reports/<aid>/ with grades.csv and report.html."""
    folder = course.at(root).reports_dir(aid)
    save_reports(graded, folder)
    return report.save(report.build(course, aid, root=root), folder)


def write_mistakes(results: list[tuple[sampleclass.Submission, GradeResult]], path: Path) -> Path:
    """One row per wrong answer handed in: who, which catalogue entry, what it is, where it should and did cost."""
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["assignment", "student", "wrong_answer", "mistake", "should_lose", "lost", "as_catalogued"])
        for sub, res in results:
            for w in sub.wrong:
                lost = sorted(res.lost & w.fails)
                out.writerow([sub.assignment, sub.student, w.id, w.mistake, " ".join(sorted(w.fails)), " ".join(lost),
                              "yes" if sampleclass.as_expected(sub, res) else "no"])
    return path


def format_report(results: list[tuple[sampleclass.Submission, GradeResult]], csv: Path, demo: Course) -> str:
    """The scores and where to find everything, in the sample course `demo` (the course at demo/)."""
    aids = list(dict.fromkeys(sub.assignment for sub, _ in results))
    students = list(dict.fromkeys(sub.student for sub, _ in results))
    by_key = {(sub.student, sub.assignment): res for sub, res in results}

    def cell(student: str, aid: str) -> str:
        res = by_key.get((student, aid))
        if res is None:
            return "-"
        if not res.ok:
            return "FAILED"
        waiting = sum(res.manual[gid][1] for gid in res.waiting)
        return f"{fmt(res.score)}/{fmt(res.max_score)}" + (f" +{fmt(waiting)} TA" if waiting else "")

    lines = ["Scores (student x assignment), autograded points:",
             render(["student", *aids], [[s, *(cell(s, a) for a in aids)] for s in students])]
    written = [(sub, res) for sub, res in results if res.ok and res.manual]
    if written:
        lines.append("'+N TA': N points of written answers wait for a TA (the formgrader's Manual Grading); they are "
                     "not counted, neither as scored nor as lost.")
        lines.append("\nWritten answers, graded by a TA (the blank release's are scored 0 by nbgrader: no response):")
        rows = []
        for aid in aids:
            manual = next((res.manual for sub, res in written if sub.assignment == aid), {})
            for gid, (_, points) in manual.items():
                waiting = [sub.student for sub, res in written if sub.assignment == aid and gid in res.waiting]
                rows.append([aid, gid, fmt(points), f"{len(waiting)} student(s)", " ".join(waiting)])
        lines.append(render(["assignment", "written answer", "points", "waiting for a TA", "who"], rows))
    lines.append("\nWhere the mistakes lost points (each must lose exactly the cells its catalogue entries name):")
    rows = []
    for sub, res in results:
        if sub.wrong:
            rows.append([sub.assignment, sub.student, len(sub.wrong), f"{len(res.lost)} of {len(res.cells)}",
                         "yes" if sampleclass.as_expected(sub, res) else "NO"])
    lines.append(render(["assignment", "student", "wrong answers", "test cells that lost points", "as catalogued"], rows))
    lines.append("\nHostile students: `tamper` hands in the blank release with a cell that blanks every later cell that "
                 "asserts (it must score 0: the tests run in a kernel of their own); `crash` kills its kernel in one "
                 "solution cell.")
    rows = [[sub.assignment, sub.student, f"{fmt(res.score)}/{fmt(res.max_score)}" if res.ok else "FAILED",
             f"{len(res.lost)} of {len(res.cells)}", "yes" if sampleclass.as_expected(sub, res) else "NO"]
            for sub, res in results if sub.tamper or sub.crash]
    lines.append(render(["assignment", "student", "score", "test cells that lost points", "as expected"], rows))
    lines += ["", format_integrity([res for _, res in results], label=lambda r: f"{r.assignment}/{r.student}")]
    lines += ["", f"Which mistake each student made, and its cost: {write_mistakes(results, demo.root / 'mistakes.csv')}",
              f"Grades (CSV):   {csv}", f"Grade reports (HTML): {demo.reports_dir('<assignment>')}/report.html",
              f"Feedback (HTML): {demo.feedback_dir('<student>', '<assignment>')}/<assignment>.html",
              f"Autograded notebooks: {demo.autograded_dir('<student>', '<assignment>')}"]
    return "\n".join(lines)
