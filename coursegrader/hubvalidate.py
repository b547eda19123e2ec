"""A student's Validate button on the course hub also checks the notebook's name.

nbgrader grades the notebooks of an assignment by the names it released them under. A student who renamed
the notebook and submits it is graded as if nothing had been handed in, and nbgrader's Validate says
nothing about names. On the hub, this Jupyter server extension takes the place of nbgrader's
validate_assignment extension (coursegrader.hub switches nbgrader's off for students) and serves the same
routes with one more check first: a notebook in an assignment's folder whose name is not one the exchange
released for that assignment gets a message saying which name to give it back, and is not run.
(Submit then refuses too: `ExchangeSubmit.strict` in the students' configuration.)
"""

from __future__ import annotations

from pathlib import Path

from jupyter_server.utils import url_path_join
from nbgrader.server_extensions.validate_assignment.handlers import NbGraderVersionHandler, ValidateAssignmentHandler


def released_names(config, assignment: str) -> list[str] | None:
    """The notebook names the exchange released for `assignment`, or None if it released no such assignment."""
    root = config.Exchange.get("root", "/srv/nbgrader/exchange")
    course = config.CourseDirectory.get("course_id", "")
    folder = Path(root) / course / "outbound" / assignment
    try:
        return sorted(p.name for p in folder.glob("*.ipynb")) if folder.is_dir() else None
    except OSError:
        return None


def name_problem(notebook: Path, released: list[str] | None) -> str:
    """What is wrong with the notebook's name ('' if nothing, or if its folder is not a released assignment)."""
    if not released or notebook.name in released:
        return ""
    assignment = notebook.parent.name
    expected = " and ".join(released)
    return (f"{notebook.name} is not a notebook of {assignment}: the assignment's notebook is {expected}.\n"
            f"Autograde grades only {expected}, so this notebook would not be graded,\n"
            f"and Submit refuses {assignment} while {expected} is missing.\n"
            f"Rename it back to {expected} (right-click it in the file browser > Rename),\n"
            f"then validate and submit.")


class NamedValidateAssignmentHandler(ValidateAssignmentHandler):
    def validate_notebook(self, path):
        root = Path(self.root_dir).resolve()
        target = (root / path).resolve()
        if target.is_relative_to(root):
            problem = name_problem(target, released_names(self.load_config(), target.parent.name))
            if problem:
                return {"success": False, "value": problem}
        return super().validate_notebook(path)


def _jupyter_server_extension_points():
    return [{"module": "coursegrader.hubvalidate"}]


def _load_jupyter_server_extension(app):
    web = app.web_app
    web.settings["root_dir"] = app.root_dir  # as nbgrader's extension sets it
    base = web.settings["base_url"]
    web.add_handlers(".*$", [(url_path_join(base, "/assignments/validate"), NamedValidateAssignmentHandler),
                             (url_path_join(base, "/nbgrader_version"), NbGraderVersionHandler)])
    app.log.info("coursegrader.hubvalidate: Validate checks notebook names against the exchange")
