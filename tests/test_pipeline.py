"""Every assignment under real `nbgrader autograde`: `coursegrader check`, asserted item by item.

The sample class is graded once per session (tens of seconds per assignment); each test reads its part.
"""

from __future__ import annotations

import pytest

from coursegrader import check
from conftest import REPO, TRUSTED
from coursegrader.course import Course

pytestmark = pytest.mark.pipeline
LIVE = Course.load(REPO).live()


@pytest.fixture(scope="session")
def reports(course, pytestconfig) -> dict[str, check.AssignmentReport]:
    result = check.run(course, course.live(), **TRUSTED)
    with pytestconfig.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print("\n" + check.format_report(result))  # the numbers belong in the CI log
    return {r.verdict.assignment: r for r in result}


@pytest.fixture(params=LIVE)
def report(request, reports) -> check.AssignmentReport:
    return reports[request.param]


def test_reference_gets_full_marks(report):
    v = report.verdict
    assert v.points > 0 and v.reference == v.points, f"{v.assignment}: reference {v.reference}/{v.points}; {v.problems}"


def test_blank_release_gets_zero(report):
    assert report.verdict.blank == 0, f"{report.verdict.assignment}: {report.verdict.problems}"


def test_every_wrong_answer_is_caught_where_catalogued(report):
    v = report.verdict
    assert len(v.caught) == report.wrong_total, f"{v.assignment}: " + "; ".join(p for p in v.problems if "wrong" in p)


def test_release_is_in_sync_and_leaks_nothing(report):
    release_problems = [p for p in report.verdict.problems if p.startswith("release/")]
    assert not release_problems, "; ".join(release_problems) + " (run `make release`)"


def test_solution_runs_within_budget(report):
    v = report.verdict
    assert v.seconds is not None and v.seconds <= report.budget, f"{v.assignment}: {v.seconds} s > {report.budget} s"


def test_no_other_problem(report):
    assert report.ok, report.verdict.problems
