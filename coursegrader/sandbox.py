"""Grading kernels in a bubblewrap sandbox.

A student's notebook runs with the grader's permissions unless something stops it. Every grading kernel
starts from a `KernelBox` (one per notebook): a kernel spec whose command is this module's launcher, which
execs `bwrap`:

- the file system is empty but for read-only system directories, the Python installation and a few
  files of /etc: no course directory, no gradebook, no other student, no home directory;
- the only writable places are fresh folders no other kernel sees: the connection file and IPC sockets
  (one folder per kernel), HOME and TMPDIR (one per kernel), and a private copy of the student's
  autograded folder, mounted where the kernel expects its working directory. The real autograded folder
  is never writable, so nothing a student plants there (a symlink, say) is later written through as root;
- the kernel's folder is not on its import path (`python -P`): a file handed in beside the notebook cannot
  stand in for ipykernel's launcher or for numpy;
- no network (a new network namespace: even loopback is a different one), new PID/IPC/UTS namespaces,
  and the sandbox dies with the grader;
- an environment cleared down to a short allow-list (a TA's tokens never reach student code);
- limits on address space, processes (threads count) and file size; run as root, the kernel drops to
  an unused uid claimed per box (SANDBOX_UIDS), so that the process limit holds and leftovers can be killed.

The explicit opt-out (`KernelBox(sandbox=False)`, for trusted notebooks where bubblewrap cannot run) keeps
the scratch folders, the environment, the import path and the limits, without bwrap and its uid.

This module is the launcher as well (`python -m coursegrader.sandbox ...`), so it imports only the
standard library: it runs once per kernel start.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

KERNEL_NAME = "coursegrader-sandbox"
GiB, MiB = 1024**3, 1024**2
# The uids kernels run as when the grader is root: ones no account uses (Debian leaves 60000-64999 to
# local admins). Each grader claims one for its lifetime (a lock file), so that the process limit counts
# only its own kernel and killing that uid's leftovers never touches another grader's kernel.
SANDBOX_UIDS = range(64900, 65000)

# The bubblewrap command: a site that keeps it elsewhere says where (the tests name one that is not there).
BWRAP = os.environ.get("COURSEGRADER_BWRAP", "bwrap")

# /etc entries a Python kernel with numpy, torch and matplotlib reads; nothing else of /etc is visible.
ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "fonts", "passwd", "group", "nsswitch.conf",
       "hosts", "host.conf", "mime.types", "os-release", "alternatives", "ssl")
# Environment variables that reach the kernel; everything else (tokens, keys, JPY_PARENT_PID) is dropped.
KEEP_ENV = ("NBGRADER_EXECUTION", "LANG", "LC_ALL", "TZ", "PYTHONHASHSEED", "MPLBACKEND",
            "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class Limits:
    """Per-kernel resource limits (setrlimit). Generous for the course's notebooks, fatal for a bomb."""

    memory_bytes: int = 6 * GiB  # address space: torch maps ~1.5 GiB before it computes anything
    processes: int = 512  # tasks of the sandbox uid, threads included
    file_bytes: int = 256 * MiB  # largest file the kernel may write
    open_files: int = 1024


def unavailable_reason() -> str:
    """Why grading kernels cannot be sandboxed on this machine, or '' if they can."""
    if not sys.platform.startswith("linux"):
        return f"bubblewrap needs Linux (this is {sys.platform})"
    bwrap = shutil.which(BWRAP)
    if bwrap is None:
        return "bubblewrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    probe = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", *_namespaces(), "--", "/bin/true"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap does not run here ({exc})"
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return f"bwrap cannot create namespaces here ({why})"
    return ""


def _namespaces() -> list[str]:
    """New namespaces for everything but users; an unprivileged grader needs a user namespace as well."""
    spaces = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    return spaces if os.geteuid() == 0 else ["--unshare-user", *spaces]


def claim_uid() -> tuple[int, object]:
    """A sandbox uid no other grader on this machine holds, and the open lock file that holds it."""
    # One folder for the whole machine (never TMPDIR, which differs between graders): /run, where root keeps locks.
    folder = Path("/run" if os.access("/run", os.W_OK) else tempfile.gettempdir()) / "coursegrader-uids"
    folder.mkdir(mode=0o700, exist_ok=True)
    for uid in SANDBOX_UIDS:
        lock = open(folder / str(uid), "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return uid, lock
        except BlockingIOError:
            lock.close()
    raise RuntimeError(f"all {len(SANDBOX_UIDS)} sandbox uids are held by running graders")


class KernelBox:
    """Where one notebook's kernels start: a private folder holding the kernel spec (whose command is this
    module's launcher), a runtime folder with a fresh subfolder per kernel (connection file, IPC sockets),
    and, when the grader is root, a sandbox uid claimed for as long as the box is open.

    `sandbox=False` is the explicit opt-out for trusted notebooks on a machine without bubblewrap: the same
    launcher then starts the kernel without bwrap, but still with a scratch HOME, TMPDIR and working folder
    of its own, the cleared environment and the limits. It runs as the grader's own user: without bwrap's
    mounts, another uid may not reach the Python installation (under /root, say).
    """

    def __init__(self, cwd: str, sandbox: bool = True, limits: Limits = Limits(), provisioner: dict | None = None):
        self.sandbox = sandbox
        # Short names: the kernel's IPC sockets live here, and a UNIX socket's path has at most 107 bytes.
        parent = tempfile.gettempdir()
        self._folder = tempfile.TemporaryDirectory(prefix="cgk-", dir=parent if len(parent) <= 56 else "/tmp")
        self.workdir = Path(self._folder.name)
        self.uid, self._claim = claim_uid() if os.geteuid() == 0 and sandbox else (os.getuid(), None)
        self.runtime = self.workdir / "run"
        self.runtime.mkdir()
        self.kernels = self.workdir / "kernels"
        spec_dir = self.kernels / KERNEL_NAME
        spec_dir.mkdir(parents=True)
        argv = [sys.executable, "-I", "-m", "coursegrader.sandbox", "--limits", json.dumps(asdict(limits)),
                "--uid", str(self.uid), "--runtime", str(self.runtime), "--cwd", os.path.realpath(cwd),
                *([] if sandbox else ["--no-bwrap"]), "{connection_file}"]
        self.launcher = argv[:-1]  # without the connection file: what starts a template (template.py)
        metadata = {"debugger": False, **({"kernel_provisioner": provisioner} if provisioner else {})}
        spec = {"argv": argv, "display_name": "Python 3 (grading)", "language": "python",
                "interrupt_mode": "message", "metadata": metadata}
        (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")

    def connection_file(self) -> str:
        """A connection file in a fresh folder, for the next kernel (its IPC sockets go beside it)."""
        return os.path.join(tempfile.mkdtemp(prefix="k-", dir=self.runtime), "kernel.json")

    def close(self) -> None:
        self._folder.cleanup()  # removes links, never follows them
        if self._claim is not None:
            self._claim.close()
            self._claim = None

    def __enter__(self) -> KernelBox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- the launcher: runs outside the sandbox, once per kernel, and execs bwrap ------------------------

def _system_binds() -> list[str]:
    args = []
    for top in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for name in ETC:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    return args


def _with_parents(binds: list[tuple[str, str, str]]) -> list[str]:
    """(flag, source, mount point) binds, each after `--dir` for its parents: bwrap would create missing
    parents as 0700, which an unprivileged uid cannot cross."""
    args, made = [], set()
    for flag, source, path in sorted(binds, key=lambda b: Path(b[2]).parts):  # a parent before what it holds
        for parent in reversed(Path(path).parents):
            p = str(parent)
            if p not in made and p not in ("/", "/usr", "/etc", "/tmp"):
                args += ["--dir", p]
                made.add(p)
        args += [flag, source, path]
        made.add(path)
    return args


def kernel_environment(scratch: str) -> dict[str, str]:
    """What the kernel's environment holds: the allow-list, and HOME and TMPDIR in its scratch folder."""
    env = {k: os.environ[k] for k in KEEP_ENV if k in os.environ}
    env.update(HOME=scratch, TMPDIR=scratch, MPLCONFIGDIR=os.path.join(scratch, "matplotlib"),
               PATH=os.pathsep.join([os.path.join(sys.prefix, "bin"), "/usr/bin", "/bin"]))
    env.setdefault("LANG", "C.UTF-8")
    return env


def drop_to(uid: int | None, kernel: list[str]) -> list[str]:
    """As root, the kernel command run as `uid` (no groups, no new privileges); else the command itself."""
    if uid is None:
        return kernel
    setpriv = shutil.which("setpriv", path="/usr/bin:/bin") or "setpriv"
    return [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs", *kernel]


def bwrap_command(kernel: list[str], runtime: str, cwd: str, work: str, scratch: str, uid: int | None) -> list[str]:
    """The full command line: bwrap, its mounts and namespaces, then (as root) setpriv to `uid`, then the kernel.
    `runtime` (the kernel's folder: connection file, sockets) is writable; `work`, a copy of `cwd`, is mounted at
    `cwd`."""
    pythons = sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix), sys.prefix})
    cmd = [shutil.which(BWRAP) or BWRAP, *_system_binds(), "--perms", "1777", "--size", str(64 * MiB), "--tmpfs", "/tmp",
           *_with_parents([("--ro-bind", p, p) for p in pythons] + [("--bind", runtime, runtime), ("--bind", work, cwd)]),
           "--dev", "/dev", "--proc", "/proc",
           *_namespaces(), "--die-with-parent", "--new-session", "--chdir", cwd, "--clearenv"]
    for key, value in kernel_environment(scratch).items():
        cmd += ["--setenv", key, value]
    return [*cmd, "--", *drop_to(uid, kernel)]


def _give_to(uid: int, *paths: str) -> None:
    """chown folders we just made, and what is in them, without following any link."""
    for path in paths:
        os.lchown(path, uid, uid)
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                os.lchown(os.path.join(dirpath, name), uid, uid)


def _apply(limits: Limits) -> None:
    for which, value in ((resource.RLIMIT_AS, limits.memory_bytes), (resource.RLIMIT_FSIZE, limits.file_bytes),
                         (resource.RLIMIT_NOFILE, limits.open_files), (resource.RLIMIT_NPROC, limits.processes)):
        resource.setrlimit(which, (value, value))


def _tasks_of(uid: int) -> int:
    """Tasks (threads included) that `uid` runs now: RLIMIT_NPROC counts them all, not just the sandbox's."""
    count = 0
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and os.stat(f"/proc/{pid}").st_uid == uid:
                count += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            pass
    return count


def _clear(uid: int | None, wait: float = 10.0) -> None:
    """Kill what an earlier kernel left behind (a fork bomb's children) and wait until it is gone, so that
    the process limit is the new kernel's own. As root, kill(-1) from `uid` reaches exactly its processes."""
    if uid is not None:
        child = os.fork()
        if child == 0:
            try:
                os.setgid(uid)
                os.setuid(uid)
                os.kill(-1, signal.SIGKILL)
            except OSError:
                pass
            os._exit(0)
        os.waitpid(child, 0)
    deadline = time.monotonic() + wait
    while uid is not None and _tasks_of(uid) and time.monotonic() < deadline:
        time.sleep(0.05)


def launch(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m coursegrader.sandbox", description="start a grading kernel")
    p.add_argument("--limits", required=True, help="JSON of Limits")
    p.add_argument("--uid", type=int, required=True, help="uid the kernel runs as when the grader is root")
    p.add_argument("--runtime", required=True, help="the box's folder of per-kernel runtime folders")
    p.add_argument("--cwd", required=True, help="the notebook's folder: the kernel must be started there")
    p.add_argument("--no-bwrap", action="store_true", help="the opt-out: no bubblewrap, everything else kept")
    p.add_argument("--template", type=int, metavar="FD", help="start a template (template.py) on this control "
                   "socket instead of a kernel; its kernels' folders are in --runtime")
    p.add_argument("--preload", default="", help="with --template: modules it imports, comma-separated")
    p.add_argument("connection_file", nargs="?")
    args, extra = p.parse_known_args(argv)
    limits = Limits(**json.loads(args.limits))
    cwd = os.path.realpath(os.getcwd())
    if args.template is not None:
        runtime = os.path.realpath(args.runtime)
        connection_file = None
    elif args.connection_file:
        connection_file = args.connection_file
        runtime = os.path.dirname(os.path.abspath(connection_file))
    else:
        sys.exit("coursegrader.sandbox: a connection file or --template is needed")
    # Folders here change owner: refuse anything but the box's own.
    if os.path.islink(runtime) or (connection_file and os.path.dirname(runtime) != os.path.realpath(args.runtime)):
        sys.exit(f"coursegrader.sandbox: connection file {connection_file} is not in a folder of {args.runtime}")
    if cwd != os.path.realpath(args.cwd):
        sys.exit(f"coursegrader.sandbox: will not run a kernel in {cwd} (the notebook's folder is {args.cwd})")
    uid = args.uid if os.geteuid() == 0 and not args.no_bwrap else None
    _clear(uid)
    # Fresh folders for this kernel only (random names: nothing can be planted in advance).
    scratch = tempfile.mkdtemp(prefix="home-", dir=runtime)
    work = tempfile.mkdtemp(prefix="work-", dir=runtime)
    shutil.copytree(cwd, work, symlinks=True, dirs_exist_ok=True)
    os.mkdir(os.path.join(scratch, "matplotlib"))
    cache = Path.home() / ".cache" / "matplotlib"  # a font cache saves every kernel ~1 s of font scanning
    for fontlist in cache.glob("fontlist-*.json"):
        shutil.copy2(fontlist, os.path.join(scratch, "matplotlib", fontlist.name))
    if uid is not None:
        _give_to(uid, scratch, work)
        os.chown(runtime, uid, uid)
        if connection_file:
            os.lchown(connection_file, uid, uid)
    else:
        limits = Limits(limits.memory_bytes, limits.processes + _tasks_of(os.getuid()), limits.file_bytes,
                        limits.open_files)
    # -P: the kernel's folder is never on its import path, so a file handed in beside the notebook
    # (ipykernel_launcher.py, numpy.py) cannot stand in for a module the kernel or the notebook imports.
    if connection_file:
        kernel = [sys.executable, "-P", "-m", "ipykernel_launcher", "-f", connection_file, *extra]
    else:  # -c: the sandbox sees the Python installation, not this package's folder
        source = Path(__file__).with_name("template.py").read_text(encoding="utf-8")
        kernel = [sys.executable, "-P", "-c", source, str(args.template), args.preload]
    _apply(limits)
    null = os.open(os.devnull, os.O_WRONLY)  # ipykernel prints a connection banner to stdout: not for the TA
    os.dup2(null, 1)
    if args.no_bwrap:  # the opt-out: the kernel works in its copy, with its own HOME and TMPDIR
        os.chdir(work)  # (jupyter_client has already given the launcher a session of its own)
        os.execve(kernel[0], kernel, kernel_environment(scratch))
    cmd = bwrap_command(kernel, runtime, cwd, work, scratch, uid)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    launch(sys.argv[1:])
