"""What a TA should know about a graded notebook, beside its grades: its integrity findings.

The preprocessors that guard execution record findings in the notebook's resources while it runs
(`record`); `SaveFindings`, after them in the autograde list, writes them next to the autograded notebook
as `<notebook>.integrity.json`, where `read_findings` finds them for the reports. Kinds: "failure" (the
code stopped the kernel, ran out of time or was not run) and "note" (graded as usual, but a TA may want
to know: outputs that were not kept). The file stays with the TA: nbgrader_config.py keeps it out of the
students' feedback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from nbformat import NotebookNode
from nbgrader.preprocessors import NbGraderPreprocessor

SUFFIX = ".integrity.json"


def state(resources: dict) -> dict:
    """The guards' shared place in a notebook's resources: the findings and the guards in effect."""
    return resources.setdefault("coursegrader", {"findings": []})


def record(resources: dict, cell: NotebookNode, index: int, what: str, kind: str = "failure") -> None:
    """kind: 'failure' (the code broke the kernel or ran out of time) or 'note' (for the TA to know)."""
    gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", "")
    state(resources)["findings"].append({"cell": gid or f"cell {index + 1}", "index": index, "kind": kind,
                                         "finding": what})


class SaveFindings(NbGraderPreprocessor):
    """Write the notebook's findings to `<notebook>.integrity.json` beside it: always (an empty list too),
    replacing, never writing through, whatever is there."""

    def preprocess(self, nb: NotebookNode, resources: dict) -> tuple[NotebookNode, dict]:
        folder = resources.get("metadata", {}).get("path")
        name = resources.get("unique_key") or resources.get("metadata", {}).get("name")
        if folder and name:
            path = Path(folder) / f"{Path(name).name}{SUFFIX}"
            if path.is_symlink() or path.exists():
                path.unlink()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(state(resources)["findings"], f, indent=1)
        return nb, resources


def read_findings(notebook: Path) -> list[dict]:
    """The findings saved for an autograded notebook ([] if none or not graded)."""
    path = notebook.with_name(notebook.stem + SUFFIX)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
