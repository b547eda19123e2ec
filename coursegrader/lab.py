"""`coursegrader lab [--lecturer]` (`make lab`, `make lab ROLE=lecturer`): JupyterLab as each user needs it.

- A student works in release/. nbgrader's lecturer tools (the create-assignment toolbar, the formgrader)
  and the course and assignment lists of its exchange, which this course does not use, are switched off;
  its Validate button stays, since it is how a student checks a notebook before handing it in.
- A lecturer works on the course root with every nbgrader extension on, opened at source/: the
  formgrader needs the root to find nbgrader_config.py and the gradebook.

The switched-off plugins are set in a page_config.json of a temporary config folder that is added to
JUPYTER_CONFIG_PATH, so the user's own JupyterLab settings and configuration stay as they are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .course import Course
from .nbgrader_api import use_this_environment

LECTURER_ONLY = ("@jupyter/nbgrader:create-assignment", "@jupyter/nbgrader:formgrader",
                 "@jupyter/nbgrader:course-list", "@jupyter/nbgrader:assignment-list", "@jupyter/nbgrader:menu")


def page_config(folder: Path) -> Path:
    """A config folder whose labconfig/page_config.json switches off the lecturer-only plugins."""
    path = folder / "labconfig" / "page_config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"disabledExtensions": {name: True for name in LECTURER_ONLY}}, indent=1))
    return folder


def command(course: Course, lecturer: bool, config: Path) -> tuple[list[str], dict[str, str]]:
    """The JupyterLab command line and environment for a lecturer or a student (config: a folder to use)."""
    use_this_environment()  # the formgrader's gradebook runs `alembic`, and kernels start by name
    lab = [sys.executable, "-m", "jupyterlab"]
    env = dict(os.environ)
    if lecturer:
        return [*lab, f"--ServerApp.root_dir={course.root}", f"--LabApp.default_url={course.source_url}"], env
    paths = [str(page_config(config)), *filter(None, env.get("JUPYTER_CONFIG_PATH", "").split(os.pathsep))]
    env["JUPYTER_CONFIG_PATH"] = os.pathsep.join(paths)
    return [*lab, f"--ServerApp.root_dir={course.release_root}"], env


def run(course: Course, lecturer: bool, extra: list[str]) -> int:
    who = "a lecturer: source/ with nbgrader's create-assignment toolbar and formgrader" if lecturer else \
        "a student: release/, with nbgrader's Validate button and none of its lecturer tools"
    print(f"JupyterLab for {who} (Ctrl+C stops it)", flush=True)
    with tempfile.TemporaryDirectory(prefix="coursegrader-lab-") as folder:
        argv, env = command(course, lecturer, Path(folder))
        try:
            return subprocess.call([*argv, *extra], cwd=course.root, env=env)
        except KeyboardInterrupt:
            return 0
