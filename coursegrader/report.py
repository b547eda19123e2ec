"""`coursegrader report ASSIGNMENT`: after autograde, one page a TA would rather look at than read.

It reads the gradebook (every student's score on every test cell) and the last autograde's
reports/<assignment>/grades.csv (who could not be graded, who was flagged, seconds per notebook), and
writes into reports/<assignment>/:

- report.html: the score distribution (a histogram), the test cells the class failed most (which
  exercises it found hardest), the written answers that wait for a TA (per cell and per student), the
  students to look at, and the mean time per notebook;
- report-cells.csv and report-students.csv: the same numbers, for a spreadsheet.

Scores are autograded points. A written answer (a manually graded cell) is not scored by autograde: until a
TA grades it in the formgrader it WAITS, and it is never counted as lost; the points a TA has given so far are
reported apart, as written points.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

from . import gradebook, table
from .course import Course
from .errors import CourseError
from .notebooks import EXERCISE_HEADING, read_notebook


@dataclass
class CellStats:
    """One test cell over the graded students."""

    cell: str
    exercise: str
    points: float
    graded: int = 0
    failed: int = 0  # scored less than full points
    total: float = 0.0

    @property
    def failure_rate(self) -> float:
        return self.failed / self.graded if self.graded else 0.0

    @property
    def mean(self) -> float:
        return self.total / self.graded if self.graded else 0.0


@dataclass
class WrittenStats:
    """One written answer (graded by a TA) over the graded students."""

    cell: str
    exercise: str
    points: float
    waiting: list[str] = field(default_factory=list)  # students whose answer a TA has not graded yet
    marked: int = 0  # graded by a TA, or left blank (nbgrader gives 0 for no response)
    total: float = 0.0  # points given to the marked ones


@dataclass
class StudentRow:
    student: str
    score: float  # autograded points
    max_score: float
    graded: bool
    reason: str = ""
    findings: int = 0
    seconds: float | None = None
    waiting: list[str] = field(default_factory=list)  # written answers waiting for a TA
    written: float = 0.0  # points a TA has given so far (written answers not waiting)


@dataclass
class Report:
    assignment: str
    max_score: float  # autograded points
    students: list[StudentRow] = field(default_factory=list)
    cells: list[CellStats] = field(default_factory=list)  # autograded test cells, worst first
    written: list[WrittenStats] = field(default_factory=list)  # written answers, in notebook order

    @property
    def written_max(self) -> float:
        return sum(w.points for w in self.written)

    @property
    def waiting(self) -> list[StudentRow]:
        return [s for s in self.students if s.graded and s.waiting]

    @property
    def graded(self) -> list[StudentRow]:
        return [s for s in self.students if s.graded]

    @property
    def to_look_at(self) -> list[StudentRow]:
        return [s for s in self.students if not s.graded or s.findings]

    @property
    def mean_seconds(self) -> float | None:
        times = [s.seconds for s in self.graded if s.seconds is not None]
        return sum(times) / len(times) if times else None


def exercise_names(course: Course, aid: str) -> dict[str, str]:
    """grade_id of each test cell -> the exercise heading above it ('Exercise 2.3 (2 points)')."""
    names, current = {}, ""
    for cell in read_notebook(course.source_notebook(aid)).cells:
        if cell.cell_type == "markdown":
            match = EXERCISE_HEADING.search(cell.source)
            if match:
                current = match.group(0).lstrip("# ")
        gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if gid and cell.metadata["nbgrader"].get("grade"):
            names[gid] = current
    return names


def build(course: Course, aid: str, db_url: str | None = None, root: Path | None = None) -> Report:
    """The report of `aid` graded in `root` (default: the course itself; the demo grades in a scratch copy)."""
    from nbgrader.coursedir import CourseDirectory

    root = root or course.root
    url = db_url or CourseDirectory(config=course.nbgrader_config(root)).db_url  # nbgrader's own default when unset
    rows = _last_autograde(course.at(root), aid)
    names = exercise_names(course, aid)
    found = gradebook.assignment_grades(url, aid)
    if found is None:
        raise CourseError(f"{aid} is not in the gradebook yet: run `coursegrader autograde {aid}` first")
    order = list(names)
    graded_cells = sorted(found.cells, key=lambda c: order.index(c.name) if c.name in order else len(order))
    cells = {c.name: CellStats(c.name, names.get(c.name, ""), c.max_score) for c in graded_cells if not c.manual}
    written = {c.name: WrittenStats(c.name, names.get(c.name, ""), c.max_score) for c in graded_cells if c.manual}
    report = Report(aid, sum(c.points for c in cells.values()), written=list(written.values()))
    for sid, grades in found.students.items():
        row = rows.get(table.printable(sid), {})
        graded = row.get("graded", "yes") == "yes"
        student = StudentRow(sid, 0.0, report.max_score, graded, row.get("reason", ""),
                             int(row.get("integrity_findings") or 0),
                             float(row["seconds"]) if row.get("seconds") else None)
        report.students.append(student)
        for grade in sorted(grades, key=lambda g: order.index(g.name) if g.name in order else len(order)):
            score = grade.score
            if grade.name in written:
                if not graded:
                    continue
                stats = written[grade.name]
                if grade.needs_manual_grade:
                    stats.waiting.append(sid)
                    student.waiting.append(grade.name)
                else:
                    stats.marked += 1
                    stats.total += score
                    student.written += score
                continue
            student.score += score
            if graded:
                stats = cells[grade.name]
                stats.graded += 1
                stats.total += score
                stats.failed += score < grade.max_score
    report.cells = sorted(cells.values(), key=lambda c: (-c.failure_rate, c.mean / c.points if c.points else 0, c.cell))
    return report


def _last_autograde(course: Course, aid: str) -> dict[str, dict]:
    """The rows of reports/<aid>/grades.csv (and of every shard's), by student; {} before any autograde."""
    found = {}
    folders = [course.reports_dir(aid), *course.shard_reports_dirs(aid)]
    for path in (folder / "grades.csv" for folder in folders):
        if path.is_file():
            with path.open(newline="") as f:
                for row in csv.DictReader(f):
                    found[table.uncell(row["student"])] = {k: table.uncell(v) for k, v in row.items()}
    return found


def histogram_png(report: Report) -> str:
    """The graded students' scores as a histogram, a base64 PNG for an <img> tag."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    scores = [s.score for s in report.graded]
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    top = max(report.max_score, 1.0)
    ax.hist(scores, bins=min(20, max(5, int(top))), range=(0, top), color="#3b6ea8", edgecolor="white")
    ax.set_xlabel(f"score (out of {report.max_score:g})")
    ax.set_ylabel("students")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # students come whole
    ax.set_title(f"{report.assignment}: {len(scores)} graded")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(report: Report) -> str:
    graded = report.graded
    mean = sum(s.score for s in graded) / len(graded) if graded else 0.0
    seconds = report.mean_seconds
    cells = [(c.cell, c.exercise, f"{c.points:g}", f"{100 * c.failure_rate:.0f}%", f"{c.failed} of {c.graded}",
              f"{c.mean:.2f}") for c in report.cells]
    look = [(s.student, "not graded: " + s.reason if not s.graded else f"{s.findings} cell(s) stopped the kernel or ran out of time")
            for s in report.to_look_at]
    summary = (f"{len(report.students)} students, {len(graded)} graded; mean score {mean:.1f} of {report.max_score:g} "
               f"autograded points; "
               + (f"mean time per notebook {seconds:.1f} s" if seconds is not None else "no autograde times found"))
    written = ""
    if report.written:
        waiting = report.waiting
        per_cell = [(w.cell, w.exercise, f"{w.points:g}", len(w.waiting), w.marked,
                     f"{w.total / w.marked:.2f}" if w.marked else "-") for w in report.written]
        per_student = [(s.student, " ".join(s.waiting)) for s in waiting]
        written = f"""<h2 id="written">Written answers: graded by a TA</h2>
<p id="written-summary">{html.escape(
            f"{len(report.written)} written answer(s) worth {report.written_max:g} points, not included in the scores "
            f"above: autograde cannot score them, so they wait for a TA (the formgrader's Manual Grading, with the "
            f"mark scheme shown under each answer) and are never counted as lost. "
            f"{sum(len(s.waiting) for s in waiting)} answer(s) of {len(waiting)} student(s) are waiting.")}</p>
{_table(("written answer", "exercise", "points", "waiting for a TA", "marked (by a TA, or 0 for no answer)",
                 "mean points (marked)"), per_cell)}
{_table(("student", "waiting for a TA"), per_student) if per_student else '<p class="none">None waiting.</p>'}
"""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(report.assignment)}: grade report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60em; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }}
th {{ background: #eef2f7; }} .none {{ color: #2a7a2a; }}
</style></head><body>
<h1>{html.escape(report.assignment)}: grade report</h1>
<p id="summary">{html.escape(summary)}</p>
<h2>Score distribution</h2>
<img id="histogram" alt="histogram of scores" src="data:image/png;base64,{histogram_png(report)}">
<h2>Hardest test cells first</h2>
<p>Share of graded students who lost points on each test cell.</p>
{_table(("test cell", "exercise", "points", "failed", "students", "mean points"), cells)}
{written}<h2>Students to look at</h2>
{_table(("student", "why"), look) if look else '<p class="none">None: every submission was graded and none was flagged.</p>'}
</body></html>
"""


def save(report: Report, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    page, cells, students = folder / "report.html", folder / "report-cells.csv", folder / "report-students.csv"
    page.write_text(to_html(report), encoding="utf-8")
    with cells.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["cell", "exercise", "points", "graded", "failed", "failure_rate", "mean_points"])
        out.writerows(table.row([c.cell, c.exercise, f"{c.points:g}", c.graded, c.failed, f"{c.failure_rate:.3f}",
                                 f"{c.mean:.3f}"]) for c in report.cells)
    with students.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["student", "score", "max_score", "graded", "reason", "integrity_findings", "seconds",
                      "waiting_for_ta", "written_score", "written_max"])
        out.writerows(table.row([s.student, f"{s.score:g}", f"{s.max_score:g}", "yes" if s.graded else "no", s.reason,
                                 s.findings, "" if s.seconds is None else f"{s.seconds:.1f}", " ".join(s.waiting),
                                 f"{s.written:g}" if report.written else "", f"{report.written_max:g}" if report.written else ""])
                      for s in report.students)
    return [page, cells, students]
