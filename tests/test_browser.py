"""The notebooks as students and TAs see them: JupyterLab in a real browser.

A JupyterLab server on loopback (with a token) serves a copy of the course; Debian's chromium, driven by
Playwright, opens it. For each assignment:

- the release notebook is run cell by cell, as a student presses Shift+Enter, and the only errors must be
  those of the exercises not answered yet: the stub's NotImplementedError, or a NameError for what an
  unanswered exercise, or a cell it stopped, would have defined;
- the solution notebook (source/) is run with Run All: no error at all, every figure drawn, and the first
  ipywidgets slider, dragged with the mouse, changes the figure it controls.

Then nbgrader's formgrader, opened from the same JupyterLab, must list every assignment, and a grade report
written by `coursegrader report` must open in JupyterLab's HTML viewer with its histogram drawn. A
screenshot of each page goes to artifacts/browser/.

Skipped where chromium or Playwright is missing, except in CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from conftest import REPO, SANDBOX, needs_sandbox, skip_or_fail
from servers import Lab, jupyterlab
from coursegrader.course import Course
from coursegrader.lab import command as lab_command
from coursegrader.notebooks import is_solution, read_notebook

pytestmark = pytest.mark.browser

LIVE = Course.load(REPO).live()
# Screenshots: in the session's own folder (removed at the end), or where COURSEGRADER_ARTIFACTS says.
ARTIFACTS = Path(os.environ.get("COURSEGRADER_ARTIFACTS") or Path(tempfile.gettempdir()) / "artifacts") / "browser"
CHROMIUM = "/usr/bin/chromium"
# Chromium as the machine's probe starts it: no sandbox (root), no GPU, and none of the background
# connections that a closed network refuses.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
STUB = "Exercise not answered yet"
RUN_SECONDS = 300  # one notebook, in the browser, on a 2-core machine: the slowest solution takes about 40 s


def missing() -> str:
    """Why the browser tests cannot run here ('' if they can)."""
    if not Path(CHROMIUM).is_file():
        return f"no chromium at {CHROMIUM} (Debian package chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed"
    return ""


def lab_settings(folder: Path) -> Path:
    """JupyterLab settings for the test: every cell kept in the page (no windowing, so a figure far down is
    in the DOM to be checked), and no news or update checks (the network is closed)."""
    settings = {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                            "checkForUpdates": False},
    }
    for name, values in settings.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return folder


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Lab:
    skip_or_fail(missing(), "CI must run the browser tests (.ci/run installs chromium)")
    root = tmp_path_factory.mktemp("lab")
    for name in ("source", "release"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    for name in ("nbgrader_config.py", "course.toml"):
        shutil.copy(REPO / name, root / name)
    home = tmp_path_factory.mktemp("lab-home")
    argv, env = lab_command(Course.load(root), lecturer=True, config=home / "config")  # as `make lab ROLE=lecturer`
    env.update(JUPYTERLAB_SETTINGS_DIR=str(lab_settings(home / "settings")), JUPYTER_CONFIG_DIR=str(home / "config"),
               JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"), JUPYTER_RUNTIME_DIR=str(home / "runtime"))
    env.pop("MPLBACKEND", None)
    with jupyterlab(argv, env, root, home / "lab.log", "--LabApp.expose_app_in_browser=True") as running:
        yield running


@pytest.fixture(scope="module")
def page(lab):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)  # a fresh, empty profile
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        tab = context.new_page()
        tab.set_default_timeout(60_000)
        tab.goto(f"{lab.url}/lab?token={lab.token}")
        tab.wait_for_function("() => window.jupyterapp !== undefined", timeout=90_000)
        tab.evaluate("async () => { await window.jupyterapp.started; await window.jupyterapp.restored; }")
        yield tab
        context.close()
        browser.close()


# --- JupyterLab, seen from the page ----------------------------------------------------------------------
OPEN = """async (path) => {
  const app = window.jupyterapp;
  const panel = await app.commands.execute('docmanager:open', {path, factory: 'Notebook'});
  await panel.context.ready;
  await panel.sessionContext.ready;
  await panel.sessionContext.session.kernel.info;
  window.currentPanel = panel;
  app.shell.activateById(panel.id);
}"""
RUN_ALL = """async () => {
  window.jupyterapp.shell.activateById(window.currentPanel.id);
  await window.jupyterapp.commands.execute('notebook:run-all-cells');
}"""
# Every cell with code has run and the kernel is idle: Run All is over (or stopped at an error).
SETTLED = """() => {
  const panel = window.currentPanel;
  const cells = panel.content.widgets.filter(w => w.model.type === 'code' && w.model.sharedModel.getSource().trim());
  const failed = cells.findIndex(w => w.model.outputs.toJSON().some(o => o.output_type === 'error'));
  const due = failed < 0 ? cells : cells.slice(0, failed + 1);
  return panel.sessionContext.kernelDisplayStatus === 'idle' && due.every(w => w.model.executionCount !== null);
}"""
# One cell at a time, each started when the last has finished: an error does not cancel the cells after it.
RUN_EACH = """async () => {
  const app = window.jupyterapp, panel = window.currentPanel, notebook = panel.content;
  app.shell.activateById(panel.id);
  for (let i = 0; i < notebook.widgets.length; i++) {
    if (notebook.widgets[i].model.type !== 'code') continue;
    notebook.activeCellIndex = i;
    notebook.deselectAll();
    await app.commands.execute('notebook:run-cell');
  }
}"""
NOT_RUN = """() => window.currentPanel.content.widgets.map((w, i) => [i, w])
  .filter(([i, w]) => w.model.type === 'code' && w.model.sharedModel.getSource().trim() && w.model.executionCount === null)
  .map(([i, w]) => i)"""
OUTPUTS = """() => window.currentPanel.content.widgets.map(w => w.model.type === 'code' ? w.model.outputs.toJSON() : [])"""
IMAGES = """() => window.currentPanel.content.widgets.map(
  w => Array.from(w.node.querySelectorAll('.jp-OutputArea-output img')).map(i => i.complete && i.naturalWidth > 0))"""
# The first interact() with a slider: marked, so that the slider moved and the output read are in the same box.
SLIDER_BOX = """() => {
  const box = Array.from(window.currentPanel.node.querySelectorAll('.widget-interact'))
    .find(b => b.querySelector('.noUi-handle') && b.querySelector('.widget-output img'));
  if (box) box.setAttribute('data-test', 'slider-box');
  return box !== undefined;
}"""
WIDGET_OUTPUT = """() => {
  const out = document.querySelector('[data-test=slider-box] .widget-output');
  return out ? Array.from(out.querySelectorAll('img')).map(i => i.src).join('|') + out.innerText : null;
}"""
CLOSE = """async () => {
  const panel = window.currentPanel;
  await panel.sessionContext.shutdown();
  panel.dispose();
}"""


def run_notebook(page, path: str, each: bool) -> list[list[dict]]:
    """Open `path` in JupyterLab, run it, and return every cell's outputs as the notebook model holds them."""
    page.evaluate(OPEN, path)
    page.evaluate(RUN_EACH if each else RUN_ALL)
    page.wait_for_function(SETTLED, timeout=RUN_SECONDS * 1000, polling=500)
    outputs, not_run = page.evaluate(OUTPUTS), page.evaluate(NOT_RUN)
    if not errors(outputs):
        assert not not_run, f"{path}: cells {not_run} never ran"
    elif each:
        assert not not_run, f"{path}: cells {not_run} never ran: an error must not stop the cells after it"
    return outputs


def errors(outputs: list[list[dict]]) -> list[tuple[int, str, str]]:
    return [(i, o["ename"], o["evalue"]) for i, cell in enumerate(outputs) for o in cell if o["output_type"] == "error"]


def defined(source: str) -> set[str]:
    """The names a cell defines (functions, classes, assignments, imports)."""
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
    return names


def not_from_stubs(aid: str, found: list[tuple[int, str, str]]) -> list[str]:
    """The errors that an unanswered exercise does not explain. Explained: the stub's NotImplementedError, and a
    NameError for a name that a solution cell, or a cell stopped by such an error, would have defined."""
    source = read_notebook(REPO / "source" / aid / f"{aid}.ipynb").cells
    missing = set().union(*(defined(c.source) for c in source if is_solution(c) and c.cell_type == "code"))
    cells = read_notebook(REPO / "release" / aid / f"{aid}.ipynb").cells
    other = []
    for index, ename, evalue in sorted(found):
        if (ename == "NotImplementedError" and STUB in evalue) or (
                ename == "NameError" and any(f"'{name}'" in evalue for name in missing)):
            missing |= defined(cells[index].source)
        else:
            other.append(f"cell {index}: {ename}: {evalue[:200]}")
    return other


def screenshot(page, name: str, selector: str | None = None) -> Path:
    if selector:
        target = page.locator(selector).first
        if target.count():
            target.scroll_into_view_if_needed()
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


# --- the tests -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("aid", LIVE)
def test_release_notebook_fails_only_on_unanswered_exercises(page, aid):
    outputs = run_notebook(page, f"release/{aid}/{aid}.ipynb", each=True)
    found = errors(outputs)
    screenshot(page, f"release-{aid}", ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    page.evaluate(CLOSE)
    assert found, f"release/{aid}: no cell failed, but the exercises are not answered: are the stubs missing?"
    other = not_from_stubs(aid, found)
    assert not other, f"release/{aid}: errors a student did not cause:\n" + "\n".join(other)


@pytest.mark.parametrize("aid", LIVE)
def test_solution_notebook_runs_draws_and_reacts_to_its_slider(page, aid):
    outputs = run_notebook(page, f"source/{aid}/{aid}.ipynb", each=False)
    found = errors(outputs)
    assert not found, f"source/{aid}: errors in the solution notebook: " + "; ".join(
        f"cell {i}: {e}: {v[:200]}" for i, e, v in found)
    figures = [i for i, cell in enumerate(outputs) if any("image/png" in o.get("data", {}) for o in cell)]
    assert figures, f"source/{aid}: no figure was drawn"
    page.wait_for_function(f"() => ({IMAGES})().every(cell => cell.every(Boolean))", timeout=30_000)
    drawn = page.evaluate(IMAGES)
    short = [i for i in figures if len(drawn[i]) < sum("image/png" in o.get("data", {}) for o in outputs[i])]
    assert not short, f"source/{aid}: figures in the notebook but not on the page, cells {short}"

    page.wait_for_function(SLIDER_BOX, timeout=60_000)
    before = page.evaluate(WIDGET_OUTPUT)
    handle = page.locator("[data-test=slider-box] .noUi-handle").first
    handle.scroll_into_view_if_needed()
    knob, track = handle.bounding_box(), page.locator("[data-test=slider-box] .noUi-target").first.bounding_box()
    x, y = knob["x"] + knob["width"] / 2, knob["y"] + knob["height"] / 2
    step = track["width"] / 4 * (1 if x < track["x"] + track["width"] / 2 else -1)  # towards the middle
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + step, y, steps=5)
    page.mouse.up()
    try:
        page.wait_for_function(f"(before) => ({WIDGET_OUTPUT})() !== before", arg=before, timeout=60_000)
    except Exception:
        pytest.fail(f"source/{aid}: the first slider was moved but the figure it controls did not change")
    finally:
        screenshot(page, f"solution-{aid}", "[data-test=slider-box]")
        page.evaluate(CLOSE)


def test_formgrader_lists_every_assignment(page):
    page.evaluate("async () => { await window.jupyterapp.commands.execute('nbgrader:open-formgrader'); }")
    table = page.frame_locator("iframe[src*='formgrader']").first.locator("#main-table")
    for aid in LIVE:
        table.get_by_text(aid).first.wait_for(timeout=60_000)
    screenshot(page, "formgrader")


# A cell a submission carries to show where its kernel ran: the course's source/ (the hidden tests) is invisible in
# the sandbox, and there the first process of the kernel's own PID namespace is bwrap.
WHERE = """import os
print("WHERE-AM-I", os.path.exists({source!r}), open("/proc/1/comm").read().strip())"""


def test_formgrader_autograde_button_grades_in_the_sandbox(page, lab):
    """A TA presses Autograde in the formgrader: the server's nbgrader runs the notebook through this course's
    nbgrader_config.py, so the kernel runs in the sandbox; without bubblewrap the button refuses and says why."""
    import nbformat

    from adversarial import notebook
    from coursegrader.nbgrader_api import Grader

    aid, student = "01_mle_kl", "pressed-autograde"
    Grader(Course.load(lab.root), lab.root, sandbox=False).register_assignment(aid)  # registers; runs nothing
    folder = lab.root / "submitted" / student / aid
    folder.mkdir(parents=True)
    nb = notebook(lab.root / "release" / aid / f"{aid}.ipynb", {}, [("", WHERE.format(source=str(lab.root / "source")))])
    nbformat.write(nb, str(folder / f"{aid}.ipynb"))

    tab = page.context.new_page()
    try:
        tab.goto(f"{lab.url}/formgrader/manage_submissions/{aid}?token={lab.token}")
        row = tab.locator("tr", has_text=student).first
        row.locator(".autograde a").click(timeout=60_000)
        modal = tab.locator("#success-modal, #error-modal").first
        modal.wait_for(timeout=RUN_SECONDS * 1000)
        text = modal.text_content()  # the log too, which the modal folds away
        screenshot(tab, "formgrader-autograde")
    finally:
        tab.close()
    graded = lab.root / "autograded" / student / aid / f"{aid}.ipynb"
    if not SANDBOX:  # the refusal, shown to the TA, and nobody graded
        assert "refusing to grade" in text and "bubblewrap" in text, text
        assert not graded.exists(), "the formgrader graded a notebook without the sandbox"
        return
    assert "Successfully autograded" in text, text
    printed = "".join(o.get("text", "") for c in nbformat.read(str(graded), 4).cells if c.cell_type == "code"
                      for o in c.get("outputs", []))
    where = next((line.split()[1:] for line in printed.splitlines() if line.startswith("WHERE-AM-I")), None)
    assert where == ["False", "bwrap"], f"the formgrader's kernel did not run in the sandbox: {where}"


@needs_sandbox  # the class has a tamperer and a crash
def test_grade_report_opens_in_jupyterlab(page, lab, tmp_path):
    from test_parallel import class_course

    from coursegrader import autograde, report

    root = class_course(tmp_path / "course")
    course = Course.load(root)
    outcome = autograde.run(course, "toy", jobs=2)
    autograde.save_reports(outcome.results, root / "reports" / "toy")
    report.save(report.build(course, "toy"), root / "reports" / "toy")
    shutil.copytree(root / "reports", lab.root / "reports")
    page.evaluate("async (path) => { await window.jupyterapp.commands.execute('docmanager:open', "
                  "{path, factory: 'HTML Viewer'}); }", "reports/toy/report.html")
    frame = page.frame_locator(".jp-HTMLViewer iframe").first
    frame.locator("#histogram").wait_for(timeout=30_000)
    width = frame.locator("#histogram").evaluate("img => img.complete ? img.naturalWidth : 0")
    assert width > 0, "the histogram of the grade report was not drawn"
    look = frame.locator("h2:has-text('Students to look at') + table")
    assert "crash" in look.inner_text(), "the flagged student is missing from the report as shown"
    screenshot(page, "report")
