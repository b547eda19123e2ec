"""Where the parallel grading workers come from: a fork server that has imported the grader once.

Spawned workers each import nbgrader, nbconvert and SQLAlchemy again, about 2 s per worker on every
`autograde` run, while the cores could be grading. Forking the main process would skip that, but the main
process holds gradebook connections, a sandbox uid claim and threads that a child must not inherit. A fork
server is a fresh process that imports the grader once (at the same time as the main process does, on
another core) and then forks every worker from itself: workers start with the imports done and nothing
else inherited.
"""

from __future__ import annotations

from multiprocessing import forkserver, get_context
from multiprocessing.context import BaseContext

PRELOAD = ["coursegrader.nbgrader_api"]


def context() -> BaseContext:
    """The multiprocessing context workers are started with."""
    ctx = get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def start_early() -> None:
    """Start the fork server now, so that its imports run while the caller is still importing its own."""
    context()
    forkserver.ensure_running()
