"""A time limit for the whole notebook, and another run when a cell stops the kernel.

nbgrader's Execute gives each cell `Execute.timeout` seconds, and gives up on the whole submission when a
cell kills the kernel or hangs it (`os._exit`, a segfault, a loop that ignores interrupts). `NotebookTimeLimit`
registers itself in the notebook's resources before GuardedExecute runs it (execution.py), which asks it:

- before each cell, how long the cell may run: at most what is left of the notebook's time, which is
  `budget_factor` times the assignment's budget in course.toml (or `notebook_timeout` seconds). Past it, the
  remaining cells are marked not run;
- when a cell stopped the kernel, what the cell gets instead of its outputs (an error saying what happened)
  and whether the notebook runs again from the top, in fresh kernels, without that cell (at most
  `max_restarts` times), so that every other cell is graded on its merits.
"""

from __future__ import annotations

import math
import time

from nbclient.exceptions import CellTimeoutError
from nbformat import NotebookNode
from nbgrader.coursedir import CourseDirectory
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Float, Integer

from . import integrity
from .course import budget_seconds
from .notebooks import is_test


class KernelStopped(Exception):
    """The kernel died or stopped answering while a cell ran."""


def error_output(ename: str, evalue: str) -> NotebookNode:
    return NotebookNode(output_type="error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


class NotebookTimeLimit(NbGraderPreprocessor):
    """The notebook's time limit and its restarts (GuardedExecute must come after this preprocessor)."""

    budget_factor = Float(5.0, help="the notebook's time limit, as a multiple of its assignment's budget_seconds "
                                    "in course.toml").tag(config=True)
    notebook_timeout = Integer(0, help="seconds for the whole notebook, restarts included; 0: budget_factor times "
                                       "the budget (900 s for an assignment course.toml does not list)").tag(config=True)
    max_restarts = Integer(3, help="fresh kernels after deaths or hangs before the rest is not run").tag(config=True)

    def preprocess(self, nb: NotebookNode, resources: dict) -> tuple[NotebookNode, dict]:
        integrity.state(resources)["time_limit"] = self
        self.resources = resources
        self.limit = self.seconds(resources)
        self.deadline = time.monotonic() + self.limit
        self.stopped: dict[int, NotebookNode] = {}  # cell index -> the error output it gets instead of running
        return nb, resources

    def seconds(self, resources: dict) -> float:
        """notebook_timeout if set, else budget_factor x the assignment's budget."""
        if self.notebook_timeout:
            return float(self.notebook_timeout)
        aid = resources.get("nbgrader", {}).get("assignment", "")
        budget = budget_seconds(CourseDirectory(config=self.config).root, aid)
        return self.budget_factor * budget if budget else 900.0

    def cell_seconds(self, cell_timeout: int) -> int:
        """What the next cell may take: the configured cell timeout, or what is left of the notebook's time."""
        return max(1, min(cell_timeout, math.ceil(self.deadline - time.monotonic())))

    def used_up(self) -> bool:
        return time.monotonic() > self.deadline

    def instead_of_running(self, cell: NotebookNode, index: int) -> list[NotebookNode] | None:
        """The outputs a cell gets without running (it stopped the kernel before, or no time is left), or None."""
        if index in self.stopped:
            return [self.stopped[index]]
        if not self.used_up():
            return None
        if not cell.source.strip():
            return []
        if is_test(cell):
            integrity.record(self.resources, cell, index, "not run (time limit or repeated kernel deaths)")
        return [error_output("NotRun", f"not run: the notebook used up its time limit ({self.limit:g} s) or "
                                       "stopped the kernel too often")]

    def kernel_stopped(self, cell: NotebookNode, index: int, what: str) -> None:
        """`cell` stopped the kernel: it gets an error saying `what`, and the notebook runs again without it,
        unless that was one restart too many (then nothing more runs)."""
        self.stopped[index] = error_output("KernelStopped", what)
        integrity.record(self.resources, cell, index, what)
        if len(self.stopped) > self.max_restarts:
            self.deadline = 0

    def why(self, exc: Exception, cell_timeout: int, exit_code: int | None) -> str:
        """What happened to the kernel, in a sentence for the student's feedback."""
        if isinstance(exc, KernelStopped) and str(exc).startswith(("this test cell", "the code this test cell")):
            return f"{exc}; the notebook was graded again without it"
        if time.monotonic() >= self.deadline - 1:
            return (f"the notebook reached its time limit ({self.limit:g} s) in this cell and the kernel did not "
                    "stop when interrupted")
        if isinstance(exc, CellTimeoutError) or "timed out" in str(exc).lower() or "timeout" in str(exc).lower():
            return (f"this cell did not finish within {cell_timeout} s and the kernel did not stop when "
                    "interrupted; the notebook was graded again without it")
        code = exit_code
        detail = f" (exit code {code})" if code not in (None, 0) else ""
        signal_number = -code if code is not None and code < 0 else code - 128 if code and code > 128 else None
        if signal_number:  # bwrap reports a child killed by signal N as exit code 128 + N
            detail = f" (killed by signal {signal_number}{', a segmentation fault' if signal_number == 11 else ''})"
        return f"the kernel died while running this cell{detail}; the notebook was graded again without it"
