"""proxy.py, the channel between the student's kernel and the tests' kernel, in one process: the student side
serves in a thread, as it does in its kernel while a test cell runs."""

from __future__ import annotations

import json
import socket
import struct
import threading

import numpy as np
import pytest
import torch

from coursegrader import proxy


@pytest.fixture
def sides():
    """(tests peer, student namespace): the student side serves until the test ends."""
    a, b = socket.socketpair()
    student_ns: dict = {}
    student = proxy.Peer(a, proxy.STUDENT, student_ns)
    tests = proxy.Peer(b, proxy.TESTS, {})
    server = threading.Thread(target=student.serve, daemon=True)
    server.start()
    yield tests, student_ns
    tests.done()
    server.join(timeout=10)
    a.close()
    b.close()


def fetch(tests, ns, **names):
    ns.update(names)
    tests.bind(sorted(names), {})
    return [tests.namespace[n] for n in names]


def test_data_crosses_as_fresh_objects_of_the_real_types(sides):
    tests, ns = sides
    value = {"none": None, "flags": [True, False], "int": 2**70, "float": float("nan"), "inf": -float("inf"),
             "complex": 1 - 2j, "text": "é", "bytes": b"\x00\xff", "tuple": (1, (2.5, "x")), "set": {1, 2},
             "frozen": frozenset({"a"}), "range": range(1, 9, 2), "slice": slice(1, None, 2), "ellipsis": ...,
             "array": np.arange(6, dtype=np.int16).reshape(2, 3), "scalar": np.float32(1.5), "dtype": np.dtype("<f8"),
             "strings": np.array(["ab", "c"]), "tensor": torch.linspace(0, 1, 5, dtype=torch.float64),
             "half": torch.ones(3, dtype=torch.bfloat16), "tdtype": torch.int64, "size": torch.Size([2, 3]),
             7: "int key"}
    (got,) = fetch(tests, ns, value=value)
    assert got is not value and set(got) == set(value)
    assert got["int"] == 2**70 and np.isnan(got["float"]) and got["inf"] == -float("inf")
    assert got["tuple"] == (1, (2.5, "x")) and got["set"] == {1, 2} and got["range"] == range(1, 9, 2)
    assert type(got["array"]) is np.ndarray and got["array"].dtype == np.int16 and (got["array"] == value["array"]).all()
    assert type(got["scalar"]) is np.float32 and got["dtype"] == np.float64 and list(got["strings"]) == ["ab", "c"]
    assert type(got["tensor"]) is torch.Tensor and torch.equal(got["tensor"], value["tensor"])
    assert got["half"].dtype == torch.bfloat16 and got["tdtype"] is torch.int64 and got["size"] == torch.Size([2, 3])
    assert got["ellipsis"] is ... and got[7] == "int key" and got["bytes"] == b"\x00\xff"


def test_subclasses_and_liars_arrive_as_plain_data(sides):
    tests, ns = sides

    class AlwaysEqual(set):
        __hash__ = None

        def __eq__(self, other):
            return True

    class Agreeable(np.ndarray):
        def __array_function__(self, *args, **kwargs):
            return True

    (s, a) = fetch(tests, ns, s=AlwaysEqual({"a"}), a=np.arange(3).view(Agreeable))
    assert type(s) is set and s != {"b"}
    assert type(a) is np.ndarray and not np.allclose(a, [5, 5, 5])


def test_functions_are_called_with_data_and_their_changes_come_back(sides):
    tests, ns = sides

    def scale(x, factor, out=None, generator=None):
        x *= factor  # changes its argument in place
        return x.sum(), torch.randn(2, generator=generator)

    (f,) = fetch(tests, ns, scale=scale)
    assert isinstance(f, proxy.Remote)
    x = np.ones(3)
    g = torch.Generator().manual_seed(0)
    total, noise = f(x, 2.0, generator=g)
    assert total == 6.0 and (x == 2).all(), "an array changed by the callee changes for the caller"
    assert torch.equal(noise, torch.randn(2, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(f(x, 1.0, generator=g)[1], noise), "the generator advanced"


def test_objects_that_are_not_data_stay_behind_handles(sides):
    tests, ns = sides
    torch.manual_seed(0)
    (model,) = fetch(tests, ns, model=torch.nn.Linear(3, 2))
    assert isinstance(model, proxy.Remote)
    assert set(model.state_dict()) == {"weight", "bias"}
    assert sum(p.numel() for p in model.parameters()) == 8
    assert model(torch.zeros(1, 3)).shape == (1, 2)
    assert isinstance(ns["model"], torch.nn.Linear), "the student's object never left"
    with pytest.raises(AttributeError):
        model.no_such_attribute


def test_gradients_flow_through_the_student_function_and_back(sides):
    tests, ns = sides
    (f,) = fetch(tests, ns, f=lambda mu, logvar: mu + torch.exp(0.5 * logvar) * 2.0)
    mu, lv = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    z = f(mu, lv)
    gmu, glv = torch.autograd.grad(z.sum(), (mu, lv))
    assert torch.equal(gmu, torch.ones(3)) and torch.allclose(glv, torch.ones(3))


def test_the_student_trains_through_a_callback_of_the_tests(sides):
    tests, ns = sides

    def fit(loss_fn, steps):
        w = torch.zeros(2, requires_grad=True)
        for _ in range(steps):
            loss = loss_fn(w)
            loss.backward()
            with torch.no_grad():
                w -= 0.1 * w.grad
                w.grad = None
        return w.detach()

    (fit_remote,) = fetch(tests, ns, fit=fit)
    target = torch.tensor([1.0, -2.0])
    w = fit_remote(lambda w: ((w - target) ** 2).sum(), 100)
    assert torch.allclose(w, target, atol=1e-4)


def test_rebinding_a_student_name_reaches_the_student_and_is_undone(sides):
    tests, ns = sides
    _, uses = fetch(tests, ns, helper=lambda x: "student's", uses=lambda x: ns["helper"](x))
    tests.namespace["helper"] = lambda x: f"tests' {x}"
    assert uses(1) == "tests' 1"
    original = tests.fetched["helper"]
    tests.namespace["helper"] = original
    assert uses(1) == "student's"


def test_the_student_side_can_only_call_what_the_tests_pass_in(sides):
    tests, ns = sides
    secret = {"expected": 42}

    def reference(x):
        return x + 1

    reference.secret = secret

    def probe(fn):
        found = {"call": fn(1)}
        for attempt in ("getattr", "repr", "lookup"):
            try:
                if attempt == "getattr":
                    found[attempt] = fn.secret
                elif attempt == "repr":
                    found[attempt] = repr(fn)
                else:
                    found[attempt] = fn._peer.request("lookup", name="secret")
            except Exception as exc:  # noqa: BLE001
                found[attempt] = type(exc).__name__
        return found

    (p,) = fetch(tests, ns, probe=probe)
    tests.namespace["secret"] = secret
    found = p(reference)
    assert found["call"] == 2
    assert found["getattr"] == "PermissionError" and found["lookup"] == "PermissionError"
    assert "42" not in str(found) and "expected" not in str(found)


def test_student_exceptions_become_builtin_types_or_remote_errors(sides):
    tests, ns = sides

    class Custom(Exception):
        pass

    def bad(kind):
        raise {"value": ValueError("bad value"), "stub": NotImplementedError("write me"), "custom": Custom("mine")}[kind]

    (f,) = fetch(tests, ns, bad=bad)
    with pytest.raises(ValueError, match="bad value"):
        f("value")
    with pytest.raises(NotImplementedError, match="write me"):
        f("stub")
    with pytest.raises(proxy.RemoteError, match="Custom: mine"):
        f("custom")


def test_names_the_student_lacks_or_cannot_send_fail_when_the_test_uses_them(sides):
    tests, ns = sides
    ns["objects"] = np.array([object()])
    tests.bind(["missing", "objects"], {})
    with pytest.raises(NameError, match="not defined in your notebook"):
        tests.namespace["missing"](1)
    with pytest.raises(RuntimeError, match="could not be sent"):
        len(tests.namespace["objects"])


def frame(header: dict, buffers=()) -> bytes:
    raw = json.dumps(header).encode()
    out = struct.pack("<QI", len(raw), len(buffers)) + raw
    for b in buffers:
        out += struct.pack("<Q", len(b)) + b
    return out


@pytest.mark.parametrize("value, why", [
    ({"t": "ndarray", "dtype": "|O", "shape": [1], "b": 0}, "dtype not allowed"),
    ({"t": "ndarray", "dtype": "<f8", "shape": [3], "b": 0}, "does not match its shape"),
    ({"t": "ref", "home": "T", "id": 99}, "unknown handle"),
    ({"t": "module", "v": "os"}, "not importable"),
    ({"t": "pickle", "v": "..."}, "unknown kind"),
    ({"t": "tensor", "dtype": "float64", "shape": [1], "b": 0, "grad": True, "g": {"t": "tensor", "dtype": "float64", "shape": [2], "b": 0}}, "used twice"),
    # arrays own the buffer they were received in: two values sharing one would share memory
    ({"t": "list", "v": [{"t": "ndarray", "dtype": "<f8", "shape": [1], "b": 0}] * 2}, "used twice"),
])
def test_the_tests_side_rejects_malformed_data(value, why):
    a, b = socket.socketpair()
    tests = proxy.Peer(b, proxy.TESTS, {})
    tests.sequence = 1
    a.sendall(frame({"re": 1, "ok": True, "value": value}, [b"\x00" * 8]))
    message, buffers = tests._await(1)
    with pytest.raises(proxy.ProtocolError, match=why):
        tests.decode(message["value"], buffers)
    a.close()
    b.close()


def test_operators_on_handles_run_where_the_object_lives(sides):
    tests, ns = sides

    class Num:
        def __init__(self, v):
            self.v = v

        def __add__(self, other):
            return Num(self.v + (other.v if isinstance(other, Num) else other))

        __radd__ = __add__

        def __mul__(self, other):
            return Num(self.v * (other.v if isinstance(other, Num) else other))

        __rmul__ = __mul__

        def __neg__(self):
            return Num(-self.v)

        def __lt__(self, other):
            return self.v < other

    (make,) = fetch(tests, ns, Num=Num)
    a = make(2.0)
    assert (2.0 * a + a).v == 6.0 and (-a).v == -2.0 and (a < 3) is True
    assert a == a and a != make(2.0), "handles compare by identity"
    assert {a: 1}[a] == 1


def test_changes_inside_lists_and_warnings_come_back(sides):
    import warnings

    tests, ns = sides

    def scale_all(grads, factor):
        for g in grads:
            g.mul_(factor)  # in place, inside a list
        warnings.warn("scaled in place", RuntimeWarning)
        return np.zeros(1) * np.inf * 0  # and numpy's own warning

    (f,) = fetch(tests, ns, scale_all=scale_all)
    grads = [torch.ones(2), torch.ones(3)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        f(grads, 2.0)
    assert all((g == 2).all() for g in grads), "tensors changed inside a list change for the caller"
    assert {type(w.message) for w in caught} == {RuntimeWarning} and len(caught) == 2, [str(w.message) for w in caught]


def test_lists_and_dicts_changed_by_the_callee_change_for_the_caller(sides):
    tests, ns = sides

    def extend(tokens, seen):
        tokens.append(3)
        seen["calls"] = seen.get("calls", 0) + 1
        return len(tokens)

    (f,) = fetch(tests, ns, extend=extend)
    tokens, seen = [1, 2], {}
    assert f(tokens, seen) == 3 and tokens == [1, 2, 3] and seen == {"calls": 1}
    kept = [1, 2]
    (g,) = fetch(tests, ns, g=lambda t: sum(t))
    assert g(kept) == 3 and kept == [1, 2]


# --- the tests' kernel's hooks around a test cell (CellHooks), in an IPython shell of a process of its own ---

TEST_CELLS = r"""
import json, socket, sys, threading
from IPython.core.interactiveshell import InteractiveShell
from coursegrader import split, proxy
shell = InteractiveShell.instance()
a, b = socket.socketpair()
student_ns = {"DATA": [1, 2], "secret": 41}
exec("def double(x):\n    return 2 * x\ndef quad(x):\n    return double(double(x))", student_ns)
student = proxy.Peer(a, proxy.STUDENT, student_ns)
loaded = shell.run_cell(split.load_code(b.fileno(), proxy.TESTS, frozenset({"double", "quad", "DATA", "np"}),
                                        {"np": ["numpy", None]}), silent=True).success
released = []

def serve():
    student.serve()
    released.append(True)

server = threading.Thread(target=serve)
server.start()
cell = shell.run_cell("assert double(3) == 6 and DATA == [1, 2] and np.__name__ == 'numpy'\n"
                      "double = lambda x: 0\n"
                      "assert quad(3) == 0, 'the student side must see the swap while the cell runs'\n"
                      "leaked = 'secret' in dir()")
server.join(10)
restored = student_ns["double"](2)

def garble():  # answers the first request with a frame that is not the protocol's
    a.recv(65536)
    a.sendall(b"\xff" * 12)

server = threading.Thread(target=garble)
server.start()
broken = shell.run_cell("ran = True\nDATA")
server.join(10)
print(json.dumps([loaded, cell.success, repr(cell.error_in_exec), released, shell.user_ns.get("leaked"), restored,
                  broken.success, type(broken.error_in_exec).__name__, "ran" in shell.user_ns]))
"""


def test_the_tests_kernel_binds_a_cells_names_first_and_releases_the_student_after_it(tmp_path):
    """proxy.CellHooks: the grader sends the test cell alone; the tests' kernel binds the names it reads (and only
    the notebook's) before its first statement, and after it restores what it rebound and releases the student's
    kernel. A broken channel fails the cell before any of its code runs."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, "-c", TEST_CELLS], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stderr
    loaded, ok, error, released, leaked, restored, broken_ok, broken_error, ran = json.loads(
        done.stdout.strip().splitlines()[-1])
    assert loaded and ok, f"the test cell failed: {error}\n{done.stdout}"
    assert released == [True], "the student's kernel must be released (Peer.done) once the test cell has run"
    assert leaked is False, "a name the source notebook does not define must not be fetched"
    assert restored == 4, "the student's own function must be back once the cell that swapped it has run"
    assert not broken_ok and broken_error == "NotebookUnreachable", (broken_ok, broken_error)
    assert not ran, "a test cell whose names could not be bound must not run"
