"""nbgrader's Execute, with the tests in a kernel of their own and every kernel in a sandbox.

nbgrader 0.9.6 runs the test cells in the kernel that runs the student's code. `GuardedExecute` keeps
nbgrader's behaviour for honest notebooks (same cells, same order, same outputs, so the same grades), but:

- **the tests run in a kernel of their own**: every test cell runs in the tests' kernel, started clean and
  never running student code; the names it uses reach the student's notebook through data only (proxy.py,
  split.py). It is forked from a template that has imported ipykernel, numpy and torch once per grading
  process and run nothing else (template.py, provisioner.py). The test cell's reply, outputs and verdict come
  from there, so nothing the student's code does to its own kernel (patches, hooks, forged replies, lying
  classes) can change a grade;
- **every kernel starts in a KernelBox** (sandbox.py, through provisioner.py's kernel provisioners): in
  bubblewrap, or, with the explicit opt-out `sandbox = False`, without it but still with a scratch HOME,
  TMPDIR and working folder of its own. Sandboxed by a root grader, the student's kernel is forked from a
  students' template (one per grading process, `fork_students`) that has imported ipykernel and the course's
  numpy, torch and matplotlib once, and that clears what the kernel before left (template.py).

Three more concerns are preprocessors of their own, before and after it in the autograde list (see
nbgrader_config.py and safety.py, which refuses to grade without them): `NotebookTimeLimit` (timelimit.py:
the notebook's time limit, and another run without a cell that stopped the kernel), `CapOutputs`
(outputcaps.py: outputs capped while they arrive) and `SaveFindings` (integrity.py: what a TA should know).
GuardedExecute asks the first two, which register in the notebook's resources, at each cell and message.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import time
import warnings
from contextlib import nullcontext
from queue import Empty

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_core.utils import ensure_async, run_sync
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat import NotebookNode
from nbgrader.preprocessors import Execute
from traitlets import Bool, Dict, Enum, Integer

from . import integrity, provisioner, proxy, split
from .notebooks import is_test, source_of
from .outputcaps import CapOutputs
from .sandbox import KERNEL_NAME, KernelBox
from .timelimit import KernelStopped, NotebookTimeLimit
from .upstream import NotebookClientHooks, PromptKernelClient, connected, poll_in_slices

log = logging.getLogger(__name__)

CLIENT = f"{PromptKernelClient.__module__}.{PromptKernelClient.__qualname__}"  # both kernels' clients
PRELOAD = {"numpy", "torch"}  # imported by the tests' kernels' template, when the notebook imports them
# imported by the students' kernels' template, when the notebook imports them: modules whose import reads no
# folder a kernel can write (matplotlib reads its configuration folder, which the template seals: provisioner.py)
STUDENT_PRELOAD = {"numpy", "torch", "matplotlib", "matplotlib.pyplot"}


class GuardsMissing(RuntimeError):
    """GuardedExecute ran without the preprocessors it relies on before it in the autograde list."""


def _guard(resources: dict, key: str, cls: type):
    found = integrity.state(resources).get(key)
    if not isinstance(found, cls):
        raise GuardsMissing(f"{cls.__name__} must come before GuardedExecute in the autograde preprocessors "
                            "(nbgrader_config.py)")
    return found


class GuardedExecute(NotebookClientHooks, Execute):
    """Execute with the tests in a kernel of their own and every kernel in a sandbox (after NotebookTimeLimit and
    CapOutputs in the autograde list)."""

    sandbox = Bool(True, help="start every kernel in bubblewrap; False is the opt-out for trusted notebooks on a "
                              "machine without it: student code then runs with your permissions").tag(config=True)
    # Once the last cell has run, nothing the kernel does matters: kill it instead of asking it to stop
    # and waiting (about a second per notebook); the sandbox's next start clears any leftover process.
    shutdown_kernel = Enum(["graceful", "immediate"], default_value="immediate").tag(config=True)
    settle_iopub = False  # see upstream.NotebookClientHooks
    return_timeout = Integer(10, help="seconds the student's kernel has, after a test cell, to return to its own "
                                      "cells").tag(config=True)
    bindings = Dict(help="name -> [module, attribute]: what the course's imports bind (split.import_bindings); "
                         "default: read from the notebook's source in the course").tag(config=True)
    fork_students = Bool(True, help="sandboxed by a root grader, fork each student's kernel from a template that has "
                                    "imported ipykernel and the course's numpy, torch and matplotlib once per grading "
                                    "process (provisioner.py); False starts a new sandboxed process for each "
                                    "kernel").tag(config=True)

    # --- the notebook: run, and run again without a cell that stopped the kernel -----------------
    def preprocess(self, nb: NotebookNode, resources: dict, km=None) -> tuple[NotebookNode, dict]:
        folder = resources.get("metadata", {}).get("path") or os.getcwd()
        self.limits = _guard(resources, "time_limit", NotebookTimeLimit)
        self.caps = _guard(resources, "output_caps", CapOutputs)
        self.cell_timeout = self.timeout  # as configured; each cell gets at most what is left of the notebook's time
        self.tests_folder = self._tests_folder(resources)
        forked = self.sandbox and self.fork_students and os.geteuid() == 0  # else a box of its own (a uid, a process)
        with nullcontext() if forked else KernelBox(folder, sandbox=self.sandbox) as self.box:
            if not self.sandbox:
                self.log.warning("grading WITHOUT the sandbox (GuardedExecute.sandbox = False): student code runs "
                                 "with your permissions")
            try:
                return self._preprocess(nb, resources, km)
            finally:
                self.timeout = self.cell_timeout

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
        """A kernel manager that starts the kernel through the students' template (cleared, and replaced if it does
        not answer) or this notebook's KernelBox, over IPC (a sandboxed kernel shares no loopback with the grader),
        with its connection file in a fresh folder."""
        box = self.box if self.box is not None else provisioner.students_template(self.student_preload).box
        self.kernel_name = KERNEL_NAME
        self.km = self.kernel_manager_class(kernel_name=KERNEL_NAME, config=self.config, client_class=CLIENT,
                                            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(box.kernels)]))
        self.km.transport = "ipc"
        self.km.connection_file = box.connection_file()
        return self.km

    def _preprocess(self, nb: NotebookNode, resources: dict, km=None) -> tuple[NotebookNode, dict]:
        pristine = copy.deepcopy(nb)
        self.course_imports = self.course_bindings(resources)
        self.notebook_names = self._notebook_names(resources)
        preload = tuple(sorted({module.split(".")[0] for module, _ in self.course_imports.values()} & PRELOAD))
        self.student_preload = tuple(sorted({module for module, _ in self.course_imports.values()} & STUDENT_PRELOAD))
        self.template = provisioner.template_for(self.tests_folder, self.sandbox, preload)
        self.tkm = self.tkc = None
        while True:  # run, and run again without a cell that stopped the kernel (NotebookTimeLimit decides)
            self.caps.start_run()
            self.current: int | None = None
            self.exit_code: int | None = None
            try:
                return super().preprocess(copy.deepcopy(pristine), resources, km)
            except (DeadKernelError, CellTimeoutError, KernelStopped, RuntimeError) as exc:
                if self.current is None:  # the kernel never started: a grader problem, not the student's
                    raise
                what = self.limits.why(exc, self.timeout, self.exit_code)
                log.info("%s, cell %d: %s%s", resources.get("metadata", {}).get("path", ""), self.current + 1, what,
                         self._stderr_tail())
                self.limits.kernel_stopped(pristine.cells[self.current], self.current, what)

    def _stderr_tail(self) -> str:
        """The last lines the student's kernel wrote to its stderr, for the log."""
        stderr = getattr(getattr(self.km, "provisioner", None), "stderr", None)
        tail = stderr.last_lines() if stderr is not None else ""
        return f"; its stderr ended with:\n{tail}" if tail else ""

    async def async_start_new_kernel(self, **kwargs) -> None:
        """The student's kernel, then the tests' kernel (forked from the template, provisioner.py), each with its
        end of a fresh socket pair."""
        student_end, tests_end = socket.socketpair()
        try:
            self.tkm = self.kernel_manager_class(
                kernel_name=KERNEL_NAME, config=self.config, client_class=CLIENT,
                kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(self.template.box.kernels)]))
            self.tkm.transport = "ipc"
            self.tkm.connection_file = self.template.box.connection_file()
            with warnings.catch_warnings():  # jupyter_client asks for close_fds=False; pass_fds overrides it
                warnings.filterwarnings("ignore", "pass_fds overriding close_fds")
                await super().async_start_new_kernel(pass_fds=(student_end.fileno(),), **kwargs)
                # the student's kernel starts on one core while the template (if new) finishes its imports
                await ensure_async(self.tkm.start_kernel(extra_arguments=self.extra_arguments, cwd=self.tests_folder,
                                                         pass_fds=(tests_end.fileno(),)))
            forked_fd = getattr(self.km.provisioner, "channel_fd", None)  # a forked kernel's number, its template's
            self.channel = (student_end.fileno() if forked_fd is None else forked_fd, self.tkm.provisioner.channel_fd)
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
        self.tests_loading = self.tkc.execute(split.load_code(tests_fd, proxy.TESTS, self.notebook_names,
                                                              self.course_imports), silent=True, store_history=False)
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

    # --- one cell -------------------------------------------------------------------------------
    def preprocess_cell(self, cell: NotebookNode, resources: dict, index: int) -> tuple[NotebookNode, dict]:
        if cell.cell_type != "code":
            return cell, resources
        instead = self.limits.instead_of_running(cell, index)
        if instead is not None:
            cell.outputs = instead
            return cell, resources
        self.current = index
        self.caps.start_cell()
        self.timeout = self.limits.cell_seconds(self.cell_timeout)
        if is_test(cell) and cell.source.strip():
            cell, resources = self._run_test(cell, resources, index)
        else:
            cell, resources = super().preprocess_cell(cell, resources, index)
            self._after_timeout_check(cell)
        self.caps.shorten(cell)
        return cell, resources

    def _run_test(self, cell: NotebookNode, resources: dict, index: int) -> tuple[NotebookNode, dict]:
        """Run a test cell in the tests' kernel while the student's kernel serves its requests (proxy.py)."""
        return run_sync(self._async_run_test)(cell, resources, index)

    async def _async_run_test(self, cell: NotebookNode, resources: dict, index: int) -> tuple[NotebookNode, dict]:
        if self.tests_loading is not None:
            await self._reply(self.tkc, self.tests_loading, self.startup_timeout, "load the tests' kernel")
            self.tests_loading = None
        serving = self.kc.execute(split.call_code("serve"), silent=True, store_history=False)
        km, kc = self.km, self.kc
        self.km, self.kc = self.tkm, self.tkc  # nbclient runs this cell, and records its outputs, there
        try:  # the tests' kernel binds the cell's names first and releases the student's kernel after it (CellHooks)
            cell, resources = await self.async_execute_cell(cell, index, store_history=True), resources
        finally:
            self.km, self.kc = km, kc
        timed_out = any(o.get("output_type") == "error" and o.get("ename") == "CellTimeoutError" for o in cell.outputs)
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

    # --- outputs ------------------------------------------------------------------------------------
    def output(self, outs, msg, display_id, cell_index):
        """Keep what CapOutputs admits of an output as it arrives (errors and results always pass)."""
        kept = self.caps.admit(msg, self.nb.cells[cell_index], cell_index)
        if kept is None:
            return None
        return super().output(outs, kept, display_id if kept is msg else None, cell_index)
