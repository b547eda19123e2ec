"""A JupyterHub for the course: `make hub` starts one; tests/test_hub.py starts its own the same way.

Who is who: one instructor and some students, each a real system user (so the hub runs as root: the
JupyterHub docs' default, PAMAuthenticator with LocalProcessSpawner). The instructor's server opens the
course folder (a copy of source/, release/ and the configuration in the instructor's home) with nbgrader's
formgrader; a student's server opens the student's home with nbgrader's Assignments tab and Validate button.
Assignments travel through nbgrader's exchange folder, with nbgrader's own permissions.

Each single-user server starts inside a *view* of the machine (`view_command`): bwrap, run by the hub as
root, binds the whole file system as it is, then covers a few folders with empty ones (a private /tmp, the
course repository, whose source/ holds the solutions, and any folder the user could not cross anyway,
such as a /root holding the Python installation) and mounts back only what this user's server needs: the
Python installation and environment, coursegrader's own code, the exchange and the user's home. Then
`setpriv` drops to the user (uid, gid, groups, no new privileges) and runs `jupyterhub-singleuser`. The
covered folders are why the wrapper exists: a Python installed under /root (pyenv) cannot be executed by any
other user, and the repository must not be readable by students. Permissions are the system's: nothing is
chmod-ed but the folders this module creates.

Autograding stays sandboxed: the instructor's `coursegrader autograde` (and the formgrader's Autograde
button) start every kernel in bubblewrap as the instructor, unprivileged, inside that view.

The hub's own files (its database, cookie secret, the proxy's pid, logs) and the per-role Jupyter
configuration live in a state folder (`.hub/` for `make hub`; the test's temporary folder for the test).
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .course import Course
from .errors import CourseError

PACKAGE = Path(__file__).resolve().parent
REPO = PACKAGE.parent
HUB_FILES = REPO / "hub"  # jupyterhub_config.py, package.json and the proxy npm installs beside it
PROXY = HUB_FILES / "node_modules" / ".bin" / "configurable-http-proxy"
CONFIG = HUB_FILES / "jupyterhub_config.py"
STATE_VARIABLE = "COURSEGRADER_HUB"  # the state folder, for jupyterhub_config.py

# What `make hub` creates. The names are the course's own, so they cannot be someone's account.
MAKE_HUB_INSTRUCTOR = "dgm-instructor"
MAKE_HUB_STUDENTS = ("dgm-student1", "dgm-student2", "dgm-student3")

# nbgrader's lecturer tools, switched off in a student's JupyterLab (the Assignments tab and Validate stay).
STUDENT_PLUGINS_OFF = ("@jupyter/nbgrader:create-assignment", "@jupyter/nbgrader:formgrader",
                       "@jupyter/nbgrader:course-list")
# A student's server: no formgrader or course list; Validate also checks the notebook's name (hubvalidate).
STUDENT_EXTENSIONS = {"nbgrader.server_extensions.formgrader": False,
                      "nbgrader.server_extensions.course_list": False,
                      "nbgrader.server_extensions.validate_assignment": False,
                      "coursegrader.hubvalidate": True}


@dataclass
class Hub:
    """Everything the hub's configuration and its spawner read (saved as <state>/hub.json)."""

    state: str  # root only: hub.json, the hub's database, cookie secret, proxy pid and log
    exchange: str  # nbgrader's exchange root
    course_id: str
    instructor: str
    students: list[str]
    course: str  # the instructor's course folder (source/, release/, nbgrader_config.py, course.toml, gradebook)
    port: int = 8000  # where people open the hub (the proxy's public side)
    hub_port: int = 8081
    api_port: int = 8001
    ip: str = "127.0.0.1"
    server_args: list[str] = field(default_factory=list)  # extra arguments for every single-user server
    instructor_url: str = "/lab"  # where the instructor's JupyterLab opens: the course's source folder (prepare)

    @property
    def users(self) -> list[str]:
        return [self.instructor, *self.students]

    def role(self, name: str) -> str:
        return "instructor" if name == self.instructor else "student"

    def jupyter_config(self, role: str) -> Path:
        return Path(self.state) / "jupyter" / role

    def save(self) -> Path:
        path = Path(self.state) / "hub.json"
        path.write_text(json.dumps(asdict(self), indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, state: str | Path) -> Hub:
        path = Path(state) / "hub.json"
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except OSError as exc:
            raise CourseError(f"no hub set up in {state} ({exc}): run `make hub`") from None


# --- the view a single-user server runs in ------------------------------------------------------------

def crossable(folder: Path) -> bool:
    """Can any user pass through this folder (the execute bit for others)?"""
    return bool(os.stat(folder).st_mode & stat.S_IXOTH)


def closed_ancestor(path: Path) -> Path | None:
    """The outermost folder above `path` that other users cannot cross, or None."""
    for parent in reversed(path.parents):
        if parent != Path("/") and not crossable(parent):
            return parent
    return None


def python_paths() -> list[Path]:
    """What running this environment's Python needs: the installation, the environment, and every folder on
    sys.path outside them (coursegrader's own code, a .pth file's folder)."""
    paths = {Path(os.path.realpath(sys.base_prefix)), Path(sys.prefix), Path(os.path.realpath(sys.prefix)), PACKAGE}
    for entry in sys.path:
        if entry and os.path.isdir(entry) and not entry.startswith(str(REPO) + os.sep) and entry != str(REPO):
            paths.add(Path(os.path.realpath(entry)))
    return sorted(paths)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def view_command(user: str, cwd: Path, writable: list[Path], readable: list[Path],
                 covered: list[Path] = ()) -> list[str]:
    """bwrap (run as root), the mounts of the user's view, then setpriv to `user`: the prefix of a command.

    The whole file system is bound as it is; /tmp (a private one), the `covered` folders, and the folder above
    each needed path that others cannot cross, are replaced by empty ones; then each needed path (`writable`
    read-write, `readable` read-only) that lies under a covered folder is bound back at its own place."""
    needed = [(Path(p), True) for p in writable] + [(Path(p), False) for p in readable]
    cover = {Path("/tmp"), *map(Path, covered)}
    cover |= {a for p, _ in needed if (a := closed_ancestor(p)) is not None}
    cover = sorted((c for c in cover if not any(o != c and _inside(c, o) for o in cover)), key=lambda c: c.parts)
    args = [shutil.which("bwrap") or "bwrap", "--dev-bind", "/", "/"]
    for folder in cover:
        args += ["--perms", "1777" if folder == Path("/tmp") else "0755", "--tmpfs", str(folder)]
    made, bound = set(cover), set()
    for path, write in sorted(needed, key=lambda n: n[0].parts):
        top = next((c for c in cover if _inside(path, c) and path != c), None)
        if top is None or any(_inside(path, b) for b in bound):
            continue  # visible as it is, or inside a folder already bound back
        for parent in reversed(path.parents):
            if _inside(parent, top) and parent not in made:
                args += ["--dir", str(parent)]
                made.add(parent)
        args += ["--bind" if write else "--ro-bind", str(path), str(path)]
        made.add(path)
        bound.add(path)
    setpriv = shutil.which("setpriv") or "setpriv"
    # No new PID namespace: bwrap's --proc would be needed with one, and it would stop the instructor's own bwrap
    # (the grading sandbox) from mounting /proc. bwrap's child is the server; it dies with bwrap.
    return [*args, "--die-with-parent", "--chdir", str(cwd), "--",
            setpriv, f"--reuid={user}", f"--regid={pwd.getpwnam(user).pw_gid}", "--init-groups",
            "--no-new-privs", "--"]


def server_view(hub: Hub, name: str) -> list[str]:
    """The view of `name`'s single-user server (see the module's docstring)."""
    home = Path(pwd.getpwnam(name).pw_dir)
    cwd = Path(hub.course) if hub.role(name) == "instructor" else home
    return view_command(name, cwd, writable=[home, Path(hub.exchange)],
                        readable=[*python_paths(), hub.jupyter_config(hub.role(name))], covered=[REPO])


# --- the spawner ----------------------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _spawner_class():
    from jupyterhub.spawner import LocalProcessSpawner
    from traitlets import Unicode

    class CourseSpawner(LocalProcessSpawner):
        """LocalProcessSpawner whose command starts in the user's view and drops to the user there.

        Popen starts it as root (no preexec setuid): bwrap must reach folders only root can, and setpriv, the
        last step of the view's command, makes the server the user's. Only users of the course start."""

        hub_state = Unicode(help="the hub's state folder (hub.json)").tag(config=True)

        def make_preexec_fn(self, name):
            return None

        async def _signal(self, sig):
            """The hub stops a server with SIGINT, then SIGTERM: they go to the server itself (bwrap's child),
            which shuts its kernels down and exits, and bwrap with it. bwrap gets only SIGKILL and the probe 0."""
            server = _children(self.pid) if self.pid else []
            if sig and server and sig != signal.SIGKILL:
                for pid in server:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                return True
            return await super()._signal(sig)

        async def start(self):
            hub = Hub.load(self.hub_state)
            name = self.user.name
            if name not in hub.users:
                raise RuntimeError(f"{name} is not a user of this course's hub")
            role = hub.role(name)
            self.notebook_dir = hub.course if role == "instructor" else pwd.getpwnam(name).pw_dir
            self.default_url = hub.instructor_url if role == "instructor" else "/lab"
            self.environment = {**self.environment, "JUPYTER_CONFIG_PATH": str(hub.jupyter_config(role)),
                                "PATH": os.pathsep.join([str(Path(sys.prefix) / "bin"), "/usr/local/bin",
                                                         "/usr/bin", "/bin"]),
                                "LANG": os.environ.get("LANG", "C.UTF-8")}
            self.cmd = [*server_view(hub, name), str(Path(sys.prefix) / "bin" / "jupyterhub-singleuser")]
            self.args = list(hub.server_args)
            return await super().start()

    return CourseSpawner


def configure(c, state: str | Path) -> None:
    """Fill JupyterHub's configuration `c` from the hub set up in `state` (hub/jupyterhub_config.py calls it)."""
    hub = Hub.load(state)
    private = Path(hub.state) / "hub"
    c.JupyterHub.bind_url = f"http://{hub.ip}:{hub.port}"
    c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{hub.hub_port}"
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{hub.api_port}"
    c.ConfigurableHTTPProxy.command = [str(PROXY)]
    c.ConfigurableHTTPProxy.pid_file = str(private / "proxy.pid")
    c.JupyterHub.db_url = f"sqlite:///{private / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(private / "cookie_secret")
    c.JupyterHub.pid_file = str(private / "jupyterhub.pid")
    c.JupyterHub.cleanup_servers = True  # stopping the hub stops every single-user server
    # Real system users log in with their passwords (PAM), as the JupyterHub docs recommend with local users.
    c.JupyterHub.authenticator_class = "pam"
    c.Authenticator.allowed_users = set(hub.users)  # nobody is the hub's admin: no one opens another's server
    c.JupyterHub.spawner_class = _spawner_class()
    c.CourseSpawner.hub_state = str(hub.state)
    c.Spawner.start_timeout = 120  # a loaded 2-core machine takes 10-20 s to start JupyterLab
    c.Spawner.http_timeout = 120


# --- setting it up (root) ---------------------------------------------------------------------------------

def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise CourseError(
            f"{what} must run as root: the hub logs real system users in (PAM) and starts each one's server as "
            "that user, as JupyterHub's default spawner does. Run `sudo make hub` on a machine where you may "
            "create users, or use The Littlest JupyterHub / Zero to JupyterHub (docs/hub.md).")


def unprivileged_sandbox_reason(user: str, hub: Hub) -> str:
    """Why the instructor's server could not sandbox grading kernels ('' if it can): bwrap, run as the
    instructor inside the server's view, must create its namespaces."""
    from .sandbox import unavailable_reason

    reason = unavailable_reason()
    if reason:
        return reason
    probe = [shutil.which("bwrap") or "bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
             "--unshare-user", "--unshare-pid", "--unshare-net", "--", "/bin/true"]
    done = subprocess.run([*server_view(hub, user), *probe], capture_output=True, text=True, timeout=30)
    if done.returncode:
        return ("bwrap cannot create namespaces as an unprivileged user here "
                f"({(done.stderr.strip().splitlines() or ['no message'])[-1]})")
    return ""


def add_user(name: str, home: Path, password: str) -> None:
    """A system user with its own group and a home folder of its own (mode 700). Its uid and gid stay below
    60000, clear of the grading sandbox's uids (coursegrader.sandbox.SANDBOX_UIDS)."""
    subprocess.run(["useradd", "--home-dir", str(home), "--no-create-home", "--shell", "/bin/bash",
                    "--user-group", "--key", "UID_MAX=60000", "--key", "GID_MAX=60000",
                    "--comment", "course hub", name], check=True, capture_output=True, text=True)
    subprocess.run(["chpasswd"], input=f"{name}:{password}\n", check=True, capture_output=True, text=True)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    os.chown(home, pwd.getpwnam(name).pw_uid, pwd.getpwnam(name).pw_gid)


def remove_user(name: str) -> None:
    """Remove a user and its group; kill what it still runs first (by pid), so that userdel may proceed."""
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and os.stat(f"/proc/{pid}").st_uid == uid:
                os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
    subprocess.run(["userdel", name], check=False, capture_output=True)
    try:
        grp.getgrnam(name)
        subprocess.run(["groupdel", name], check=False, capture_output=True)
    except KeyError:
        pass


def _give(path: Path, name: str) -> None:
    user = pwd.getpwnam(name)
    os.lchown(path, user.pw_uid, user.pw_gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for entry in dirnames + filenames:
            os.lchown(os.path.join(dirpath, entry), user.pw_uid, user.pw_gid)


def install_course(source: Course, folder: Path, owner: str, assignments: list[str] | None = None) -> None:
    """The instructor's course folder: source/, release/ and the configuration of the course repository."""
    if folder.exists():
        return
    folder.mkdir(parents=True)
    source.install(folder, assignments or source.live())
    _give(folder, owner)


def write_role_config(hub: Hub) -> None:
    """Per role: nbgrader's exchange settings and, for students, the Jupyter server and JupyterLab settings."""
    for role in ("instructor", "student"):
        folder = hub.jupyter_config(role)
        (folder / "labconfig").mkdir(parents=True, exist_ok=True)
        lines = ["# Written by coursegrader.hub: where this hub's nbgrader exchange is.",
                 "c = get_config()  # noqa: F821",
                 f"c.Exchange.root = {hub.exchange!r}",
                 f"c.CourseDirectory.course_id = {hub.course_id!r}"]
        # A terminal's shell is not a login shell: /etc/profile would put the environment's bin/ (coursegrader,
        # nbgrader) off the PATH the server was given.
        server = {"terminado_settings": {"shell_command": ["/bin/bash"]}}
        if role == "instructor":
            lines.append(f"c.CourseDirectory.root = {hub.course!r}")
        else:  # a notebook missing from a submission (renamed) stops Submit, with nbgrader's message
            lines.append("c.ExchangeSubmit.strict = True")
            server["jpserver_extensions"] = STUDENT_EXTENSIONS
            (folder / "labconfig" / "page_config.json").write_text(
                json.dumps({"disabledExtensions": {name: True for name in STUDENT_PLUGINS_OFF}}, indent=1) + "\n")
        (folder / "jupyter_server_config.json").write_text(json.dumps({"ServerApp": server}, indent=1) + "\n")
        (folder / "nbgrader_config.py").write_text("\n".join(lines) + "\n", encoding="utf-8")
        for path in (folder.parent, folder, *folder.rglob("*")):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)


def make_exchange(path: Path) -> None:
    """nbgrader's exchange root: everyone may create in it (nbgrader requires 777); sticky, so that nobody
    removes what another user made there."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o1777)


def prepare(hub: Hub, source: Course, passwords: dict[str, str], homes: dict[str, Path],
            assignments: list[str] | None = None) -> None:
    """Create what `hub` describes: users (those missing), homes, the instructor's course, the exchange, the
    per-role configuration and hub.json. Root only."""
    require_root("the course hub")
    state = Path(hub.state)
    (state / "hub").mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    os.chmod(state / "hub", 0o700)
    for name in hub.users:
        try:
            pwd.getpwnam(name)
        except KeyError:
            add_user(name, homes[name], passwords[name])
    install_course(source, Path(hub.course), hub.instructor, assignments)
    hub.instructor_url = source.source_url
    make_exchange(Path(hub.exchange))
    write_role_config(hub)
    hub.save()


def jupyterhub_command(hub: Hub) -> tuple[list[str], dict[str, str]]:
    """How to start the hub: the command and its environment."""
    env = dict(os.environ, **{STATE_VARIABLE: hub.state})
    return [str(Path(sys.prefix) / "bin" / "jupyterhub"), "-f", str(CONFIG)], env


# --- `make hub` -----------------------------------------------------------------------------------------

def _make_hub(state: Path, port: int) -> Hub:
    course = Course.find(REPO)
    config = course.nbgrader_config()
    homes = {name: state / "home" / name for name in (MAKE_HUB_INSTRUCTOR, *MAKE_HUB_STUDENTS)}
    hub = Hub(state=str(state), exchange=str(state / "exchange"), course_id=config.CourseDirectory.course_id,
              instructor=MAKE_HUB_INSTRUCTOR, students=list(MAKE_HUB_STUDENTS),
              course=str(homes[MAKE_HUB_INSTRUCTOR] / "course"), port=port)
    for name in hub.users:  # never take over an account this hub did not create
        try:
            home = pwd.getpwnam(name).pw_dir
        except KeyError:
            continue
        if Path(home) != homes[name]:
            raise CourseError(f"a user {name} exists already (home {home}), not made by `make hub`: remove it "
                              f"or use another machine")
    secret = state / "passwords.txt"
    passwords = {}
    if secret.is_file():
        passwords = dict(line.split(":", 1) for line in secret.read_text().split())
    missing = [n for n in hub.users if n not in passwords]
    if missing:
        passwords.update({n: secrets.token_urlsafe(9) for n in missing})
        state.mkdir(parents=True, exist_ok=True)
        secret.touch(mode=0o600)
        secret.write_text("".join(f"{n}:{p}\n" for n, p in passwords.items()))
    prepare(hub, course, passwords, homes)
    return hub


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m coursegrader.hub", description="the course's JupyterHub")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("start", help="set up (users, exchange, the instructor's course) and run the hub")
    s.add_argument("--port", type=int, default=8000)
    sub.add_parser("remove", help="remove the users `make hub` made and its state folder (stop the hub first)")
    args = p.parse_args(argv)
    state = REPO / ".hub"
    try:
        require_root("make hub")
        if args.command == "remove":
            for name in (MAKE_HUB_INSTRUCTOR, *MAKE_HUB_STUDENTS):
                try:
                    if Path(pwd.getpwnam(name).pw_dir).is_relative_to(state):
                        remove_user(name)
                except KeyError:
                    pass
            shutil.rmtree(state, ignore_errors=True)
            print(f"removed the hub's users and {state}")
            return 0
        if not PROXY.exists():
            raise CourseError(f"{PROXY} is missing: `make hub` installs it (npm ci in hub/)")
        hub = _make_hub(state, args.port)
        reason = unprivileged_sandbox_reason(hub.instructor, hub)
        if reason:
            raise CourseError(f"grading on this hub would not be sandboxed: {reason}")
    except CourseError as exc:
        print(f"make hub: {exc}", file=sys.stderr)
        return 2
    print(f"JupyterHub for the course on http://{hub.ip}:{hub.port} (Ctrl+C stops it)\n"
          f"  instructor: {hub.instructor}; students: {', '.join(hub.students)}\n"
          f"  passwords: {state / 'passwords.txt'} (root only)\n"
          f"  exchange: {hub.exchange}; the instructor's course: {hub.course}")
    argv, env = jupyterhub_command(hub)
    try:
        return subprocess.call(argv, env=env, cwd=Path(hub.state) / "hub")
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
