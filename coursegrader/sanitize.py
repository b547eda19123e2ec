"""A submitted notebook's stray nbgrader cells, made the student's own before nbgrader reads them.

A student who copies and pastes a cell hands in two cells with the same grade_id; one who pastes a cell from
another notebook hands in a grade_id the assignment does not have. nbgrader's DeduplicateIds empties the
nbgrader metadata of all but the last copy, and OverwriteCells drops the grade_id of an unknown cell, but
both leave the `nbgrader` entry behind, and nbgrader 0.9.6's add_missing_task_cells then stops on it with
KeyError: 'grade_id', so the student was not graded at all. `ForgetStrayCells` runs between the two (see
nbgrader_config.py) and removes such entries: the cell stays in the notebook and runs as the student's own
code, and the grade comes from the cell that keeps the grade_id, as nbgrader intends.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from nbgrader.preprocessors import NbGraderPreprocessor

from .notebooks import grade_id, read_notebook, source_of


@lru_cache(maxsize=32)
def source_grade_ids(path: str, mtime_ns: int) -> frozenset[str]:
    """The grade_ids of the source notebook at `path` (cached per modification time)."""
    return frozenset(filter(None, (grade_id(c) for c in read_notebook(Path(path)).cells)))


class ForgetStrayCells(NbGraderPreprocessor):
    """Remove the nbgrader metadata of cells without a grade_id, or with one the source notebook does not have."""

    def preprocess(self, nb, resources):
        source = source_of(self.config, resources)
        known = source_grade_ids(str(source), source.stat().st_mtime_ns) if source.is_file() else None
        for cell in nb.cells:
            if "nbgrader" not in cell.metadata:
                continue
            gid = grade_id(cell)
            if not gid or (known is not None and gid not in known):
                self.log.warning("Cell %s is not one of the assignment's: graded as the student's own code",
                                 gid or "(copied, without a grade id)")
                del cell.metadata["nbgrader"]
        return nb, resources
