"""Where things are: the course root, its assignments, and nbgrader's configuration for a course root.

`Course` owns every path of a course, as nbgrader's CourseDirectory does: no other module spells a course
folder name (tests/test_layout.py holds them to that). The names of nbgrader's folders (source/, release/,
submitted/, autograded/, feedback/) and how a student's and an assignment's folders nest under them are
nbgrader's own CourseDirectory traits, as nbgrader_config.py sets them, so one configuration decides them for
nbgrader and for coursegrader. The folders that are coursegrader's alone (reports/, the catalogue) are here.
"""

from __future__ import annotations

import shutil
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader

from .errors import CourseError

CONFIG_FILE = "nbgrader_config.py"
COURSE_FILE = "course.toml"
REPORTS = "reports"  # coursegrader's: reports/<assignment>/ (grades.csv, report.html), one folder per shard
CATALOGUE = ("tests", "wrong_answers")  # the wrong-answer catalogue, tests/wrong_answers/<assignment>.toml
DEMO = "demo"  # where `coursegrader demo` builds its sample course by default
SCRATCH_IGNORE = (".ipynb_checkpoints", "__pycache__")


@dataclass(frozen=True)
class Folders:
    """nbgrader's folder names and layout (CourseDirectory traits), as the course's configuration sets them."""

    source: str
    release: str
    submitted: str
    autograded: str
    feedback: str
    structure: str  # CourseDirectory.directory_structure: "{nbgrader_step}/{student_id}/{assignment_id}"

    @classmethod
    def of(cls, config: Config) -> Folders:
        from nbgrader.coursedir import CourseDirectory  # imported here: importing nbgrader takes about 2 s

        d = CourseDirectory(config=config)
        return cls(d.source_directory, d.release_directory, d.submitted_directory, d.autograded_directory,
                   d.feedback_directory, d.directory_structure)


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

    def at(self, root: Path) -> Course:
        """The same course (its assignments, its folder names) laid out at another root: a scratch copy, the hub's."""
        copy = replace(self, root=Path(root).resolve())
        copy.__dict__["folders"] = self.folders  # the copy's configuration is this one's, and may not be there yet
        return copy

    # --- paths -----------------------------------------------------------------------------------
    @cached_property
    def folders(self) -> Folders:
        return Folders.of(self.nbgrader_config())

    def _path(self, step: str, student: str, aid: str) -> Path:
        """As nbgrader's CourseDirectory.format_path: root/<step>/<student>/<assignment> by default."""
        relative = self.folders.structure.format(nbgrader_step=step, student_id=student, assignment_id=aid)
        return Path(self.root, relative)

    def source_dir(self, aid: str) -> Path:
        return self._path(self.folders.source, ".", aid)

    def release_dir(self, aid: str) -> Path:
        return self._path(self.folders.release, ".", aid)

    def submitted_dir(self, student: str, aid: str) -> Path:
        return self._path(self.folders.submitted, student, aid)

    def autograded_dir(self, student: str, aid: str) -> Path:
        return self._path(self.folders.autograded, student, aid)

    def feedback_dir(self, student: str, aid: str) -> Path:
        return self._path(self.folders.feedback, student, aid)

    def source_notebook(self, aid: str) -> Path:
        return self.source_dir(aid) / f"{aid}.ipynb"

    def release_notebook(self, aid: str) -> Path:
        return self.release_dir(aid) / f"{aid}.ipynb"

    def submitted_notebook(self, student: str, aid: str) -> Path:
        return self.submitted_dir(student, aid) / f"{aid}.ipynb"

    def submitters(self, aid: str) -> list[str]:
        """Students with a folder submitted/<student>/<aid>/, sorted."""
        pattern = self.submitted_dir("*", aid).relative_to(self.root)
        return sorted(p.relative_to(self.root).parts[pattern.parts.index("*")]
                      for p in self.root.glob(str(pattern)) if p.is_dir())

    def feedback_pages(self, aid: str) -> list[tuple[str, Path]]:
        """(student, page) for every HTML page of feedback on `aid`, by student."""
        pattern = self.feedback_dir("*", aid).relative_to(self.root)
        pages = self.root.glob(str(pattern / "*.html"))
        return sorted((p.relative_to(self.root).parts[pattern.parts.index("*")], p) for p in pages)

    @property
    def source_root(self) -> Path:
        return self.root / self.folders.source

    @property
    def release_root(self) -> Path:
        return self.root / self.folders.release

    @property
    def reports_root(self) -> Path:
        return self.root / REPORTS

    def reports_dir(self, aid: str, shard: tuple[int, int] | None = None) -> Path:
        """reports/<aid>/, or reports/<aid>/shard-<i>-of-<n>/ for one machine's share (index, count)."""
        folder = self.reports_root / aid
        return folder / f"shard-{shard[0]}-of-{shard[1]}" if shard else folder

    def shard_reports_dirs(self, aid: str) -> list[Path]:
        """The reports/<aid>/shard-*/ folders that exist, sorted."""
        return sorted(p for p in self.reports_dir(aid).glob("shard-*") if p.is_dir())

    def catalogue_file(self, aid: str) -> Path:
        return self.root.joinpath(*CATALOGUE, f"{aid}.toml")

    @property
    def demo_root(self) -> Path:
        return self.root / DEMO

    @property
    def source_url(self) -> str:
        """The URL path JupyterLab opens the source folder at (the lecturer's lab, the hub's instructor)."""
        return f"/lab/tree/{self.folders.source}"

    # --- copies ----------------------------------------------------------------------------------
    def make_scratch_course(self, dest: Path, aids: list[str]) -> Course:
        """A fresh course root at `dest` with the course's config and the given assignments' sources."""
        if dest.exists():
            shutil.rmtree(dest)
        scratch = self.at(dest)
        scratch.source_root.mkdir(parents=True)
        shutil.copy2(self.root / CONFIG_FILE, scratch.root / CONFIG_FILE)
        for aid in aids:
            shutil.copytree(self.source_dir(aid), scratch.source_dir(aid), ignore=shutil.ignore_patterns(*SCRATCH_IGNORE))
        return scratch

    def install(self, dest: Path, aids: list[str]) -> Course:
        """A copy of the course for someone to work in (the hub's instructor): source/, release/ and the
        configuration. Unlike a scratch course, it keeps course.toml."""
        copy = self.at(dest)
        ignore = shutil.ignore_patterns(*SCRATCH_IGNORE)
        for aid in aids:
            shutil.copytree(self.source_dir(aid), copy.source_dir(aid), ignore=ignore)
            shutil.copytree(self.release_dir(aid), copy.release_dir(aid), ignore=ignore)
        for name in (CONFIG_FILE, COURSE_FILE):
            shutil.copy(self.root / name, copy.root / name)
        return copy

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
