"""Logging for every command, in the main process and in the grading workers alike.

Warnings by default; -v (INFO): what the grader does, such as a kernel that died and in which cell; -vv (DEBUG):
also nbgrader's own log and every line a kernel wrote to its stderr (logger `coursegrader.kernel`,
provisioner.py); -q (ERROR): errors only. nbgrader's log of each run is captured by its API either way, and a
failed run's row says its most telling line.
"""

from __future__ import annotations

import logging

FORMAT = "coursegrader: %(levelname)s: %(name)s: %(message)s"


def level_for(verbose: int, quiet: bool) -> int:
    return logging.ERROR if quiet else {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)


def configure(level: int) -> None:
    """Log at `level` to stderr; nbgrader's own log (traitlets) only at DEBUG."""
    logging.basicConfig(level=level, format=FORMAT, force=True)
    traitlets = logging.getLogger("traitlets")
    traitlets.setLevel(logging.INFO if level <= logging.DEBUG else logging.ERROR)
    traitlets.propagate = level <= logging.DEBUG
