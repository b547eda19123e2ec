"""The old name of nbgrader_api.py, kept only while benchmarks/bench.py imports it: delete this file when it
imports Grader and kernel_noise_silenced from `coursegrader.nbgrader_api` and uses `Course.make_scratch_course`."""

from pathlib import Path

from .course import Course
from .nbgrader_api import Grader, GradeResult, kernel_noise_silenced  # noqa: F401


def make_scratch_course(course: Course, dest: Path, aids: list[str]) -> Path:
    return course.make_scratch_course(dest, aids).root
