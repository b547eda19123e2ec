"""How grading kernels start: jupyter_client kernel provisioners (the library's hook for how a kernel process starts).

`SandboxProvisioner` (entry point `coursegrader-sandbox`, named in every KernelBox's kernel spec) starts a
kernel in its box: jupyter_client prepares it as usual (ports, connection file, the ipykernel command), and
the provisioner has the box wrap the command in bubblewrap with its limits, scratch HOME and folder
(sandbox.py). The kernel's stdout (ipykernel's banner) goes nowhere, and its stderr to the logger
`coursegrader.kernel` (`coursegrader -vv` shows it), never into the TA's terminal.

The tests' kernels are forked from a template (template.py) instead:
`Template` starts the template process in a KernelBox of its own (sandboxed like any kernel) and asks it for
kernels. One template serves every notebook a grading process grades from the same tests' folder: it is
started on first use (`template_for`) and stopped when the process ends.

`TemplateProvisioner` is the kernel provisioner named in the template box's kernel spec (entry point
`coursegrader-template`): jupyter_client prepares the kernel as usual (ports, connection file), and the
provisioner, instead of running the kernel's command, has the template fork it. The forked kernel is a
child of the template, not of the grader, so `ForkedKernel` stands in for the subprocess.Popen that
jupyter_client's LocalProvisioner keeps: poll, wait and signals go through the template.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import weakref
from multiprocessing import util as mp_util
from pathlib import Path

from jupyter_client.provisioning import LocalProvisioner
from traitlets import Unicode

from . import sandbox
from .sandbox import KernelBox, Limits

log = logging.getLogger(__name__)
kernel_log = logging.getLogger("coursegrader.kernel")

PROVISIONER = "coursegrader-template"
START_TIMEOUT = 120.0  # seconds for the template's imports (torch takes a few on a busy machine)
REPLY_TIMEOUT = 30.0

_templates: dict[tuple, Template] = {}  # template_for's: one per tests' folder
_running: weakref.WeakValueDictionary[str, Template] = weakref.WeakValueDictionary()  # every open one, by key
_lock = threading.Lock()


class TemplateGone(RuntimeError):
    """The template process stopped answering."""


class Template:
    """A running template: its box, its process and the control socket to it."""

    def __init__(self, folder: str, sandbox: bool, preload: tuple[str, ...], limits: Limits = Limits()):
        self.key = os.urandom(8).hex()
        self.box = KernelBox(folder, sandbox=sandbox, limits=limits,
                             provisioner={"provisioner_name": PROVISIONER, "config": {"template": self.key}})
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:  # -c: the sandbox sees the Python installation, not this package's folder
            source = Path(__file__).with_name("template.py").read_text(encoding="utf-8")
            kernel = [sys.executable, "-P", "-c", source, str(theirs.fileno()), ",".join(preload)]
            command, settings = self.box.launch(kernel, str(self.box.runtime), folder)
            with StderrLog("tests' kernel template") as stderr:
                self.process = subprocess.Popen(command, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                                stdout=subprocess.DEVNULL, stderr=stderr.fd, start_new_session=True,
                                                **settings)
        except BaseException:
            ours.close()
            self.box.close()
            raise
        finally:
            theirs.close()
        log.info("starting the tests' kernels' template for %s (%s, preloading %s)", folder,
                 "sandboxed" if sandbox else "NOT sandboxed", ", ".join(preload) or "nothing")
        self.control = ours
        self._lock = threading.Lock()
        self.ready = False  # its imports run while the grader starts the student's kernel; the first request waits
        _running[self.key] = self

    def _wait_ready(self) -> None:
        self.control.settimeout(START_TIMEOUT)
        ready = self._receive()
        if not ready.get("ready"):
            raise TemplateGone(f"the tests' kernel template did not start: {ready}")
        self.control.settimeout(REPLY_TIMEOUT)
        self.ready = True

    def _receive(self) -> dict:
        try:
            data = self.control.recv(65536)
        except (OSError, socket.timeout) as exc:
            raise TemplateGone(f"the tests' kernel template does not answer ({exc})") from None
        if not data:
            raise TemplateGone(f"the tests' kernel template stopped (exit code {self.process.poll()})")
        return json.loads(data)

    def request(self, message: dict, fds: tuple[int, ...] = ()) -> dict:
        with self._lock:
            if self.control is None:
                raise TemplateGone("the tests' kernel template was closed")
            try:
                if not self.ready:
                    self._wait_ready()
                try:
                    socket.send_fds(self.control, [json.dumps(message).encode()], list(fds))
                except OSError as exc:
                    raise TemplateGone(f"the tests' kernel template is gone ({exc})") from None
                reply = self._receive()
            except TemplateGone:  # a late answer would be taken for the next request's: never ask this one again
                self.control.close()
                self.control = None
                raise
        if "error" in reply:
            raise RuntimeError(f"the tests' kernel template: {reply['error']}")
        return reply

    def alive(self) -> bool:
        """Running and answering: template_for replaces a template that is not."""
        return self.control is not None and self.process.poll() is None

    def fork(self, connection_file: str, channel: int) -> tuple[int, int]:
        """A new kernel on this connection file, holding `channel`: (its pid in the template, the channel's fd
        number in it)."""
        folder = os.path.dirname(connection_file)
        if self.box.uid != os.getuid():  # the kernel runs as the box's uid: its folder and connection file are its own
            os.chown(folder, self.box.uid, self.box.uid)
            os.lchown(connection_file, self.box.uid, self.box.uid)
        reply = self.request({"op": "start", "folder": folder, "connection_file": connection_file}, (channel,))
        return int(reply["pid"]), int(reply["fd"])

    def close(self) -> None:
        control, self.control = getattr(self, "control", None), None
        if control is not None:
            control.close()  # the template kills its kernels and exits
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.box.close()


def template_for(folder: str, sandbox: bool, preload: tuple[str, ...]) -> Template:
    """The running template for this tests' folder (started now if there is none, or if it died). Templates for
    other folders are closed: a grading process grades one assignment at a time, and each template holds a
    sandbox uid and the memory of its imports."""
    key = (os.path.realpath(folder), sandbox, preload)
    with _lock:
        template = _templates.get(key)
        if template is not None and not template.alive():
            log.warning("the tests' kernel template for %s stopped; starting another", folder)
            template.close()
            template = None
        if template is None:
            for other in [k for k in _templates if k != key]:  # a process grades one assignment at a time
                _templates.pop(other).close()
            template = _templates[key] = Template(folder, sandbox, preload)
        return template


def close_all() -> None:
    with _lock:
        while _templates:
            _, template = _templates.popitem()
            try:
                template.close()
            except Exception:  # noqa: BLE001 -- at exit: close the others all the same
                log.exception("closing a tests' kernel template")


atexit.register(close_all)
mp_util.Finalize(None, close_all, exitpriority=10)  # multiprocessing workers end without running atexit


def _by_key(key: str) -> Template:
    template = _running.get(key)
    if template is None or template.control is None:
        raise RuntimeError(f"no tests' kernel template {key!r} is open in this process")
    return template


class ForkedKernel:
    """What LocalProvisioner needs of a subprocess.Popen, for a kernel the template forked."""

    stdin = stdout = stderr = None

    def __init__(self, template: Template, pid: int):
        self.template, self.pid, self.returncode = template, pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                self.returncode = self.template.request({"op": "poll", "pid": self.pid})["code"]
            except TemplateGone:
                self.returncode = -9
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("tests' kernel", timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            self.template.request({"op": "signal", "pid": self.pid, "signal": int(signum)})

    def kill(self) -> None:
        self.send_signal(9)

    def terminate(self) -> None:
        self.send_signal(15)


class TemplateProvisioner(LocalProvisioner):
    """LocalProvisioner, but the kernel is forked by the template named in the kernel spec's config.

    `channel_fd`, once launched, is the number of the descriptor given in `pass_fds` as the kernel sees it."""

    template = Unicode(help="which running Template forks the kernel (set by the kernel spec)")
    channel_fd: int | None = None

    async def launch_kernel(self, cmd: list[str], **kwargs) -> dict:
        template = _by_key(self.template)
        fds = tuple(kwargs.get("pass_fds") or ())
        if len(fds) != 1:
            raise RuntimeError("a tests' kernel is started with exactly one descriptor: its channel")
        pid, self.channel_fd = template.fork(self.parent.connection_file, fds[0])
        self.process = ForkedKernel(template, pid)
        self.pid, self.pgid = pid, None  # signals go to the template's child, never to a group of the grader's
        self.cwd = kwargs.get("cwd", Path.cwd())
        return self.connection_info

    async def cleanup(self, restart: bool = False) -> None:
        """Also remove the kernel's folder (its HOME and its copy of the tests' folder)."""
        await super().cleanup(restart)
        if not restart and self.parent is not None and self.parent.connection_file:
            shutil.rmtree(os.path.dirname(self.parent.connection_file), ignore_errors=True)


class StderrLog:
    """A pipe for a kernel's stderr, read by a thread that sends each line to the logger `coursegrader.kernel`
    (DEBUG: `coursegrader -vv` shows it) and keeps the last `TAIL` bytes for a message when the kernel dies.

    Use: `with StderrLog(name) as stderr:` start the process with `stderr=stderr.fd`; the grader's end of the
    pipe is closed when the block ends, so the thread stops when the kernel (and whatever it started) does."""

    TAIL = 4096

    def __init__(self, name: str):
        self.name = name
        self.tail = b""
        self._read, self.fd = os.pipe()
        threading.Thread(target=self._drain, name=f"stderr of {name}", daemon=True).start()

    def _drain(self) -> None:
        with os.fdopen(self._read, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                self.tail = (self.tail + chunk)[-self.TAIL:]
                if kernel_log.isEnabledFor(logging.DEBUG):
                    for line in chunk.decode(errors="replace").splitlines():
                        kernel_log.debug("%s: %s", self.name, line)

    def __enter__(self) -> StderrLog:
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)

    def last_lines(self, n: int = 5) -> str:
        return "\n".join(self.tail.decode(errors="replace").splitlines()[-n:])


class SandboxProvisioner(LocalProvisioner):
    """LocalProvisioner, but the kernel starts in the KernelBox named in the kernel spec's config (sandbox.py):
    bubblewrap, limits, a scratch HOME and folder; its stdout to nowhere and its stderr to `coursegrader.kernel`."""

    box = Unicode(help="which open KernelBox the kernel starts in (set by the box's kernel spec)")
    stderr: StderrLog | None = None

    async def pre_launch(self, **kwargs) -> dict:
        kwargs = await super().pre_launch(**kwargs)  # the connection file is written, the command formatted
        folder = os.path.dirname(self.parent.connection_file)
        command, settings = sandbox.box(self.box).launch(kwargs.pop("cmd"), folder, kwargs.get("cwd") or os.getcwd())
        return {**kwargs, **settings, "cmd": command}

    async def launch_kernel(self, cmd: list[str], **kwargs) -> dict:
        with StderrLog(f"kernel {os.path.basename(os.path.dirname(self.parent.connection_file))}") as self.stderr:
            return await super().launch_kernel(cmd, **{**kwargs, "stdout": subprocess.DEVNULL,
                                                       "stderr": self.stderr.fd})
