"""`coursegrader report ASSIGNMENT`: after autograde, one page a TA would rather look at than read.

It reads the gradebook (every student's score on every test cell) and the last autograde's
reports/<assignment>/grades.csv (who could not be graded, who was flagged, seconds per notebook), and
writes into reports/<assignment>/:

- report.html: the score distribution (a histogram), the test cells the class failed most (which
  exercises it found hardest), the students to look at, and the mean time per notebook;
- report-cells.csv and report-students.csv: the same numbers, for a spreadsheet.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

from . import table
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
class StudentRow:
    student: str
    score: float
    max_score: float
    graded: bool
    reason: str = ""
    findings: int = 0
    seconds: float | None = None


@dataclass
class Report:
    assignment: str
    max_score: float
    students: list[StudentRow] = field(default_factory=list)
    cells: list[CellStats] = field(default_factory=list)  # worst first

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
    from nbgrader.api import Gradebook, MissingEntry

    from nbgrader.coursedir import CourseDirectory

    root = root or course.root
    url = db_url or CourseDirectory(config=course.nbgrader_config(root)).db_url  # nbgrader's own default when unset
    rows = _last_autograde(root, aid)
    names = exercise_names(course, aid)
    with Gradebook(url) as gb:
        try:
            assignment = gb.find_assignment(aid)
        except MissingEntry:
            raise CourseError(f"{aid} is not in the gradebook yet: run `coursegrader autograde {aid}` first") from None
        cells = {c.name: CellStats(c.name, names.get(c.name, ""), float(c.max_score))
                 for nb in assignment.notebooks for c in nb.grade_cells}
        report = Report(aid, float(assignment.max_score))
        for sub in sorted(assignment.submissions, key=lambda s: s.student.id):
            row = rows.get(table.printable(sub.student.id), {})
            graded = row.get("graded", "yes") == "yes"
            report.students.append(StudentRow(
                sub.student.id, float(sub.score), float(sub.max_score), graded, row.get("reason", ""),
                int(row.get("integrity_findings") or 0), float(row["seconds"]) if row.get("seconds") else None))
            if not graded:
                continue
            for nb in sub.notebooks:
                for grade in nb.grades:
                    stats = cells[grade.name]
                    stats.graded += 1
                    stats.total += float(grade.score or 0)
                    stats.failed += float(grade.score or 0) < float(grade.max_score)
    report.cells = sorted(cells.values(), key=lambda c: (-c.failure_rate, c.mean / c.points if c.points else 0, c.cell))
    return report


def _last_autograde(root: Path, aid: str) -> dict[str, dict]:
    """The rows of reports/<aid>/grades.csv (and of every shard's), by student; {} before any autograde."""
    found = {}
    folder = root / "reports" / aid
    for path in [folder / "grades.csv", *sorted(folder.glob("shard-*/grades.csv"))]:
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
    summary = (f"{len(report.students)} students, {len(graded)} graded; mean score {mean:.1f} of {report.max_score:g}; "
               + (f"mean time per notebook {seconds:.1f} s" if seconds is not None else "no autograde times found"))
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
<h2>Students to look at</h2>
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
        out.writerow(["student", "score", "max_score", "graded", "reason", "integrity_findings", "seconds"])
        out.writerows(table.row([s.student, f"{s.score:g}", f"{s.max_score:g}", "yes" if s.graded else "no", s.reason,
                                 s.findings, "" if s.seconds is None else f"{s.seconds:.1f}"]) for s in report.students)
    return [page, cells, students]
