"""`coursegrader check`: the proof that every assignment grades as it should.

For each assignment: (1) the reference solution gets full marks, (2) the blank release gets 0 and
autograde does not crash, (3) every catalogued wrong answer loses points on exactly the test cells it
names, (4) release/ is what nbgrader generates from source/ and leaks nothing, (5) the solution notebook
runs within its time budget. Everything is graded in a scratch course; the real gradebook is not touched.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from . import sampleclass
from .course import Course
from .grading import Grader, make_scratch_course
from .notebooks import read_notebook
from .release import differences, find_leaks
from .table import fmt, render


@dataclass
class AssignmentReport:
    verdict: sampleclass.Verdict
    wrong_total: int
    budget: float

    @property
    def ok(self) -> bool:
        return not self.verdict.problems


def run(course: Course, aids: list[str], exact: bool = False, workdir: Path | None = None) -> list[AssignmentReport]:
    """Grade the sample class of each assignment in a scratch course and check the release."""
    with tempfile.TemporaryDirectory(prefix="check-") as tmp:
        root = make_scratch_course(course, (workdir or Path(tmp)) / "course", aids)
        grader = Grader(course, root)
        plans = {aid: sampleclass.plan(course, aid, exact) for aid in aids}
        reports = []
        with tqdm(total=sum(map(len, plans.values())), desc="grading", unit="nb", leave=False) as bar:
            for aid in aids:
                grader.generate(aid)  # the scratch release doubles as the reference for the sync check
                sync = differences(root / "release" / aid, course.root / "release" / aid)
                results = sampleclass.grade(course, grader, plans[aid], progress=lambda s: bar.update())
                verdict = sampleclass.verify(course, grader, aid, results)
                verdict.problems.extend(f"release/{aid}/{d}" for d in sync)
                leaks = find_leaks(read_notebook(course.source_notebook(aid)), read_notebook(course.release_notebook(aid)))
                verdict.problems.extend(f"release/{aid} leaks: {leak}" for leak in leaks)
                budget = course.declared[aid].budget_seconds
                if verdict.seconds is not None and verdict.seconds > budget:
                    verdict.problems.append(f"solution notebook took {verdict.seconds:.1f} s, budget {budget:g} s")
                wrong_total = sum(len(s.wrong) for s in plans[aid])
                reports.append(AssignmentReport(verdict, wrong_total, budget))
    return reports


def format_report(reports: list[AssignmentReport]) -> str:
    rows = [
        (
            r.verdict.assignment,
            fmt(r.verdict.points),
            fmt(r.verdict.reference),
            fmt(r.verdict.blank),
            f"{len(r.verdict.caught)}/{r.wrong_total}",
            "-" if r.verdict.seconds is None else f"{r.verdict.seconds:.1f} / {r.budget:g}",
            "ok" if r.ok else "FAIL",
        )
        for r in reports
    ]
    header = ("assignment", "points", "reference", "blank", "wrong caught", "seconds / budget", "status")
    lines = [render(header, rows)]
    for r in reports:
        lines.extend(f"  {r.verdict.assignment}: {p}" for p in r.verdict.problems)
    return "\n".join(lines)
