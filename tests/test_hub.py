"""The whole nbgrader cycle on a real JupyterHub, driven in chromium as an instructor and two students do it.

A hub starts as `make hub` starts it (coursegrader.hub, hub/jupyterhub_config.py, configurable-http-proxy from
hub/node_modules), with three real system users made for the test (random names, homes in the test's folder,
removed at the end even on failure) and the exchange, the hub's database and cookie secret in the test's folder.
Then, in one browser with a context per person:

1. the instructor releases 01_mle_kl from the formgrader (release/ is committed, as `make release` made it);
2. both students fetch it in the Assignments tab (the files are the student's own);
3. bob renames his notebook: Validate tells him to rename it back and Submit refuses; he renames it back;
4. alice answers with the reference, bob with a catalogued mistake, and both validate; alice submits; the
   instructor then sets a due date in the formgrader; bob submits (late), then resubmits with another mistake;
5. the instructor collects, runs `coursegrader autograde 01_mle_kl` in a JupyterLab terminal (every kernel in the
   sandbox), generates and releases feedback;
6. each student fetches feedback and opens it: alice has full autograded marks, bob loses exactly the points of
   his second mistake (the latest submission was graded), bob is late and alice is not, and no feedback page
   shows a hidden test.

test_exchange_permissions then looks at the exchange as bob's server sees it: no inbound or feedback listing,
no instructor's course, no course repository, and nothing but the release in outbound.

The answers are written through each student's JupyterLab (its contents API, what saving a notebook does),
not typed key by key. Skipped without root, chromium, Playwright, jupyterhub, the proxy or the sandbox, except
in CI (CI=true), where that is a failure. Screenshots and the step times go to the artifacts folder.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import sqlite3
import subprocess
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import NO_SANDBOX, REPO, skip_or_fail
from servers import free_port
from test_browser import ARTIFACTS, CHROMIUM, FLAGS
from coursegrader import hub as course_hub
from coursegrader.catalogue import load_catalogue
from coursegrader.course import Course
from coursegrader.feedback import feedback_leaks
from coursegrader.notebooks import points_by_test_cell, points_by_written_cell, read_notebook
from coursegrader.release import find_leaks
from coursegrader.sampleclass import reference_answers

pytestmark = [pytest.mark.browser, pytest.mark.hub]

AID = "01_mle_kl"
COURSE = Course.load(REPO)
SOURCE_NB = read_notebook(COURSE.source_notebook(AID))
REFERENCE = reference_answers(SOURCE_NB)
CATALOGUE = load_catalogue(COURSE.catalogue_file(AID), AID, SOURCE_NB)
# bob's first submission carries one catalogued mistake, his resubmission another one, on other cells and tests.
FIRST = CATALOGUE[0]
SECOND = next(w for w in CATALOGUE if w.cell != FIRST.cell and not w.fails & FIRST.fails)
AUTOGRADED = sum(points_by_test_cell(SOURCE_NB).values())
WRITTEN = sum(points_by_written_cell(SOURCE_NB).values())
STEP_SECONDS = 240  # the longest single step (autograde of two notebooks in the sandbox) on a loaded 2-core machine


def missing() -> str:
    """Why the hub test cannot run here ('' if it can)."""
    if os.geteuid() != 0:
        return "the hub's users are real system users: the test runs as root (as CI does)"
    if not Path(CHROMIUM).is_file():
        return f"no chromium at {CHROMIUM} (Debian package chromium)"
    for module in ("playwright.sync_api", "jupyterhub"):
        try:
            __import__(module)
        except ImportError:
            return f"{module.split('.')[0]} is not installed"
    if not course_hub.PROXY.exists():
        return f"no {course_hub.PROXY}: `make test` installs configurable-http-proxy with npm (hub/package.json)"
    if not shutil.which("useradd"):
        return "no useradd (Debian package passwd)"
    if NO_SANDBOX:
        return f"grading would not be sandboxed: {NO_SANDBOX}"
    return ""


class Steps:
    """Wall time of each step of the cycle, saved beside the screenshots."""

    def __init__(self):
        self.start = self.last = time.monotonic()
        self.times: list[tuple[str, float]] = []

    def done(self, name: str) -> None:
        now = time.monotonic()
        self.times.append((name, round(now - self.last, 1)))
        self.last = now

    def save(self) -> str:
        lines = [f"{seconds:6.1f} s  {name}" for name, seconds in self.times]
        lines.append(f"{time.monotonic() - self.start:6.1f} s  in all")
        (ARTIFACTS / "hub-steps.txt").write_text("\n".join(lines) + "\n")
        return "\n".join(lines)


# --- the hub --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hub(tmp_path_factory, request) -> course_hub.Hub:
    skip_or_fail(missing(), "CI must run the hub test (.ci/run installs what it needs)")
    base = tmp_path_factory.mktemp("hub")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tag = secrets.token_hex(3)  # users of this test only: nobody else's account is touched
    teach, alice, bob = (f"cgh{tag}-{who}" for who in ("teach", "alice", "bob"))
    homes = {name: base / "home" / name for name in (teach, alice, bob)}
    passwords = {name: secrets.token_urlsafe(12) for name in homes}
    request.addfinalizer(lambda: [course_hub.remove_user(name) for name in homes])  # even if set-up fails
    (base / "home").mkdir()
    hub = course_hub.Hub(state=str(base / "state"), exchange=str(base / "exchange"),
                         course_id=COURSE.nbgrader_config().CourseDirectory.course_id, instructor=teach,
                         students=[alice, bob], course=str(homes[teach] / "course"), port=free_port(),
                         hub_port=free_port(), api_port=free_port(),
                         server_args=["--LabApp.expose_app_in_browser=True"])
    course_hub.prepare(hub, COURSE, passwords, homes, [AID])
    argv, env = course_hub.jupyterhub_command(hub)
    log = base / "jupyterhub.log"
    with log.open("w") as out:
        server = subprocess.Popen(argv, env=env, cwd=Path(hub.state) / "hub", stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{hub.port}/hub/api", timeout=5).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterHub did not start; the end of {log}:\n{log.read_text()[-3000:]}")
                time.sleep(0.3)
        hub.passwords, hub.log = passwords, log
        yield hub
    finally:
        server.terminate()  # the hub stops every single-user server (cleanup_servers) before it exits
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.copy(log, ARTIFACTS / "jupyterhub.log")


@pytest.fixture(scope="module")
def browser(hub):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        running = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield running
        running.close()


# --- people in the browser -------------------------------------------------------------------------------
def login(browser, hub, name: str):
    """A fresh browser profile logs `name` in on the hub's login page; the server starts (not waited for)."""
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    page = context.new_page()
    page.set_default_timeout(STEP_SECONDS * 1000)
    page.goto(f"http://127.0.0.1:{hub.port}/hub/login")
    page.fill("#username_input", name)
    page.fill("#password_input", hub.passwords[name])
    page.click("#login_submit")
    return page


def lab_ready(page) -> None:
    page.wait_for_function("() => window.jupyterapp !== undefined", timeout=120_000)
    page.evaluate("async () => { await window.jupyterapp.started; await window.jupyterapp.restored; }")


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"hub-{name}.png"))


def formgrader_action(fg, column: str, expect: str) -> str:
    """Click the formgrader's button in `column` of the assignment's row; the success message, or fail."""
    fg.locator("#main-table tr", has_text=AID).first.locator(f"td.{column} a").click()
    modal = fg.locator("#success-modal, #error-modal").first
    modal.wait_for()
    text = modal.text_content()
    shot(fg, f"formgrader-{column}")
    assert expect in text, f"formgrader {column}: {text[:2000]}"
    modal.locator(".modal-footer button.close").click()
    modal.wait_for(state="detached")
    return text


def set_due_date(fg, due: datetime) -> None:
    fg.locator("#main-table tr", has_text=AID).first.locator("td.edit a").click()
    field = fg.locator("input.modal-duedate")
    field.fill(due.strftime("%Y-%m-%dT%H:%M:%S"))
    fg.locator("input.modal-timezone").fill("+0000")
    fg.locator(".modal-footer button.save").first.click()
    field.wait_for(state="detached")
    fg.locator("#main-table tr", has_text=AID).first.locator("td.duedate").filter(has_not_text="None").wait_for()


def assignments_tab(page):
    page.evaluate("async () => { await window.jupyterapp.commands.execute('nbgrader:open-assignment-list'); }")
    return page.locator("#released_assignments_list, #fetched_assignments_list").first


def refresh_assignments(page, shows: str = "", gone: str = "") -> None:
    """Press the Assignments tab's refresh button and wait until its list of fetched assignments shows the
    notebook `shows` (if given) and no longer `gone` (if given)."""
    page.locator("#refresh_assignments_list").click()
    page.wait_for_function("([yes, no]) => { const t = document.querySelector('#fetched_assignments_list').textContent;"
                           " return (!yes || t.includes(yes)) && (!no || !t.includes(no)); }", arg=[shows, gone])


def fetched(page):
    return page.locator("#fetched_assignments_list .list_item", has_text=AID).first


def fetch(page) -> None:
    page.locator("#released_assignments_list .list_item", has_text=AID).first.get_by_role("button", name="Fetch").click()
    fetched(page).get_by_role("button", name="Submit").wait_for()


def write_answers(page, path: str, answers: dict[str, str]) -> None:
    """Replace the solution cells named in `answers` and save, through the student's own JupyterLab."""
    page.evaluate("""async ([path, answers]) => {
      const contents = window.jupyterapp.serviceManager.contents;
      const model = await contents.get(path, {content: true});
      for (const cell of model.content.cells) {
        const id = (cell.metadata.nbgrader || {}).grade_id;
        if (id in answers) cell.source = answers[id];
      }
      await contents.save(path, {type: 'notebook', format: 'json', content: model.content});
    }""", [path, answers])


def rename(page, old: str, new: str) -> None:
    page.evaluate("async ([o, n]) => { await window.jupyterapp.serviceManager.contents.rename(o, n); }", [old, new])


def press_validate(page, notebook: str) -> None:
    """Press Validate beside `notebook` in the Assignments tab (the validation runs on the student's server)."""
    item = fetched(page)
    if not item.locator(".assignment-notebooks").evaluate("e => e.classList.contains('in')"):
        item.locator(".assignment-notebooks-link").click()
    item.locator(".list_item", has_text=notebook).get_by_role("button", name="Validate").click()


def validate(page, notebook: str, who: str, pressed: bool = False) -> tuple[bool, str]:
    """Press Validate (unless `pressed` already) and read the result: (passed, the dialog's text)."""
    if not pressed:
        press_validate(page, notebook)
    dialog = page.locator(".jp-Dialog").first
    dialog.locator("#validation-message").wait_for()
    text, passed = dialog.inner_text(), dialog.locator(".validation-success").count() > 0
    shot(page, f"validate-{who}-{notebook}")
    dialog.locator(".jp-mod-accept").click()
    dialog.wait_for(state="detached")
    return passed, text


def submit(page, who: str, refused: bool = False) -> str:
    """Press Submit; the new submission's timestamp (or, when `refused`, the dialog's text)."""
    before = page.locator("#submitted_assignments_list .nested_list_item").count()
    fetched(page).get_by_role("button", name="Submit").click()
    if refused:
        dialog = page.locator(".jp-Dialog").first
        dialog.locator("#submission-message").wait_for()
        text = dialog.inner_text()
        shot(page, f"submit-refused-{who}")
        dialog.locator(".jp-mod-accept").click()
        dialog.wait_for(state="detached")
        return text
    page.wait_for_function("([n]) => document.querySelectorAll('#submitted_assignments_list .nested_list_item')"
                           ".length > n", arg=[before])
    rows = page.locator("#submitted_assignments_list .nested_list_item").all_inner_texts()
    return max((row.strip() for row in rows), key=submission_time)


def feedback_heading(page, student_home: Path) -> tuple[str, Path]:
    """Fetch feedback in the Assignments tab, open it in JupyterLab; its heading and its file."""
    page.locator("#submitted_assignments_list .list_item", has_text=AID).first.get_by_role(
        "button", name="Fetch Feedback").click()
    page.locator("#submitted_assignments_list a", has_text="view feedback").first.wait_for()
    (html,) = sorted((student_home / AID / "feedback").glob(f"*/{AID}.html"))
    path = str(html.relative_to(student_home))
    page.evaluate("async (path) => { await window.jupyterapp.commands.execute('docmanager:open', "
                  "{path, factory: 'HTML Viewer'}); }", path)
    heading = page.frame_locator(".jp-HTMLViewer iframe").first.locator("h4").first
    heading.wait_for()
    return heading.inner_text(), html


def run_in_terminal(page, command: str) -> None:
    page.evaluate("async () => { await window.jupyterapp.commands.execute('terminal:create-new'); }")
    page.locator(".jp-Terminal .xterm-helper-textarea").first.wait_for(state="attached")
    page.locator(".jp-Terminal .xterm-helper-textarea").first.focus()
    page.keyboard.type(command)
    page.keyboard.press("Enter")


def wait_for_file(path: Path, seconds: float = STEP_SECONDS) -> str:
    deadline = time.monotonic() + seconds
    while not path.is_file() or not path.read_text().strip():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.5)
    return path.read_text().strip()


def submission_time(text: str) -> datetime:
    """nbgrader's timestamp as the Assignments tab shows it ('2026-11-29 03:44:12.123456 UTC')."""
    stamp = text.split(" (")[0].replace(" UTC", "").strip()
    return datetime.fromisoformat(stamp).replace(tzinfo=timezone.utc)


def gradebook_rows(course: Path) -> dict[str, tuple[str, str | None]]:
    """student -> (submission timestamp, the assignment's due date), read-only from the instructor's gradebook."""
    db = sqlite3.connect(f"file:{course / 'gradebook.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT s.student_id, s.timestamp, a.duedate FROM submitted_assignment s "
                          "JOIN assignment a ON a.id = s.assignment_id WHERE a.name = ?", (AID,)).fetchall()
    finally:
        db.close()
    return {student: (stamp, due) for student, stamp, due in rows}


def score_of(heading: str) -> tuple[float, float]:
    """'01_mle_kl (Score: 30.0 / 34.0)' -> (30.0, 34.0)"""
    inside = heading.split("Score:")[1].rstrip(") ")
    got, out_of = (float(x) for x in inside.split("/"))
    return got, out_of


# --- the tests -------------------------------------------------------------------------------------------
def test_release_fetch_submit_collect_autograde_feedback_on_jupyterhub(hub, browser):
    steps = Steps()
    teach, (alice, bob) = hub.instructor, hub.students
    home = {name: Path(pwd.getpwnam(name).pw_dir) for name in hub.users}
    course = Path(hub.course)
    pages = {name: login(browser, hub, name) for name in hub.users}  # the three servers start side by side
    lab_ready(pages[teach])
    steps.done("log in three users; the instructor's JupyterLab is up")

    # 1. The instructor generates the student version and releases it, from the formgrader.
    fg = pages[teach].context.new_page()
    fg.goto(f"http://127.0.0.1:{hub.port}/user/{teach}/formgrader/manage_assignments")
    formgrader_action(fg, "release", "Successfully released")  # release/ is committed: no need to generate it
    outbound = Path(hub.exchange) / hub.course_id / "outbound" / AID / f"{AID}.ipynb"
    assert outbound.is_file(), "release_assignment put nothing in the exchange"
    steps.done("release 01_mle_kl in the formgrader")

    # 2. Both students fetch it in the Assignments tab; the files are theirs.
    for name in (alice, bob):
        lab_ready(pages[name])
        assignments_tab(pages[name]).wait_for()
        fetch(pages[name])
        mine = home[name] / AID / f"{AID}.ipynb"
        assert mine.stat().st_uid == pwd.getpwnam(name).pw_uid, f"{name}'s fetched notebook is not {name}'s own"
    shot(pages[bob], "fetched")
    steps.done("two students fetch it")

    # 3. bob renames his notebook: Validate says so before he submits, and Submit refuses.
    rename(pages[bob], f"{AID}/{AID}.ipynb", f"{AID}/my_answers.ipynb")
    refresh_assignments(pages[bob], shows="my_answers")
    passed, told = validate(pages[bob], "my_answers", "bob")
    assert not passed and f"Rename it back to {AID}.ipynb" in " ".join(told.split()), f"Validate of a renamed notebook said: {told}"
    refused = submit(pages[bob], "bob", refused=True)
    assert "Assignment not submitted" in refused and f"{AID}.ipynb" in refused, refused
    rename(pages[bob], f"{AID}/my_answers.ipynb", f"{AID}/{AID}.ipynb")
    refresh_assignments(pages[bob], gone="my_answers")
    steps.done("a renamed notebook: Validate tells, Submit refuses")

    # 4. alice answers with the reference, bob with a catalogued mistake; both validate (at once, each on their
    # own server). Visible tests need not catch bob's mistake (the hidden ones do): his validation must run.
    write_answers(pages[alice], f"{AID}/{AID}.ipynb", REFERENCE)
    write_answers(pages[bob], f"{AID}/{AID}.ipynb", {**REFERENCE, FIRST.cell: FIRST.code})
    press_validate(pages[alice], AID)
    press_validate(pages[bob], AID)
    passed, said = validate(pages[alice], AID, "alice", pressed=True)
    assert passed, f"alice's reference answers do not validate: {said[:2000]}"
    _, said = validate(pages[bob], AID, "bob", pressed=True)
    assert "Success! Your notebook passes all the tests." in said or "The following cell failed" in said, said
    steps.done("answers; both validate (the notebooks run)")
    # alice submits; the due date falls after her submission and before bob's two.
    alice_time = submission_time(submit(pages[alice], "alice"))
    due = alice_time.replace(microsecond=0) + timedelta(seconds=1 if alice_time.second != 59 else 2)
    set_due_date(fg, due)
    shot(fg, "formgrader-due-date")
    while datetime.now(timezone.utc) <= due + timedelta(seconds=0.5):
        time.sleep(0.2)
    first_time = submission_time(submit(pages[bob], "bob"))
    write_answers(pages[bob], f"{AID}/{AID}.ipynb", {**REFERENCE, SECOND.cell: SECOND.code})
    second_time = submission_time(submit(pages[bob], "bob"))
    assert second_time > first_time > due > alice_time
    shot(pages[bob], "submitted-twice")
    steps.done("alice submits; due date in the formgrader; bob submits late, then resubmits")

    # 5. Collect, autograde with coursegrader in a terminal (sandboxed), feedback.
    formgrader_action(fg, "collect", "Successfully collected")
    collected = (course / "submitted" / bob / AID / "timestamp.txt").read_text().strip()
    assert submission_time(collected) == second_time, f"collect took bob's {collected}, not his latest submission"
    steps.done("collect")
    lab_ready(pages[teach])
    run_in_terminal(pages[teach], f"coursegrader autograde {AID}; echo $? > autograde.exit")
    status = wait_for_file(course / "autograde.exit")
    shot(pages[teach], "terminal-autograde")
    assert status == "0", f"coursegrader autograde exited {status}: see hub-terminal-autograde.png"
    steps.done("coursegrader autograde in a terminal (2 students, sandboxed)")
    for name in (alice, bob):  # the kernels ran in the sandbox: the run says so, and never "UNSANDBOXED"
        assert (course / "autograded" / name / AID / f"{AID}.ipynb").is_file()
    run = json.loads((course / "reports" / AID / "run.json").read_text())
    assert "UNSANDBOXED" not in json.dumps(run).upper() and run.get("sandbox", True) is not False, run
    formgrader_action(fg, "generate-feedback", "Successfully generated feedback of")
    formgrader_action(fg, "release-feedback", "Successfully released feedback of")
    steps.done("generate and release feedback")

    # 6. Each student fetches the feedback: the score they deserve, no hidden test.
    expected = {alice: AUTOGRADED, bob: AUTOGRADED - sum(points_by_test_cell(SOURCE_NB)[t] for t in SECOND.fails)}
    for name in (alice, bob):
        heading, page_file = feedback_heading(pages[name], home[name])
        shot(pages[name], f"feedback-{'alice' if name == alice else 'bob'}")
        got, out_of = score_of(heading)
        assert (got, out_of) == (expected[name], AUTOGRADED + WRITTEN), (
            f"{name}'s feedback says {heading!r}; expected {expected[name]:g} / {AUTOGRADED + WRITTEN:g} "
            f"(the written answer waits for a TA)")
        submitted = read_notebook(course / "submitted" / name / AID / f"{AID}.ipynb")
        leaks = feedback_leaks(SOURCE_NB, page_file.read_text(encoding="utf-8"), submitted)
        assert not leaks, f"{name}'s feedback shows hidden tests or mark schemes: {leaks[:5]}"
    steps.done("two students fetch and open their feedback")

    # The late submission, against the due date in the gradebook.
    rows = gradebook_rows(course)
    stamp = {name: datetime.fromisoformat(rows[name][0]) for name in (alice, bob)}
    due_in_book = datetime.fromisoformat(rows[alice][1])
    assert stamp[alice] <= due_in_book < stamp[bob], f"gradebook: {rows} (alice on time, bob late)"
    print("\n" + steps.save())


def test_exchange_permissions_as_a_student_sees_them(hub):
    """bob's server's view: he cannot list the inbound (others' submissions) or the feedback folder, cannot reach the
    instructor's course (source/, gradebook) or the course repository, and outbound holds the release only."""
    alice, bob = hub.students
    exchange = Path(hub.exchange) / hub.course_id
    course = Path(hub.course)

    def as_bob(script: str) -> subprocess.CompletedProcess:
        view = course_hub.server_view(hub, bob)
        return subprocess.run([*view, "/bin/sh", "-c", script], capture_output=True, text=True, timeout=60)

    assert as_bob("id -un").stdout.strip() == bob, "the view's command does not run as the user"
    for folder in (exchange / "inbound", exchange / "feedback"):
        done = as_bob(f"ls '{folder}'")
        assert done.returncode != 0 and "Permission denied" in done.stderr, f"bob lists {folder}: {done.stdout}"
    inbound = [p.name for p in (exchange / "inbound").iterdir()]  # as root: what bob would need to guess
    theirs = [n for n in inbound if n.startswith(f"{alice}+{AID}+")]
    if not theirs:
        pytest.fail("no submission of alice's in the exchange: this test reads what the cycle test left there")
    assert theirs and all(len(n.rsplit(" ", 1)[-1]) >= 12 for n in theirs), f"no random part in {theirs}"
    guess = exchange / "inbound" / theirs[0].rsplit(" ", 1)[0]
    assert as_bob(f"test -e '{guess}'").returncode != 0, "a submission is found without its random part"
    for secret in (course / "source" / AID / f"{AID}.ipynb", course / "gradebook.db",
                   course / "submitted" / alice / AID / f"{AID}.ipynb",
                   REPO / "source" / AID / f"{AID}.ipynb", Path(pwd.getpwnam(alice).pw_dir) / AID / f"{AID}.ipynb"):
        assert as_bob(f"cat '{secret}' > /dev/null").returncode != 0, f"bob can read {secret}"
    released = sorted(p.relative_to(exchange / "outbound") for p in (exchange / "outbound").rglob("*") if p.is_file())
    assert released == [Path(AID) / f"{AID}.ipynb"], f"outbound holds {released}"
    leaks = find_leaks(SOURCE_NB, read_notebook(exchange / "outbound" / AID / f"{AID}.ipynb"))
    assert not leaks, f"the released notebook leaks: {leaks[:5]}"
