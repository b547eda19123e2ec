"""`coursegrader report`: the page a TA reads after autograde, checked against the rows autograde wrote."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

from conftest import TRUSTED, needs_sandbox
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


def formgrader_page(course: Course, root: Path, student: str) -> str:
    """The page the formgrader shows a TA who grades `student`'s toy notebook: the autograded notebook rendered with
    the course's configuration and the formgrader's own exporter settings (nbgrader's FormgradeExtension)."""
    from nbconvert.exporters import HTMLExporter
    from nbgrader.server_extensions.formgrader import handlers

    config = course.nbgrader_config(root)
    config.HTMLExporter.template_name = "formgrade"
    config.HTMLExporter.extra_template_basedirs = [handlers.template_path]
    resources = {"assignment_id": "toy", "notebook_id": "toy", "submission_id": "s", "index": 0, "total": 1,
                 "base_url": "", "student": student, "last_name": None, "first_name": None,
                 "notebook_path": f"autograded/{student}/toy/toy.ipynb"}
    page, _ = HTMLExporter(config=config).from_filename(str(root / "autograded" / student / "toy" / "toy.ipynb"),
                                                        resources=resources)
    return page


def test_written_answers_wait_for_a_ta_who_alone_sees_their_mark_scheme(tmp_path):
    """A written answer (a manually graded cell) with its mark scheme in the locked cell after it: (a) the release has
    neither the model answer nor the mark scheme; (b) autograde restores the mark scheme, and the formgrader shows it
    under the student's answer; (c) the students' feedback does not show it (nbgrader's alone would). The scores
    count autograded points: the reference's written answer waits for a TA (not lost), the blank's scores 0, and
    check's verdict, the demo's table and the grade report say so."""
    from toycourse import MODEL_ANSWER, RUBRIC, make_toy_course

    from coursegrader import demo, sampleclass
    from coursegrader.feedback import feedback_leaks
    from coursegrader.nbgrader_api import Grader
    from coursegrader.notebooks import read_notebook

    root = make_toy_course(tmp_path / "course", with_written=True)
    course = Course.load(root)
    release = (root / "release" / "toy" / "toy.ipynb").read_text()
    assert "YOUR ANSWER HERE" in release and "Graded by a teaching assistant" in release
    assert RUBRIC not in release and "MARK SCHEME" not in release and MODEL_ANSWER not in release, "(a) the release leaks"

    grader = Grader(course, root, **TRUSTED)
    results = sampleclass.grade(course, grader, sampleclass.plan(course, "toy")[:2])
    (_, reference), (_, blank) = results
    assert (reference.score, reference.max_score, reference.lost) == (3, 3, set()), reference
    assert reference.waiting == ["written_double"] and reference.manual == {"written_double": (None, 2.0)}
    assert (blank.score, blank.max_score, blank.waiting, blank.manual) == (0, 3, [], {"written_double": (0.0, 2.0)})
    verdict = sampleclass.judge(course, grader, "toy", results)
    assert (verdict.points, verdict.written, verdict.reference, verdict.blank, verdict.problems) == (3, 2, 3, 0, [])

    for student in ("reference", "blank"):  # (b)
        autograded = (root / "autograded" / student / "toy" / "toy.ipynb").read_text()
        assert RUBRIC in autograded, f"(b) autograde did not restore the mark scheme for {student}"
        page = formgrader_page(course, root, student)
        assert RUBRIC in page, f"(b) the formgrader does not show the mark scheme to the TA grading {student}"
    page = formgrader_page(course, root, "reference")
    assert page.index('id="written_double"') < page.index(MODEL_ANSWER) < page.index(RUBRIC), \
        "the formgrader shows the answer with its score box, then the mark scheme"

    grader.generate_feedback("toy")
    source = read_notebook(course.source_notebook("toy"))
    for student in ("reference", "blank"):  # (c)
        page = (root / "feedback" / student / "toy" / "toy.html").read_text()
        assert RUBRIC not in page and "MARK SCHEME" not in page, f"(c) {student}'s feedback shows the mark scheme"
        assert "Graded by a teaching assistant" in page
    config = root / "nbgrader_config.py"  # the negative control: nbgrader's feedback keeps the mark scheme
    config.write_text(config.read_text().replace('    "coursegrader.feedback.HideMarkSchemes",\n', ""))
    Grader(course, root, **TRUSTED).generate_feedback("toy")
    page = (root / "feedback" / "reference" / "toy" / "toy.html").read_text()
    submitted = read_notebook(root / "submitted" / "reference" / "toy" / "toy.ipynb")
    leaks = feedback_leaks(source, page, submitted)
    assert RUBRIC in page and RUBRIC in leaks and "BEGIN MARK SCHEME" in leaks, f"check would not see the leak: {leaks}"

    demo.save_report(course, root, "toy", [res for _, res in results])  # what `demo` writes, as `report` does
    text = demo.format_report(results, root / "grades.csv", course.at(root))
    assert "reference  3/3 +2 TA" in text and "blank      0/3\n" in text, text
    assert re.search(r"toy +written_double +2 +1 student\(s\) +reference\n", text), text
    folder = root / "reports" / "toy"
    page = (folder / "report.html").read_text()
    written = page[page.index('id="written"'):page.index("Students to look at")]
    assert "<td>written_double</td><td>Exercise 3 (2 points)</td><td>2</td><td>1</td>" in written
    assert "<tr><td>reference</td><td>written_double</td></tr>" in written, "the report must say who waits for a TA"
    assert "mean score 1.5 of 3 autograded points" in page
    with (folder / "report-students.csv").open() as f:
        students = {row["student"]: row for row in csv.DictReader(f)}
    assert (students["reference"]["score"], students["reference"]["max_score"]) == ("3", "3"), "a waiting answer is not lost"
    assert students["reference"]["waiting_for_ta"] == "written_double" and students["blank"]["waiting_for_ta"] == ""
    with (folder / "report-cells.csv").open() as f:
        assert {row["cell"] for row in csv.DictReader(f)} == {"test_double", "test_answer_quiz"}, \
            "a written answer is not a failed test cell"
    with (folder / "grades.csv").open() as f:
        rows = {row["student"]: row for row in csv.DictReader(f)}
    assert rows["reference"]["waiting_for_ta"] == "written_double" and rows["reference"]["written_points"] == "2"


def test_feedback_drops_mark_schemes_even_when_a_student_types_a_marker():
    """nbgrader's ClearMarkScheme raises on a marker without its partner, which would cost that student their
    feedback; HideMarkSchemes removes every region, an unclosed one to the end of its cell, and never raises."""
    import nbformat
    import pytest
    from nbgrader.preprocessors import ClearMarkScheme

    from coursegrader.feedback import HideMarkSchemes

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("Seen.\n### BEGIN MARK SCHEME\nsecret rubric\n### END MARK SCHEME\nSeen too."),
        nbformat.v4.new_markdown_cell("My answer.\n### BEGIN MARK SCHEME\nnever closed"),
    ])
    with pytest.raises(RuntimeError):
        ClearMarkScheme(enforce_metadata=False).preprocess(nbformat.from_dict(nb), {})
    cleaned, _ = HideMarkSchemes().preprocess(nb, {})
    assert [c.source for c in cleaned.cells] == ["Seen.\nSeen too.", "My answer."]
