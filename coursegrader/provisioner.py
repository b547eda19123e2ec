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

The students' kernels, when the grader is root and sandboxes them, are forked from a students' template
(`students_template`, provisioner `StudentProvisioner`, entry point `coursegrader-students`): one per grading
process, which has imported ipykernel and the course's numpy, torch and matplotlib once. Its kernels are
different students', one after the other, in one sandbox: before each, the template kills everything the
kernel before left and empties what it could write (template.py), and the grader removes every folder of the
template's but the new kernel's, then copies the student's folder in. The template's own folders are the
grader's (read-only to its uid) once it has imported its modules.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from multiprocessing import util as mp_util
from pathlib import Path

import psutil
from jupyter_client.provisioning import LocalProvisioner
from traitlets import Unicode

from . import sandbox
from .sandbox import KernelBox, Limits

log = logging.getLogger(__name__)
kernel_log = logging.getLogger("coursegrader.kernel")

PROVISIONER = "coursegrader-template"
STUDENTS_PROVISIONER = "coursegrader-students"
START_TIMEOUT = 120.0  # seconds for the template's imports (torch takes a few on a busy machine)
REPLY_TIMEOUT = 30.0
KILL_SECONDS = 1.0  # for a kernel sent SIGKILL to be gone (template.py waits as long for a forked one)
CLEAR_TIMEOUT = 15.0  # the template gives up after 10 s of killing; longer means it is stopped

_templates: dict[tuple, Template] = {}  # template_for's: one per tests' folder
_running: weakref.WeakValueDictionary[str, Template] = weakref.WeakValueDictionary()  # every open one, by key
_lock = threading.Lock()


class TemplateGone(RuntimeError):
    """The template process stopped answering."""


class Template:
    """A running template: its box, its process and the control socket to it.

    `students`: a students' template (sandboxed, as root): its kernels are different students', one at a
    time, each after a `clear`; it works in an empty folder (`folder` None)."""

    def __init__(self, folder: str | None, sandbox: bool, preload: tuple[str, ...], limits: Limits = Limits(),
                 students: bool = False):
        self.key = os.urandom(8).hex()
        self.students = students
        if students and not (sandbox and os.geteuid() == 0):
            raise ValueError("students' kernels are forked only in the sandbox, by a root grader (a uid per template)")
        self._empty = tempfile.TemporaryDirectory(prefix="cg-empty-") if folder is None else None
        folder = self._empty.name if folder is None else folder
        self.box = KernelBox(folder, sandbox=sandbox, limits=limits, provisioner={
            "provisioner_name": STUDENTS_PROVISIONER if students else PROVISIONER, "config": {"template": self.key}})
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:  # -c: the sandbox sees the Python installation, not this package's folder
            source = Path(__file__).with_name("template.py").read_text(encoding="utf-8")
            kernel = [sys.executable, "-P", "-c", source, str(theirs.fileno()), ",".join(preload),
                      *(["--students"] if students else [])]
            command, settings = self.box.launch(kernel, str(self.box.runtime), folder)
            box_fds = settings.pop("pass_fds")
            try:
                with StderrLog("students' kernel template" if students else "tests' kernel template") as stderr:
                    self.process = subprocess.Popen(command, pass_fds=(theirs.fileno(), *box_fds),
                                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                    stderr=stderr.fd, start_new_session=True, **settings)
            finally:
                for fd in box_fds:
                    os.close(fd)
        except BaseException:
            ours.close()
            self.box.close()
            raise
        finally:
            theirs.close()
        self.own = set(os.listdir(self.box.runtime))  # the template's HOME and folder
        log.info("starting the %s kernels' template for %s (%s, preloading %s)", "students'" if students else "tests'",
                 folder, "sandboxed" if sandbox else "NOT sandboxed", ", ".join(preload) or "nothing")
        self.control = ours
        self._lock = threading.Lock()
        self.ready = False  # its imports run while the grader starts the student's kernel; the first request waits
        self.inside: psutil.Process | None = None  # the template process itself, under bwrap
        _running[self.key] = self

    def _wait_ready(self) -> None:
        self.control.settimeout(START_TIMEOUT)
        ready = self._receive()
        if not ready.get("ready"):
            raise TemplateGone(f"the kernel template did not start: {ready}")
        self.control.settimeout(REPLY_TIMEOUT)
        if self.students:
            self._seal()
        self.ready = True

    def _seal(self) -> None:
        """A students' template has imported its modules: its runtime folder, HOME and working folder become the
        grader's, readable but not writable by the sandbox's uid (what its kernels could plant there, a later
        kernel could find; matplotlib keeps the paths it found at import). Also find the template's process."""
        me = os.getuid()
        os.lchown(self.box.runtime, me, me)
        for name in self.own:
            top = os.path.join(self.box.runtime, name)
            sandbox.give_to(me, top)
            for dirpath, _, filenames in os.walk(top):
                os.chmod(dirpath, 0o755)
                for filename in filenames:
                    os.chmod(os.path.join(dirpath, filename), 0o644)
        try:
            pythons = [p for p in psutil.Process(self.process.pid).children(recursive=True)
                       if p.uids().real == self.box.uid]
            self.inside = pythons[-1] if pythons else None
        except psutil.Error:
            self.inside = None

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
        log.debug("template %s: %s -> %s", self.key, message, reply)
        if "error" in reply:
            raise RuntimeError(f"the kernel template: {reply['error']}")
        return reply

    def alive(self) -> bool:
        """Running and answering: template_for replaces a template that is not."""
        return self.control is not None and self.process.poll() is None

    def clear(self, keep: str | None = None) -> int:
        """(A students' template.) Kill every process of the kernel before and empty what it could write (the
        template does), then remove every folder of the runtime but the template's own and `keep` (the grader
        does). The number of processes killed."""
        if self.inside is not None:  # a kernel may have stopped it (SIGSTOP): a stopped template would not answer
            try:
                self.inside.resume()
            except psutil.Error:
                pass
        with self._lock:
            if self.control is not None and self.ready:
                self.control.settimeout(CLEAR_TIMEOUT)
        try:
            killed = int(self.request({"op": "clear"})["killed"])
        finally:
            with self._lock:
                if self.control is not None:
                    self.control.settimeout(REPLY_TIMEOUT)
        keep_names = self.own | ({os.path.basename(keep)} if keep else set())
        for entry in os.scandir(self.box.runtime):
            if entry.name in keep_names:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        if killed:
            log.info("the students' kernel template killed %d processes the kernel before left", killed)
        return killed

    def fork(self, connection_file: str, channel: int, work: str | None = None, home: str | None = None,
             stderr: int | None = None) -> tuple[int, int]:
        """A new kernel on this connection file, holding `channel`: (its pid in the template, the channel's fd
        number in it). `work` and `home`: folders made for it (else it copies the template's folder); `stderr`:
        a descriptor for its stderr."""
        folder = os.path.dirname(connection_file)
        if self.box.uid != os.getuid():  # the kernel runs as the box's uid: its folder and connection file are its own
            sandbox.give_to(self.box.uid, folder)
        request = {"op": "start", "folder": folder, "connection_file": connection_file}
        if work is not None:
            request.update(work=work, home=home)
        reply = self.request(request, (channel,) if stderr is None else (channel, stderr))
        return int(reply["pid"]), int(reply["fd"])

    def close(self) -> None:
        control, self.control = getattr(self, "control", None), None
        if control is not None:
            control.close()  # the template kills its kernels and exits
        if self.inside is not None:  # a stopped template would not
            try:
                self.inside.resume()
            except psutil.Error:
                pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.box.close()
        if self._empty is not None:
            self._empty.cleanup()


def template_for(folder: str | None, sandbox: bool, preload: tuple[str, ...], students: bool = False) -> Template:
    """The running template for this tests' folder, or the students' template (`folder` None), started now if there
    is none or if it died. Other templates of the same kind are closed: a grading process grades one assignment
    at a time, and each template holds a sandbox uid and the memory of its imports."""
    key = (students, folder and os.path.realpath(folder), sandbox, preload)
    with _lock:
        template = _templates.get(key)
        if template is not None and not template.alive():
            log.warning("the %s kernel template stopped; starting another", "students'" if students else "tests'")
            template.close()
            template = None
        if template is None:
            for other in [k for k in _templates if k[0] == students and k != key]:  # one assignment at a time
                _templates.pop(other).close()
            template = _templates[key] = Template(folder, sandbox, preload, students=students)
        return template


def students_template(preload: tuple[str, ...]) -> Template:
    """The students' template, cleared for a new student's kernel: started now if there is none, and replaced if
    it does not answer (the kernel before may have stopped or killed it)."""
    template = template_for(None, True, preload, students=True)
    try:
        template.clear()
    except (TemplateGone, RuntimeError) as exc:  # stopped, killed, or left with something it cannot clear
        log.warning("the students' kernel template could not be cleared (%s); starting another", exc)
        with _lock:
            for key in [k for k, t in _templates.items() if t is template]:
                del _templates[key]
        template.close()
        template = template_for(None, True, preload, students=True)
        template.clear()
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
            raise RuntimeError("a kernel forked from a template is started with exactly one descriptor: its channel")
        pid, self.channel_fd = self._fork(template, fds[0], kwargs.get("cwd") or os.getcwd())
        self.process = ForkedKernel(template, pid)
        self.pid, self.pgid = pid, None  # signals go to the template's child, never to a group of the grader's
        self.cwd = kwargs.get("cwd", Path.cwd())
        return self.connection_info

    def _fork(self, template: Template, channel: int, cwd: str) -> tuple[int, int]:
        """Have the template fork the kernel: (its pid, its channel's descriptor number)."""
        return template.fork(self.parent.connection_file, channel)

    async def cleanup(self, restart: bool = False) -> None:
        """Also remove the kernel's folder (its HOME and its copy of the tests' folder)."""
        await super().cleanup(restart)
        if not restart and self.parent is not None and self.parent.connection_file:
            shutil.rmtree(os.path.dirname(self.parent.connection_file), ignore_errors=True)


class StudentProvisioner(TemplateProvisioner):
    """TemplateProvisioner for a students' template: before the kernel is forked, the template is cleared, and the
    kernel gets a fresh HOME and a fresh copy of the student's folder (made after the clear, so that nothing of
    the kernel before can touch them), and its own stderr, to the logger `coursegrader.kernel`."""

    stderr: StderrLog | None = None

    def _fork(self, template: Template, channel: int, cwd: str) -> tuple[int, int]:
        folder = os.path.dirname(self.parent.connection_file)
        template.clear(keep=folder)
        home, work = sandbox.scratch_folders(folder, cwd)
        with StderrLog(f"kernel {os.path.basename(folder)}") as self.stderr:
            return template.fork(self.parent.connection_file, channel, work, home, self.stderr.fd)

    async def cleanup(self, restart: bool = False) -> None:
        """Also clear the template now: what the kernel left running stops with it, not when the next kernel starts."""
        await super().cleanup(restart)
        if not restart:
            template = _running.get(self.template)
            try:
                if template is not None and template.alive():
                    template.clear()
            except (TemplateGone, RuntimeError) as exc:
                log.warning("could not clear the students' kernel template after a kernel (%s)", exc)


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
    box_fds: tuple[int, ...] = ()

    async def pre_launch(self, **kwargs) -> dict:
        kwargs = await super().pre_launch(**kwargs)  # the connection file is written, the command formatted
        folder = os.path.dirname(self.parent.connection_file)
        command, settings = sandbox.box(self.box).launch(kwargs.pop("cmd"), folder, kwargs.get("cwd") or os.getcwd())
        self.box_fds = settings.pop("pass_fds")
        return {**kwargs, **settings, "cmd": command,
                "pass_fds": (*(kwargs.get("pass_fds") or ()), *self.box_fds)}

    async def kill(self, restart: bool = False) -> None:
        """LocalProvisioner's kill, then a wait of at most KILL_SECONDS for the kernel to be gone: jupyter_client
        looks again only 0.1 s later, which every notebook would pay twice."""
        await super().kill(restart)
        deadline = time.monotonic() + KILL_SECONDS
        while self.process is not None and self.process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.002)

    async def launch_kernel(self, cmd: list[str], **kwargs) -> dict:
        try:
            with StderrLog(f"kernel {os.path.basename(os.path.dirname(self.parent.connection_file))}") as self.stderr:
                return await super().launch_kernel(cmd, **{**kwargs, "stdout": subprocess.DEVNULL,
                                                           "stderr": self.stderr.fd})
        finally:
            box_fds, self.box_fds = self.box_fds, ()
            for fd in box_fds:
                os.close(fd)
