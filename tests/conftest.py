"""What every test shares: the repository, the sandbox question, and a machine the tests cannot harm.

The whole session runs with HOME, TMPDIR and Jupyter's and IPython's folders pointed into one fresh
folder of its own, removed at the end: nothing a test runs writes to the real home folder, ~/.ipython or
/tmp outside that folder, whatever a notebook under test tries.

Hostile notebooks run only in the sandbox: tests that grade them are marked `needs_sandbox` and skipped on a
machine without bubblewrap (CI must have it). Our own, trusted notebooks (references, the catalogue) are
graded in the sandbox where there is one, and with the explicit opt-out (`TRUSTED`) where there is not.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # toycourse

from coursegrader.course import Course  # noqa: E402
from coursegrader.sandbox import unavailable_reason  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

NO_SANDBOX = unavailable_reason()  # why there is no sandbox here; '' if there is one
if NO_SANDBOX and os.environ.get("CI"):
    raise RuntimeError(f"CI must run the tests with the sandbox: {NO_SANDBOX} (.ci/run installs bubblewrap)")
SANDBOX = not NO_SANDBOX
TRUSTED = {"sandbox": SANDBOX}  # keyword for autograde.run, check.run, Grader: grading our own notebooks
TRUSTED_FLAGS = [] if SANDBOX else ["--no-sandbox"]  # the same for the command line
needs_sandbox = pytest.mark.skipif(not SANDBOX, reason=f"grades hostile notebooks: needs the sandbox ({NO_SANDBOX})")



def skip_or_fail(reason: str, in_ci: str) -> None:
    """A test that cannot run here (`reason`, '' if it can) is skipped, except in CI, where it fails with `in_ci`
    (what .ci/run installs for it)."""
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: {in_ci}")
        pytest.skip(reason)


_folders: list[Path] = []  # the session's own folder, removed at exit
# Registered before anything imports multiprocessing, so it runs after multiprocessing's own exit handler,
# which removes the fork server's folder inside ours (atexit runs the last registered first).
atexit.register(lambda: [shutil.rmtree(folder, ignore_errors=True) for folder in _folders])

ISOLATED = ("HOME", "TMPDIR", "IPYTHONDIR", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR",
            "MPLCONFIGDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME")


def pytest_configure(config):
    """Point the session's home and temporary folders into a fresh folder (see the module's docstring)."""
    base = Path(tempfile.mkdtemp(prefix="cgt-"))  # short: kernels' IPC sockets are made below it
    home, tmp = base / "home", base / "tmp"
    home.mkdir()
    tmp.mkdir()
    for folder in (base, tmp):
        os.chmod(folder, 0o711)  # other users reach their own folders in TMPDIR (the test PostgreSQL server's)
    config.coursegrader_base = base
    _folders.append(base)
    config.coursegrader_saved = {k: os.environ.get(k) for k in ISOLATED}
    for key in ISOLATED:
        os.environ.pop(key, None)
    os.environ.update(HOME=str(home), TMPDIR=str(tmp))
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again
    # matplotlib's font list, built once here, is copied into every grading kernel's scratch HOME.
    subprocess.run([sys.executable, "-c", "import matplotlib.font_manager"], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pytest_unconfigure(config):
    base = getattr(config, "coursegrader_base", None)
    if base is None:
        return
    for key, value in config.coursegrader_saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    tempfile.tempdir = None  # the folder itself goes at exit (see _folders)


@pytest.fixture(scope="session")
def course() -> Course:
    return Course.load(REPO)


@pytest.fixture(scope="session")
def toy_course(tmp_path_factory) -> Course:
    """A released one-assignment course (`toy`): for tests of the tooling that must not wait for real notebooks."""
    from toycourse import make_toy_course

    return Course.load(make_toy_course(tmp_path_factory.mktemp("toy")))
