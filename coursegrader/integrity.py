"""Did the hidden tests really run, against the real numpy, builtins and IPython?

A student's code shares the kernel with the hidden tests, so it can try to make them pass without being
right: blank later cells with an IPython input transformer, strip asserts with an AST transformer,
replace `builtins.abs` or `numpy.testing.assert_allclose`, put a fake module into `sys.modules`, or ship a
`numpy.py` beside the notebook. The grader cannot look into the kernel from outside, but it can ask:
before the first cell, and before and after every graded test cell, it evaluates a probe as a *user
expression* (evaluated by the kernel directly, past every input transformer; execution.py has the cells'
own requests carry it where it can) that reports

- the identity of every callable in the watched modules, and where those modules were loaded from;
- the IPython hooks (input and AST transformers, event callbacks, custom exception handlers, the
  shell's run methods) and any trace or profile function;
- the last input the kernel actually executed.

`changes` compares a probe with the one taken before the first cell; `rewritten` checks that the test
cell the kernel ran is the test cell the grader sent. A determined student with deep knowledge of
IPython could still fake a probe; the integrity report is evidence for a human, not a proof.
"""

from __future__ import annotations

import ast
import json
import marshal
from dataclasses import dataclass
from functools import lru_cache
from importlib.util import MAGIC_NUMBER
from pathlib import Path

from IPython.core.inputtransformer2 import TransformerManager

from .notebooks import is_solution, read_notebook

# Modules the tests rely on. A package is watched only if the notebook imports it, and then from the
# start: the baseline probe imports it before the first cell runs, so a later patch cannot become the baseline.
WATCHED = {
    "builtins": ("builtins",),
    "math": ("math",),
    "numpy": ("numpy", "numpy.testing", "numpy.linalg", "numpy.random"),
    "torch": ("torch", "torch.testing", "torch.nn.functional"),
}
SHELL_METHODS = ("run_cell", "run_cell_async", "run_ast_nodes", "run_code", "transform_cell", "transform_ast",
                 "showtraceback", "_showtraceback", "CustomTB", "user_expressions", "ev", "ex", "should_run_async")

# Runs inside the kernel, in a fresh namespace, through exec: the grader reads `out` (a JSON string).
PROBE_SOURCE = r'''
import builtins, importlib, json, os, sys
roots = {sys.prefix, sys.base_prefix, sys.exec_prefix}
prefixes = tuple(os.path.realpath(p) + os.sep for p in roots)
literal = tuple(os.path.normpath(os.path.abspath(p)) + os.sep for p in roots)
seen = {}
def installed(path):
    """Loaded from the Python installation? The path as written is checked first (no disk access): under the
    sandbox the installation is read-only, so nothing in it can be a link the student planted."""
    if path not in seen:
        seen[path] = bool(path) and (os.path.normpath(path).startswith(literal)
                                     or os.path.realpath(path).startswith(prefixes))
    return seen[path]
def origin(obj):
    """Where a hook was defined: 'installed', or the file (or '<cell>') it came from."""
    f = getattr(obj, "__func__", obj)
    code = getattr(f, "__code__", None)
    if code is None:
        call = getattr(type(f), "__call__", None)
        code = getattr(call, "__code__", None)
    if code is not None:
        path = code.co_filename
    else:
        module = sys.modules.get(getattr(type(f), "__module__", "") or "")
        path = getattr(module, "__file__", None) if module is not None else None
        if path is None and type(f).__module__ == "builtins":
            return "installed"
    if path and ("ipykernel_" in path or path.startswith("<")):
        return "a notebook cell"
    return "installed" if installed(path) else (path or "<unknown>")
def describe(obj):
    f = getattr(obj, "__func__", obj)
    name = getattr(f, "__qualname__", None) or type(f).__qualname__
    return [getattr(f, "__module__", None) or type(f).__module__, name, origin(obj)]
def inner(v, attr):
    try:
        return None if isinstance(v, type) else getattr(v, attr, None)
    except Exception:
        return None
FUNCTION = type(inner)
# Callables whose calls run C code whatever attributes they carry: builtin functions (which take no
# attributes at all) and numpy's ufuncs. They are about half of what is watched; their entry is just their id.
# Both types are reached without a name the notebook could rebind.
OPAQUE = {type(().__class__.__base__.__subclasses__)}
ufunc = getattr(sys.modules.get("numpy"), "ufunc", None)
if isinstance(ufunc, type) and ufunc.__name__ == "ufunc" and not ufunc.__flags__ & (1 << 9):  # a C type, not a class made in Python
    OPAQUE.add(ufunc)
def entry(v):
    """(id, id of what it wraps (0: nothing), made by installed code, digest of the code and defaults behind it).
    The digest catches a function changed in place (np.allclose._implementation.__defaults__ = ...)."""
    t = type(v)
    if t in OPAQUE or isinstance(v, type):
        return (id(v), 0, False, 0)
    if t is FUNCTION and not v.__dict__:  # a plain function with no attributes: nothing wrapped, no _implementation
        return (id(v), 0, False, hash((id(v.__code__), id(v.__defaults__), repr(v.__kwdefaults__))))
    wrapped = inner(v, "__wrapped__")
    f = inner(v, "_implementation") or v
    code = inner(f, "__code__")
    digest = 0
    if code is not None:
        digest = hash((id(code), id(inner(f, "__defaults__")), repr(inner(f, "__kwdefaults__"))))
    return (id(v), id(wrapped) if wrapped is not None else 0, wrapped is not None and origin(v) == "installed", digest)
watch = list(WATCH)
for name in WATCH:
    if IMPORT:
        try:
            importlib.import_module(name)
        except Exception:
            pass
if IMPORT:  # the baseline also watches every loaded submodule of these (their functions call each other)
    watch += sorted(m for m in list(sys.modules) if m.startswith(EXPAND) and m not in watch)
modules = {}
known = {}  # id -> entry: numpy exports the same functions from several of its modules
for name in watch:
    m = sys.modules.get(name)
    if m is None:
        continue
    ids = {k: known[id(v)] if id(v) in known else known.setdefault(id(v), entry(v))
           for k, v in list(vars(m).items()) if callable(v) and k not in ("_", "__", "___")}
    modules[name] = {"id": id(m), "digest": hash((id(m), tuple(ids.items())))}  # a module replaced is listed in full
    if DETAIL is None or name in DETAIL:  # the full list only when asked: it is most of the probe's size
        modules[name].update(ids=ids, file=getattr(m, "__file__", None),
                             installed=name == "builtins" or installed(getattr(m, "__file__", None)))
ip = sys.modules["IPython"].get_ipython()
hooks = {
    "input_transformers_cleanup": [describe(t) for t in ip.input_transformers_cleanup],
    "input_transformers_post": [describe(t) for t in ip.input_transformers_post],
    "ast_transformers": [describe(t) for t in ip.ast_transformers],
    "custom_exceptions": [describe(t) for t in (ip.custom_exceptions or ())],
    "events": {e: [describe(cb) for cb in cbs] for e, cbs in ip.events.callbacks.items()},
}
shell = {n: id(getattr(type(ip), n, None)) for n in SHELL_METHODS}
overridden = sorted(n for n in SHELL_METHODS if n in vars(ip))
# what turns code into bytecode, and what sends replies and errors to the grader
parts = {"compile": (ip.compile, ("ast_parse", "__call__", "cache")),
         "kernel.session": (getattr(getattr(ip, "kernel", None), "session", None), ("send", "serialize", "sign")),
         "display_pub.session": (getattr(ip.display_pub, "session", None), ("send", "serialize", "sign")),
         "displayhook.session": (getattr(ip.displayhook, "session", None), ("send", "serialize", "sign"))}
for label, (obj, methods) in parts.items():
    if obj is not None:
        shell[label] = [id(obj)] + [id(getattr(type(obj), n, None)) for n in methods]
        overridden += [f"{label}.{n}" for n in methods if n in vars(obj)]
hooks["text/plain printers"] = [describe(p) for p in
                                list(ip.display_formatter.formatters["text/plain"].type_printers.values())]
# Answers that lie: subclasses of the types tests compare, defined in the notebook, that change how they
# compare or what numpy/torch functions do with them (a set whose __eq__ always says yes, an array whose
# __array_function__ makes np.allclose say yes).
def type_origin(c):
    module = getattr(c, "__module__", "") or ""
    if module == "__main__":
        return "a notebook cell"
    return "installed" if module == "builtins" or installed(getattr(sys.modules.get(module), "__file__", None)) \
        else (getattr(sys.modules.get(module), "__file__", None) or module)
def subclasses(base):
    found, stack = [], [base]
    while stack:
        for c in type.__subclasses__(stack.pop()):
            found.append(c)
            stack.append(c)
    return found
EQ = ("__eq__", "__ne__", "__bool__", "__hash__", "__iter__", "__len__", "__contains__")
bases = [(t, EQ) for t in (set, frozenset, dict, list, tuple, int, float, complex, str, bytes)]
if "numpy" in sys.modules:
    bases.append((sys.modules["numpy"].ndarray, EQ + ("__array_function__", "__array_ufunc__", "__array_wrap__")))
if "torch" in sys.modules:
    bases.append((sys.modules["torch"].Tensor, EQ + ("__torch_function__", "__torch_dispatch__")))
hooks["answer types"] = [[c.__module__, f"{c.__qualname__} ({base.__name__} with {', '.join(sorted(set(attrs) & set(vars(c))))})",
                          type_origin(c)]
                         for base, attrs in bases for c in subclasses(base)
                         if type_origin(c) != "installed" and set(attrs) & set(vars(c))]
hist = ip.history_manager.input_hist_parsed
rebound = {}  # names the course's imports bind, now bound to something else (e.g. np = a fake module)
for name, (module, attr) in BINDINGS.items():
    mod = sys.modules.get(module)
    if name not in ip.user_ns or mod is None:
        continue  # not imported yet at this point of the notebook
    value = ip.user_ns[name]
    target = mod if attr is None else getattr(mod, attr, None)
    genuine = getattr(mod, "__file__", None) is None or installed(mod.__file__)
    if value is not target or not genuine:
        rebound[name] = f"{module}.{attr}" if attr else module
out = json.dumps({"modules": modules, "hooks": hooks, "shell": shell, "overridden": overridden, "rebound": rebound,
                  "trace": sys.gettrace() is not None, "profile": sys.getprofile() is not None,
                  "last_input": hist[-1] if hist else None})
'''


def watched_modules(sources: list[str]) -> list[str]:
    """The WATCHED modules of the packages the notebook's code imports (builtins always)."""
    used = {module.split(".")[0] for module, _ in import_bindings(sources).values()} | {"builtins"}
    return [m for pkg, mods in WATCHED.items() if pkg in used for m in mods]


@lru_cache(maxsize=32)
def source_bindings(path: str, mtime_ns: int) -> dict[str, list]:
    """import_bindings of a source notebook's own code (every code cell that is not a solution), by path; the
    student cannot change it. Cached per path and modification time."""
    cells = read_notebook(Path(path)).cells
    return import_bindings([c.source for c in cells if c.cell_type == "code" and not is_solution(c)])


def import_bindings(sources: list[str]) -> dict[str, list]:
    """Names the course's own code (given cells and tests) binds by import: name -> [module, attribute or None].

    The tests look these names up in the notebook's namespace, so `np = something_else` in a student's cell
    would change what the tests call; the probe checks each one is still what the import bound.
    """
    return {name: list(target) for source in sources for name, target in _imports(source)}


@lru_cache(maxsize=4096)
def _imports(source: str) -> tuple[tuple[str, tuple[str, str | None]], ...]:
    """(name, (module, attribute or None)) for each import in one cell, in order. Cached: a class hands in
    the same given cells and tests over and over, and parsing them is a grader's CPU a kernel could use."""
    try:
        tree = ast.parse(expected_input(source))
    except SyntaxError:
        return ()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                top = a.name.split(".")[0]
                found.append((a.asname, (a.name, None)) if a.asname else (top, (top, None)))
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found += [(a.asname or a.name, (node.module, a.name)) for a in node.names if a.name != "*"]
    return tuple(found)


EXPAND = ("numpy.", "torch.testing.")

# The expression names nothing the notebook could shadow (`__import__`, `exec`, `__builtins__` are all
# looked up in the notebook's namespace first): it reaches the real builtins through the import machinery.
_BOOTSTRAP = "[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'BuiltinImporter'][0]" \
             ".find_spec.__func__.__globals__['__builtins__']"
# ... and `marshal` and the bytecode's MAGIC_NUMBER the same way, from the module that loads .pyc files.
_LOADER = "[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'FileLoader'][0].__init__.__globals__"


def probe_expression(watched: list[str], import_them: bool, bindings: dict[str, list] | None = None,
                     detail: list[str] | None = None) -> str:
    """A user expression that runs PROBE_SOURCE in a namespace of its own and returns its JSON.
    `detail`: modules whose every callable is listed (None: all); the others report a digest."""
    source = (f"WATCH = {watched!r}\nIMPORT = {import_them!r}\nEXPAND = {EXPAND!r}\nDETAIL = {detail!r}\n"
              f"SHELL_METHODS = {SHELL_METHODS!r}\nBINDINGS = {bindings or {}!r}\n" + PROBE_SOURCE)
    return _expression(source)


@lru_cache(maxsize=256)
def _expression(source: str) -> str:
    """The probe's code goes compiled, as marshal data: compiling the source took the kernel about 2 ms of the
    8 a probe cost (about 50 ms per notebook), loading compiled code takes 0.05 ms. A kernel of another
    Python version (another bytecode MAGIC_NUMBER) compiles the source, which goes along."""
    code = marshal.dumps(compile(source, "<string>", "exec")).hex()
    run = (f"b['exec'](g['marshal'].loads(b''.fromhex({code!r})) if g['MAGIC_NUMBER'] == {MAGIC_NUMBER!r} "
           f"else {source!r}, ns)")
    return f"(lambda b, g: (lambda ns: {run} or ns['out'])({{'__builtins__': b}}))({_BOOTSTRAP}, {_LOADER})"


@dataclass(frozen=True)
class Probe:
    data: dict

    @classmethod
    def from_reply(cls, reply: dict) -> Probe:
        """Parse the probe's user-expression result; raise ValueError with the kernel's error otherwise."""
        result = reply.get("content", {}).get("user_expressions", {}).get("probe")
        if not result:
            raise ValueError("the kernel returned no integrity probe")
        if result.get("status") != "ok":
            raise ValueError(f"the integrity probe failed in the kernel: {result.get('ename')}: {result.get('evalue')}")
        try:
            return cls(json.loads(ast.literal_eval(result["data"]["text/plain"])))
        except (KeyError, TypeError, ValueError, SyntaxError):
            raise ValueError("the integrity probe's answer was unreadable (the kernel's display machinery is broken)") from None


def _hook_names(entries: list) -> list[str]:
    return [f"{module}.{name}" + ("" if where == "installed" else f" (defined in {where})") for module, name, where in entries]


def foreign_modules(baseline: Probe) -> list[str]:
    """Watched modules that were not loaded from the installed Python (e.g. a numpy.py in the submission)."""
    return [f"module {name} is loaded from {m['file']}, not from the installed packages"
            for name, m in baseline.data["modules"].items() if not m["installed"]]


def _same(before: list, after: list | None) -> bool:
    """Is a module attribute still the original, unchanged, or an installed wrapper of it (torch wraps some
    functions on first use, e.g. torch.manual_seed when torch._dynamo loads)?"""
    if after is None:
        return False
    if after[0] == before[0]:
        return after[3] == before[3]
    return after[1] == before[0] and after[2]


def changes(baseline: Probe, now: Probe) -> list[str]:
    """What the student's code changed since the baseline, in words a TA can check."""
    found = []
    for name, before in baseline.data["modules"].items():
        after = now.data["modules"].get(name)
        if after is None:
            found.append(f"sys.modules['{name}'] was removed")
            continue
        if after["id"] != before["id"]:
            found.append(f"sys.modules['{name}'] was replaced by another module ({after['file']})")
        if "ids" not in after:  # its digest matched one already checked
            continue
        changed = sorted(k for k, v in before["ids"].items() if not _same(v, after["ids"].get(k)))
        if changed:
            shown = ", ".join(f"{name}.{k}" for k in changed[:5]) + (" ..." if len(changed) > 5 else "")
            found.append(f"replaced or deleted: {shown}")
    for kind, entries in now.data["hooks"].items():
        if kind == "events":
            continue
        # a custom exception handler is a finding whatever it catches (its classes are builtins)
        added = [e for e in entries if e not in baseline.data["hooks"][kind]
                 and (e[2] != "installed" or kind == "custom_exceptions")]
        if added:
            found.append(f"IPython {kind} registered: {', '.join(_hook_names(added))}")
    for event, callbacks in now.data["hooks"]["events"].items():
        added = [c for c in callbacks if c not in baseline.data["hooks"]["events"].get(event, []) and c[2] != "installed"]
        if added:
            found.append(f"IPython '{event}' callback registered: {', '.join(_hook_names(added))}")
    replaced = {n for n, i in now.data["shell"].items() if baseline.data["shell"].get(n) != i}
    replaced |= set(now.data["overridden"]) - set(baseline.data["overridden"])
    if replaced:
        found.append(f"IPython shell methods replaced: {', '.join(sorted(replaced))}")
    for name, what in now.data.get("rebound", {}).items():
        found.append(f"'{name}' is no longer {what}, which the tests expect it to be")
    for hook in ("trace", "profile"):
        if now.data[hook] and not baseline.data[hook]:
            found.append(f"a {hook} function is set (sys.set{hook})")
    return found


_transformer = TransformerManager()


@lru_cache(maxsize=4096)
def expected_input(source: str) -> str:
    """The code IPython executes for a cell with no transformers but its own (magics, prompts)."""
    try:
        return _transformer.transform_cell(source)
    except Exception:  # a syntax IPython cannot transform: it runs as is and fails
        return source


def rewritten(source: str, after: Probe) -> str:
    """Why the test cell that ran is not the one sent ('' if it is): blanked, rewritten, or not run at all
    (then the last input the kernel stored is an earlier cell's)."""
    ran = after.data["last_input"]
    if ran is None or ran.strip() != expected_input(source).strip():
        return "the test cell did not run as written (blanked or rewritten by an input transformer or a patched shell)"
    return ""
