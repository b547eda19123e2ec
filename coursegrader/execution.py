"""nbgrader's Execute preprocessor, made safe to run on students' code.

nbgrader 0.9.6 gives up on a whole submission when the kernel dies or stops answering (`os._exit`, a
segfault, a loop that ignores interrupts), stores every byte a cell prints, and awards a test cell's
points whenever the cell shows no error, even if its code never ran. `GuardedExecute` keeps nbgrader's
behaviour for honest notebooks (same cells, same order, same outputs, so the same grades) and adds:

- **a dead or stuck kernel costs the cell that caused it**: the cell gets an error output saying what
  happened, and the notebook is run again from the top in a fresh kernel without that cell, so every
  other cell is graded on its merits (at most `max_restarts` times; then the rest is marked not run);
- **a time limit for the whole notebook**: `budget_factor` times the assignment's budget in course.toml
  (or `notebook_timeout` seconds when set); no cell may run past it, and cells after it are marked not run;
- **proof that each graded test cell ran, untampered** (see integrity.py): a test cell that did not run,
  was rewritten, or ran after the student patched what tests rely on gets an `IntegrityError` output,
  so nbgrader gives it 0 points like any failed test;
- **outputs capped in bytes** while they arrive, per cell and per notebook, so a 30 MB print (or a hundred
  cells of 2 MB) reaches neither the autograded notebook nor the feedback, and a grading worker's memory
  stays bounded; errors and results are kept, shortened (they are what the grade is made of);
- **every kernel in a KernelBox** (sandbox.py): in bubblewrap, or, with the explicit opt-out `sandbox =
  False`, without it but still with a scratch HOME, TMPDIR and working folder of its own.

Findings are written next to the autograded notebook as `<notebook>.integrity.json`: kind "tamper" (the
tests may have been fooled), "failure" (the code stopped the kernel or ran out of time) or "note" (graded
as usual, but a TA may want to know: outputs that were not kept).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path
from queue import Empty

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_core.utils import ensure_async, run_sync
from nbclient.util import run_hook
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat import NotebookNode
from nbgrader.coursedir import CourseDirectory
from nbgrader.preprocessors import Execute
from traitlets import Bool, Dict, Enum, Float, Integer

from . import integrity
from .course import budget_seconds
from .notebooks import is_test, source_of
from .sandbox import KERNEL_NAME, KernelBox

INTEGRITY_SUFFIX = ".integrity.json"
MAX_TRACEBACK_LINES = 40  # of an error's traceback, the last lines are kept (a deep recursion has thousands)


class KernelStopped(Exception):
    """The kernel died or stopped answering while a cell ran."""


def error_output(ename: str, evalue: str) -> NotebookNode:
    return NotebookNode(output_type="error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


def _size(output: NotebookNode) -> int:
    if output.get("output_type") == "stream":
        return len(output.get("text", ""))
    return sum(len(v) if isinstance(v, str) else len(json.dumps(v)) for v in output.get("data", {}).values())


class SlicedPolling:
    """For an nbclient NotebookClient: a kernel client that never misses a message (see poll_in_slices), from
    the moment it connects.

    `settle_iopub = False` also skips jupyter_client's last step of waiting for a new kernel: once the kernel
    has answered kernel_info and IOPub has delivered a message (so it is connected), it waits until IOPub has
    been quiet for 0.2 s. nbclient ignores messages that answer another request, so nothing depends on that
    wait, and 0.2 s is 5% of a short notebook's time.
    """

    settle_iopub = True

    async def async_start_new_kernel_client(self):
        """nbclient's own, but the channels poll in slices before the first message (the kernel_info request)."""
        self.kc = self.km.client()
        for channel in (self.kc.shell_channel, self.kc.iopub_channel):
            poll_in_slices(channel)
        try:
            await ensure_async(self.kc.start_channels())
            if self.settle_iopub:
                await ensure_async(self.kc.wait_for_ready(timeout=self.startup_timeout))
            else:
                await connected(self.kc, self.startup_timeout)
        except Exception:
            await self._async_cleanup_kernel()
            raise
        self.kc.allow_stdin = False
        await run_hook(self.on_notebook_start, notebook=self.nb)
        return self.kc

    start_new_kernel_client = run_sync(async_start_new_kernel_client)  # nbclient binds the sync one to its own


async def connected(kc, timeout: float) -> None:
    """Wait until the kernel answers kernel_info and IOPub delivers a message: jupyter_client's
    `wait_for_ready` without its final wait for a quiet IOPub (see SlicedPolling)."""
    deadline = time.monotonic() + timeout
    while True:
        kc.kernel_info()
        try:
            reply = await kc.shell_channel.get_msg(timeout=1)
        except Empty:
            pass
        else:
            if reply["msg_type"] == "kernel_info_reply":
                try:
                    await kc.iopub_channel.get_msg(timeout=0.2)  # IOPub is connected: the kernel's status arrived
                except Empty:
                    pass  # not yet: a kernel publishes before our subscription reaches it; ask again
                else:
                    kc._handle_kernel_info_reply(reply)  # as wait_for_ready does: adapt to the kernel's protocol
                    return
        if not await kc.is_alive():
            raise RuntimeError("Kernel died before replying to kernel_info")
        if time.monotonic() > deadline:
            raise RuntimeError(f"Kernel didn't respond in {timeout:g} seconds")


class GuardedExecute(SlicedPolling, Execute):
    """Execute with restarts after kernel deaths, a notebook time limit, tamper checks and output caps."""

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
    probe_timeout = Integer(30, help="seconds the kernel has to answer an integrity probe").tag(config=True)
    # Once the last cell has run, nothing the kernel does matters: kill it instead of asking it to stop
    # and waiting (about a second per notebook); the sandbox's next start clears any leftover process.
    shutdown_kernel = Enum(["graceful", "immediate"], default_value="immediate").tag(config=True)
    settle_iopub = False  # see SlicedPolling
    bindings = Dict(help="name -> [module, attribute]: what the course's imports bind (integrity.import_bindings); "
                         "default: read from the notebook's source in the course").tag(config=True)

    # --- the notebook: run, and run again without a cell that stopped the kernel -----------------
    def preprocess(self, nb: NotebookNode, resources: dict, km=None) -> tuple[NotebookNode, dict]:
        folder = resources.get("metadata", {}).get("path") or os.getcwd()
        self.cell_timeout = self.timeout  # as configured; each cell gets at most what is left of the notebook's time
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
        return integrity.source_bindings(str(source), source.stat().st_mtime_ns) if source.is_file() else {}

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
        self.deadline = time.monotonic() + self.limit
        self._dropped_note = False
        while True:
            self._notebook_bytes, self._notebook_full = 0, False
            self.current: int | None = None
            self.baseline: integrity.Probe | None = None
            self.baseline_problem = ""  # why the first probe failed: then no test cell can be trusted
            self.digests: dict[str, int] = {}  # module -> digests of states already checked
            self.exit_code: int | None = None
            self.watched = integrity.watched_modules([c.source for c in pristine.cells if c.cell_type == "code"])
            self.carriers = probe_carriers(pristine.cells)
            self.attached: str | None = None  # the probe expression the cell being run carries, if any
            self.returned: integrity.Probe | None = None  # its answer
            self.handed_on: integrity.Probe | None = None  # the state after the cell just run, if probed
            try:
                nb, resources = super().preprocess(copy.deepcopy(pristine), resources, km)
                break
            except (DeadKernelError, CellTimeoutError, KernelStopped, RuntimeError) as exc:
                if self.current is None:  # the kernel never started: a grader problem, not the student's
                    raise
                what = self._why_stopped(exc)
                self.stopped[self.current] = error_output("KernelStopped", what)
                self._record(pristine.cells[self.current], self.current, what, kind="failure")
                if len(self.stopped) > self.max_restarts:
                    self.deadline = 0  # run nothing more: the remaining cells are marked not run
        self._save_findings(resources)
        return nb, resources

    async def async_start_new_kernel_client(self):
        """The client, whose `execute` lets a cell's request carry the integrity probe (see _run)."""
        kc = await super().async_start_new_kernel_client()
        send = kc.execute

        def execute(code, *args, **kwargs):
            if self.attached is not None and "user_expressions" not in kwargs:  # a cell, not a probe of its own
                kwargs["user_expressions"] = {"probe": self.attached}
            return send(code, *args, **kwargs)

        kc.execute = execute
        return kc

    start_new_kernel_client = run_sync(async_start_new_kernel_client)

    async def _async_check_alive(self) -> None:
        try:
            await super()._async_check_alive()
        except DeadKernelError:
            try:
                self.exit_code = self.km.provisioner.process.poll()
            except AttributeError:
                pass
            raise

    def _why_stopped(self, exc: Exception) -> str:
        code = self.exit_code
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
        handed_on = self.handed_on  # the state right before this cell, if the cell run before it carried a probe
        if cell.source.strip():  # an empty cell is not run: what the cell before it handed on still holds
            self.handed_on = None
        if self.baseline is None and not self.baseline_problem:
            try:
                self.baseline = self._probe(import_them=True)
                self.watched = list(self.baseline.data["modules"])  # with the submodules the baseline added
                self.digests = {m: d["digest"] for m, d in self.baseline.data["modules"].items()}
            except ValueError as exc:
                self.baseline_problem = f"before the first cell: {exc}"
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
            # Checked before (a patch that undoes itself inside the test) and after (one the test triggers).
            before = handed_on or self._probe_or_flag(cell, index)
            problems = self._changes(before, cell, index) if before and self.baseline else []
            cell, resources = self._run(cell, resources, index)
            after = self.returned or self._probe_or_flag(cell, index)
            self.handed_on = after
            if self.baseline_problem:
                self._flag(cell, index, [self.baseline_problem])
            elif before and after:
                problems += [integrity.rewritten(cell.source, after), *self._changes(after, cell, index),
                             *integrity.foreign_modules(self.baseline)]
                self._flag(cell, index, list(dict.fromkeys(p for p in problems if p)))
        else:
            cell, resources = self._run(cell, resources, index)
            self.handed_on = self.returned
        self._after_timeout_check(cell)
        self._shorten(cell)
        return cell, resources

    def _run(self, cell: NotebookNode, resources: dict, index: int) -> tuple[NotebookNode, dict]:
        """Run the cell. If a test cell comes next, or this is one, the cell's own request carries the probe, and
        the kernel evaluates it right after the cell, as a probe sent on its own would be: one round trip less.
        Its answer is left in `returned`; None when there is none (the kernel evaluates user expressions only
        after a cell that raised no error), and then the caller sends the probe on its own."""
        self.returned = None
        if index in self.carriers:
            self.attached = integrity.probe_expression(self.watched, False, self.course_imports, [])
        try:
            return super().preprocess_cell(cell, resources, index)
        finally:
            self.attached = None

    def on_cell_executed(self, **kwargs) -> None:
        super().on_cell_executed(**kwargs)
        if self.attached is not None:
            try:
                self.returned = integrity.Probe.from_reply(kwargs["execute_reply"])
            except ValueError:  # not evaluated, or it failed: a probe of its own will say why
                self.returned = None

    def _after_timeout_check(self, cell: NotebookNode) -> None:
        """A timed-out cell was interrupted; if the kernel is still busy, treat it as stopped."""
        if any(o.get("output_type") == "error" and o.get("ename") == "CellTimeoutError" for o in cell.outputs):
            try:
                self._probe(timeout=10)
            except Exception as exc:
                raise KernelStopped(f"timed out and unresponsive: {exc}") from None

    # --- integrity --------------------------------------------------------------------------------
    def _changes(self, probe: integrity.Probe, cell: NotebookNode, index: int) -> list[str]:
        """What changed since the baseline. A module whose digest differs from every state already
        checked is listed in full by a second probe; a change found harmless (torch wrapping its own
        functions) is remembered, so the next probes stay small."""
        stale = [m for m, d in probe.data["modules"].items() if d["digest"] != self.digests.get(m)]
        if stale:
            detail = self._probe_or_flag(cell, index, detail=stale)
            if detail is None:
                return []
            probe.data["modules"].update(detail.data["modules"])
        problems = integrity.changes(self.baseline, probe)
        if not problems:
            self.digests.update({m: probe.data["modules"][m]["digest"] for m in stale})
        return problems

    async def _async_probe(self, import_them: bool = False, timeout: int | None = None,
                           detail: list[str] | None = ()) -> integrity.Probe:
        """Evaluate the probe in the kernel. `detail`: modules to list in full (() none, None all)."""
        expression = integrity.probe_expression(self.watched, import_them, self.course_imports,
                                                None if import_them else list(detail))
        msg_id = self.kc.execute("", silent=True, store_history=False, user_expressions={"probe": expression})
        deadline = time.monotonic() + (timeout or self.probe_timeout)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KernelStopped("the kernel did not answer the integrity probe")
            try:
                msg = await self.kc.shell_channel.get_msg(timeout=remaining)
            except Exception:
                if not await self.kc.is_alive():
                    raise DeadKernelError("Kernel died") from None
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                return integrity.Probe.from_reply(msg)

    _probe = run_sync(_async_probe)

    def _probe_or_flag(self, cell: NotebookNode, index: int, detail: list[str] = ()) -> integrity.Probe | None:
        try:
            return self._probe(detail=detail)
        except ValueError as exc:  # the probe ran but could not report: something it relies on is broken
            self._flag(cell, index, [str(exc)])
            return None

    def _flag(self, cell: NotebookNode, index: int, problems: list[str]) -> None:
        """Findings on a graded test cell: record them and make the cell fail, so it scores 0."""
        if not problems:
            return
        for what in problems:
            self._record(cell, index, what)
        cell.outputs.append(error_output("IntegrityError", "; ".join(problems) + " -- this test cell scores 0"))

    def _record(self, cell: NotebookNode, index: int, what: str, kind: str = "tamper") -> None:
        """kind: 'tamper' (the tests may have been fooled) or 'failure' (the code broke the kernel or ran out of time)."""
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


def probe_carriers(cells: list[NotebookNode]) -> set[int]:
    """Indices of the cells whose request carries the integrity probe: every test cell, and the cell run just
    before it (whose probe is the test's "before"; markdown and empty cells do not run)."""
    carriers, last = set(), None
    for i, cell in enumerate(cells):
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        if is_test(cell):
            carriers |= {i} | ({last} if last is not None else set())
        last = i
    return carriers


POLL_SLICE_SECONDS = 0.2


def poll_in_slices(channel) -> None:
    """Make `channel.get_msg(timeout)` wait in short polls instead of one long one.

    pyzmq's asyncio poll can miss the moment a message arrives on a socket (its file descriptor is
    edge-triggered) and then notices it only when the poll times out. nbclient waits for a cell's reply
    with one poll of the whole cell timeout, so a missed reply cost two minutes at random (seen about one
    run in two when two sandboxed kernels ran at once, over IPC). Each short poll looks at the socket
    afresh, so a missed arrival costs at most POLL_SLICE_SECONDS.
    """
    original = channel.get_msg

    async def get_msg(timeout: float | None = None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = POLL_SLICE_SECONDS if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await original(timeout=min(POLL_SLICE_SECONDS, left))
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    channel.get_msg = get_msg


def read_findings(notebook: Path) -> list[dict]:
    """The findings GuardedExecute wrote for an autograded notebook ([] if none or not graded)."""
    path = notebook.with_name(notebook.stem + INTEGRITY_SUFFIX)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
