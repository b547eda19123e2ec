"""The tests' kernels start from a template: a process that has imported ipykernel, numpy and torch once.

A tests' kernel runs no student code, but starting one costs about 1.3 s of CPU (Python, ipykernel, numpy,
torch), once per notebook graded. The template pays that once per grading process: it is started in a
KernelBox like any kernel (bubblewrap, its own uid and limits), imports the packages, and then waits on a
control socket. For each notebook the grader asks it for a kernel; it forks, and the child becomes an
ipykernel kernel in a folder of its own (a fresh HOME, and a fresh copy of the tests' folder to work in).
The template runs no code but this file, so every kernel it forks starts as clean as a new process.

The students' kernels are forked from a template too (`--students`: one template per grading process, its kernels
one at a time, each a different student's). Kernels of different students then share the template's sandbox (its
uid and namespaces) one after the other, so before each fork the template clears what the kernel before left
(`clear`): it kills every other process of its uid (kill(-1) reaches them all at once, however many a fork bomb
makes; the loop waits until /proc shows none), empties what its uid made in /tmp and /dev/mqueue (the sandbox's
only places a kernel can write besides its own folder, which the grader removes) and removes the System V IPC
objects of its namespace (the kernel keyrings are out of every kernel's reach: sandbox.py). It then checks that its
own limits, priority and CPUs are still those it started with (a process of its uid may change them, and its
kernels inherit them). If anything cannot be removed or was changed, the clear fails and the grader starts another
template. The template is not dumpable (PR_SET_DUMPABLE 0), so no kernel can ptrace it or read its memory; it holds
nothing secret (connection files are read by the forked child), and a kernel that stops or kills it stops its own
grading: the grader resumes a stopped template and replaces one that does not answer. A student's kernel gets its
folders from the grader (a copy of the student's folder, made after the clear) and its stderr as a descriptor of
its own.

The grader's side is `provisioner.py`. This file is run in the sandbox (sandbox.KernelBox.launch) as `python -P -c <this
source> <control fd> <modules to import> [--students]`, so it imports nothing from coursegrader.

Requests on the control socket (a SOCK_SEQPACKET socket: one JSON object per message, answered in order):
- {"op": "start", "folder": F, "connection_file": C} with one file descriptor attached (the kernel's end of
  its channel to the other kernel): fork a kernel; answer {"pid": P, "fd": N}, N being the descriptor's
  number in the kernel. With "work" and "home" (folders the grader made in F) the kernel works there instead
  of in a copy of the template's folder; a second descriptor attached becomes the kernel's stderr. A
  students' template forks only right after a `clear`;
- {"op": "clear"}: (students' template) kill every other process of this uid, empty /tmp and /dev/mqueue,
  remove System V IPC objects, check its own limits and priority; {"killed": N};
- {"op": "poll", "pid": P}: {"code": None} while it runs, else its exit code as subprocess reports one;
- {"op": "signal", "pid": P, "signal": S}: send it a signal; {"ok": True}. After SIGKILL the answer comes once the
  kernel is gone (at most KILL_SECONDS later), so that a poll right after it finds the exit code.
When the grader closes the socket, the template kills its kernels and exits.
"""

import importlib
import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import time

MAX_MESSAGE = 65536
# What a kernel imports as it starts (IPKernelApp.initialize: the shell, its history's sqlite3, pdb, the debugger's
# debugpy): imported here once, each kernel's start costs half as much CPU (0.07 s instead of 0.14 s).
KERNEL_MODULES = ("ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell", "ipykernel.debugger",
                  "IPython.core.history", "pdb")
CLEAR_SECONDS = 10.0  # for the processes of the kernel before to be gone
KILL_SECONDS = 1.0  # for a kernel sent SIGKILL to be gone before the answer (provisioner.py waits as long)
PR_SET_PDEATHSIG, PR_SET_DUMPABLE = 1, 4
WRITABLE = ("/tmp", "/dev/mqueue")  # what a kernel in the sandbox can write besides its own folder


def _exit_code(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _prctl(option: int, value: int) -> None:
    import ctypes
    if ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}, {value})")


def _others() -> list[int]:
    """Processes of this uid in this PID namespace, but the template and the namespace's init. (/proc/PID/status,
    not the folder's owner: a process that made itself non-dumpable shows root as the owner of its folder.)"""
    me, uid, found = os.getpid(), str(os.getuid()), []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in (1, me):
            continue
        try:
            with open(f"/proc/{name}/status", encoding="ascii", errors="replace") as status:
                real = next(line.split()[1] for line in status if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue  # gone meanwhile
        if real == uid:
            found.append(int(name))
    return found


def _ours(folder: str) -> list[os.DirEntry]:
    """The entries of `folder` this uid made. Others are bubblewrap's (as root): the folders that lead to a bound
    folder, such as the runtime folder when it lies under /tmp."""
    me = os.getuid()
    return [entry for entry in os.scandir(folder) if entry.stat(follow_symlinks=False).st_uid == me]


def _empty(folder: str) -> None:
    """Remove what this uid made in `folder` (links are removed, never followed; a folder without permissions gets
    them back). Raises if any of it is left: the grader then starts another template (a new /tmp, a new IPC
    namespace)."""
    def retry(function, path, _):
        os.chmod(os.path.dirname(path) or ".", 0o700)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
            shutil.rmtree(path)  # a folder it could not read before
        else:
            function(path)

    for entry in _ours(folder):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, onerror=retry)
        else:
            os.unlink(entry.path)
    left = _ours(folder)
    if left:
        raise RuntimeError(f"{folder} still holds {len(left)} entries")


def _state() -> tuple:
    """What a forked kernel inherits from its template that a process of the same uid can change: resource limits,
    scheduling priority and policy, CPUs, I/O priority."""
    import resource
    limits = tuple(resource.getrlimit(getattr(resource, name)) for name in sorted(dir(resource))
                   if name.startswith("RLIMIT_"))
    try:
        import psutil
        io = tuple(psutil.Process().ionice())
    except Exception:  # noqa: BLE001 -- psutil is the grader's; without it, the I/O priority is not compared
        io = ()
    return (limits, os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0), os.sched_getparam(0).sched_priority,
            tuple(sorted(os.sched_getaffinity(0))), io)


def _remove_ipc() -> None:
    """Remove the System V shared memory, semaphores and message queues of this IPC namespace that this uid may."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    for kind, remove in (("shm", lambda i: libc.shmctl(i, 0, None)), ("sem", lambda i: libc.semctl(i, 0, 0)),
                         ("msg", lambda i: libc.msgctl(i, 0, None))):  # 0: IPC_RMID
        try:
            with open(f"/proc/sysvipc/{kind}", encoding="ascii") as table:
                ids = [int(line.split()[1]) for line in list(table)[1:] if line.strip()]
        except OSError:
            continue
        for ipc_id in ids:
            if remove(ipc_id) != 0 and ctypes.get_errno() not in (22, 43):  # EINVAL, EIDRM: gone already
                raise RuntimeError(f"cannot remove System V {kind} {ipc_id} (errno {ctypes.get_errno()})")


def _clear(reap, started: tuple) -> int:
    """Kill every other process of this uid (the kernel before, whatever it left), then empty what it could write.
    kill(-1) signals every process this one may signal, itself and init excepted; the sandbox's uid is the
    template's alone and its PID namespace holds nothing else. The number of processes killed."""
    killed, deadline = len(_others()), time.monotonic() + CLEAR_SECONDS
    while True:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        reap()
        left = _others()
        if not left:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(left)} processes of the kernel before did not stop")
        time.sleep(0.005)
    for folder in WRITABLE:
        _empty(folder)
    _remove_ipc()
    if _state() != started:  # a hard limit lowered cannot be raised again by this uid: another template is needed
        raise RuntimeError("the template's limits, priority or CPUs were changed by a kernel")
    return killed


def _become_kernel(folder: str, connection_file: str, work: str | None, home: str | None, stderr: int | None) -> None:
    """In the forked child: a folder, HOME and random state of its own, then ipykernel's application."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # dies with the template, as bwrap's kernels die with the grader
    _prctl(PR_SET_DUMPABLE, 1)  # a students' template is not dumpable; its kernels are, as a new process is
    os.setsid()
    if stderr is not None:
        os.dup2(stderr, 2)
        os.close(stderr)
    if work is None:  # a copy of the template's own folder
        home = tempfile.mkdtemp(prefix="home-", dir=folder)
        work = tempfile.mkdtemp(prefix="work-", dir=folder)
        shutil.copytree(os.getcwd(), work, symlinks=True, dirs_exist_ok=True)
    os.chdir(work)
    fonts = os.environ.get("MPLCONFIGDIR")
    os.environ.update(HOME=home, TMPDIR=home, MPLCONFIGDIR=os.path.join(home, "matplotlib"))
    os.makedirs(os.environ["MPLCONFIGDIR"], exist_ok=True)
    if fonts and os.path.isdir(fonts) and not os.listdir(os.environ["MPLCONFIGDIR"]):
        for name in os.listdir(fonts):
            if name.startswith("fontlist-"):
                shutil.copy2(os.path.join(fonts, name), os.environ["MPLCONFIGDIR"])
    tempfile.tempdir = None
    sys.argv = [importlib.util.find_spec("ipykernel_launcher").origin, "-f", connection_file]  # as a new kernel's
    random.seed()  # a new process would not share its random state with its siblings
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    app.initialize(["-f", connection_file])
    app.start()


def _await_exit(pid: int, kernels: dict) -> None:
    """Wait (at most KILL_SECONDS) for a kernel sent SIGKILL to end, and keep its exit code."""
    deadline = time.monotonic() + KILL_SECONDS
    while kernels[pid] is None and time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            kernels[pid] = _exit_code(status)
        else:
            time.sleep(0.001)


def serve(control: socket.socket, students: bool) -> None:
    kernels: dict[int, int | None] = {}  # pid -> exit code (None while it runs)
    cleared = False  # a students' template forks only right after a clear
    started = _state() if students else ()

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
            data, fds, _, _ = socket.recv_fds(control, MAX_MESSAGE, 2)
        except OSError:
            data, fds = b"", []
        if not data:
            break
        reap()
        try:
            request = json.loads(data)
            op = request.get("op")
            if op == "start":
                if len(fds) not in (1, 2):
                    raise ValueError("start needs the kernel's channel (and may give its stderr)")
                if students and not cleared:
                    raise ValueError("a students' template forks a kernel only right after a clear")
                work, home = request.get("work"), request.get("home")
                pid = os.fork()
                if pid == 0:
                    try:
                        control.close()
                        _become_kernel(str(request["folder"]), str(request["connection_file"]),
                                       None if work is None else str(work), None if home is None else str(home),
                                       fds[1] if len(fds) == 2 else None)
                    finally:
                        os._exit(1)
                cleared = False
                kernels[pid] = None
                reply = {"pid": pid, "fd": fds[0]}
            elif op == "clear":
                if not students:
                    raise ValueError("only a students' template clears")
                reply = {"killed": _clear(reap, started)}
                cleared = True
            elif op == "poll":
                reply = {"code": kernels.get(int(request["pid"]), -signal.SIGKILL)}
            elif op == "signal":
                pid = int(request["pid"])
                if kernels.get(pid, 0) is None:
                    os.kill(pid, int(request["signal"]))
                    if int(request["signal"]) == signal.SIGKILL:
                        _await_exit(pid, kernels)
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
    students = argv[2:] == ["--students"]
    if students:
        with open("/proc/1/comm", encoding="ascii") as init:
            if init.read().strip() != "bwrap":  # kill(-1) must reach this sandbox's processes and nothing else
                raise SystemExit("a students' template runs only in its sandbox (bubblewrap's PID namespace)")
        _prctl(PR_SET_DUMPABLE, 0)  # no kernel may ptrace the template or read its memory
    # as ipykernel sets it when a kernel starts, before any import of matplotlib reads it
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    for module in [*KERNEL_MODULES, *filter(None, argv[1].split(","))]:
        importlib.import_module(module)
    control.send(b'{"ready": true}')
    serve(control, students)


if __name__ == "__main__":
    main(sys.argv[1:])
