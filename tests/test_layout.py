"""Every course path comes from `Course` (coursegrader/course.py), as nbgrader's come from its CourseDirectory.

A module that builds a path from a course folder's name itself (`root / "submitted"`, f"{root}/release/{aid}")
would go its own way the day nbgrader_config.py renames that folder. This test reads every module of the
package (its syntax tree, not its text) and flags the string constants that are one of those names, or hold one
as a path component ("release/", "/source"), outside course.py. Prose is allowed: docstrings, argparse's help=
texts, the messages of errors and the names of the command's subcommands (`coursegrader release`) are not paths.
A string that is exactly a folder's name is flagged wherever it is, a dict key too (`{"source": ...}`): a module
that needs one for something else goes into EXEMPT, with its reason.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "coursegrader"
FOLDERS = ("submitted", "autograded", "feedback", "reports", "release", "source")
AS_PATH = re.compile(rf"(^|/)({'|'.join(FOLDERS)})(/|$)")
OWNER = "course.py"

# Modules that may spell a folder name, each with the reason. Keep this short: today there are none.
EXEMPT: dict[str, str] = {}


def prose(tree: ast.AST) -> set[int]:
    """ids of the string constants that are prose: docstrings, help= texts, messages of raised errors, and
    subcommand names (the first argument of argparse's add_parser)."""
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
        elif isinstance(node, ast.keyword) and node.arg in ("help", "description"):
            ids.update(id(n) for n in ast.walk(node.value))
        elif isinstance(node, ast.Raise) and node.exc is not None:
            ids.update(id(n) for n in ast.walk(node.exc))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_parser"
              and node.args):
            ids.add(id(node.args[0]))
    return ids


def folder_names(source: str) -> list[tuple[int, str]]:
    """(line, string) for each string constant of `source` that names a course folder as a path would."""
    tree = ast.parse(source)
    skip = prose(tree)
    return sorted((node.lineno, node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
                  and AS_PATH.search(node.value))


def test_the_detector_sees_what_it_should():
    code = '''
"""A docstring about submitted/ and release/."""
import argparse
def f(root, aid):
    """Reads source/."""
    a = root / "submitted" / aid
    b = f"{root}/release/{aid}"
    c = "reports/" + aid
    d = {"source": 1}
    argparse.ArgumentParser().add_argument("--x", help="regenerate release/ from source/")
    argparse.ArgumentParser().add_subparsers().add_parser("release", help="the release/ command")
    raise ValueError(f"no source/{aid}/{aid}.ipynb")
    e = "sourcefile.py"
    g = "the release is out"
'''
    flagged = [value for _, value in folder_names(code)]
    assert flagged == ["submitted", "/release/", "reports/", "source"], flagged


@pytest.mark.parametrize("module", sorted(p.name for p in PACKAGE.glob("*.py") if p.name != OWNER))
def test_only_course_spells_a_course_folder(module):
    found = folder_names((PACKAGE / module).read_text(encoding="utf-8"))
    if module in EXEMPT:
        assert found, f"{module} no longer spells a folder name: remove it from EXEMPT ({EXEMPT[module]})"
        return
    assert not found, (f"{module} builds a path from a course folder name: "
                       + ", ".join(f"line {line}: {value!r}" for line, value in found)
                       + f". Ask the Course for it ({OWNER}: source_dir, submitted_dir, reports_dir, ...)")


def test_the_folders_are_the_ones_nbgrader_config_names(tmp_path):
    """One configuration decides the folders for nbgrader and coursegrader alike."""
    from coursegrader.course import Course

    (tmp_path / "course.toml").write_text('[assignments.a1]\ntitle = "A1"\n')
    (tmp_path / "nbgrader_config.py").write_text(
        "c = get_config()\nc.CourseDirectory.submitted_directory = 'handed_in'\n"
        "c.CourseDirectory.source_directory = 'lecturer'\n")
    course = Course.load(tmp_path)
    root = course.root
    assert course.submitted_notebook("ann", "a1") == root / "handed_in" / "ann" / "a1" / "a1.ipynb"
    assert course.source_notebook("a1") == root / "lecturer" / "a1" / "a1.ipynb"
    assert course.release_dir("a1") == root / "release" / "a1"  # nbgrader's default where the config is silent
    assert course.source_url == "/lab/tree/lecturer"
    (root / "handed_in" / "ann" / "a1").mkdir(parents=True)
    (root / "handed_in" / "bob" / "a2").mkdir(parents=True)
    assert course.submitters("a1") == ["ann"]
    copy = course.at(root / "elsewhere")  # a scratch copy keeps the names, before its config is there
    assert copy.autograded_dir("ann", "a1") == root / "elsewhere" / "autograded" / "ann" / "a1"
    assert copy.submitted_dir("ann", "a1") == root / "elsewhere" / "handed_in" / "ann" / "a1"
