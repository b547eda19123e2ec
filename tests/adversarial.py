"""A class of hostile, broken and honest submissions to the toy assignment, and what each must score.

Each `Case` is one student: how their folder is written, and what autograde must make of it. The toy
notebook has two exercises: `double` (test cell `test_double`, 2 points) and `answer_quiz`
(`test_answer_quiz`, 1 point). "Wrong" answers pass the visible tests and fail the hidden ones, so a
cheat that disables the hidden tests would earn full marks under plain nbgrader.

A case's name says what it is: `cheat-`, `plant-`, `crash-`, `shadow-` and `snoop` run hostile code and are
graded only in the sandbox (`Case.hostile`; skipped on a machine without bubblewrap); `bad-` submissions are
never run (not gradable); the others (`a-honest`, `odd-`, `z-honest`, a student named like a formula) hand
in honest code.
"""

from __future__ import annotations

import copy
import json
import os
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from coursegrader.notebooks import grade_id, read_notebook, with_answers, write_notebook

RIGHT = {"double": "def double(x):\n    return 2 * np.asarray(x)", "answer_quiz": 'answer_quiz = {"b"}'}
WRONG = {"double": "def double(x):\n    return 2", "answer_quiz": 'answer_quiz = {"a"}'}
FULL = {"test_double": 2.0, "test_answer_quiz": 1.0}
ZERO = {"test_double": 0.0, "test_answer_quiz": 0.0}
ONLY_QUIZ = {"test_double": 0.0, "test_answer_quiz": 1.0}
ONLY_DOUBLE = {"test_double": 2.0, "test_answer_quiz": 0.0}


@dataclass
class Case:
    student: str
    write: Callable[[Path, Path], None]  # (release notebook, submission folder) -> writes the folder
    scores: dict[str, float] | None = None  # test cell -> points; None: not graded
    reason: str = ""  # for a submission that cannot be graded: part of the reason given
    failed: set[str] = field(default_factory=set)  # cells the report must name as stopping the kernel
    note: str = ""  # part of a note the row must carry
    max_seconds: float | None = None  # the longest this student may hold a grading worker

    @property
    def hostile(self) -> bool:
        """Hostile code: graded only in the sandbox, never on a machine without bubblewrap."""
        return self.student.startswith(("cheat-", "plant-", "crash-", "shadow-", "snoop"))


def notebook(release: Path, answers: dict[str, str], extra: list[tuple[str, str]] = (),
             edit: Callable[[nbformat.NotebookNode], None] | None = None) -> nbformat.NotebookNode:
    """The release with `answers` written in and `extra` code cells inserted before the cell with that grade id
    ('' = after the first code cell)."""
    nb = with_answers(read_notebook(release), answers)
    for before, code in extra:
        cell = nbformat.v4.new_code_cell(textwrap.dedent(code).strip("\n"))
        at = next((i for i, c in enumerate(nb.cells) if grade_id(c) == before), None) if before else None
        if at is None:
            at = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code") + 1
        nb.cells.insert(at, cell)
    if edit:
        edit(nb)
    return nb


def hand_in(answers: dict[str, str], extra: list[tuple[str, str]] = (), edit=None, files: dict[str, bytes] = None):
    """A submission of the release with `answers`, `extra` cells (see `notebook`), an `edit` and extra `files`."""
    def write(release: Path, folder: Path) -> None:
        write_notebook(notebook(release, answers, extra, edit), folder / "toy.ipynb")
        for name, data in (files or {}).items():
            (folder / name).write_bytes(data)
    return write


def raw(data: bytes, name: str = "toy.ipynb"):
    def write(release: Path, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return write


def _replace_test(gid: str, source: str):
    def edit(nb):
        for c in nb.cells:
            if grade_id(c) == gid:
                c.source = source
    return edit


def _points(gid: str, points: float):
    def edit(nb):
        for c in nb.cells:
            if grade_id(c) == gid:
                c.metadata["nbgrader"]["points"] = points
    return edit


def _drop_tests(nb):
    nb.cells = [c for c in nb.cells if not (grade_id(c) or "").startswith("test_")]


def _copied_cells(nb):
    """What a student who copies and pastes gets: a second answer cell and a second test cell, each with the
    same grade_id and cell id as the first, and a cell pasted from another notebook (a grade_id the assignment
    does not have)."""
    for gid in ("double", "test_double"):
        at = next(i for i, c in enumerate(nb.cells) if grade_id(c) == gid)
        nb.cells.insert(at + 1, copy.deepcopy(nb.cells[at]))
    pasted = copy.deepcopy(next(c for c in nb.cells if grade_id(c) == "answer_quiz"))
    pasted.metadata["nbgrader"]["grade_id"] = "from_another_notebook"
    pasted.id = "pasted-from-elsewhere"
    nb.cells.append(pasted)


def _append(*sources: str):
    """Code cells added at the end of the notebook, after every test."""
    def edit(nb):
        nb.cells.extend(nbformat.v4.new_code_cell(textwrap.dedent(s).strip("\n")) for s in sources)
    return edit


def _kernel(name: str):
    def edit(nb):
        nb.metadata["kernelspec"] = {"name": name, "display_name": name, "language": name}
    return edit


def _nbformat3(release: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    nb = notebook(release, RIGHT)
    nbformat.write(nbformat.convert(nb, 3), str(folder / "toy.ipynb"), version=3)


def _symlinked(target: Path):
    def write(release: Path, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        os.symlink(target, folder / "toy.ipynb")
    return write


FAKE_NUMPY = b"""
# A numpy.py handed in beside the notebook: `import numpy` in the kernel would find this first.
def allclose(*args, **kwargs):
    return True
def asarray(x):
    return x
def arange(*args):
    return list(range(*args))
"""

SNOOP = """
import os, socket
seen = {}
for label, path in PATHS.items():
    try:
        with open(path, "rb") as f:
            f.read(16)
        seen[label] = "READ"
    except OSError as exc:
        seen[label] = "denied"
try:
    with open(CONFIG, "a") as f:
        f.write("\\n# appended by a student\\n")
    seen["append-config"] = "WROTE"
except OSError:
    seen["append-config"] = "denied"
for label, address in (("loopback", ("127.0.0.1", PORT)), ("internet", ("192.0.2.1", 80))):
    try:
        socket.create_connection(address, timeout=2).close()
        seen[label] = "CONNECTED"
    except OSError:
        seen[label] = "denied"
seen["secret-env"] = "READ" if "COURSEGRADER_TEST_SECRET" in os.environ else "denied"
print("SNOOP", json.dumps(seen))
"""


# A file handed in beside the notebook under the name of the kernel's entry point: a kernel started with its
# folder on the import path runs this instead of ipykernel's own, and the patch is in place before any probe.
FAKE_LAUNCHER = b"""
import runpy, sys
del sys.path[0]  # this folder, put first by `python -m`: now the real launcher is found
sys.modules.pop("ipykernel_launcher", None)
import numpy
numpy.allclose = lambda *a, **k: True
runpy.run_module("ipykernel_launcher", run_name="__main__")
"""

# A file whose name moves the terminal's cursor up and erases a line: the student's row names it.
ANSI_NAME = "\x1b[1A\x1b[2K\rAllFine.txt"


# --- the holes of tests that run in the student's own process (found by a red-team review): each is harmless
# once the tests run in a kernel of their own (proxy.py), and scores what its answers deserve.

# Answers every request that holds an assert as if it passed: the test cell never runs in this kernel.
SKIP_TESTS = """
_kernel = get_ipython().kernel
_run = _kernel.do_execute
async def _skip(code, silent, *args, **kwargs):
    if "assert" in code:
        code = "pass"
    return await _run(code, silent, *args, **kwargs)
_kernel.do_execute = _skip"""

# A patch applied while the hidden test runs and removed as the test cell's frame returns, by a trace function.
PATCH_IN_TEST = """
import sys
import numpy
def double(x):
    original, caller = numpy.allclose, sys._getframe(1)
    numpy.allclose = lambda *a, **k: True
    def tracer(frame, event, arg):
        if frame is caller and event == "return":
            numpy.allclose = original
            sys.settrace(None)
        return tracer
    caller.f_trace = tracer
    sys.settrace(tracer)
    return 2"""

# An assert-removing AST transformer that declares itself part of the standard library.
LYING_TRANSFORMER = """
import ast
class NodeTransformer(ast.NodeTransformer):
    def visit_Assert(self, node):
        return ast.Pass()
NodeTransformer.__module__ = "ast"
get_ipython().ast_transformers.append(NodeTransformer())"""

# A quiz answer that claims to be a set (isinstance believes __class__) and equals everything.
LYING_SET = """
class Liar:
    __class__ = property(lambda self: set)
    __hash__ = None
    def __eq__(self, other):
        return True
    def __le__(self, other):
        return True
    def __len__(self):
        return 1
    def __iter__(self):
        return iter(["a"])
answer_quiz = Liar()"""

# Looks up the stack for the hidden test's own reference helper and returns what it computes.
CALLER_GLOBALS = """
import sys
def double(x):
    for depth in range(1, 8):
        try:
            helper = sys._getframe(depth).f_globals.get("_twice")
        except ValueError:
            break
        if helper is not None:
            return helper(x)
    return 2"""

# Records the source of whatever calls it (the test cell, when the test runs in this kernel)...
RECORD_CALLER = """
import linecache
import sys
seen_source = []
def double(x):
    seen_source.extend(linecache.getlines(sys._getframe(1).f_code.co_filename))
    return 2 * np.asarray(x)"""

# ... and a last cell prints every record of executed code the kernel keeps.
PRINT_HISTORY = """
import linecache
_ip = get_ipython()
print("IN", *In, sep="\\n")
print("IH", *_ih, sep="\\n")
print("SESSION", *(src for _, _, src in _ip.history_manager.get_range(output=False)), sep="\\n")
print("LINECACHE", *("".join(entry[2]) for entry in list(linecache.cache.values()) if len(entry) > 2), sep="\\n")
print("CALLER", "".join(seen_source))"""

# An exception whose message quotes the caller's source: it reaches the feedback as the test's message.
QUOTE_CALLER = """
import linecache
import sys
def double(x):
    raise ValueError("".join(linecache.getlines(sys._getframe(1).f_code.co_filename)) or "no source")"""


def snoop_cell(paths: dict[str, str], config: str, port: int) -> str:
    return f"import json\nPATHS = {json.dumps(paths)}\nCONFIG = {config!r}\nPORT = {port}\n" + SNOOP


DISPLAY_2MB = """
from IPython.display import HTML, display
display(HTML("<p>" + "x" * 1_900_000 + "</p>"))"""


def cases(root: Path, port: int) -> list[Case]:
    """The adversarial class, in the order autograde sees them (sorted by name): honest students first and last."""
    secrets = {"source": str(root / "source" / "toy" / "toy.ipynb"), "gradebook": str(root / "gradebook.db"),
               "other-student": str(root / "submitted" / "a-honest" / "toy" / "toy.ipynb"),
               "home": str(Path.home() / ".bashrc"), "shadow": "/etc/shadow"}
    snoop = snoop_cell(secrets, str(root / "nbgrader_config.py"), port)
    return [
        Case("a-honest", hand_in(RIGHT), FULL),
        # --- the sandbox: reads, writes and the network are denied; the student's grade is unaffected
        Case("snoop", hand_in(RIGHT, [("", snoop)]), FULL),
        # --- tampering with the tests: each cheat scores 0 on the test cells it could have fooled
        Case("cheat-transformer", hand_in(WRONG, [("", """
            get_ipython().input_transformers_post.append(
                lambda lines: [] if any("assert" in line for line in lines) else lines)""")]),
             ZERO),
        Case("cheat-ast", hand_in(WRONG, [("", """
            import ast
            class NoAsserts(ast.NodeTransformer):
                def visit_Assert(self, node):
                    return ast.Pass()
            get_ipython().ast_transformers.append(NoAsserts())""")]),
             ZERO),
        Case("cheat-allclose", hand_in({**RIGHT, "double": WRONG["double"]}, [("", "np.allclose = lambda *a, **k: True")]),
             ONLY_QUIZ),
        Case("cheat-builtins", hand_in(RIGHT, [("test_answer_quiz", "import builtins\nbuiltins.abs = lambda x: 0")]),
             FULL),
        Case("cheat-sys-modules", hand_in(RIGHT, [("", "import sys, types\nsys.modules['numpy'] = types.ModuleType('numpy')")]),
             FULL),
        Case("cheat-showtraceback", hand_in(WRONG, [("", "get_ipython().showtraceback = lambda *a, **k: None")]),
             ZERO),
        Case("cheat-custom-exc", hand_in(WRONG, [("", "get_ipython().set_custom_exc((AssertionError,), lambda *a, **k: None)")]),
             ZERO),
        Case("cheat-event", hand_in(RIGHT, [("", "get_ipython().events.register('pre_run_cell', lambda *a: None)")]),
             FULL),
        Case("cheat-settrace", hand_in(RIGHT, [("", "import sys\nsys.settrace(lambda *a: None)")]),
             FULL),
        Case("cheat-fake-np", hand_in({**RIGHT, "double": WRONG["double"]}, [("test_double", """
            class FakeNumpy:
                def __getattr__(self, name):
                    return getattr(__import__("numpy"), name)
                def allclose(self, *args, **kwargs):
                    return True
            np = FakeNumpy()""")]), ONLY_QUIZ),
        Case("cheat-defaults", hand_in({**RIGHT, "double": WRONG["double"]}, [("test_double", """
            np.allclose._implementation.__defaults__ = (1e9, 1e9, False)""")]),
             ONLY_QUIZ),
        Case("cheat-submodule", hand_in({**RIGHT, "double": WRONG["double"]}, [("test_double", """
            import numpy._core.numeric as numeric
            numeric.isclose = lambda *a, **k: True""")]),
             ONLY_QUIZ),
        Case("cheat-one-shot", hand_in({**RIGHT, "double": WRONG["double"]}, [("test_double", """
            original = np.allclose
            def once(*args, **kwargs):
                np.allclose = original  # undoes itself inside the hidden test, before the check after it
                return True
            np.allclose = once""")]), ONLY_QUIZ),
        Case("cheat-thread", hand_in({**RIGHT, "double": WRONG["double"]}, [("test_double", """
            import threading, time
            original = np.allclose
            np.allclose = lambda *a, **k: True
            def undo():  # hides the patch from a check made long after the test
                time.sleep(20)
                np.allclose = original
            threading.Thread(target=undo, daemon=True).start()""")]), ONLY_QUIZ),
        Case("cheat-oracle", hand_in(WRONG, [("", """
            import ast as _ast, re
            _ip = get_ipython()
            def _pre(info):  # reads the hidden test as it arrives and writes the answer it wants
                m = re.search("answer_quiz" + r" == (\\{.*?\\})", info.raw_cell or "")
                if m:
                    _ip.user_ns["answer_quiz"] = _ast.literal_eval(m.group(1))
                if "np.allclose(double" in (info.raw_cell or ""):
                    _ip.user_ns["double"] = lambda x: 2 * np.asarray(x)
            def _post(result):
                if "answer_quiz" + " ==" in (result.info.raw_cell or ""):
                    _ip.events.unregister("pre_run_cell", _pre)
                    _ip.events.unregister("post_run_cell", _post)
            _ip.events.register("pre_run_cell", _pre)
            _ip.events.register("post_run_cell", _post)""")]), ZERO),
        Case("cheat-compile", hand_in(WRONG, [("", """
            import ast
            _c = get_ipython().compile
            _parse = _c.ast_parse
            class _NoAsserts(ast.NodeTransformer):
                def visit_Assert(self, node):
                    return ast.Pass()
            _c.ast_parse = lambda *a, **k: ast.fix_missing_locations(_NoAsserts().visit(_parse(*a, **k)))""")]),
             ZERO),
        Case("cheat-drop-errors", hand_in(WRONG, [("", """
            _sess = get_ipython().displayhook.session
            _send = _sess.send
            def _quiet(stream, msg_or_type, *a, _send=_send, **k):
                if msg_or_type == "error":
                    return None
                if msg_or_type == "execute_reply":
                    content = a[0] if a else k.get("content")
                    if content.get("status") == "error":
                        for key in ("ename", "evalue", "traceback"):
                            content.pop(key, None)
                        content["status"] = "ok"
                return _send(stream, msg_or_type, *a, **k)
            _sess.send = _quiet""")]), ZERO),
        Case("cheat-fake-import", hand_in({**RIGHT, "double": WRONG["double"]}, [("test_double", """
            import builtins as _b
            _orig_allclose = np.allclose
            np.allclose = lambda *a, **k: True
            _fake_allclose = np.allclose
            class _FakeB:  # hands a probe that imports builtins by name an exec that hides the patch
                def __getattr__(self, n):
                    return getattr(_b, n)
                def exec(self, src, ns):
                    np.allclose = _orig_allclose
                    try:
                        return _b.exec(src, ns)
                    finally:
                        np.allclose = _fake_allclose
            def __import__(name, *a, **k):
                return _FakeB() if name == "builtins" else _b.__import__(name, *a, **k)""")]),
             ONLY_QUIZ),
        Case("cheat-formatter", hand_in({**RIGHT, "double": WRONG["double"]}, [("test_double", """
            np.allclose = lambda *a, **k: True
            def _fix(s, p, cycle):  # rewrites what the kernel reports about itself
                p.text(repr(s.replace("allclose", "allclose_")))
            get_ipython().display_formatter.formatters["text/plain"].for_type(str, _fix)""")]),
             ONLY_QUIZ),
        Case("cheat-set-subclass", hand_in({**RIGHT, "answer_quiz": (
            "class AlwaysEqual(set):\n    __hash__ = None\n    def __eq__(self, other):\n        return True\n"
            "answer_quiz = AlwaysEqual({'a'})")}), ONLY_DOUBLE),
        Case("cheat-array-function", hand_in({**RIGHT, "double": (
            "class Agreeable(np.ndarray):\n    def __array_function__(self, func, types, args, kwargs):\n"
            "        return True\n"
            "def double(x):\n    return (2 * np.asarray(x) + 1).view(Agreeable) if np.ndim(x) else 2 * x")}),
             ONLY_QUIZ),
        Case("odd-ansi-file", hand_in(RIGHT, files={ANSI_NAME: b"notes"}), FULL, note="AllFine.txt"),
        # --- what fooled tests that ran in the student's process; now the tests run in a kernel of their own
        Case("cheat-skip-tests", hand_in(WRONG, [("", SKIP_TESTS)]), ZERO),
        Case("cheat-patch-in-test", hand_in({**RIGHT, "double": PATCH_IN_TEST}), ONLY_QUIZ),
        Case("cheat-lying-transformer", hand_in(WRONG, [("", LYING_TRANSFORMER)]), ZERO),
        Case("cheat-lying-set", hand_in({**RIGHT, "answer_quiz": LYING_SET}), ONLY_DOUBLE),
        Case("cheat-caller-globals", hand_in({**RIGHT, "double": CALLER_GLOBALS}), ONLY_QUIZ),
        Case("snoop-history", hand_in({**RIGHT, "double": RECORD_CALLER}, edit=_append(PRINT_HISTORY)), FULL),
        Case("snoop-exception", hand_in({**RIGHT, "double": QUOTE_CALLER}), ONLY_QUIZ),
        # --- files handed in beside the notebook: never on the kernel's import path, and named in the row
        Case("cheat-numpy-py", hand_in(WRONG, files={"numpy.py": FAKE_NUMPY}), ZERO, note="numpy.py (module numpy)"),
        Case("shadow-launcher", hand_in({**RIGHT, "double": WRONG["double"]}, files={"ipykernel_launcher.py": FAKE_LAUNCHER}),
             ONLY_QUIZ, note="ipykernel_launcher.py (module ipykernel_launcher)"),
        Case("cheat-edit-test", hand_in(WRONG, edit=_replace_test("test_double", "pass")), ZERO),
        Case("cheat-delete-tests", hand_in(WRONG, edit=_drop_tests), ZERO),
        Case("cheat-points", hand_in(RIGHT, edit=_points("test_double", 100)), FULL),
        Case("cheat-exit-before-tests", hand_in(WRONG, [("test_double", "import os\nos._exit(0)")]), ZERO,
             failed={"cell 4"}),
        # --- writing through links as root, or leaving something behind for the next student
        Case("plant-symlinks", hand_in(RIGHT, [("", f"""
            import os
            os.symlink({str(root / 'victim.txt')!r}, 'toy.integrity.json')
            os.symlink({str(root / 'victim-dir')!r}, 'linked-dir')
            os.rename(os.environ['HOME'], os.environ['HOME'] + '-old')
            os.symlink({str(root / 'victim-dir')!r}, os.environ['HOME'])"""), ("test_answer_quiz", f"""
            import os
            os.remove('toy.ipynb')
            os.symlink({str(root / 'victim.txt')!r}, 'toy.ipynb')""")]), FULL),
        Case("plant-startup", hand_in(RIGHT, [("", """
            import os
            evil = "import numpy\\nnumpy.allclose = lambda *a, **k: False\\n"
            for top in {os.environ["HOME"], os.path.dirname(os.environ["HOME"]), os.getcwd(), "/tmp"}:
                folder = os.path.join(top, ".ipython", "profile_default", "startup")
                try:
                    os.makedirs(folder, exist_ok=True)
                    with open(os.path.join(folder, "00-evil.py"), "w") as f:
                        f.write(evil)
                except OSError:
                    pass""")]), FULL),
        # --- code that breaks the kernel costs the cells it affects, never the whole submission
        Case("crash-exit", hand_in({**RIGHT, "double": RIGHT["double"] + "\nimport os\nos._exit(3)"}), ONLY_QUIZ,
             failed={"double"}),
        Case("crash-segfault", hand_in({**RIGHT, "answer_quiz": "import ctypes\nctypes.string_at(0)\n" + RIGHT["answer_quiz"]}),
             ONLY_DOUBLE, failed={"answer_quiz"}),
        Case("crash-loop", hand_in({**RIGHT, "double": "while True:\n    pass\n" + RIGHT["double"]}), ONLY_QUIZ),
        Case("crash-loop-no-interrupt", hand_in({**RIGHT, "double": (
            "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass\n" + RIGHT["double"])}),
             ONLY_QUIZ, failed={"double"}),
        # --- ... also when a test calls it: the test cell fails, the notebook is graded again without it
        Case("crash-in-test", hand_in({**RIGHT, "double": "def double(x):\n    import os\n    os._exit(1)"}), ONLY_QUIZ,
             failed={"test_double"}),
        Case("crash-hang-in-test", hand_in({**RIGHT, "double": (
            "def double(x):\n    import signal\n    signal.signal(signal.SIGINT, signal.SIG_IGN)\n    while True:\n"
            "        pass")}), ONLY_QUIZ, failed={"test_double"}),
        Case("crash-memory", hand_in(RIGHT, [("", "hoard = [bytes(2**30) for _ in range(64)]")]), FULL),
        Case("crash-forkbomb", hand_in(RIGHT, [("", "import os\nwhile True:\n    os.fork()")]), FULL, failed={"cell 3"}),
        Case("crash-disk", hand_in(RIGHT, [("", "with open('big.bin', 'wb') as f:\n    f.write(bytes(300 * 2**20))")]),
             FULL),
        # --- one student cannot hold a worker long, nor fill its memory: limits per notebook, not only per cell
        Case("crash-slow", hand_in(RIGHT, edit=_append(*["import time\ntime.sleep(4)"] * 12)), FULL, max_seconds=45),
        Case("crash-many-outputs", hand_in(RIGHT, edit=_append(*[DISPLAY_2MB] * 4)), FULL,
             note="outputs past 3 MB per notebook were not kept"),
        Case("crash-big-print", hand_in(RIGHT, [("", "print('x' * 30_000_000)")]), FULL),
        Case("crash-big-display", hand_in(RIGHT, [("", """
            from IPython.display import HTML, display
            for _ in range(10):
                display(HTML("<p>" + "x" * 500_000 + "</p>"))""")]), FULL),
        Case("crash-big-error", hand_in({**RIGHT, "double": "def double(x):\n    raise ValueError('x' * 10**7)"}), ONLY_QUIZ),
        # --- submissions nbgrader cannot read: a row with the reason, and the batch goes on
        Case("bad-json", raw(b'{"cells": [,]}'), reason="not valid JSON"),
        Case("bad-empty", raw(b""), reason="empty file"),
        Case("bad-binary", raw(b"\xff\xfe\x00\x01 not text"), reason="not a text file"),
        Case("bad-not-a-notebook", raw(b'{"hello": "world"}'), reason="not a Jupyter notebook"),
        Case("bad-huge", raw(b'{"x": "' + b"y" * (21 * 1024**2) + b'"}'), reason="more than a notebook can be"),
        Case("bad-renamed", lambda release, folder: hand_in(RIGHT)(release, folder) or
             (folder / "toy.ipynb").rename(folder / "toy (1).ipynb"), reason="renamed?"),
        Case("bad-missing", lambda release, folder: folder.mkdir(parents=True, exist_ok=True), reason="missing"),
        Case("bad-symlink", _symlinked(root / "source" / "toy" / "toy.ipynb"), reason="symbolic links"),
        # --- unusual but gradable: graded, with a note for the TA
        Case("odd-nbformat3", _nbformat3, FULL, note="notebook format 3"),
        Case("odd-kernel", hand_in(RIGHT, edit=_kernel("ir")), FULL, note="asks for kernel 'ir'"),
        Case("odd-extra-files", hand_in(RIGHT, files={"notes.txt": b"my notes"}), FULL, note="notes.txt"),
        Case("odd-many-files", hand_in(RIGHT, files={f"draft-{i}.txt": b"draft" for i in range(1, 8)}), FULL,
             note="draft-1.txt, draft-2.txt, draft-3.txt, draft-4.txt, draft-5.txt, draft-6.txt, draft-7.txt"),
        Case("odd-copied-cells", hand_in(RIGHT, edit=_copied_cells), FULL, note="copies of the cells double, test_double"),
        Case("=1+2", hand_in(RIGHT), FULL),  # a name a spreadsheet would run as a formula
        Case("z-honest", hand_in(RIGHT), FULL),
    ]
