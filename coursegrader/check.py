"""`coursegrader check`: the proof that every assignment grades as it should.

For each assignment: (1) the reference solution gets full autograded marks (its written answers wait
for a TA), (2) the blank release gets 0 and autograde does not crash, (3) every catalogued wrong answer
loses points on exactly the test cells it names, (4) release/ is what nbgrader generates from source/ and
leaks nothing (no solution, hidden test or mark scheme), (5) the solution notebook runs within its time
budget, (6) the feedback of every sample student shows no hidden test and no mark scheme.
Everything is graded in a scratch course; the real gradebook is not touched.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from . import sampleclass
from .course import Course
from .feedback import feedback_leaks
from .nbgrader_api import Grader, GradeResult
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


def time_reference(course: Course, aid: str, workdir: Path, sandbox: bool = True) -> GradeResult:
    """Phase 1: set up the assignment's scratch course (its own gradebook) and grade the reference, alone.

    The reference's autograde time is what the time budget is held against, so nothing else runs meanwhile.
    """
    scratch = course.make_scratch_course(workdir / aid, [aid])
    grader = Grader(course, scratch.root, sandbox=sandbox)
    grader.generate(aid)  # the scratch release doubles as the reference for the sync check
    (_, result), = sampleclass.grade(course, grader, sampleclass.plan(course, aid)[:1])
    return result


def check_assignment(course_root: Path, aid: str, exact: bool, workdir: Path, reference: GradeResult,
                     progress: Callable[[], None] = lambda: None, sandbox: bool = True) -> AssignmentReport:
    """Phase 2: grade the rest of the sample class in the scratch course of phase 1 and judge everything."""
    course = Course.load(course_root)
    grader = Grader(course, workdir / aid, sandbox=sandbox)
    scratch = grader.paths
    plan = sampleclass.plan(course, aid, exact)
    results = [(plan[0], reference)] + sampleclass.grade(course, grader, plan[1:], progress=lambda s: progress())
    verdict = sampleclass.judge(course, grader, aid, results)
    grader.generate_feedback(aid)
    source_nb = read_notebook(course.source_notebook(aid))
    for student, page in scratch.feedback_pages(aid):
        submitted = read_notebook(scratch.submitted_notebook(student, aid))
        verdict.problems.extend(f"feedback of {student} shows a hidden test or a mark scheme: '{line}'"
                                for line in feedback_leaks(source_nb, page.read_text(encoding="utf-8"), submitted))
    release = course.release_dir(aid).relative_to(course.root)
    verdict.problems.extend(f"{release}/{d}" for d in differences(scratch.release_dir(aid), course.release_dir(aid)))
    leaks = find_leaks(read_notebook(course.source_notebook(aid)), read_notebook(course.release_notebook(aid)))
    verdict.problems.extend(f"{release} leaks: {leak}" for leak in leaks)
    budget = course.declared[aid].budget_seconds
    if verdict.seconds is not None and verdict.seconds > budget:
        verdict.problems.append(f"solution notebook took {verdict.seconds:.1f} s, budget {budget:g} s")
    return AssignmentReport(verdict, sum(len(s.wrong) for s in plan), budget)


def run(course: Course, aids: list[str], exact: bool = False, jobs: int | None = None,
        sandbox: bool = True) -> list[AssignmentReport]:
    """Check each assignment: references one at a time, then the rest with `jobs` assignments at once.

    Assignments never share a gradebook, so parallel grading cannot mix their grades; the longest
    (largest time budget) start first so that the last one to finish is a short one.
    """
    Grader(course, course.root, sandbox=sandbox).refuse_unless_safe()  # before anything runs
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(aids)))
    plans = {aid: sampleclass.plan(course, aid, exact) for aid in aids}
    with tempfile.TemporaryDirectory(prefix="check-") as tmp:
        workdir = Path(tmp)
        with tqdm(total=sum(map(len, plans.values())), desc="grading", unit="nb", leave=False) as bar:
            references = {}
            for aid in aids:
                references[aid] = time_reference(course, aid, workdir, sandbox)
                bar.update()
            if jobs == 1:
                return [check_assignment(course.root, aid, exact, workdir, references[aid], bar.update, sandbox)
                        for aid in aids]
            bar.set_description(f"grading ({jobs} assignments at once)")
            longest_first = sorted(aids, key=lambda a: -course.declared[a].budget_seconds)
            with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
                futures = {pool.submit(check_assignment, course.root, aid, exact, workdir, references[aid],
                                       sandbox=sandbox): aid for aid in longest_first}
                done = {}
                for future in as_completed(futures):
                    aid = futures[future]
                    done[aid] = future.result()
                    bar.update(len(plans[aid]) - 1)
        return [done[aid] for aid in aids]


def format_report(reports: list[AssignmentReport]) -> str:
    rows = [
        (
            r.verdict.assignment,
            fmt(r.verdict.points),
            fmt(r.verdict.written) if r.verdict.written else "-",
            fmt(r.verdict.reference),
            fmt(r.verdict.blank),
            f"{len(r.verdict.caught)}/{r.wrong_total}",
            "-" if r.verdict.seconds is None else f"{r.verdict.seconds:.1f} / {r.budget:g}",
            "ok" if r.ok else "FAIL",
        )
        for r in reports
    ]
    header = ("assignment", "points", "written (TA)", "reference", "blank", "wrong caught", "seconds / budget", "status")
    lines = [render(header, rows)]
    if any(r.verdict.written for r in reports):
        lines.append("points, reference and blank count the autograded points; the written answers wait for a TA "
                     "(the reference's are checked to wait, the blank's to score 0).")
    for r in reports:
        lines.extend(f"  {r.verdict.assignment}: {p}" for p in r.verdict.problems)
    return "\n".join(lines)
