"""`coursegrader report`: the page a TA reads after autograde, checked against the rows autograde wrote."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from conftest import needs_sandbox
from test_parallel import class_course

from coursegrader import autograde
from coursegrader.course import Course


@needs_sandbox  # the class has a tamperer and a crash
def test_report_shows_distribution_hardest_cells_and_students_to_look_at(tmp_path):
    root = class_course(tmp_path / "course")
    outcome = autograde.run(Course.load(root), "toy", jobs=2)
    autograde.save_reports(outcome.results, root / "reports" / "toy")
    done = subprocess.run([sys.executable, "-m", "coursegrader", "report", "toy"], cwd=root, capture_output=True,
                          text=True, env={"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout + done.stderr
    folder = root / "reports" / "toy"
    page = (folder / "report.html").read_text()
    assert '<img id="histogram"' in page and "data:image/png;base64," in page, "the score histogram is missing"
    graded = [r for r in outcome.results if r.ok]
    with (folder / "report-cells.csv").open() as f:
        cells = list(csv.DictReader(f))
    expected = {gid: sum(r.cells[gid][0] < r.cells[gid][1] for r in graded) for gid in graded[0].cells}
    assert {c["cell"]: int(c["failed"]) for c in cells} == expected, "failure counts differ from autograde's rows"
    rates = [float(c["failure_rate"]) for c in cells]
    assert rates == sorted(rates, reverse=True), "the hardest test cell must come first"
    look = page[page.index("Students to look at"):]
    assert "broken" in look and "not graded" in look, "a submission that could not be graded must be listed"
    assert "crash" in look and "stopped the kernel" in look, "a flagged submission must be listed"
    assert "tamper" not in look, "a tamperer who gained nothing and broke nothing is not one to look at"
    assert "reference" not in look, "a clean, graded submission is not one to look at"
    mean = sum(r.seconds for r in graded) / len(graded)
    assert f"mean time per notebook {mean:.1f} s" in page
    with (folder / "report-students.csv").open() as f:
        students = {row["student"]: row for row in csv.DictReader(f)}
    assert students["reference"]["score"] == "3" and students["broken"]["graded"] == "no"
