"""`coursegrader demo`: grade a sample class end to end, as a TA would, in demo/.

The class: `reference` (the solution), `blank` (the release untouched) and `mistakes-<r>` (the solution
with one round of catalogued wrong answers written in). Runs autograde, generate_feedback and the CSV
export, then prints the scores and where to find the grades and the feedback.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from . import sampleclass
from .course import Course
from .grading import Grader, GradeResult, make_scratch_course
from .table import fmt, render


def run(course: Course, aids: list[str], dest: Path) -> tuple[list[tuple[sampleclass.Submission, GradeResult]], Path]:
    root = make_scratch_course(course, dest, aids)
    grader = Grader(course, root)
    plans = [sub for aid in aids for sub in sampleclass.plan(course, aid)]
    with tqdm(total=len(plans) + len(aids), desc="demo class", unit="nb", leave=False) as bar:
        results = []
        for aid in aids:
            grader.generate(aid)
            subs = [s for s in plans if s.assignment == aid]
            results += sampleclass.grade(course, grader, subs, progress=lambda s: bar.update())
            grader.feedback(aid)
            bar.update()
    csv = grader.export_csv(root / "grades.csv")
    return results, csv


def format_report(results: list[tuple[sampleclass.Submission, GradeResult]], csv: Path, root: Path) -> str:
    aids = list(dict.fromkeys(sub.assignment for sub, _ in results))
    students = list(dict.fromkeys(sub.student for sub, _ in results))
    by_key = {(sub.student, sub.assignment): res for sub, res in results}

    def cell(student: str, aid: str) -> str:
        res = by_key.get((student, aid))
        if res is None:
            return "-"
        return "FAILED" if not res.ok else f"{fmt(res.score)}/{fmt(res.max_score)}"

    lines = ["Scores (student x assignment):", render(["student", *aids], [[s, *(cell(s, a) for a in aids)] for s in students])]
    lines.append("\nWhere the mistakes lost points (expected: the cells the catalogue names):")
    rows = []
    for sub, res in results:
        if not sub.wrong:
            continue
        as_expected = res.ok and res.lost == sub.expected_lost
        rows.append([sub.assignment, sub.student, ", ".join(w.id for w in sub.wrong),
                     ", ".join(sorted(res.lost)) or "-", "yes" if as_expected else "NO"])
    lines.append(render(["assignment", "student", "wrong answers handed in", "cells that lost points", "as catalogued"], rows))
    lines += ["", f"Grades (CSV):   {csv}", f"Feedback (HTML): {root / 'feedback'}/<student>/<assignment>/<assignment>.html",
              f"Autograded notebooks: {root / 'autograded'}"]
    return "\n".join(lines)
