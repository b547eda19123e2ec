"""Publishing release/ from source/, and proving it leaks nothing and is up to date."""

from __future__ import annotations

import filecmp
import tempfile
from pathlib import Path

from nbformat import NotebookNode

from .course import Course
from .nbgrader_api import Grader
from .notebooks import MARKERS, read_notebook, split_regions

# A secret line shorter than this (once stripped) is too generic to call a leak: `return x`, `else:`.
MIN_SECRET_CHARS = 12


def secret_lines(source_nb: NotebookNode) -> set[str]:
    """Stripped lines of solutions and hidden tests that appear nowhere else in the source notebook."""
    secret, public = set(), set()
    for cell in source_nb.cells:
        inside, outside = split_regions(cell.source)
        secret |= {line.strip() for line in inside}
        public |= {line.strip() for line in outside}
    return {line for line in secret - public if len(line) >= MIN_SECRET_CHARS}


def find_leaks(source_nb: NotebookNode, release_nb: NotebookNode) -> list[str]:
    """Everything in the release that a student must not see: markers, solution or hidden-test lines, outputs."""
    secrets = secret_lines(source_nb)
    leaks = []
    for index, cell in enumerate(release_nb.cells):
        where = f"cell {index}"
        for line in cell.source.splitlines():
            stripped = line.strip()
            if any(marker in line for marker in MARKERS):
                leaks.append(f"{where}: nbgrader marker '{stripped}'")
            elif stripped in secrets:
                leaks.append(f"{where}: solution or hidden-test line '{stripped}'")
        if cell.cell_type == "code" and cell.get("outputs"):
            leaks.append(f"{where}: saved outputs")
    return leaks


def publish(course: Course, aids: list[str]) -> dict[str, list[str]]:
    """Regenerate release/<aid> for each assignment; return the leaks found in each (empty: clean)."""
    grader = Grader(course, course.root)
    leaks = {}
    for aid in aids:
        grader.generate(aid)
        leaks[aid] = find_leaks(read_notebook(course.source_notebook(aid)), read_notebook(course.release_notebook(aid)))
    return leaks


def out_of_sync(course: Course, aids: list[str]) -> dict[str, list[str]]:
    """For each assignment, the files of release/<aid> that differ from a fresh generation (empty: in sync)."""
    report = {}
    with tempfile.TemporaryDirectory(prefix="release-sync-") as tmp:
        scratch = course.make_scratch_course(Path(tmp) / "course", aids)
        grader = Grader(course, scratch.root)
        for aid in aids:
            grader.generate(aid)
            report[aid] = differences(scratch.release_dir(aid), course.release_dir(aid))
    return report


def differences(fresh: Path, committed: Path) -> list[str]:
    """Files of the committed release folder that differ from a freshly generated one."""
    if not committed.is_dir():
        return ["release folder missing"]
    diffs = []
    compare = filecmp.dircmp(fresh, committed, ignore=[".ipynb_checkpoints", "__pycache__"])

    def walk(cmp: filecmp.dircmp, prefix: str) -> None:
        diffs.extend(f"{prefix}{name}: missing from release/" for name in cmp.left_only)
        diffs.extend(f"{prefix}{name}: not generated from source/" for name in cmp.right_only)
        for name in cmp.common_files:
            if (Path(cmp.left) / name).read_bytes() != (Path(cmp.right) / name).read_bytes():
                diffs.append(f"{prefix}{name}: differs from a fresh generation")
        for name, sub in cmp.subdirs.items():
            walk(sub, f"{prefix}{name}/")

    walk(compare, "")
    return diffs
