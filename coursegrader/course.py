"""Where things are: the course root, its assignments, and nbgrader's configuration for a course root."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader

from .errors import CourseError

CONFIG_FILE = "nbgrader_config.py"
COURSE_FILE = "course.toml"


@dataclass(frozen=True)
class Assignment:
    id: str
    title: str
    budget_seconds: float


@dataclass(frozen=True)
class Course:
    """The instructor repository: `source/`, `release/`, `course.toml`, `nbgrader_config.py`."""

    root: Path
    declared: dict[str, Assignment]

    @classmethod
    def find(cls, start: Path | None = None) -> Course:
        """The course whose root holds `course.toml`, searching upwards from `start` (default: cwd)."""
        here = (start or Path.cwd()).resolve()
        for folder in (here, *here.parents):
            if (folder / COURSE_FILE).is_file() and (folder / CONFIG_FILE).is_file():
                return cls.load(folder)
        raise CourseError(f"not inside a course: no {COURSE_FILE} and {CONFIG_FILE} in {here} or above")

    @classmethod
    def load(cls, root: Path) -> Course:
        try:
            data = tomllib.loads((root / COURSE_FILE).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise CourseError(f"{root / COURSE_FILE}: cannot read it ({exc})") from None
        declared = {
            aid: Assignment(aid, str(spec.get("title", aid)), float(spec.get("budget_seconds", 60)))
            for aid, spec in data.get("assignments", {}).items()
        }
        return cls(root.resolve(), declared)

    # --- paths -----------------------------------------------------------------------------------
    def source_notebook(self, aid: str) -> Path:
        return self.root / "source" / aid / f"{aid}.ipynb"

    def release_notebook(self, aid: str) -> Path:
        return self.root / "release" / aid / f"{aid}.ipynb"

    def catalogue_file(self, aid: str) -> Path:
        return self.root / "tests" / "wrong_answers" / f"{aid}.toml"

    # --- assignments -----------------------------------------------------------------------------
    def live(self) -> list[str]:
        """Assignments that have a source notebook, in the order of course.toml."""
        return [aid for aid in self.declared if self.source_notebook(aid).is_file()]

    def resolve(self, names: Sequence[str]) -> list[str]:
        """Validate assignment names from the command line; none means every live assignment."""
        live = self.live()
        if not names:
            if not live:
                raise CourseError("no assignments yet: no source/<id>/<id>.ipynb for any id in course.toml")
            return live
        for name in names:
            if name not in self.declared:
                raise CourseError(f"unknown assignment '{name}' (known: {', '.join(self.declared)})")
            if name not in live:
                raise CourseError(f"assignment '{name}' has no notebook yet: {self.source_notebook(name)} is missing")
        return list(dict.fromkeys(names))

    # --- nbgrader --------------------------------------------------------------------------------
    def nbgrader_config(self, root: Path | None = None) -> Config:
        """nbgrader's configuration from nbgrader_config.py, pointed at `root` (default: the course)."""
        try:
            config = PyFileConfigLoader(CONFIG_FILE, path=str(self.root)).load_config()
        except Exception as exc:  # a broken config file is the user's to fix: say where
            raise CourseError(f"{self.root / CONFIG_FILE}: cannot load it ({exc})") from None
        config.CourseDirectory.root = str(root or self.root)
        return config


def budget_seconds(root: str | Path, aid: str) -> float | None:
    """The time budget course.toml gives `aid` in the course at `root`, or None (no course.toml, or no entry)."""
    try:
        assignment = Course.load(Path(root)).declared.get(aid)
    except CourseError:
        return None
    return assignment.budget_seconds if assignment else None
