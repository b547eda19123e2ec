"""Grading refuses to start unless it is safe: the one check every grading path makes first.

Student notebooks are untrusted code. Whichever way a TA grades (`coursegrader autograde`, `check`, `demo`,
plain `nbgrader autograde`, or the formgrader's Autograde button), nbgrader's Autograde runs them, and this
course's nbgrader_config.py sets two things for it:

- `GuardedExecute` (execution.py) in place of nbgrader's Execute: every kernel in a sandbox, restarts,
  time limits and output caps;
- `GuardedExporter` (below) as the exporter Autograde writes with: nbgrader creates it once at the start of
  a run, before any notebook is touched, so a refusal here grades nobody and says why in one line.

Grading may start when GuardedExecute is in the autograde preprocessors and either bubblewrap works here
or the sandbox was explicitly waived (`GuardedExecute.sandbox = False`, coursegrader's `--no-sandbox`).
"""

from __future__ import annotations

from functools import lru_cache

from nbconvert.exporters import NotebookExporter
from nbgrader.converters import Autograde
from nbgrader.converters.base import NbGraderException
from traitlets.config import Config
from traitlets.utils.importstring import import_item

from .sandbox import unavailable_reason

OPT_OUT = ("to accept the risk for trusted notebooks only, grade with `coursegrader ... --no-sandbox` "
           "(nbgrader: --GuardedExecute.sandbox=False)")


@lru_cache(maxsize=1)
def sandbox_problem() -> str:
    """Why no sandbox can be had here ('' if it can), found once per process (it starts bwrap once)."""
    return unavailable_reason()


def _guarded_class(preprocessors: list) -> type | None:
    """The GuardedExecute (or subclass) among Autograde's preprocessors, given as classes or import strings."""
    from .execution import GuardedExecute

    for preprocessor in preprocessors:
        try:
            cls = import_item(preprocessor) if isinstance(preprocessor, str) else preprocessor
        except ImportError:
            continue
        if isinstance(cls, type) and issubclass(cls, GuardedExecute):
            return cls
    return None


def refusal(config: Config, preprocessors: list | None = None) -> str:
    """Why grading with `config` must not start ('' if it may). `preprocessors`: Autograde's list (default: as
    `config` sets it)."""
    if preprocessors is None:
        preprocessors = Autograde(config=config).autograde_preprocessors
    guarded = _guarded_class(preprocessors)
    if guarded is None:
        return ("refusing to grade: nbgrader's autograde preprocessors do not include "
                "coursegrader.execution.GuardedExecute (see the course's nbgrader_config.py), so student code "
                "would run unguarded and unsandboxed")
    if not guarded(config=config).sandbox:  # the explicit opt-out
        return ""
    problem = sandbox_problem()
    if problem:
        return (f"refusing to grade: {problem}; without a sandbox, student code would run with your permissions. "
                f"Install bubblewrap, or, {OPT_OUT}")
    return ""


def as_nbgrader_ships(config: Config) -> None:
    """Undo the course's set-up in `config`: nbgrader's own Execute, sanitizers and exporter, unguarded and
    unsandboxed. Only for the benchmark's baseline and the tests that compare with plain nbgrader."""
    traits = Autograde.class_traits()
    for name in ("autograde_preprocessors", "sanitize_preprocessors"):
        setattr(config.Autograde, name, traits[name].make_dynamic_default())
    config.Autograde.exporter_class = NotebookExporter


class GuardedExporter(NotebookExporter):
    """nbgrader's notebook exporter, which Autograde creates once before grading anyone: it refuses to be
    created, and so stops the run, when grading would not be safe (see `refusal`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if isinstance(self.parent, Autograde):
            problem = refusal(self.config, self.parent.autograde_preprocessors)
            if problem:
                self.log.error(problem)
                raise NbGraderException(problem)
