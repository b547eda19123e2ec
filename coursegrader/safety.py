"""Grading refuses to start unless it is safe: the one check every grading path makes first.

Student notebooks are untrusted code. Whichever way a TA grades (`coursegrader autograde`, `check`, `demo`,
plain `nbgrader autograde`, or the formgrader's Autograde button), nbgrader's Autograde runs them, and this
course's nbgrader_config.py sets two things for it:

- in place of nbgrader's Execute, four preprocessors (`GUARDS`): `NotebookTimeLimit` (the notebook's time
  limit and restarts), `CapOutputs` (output caps), `GuardedExecute` (execution.py: the tests in a kernel of
  their own, every kernel in a sandbox) and `SaveFindings` (what the TA should know);
- `GuardedExporter` (below) as the exporter Autograde writes with: nbgrader creates it once at the start of
  a run, before any notebook is touched, so a refusal here grades nobody and says why in one line.

Grading may start when the autograde preprocessors hold the four guards, enabled and in that order, and
nothing else that executes a notebook, and either bubblewrap works here or the sandbox was explicitly waived
(`GuardedExecute.sandbox = False`, coursegrader's `--no-sandbox`).
"""

from __future__ import annotations

from functools import lru_cache

from nbclient import NotebookClient
from nbconvert.exporters import NotebookExporter
from nbconvert.preprocessors import ExecutePreprocessor
from nbgrader.converters import Autograde
from nbgrader.converters.base import NbGraderException
from nbgrader.preprocessors import Execute
from traitlets.config import Config
from traitlets.utils.importstring import import_item

from .sandbox import unavailable_reason

OPT_OUT = ("to accept the risk for trusted notebooks only, grade with `coursegrader ... --no-sandbox` "
           "(nbgrader: --GuardedExecute.sandbox=False)")


@lru_cache(maxsize=1)
def sandbox_problem() -> str:
    """Why no sandbox can be had here ('' if it can), found once per process (it starts bwrap once)."""
    return unavailable_reason()


GUARDS = ("coursegrader.timelimit.NotebookTimeLimit", "coursegrader.outputcaps.CapOutputs",
          "coursegrader.execution.GuardedExecute", "coursegrader.integrity.SaveFindings")


def autograde_preprocessors() -> list:
    """nbgrader's own autograde preprocessors, with its Execute replaced by GUARDS (nbgrader_config.py sets this).
    An nbgrader whose list has no Execute is refused here, at configuration time, rather than graded unguarded."""
    default = Autograde.class_traits()["autograde_preprocessors"].make_dynamic_default()
    if Execute not in default:
        raise RuntimeError("nbgrader's autograde preprocessors no longer hold its Execute: coursegrader cannot put "
                           "its guards in their place (see coursegrader/safety.py)")
    i = default.index(Execute)
    return [*default[:i], *GUARDS, *default[i + 1:]]


def _classes(preprocessors: list) -> list:
    found = []
    for preprocessor in preprocessors:
        try:
            found.append(import_item(preprocessor) if isinstance(preprocessor, str) else preprocessor)
        except ImportError:
            found.append(None)
    return found


def guard_problem(config: Config, preprocessors: list) -> str:
    """What is wrong with Autograde's preprocessors (classes or import strings) for grading student code, or ''."""
    classes = _classes(preprocessors)
    at = []
    for name in GUARDS:
        guard = import_item(name)
        where = [i for i, cls in enumerate(classes) if isinstance(cls, type) and issubclass(cls, guard)]
        if len(where) != 1:
            return f"{name} is {'missing from' if not where else 'more than once in'} them"
        if not classes[where[0]](config=config).enabled:
            return f"{name} is disabled in the configuration"
        at.append(where[0])
    if at != sorted(at):
        return f"they hold {', '.join(GUARDS)}, but not in that order"
    guarded = import_item(GUARDS[2])
    for cls in classes:
        if isinstance(cls, type) and issubclass(cls, (NotebookClient, ExecutePreprocessor)) and not issubclass(cls, guarded):
            return f"{cls.__module__}.{cls.__name__} would run student code unguarded"
    return ""


def refusal(config: Config, preprocessors: list | None = None) -> str:
    """Why grading with `config` must not start ('' if it may). `preprocessors`: Autograde's list (default: as
    `config` sets it)."""
    if preprocessors is None:
        preprocessors = Autograde(config=config).autograde_preprocessors
    problem = guard_problem(config, preprocessors)
    if problem:
        return (f"refusing to grade: nbgrader's autograde preprocessors are not guarded ({problem}; see the course's "
                "nbgrader_config.py), so student code would run unguarded and unsandboxed")
    if not import_item(GUARDS[2])(config=config).sandbox:  # the explicit opt-out
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
