"""Which names a test cell takes from the student's notebook, and the code that sets up the two kernels.

The test cell runs in the tests' kernel (proxy.py). Before it runs, the tests' kernel binds every name the
cell reads that the SOURCE notebook's own code defines at top level (its set-up, its given cells, the
solution cells' functions and answers): the course's imports are imported there afresh, the rest is fetched
from the student's kernel. A name the source notebook does not define is never fetched, so a student cannot
plant `_expected` in their namespace and catch what a test assigns to it.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

from IPython.core.inputtransformer2 import TransformerManager

from . import proxy
from .notebooks import is_solution, is_test, read_notebook

PROXY_SOURCE = Path(proxy.__file__).read_text(encoding="utf-8")


_transformer = TransformerManager()


@lru_cache(maxsize=4096)
def expected_input(source: str) -> str:
    """The code IPython executes for a cell with no transformers but its own (magics, prompts)."""
    try:
        return _transformer.transform_cell(source)
    except Exception:  # a syntax IPython cannot transform: it runs as is and fails
        return source


def python_of(source: str) -> ast.Module | None:
    try:
        return ast.parse(expected_input(source))
    except SyntaxError:
        return None


@lru_cache(maxsize=32)
def source_bindings(path: str, mtime_ns: int) -> dict[str, list]:
    """import_bindings of a source notebook's own code (every code cell that is not a solution), by path; the
    student cannot change it. Cached per path and modification time."""
    cells = read_notebook(Path(path)).cells
    return import_bindings([c.source for c in cells if c.cell_type == "code" and not is_solution(c)])


def import_bindings(sources: list[str]) -> dict[str, list]:
    """Names the course's own code (given cells and tests) binds by import: name -> [module, attribute or None].
    The tests' kernel imports these itself: `np = something_else` in a student's cell changes nothing for a test."""
    return {name: list(target) for source in sources for name, target in _imports(source)}


@lru_cache(maxsize=4096)
def _imports(source: str) -> tuple[tuple[str, tuple[str, str | None]], ...]:
    """(name, (module, attribute or None)) for each import in one cell, in order. Cached: a class hands in
    the same given cells and tests over and over."""
    tree = python_of(source)
    if tree is None:
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


@lru_cache(maxsize=32)
def notebook_names(path: str, mtime_ns: int) -> frozenset[str]:
    """Names the source notebook's code cells other than its tests bind at top level: what a test may take
    from the student's notebook. Cached per path and modification time."""
    names: set[str] = set()
    for cell in read_notebook(Path(path)).cells:
        if cell.cell_type == "code" and not is_test(cell):
            names |= _top_level(cell.source)
    return frozenset(names)


def _top_level(source: str) -> set[str]:
    """The names a cell binds at the top level of the notebook: definitions, assignments and imports, not the locals
    of its functions, classes, lambdas and comprehensions."""
    tree = python_of(source)
    if tree is None:
        return set()
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            return
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names if a.name != "*")
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        for child in ast.iter_child_nodes(node):
            visit(child)

    for statement in tree.body:
        visit(statement)
    return names


def load_code(fd: int, side: str, names: frozenset[str] = frozenset(), course: dict | None = None) -> str:
    """Code a kernel runs once, before any cell: proxy.py becomes its module `proxy.MODULE`, connected on `fd`.
    It binds no name in the notebook's namespace. On the tests' side it also frames every later cell
    (proxy.CellHooks), with the notebook's `names` and the `course`'s imports (see notebook_names, import_bindings)."""
    boot = ("import sys, types\n"
            f"module = types.ModuleType({proxy.MODULE!r})\n"
            f"exec(compile(source, {proxy.__file__!r}, 'exec'), module.__dict__)\n"
            f"sys.modules[{proxy.MODULE!r}] = module\n"
            f"module.connect({fd}, {side!r}, namespace)\n")
    if side == proxy.TESTS:
        boot += f"module.watch_test_cells(get_ipython(), {sorted(names)!r}, {dict(course or {})!r})\n"
    return f"exec({boot!r}, {{'source': {PROXY_SOURCE!r}, 'namespace': get_ipython().user_ns}})"


def call_code(function: str, *args) -> str:
    """Code that calls a function of the proxy module in a kernel (arguments: literals)."""
    return f"__import__('sys').modules[{proxy.MODULE!r}].{function}({', '.join(repr(a) for a in args)})"
