"""Red team: students' kernels forked one after another from ONE students' template (provisioner.students_template).

Kernel A is student A's code, kernel B the next student's kernel of the same template. Each attack runs in A,
then B (started the way the grader starts it: `students_template()` clears, StudentProvisioner forks) looks for
what A left: processes, files, IPC objects, sockets, keys, a changed template. A test that fails names what leaked.
Model: tests/test_template.py. Only as root with the sandbox (the students' template exists only there).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager

from conftest import needs_sandbox
from coursegrader import provisioner
from coursegrader.sandbox import KERNEL_NAME, KernelBox, Limits

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="students' kernels are forked from a template only as root")
# What the course's notebooks import (execution.STUDENT_PRELOAD without torch, to keep the file fast), sorted as
# GuardedExecute sorts it: one key, so every test shares one template unless it breaks it.
PRELOAD = ("matplotlib", "matplotlib.pyplot", "numpy")
MARK = "cg-redteam-" + os.urandom(4).hex()  # what A plants; B must find it nowhere
TCP_PORTS = (47101, 47102, 47103)  # on the sandbox's own loopback


class Kernel:
    """One student's kernel, started as GuardedExecute starts it: the students' template (cleared), a KernelManager on
    the template box's kernel spec (StudentProvisioner), IPC transport, one channel descriptor, the student's folder."""

    def __init__(self, folder: Path):
        self.template = provisioner.students_template(PRELOAD)
        self.end, theirs = socket.socketpair()
        self.km = KernelManager(kernel_name=KERNEL_NAME,
                                kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(self.template.box.kernels)]))
        self.km.transport = "ipc"
        self.km.connection_file = self.template.box.connection_file()
        self.folder = os.path.dirname(self.km.connection_file)
        try:
            self.km.start_kernel(pass_fds=(theirs.fileno(),), cwd=str(folder))
        finally:
            theirs.close()
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 60) -> dict:
        """Run `code`, which prints one JSON object on its last line of stdout; that object."""
        out, errors = [], []

        def hook(msg):
            if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                errors.append("\n".join(msg["content"]["traceback"][-3:]))

        self.kc.execute_interactive(code, timeout=timeout, output_hook=hook)
        assert not errors, f"the probe itself failed: {errors}"
        return json.loads("".join(out).strip().splitlines()[-1])

    def outputs(self, code: str) -> list[tuple[str, list[str]]]:
        found = []

        def hook(msg):
            if msg["msg_type"] in ("display_data", "execute_result", "error"):
                found.append((msg["msg_type"], sorted(msg["content"].get("data", {}))))
        self.kc.execute_interactive(code, timeout=60, output_hook=hook)
        return found

    def stop(self) -> None:
        self.kc.stop_channels()
        try:
            self.km.shutdown_kernel(now=True)
        finally:
            self.end.close()


def student_folder(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "answers.txt").write_text(f"{name}'s answers")
    return folder


@pytest.fixture
def fresh_template():
    """For an attack that may break the template: whatever it did, the next test starts from a new one."""
    yield
    provisioner.close_all()


def clear_keyrings(uid: int) -> None:
    """The kernel keyrings of a sandbox uid outlive every process (test_the_kernel_keyring_carries_nothing_to_the_
    next_kernel): empty them, so that nothing of this file stays on the machine."""
    code = ("import ctypes; l = ctypes.CDLL(None); l.syscall.restype = ctypes.c_long\n"
            "k = lambda *a: l.syscall(250, *map(ctypes.c_long, a))\n"
            "k(5, -4, 0x1f3f0000); k(7, -4); k(7, k(22, -1, -2))")  # SETPERM as made, CLEAR, CLEAR the persistent one
    subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", sys.executable, "-P", "-c", code],
                   cwd="/", check=False, capture_output=True)


# --- what A does -------------------------------------------------------------------------------------------------

ATTACK = r'''
import ctypes, errno, json, os, signal, socket, subprocess, sys, time
MARK, PORTS = %(mark)r, %(ports)r
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
done = {}

def attempt(name, call):
    try:
        done[name] = call() or "ok"
    except OSError as exc:
        done[name] = f"{type(exc).__name__}: {exc.strerror}"

def spawn(command):  # sh forks a subshell and exits: the subshell is orphaned (a double fork)
    subprocess.run(["/bin/sh", "-c", f"({command}) >/dev/null 2>&1 </dev/null &"], check=True)

# lingering processes
spawn("setsid sleep 1001")
spawn("setsid sh -c 'kill -STOP $$; sleep 1002'")
spawn(f"setsid {sys.executable} -P -c 'import ctypes, time; ctypes.CDLL(None).prctl(4, 0, 0, 0, 0); time.sleep(1003)'")
spawn("setsid unshare -Ur sleep 1004")
spawn("setsid unshare -Urpf sleep 1005")
spawn("b(){ if [ $1 -gt 0 ]; then (b $(($1-1)) &); (b $(($1-1)) &); fi; exec sleep 1006; }; b 5")  # 63 sleepers
spawn(f"setsid {sys.executable} -P -c 'import socket, time; s = socket.socket(); "
      f"s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((\"127.0.0.1\", {PORTS[2]})); "
      "s.listen(); time.sleep(1007)'")

# files where a kernel of the sandbox may write, and where it should not be able to
def plant(path):
    with open(path, "w") as f:
        f.write(MARK)
cwd = os.getcwd()
runtime = os.path.dirname(os.path.dirname(cwd))
import matplotlib
attempt("tmp", lambda: plant(f"/tmp/{MARK}"))
attempt("tmp_hidden", lambda: (os.makedirs("/tmp/.hidden/deeper"), plant(f"/tmp/.hidden/deeper/{MARK}")) and None)
attempt("tmp_fifo", lambda: os.mkfifo(f"/tmp/{MARK}.fifo"))
def mqueue():
    libc.mq_open.restype = ctypes.c_int
    q = libc.mq_open(f"/{MARK}".encode(), 0o101, 0o600, None)  # O_CREAT | O_WRONLY
    if q < 0 or libc.mq_send(q, MARK.encode(), len(MARK), 0) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
attempt("mqueue", mqueue)
attempt("dev_shm", lambda: plant(f"/dev/shm/{MARK}"))
attempt("runtime", lambda: plant(os.path.join(runtime, MARK)))
theirs = [os.path.join(runtime, n) for n in os.listdir(runtime) if not cwd.startswith(os.path.join(runtime, n) + "/")]
for n, folder in enumerate(theirs):  # the template's HOME and folder
    attempt(f"template_folder_{n}", lambda: plant(os.path.join(folder, MARK)))
attempt("mpl_configdir", lambda: plant(os.path.join(matplotlib.get_configdir(), "matplotlibrc")))
attempt("mpl_cachedir", lambda: plant(os.path.join(matplotlib.get_cachedir(), MARK)))
attempt("own_home", lambda: plant(os.path.join(os.environ["HOME"], MARK)))
done["own_folder"] = os.path.dirname(cwd)

# System V IPC (key 0xC0DE5) and a listening socket of the kernel itself, on loopback and abstract
KEY = 0xC0DE5
def shm():
    i = libc.shmget(KEY, 4096, 0o1600)  # IPC_CREAT | 0600
    if i < 0: raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    libc.shmat.restype = ctypes.c_void_p
    a = libc.shmat(i, None, 0)
    ctypes.memmove(a, MARK.encode(), len(MARK))
    return f"id {i}"
attempt("sysv_shm", shm)
attempt("sysv_sem", lambda: "id %%d" %% libc.semget(KEY, 1, 0o1600))
attempt("sysv_msg", lambda: "id %%d" %% libc.msgget(KEY, 0o1600))
listeners = []
def listen(address, family=socket.AF_INET):
    s = socket.socket(family)
    s.bind(address)
    s.listen()
    listeners.append(s)
attempt("tcp", lambda: listen(("127.0.0.1", PORTS[0])))
attempt("abstract", lambda: listen("\0" + MARK, socket.AF_UNIX))
def in_flight():  # a listening socket kept only by a message in flight on a unix socket that holds itself
    s = socket.socket()
    s.bind(("127.0.0.1", PORTS[1]))
    s.listen()
    a, b = socket.socketpair()
    socket.send_fds(a, [b"x"], [s.fileno(), b.fileno(), a.fileno()])
    for x in (s, a, b):
        x.close()
attempt("tcp_in_flight", in_flight)

# keys in the uid's kernel keyrings: the user keyring (made read-only to the uid: KEYCTL_CLEAR then fails), and the
# uid's persistent keyring (KEYCTL_GET_PERSISTENT, linked into this process's keyring), which no one clears
if os.uname().machine == "x86_64":
    def keyctl(*args):
        return libc.syscall(250, *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    done["keyring_user"] = libc.syscall(248, b"user", (MARK + "-user").encode(), MARK.encode(), len(MARK),
                                        ctypes.c_long(-4))
    keyctl(8, -4, -2)  # KEYCTL_LINK the user keyring into our process keyring: we possess the key, may set its rights
    done["keyring_user_key_readable"] = keyctl(5, done["keyring_user"], 0x3f3f0000)  # KEYCTL_SETPERM: the uid may read
    done["keyring_user_readonly"] = keyctl(5, -4, 0x3b3b0000)  # KEYCTL_SETPERM: every right on the keyring but write
    persistent = keyctl(22, -1, -2)  # KEYCTL_GET_PERSISTENT of our uid, linked into the process keyring
    done["keyring_persistent"] = libc.syscall(248, b"user", (MARK + "-persistent").encode(), MARK.encode(), len(MARK),
                                              ctypes.c_long(persistent)) if persistent > 0 else persistent

# the template (our parent): its memory, environment, descriptors; ptrace; process_vm_readv
pp = os.getppid()
for name in ("environ", "mem", "maps", "auxv", "stack"):
    attempt(f"proc_{name}", lambda: open(f"/proc/{pp}/{name}", "rb").read(64) and "READ")
attempt("proc_fd", lambda: os.listdir(f"/proc/{pp}/fd") and "READ")
attempt("proc_cwd", lambda: os.listdir(f"/proc/{pp}/cwd") and "READ")
attempt("proc_oom_score_adj", lambda: open(f"/proc/{pp}/oom_score_adj", "w").write("1000") and "WRITTEN")
def ptrace(request):
    r = libc.ptrace(request, pp, None, None)
    return "ATTACHED" if r == 0 else f"errno {ctypes.get_errno()}"
done["ptrace_attach"] = ptrace(16)
done["ptrace_seize"] = ptrace(0x4206)
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
buf = ctypes.create_string_buffer(64)
local, remote = iovec(ctypes.addressof(buf), 64), iovec(id(sys), 64)  # the template has `sys` where we do
libc.process_vm_readv.restype = ctypes.c_ssize_t
r = libc.process_vm_readv(pp, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
done["process_vm_readv"] = "READ" if r > 0 else f"errno {ctypes.get_errno()}"

# fill /tmp last (64 MiB tmpfs)
def fill():
    n = 0
    with open(f"/tmp/{MARK}.fill", "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20)); f.flush(); n += 1
        except OSError:
            pass
    return n
done["tmp_filled_mib"] = fill()
time.sleep(0.5)
me = str(os.getuid())
def mine(pid):
    try:
        return next(l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("Uid:")) == me
    except (OSError, StopIteration):
        return False
cmdlines = [open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode()
            for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, pp, os.getpid()) and mine(p)]
done["processes"] = len(cmdlines)
done["sleepers"] = sorted({n for c in cmdlines for n in map(str, range(1001, 1008)) if n in c})
print(json.dumps(done))
'''

# --- what B looks for ----------------------------------------------------------------------------------------------

LOOK = r'''
import ctypes, json, os, socket, subprocess
MARK, PORTS, A_FOLDER = %(mark_head)r + %(mark_tail)r, %(ports)r, %(a_folder)r  # never whole in B's history
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
seen = {}
me, pp = str(os.getuid()), os.getppid()
def mine(pid):
    try:
        return next(l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("Uid:")) == me
    except (OSError, StopIteration):
        return False
seen["processes"] = [open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode()[:60]
                     for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, pp, os.getpid()) and mine(p)]
cwd = os.getcwd()
runtime = os.path.dirname(os.path.dirname(cwd))
found = []
for top in ("/tmp", "/dev/mqueue", "/dev/shm", runtime, os.environ["HOME"]):
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if MARK in name:
                found.append(path)
            elif os.path.isfile(path) and not os.path.islink(path):
                try:
                    with open(path, "rb") as f:
                        if MARK.encode() in f.read(1 << 20):
                            found.append(path)
                except OSError:
                    pass
seen["files"] = found
# what a kernel of this uid made in /tmp (bubblewrap's own folders, as root, lead to the runtime folder when TMPDIR
# lies under /tmp, as in CI: they are there for every kernel)
seen["tmp"] = [e.name for e in os.scandir("/tmp") if e.stat(follow_symlinks=False).st_uid == os.getuid()]
seen["mqueue"] = os.listdir("/dev/mqueue")
seen["a_folder_exists"] = os.path.exists(A_FOLDER)
try:
    with open("/tmp/b-needs-room", "wb") as f:
        f.write(b"\0" * (16 << 20))
    seen["tmp_write_16mib"] = "ok"
except OSError as exc:
    seen["tmp_write_16mib"] = str(exc)
finally:
    if os.path.exists("/tmp/b-needs-room"):
        os.unlink("/tmp/b-needs-room")
seen["sysv"] = {kind: [l.split()[:2] for l in open(f"/proc/sysvipc/{kind}").read().splitlines()[1:]]
                for kind in ("shm", "sem", "msg")}
seen["sysv_key"] = [libc.shmget(0xC0DE5, 0, 0), libc.semget(0xC0DE5, 0, 0), libc.msgget(0xC0DE5, 0)]
seen["sockets"] = {}
for name, address, family in [("tcp", ("127.0.0.1", PORTS[0]), socket.AF_INET),
                              ("tcp_in_flight", ("127.0.0.1", PORTS[1]), socket.AF_INET),
                              ("tcp_of_a_lingering_process", ("127.0.0.1", PORTS[2]), socket.AF_INET),
                              ("abstract", "\0" + MARK, socket.AF_UNIX)]:
    s = socket.socket(family)
    s.settimeout(2)
    try:
        s.connect(address)
        seen["sockets"][name] = "CONNECTED"
    except OSError as exc:
        seen["sockets"][name] = type(exc).__name__
    s.close()
if os.uname().machine == "x86_64":
    def keyctl(*args):
        return libc.syscall(250, *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    def read(keyring, which):
        key = keyctl(10, keyring, b"user", (MARK + which).encode(), 0)  # KEYCTL_SEARCH
        buf = ctypes.create_string_buffer(256)
        n = keyctl(11, key, buf, 256) if key > 0 else -1  # KEYCTL_READ
        if n > 0:
            return buf.raw[:n].decode(errors="replace")
        n = keyctl(6, key, buf, 256) if key > 0 else -1  # KEYCTL_DESCRIBE: "type;uid;gid;perm;description"
        return f"(a key described as) {buf.raw[:n - 1].decode(errors='replace')}" if n > 0 else None
    persistent = keyctl(22, -1, -2)
    seen["keyring"] = {"user": read(-4, "-user"),
                       "persistent": read(persistent, "-persistent") if persistent > 0 else None}
    keyctl(5, -4, 0x1f3f0000)  # leave nothing on the machine: the user keyring as the kernel makes it, and empty
    for ring in (-4, persistent):
        keyctl(7, ring)
print(json.dumps(seen))
'''


@pytest.fixture(scope="module")
def leftovers(tmp_path_factory):
    """A runs every planting attack at once and is shut down; B, the next kernel of the same template, looks.
    (what A did, what B saw)"""
    tmp = tmp_path_factory.mktemp("leftovers")
    a = Kernel(student_folder(tmp, "alice"))
    uid = a.template.box.uid
    try:
        did = a.run(ATTACK % {"mark": MARK, "ports": TCP_PORTS}, timeout=120)
        a_folder = a.folder
    finally:
        a.stop()
    b = Kernel(student_folder(tmp, "bob"))
    try:
        saw = b.run(LOOK % {"mark_head": MARK[:5], "mark_tail": MARK[5:], "ports": TCP_PORTS, "a_folder": a_folder})
        saw["a_folder_exists_for_the_grader"] = os.path.exists(a_folder)
        saw["same_template"] = b.template is a.template
    finally:
        b.stop()
        clear_keyrings(uid)
    return did, saw


@needs_sandbox
@as_root
def test_b_runs_in_the_same_template_as_a(leftovers):
    did, saw = leftovers
    assert saw["same_template"], "the attacks are meant for kernels of ONE template: A did not break it"


@needs_sandbox
@as_root
def test_no_process_of_the_kernel_before_survives(leftovers):
    did, saw = leftovers
    assert did["processes"] >= 63 + 6, f"A's lingerers did not all start: {did['processes']}, {did['sleepers']}"
    assert did["sleepers"] == [str(n) for n in range(1001, 1008)], f"not all of A's lingerers run: {did['sleepers']}"
    assert saw["processes"] == [], (
        f"processes of A (double-forked, self-stopped, non-dumpable, in a user/PID namespace, a fork bomb) run beside "
        f"B: {saw['processes'][:10]}")


@needs_sandbox
@as_root
def test_nothing_planted_in_tmp_mqueue_or_folders_reaches_the_next_kernel(leftovers):
    did, saw = leftovers
    assert did["tmp"] == "ok" and did["mqueue"] == "ok", f"A could not even plant: {did}"
    assert saw["files"] == [], f"B finds what A planted: {saw['files']}"
    assert saw["tmp"] == [] and saw["mqueue"] == [], f"/tmp or /dev/mqueue not empty: {saw['tmp']}, {saw['mqueue']}"


@needs_sandbox
@as_root
def test_the_template_and_runtime_folders_are_not_writable_by_a_kernel(leftovers):
    did, saw = leftovers
    written = {k: v for k, v in did.items() if k.startswith(("runtime", "template_folder", "mpl_", "dev_shm"))
               and v == "ok"}
    assert not written, f"A wrote where B's kernel (or the template it starts from) reads: {written}"
    assert did["own_home"] == "ok", "A's own HOME must stay writable"


@needs_sandbox
@as_root
def test_the_folder_of_the_kernel_before_is_gone(leftovers):
    did, saw = leftovers
    assert not saw["a_folder_exists"] and not saw["a_folder_exists_for_the_grader"], (
        f"A's folder {did['own_folder']} (its HOME and copy of its notebook folder) still exists when B runs")


@needs_sandbox
@as_root
def test_a_full_tmp_is_emptied_for_the_next_kernel(leftovers):
    did, saw = leftovers
    assert did["tmp_filled_mib"] >= 32, f"A could not fill /tmp ({did['tmp_filled_mib']} MiB)"
    assert saw["tmp_write_16mib"] == "ok", f"B cannot write 16 MiB in /tmp after A filled it: {saw['tmp_write_16mib']}"


@needs_sandbox
@as_root
def test_no_system_v_ipc_object_survives(leftovers):
    did, saw = leftovers
    assert all(did[k].startswith("id ") and did[k] != "id -1" for k in ("sysv_shm", "sysv_sem", "sysv_msg")), did
    assert saw["sysv"] == {"shm": [], "sem": [], "msg": []}, f"A's System V IPC objects are visible to B: {saw['sysv']}"
    assert saw["sysv_key"] == [-1, -1, -1], f"B opens A's System V objects by key: {saw['sysv_key']}"


@needs_sandbox
@as_root
def test_no_listening_socket_of_the_kernel_before_answers(leftovers):
    did, saw = leftovers
    assert did["tcp"] == did["abstract"] == did["tcp_in_flight"] == "ok", did
    connected = [name for name, result in saw["sockets"].items() if result == "CONNECTED"]
    assert not connected, f"B connects to sockets A left listening: {connected}"


@needs_sandbox
@as_root
def test_the_kernel_before_can_neither_read_nor_trace_the_template(leftovers):
    did, saw = leftovers
    reached = {k: v for k, v in did.items() if k.startswith(("proc_", "ptrace_", "process_vm"))
               and ("READ" in v or "ATTACHED" in v or "WRITTEN" in v or v == "ok")}
    assert not reached, f"A reached the template's memory, environment, descriptors or settings: {reached}"


@needs_sandbox
@as_root
@pytest.mark.skipif(platform.machine() != "x86_64", reason="the probe calls add_key/request_key by x86_64 number")
def test_the_kernel_keyring_carries_nothing_to_the_next_kernel(leftovers):
    """The kernel keyrings (add_key/request_key/keyctl) belong to a uid, not to a process or a namespace: they
    outlive every process the clear kills, and every template (a uid is reused); a kernel can make its user keyring
    read-only (then KEYCTL_CLEAR fails) or use the uid's persistent keyring. So no kernel may reach them: the
    sandbox's seccomp filter (sandbox.seccomp_program) fails all three system calls."""
    did, saw = leftovers
    reached = {name: did[name] for name in ("keyring_user", "keyring_user_key_readable", "keyring_user_readonly",
                                            "keyring_persistent") if did[name] != -1}
    assert not reached, f"A's kernel used the kernel keyrings (the seccomp filter is missing): {reached}"
    leaked = {ring: value for ring, value in saw["keyring"].items() if value is not None}
    assert not leaked, f"B reads keys A left in its uid's keyrings: {leaked}"


# --- attacks on the template itself ----------------------------------------------------------------------------------

TAMPER = r'''
import json, os, resource
pp = os.getppid()
done = {}
for name, change in [
        ("RLIMIT_NOFILE", lambda: resource.prlimit(pp, resource.RLIMIT_NOFILE, (1000, 1000))),
        ("RLIMIT_FSIZE", lambda: resource.prlimit(pp, resource.RLIMIT_FSIZE, (100 << 20, 100 << 20))),
        ("RLIMIT_AS", lambda: resource.prlimit(pp, resource.RLIMIT_AS, (5 << 30, 5 << 30))),
        ("RLIMIT_CPU", lambda: resource.prlimit(pp, resource.RLIMIT_CPU, (3600, 3600))),
        ("nice", lambda: os.setpriority(os.PRIO_PROCESS, pp, 2)),
        ("scheduler", lambda: os.sched_setscheduler(pp, os.SCHED_BATCH, os.sched_param(0))),
        ("affinity", lambda: os.sched_setaffinity(pp, {min(os.sched_getaffinity(pp))}))]:
    try:
        change()
        done[name] = "changed"
    except OSError as exc:
        done[name] = exc.strerror
print(json.dumps(done))
'''

SETTINGS = r'''
import json, os, resource
print(json.dumps({"RLIMIT_NOFILE": resource.getrlimit(resource.RLIMIT_NOFILE),
                  "RLIMIT_FSIZE": resource.getrlimit(resource.RLIMIT_FSIZE),
                  "RLIMIT_AS": resource.getrlimit(resource.RLIMIT_AS),
                  "RLIMIT_CPU": resource.getrlimit(resource.RLIMIT_CPU),
                  "nice": os.getpriority(os.PRIO_PROCESS, 0), "scheduler": os.sched_getscheduler(0),
                  "affinity": sorted(os.sched_getaffinity(0))}))
'''


@needs_sandbox
@as_root
def test_the_kernel_before_cannot_change_the_limits_priority_or_cpus_the_next_kernel_inherits(tmp_path, fresh_template):
    """Not dumpable stops ptrace and /proc/PID/mem, not prlimit(2), setpriority(2), sched_setscheduler(2) or
    sched_setaffinity(2): a process may change those of any process of its own uid, and a fork inherits them."""
    limits = Limits()
    a = Kernel(student_folder(tmp_path, "alice"))
    try:
        before = a.run(SETTINGS)
        did = a.run(TAMPER)
    finally:
        a.stop()
    b = Kernel(student_folder(tmp_path, "bob"))
    try:
        after = b.run(SETTINGS)
    finally:
        b.stop()
    assert before["RLIMIT_NOFILE"] == [limits.open_files] * 2, before
    assert before["RLIMIT_AS"] == [limits.memory_bytes] * 2, before
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert not changed, (
        f"A changed its template ({did}); B, forked from it, starts with A's settings (before, after): {changed}")


@needs_sandbox
@as_root
@pytest.mark.parametrize("signum", [signal.SIGSTOP, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_a_kernel_that_signals_its_template_costs_only_its_own_grading(tmp_path, signum, fresh_template):
    a = Kernel(student_folder(tmp_path, "alice"))
    try:
        a.kc.execute(f"import os; os.kill(os.getppid(), {int(signum)})")
        time.sleep(0.5)
        b = Kernel(student_folder(tmp_path, "bob"))  # students_template(), as the grader calls it for each notebook
        try:
            seen = b.run("import json, os, numpy; print(json.dumps([int(numpy.arange(5).sum()), "
                         "open('answers.txt').read(), os.getppid() > 1]))")
        finally:
            b.stop()
    finally:
        a.stop()
    assert seen == [10, "bob's answers", True], f"after A sent {signum.name} to the template, B runs wrongly: {seen}"


@needs_sandbox
@as_root
def test_a_process_that_keeps_stopping_the_template_costs_the_next_student_nothing(tmp_path, fresh_template):
    """A leaves a process that waits until A's kernel is gone (the grader has its exit code, so A's shutdown never
    waits on the template), then stops the template again and again. With one SIGCONT before B's clear only, the
    template was stopped again before it killed anything: B waited CLEAR_TIMEOUT and a new template. The clear that
    StudentProvisioner.cleanup now runs right after A's kernel kills the stopper first."""
    a = Kernel(student_folder(tmp_path, "alice"))
    try:
        a.run("import json, os, subprocess\n"
              "script = (f'while kill -0 {os.getpid()} 2>/dev/null; do sleep 0.05; done; sleep 0.2; '\n"
              "          f'while kill -STOP {os.getppid()}; do :; done')\n"
              "subprocess.run(['/bin/sh', '-c', f\"(setsid sh -c '{script}' >/dev/null 2>&1 </dev/null &)\"])\n"
              "print('{}')")
    finally:
        a.stop()
    time.sleep(0.5)
    started = time.monotonic()
    b = Kernel(student_folder(tmp_path, "bob"))  # students_template(), as the grader calls it for each notebook
    try:
        seen = b.run("import json; print(json.dumps(open('answers.txt').read()))")
    finally:
        b.stop()
    took = time.monotonic() - started
    assert seen == "bob's answers", seen
    assert took < 8, (f"a process A left stops the template after the grader resumes it: B's kernel took {took:.1f} s "
                      f"to start (the clear timed out after {provisioner.CLEAR_TIMEOUT:.0f} s, the template was "
                      "replaced)")


@needs_sandbox
@as_root
@pytest.mark.parametrize("trap", ["chmod", "deep"])
def test_what_a_kernel_leaves_in_tmp_never_stops_the_next_students(tmp_path, trap, fresh_template):
    """The clear empties /tmp as the template's uid. A folder A made unreadable (mode 0), or one too deep for
    shutil.rmtree's recursion, makes the clear fail: B must still be graded (the grader replaces such a template)."""
    plant = {"chmod": "import os; os.makedirs('/tmp/trap/inner'); open('/tmp/trap/inner/f', 'w').close(); "
                      "os.chmod('/tmp/trap/inner', 0); os.chmod('/tmp/trap', 0)",
             "deep": "import os\nos.chdir('/tmp')\nfor _ in range(1200):\n    os.mkdir('d'); os.chdir('d')"}[trap]
    a = Kernel(student_folder(tmp_path, "alice"))
    try:
        a.run(plant + "\nprint('{}')")
    finally:
        a.stop()
    failures = []
    for student in ("bob", "carol"):
        try:
            b = Kernel(student_folder(tmp_path, student))
        except Exception as exc:  # noqa: BLE001 -- what the grader would see
            failures.append(f"{student}: {type(exc).__name__}: {exc}")
            continue
        try:
            seen = b.run("import json, os; print(json.dumps([open('answers.txt').read(), [e.name for e in "
                         "os.scandir('/tmp') if e.stat(follow_symlinks=False).st_uid == os.getuid()]]))")
            assert seen == [f"{student}'s answers", []], f"{student}'s kernel after A's /tmp trap: {seen}"
        finally:
            b.stop()
    assert not failures, f"after A's /tmp trap ({trap}) the next students' kernels do not start: {failures}"


# --- an honest notebook --------------------------------------------------------------------------------------------

HONEST = r'''
import json, os, sys, tempfile
import matplotlib
print(json.dumps({"argv": sys.argv, "cwd_files": sorted(os.listdir()), "cwd_writable": os.access(".", os.W_OK),
                  "home_writable": os.access(os.environ["HOME"], os.W_OK),
                  "home_is_cwd": os.environ["HOME"] == os.getcwd(),
                  "tmp_is_home": tempfile.gettempdir() == os.environ["HOME"],
                  "mplconfigdir_in_home": os.environ["MPLCONFIGDIR"].startswith(os.environ["HOME"] + "/"),
                  "env": sorted(os.environ), "path": sys.path, "flags": list(sys.flags),
                  "backend": matplotlib.get_backend(), "answers": open("answers.txt").read()}))
'''
FIGURES = ["import matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.show()", "plt.figure(); plt.plot([2, 1]);"]


def honest_facts(kernel) -> tuple[dict, list]:
    facts = kernel.run(HONEST)
    facts["connection_file"] = facts["argv"][-1] == kernel.km.connection_file
    facts["argv"] = [os.path.basename(facts["argv"][0]), *facts["argv"][1:-1]]
    return facts, [kernel.outputs(code) for code in FIGURES]


@needs_sandbox
@as_root
def test_a_forked_kernel_looks_like_a_fresh_one_and_shows_figures_inline(tmp_path):
    folder = student_folder(tmp_path, "honest")
    forked = Kernel(folder)
    try:
        facts, figures = honest_facts(forked)
    finally:
        forked.stop()
    with KernelBox(str(folder)) as box:  # the fresh kernel: a sandboxed process of its own
        fresh = Kernel.__new__(Kernel)
        fresh.end, fresh.folder = socket.socket(), None
        fresh.km = KernelManager(kernel_name=KERNEL_NAME,
                                 kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(box.kernels)]))
        fresh.km.transport = "ipc"
        fresh.km.connection_file = box.connection_file()
        fresh.km.start_kernel(cwd=str(folder))
        fresh.kc = fresh.km.client()
        fresh.kc.start_channels()
        try:
            fresh.kc.wait_for_ready(timeout=60)
            expected, expected_figures = honest_facts(fresh)
        finally:
            fresh.stop()
    png = ("display_data", ["image/png", "text/plain"])
    assert figures[0] == [png], f"plt.show() in a forked kernel gives {figures[0]}, not an inline PNG"
    assert png in figures[1], f"a figure left open at the end of a cell is not shown inline: {figures[1]}"
    assert figures == expected_figures, f"figures differ from a fresh kernel's: {figures} vs {expected_figures}"
    assert facts["connection_file"] and facts["argv"] == ["ipykernel_launcher.py", "-f"], facts["argv"]
    assert facts["answers"] == "honest's answers" and facts["cwd_files"] == ["answers.txt"], facts
    differ = {k: (facts[k], expected[k]) for k in expected if facts[k] != expected[k]}
    assert not differ, f"a forked kernel differs from a fresh one (forked, fresh): {differ}"
