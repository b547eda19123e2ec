"""Grading kernels in a bubblewrap sandbox.

A student's notebook runs with the grader's permissions unless something stops it. Every grading kernel
starts from a `KernelBox` (one per notebook): a folder with a kernel spec that names the sandbox's kernel
provisioner (provisioner.py's `SandboxProvisioner`, jupyter_client's hook for how a kernel process starts).
The provisioner asks the box for the command and the process settings (`KernelBox.launch`), which run the
kernel in `bwrap`:

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
- no kernel keyrings (a seccomp filter: keys outlive the processes that add them);
- an environment cleared down to a short allow-list (a TA's tokens never reach student code);
- limits on address space, processes (threads count) and file size (util-linux's `prlimit`, so no Python
  code runs between fork and exec); run as root, the kernel drops to an unused uid claimed per box
  (SANDBOX_UIDS), so that the process limit holds and leftovers can be killed.

Kernels forked from a template (provisioner.py, template.py) share their template's box: one per grading process,
its kernels one at a time, cleared in between.

The explicit opt-out (`KernelBox(sandbox=False)`, for trusted notebooks where bubblewrap cannot run) keeps
the scratch folders, the environment, the import path and the limits, without bwrap and its uid.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import psutil
from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

KERNEL_NAME = "coursegrader-sandbox"
PROVISIONER = "coursegrader-sandbox"  # the entry point of provisioner.SandboxProvisioner
GiB, MiB = 1024**3, 1024**2
# The uids kernels run as when the grader is root: ones no account uses (Debian leaves 60000-64999 to
# local admins). Each box claims one for its lifetime (a lock file), so that the process limit counts
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

_boxes: weakref.WeakValueDictionary[str, KernelBox] = weakref.WeakValueDictionary()  # open boxes, by key


@dataclass(frozen=True)
class Limits:
    """Per-kernel resource limits (setrlimit). Generous for the course's notebooks, fatal for a bomb."""

    memory_bytes: int = 6 * GiB  # address space: torch maps ~1.5 GiB before it computes anything
    processes: int = 512  # tasks of the sandbox uid, threads included
    file_bytes: int = 256 * MiB  # largest file the kernel may write
    open_files: int = 1024

    def prlimit(self, processes: int) -> list[str]:
        """util-linux's prlimit, setting these limits on the command that follows it."""
        prlimit = shutil.which("prlimit", path="/usr/bin:/bin") or "prlimit"
        return [prlimit, f"--as={self.memory_bytes}", f"--fsize={self.file_bytes}", f"--nofile={self.open_files}",
                f"--nproc={processes}", "--"]


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


def claim_uid() -> tuple[int, FileLock]:
    """A sandbox uid no other box on this machine holds, and the lock that holds it (released by `release()`, or
    when this process ends)."""
    # One folder for the whole machine (never TMPDIR, which differs between graders): /run, where root keeps locks.
    folder = Path("/run" if os.access("/run", os.W_OK) else tempfile.gettempdir()) / "coursegrader-uids"
    folder.mkdir(mode=0o700, exist_ok=True)
    for uid in SANDBOX_UIDS:
        lock = FileLock(folder / str(uid), timeout=0)
        try:
            lock.acquire()
            return uid, lock
        except Timeout:
            continue
    raise RuntimeError(f"all {len(SANDBOX_UIDS)} sandbox uids are held by running graders")


def tasks_of(uid: int) -> int:
    """Tasks (threads included) that `uid` runs now: RLIMIT_NPROC counts them all, not just one sandbox's."""
    count = 0
    for process in psutil.process_iter(["uids", "num_threads"]):
        uids = process.info["uids"]
        if uids is not None and uids.real == uid:
            count += process.info["num_threads"] or 1
    return count


class KernelBox:
    """Where one notebook's kernels start: a private folder holding the kernel spec (which names the sandbox's
    provisioner), a runtime folder with a fresh subfolder per kernel (connection file, IPC sockets), and,
    when the grader is root, a sandbox uid claimed for as long as the box is open.

    `sandbox=False` is the explicit opt-out for trusted notebooks on a machine without bubblewrap: the kernel
    then starts without bwrap, but still with a scratch HOME, TMPDIR and working folder of its own, the cleared
    environment and the limits. It runs as the grader's own user: without bwrap's mounts, another uid may not
    reach the Python installation (under /root, say).

    `provisioner`: the kernel spec's provisioner instead of the sandbox's (the tests' kernels' template,
    whose kernels are forked rather than started: provisioner.py).
    """

    def __init__(self, cwd: str, sandbox: bool = True, limits: Limits = Limits(), provisioner: dict | None = None):
        self.sandbox, self.limits = sandbox, limits
        self.cwd = os.path.realpath(cwd)
        self.key = os.urandom(8).hex()
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
        # -P: the kernel's folder is never on its import path, so a file handed in beside the notebook
        # (ipykernel_launcher.py, numpy.py) cannot stand in for a module the kernel or the notebook imports.
        argv = [sys.executable, "-P", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        provisioner = provisioner or {"provisioner_name": PROVISIONER, "config": {"box": self.key}}
        spec = {"argv": argv, "display_name": "Python 3 (grading)", "language": "python",
                "interrupt_mode": "message", "metadata": {"debugger": False, "kernel_provisioner": provisioner}}
        (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")
        _boxes[self.key] = self

    def connection_file(self) -> str:
        """A connection file in a fresh folder, for the next kernel (its IPC sockets go beside it)."""
        return os.path.join(tempfile.mkdtemp(prefix="k-", dir=self.runtime), "kernel.json")

    def launch(self, kernel: list[str], runtime: str, cwd: str) -> tuple[list[str], dict]:
        """The command line and the Popen keywords (env, cwd, pass_fds) that start `kernel` in this box. The caller
        adds its own descriptors to pass_fds, and closes those of pass_fds once the process has started.

        `runtime` is the kernel's writable folder: a folder `connection_file()` made (or, for a template, the
        box's runtime folder, which will hold its kernels' folders). The kernel gets a fresh HOME and a fresh
        copy of `cwd` (the notebook's folder) in it, made here, after whatever an earlier kernel of this box left
        running is killed."""
        runtime = os.path.realpath(runtime)
        if os.path.realpath(cwd) != self.cwd:
            raise RuntimeError(f"will not run a kernel in {cwd}: this box is for {self.cwd}")
        if runtime != str(self.runtime) and os.path.dirname(runtime) != str(self.runtime):
            raise RuntimeError(f"{runtime} is not a kernel folder of this box ({self.runtime})")
        uid = self.uid if os.geteuid() == 0 and self.sandbox else None
        self._clear(uid)
        scratch, work = scratch_folders(runtime, self.cwd)
        if uid is not None:  # the kernel's folders are its own; nothing else of the grader's is
            give_to(uid, runtime)
            processes = self.limits.processes
        else:  # without a uid of its own, the kernel shares the grader's process count
            processes = self.limits.processes + tasks_of(os.getuid())
        prlimit = self.limits.prlimit(processes)
        if not self.sandbox:  # the opt-out: the kernel works in its copy, with its own HOME and TMPDIR
            return [*prlimit, *kernel], {"env": kernel_environment(scratch), "cwd": work, "pass_fds": ()}
        seccomp = seccomp_fd()
        return ([*prlimit, *bwrap_command(kernel, runtime, self.cwd, work, scratch, uid, seccomp)],
                {"env": {}, "cwd": self.cwd, "pass_fds": () if seccomp is None else (seccomp,)})

    @staticmethod
    def _clear(uid: int | None, wait: float = 10.0) -> None:
        """Kill what an earlier kernel left behind (a fork bomb's children) and wait until it is gone, so that
        the process limit is the new kernel's own. kill(-1) run as `uid` reaches exactly its processes, at once
        (a fork bomb cannot outrun it as it could a loop over the processes)."""
        if uid is None or not tasks_of(uid):
            return
        # the shell's kill: the uid cannot reach our Python, and /bin/sh is everywhere
        subprocess.run(["/bin/sh", "-c", "kill -9 -1"], user=uid, group=uid, extra_groups=[], cwd="/",
                       env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        deadline = time.monotonic() + wait
        while tasks_of(uid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self._folder.cleanup()  # removes links, never follows them
        if self._claim is not None:
            self._claim.release()
            self._claim = None

    def __enter__(self) -> KernelBox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def scratch_folders(runtime: str, cwd: str) -> tuple[str, str]:
    """A fresh HOME (with matplotlib's font cache) and a fresh copy of `cwd`, in `runtime`, for one kernel only
    (random names: nothing can be planted in advance; links are copied as links, never followed)."""
    scratch = tempfile.mkdtemp(prefix="home-", dir=runtime)
    work = tempfile.mkdtemp(prefix="work-", dir=runtime)
    shutil.copytree(cwd, work, symlinks=True, dirs_exist_ok=True)
    os.mkdir(os.path.join(scratch, "matplotlib"))
    cache = Path.home() / ".cache" / "matplotlib"  # a font cache saves every kernel ~1 s of font scanning
    for fontlist in cache.glob("fontlist-*.json"):
        shutil.copy2(fontlist, os.path.join(scratch, "matplotlib", fontlist.name))
    return scratch, work


def box(key: str) -> KernelBox:
    """The open box a kernel spec names (provisioner.SandboxProvisioner)."""
    found = _boxes.get(key)
    if found is None:
        raise RuntimeError(f"no open KernelBox {key!r} in this process")
    return found


# --- the command line: bwrap, its mounts and namespaces ------------------------------------------

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


# --- seccomp: the kernel keyrings are out of reach ---------------------------------------------
# A uid's keyrings (add_key, keyctl) outlive its processes, and a persistent one its sandbox: whatever one
# student's kernel put there, the next kernel of the same uid could read. No kernel needs them, so the three
# system calls fail with EPERM; system calls of another ABI (32-bit, x32) fail with ENOSYS.
KEY_SYSCALLS = {"x86_64": (0xC000003E, (248, 249, 250)), "aarch64": (0xC00000B7, (217, 218, 219))}


def seccomp_program() -> bytes | None:
    """The classic BPF program for bwrap's --seccomp (struct sock_filter[], native byte order), or None on an
    architecture this does not know."""
    import struct
    known = KEY_SYSCALLS.get(os.uname().machine)
    if known is None:
        return None
    arch, (add_key, request_key, keyctl) = known
    load, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | errno
    program = [(load, 0, 0, 4),  # seccomp_data.arch
               (jeq, 0, 7, arch),  # another ABI: to the last instruction
               (load, 0, 0, 0),  # seccomp_data.nr
               (jge, 5, 0, 0x40000000),  # x32's numbers: to the last instruction
               (jeq, 3, 0, add_key), (jeq, 2, 0, request_key), (jeq, 1, 0, keyctl),
               (ret, 0, 0, allow), (ret, 0, 0, eperm), (ret, 0, 0, enosys)]
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in program)


def seccomp_fd() -> int | None:
    """A new descriptor holding seccomp_program() for one bwrap (which reads it to its end), or None. The caller
    passes it to the process (pass_fds) and closes it once the process has started."""
    program = seccomp_program()
    if program is None:
        return None
    fd = os.memfd_create("coursegrader-seccomp", 0)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def bwrap_command(kernel: list[str], runtime: str, cwd: str, work: str, scratch: str, uid: int | None,
                  seccomp: int | None = None) -> list[str]:
    """The full command line: bwrap, its mounts and namespaces, then (as root) setpriv to `uid`, then the kernel.
    `runtime` (the kernel's folder: connection file, sockets) is writable; `work`, a copy of `cwd`, is mounted at
    `cwd`; `seccomp`, a descriptor from seccomp_fd()."""
    pythons = sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix), sys.prefix})
    cmd = [shutil.which(BWRAP) or BWRAP, *_system_binds(), "--perms", "1777", "--size", str(64 * MiB), "--tmpfs", "/tmp",
           *_with_parents([("--ro-bind", p, p) for p in pythons] + [("--bind", runtime, runtime), ("--bind", work, cwd)]),
           "--dev", "/dev", "--mqueue", "/dev/mqueue", "--proc", "/proc",
           *_namespaces(), "--die-with-parent", "--new-session", "--chdir", cwd, "--clearenv"]
    if seccomp is not None:
        cmd += ["--seccomp", str(seccomp)]
    for key, value in kernel_environment(scratch).items():
        cmd += ["--setenv", key, value]
    return [*cmd, "--", *drop_to(uid, kernel)]


def give_to(uid: int, path: str) -> None:
    """chown a folder we just made, and what is in it, without following any link."""
    os.lchown(path, uid, uid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, uid)
