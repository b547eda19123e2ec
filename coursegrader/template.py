"""The tests' kernels start from a template: a process that has imported ipykernel, numpy and torch once.

A tests' kernel runs no student code, but starting one costs about 1.3 s of CPU (Python, ipykernel, numpy,
torch), once per notebook graded. The template pays that once per grading process: it is started in a
KernelBox like any kernel (bubblewrap, its own uid and limits), imports the packages, and then waits on a
control socket. For each notebook the grader asks it for a kernel; it forks, and the child becomes an
ipykernel kernel in a folder of its own (a fresh HOME, and a fresh copy of the tests' folder to work in).
The template runs no code but this file, so every kernel it forks starts as clean as a new process.

The grader's side is `provisioner.py`. This file is run in the sandbox (sandbox.KernelBox.launch) as `python -P -c <this
source> <control fd> <modules to import>`, so it imports nothing from coursegrader.

Requests on the control socket (a SOCK_SEQPACKET socket: one JSON object per message, answered in order):
- {"op": "start", "folder": F, "connection_file": C} with one file descriptor attached (the kernel's end of
  its channel to the student's kernel): fork a kernel; answer {"pid": P, "fd": N}, N being the descriptor's
  number in the kernel;
- {"op": "poll", "pid": P}: {"code": None} while it runs, else its exit code as subprocess reports one;
- {"op": "signal", "pid": P, "signal": S}: send it a signal; {"ok": True}.
When the grader closes the socket, the template kills its kernels and exits.
"""

import importlib
import json
import os
import random
import shutil
import signal
import socket
import sys
import tempfile

MAX_MESSAGE = 65536


def _exit_code(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _die_with_parent() -> None:
    """The kernel gets SIGKILL when the template dies (PR_SET_PDEATHSIG), as bwrap's kernels die with the grader."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _become_kernel(folder: str, connection_file: str) -> None:
    """In the forked child: a folder, HOME and random state of its own, then ipykernel's application."""
    _die_with_parent()
    os.setsid()
    home = tempfile.mkdtemp(prefix="home-", dir=folder)
    work = tempfile.mkdtemp(prefix="work-", dir=folder)
    shutil.copytree(os.getcwd(), work, symlinks=True, dirs_exist_ok=True)
    os.chdir(work)
    fonts = os.environ.get("MPLCONFIGDIR")
    os.environ.update(HOME=home, TMPDIR=home, MPLCONFIGDIR=os.path.join(home, "matplotlib"))
    os.mkdir(os.environ["MPLCONFIGDIR"])
    if fonts and os.path.isdir(fonts):
        for name in os.listdir(fonts):
            if name.startswith("fontlist-"):
                shutil.copy2(os.path.join(fonts, name), os.environ["MPLCONFIGDIR"])
    tempfile.tempdir = None
    random.seed()  # a new process would not share its random state with its siblings
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    app.initialize(["-f", connection_file])
    app.start()


def serve(control: socket.socket) -> None:
    kernels: dict[int, int | None] = {}  # pid -> exit code (None while it runs)

    def reap() -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in kernels:
                kernels[pid] = _exit_code(status)

    while True:
        try:
            data, fds, _, _ = socket.recv_fds(control, MAX_MESSAGE, 1)
        except OSError:
            data, fds = b"", []
        if not data:
            break
        reap()
        try:
            request = json.loads(data)
            op = request.get("op")
            if op == "start":
                if len(fds) != 1:
                    raise ValueError("start needs the kernel's channel")
                pid = os.fork()
                if pid == 0:
                    try:
                        control.close()
                        _become_kernel(str(request["folder"]), str(request["connection_file"]))
                    finally:
                        os._exit(1)
                kernels[pid] = None
                reply = {"pid": pid, "fd": fds[0]}
            elif op == "poll":
                reply = {"code": kernels.get(int(request["pid"]), -signal.SIGKILL)}
            elif op == "signal":
                pid = int(request["pid"])
                if kernels.get(pid, 0) is None:
                    os.kill(pid, int(request["signal"]))
                reply = {"ok": True}
            else:
                raise ValueError(f"unknown request {op!r}")
        except Exception as exc:  # noqa: BLE001 -- the grader gets the reason
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            for fd in fds:
                os.close(fd)
        control.send(json.dumps(reply).encode())
    for pid, code in kernels.items():
        if code is None:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def main(argv: list[str]) -> None:
    control = socket.socket(fileno=int(argv[0]))
    for module in ["ipykernel.kernelapp", *filter(None, argv[1].split(","))]:
        importlib.import_module(module)
    control.send(b'{"ready": true}')
    serve(control)


if __name__ == "__main__":
    main(sys.argv[1:])
