"""What a TA finds in submitted/<student>/<assignment>/ before grading it.

nbgrader stops with a traceback on a notebook it cannot read, follows symbolic links when it copies a
submission, and grades a folder of the wrong files as if nothing were wrong. `triage` says up front
whether a submission can be graded (and if not, why, in one line for the grades) and what a TA may
want to know about one that can (a renamed kernel, an old notebook format, extra files).
"""

from __future__ import annotations

import importlib.machinery
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CourseError
from .notebooks import grade_id, read_notebook

MAX_NOTEBOOK_BYTES = 20 * 1024**2  # the course's notebooks are < 1 MB; a 20 MB one is not a submission


@dataclass
class Triage:
    problem: str = ""  # why it cannot be graded; '' if it can
    notes: list[str] = field(default_factory=list)

    @property
    def gradable(self) -> bool:
        return not self.problem


def shadowed_module(relative: str) -> str | None:
    """The importable module that a file handed in at `relative` (a path in the submission folder) is named
    like, if any: numpy.py, ipykernel_launcher.py, a package folder `torch/`, an extension `_ctypes.so`."""
    top = Path(relative).parts[0]
    name = top.split(".")[0] if Path(relative).parts[1:] == () else top
    if not name.isidentifier():
        return None
    if name in sys.builtin_module_names or name in sys.stdlib_module_names:
        return name
    path = [p for p in sys.path if p and Path(p).resolve() != Path.cwd().resolve()]
    return name if importlib.machinery.PathFinder.find_spec(name, path) is not None else None


def triage(folder: Path, notebooks: list[str], shipped: set[str] = frozenset(), kernel: str = "python3",
           grade_ids: frozenset[str] | None = None) -> Triage:
    """Triage a submission folder before grading: can it be graded (the assignment's notebooks, names without
    .ipynb, are there and readable), and what should a TA know about it.

    `shipped`: files the assignment itself provides (data), which are not "extra". `grade_ids`: the source
    notebooks' grade_ids, to name cells a student copied (graded as their own code, see sanitize.py).
    """
    found = Triage()
    links = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_symlink())
    if links:
        found.problem = f"contains symbolic links ({', '.join(links[:3])}): not graded, ask for the files themselves"
        return found
    expected = {f"{name}.ipynb" for name in notebooks}
    for name in sorted(expected):
        path = folder / name
        if not path.exists():
            others = sorted(p.name for p in folder.glob("*.ipynb") if p.name not in expected)
            hint = f" (the folder has {', '.join(others)}: renamed?)" if others else ""
            found.problem = f"{name} is missing{hint}"
            return found
        if path.stat().st_size == 0:
            found.problem = f"{name} is an empty file"
            return found
        if path.stat().st_size > MAX_NOTEBOOK_BYTES:
            found.problem = f"{name} is {path.stat().st_size / 1024**2:.0f} MB, more than a notebook can be"
            return found
        try:
            nb = read_notebook(path)
        except CourseError as exc:
            found.problem = str(exc).replace(str(folder) + "/", "")
            return found
        version = json.loads(path.read_text(encoding="utf-8")).get("nbformat")
        if version != 4:
            found.notes.append(f"{name} is in notebook format {version}; converted to 4 and graded")
        name_in_nb = nb.metadata.get("kernelspec", {}).get("name")
        if name_in_nb and name_in_nb != kernel:
            found.notes.append(f"{name} asks for kernel '{name_in_nb}'; graded with Python like every notebook")
        ids = Counter(filter(None, (grade_id(c) for c in nb.cells)))
        copied = sorted(gid for gid, n in ids.items() if n > 1)
        foreign = sorted(gid for gid in ids if grade_ids is not None and gid not in grade_ids)
        if copied:
            found.notes.append(f"{name} has copies of the cells {', '.join(copied)}: the last copy of each was graded, "
                               "the others ran as the student's own code")
        if foreign:
            found.notes.append(f"{name} has cells that are not the assignment's ({', '.join(foreign)}): they ran "
                               "as the student's own code")
    extra = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                   if p.is_file() and p.name not in expected and str(p.relative_to(folder)) not in shipped
                   and ".ipynb_checkpoints" not in p.parts)
    if extra:
        found.notes.append(f"extra files graded alongside: {', '.join(extra)}")
    shadows = [f"{path} (module {module})" for path in extra if (module := shadowed_module(path))]
    if shadows:
        found.notes.append(f"files named like importable modules: {', '.join(shadows)}; the kernel does not import "
                           "them (its folder is not on its import path)")
    return found
