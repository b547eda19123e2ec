"""The sample class that `check` and `demo` grade: who hands in what, and what each must score.

Per assignment: `reference` hands in the solution, `blank` hands in the release untouched, and
`mistakes-<r>` hands in the solution with round r of the wrong-answer catalogue written in (see
catalogue.group_into_rounds). With `exact=True` every wrong answer is handed in alone instead.
The demo adds two hostile students: `tamper` hands in the blank release with a cell that blanks every later
cell that asserts (an IPython input transformer) and must score 0, as the blank does: the test cells run in a
kernel of their own, which the transformer never reaches; `crash` kills its kernel in one solution cell and
must lose that exercise's test cells, and those that call the function it never defined, while the rest of
the notebook is graded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from .catalogue import WrongAnswer, group_into_rounds, load_catalogue
from .course import Course
from .nbgrader_api import Grader, GradeResult
from .notebooks import read_notebook, solution_cells, strip_markers, with_answers, write_notebook


@dataclass(frozen=True)
class Submission:
    student: str
    assignment: str
    wrong: tuple[WrongAnswer, ...] = ()  # the catalogue entries written into the reference
    blank: bool = False
    tamper: bool = False
    crash: str = ""  # grade id of the solution cell that ends with os._exit
    crash_fails: frozenset[str] = frozenset()  # the test cells of that exercise (from its catalogue entries)

    @property
    def expected_lost(self) -> frozenset[str]:
        return self.crash_fails.union(*(w.fails for w in self.wrong))


TAMPER = ("get_ipython().input_transformers_post.append(\n"
          "    lambda lines: [] if any('assert' in line for line in lines) else lines)")


def as_expected(sub: Submission, res: GradeResult) -> bool:
    """Did the submission score what it should: full marks, zero, or lose exactly its catalogued cells?
    Autograded points only: the model answers handed in for the written answers wait for a TA (neither kept nor
    lost), and the blank release's score 0."""
    if not res.ok:
        return False
    if sub.blank:
        return res.score == 0 and not any(s for s, _ in res.manual.values())
    if sub.tamper:
        return res.score == 0 and not res.findings
    if sub.crash:  # its exercise's tests fail (so may tests that use the function it never defined); the rest is graded
        died = any(f["cell"] == sub.crash and f["kind"] == "failure" for f in res.findings)
        return died and sub.crash_fails <= res.lost and res.score > 0
    return res.lost == sub.expected_lost and not res.failures and set(res.waiting) == set(res.manual)


def reference_answers(source_nb) -> dict[str, str]:
    """Each solution cell's code as a student who solved it would hand it in (no nbgrader markers)."""
    return {gid: strip_markers(cell.source) for gid, cell in solution_cells(source_nb).items()}


def plan(course: Course, aid: str, exact: bool = False, hostile: bool = False) -> list[Submission]:
    entries = load_catalogue(course.catalogue_file(aid), aid, read_notebook(course.source_notebook(aid)))
    groups = [[e] for e in entries] if exact else group_into_rounds(entries)
    prefix = "wrong" if exact else "mistakes"
    subs = [
        Submission("reference", aid),
        Submission("blank", aid, blank=True),
        *(Submission(f"{prefix}-{i}", aid, tuple(group)) for i, group in enumerate(groups, start=1)),
    ]
    if hostile and entries:
        cell = entries[0].cell
        fails = frozenset().union(*(e.fails for e in entries if e.cell == cell))
        subs += [Submission("tamper", aid, tamper=True), Submission("crash", aid, crash=cell, crash_fails=fails)]
    return subs


def hand_in(course: Course, root: Path, sub: Submission) -> None:
    """Write the submission's notebook into root/submitted/<student>/<aid>/, as a student would."""
    here = course.at(root)
    release_nb = read_notebook(here.release_notebook(sub.assignment))
    answers = {} if sub.blank or sub.tamper else reference_answers(read_notebook(course.source_notebook(sub.assignment)))
    answers.update({w.cell: w.code for w in sub.wrong})
    if sub.crash:
        answers[sub.crash] += "\nimport os\nos._exit(1)"
    nb = with_answers(release_nb, answers)
    if sub.tamper:
        first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
        nb.cells.insert(first_code + 1, nbformat.v4.new_code_cell(TAMPER))
    write_notebook(nb, here.submitted_notebook(sub.student, sub.assignment))


def grade(course: Course, grader: Grader, subs: list[Submission],
          progress: Callable[[Submission], None] = lambda s: None) -> list[tuple[Submission, GradeResult]]:
    results = []
    for sub in subs:
        hand_in(course, grader.root, sub)
        results.append((sub, grader.grade_student(sub.assignment, sub.student)))
        progress(sub)
    return results


@dataclass
class Verdict:
    """What the sample class says about one assignment's tests."""

    assignment: str
    points: float = 0.0  # autograded points
    written: float = 0.0  # points of the written answers, which a TA grades
    reference: float | None = None  # the reference's autograded score
    blank: float | None = None
    seconds: float | None = None  # autograde time of the reference, kernel start included
    caught: list[str] = field(default_factory=list)  # wrong answers that lost points exactly where named
    problems: list[str] = field(default_factory=list)


def judge(course: Course, grader: Grader, aid: str, results: list[tuple[Submission, GradeResult]]) -> Verdict:
    """Hold the grades against what each submission should score; re-grade a failing round entry by entry."""
    verdict = Verdict(aid)
    for sub, res in results:
        if not res.ok:
            verdict.problems.append(f"{sub.student}: autograde failed: {res.error}")
            continue
        if sub.student == "reference":
            verdict.points, verdict.reference, verdict.seconds = res.max_score, res.score, res.seconds
            verdict.written = res.manual_max
            if res.lost:
                verdict.problems.append(f"reference loses points on {sorted(res.lost)}")
            settled = sorted(set(res.manual) - set(res.waiting))
            if settled:  # an answer differs from the release, so nbgrader must leave it to a TA
                verdict.problems.append(f"reference: written answers not waiting for a TA: {settled}")
        elif sub.blank:
            verdict.blank = res.score
            if res.score > 0:
                kept = sorted(gid for gid, (s, _) in res.cells.items() if s > 0)
                verdict.problems.append(f"blank release scores {res.score:g}: points kept on {kept}")
            given = sorted(gid for gid, (s, _) in res.manual.items() if s)
            if given:
                verdict.problems.append(f"blank release gets points on written answers {given}")
        elif res.lost == sub.expected_lost:
            verdict.caught.extend(w.id for w in sub.wrong)
        elif len(sub.wrong) == 1:
            w = sub.wrong[0]
            verdict.problems.append(_mismatch(w, res))
        else:  # a round went wrong: find out which entry by grading each alone
            for i, w in enumerate(sub.wrong, start=1):
                alone = Submission(f"{sub.student}-{i}", aid, (w,))
                (_, res1), = grade(course, grader, [alone])
                if res1.ok and res1.lost == w.fails:
                    verdict.caught.append(w.id)
                else:
                    verdict.problems.append(_mismatch(w, res1))
    return verdict


def _mismatch(w: WrongAnswer, res: GradeResult) -> str:
    if not res.ok:
        return f"wrong answer {w.id}: autograde failed: {res.error}"
    kept = sorted(w.fails - res.lost)
    extra = sorted(res.lost - w.fails)
    parts = []
    if kept:
        parts.append(f"keeps its points on {kept} (the hidden tests do not catch it)")
    if extra:
        parts.append(f"also loses points on {extra} (not named in the catalogue)")
    return f"wrong answer {w.id}: " + "; ".join(parts)
