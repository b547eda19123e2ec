"""nbgrader's Execute preprocessor, made safe to run on students' code.

nbgrader 0.9.6 runs the test cells in the kernel that runs the student's code, gives up on a whole submission
when the kernel dies or stops answering (`os._exit`, a segfault, a loop that ignores interrupts), and stores
every byte a cell prints. `GuardedExecute` keeps nbgrader's behaviour for honest notebooks (same cells, same
order, same outputs, so the same grades) and adds:

- **the tests in a kernel of their own**: every test cell runs in the tests' kernel, started clean and never
  running student code; the names it uses reach the student's notebook through data only (proxy.py, split.py).
  It is forked from a template that has imported ipykernel, numpy and torch once per grading process and run
  nothing else (template.py, provisioner.py), so it costs milliseconds instead of a second of imports.
  The test cell's reply, outputs and verdict come from there, so nothing the student's code does to its own
  kernel (patches, hooks, forged replies, lying classes) can change a grade;
- **a dead or stuck kernel costs the cell that caused it**: the cell gets an error output saying what
  happened, and the notebook is run again from the top in fresh kernels without that cell, so every
  other cell is graded on its merits (at most `max_restarts` times; then the rest is marked not run);
- **a time limit for the whole notebook**: `budget_factor` times the assignment's budget in course.toml
  (or `notebook_timeout` seconds when set); no cell may run past it, and cells after it are marked not run;
- **outputs capped in bytes** while they arrive, per cell and per notebook, so a 30 MB print (or a hundred
  cells of 2 MB) reaches neither the autograded notebook nor the feedback, and a grading worker's memory
  stays bounded; errors and results are kept, shortened (they are what the grade is made of);
- **every kernel in a KernelBox** (sandbox.py): in bubblewrap, or, with the explicit opt-out `sandbox =
  False`, without it but still with a scratch HOME, TMPDIR and working folder of its own.

Findings are written next to the autograded notebook as `<notebook>.integrity.json`: kind "failure" (the code
stopped the kernel or ran out of time) or "note" (graded as usual, but a TA may want to know: outputs that
were not kept).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import socket
import time
import warnings
from pathlib import Path
from queue import Empty

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_core.utils import ensure_async, run_sync
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat import NotebookNode
from nbgrader.coursedir import CourseDirectory
from nbgrader.preprocessors import Execute
from traitlets import Bool, Dict, Enum, Float, Integer

from . import provisioner, proxy, split
from .course import budget_seconds
from .notebooks import is_test, source_of
from .sandbox import KERNEL_NAME, KernelBox
from .upstream import NotebookClientHooks, connected, poll_in_slices

log = logging.getLogger(__name__)

INTEGRITY_SUFFIX = ".integrity.json"
PRELOAD = {"numpy", "torch"}  # imported by the tests' kernels' template, when the notebook imports them
MAX_TRACEBACK_LINES = 40  # of an error's traceback, the last lines are kept (a deep recursion has thousands)


class KernelStopped(Exception):
    """The kernel died or stopped answering while a cell ran."""


def error_output(ename: str, evalue: str) -> NotebookNode:
    return NotebookNode(output_type="error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


def _size(output: NotebookNode) -> int:
    if output.get("output_type") == "stream":
        return len(output.get("text", ""))
    return sum(len(v) if isinstance(v, str) else len(json.dumps(v)) for v in output.get("data", {}).values())


class GuardedExecute(NotebookClientHooks, Execute):
    """Execute with the tests in a kernel of their own, restarts after kernel deaths, a notebook time limit and
    output caps."""

    sandbox = Bool(True, help="start every kernel in bubblewrap; False is the opt-out for trusted notebooks on a "
                              "machine without it: student code then runs with your permissions").tag(config=True)
    budget_factor = Float(5.0, help="the notebook's time limit, as a multiple of its assignment's budget_seconds "
                                    "in course.toml").tag(config=True)
    notebook_timeout = Integer(0, help="seconds for the whole notebook, restarts included; 0: budget_factor times "
                                       "the budget (900 s for an assignment course.toml does not list)").tag(config=True)
    max_restarts = Integer(3, help="fresh kernels after deaths or hangs before the rest is not run").tag(config=True)
    max_stream_bytes = Integer(100_000, help="printed text kept per cell").tag(config=True)
    max_output_bytes = Integer(2_000_000, help="outputs kept per cell (figures included)").tag(config=True)
    max_notebook_output_bytes = Integer(10_000_000, help="outputs kept per notebook; past it, only errors and "
                                                         "results, shortened").tag(config=True)
    max_message_chars = Integer(10_000, help="characters kept of an error message or a result").tag(config=True)
    # Once the last cell has run, nothing the kernel does matters: kill it instead of asking it to stop
    # and waiting (about a second per notebook); the sandbox's next start clears any leftover process.
    shutdown_kernel = Enum(["graceful", "immediate"], default_value="immediate").tag(config=True)
    settle_iopub = False  # see upstream.NotebookClientHooks
    return_timeout = Integer(10, help="seconds the student's kernel has, after a test cell, to return to its own "
                                      "cells").tag(config=True)
    bindings = Dict(help="name -> [module, attribute]: what the course's imports bind (split.import_bindings); "
                         "default: read from the notebook's source in the course").tag(config=True)

    # --- the notebook: run, and run again without a cell that stopped the kernel -----------------
    def preprocess(self, nb: NotebookNode, resources: dict, km=None) -> tuple[NotebookNode, dict]:
        folder = resources.get("metadata", {}).get("path") or os.getcwd()
        self.cell_timeout = self.timeout  # as configured; each cell gets at most what is left of the notebook's time
        self.tests_folder = self._tests_folder(resources)
        with KernelBox(folder, sandbox=self.sandbox) as self.box:
            if not self.sandbox:
                self.log.warning("grading WITHOUT the sandbox (GuardedExecute.sandbox = False): student code runs "
                                 "with your permissions")
            try:
                return self._preprocess(nb, resources, km)
            finally:
                self.timeout = self.cell_timeout

    def time_limit(self, resources: dict) -> float:
        """Seconds for the whole notebook: notebook_timeout if set, else budget_factor x the assignment's budget."""
        if self.notebook_timeout:
            return float(self.notebook_timeout)
        aid = resources.get("nbgrader", {}).get("assignment", "")
        budget = budget_seconds(CourseDirectory(config=self.config).root, aid)
        return self.budget_factor * budget if budget else 900.0

    def course_bindings(self, resources: dict) -> dict:
        """The configured bindings, else what the imports of the notebook's source (given cells and tests) bind."""
        if self.bindings:
            return self.bindings
        source = source_of(self.config, resources)
        return split.source_bindings(str(source), source.stat().st_mtime_ns) if source.is_file() else {}

    def _tests_folder(self, resources: dict) -> str:
        """Where the tests' kernel works: the assignment's source folder (its data files, never the student's)."""
        source = source_of(self.config, resources)
        return str(source.parent) if source.is_file() else os.getcwd()

    def _notebook_names(self, resources: dict) -> frozenset[str]:
        source = source_of(self.config, resources)
        if not source.is_file():
            self.log.warning("no source notebook for %s: its test cells can use no name of the notebook", source)
            return frozenset()
        return split.notebook_names(str(source), source.stat().st_mtime_ns)

    def create_kernel_manager(self):
        """A kernel manager that starts the kernel through this notebook's KernelBox, over IPC (a sandboxed kernel
        shares no loopback with the grader), with its connection file in a fresh folder."""
        self.kernel_name = KERNEL_NAME
        self.km = self.kernel_manager_class(kernel_name=KERNEL_NAME, config=self.config,
                                            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(self.box.kernels)]))
        self.km.transport = "ipc"
        self.km.connection_file = self.box.connection_file()
        return self.km

    def _preprocess(self, nb: NotebookNode, resources: dict, km=None) -> tuple[NotebookNode, dict]:
        pristine = copy.deepcopy(nb)
        self.stopped: dict[int, NotebookNode] = {}  # cell index -> the error output it gets instead of running
        self.findings: list[dict] = []
        self._cell_bytes, self._truncated = 0, False
        self.limit = self.time_limit(resources)
        self.course_imports = self.course_bindings(resources)
        self.notebook_names = self._notebook_names(resources)
        preload = tuple(sorted({module.split(".")[0] for module, _ in self.course_imports.values()} & PRELOAD))
        self.template = provisioner.template_for(self.tests_folder, self.sandbox, preload)
        self.tkm = self.tkc = None
        self.deadline = time.monotonic() + self.limit
        self._dropped_note = False
        while True:
            self._notebook_bytes, self._notebook_full = 0, False
            self.current: int | None = None
            self.exit_code: int | None = None
            try:
                nb, resources = super().preprocess(copy.deepcopy(pristine), resources, km)
                break
            except (DeadKernelError, CellTimeoutError, KernelStopped, RuntimeError) as exc:
                if self.current is None:  # the kernel never started: a grader problem, not the student's
                    raise
                what = self._why_stopped(exc)
                log.info("%s, cell %d: %s", resources.get("metadata", {}).get("path", ""), self.current + 1, what)
                self.stopped[self.current] = error_output("KernelStopped", what)
                self._record(pristine.cells[self.current], self.current, what, kind="failure")
                if len(self.stopped) > self.max_restarts:
                    self.deadline = 0  # run nothing more: the remaining cells are marked not run
        self._save_findings(resources)
        return nb, resources

    async def async_start_new_kernel(self, **kwargs) -> None:
        """The student's kernel, then the tests' kernel (forked from the template, provisioner.py), each with its
        end of a fresh socket pair."""
        student_end, tests_end = socket.socketpair()
        try:
            self.tkm = self.kernel_manager_class(
                kernel_name=KERNEL_NAME, config=self.config,
                kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(self.template.box.kernels)]))
            self.tkm.transport = "ipc"
            self.tkm.connection_file = self.template.box.connection_file()
            with warnings.catch_warnings():  # jupyter_client asks for close_fds=False; pass_fds overrides it
                warnings.filterwarnings("ignore", "pass_fds overriding close_fds")
                await super().async_start_new_kernel(pass_fds=(student_end.fileno(),), **kwargs)
                # the student's kernel starts on one core while the template (if new) finishes its imports
                await ensure_async(self.tkm.start_kernel(extra_arguments=self.extra_arguments, cwd=self.tests_folder,
                                                         pass_fds=(tests_end.fileno(),)))
            self.channel = (student_end.fileno(), self.tkm.provisioner.channel_fd)  # as each kernel numbers it
        finally:  # the kernels hold their ends; the grader keeps none (a kernel's death then closes the channel)
            student_end.close()
            tests_end.close()

    start_new_kernel = run_sync(async_start_new_kernel)  # nbclient binds the sync one to its own

    async def async_start_new_kernel_client(self):
        """The student's client (NotebookClientHooks'), then the tests' client, and the channel loaded in both."""
        kc = await super().async_start_new_kernel_client()
        await self._connect_kernels(kc)
        return kc

    start_new_kernel_client = run_sync(async_start_new_kernel_client)

    async def _connect_kernels(self, kc) -> None:
        """Start the tests' client, and load proxy.py into both kernels (the tests' kernel has numpy and torch
        already: its template imported them)."""
        self.tkc = self.tkm.client()
        for channel in (self.tkc.shell_channel, self.tkc.iopub_channel):
            poll_in_slices(channel)
        await ensure_async(self.tkc.start_channels())
        await connected(self.tkc, self.startup_timeout)
        self.tkc.allow_stdin = False
        student_fd, tests_fd = self.channel
        self.tests_loading = self.tkc.execute(split.load_code(tests_fd, proxy.TESTS),
                                              silent=True, store_history=False)
        await self._reply(kc, kc.execute(split.load_code(student_fd, proxy.STUDENT), silent=True,
                                         store_history=False), self.startup_timeout, "load the channel")

    async def _reply(self, kc, msg_id: str, timeout: float, what: str) -> dict:
        """The reply to one of our own silent requests; RuntimeError if it failed, KernelStopped if none came."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KernelStopped(f"the kernel did not answer ({what})")
            try:
                msg = await kc.shell_channel.get_msg(timeout=remaining)
            except Empty:
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                content = msg["content"]
                if content.get("status") != "ok":
                    raise RuntimeError(f"{what}: {content.get('ename')}: {content.get('evalue')}")
                return content

    async def after_cleanup(self) -> None:
        """The student's kernel is stopped (upstream.NotebookClientHooks): stop the tests' kernel too."""
        await self._stop_tests_kernel()

    async def _stop_tests_kernel(self) -> None:
        tkm, tkc, self.tkm, self.tkc = getattr(self, "tkm", None), getattr(self, "tkc", None), None, None
        if tkc is not None:
            tkc.stop_channels()
        if tkm is not None:
            try:
                if await ensure_async(tkm.is_alive()):
                    await ensure_async(tkm.shutdown_kernel(now=True))
            except RuntimeError:
                pass
            finally:
                await ensure_async(tkm.cleanup_resources())

    def on_dead_kernel(self) -> None:
        """nbclient found the student's kernel dead (upstream.NotebookClientHooks): keep its exit code."""
        try:
            self.exit_code = self.km.provisioner.process.poll()
        except AttributeError:
            pass

    def _why_stopped(self, exc: Exception) -> str:
        code = self.exit_code
        if isinstance(exc, KernelStopped) and str(exc).startswith(("this test cell", "the code this test cell")):
            return f"{exc}; the notebook was graded again without it"
        if time.monotonic() >= self.deadline - 1:
            return (f"the notebook reached its time limit ({self.limit:g} s) in this cell and the kernel did not "
                    "stop when interrupted")
        if isinstance(exc, CellTimeoutError) or "timed out" in str(exc).lower() or "timeout" in str(exc).lower():
            return (f"this cell did not finish within {self.timeout} s and the kernel did not stop when "
                    "interrupted; the notebook was graded again without it")
        detail = f" (exit code {code})" if code not in (None, 0) else ""
        signal_number = -code if code is not None and code < 0 else code - 128 if code and code > 128 else None
        if signal_number:  # bwrap reports a child killed by signal N as exit code 128 + N
            detail = f" (killed by signal {signal_number}{', a segmentation fault' if signal_number == 11 else ''})"
        return f"the kernel died while running this cell{detail}; the notebook was graded again without it"

    # --- one cell -------------------------------------------------------------------------------
    def preprocess_cell(self, cell: NotebookNode, resources: dict, index: int) -> tuple[NotebookNode, dict]:
        if cell.cell_type != "code":
            return cell, resources
        if index in self.stopped:
            cell.outputs = [self.stopped[index]]
            return cell, resources
        if time.monotonic() > self.deadline:
            if cell.source.strip():
                cell.outputs = [error_output("NotRun", "not run: the notebook used up its time limit "
                                             f"({self.limit:g} s) or stopped the kernel too often")]
                if is_test(cell):
                    self._record(cell, index, "not run (time limit or repeated kernel deaths)", kind="failure")
            return cell, resources
        self.current = index
        self._cell_bytes = 0
        self._truncated = False
        self.timeout = max(1, min(self.cell_timeout, math.ceil(self.deadline - time.monotonic())))
        if is_test(cell) and cell.source.strip():
            cell, resources = self._run_test(cell, resources, index)
        else:
            cell, resources = super().preprocess_cell(cell, resources, index)
            self._after_timeout_check(cell)
        self._shorten(cell)
        return cell, resources

    def _run_test(self, cell: NotebookNode, resources: dict, index: int) -> tuple[NotebookNode, dict]:
        """Run a test cell in the tests' kernel while the student's kernel serves its requests (proxy.py)."""
        return run_sync(self._async_run_test)(cell, resources, index)

    async def _async_run_test(self, cell: NotebookNode, resources: dict, index: int) -> tuple[NotebookNode, dict]:
        if self.tests_loading is not None:
            await self._reply(self.tkc, self.tests_loading, self.startup_timeout, "load the tests' kernel")
            self.tests_loading = None
        names = sorted(split.names_read(cell.source) & self.notebook_names)
        serving = self.kc.execute(split.call_code("serve"), silent=True, store_history=False)
        try:
            await self._reply(self.tkc, self.tkc.execute(split.call_code("bind", names, self.course_imports),
                                                         silent=True, store_history=False), self.timeout,
                              "bind the notebook's names")
        except RuntimeError as exc:
            cell.outputs = [error_output("NotebookUnreachable", "the test could not reach the notebook's names "
                                         f"({exc})")]
        else:
            km, kc = self.km, self.kc
            self.km, self.kc = self.tkm, self.tkc  # nbclient runs this cell, and records its outputs, there
            try:
                cell, resources = await self.async_execute_cell(cell, index, store_history=True), resources
            finally:
                self.km, self.kc = km, kc
        timed_out = any(o.get("output_type") == "error" and o.get("ename") == "CellTimeoutError" for o in cell.outputs)
        try:
            await self._reply(self.tkc, self.tkc.execute(split.call_code("done"), silent=True, store_history=False),
                              self.return_timeout, "end the test")
        except RuntimeError:
            pass  # the student's kernel is gone: found just below
        await self._await_student(serving)
        if timed_out:
            raise KernelStopped(f"this test cell did not finish within {self.timeout} s")
        return cell, resources

    async def _await_student(self, serving: str) -> None:
        """The student's kernel must return to its cells after a test cell (interrupted once if it does not)."""
        for attempt in range(2):
            try:
                await self._reply(self.kc, serving, self.return_timeout, "serve the tests")
                return
            except RuntimeError:
                return  # serving ended with an error (interrupted, or the channel broke): the kernel is back
            except KernelStopped:
                if not await ensure_async(self.km.is_alive()):
                    raise DeadKernelError("Kernel died") from None
                if attempt == 0:
                    await ensure_async(self.km.interrupt_kernel())
        raise KernelStopped("the code this test cell called did not return, even when interrupted")

    def _after_timeout_check(self, cell: NotebookNode) -> None:
        """A timed-out cell was interrupted; if the kernel does not answer now, treat it as stopped."""
        if any(o.get("output_type") == "error" and o.get("ename") == "CellTimeoutError" for o in cell.outputs):
            try:
                run_sync(self._reply)(self.kc, self.kc.kernel_info(), 10, "answer after an interrupt")
            except Exception as exc:
                raise KernelStopped(f"timed out and unresponsive: {exc}") from None

    def _record(self, cell: NotebookNode, index: int, what: str, kind: str = "failure") -> None:
        """kind: 'failure' (the code broke the kernel or ran out of time) or 'note' (for the TA to know)."""
        gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", "")
        self.findings.append({"cell": gid or f"cell {index + 1}", "index": index, "kind": kind, "finding": what})

    def _save_findings(self, resources: dict) -> None:
        folder = resources.get("metadata", {}).get("path")
        name = resources.get("unique_key") or resources.get("metadata", {}).get("name")
        if folder and name:  # always written, replacing (never writing through) whatever is there
            path = Path(folder) / f"{Path(name).name}{INTEGRITY_SUFFIX}"
            if path.is_symlink() or path.exists():
                path.unlink()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.findings, f, indent=1)

    # --- outputs ------------------------------------------------------------------------------------
    def output(self, outs, msg, display_id, cell_index):
        """Drop output beyond the caps as it arrives; errors and results always pass (they carry the grade)."""
        content = msg["content"]
        size = len(content.get("text", "")) + sum(len(str(v)) for v in content.get("data", {}).values())
        if msg["msg_type"] in ("stream", "display_data", "update_display_data"):
            cap = self.max_stream_bytes if msg["msg_type"] == "stream" else self.max_output_bytes
            over_cell = self._cell_bytes + size > cap
            over_notebook = self._notebook_bytes + size > self.max_notebook_output_bytes
            if over_cell or over_notebook:
                if over_notebook and not self._notebook_full:
                    self._notebook_full = True
                    self._note_dropped()
                if not self._truncated:
                    self._truncated = True
                    text = (f"this cell printed more than {cap:,} bytes" if over_cell else
                            f"this notebook's outputs passed {self.max_notebook_output_bytes:,} bytes")
                    note = {"name": "stdout", "text": f"\n[output truncated: {text}; the rest was not kept]\n"}
                    # nbclient reads the type from the header: the note must be a stream there too
                    stream = {**msg, "header": {**msg["header"], "msg_type": "stream"}, "msg_type": "stream",
                              "content": note}
                    return super().output(outs, stream, None, cell_index)
                return None
            self._cell_bytes += size
        self._notebook_bytes += size + len(str(content.get("traceback", "")))
        return super().output(outs, msg, display_id, cell_index)

    def _note_dropped(self) -> None:
        """Once per notebook: a note in the student's row that outputs were not kept from this cell on."""
        if not self._dropped_note:
            self._dropped_note = True
            cell = self.nb.cells[self.current]
            self._record(cell, self.current, f"outputs past {self.max_notebook_output_bytes / 1e6:g} MB per notebook "
                                             "were not kept, from this cell on", kind="note")

    def _shorten(self, cell: NotebookNode) -> None:
        """Errors and results are kept, cut to max_message_chars (to a tenth of it, and the traceback to its last
        line, once the notebook's outputs are over their cap)."""
        n = self.max_message_chars // 10 if self._notebook_full else self.max_message_chars
        for out in cell.outputs:
            if out.get("output_type") == "error":
                if len(out.get("evalue", "")) > n:
                    out.evalue = out.evalue[:n] + " ... [truncated]"
                keep = out.traceback[-1:] if self._notebook_full else out.traceback[-MAX_TRACEBACK_LINES:]
                out.traceback = [line[:n] for line in keep]
            if out.get("output_type") == "execute_result":
                for key, value in out.get("data", {}).items():
                    if isinstance(value, str) and len(value) > n:
                        out.data[key] = value[:n] + " ... [truncated]"


def read_findings(notebook: Path) -> list[dict]:
    """The findings GuardedExecute wrote for an autograded notebook ([] if none or not graded)."""
    path = notebook.with_name(notebook.stem + INTEGRITY_SUFFIX)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
