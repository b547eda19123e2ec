"""Two kernels that reach each other's objects with plain data: the student's kernel and the tests' kernel.

Under autograde a test cell runs in a kernel of its own (the *tests* side), started clean, that never holds
student code. The names the test cell uses that the student's notebook defines are fetched from the
student's kernel (the *student* side) over a socket pair the grader hands both sandboxes:

- data crosses as data and nothing else: None, bools, numbers, strings, bytes, lists, tuples, sets, dicts,
  ranges, slices, numpy arrays and scalars, torch tensors, dtypes and sizes, and numpy and torch random
  generators (by state). The receiver builds a fresh object of the real type from a JSON header and raw
  buffers: no pickle, no object of the sender's classes, ever;
- anything else (a student's function, class, model) stays where it lives and crosses as a handle
  (`Remote`): calling it, or reading its attributes and items, is a request to the side that owns it, and the
  answer is data again (or another handle). Arrays, tensors and generators passed to a call come back
  updated when the callee changed them, as they would be in one process;
- the student side may call back only what the tests passed in (a callable: a target function, a reference
  helper swapped in by the test), and may do nothing else with it: no attribute, no item, no repr. It cannot
  ask the tests side for a name, so nothing of a hidden test (its source, its data, its helpers) can reach
  the student's process;
- names a test cell rebinds that the student's notebook defines (a reference swapped in for the student's
  own function) are rebound in the student's kernel too before each request, and restored after the cell.

In the tests' kernel, two IPython hooks frame every test cell (`CellHooks`): the cell's first statement binds
the names it reads that the notebook defines, and once it has run the student's kernel is released. The
grader sends the cell alone, as plain nbgrader does, and nothing else to the tests' kernel.

The grader loads this file into both kernels as a module of its own (`MODULE`), before any cell runs; it
imports only the standard library at load time (numpy and torch when data of theirs crosses).
"""

from __future__ import annotations

import ast
import builtins
import importlib
import json
import math
import operator
import re
import socket
import struct
import sys
import warnings

MODULE = "_coursegrader_proxy"  # the name this file has in sys.modules inside a kernel
STUDENT, TESTS = "S", "T"
MAX_DEPTH = 64
MAX_HEADER = 64 * 1024**2
MAX_BUFFERS = 1_000_000
MAX_FRAME = 2 * 1024**3
MAX_PARTS = 512  # pieces of a frame given to one sendmsg (the system allows 1024)
CHUNK = 65536  # bytes asked for by one recv of small reads
MAX_TEXT = 2000  # characters of an error message or a repr that cross
NUMPY_KINDS = "biufcUS"  # bool, integers, floats, complex, strings: never objects or structured records
TORCH_DTYPES = ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16", "float32", "float64",
                "complex64", "complex128")
NUMPY_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")
# Modules a handle may name to be imported on the receiving side instead of proxied (the receiver imports its own).
IMPORTABLE = ("numpy", "torch", "math", "cmath", "random", "statistics", "itertools", "functools", "collections",
              "operator", "matplotlib", "scipy", "ipywidgets", "time", "string", "re", "json", "typing")
# Operators a handle supports (== and != compare handles by identity, so that they can be dict keys).
BINARY_OPS = ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "lt", "le", "gt", "ge")
UNARY_OPS = ("neg", "pos", "abs")
# Operations a handle supports; the tests side answers only "call" (and "done"), the student side all of them.
STUDENT_OPS = ("lookup", "assign", "call", "backward", "binop", "unop", "getattr", "setattr", "getitem", "setitem", "len", "iter", "next",
               "repr", "str", "bool", "contains", "isinstance")
TESTS_OPS = ("call", "backward")


class ProtocolError(RuntimeError):
    """The other side sent something that is not a well-formed message of this protocol."""


class RemoteError(Exception):
    """An exception raised on the other side whose type is not a built-in one: its type name and message."""


class PeerGone(RuntimeError):
    """The other kernel closed the channel (it died, or was stopped, while a request waited for it)."""


_MODULES: dict = {}  # numpy and torch as this module first found them: a later swap in sys.modules changes nothing


def _module(name: str, load: bool = False):
    found = _MODULES.get(name)
    if found is None:
        found = importlib.import_module(name) if load else sys.modules.get(name)
        if found is not None and name == "numpy":
            importlib.import_module("numpy.random")  # numpy loads it lazily, through sys.modules, which may change
        if found is not None:
            _MODULES[name] = found
    return found


def _np():
    return _module("numpy", load=True)


def _torch():
    return _module("torch", load=True)


class Remote:
    """A handle on an object that lives in the other kernel. Everything done with it is a request there."""

    __slots__ = ("_peer", "_id", "__weakref__")

    def __init__(self, peer: Peer, ident: int):
        object.__setattr__(self, "_peer", peer)
        object.__setattr__(self, "_id", ident)

    def __call__(self, *args, **kwargs):
        return self._peer.call(self, args, kwargs)

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__") and name not in ("__name__", "__qualname__", "__doc__"):
            raise AttributeError(name)  # protocol probes (numpy's __array__, copy's __deepcopy__) stay local
        return self._peer.request("getattr", obj=self, name=name)

    def __setattr__(self, name, value):
        self._peer.request("setattr", obj=self, name=name, value=value)

    def __getitem__(self, key):
        return self._peer.request("getitem", obj=self, key=key)

    def __setitem__(self, key, value):
        self._peer.request("setitem", obj=self, key=key, value=value)

    def __len__(self):
        n = self._peer.request("len", obj=self)
        if type(n) is not int or n < 0:
            raise TypeError("len() of the student's object did not give a non-negative int")
        return n

    def __iter__(self):
        iterator = self._peer.request("iter", obj=self)
        while True:
            done, value = self._peer.request("next", obj=iterator)
            if done is True:
                return
            yield value

    def __contains__(self, item):
        return self._peer.request("contains", obj=self, item=item) is True

    def __bool__(self):
        return self._peer.request("bool", obj=self) is True

    def __repr__(self):
        text = self._peer.request("repr", obj=self)
        return text[:MAX_TEXT] if isinstance(text, str) else "<the student's object>"

    def __str__(self):
        text = self._peer.request("str", obj=self)
        return text[:MAX_TEXT] if isinstance(text, str) else "<the student's object>"

    def __neg__(self):
        return self._peer.request("unop", name="neg", obj=self)

    def __pos__(self):
        return self._peer.request("unop", name="pos", obj=self)

    def __abs__(self):
        return self._peer.request("unop", name="abs", obj=self)

    def __instancecheck__(self, obj):  # isinstance(x, handle_on_a_class)
        return self._peer.request("isinstance", obj=obj, cls=self) is True

    def __subclasscheck__(self, cls):
        return False

    def __reduce__(self):
        raise TypeError("a handle on the other kernel's object cannot be pickled")


class Unavailable:
    """What a test finds under a name of the notebook that did not reach it: using it raises the reason."""

    __slots__ = ("_why",)

    def __init__(self, name: str, exc: Exception):
        why = (f"name {name!r} is not defined in your notebook" if isinstance(exc, NameError) else
               f"{name!r} could not be sent from your notebook to the tests ({type(exc).__name__}: {exc})")
        object.__setattr__(self, "_why", why)

    def _fail(self, *args, **kwargs):
        raise NameError(self._why) if self._why.startswith("name ") else RuntimeError(self._why)

    __call__ = __getitem__ = __iter__ = __len__ = __bool__ = __eq__ = __lt__ = __le__ = __gt__ = __ge__ = _fail
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __contains__ = __float__ = _fail
    __hash__ = None

    def __getattr__(self, name):
        self._fail()

    def __repr__(self):
        return f"<unavailable: {self._why}>"


def _binary(name: str, reflected: bool = False):
    """A Remote's operator: the object's own operator, applied where it lives."""
    if reflected:
        return lambda self, other: self._peer.request("binop", name=name, left=other, right=self)
    return lambda self, other: self._peer.request("binop", name=name, left=self, right=other)


for _name in BINARY_OPS:
    setattr(Remote, f"__{_name}__", _binary(_name))
    if _name not in ("lt", "le", "gt", "ge"):
        setattr(Remote, f"__r{_name}__", _binary(_name, reflected=True))


class Peer:
    """One side of the channel: encodes and decodes data, keeps the objects it has handed out, answers requests."""

    def __init__(self, sock: socket.socket, side: str, namespace: dict):
        self.sock, self.side, self.namespace = sock, side, namespace
        self.other = TESTS if side == STUDENT else STUDENT
        self.ops = STUDENT_OPS if side == STUDENT else TESTS_OPS
        self.exported: dict[int, object] = {}  # handle id -> object of ours the other side holds
        self.export_ids: dict[int, int] = {}  # id(object) -> handle id
        self.remotes: dict[int, Remote] = {}  # handle id -> our handle on the other side's object
        self.sequence = 0
        self._warnings: list = []  # what the call being answered warned about
        self.graphs: dict[int, tuple[list, list]] = {}  # request -> (its tensors that need gradients, the result's)
        # the tests side: names fetched from the student, and what the student's kernel last heard about them
        self.fetched: dict[str, object] = {}
        self.told: dict[str, object] = {}
        self._pending = bytearray()  # bytes received beyond the frame being read

    # --- frames ----------------------------------------------------------------------------------
    def send(self, message: dict, buffers: list) -> None:
        """One frame: sizes, the JSON header and the buffers, in one system call where the socket takes it all."""
        header = json.dumps(message, allow_nan=True).encode()
        head = [struct.pack("<QI", len(header), len(buffers)), header]
        views = [memoryview(buf).cast("B") for buf in buffers]
        parts = head + [p for view in views for p in (struct.pack("<Q", view.nbytes), view)]
        if len(parts) > MAX_PARTS:
            parts = [b"".join(head + [struct.pack("<Q", v.nbytes) + v.tobytes() for v in views])]
        sent = self.sock.sendmsg(parts)
        for part in parts:  # a large frame may go in several calls
            size = memoryview(part).nbytes
            if sent < size:
                self.sock.sendall(memoryview(part)[sent:])
            sent = max(0, sent - size)

    def _read(self, n: int) -> bytearray:
        """The next n bytes of the stream: from what an earlier recv brought, then small reads in chunks (one call
        usually brings a whole frame), large ones straight into their buffer."""
        data = bytearray(n)
        view, got = memoryview(data), min(n, len(self._pending))
        if got:
            data[:got] = self._pending[:got]
            del self._pending[:got]
        while got < n:
            if n - got >= CHUNK:
                k = self.sock.recv_into(view[got:], n - got)
                if k == 0:
                    raise PeerGone("the other kernel closed the channel")
                got += k
                continue
            chunk = self.sock.recv(CHUNK)
            if not chunk:
                raise PeerGone("the other kernel closed the channel")
            k = min(len(chunk), n - got)
            data[got:got + k] = chunk[:k]
            self._pending += chunk[k:]
            got += k
        return data

    def receive(self) -> tuple[dict, list]:
        size, count = struct.unpack("<QI", self._read(12))
        if size > MAX_HEADER or count > MAX_BUFFERS:
            raise ProtocolError("frame too large")
        message = json.loads(self._read(size))
        if not isinstance(message, dict):
            raise ProtocolError("a message must be a JSON object")
        buffers, total = [], size
        for _ in range(count):
            (n,) = struct.unpack("<Q", self._read(8))
            total += n
            if total > MAX_FRAME:
                raise ProtocolError("frame too large")
            buffers.append(self._read(n))
        return message, buffers

    # --- data -> JSON tree + buffers --------------------------------------------------------------
    def encode(self, obj, buffers: list, depth: int = 0, tape: list | None = None):
        if depth > MAX_DEPTH:
            raise ValueError(f"data nested more than {MAX_DEPTH} levels deep cannot cross to the other kernel")
        t = type(obj)
        if obj is None or t is bool or t is str:
            return obj
        if t is int:
            return obj if abs(obj) < 2**53 else {"t": "int", "v": str(obj)}
        if t is float:
            return {"t": "float", "v": repr(obj)} if not math.isfinite(obj) else obj
        if isinstance(obj, Remote):
            return {"t": "ref", "home": self.other, "id": obj._id}
        np, torch = _module("numpy"), _module("torch")
        if np is not None:
            if isinstance(obj, np.ndarray):
                return self._array(np.asarray(obj), buffers)
            if isinstance(obj, np.generic) and obj.dtype.kind in NUMPY_KINDS:
                return {"t": "npscalar", "a": self._array(np.asarray(obj), buffers)}
            if isinstance(obj, np.dtype) and obj.kind in NUMPY_KINDS:
                return {"t": "npdtype", "v": obj.str}
            if isinstance(obj, np.random.Generator):
                return {"t": "npgen", "state": self.encode(obj.bit_generator.state, buffers, depth + 1)}
            if isinstance(obj, np.random.RandomState):
                return {"t": "randomstate", "state": self.encode(obj.get_state(legacy=False), buffers, depth + 1)}
        if torch is not None:
            if isinstance(obj, torch.Tensor):
                if tape is not None and obj.requires_grad:
                    tape.append(obj)
                return self._tensor(obj, buffers)
            if isinstance(obj, torch.dtype):
                return {"t": "tdtype", "v": str(obj).removeprefix("torch.")}
            if isinstance(obj, torch.Size):
                return {"t": "tsize", "v": [int(n) for n in obj]}
            if isinstance(obj, torch.device):
                return {"t": "tdevice", "v": str(obj)}
            if isinstance(obj, torch.Generator):
                buffers.append(obj.get_state().numpy().tobytes())
                return {"t": "tgen", "b": len(buffers) - 1}
        if isinstance(obj, bool):
            return bool(obj)
        if isinstance(obj, int):
            return self.encode(int(obj), buffers, depth, tape)
        if isinstance(obj, float):
            return self.encode(float(obj), buffers, depth, tape)
        if isinstance(obj, str):
            return str(obj)
        if isinstance(obj, complex):
            return {"t": "complex", "v": [repr(obj.real), repr(obj.imag)]}
        if isinstance(obj, (bytes, bytearray)):
            buffers.append(bytes(obj))
            return {"t": "bytes" if isinstance(obj, bytes) else "bytearray", "b": len(buffers) - 1}
        for kind, base in (("list", list), ("tuple", tuple), ("set", set), ("frozenset", frozenset)):
            if isinstance(obj, base):
                return {"t": kind, "v": [self.encode(x, buffers, depth + 1, tape) for x in base(obj)]}
        if isinstance(obj, dict):
            items = list(dict.items(obj))
            return {"t": "dict", "k": [self.encode(k, buffers, depth + 1) for k, _ in items],
                    "v": [self.encode(v, buffers, depth + 1, tape) for _, v in items]}
        if isinstance(obj, range):
            return {"t": "range", "v": [obj.start, obj.stop, obj.step]}
        if isinstance(obj, slice):
            return {"t": "slice", "v": [self.encode(x, buffers, depth + 1) for x in (obj.start, obj.stop, obj.step)]}
        if obj is Ellipsis:
            return {"t": "ellipsis"}
        if t is type(sys) and getattr(obj, "__name__", "").split(".")[0] in IMPORTABLE:
            return {"t": "module", "v": obj.__name__}
        return self._export(obj)

    def _array(self, a, buffers: list) -> dict:
        if a.dtype.kind not in NUMPY_KINDS:
            raise TypeError(f"a numpy array of dtype {a.dtype} cannot cross to the other kernel (numbers and strings only)")
        buffers.append(_bytes_of(_np().ascontiguousarray(a)))  # a view: sent before anyone can change it
        return {"t": "ndarray", "dtype": a.dtype.str, "shape": list(a.shape), "b": len(buffers) - 1}

    def _tensor(self, t, buffers: list) -> dict:
        torch = _torch()
        name = str(t.dtype).removeprefix("torch.")
        if name not in TORCH_DTYPES or t.layout != torch.strided:
            raise TypeError(f"a tensor of dtype {t.dtype} and layout {t.layout} cannot cross to the other kernel")
        data = t.detach().to("cpu").contiguous()
        raw = data.view(torch.int16) if name == "bfloat16" else data  # numpy has no bfloat16: same bits as int16
        buffers.append(_bytes_of(raw.numpy()))
        tree = {"t": "tensor", "dtype": name, "shape": list(data.shape), "b": len(buffers) - 1,
                "grad": bool(t.requires_grad), "param": isinstance(t, torch.nn.Parameter)}
        if t.is_leaf and t.grad is not None and t.grad.layout == torch.strided:
            tree["g"] = self._tensor(t.grad, buffers)  # a parameter's accumulated gradient goes along
        return tree

    def _export(self, obj) -> dict:
        key = id(obj)
        ident = self.export_ids.get(key)
        if ident is None or self.exported.get(ident) is not obj:
            ident = len(self.exported) + 1
            self.exported[ident] = obj
            self.export_ids[key] = ident
        return {"t": "ref", "home": self.side, "id": ident}

    # --- JSON tree + buffers -> data (validated: the other side may send anything) ---------------
    def decode(self, tree, buffers: list, depth: int = 0, tape: list | None = None):
        if depth > MAX_DEPTH:
            raise ProtocolError("nested too deeply")
        if tree is None or type(tree) in (bool, int, float, str):
            return tree
        if type(tree) is not dict or type(tree.get("t")) is not str:
            raise ProtocolError("malformed data")
        kind = tree["t"]
        sub = lambda x: self.decode(x, buffers, depth + 1, tape)  # noqa: E731
        if kind == "int":
            return int(_text(tree["v"], 5000))
        if kind == "float":
            return float(_text(tree["v"], 40))
        if kind == "complex":
            re, im = tree["v"]
            return complex(float(_text(re, 40)), float(_text(im, 40)))
        if kind in ("list", "tuple", "set", "frozenset"):
            items = [sub(x) for x in _list(tree["v"])]
            return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[kind](items)
        if kind == "dict":
            keys, values = _list(tree["k"]), _list(tree["v"])
            if len(keys) != len(values):
                raise ProtocolError("malformed dict")
            return {sub(k): sub(v) for k, v in zip(keys, values)}
        if kind in ("bytes", "bytearray"):
            raw = _buffer(buffers, tree["b"])
            return bytes(raw) if kind == "bytes" else bytearray(raw)
        if kind == "range":
            return range(*[_int(x) for x in _list(tree["v"], 3)])
        if kind == "slice":
            return slice(*[sub(x) for x in _list(tree["v"], 3)])
        if kind == "ellipsis":
            return Ellipsis
        if kind == "ndarray":
            return self._decode_array(tree, buffers)
        if kind == "npscalar":
            return self._decode_array(tree["a"], buffers)[()]
        if kind == "npdtype":
            dtype = _np().dtype(_text(tree["v"], 16))
            if dtype.kind not in NUMPY_KINDS:
                raise ProtocolError("dtype not allowed")
            return dtype
        if kind == "npgen":
            return _np().random.Generator(self._bit_generator(sub(tree["state"])))
        if kind == "randomstate":
            state = sub(tree["state"])
            rs = _np().random.RandomState()
            rs.set_state(state)
            return rs
        if kind == "tensor":
            t = self._decode_tensor(tree, buffers)
            if tape is not None and t.requires_grad:
                tape.append(t)
            return t
        if kind == "tdtype":
            return getattr(_torch(), _choice(tree["v"], TORCH_DTYPES))
        if kind == "tsize":
            return _torch().Size([_int(n) for n in _list(tree["v"])])
        if kind == "tdevice":
            return _torch().device(_choice(tree["v"], ("cpu",)))
        if kind == "tgen":
            torch = _torch()
            g = torch.Generator()
            g.set_state(torch.frombuffer(bytearray(_buffer(buffers, tree["b"])), dtype=torch.uint8).clone())
            return g
        if kind == "module":
            name = _text(tree["v"], 200)
            if name.split(".")[0] not in IMPORTABLE:
                raise ProtocolError(f"module {name} is not importable here")
            return importlib.import_module(name)
        if kind == "ref":
            ident = _int(tree["id"])
            if tree.get("home") == self.side:
                if ident not in self.exported:
                    raise ProtocolError("unknown handle")
                return self.exported[ident]
            if tree.get("home") != self.other:
                raise ProtocolError("malformed handle")
            remote = self.remotes.get(ident)
            if remote is None:
                remote = self.remotes[ident] = Remote(self, ident)
            return remote
        raise ProtocolError(f"unknown kind of data {kind[:40]!r}")

    def _decode_array(self, tree: dict, buffers: list):
        np = _np()
        dtype = np.dtype(_text(tree["dtype"], 16))
        if dtype.kind not in NUMPY_KINDS:
            raise ProtocolError("dtype not allowed")
        shape = tuple(_int(n) for n in _list(tree["shape"], 32))
        raw = _take(buffers, tree["b"])
        if math.prod(shape) * dtype.itemsize != len(raw):
            raise ProtocolError("array size does not match its shape")
        if not raw:
            return np.empty(shape, dtype=dtype)
        return np.frombuffer(raw, dtype=dtype).reshape(shape)  # owns the received buffer: no copy

    def _decode_tensor(self, tree: dict, buffers: list):
        torch = _torch()
        name = _choice(tree["dtype"], TORCH_DTYPES)
        dtype = getattr(torch, name)
        shape = [_int(n) for n in _list(tree["shape"], 32)]
        raw = _take(buffers, tree["b"])
        itemsize = torch.empty((), dtype=dtype).element_size()
        if math.prod(shape) * itemsize != len(raw):
            raise ProtocolError("tensor size does not match its shape")
        if not raw:
            t = torch.empty(shape, dtype=dtype)
        elif name == "bfloat16":
            t = torch.frombuffer(raw, dtype=torch.int16).view(torch.bfloat16).reshape(shape)
        else:
            t = torch.frombuffer(raw, dtype=dtype).reshape(shape)  # owns the received buffer: no copy
        if tree.get("param") is True and t.is_floating_point():
            t = torch.nn.Parameter(t, requires_grad=tree.get("grad") is True)
        elif tree.get("grad") is True and (t.is_floating_point() or t.is_complex()):
            t.requires_grad_(True)
        if isinstance(tree.get("g"), dict) and t.requires_grad:
            grad = self._decode_tensor(tree["g"], buffers)
            if grad.shape != t.shape or grad.dtype != t.dtype or grad.requires_grad:
                raise ProtocolError("a gradient that does not fit its tensor")
            t.grad = grad
        return t

    def _bit_generator(self, state):
        if not isinstance(state, dict):
            raise ProtocolError("malformed generator state")
        name = _choice(state.get("bit_generator"), NUMPY_BIT_GENERATORS)
        bits = getattr(_np().random, name)()
        bits.state = state
        return bits

    # --- requests ---------------------------------------------------------------------------------
    def request(self, op: str, **fields):
        """Send a request and wait for its reply, answering the other side's requests meanwhile."""
        seq = self._send_request(op, fields)
        message, buffers = self._await(seq)
        return self.decode(message.get("value"), buffers)

    def _send_request(self, op: str, fields: dict, tape: list | None = None) -> int:
        if self.side == TESTS:
            self._tell_rebindings()
        self.sequence += 1
        buffers: list = []
        message = {"op": op, "seq": self.sequence, **{k: self.encode(v, buffers, 0, tape) for k, v in fields.items()}}
        self.send(message, buffers)
        return self.sequence

    def _await(self, seq: int) -> tuple[dict, list]:
        while True:
            message, buffers = self.receive()
            if "op" in message:  # a request of the other side, made while serving ours
                self._answer(message, buffers)
                continue
            if message.get("re") != seq:
                raise ProtocolError("a reply to a request that was not made")
            if message.get("ok") is True:
                return message, buffers
            raise _exception(message.get("type"), message.get("msg"))

    def call(self, remote: Remote, args: tuple, kwargs: dict):
        """Call the other side's object. Tensors that need gradients stay connected: the result's tensors are
        joined to ours by a RemoteGraph, whose backward asks the other side for the gradients."""
        inputs: list = []
        seq = self._send_request("call", {"obj": remote, "args": list(args), "kwargs": dict(kwargs)}, inputs)
        message, buffers = self._await(seq)
        for path, value in _list(message.get("out", []), 1000):
            try:
                update(follow(args, kwargs, _list(path, 8)), self.decode(value, buffers))
            except (IndexError, KeyError, TypeError):
                pass
        for kind, text in _list(message.get("warnings", []), 20):  # what the callee's code warned about, warned here
            category = getattr(builtins, kind, None) if isinstance(kind, str) else None
            if not (isinstance(category, type) and issubclass(category, Warning)):
                category = UserWarning
            warnings.warn(_text(text, MAX_TEXT), category, stacklevel=2)
        outputs: list = []
        value = self.decode(message.get("value"), buffers, 0, outputs)
        if not outputs:
            return value
        joined = remote_graph().apply(self, seq, len(inputs), *inputs, *outputs)
        return _replace(value, {id(a): b for a, b in zip(outputs, joined)})

    def serve(self) -> None:
        """Answer requests until the other side says it is done (the student side, while a test cell runs)."""
        try:
            while True:
                message, buffers = self.receive()
                if message.get("op") == "done":
                    return
                if "op" in message:
                    self._answer(message, buffers)
        finally:
            self.graphs.clear()

    def done(self) -> None:
        """The tests side, after a test cell: restore what the cell rebound, then release the student side."""
        for name, original in self.fetched.items():
            if self.told.get(name, original) is not original:
                self.namespace[name] = original
        self._tell_rebindings()
        self.graphs.clear()
        self.send({"op": "done"}, [])

    def _answer(self, message: dict, buffers: list) -> None:
        seq = message.get("seq")
        try:
            op = message.get("op")
            if op not in self.ops:
                raise PermissionError(f"the {'tests' if self.side == TESTS else 'student'} side does not answer {op!r}")
            inputs: list = []
            self._warnings = []
            value, out = self._perform(op, message, buffers, inputs)
            reply_buffers: list = []
            outputs: list = []
            reply = {"re": seq, "ok": True, "value": self.encode(value, reply_buffers, 0, outputs if op == "call" else None),
                     "out": [[w, self.encode(v, reply_buffers)] for w, v in out]}
            if outputs:
                self.graphs[seq] = (inputs, outputs)
            if op == "call" and self._warnings:
                reply["warnings"] = self._warnings
        except Exception as exc:  # noqa: BLE001 -- every failure becomes the requester's exception
            reply_buffers = []
            text = "" if self.side == TESTS else str(exc)[:MAX_TEXT]  # a test's messages stay on its side
            reply = {"re": seq, "ok": False, "type": type(exc).__name__, "msg": text}
        self.send(reply, reply_buffers)

    def _perform(self, op: str, message: dict, buffers: list, inputs: list):
        arg = lambda key: self.decode(message.get(key), buffers)  # noqa: E731
        if op == "lookup":
            name = arg("name")
            if not isinstance(name, str) or name not in self.namespace:
                raise NameError(f"name {name!r} is not defined")
            return self.namespace[name], []
        if op == "assign":
            for name, value in arg("names").items():
                self.namespace[name] = value
            return None, []
        if op == "backward":
            return self._backward(arg("key"), arg("grads")), []
        if op == "binop":
            return getattr(operator, _choice(arg("name"), BINARY_OPS))(arg("left"), arg("right")), []
        obj = arg("obj")
        if op == "call":
            args = self.decode(message.get("args"), buffers, 0, inputs)
            kwargs = self.decode(message.get("kwargs"), buffers, 0, inputs)
            before = {tuple(path): snapshot(v) for path, v in mutables(args, kwargs)}
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                value = obj(*args, **kwargs)
            self._warnings = [[type(w.message).__name__, str(w.message)[:MAX_TEXT]] for w in caught[:20]]
            out = [(path, v) for path, v in mutables(args, kwargs) if changed(v, before.get(tuple(path)))]
            return value, out
        if op == "getattr":
            return getattr(obj, arg("name")), []
        if op == "setattr":
            setattr(obj, arg("name"), arg("value"))
            return None, []
        if op == "getitem":
            return obj[arg("key")], []
        if op == "setitem":
            obj[arg("key")] = arg("value")
            return None, []
        if op == "len":
            return len(obj), []
        if op == "iter":
            return iter(obj), []
        if op == "next":
            try:
                return (False, next(obj)), []
            except StopIteration:
                return (True, None), []
        if op == "repr":
            return repr(obj)[:MAX_TEXT], []
        if op == "str":
            return str(obj)[:MAX_TEXT], []
        if op == "bool":
            return bool(obj), []
        if op == "contains":
            return arg("item") in obj, []
        if op == "isinstance":
            return isinstance(obj, arg("cls")), []
        if op == "unop":
            return getattr(operator, _choice(arg("name"), UNARY_OPS))(obj), []
        raise PermissionError(op)

    def _backward(self, key, grads) -> list:
        """Gradients of a call's inputs, given the gradients of its result's tensors (the other side's backward)."""
        torch = _torch()
        if key not in self.graphs:
            raise RuntimeError("no such computation to differentiate (it ended with its test cell)")
        inputs, outputs = self.graphs[key]
        grads = _list(grads, len(outputs))
        pairs = [(o, g) for o, g in zip(outputs, grads) if isinstance(g, torch.Tensor) and o.requires_grad]
        for leaf in inputs:
            leaf.grad = None
        if pairs:  # as one scalar: explicit gradient tensors make torch import sympy (~0.5 s) on first use;
            with torch.enable_grad():  # grad mode is off when this answers the other side's backward
                torch.autograd.backward(sum((o * g).sum() for o, g in pairs), retain_graph=True)
        found = [leaf.grad for leaf in inputs]
        for leaf in inputs:
            leaf.grad = None
        return found

    # --- the tests side: names of the student's notebook ----------------------------------------------
    def bind(self, names: list[str], course: dict[str, list[str]]) -> None:
        """Before a test cell: bind each name the cell uses. The course's own imports (`course`: name -> [module,
        attribute]) are imported here; a name an earlier test cell defined stays; any other is fetched afresh
        from the student's notebook (data as a copy, the rest as a handle)."""
        for name in names:
            if name in course:
                module, attribute = course[name]
                value = importlib.import_module(module)
                self.namespace[name] = getattr(value, attribute) if attribute else value
                self.fetched.pop(name, None)
                self.told.pop(name, None)
                continue
            if name in self.namespace and name not in self.fetched:
                continue  # defined by a test cell: trusted
            try:
                value = self.request("lookup", name=name)
            except (ProtocolError, PeerGone):
                raise
            except Exception as exc:  # noqa: BLE001 -- not defined, or not sendable: the test says so when it uses it
                value = Unavailable(name, exc)
            self.namespace[name] = self.fetched[name] = self.told[name] = value

    def _tell_rebindings(self) -> None:
        """Names fetched from the student that the test cell has rebound since: rebind them there too."""
        changed = {n: self.namespace.get(n) for n in self.fetched if self.namespace.get(n) is not self.told[n]}
        if changed:
            self.told.update(changed)
            self.sequence += 1
            buffers: list = []
            self.send({"op": "assign", "seq": self.sequence, "names": self.encode(changed, buffers)}, buffers)
            self._await(self.sequence)


# --- helpers ---------------------------------------------------------------------------------------------

_GRAPH = None


def remote_graph():
    """The autograd Function that joins a call's result to its inputs across the two kernels (made once torch is
    there)."""
    global _GRAPH
    if _GRAPH is None:
        torch = _torch()

        class RemoteGraph(torch.autograd.Function):
            @staticmethod
            def forward(ctx, peer, key, n_inputs, *tensors):
                ctx.peer, ctx.key, ctx.n_inputs, ctx.n_outputs = peer, key, n_inputs, len(tensors) - n_inputs
                return tuple(t.detach().clone() for t in tensors[n_inputs:])

            @staticmethod
            def backward(ctx, *grads):
                found = ctx.peer.request("backward", key=ctx.key, grads=list(grads))
                if not isinstance(found, list) or len(found) != ctx.n_inputs:
                    raise RuntimeError("the other kernel answered the backward pass with the wrong number of gradients")
                return (None, None, None, *found, *[None] * ctx.n_outputs)

        _GRAPH = RemoteGraph
    return _GRAPH


def _replace(value, swaps: dict):
    """`value` with the tensors whose id is in `swaps` replaced, inside lists, tuples and dicts."""
    if id(value) in swaps:
        return swaps[id(value)]
    if type(value) in (list, tuple):
        return type(value)(_replace(v, swaps) for v in value)
    if type(value) is dict:
        return {k: _replace(v, swaps) for k, v in value.items()}
    return value


def mutables(args: list, kwargs: dict, depth: int = 3):
    """(path, value) for each array, tensor or generator among the arguments, also inside lists, tuples and dicts:
    what a call may change in place. A path starts with the position or the keyword."""
    def walk(value, path, level):
        if mutable(value):
            yield path, value
        if level < depth and type(value) in (list, tuple):
            for i, item in enumerate(value):
                yield from walk(item, [*path, i], level + 1)
        elif level < depth and type(value) is dict:
            for key, item in list(value.items()):
                if type(key) in (str, int):
                    yield from walk(item, [*path, key], level + 1)
    for i, value in enumerate(args):
        yield from walk(value, [i], 0)
    for key, value in kwargs.items():
        yield from walk(value, [key], 0)


def follow(args: tuple, kwargs: dict, path: list):
    """The argument a path points at (see mutables)."""
    first, *rest = path
    value = args[first] if isinstance(first, int) else kwargs[first]
    for step in rest:
        value = value[step]
    return value


def mutable(value) -> bool:
    np, torch = _module("numpy"), _module("torch")
    return type(value) in (list, dict) or bool((np is not None and isinstance(value, (np.ndarray, np.random.Generator)))
                or (torch is not None and isinstance(value, (torch.Tensor, torch.Generator))))


def snapshot(value):
    """What a call may change of an argument: an array's bytes, a tensor's, a generator's state, which objects a
    list or a dict holds (an append, a new key)."""
    if type(value) is list:
        return ("list", tuple(id(x) for x in value))
    if type(value) is dict:
        return ("dict", tuple((k, id(x)) for k, x in value.items()))
    np, torch = _module("numpy"), _module("torch")
    if np is not None and isinstance(value, np.ndarray):
        return (value.shape, value.dtype.str, value.copy())
    if np is not None and isinstance(value, np.random.Generator):
        return json.dumps(value.bit_generator.state, default=lambda a: a.tolist(), sort_keys=True)
    if torch is not None and isinstance(value, torch.Tensor):
        data = value.detach()
        return (tuple(data.shape), str(data.dtype), data.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                if data.dtype != torch.bool else data.numpy().tobytes())
    if torch is not None and isinstance(value, torch.Generator):
        return value.get_state().numpy().tobytes()
    return None


def changed(value, before) -> bool:
    """Whether `value` differs from its snapshot `before` (arrays compared byte for byte, so a NaN is equal to
    itself)."""
    np = _module("numpy")
    if np is not None and isinstance(value, np.ndarray) and type(before) is tuple and len(before) == 3:
        shape, dtype, copy = before
        if value.shape != shape or value.dtype.str != dtype:
            return True
        return not np.array_equal(np.frombuffer(_bytes_of(np.ascontiguousarray(value)), np.uint8),
                                  np.frombuffer(_bytes_of(copy), np.uint8))
    return snapshot(value) != before


def _bytes_of(a):
    """The bytes of a C-contiguous array, as a view."""
    return memoryview(a.reshape(-1)).cast("B") if a.size else b""


def update(old, new) -> None:
    """Give `old` (an argument we passed) the content the callee left in its copy `new`, in place."""
    np, torch = _module("numpy"), _module("torch")
    if type(old) is list and type(new) is list:
        old[:] = new
    elif type(old) is dict and type(new) is dict:
        old.clear()
        old.update(new)
    elif np is not None and isinstance(old, np.ndarray) and isinstance(new, np.ndarray):
        if old.shape == new.shape and old.flags.writeable:
            old[...] = new
    elif np is not None and isinstance(old, np.random.Generator) and isinstance(new, np.random.Generator):
        if type(old.bit_generator) is type(new.bit_generator):
            old.bit_generator.state = new.bit_generator.state
    elif torch is not None and isinstance(old, torch.Tensor) and isinstance(new, torch.Tensor):
        if old.shape == new.shape:
            with torch.no_grad():
                old.copy_(new)
    elif torch is not None and isinstance(old, torch.Generator) and isinstance(new, torch.Generator):
        old.set_state(new.get_state())


def _exception(kind, message) -> BaseException:
    """The exception to raise for a failed request: the built-in type of that name, else RemoteError."""
    kind = kind if isinstance(kind, str) else "Exception"
    text = message[:MAX_TEXT] if isinstance(message, str) else ""
    cls = getattr(builtins, kind, None)
    if isinstance(cls, type) and issubclass(cls, Exception) and cls is not StopIteration:
        try:
            return cls(text)
        except TypeError:
            pass
    return RemoteError(f"{kind[:100]}: {text}" if text else kind[:100])


def _text(value, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise ProtocolError("malformed text")
    return value


def _int(value) -> int:
    if type(value) is not int:
        raise ProtocolError("malformed integer")
    return value


def _list(value, limit: int = MAX_BUFFERS) -> list:
    if not isinstance(value, list) or len(value) > limit:
        raise ProtocolError("malformed list")
    return value


def _choice(value, allowed: tuple) -> str:
    if value not in allowed:
        raise ProtocolError(f"{str(value)[:40]!r} is not allowed here")
    return value


def _buffer(buffers: list, index) -> bytearray:
    if type(index) is not int or not 0 <= index < len(buffers):
        raise ProtocolError("malformed buffer index")
    if buffers[index] is None:
        raise ProtocolError("a buffer used twice")
    return buffers[index]


def _take(buffers: list, index) -> bytearray:
    """A buffer that becomes an array's memory: no other value of the frame may use it."""
    raw = _buffer(buffers, index)
    buffers[index] = None
    return raw


# --- in a kernel ---------------------------------------------------------------------------------------------

PEER: Peer | None = None
HOOKS: CellHooks | None = None
# Names IPython gives every kernel: each kernel has its own, never the other's.
IPYTHON_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "display", "_", "__", "___", "_i", "_ii",
                           "_iii", "_oh", "_ih", "_dh"})
_HISTORY = re.compile(r"_i?\d+$")  # IPython's history names: _3, _i3


def names_loaded(tree: ast.AST) -> frozenset[str]:
    """Every name a cell's syntax tree reads (at any depth), but builtins and IPython's own (In, _i3, _5...)."""
    found = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return frozenset(n for n in found if n not in IPYTHON_NAMES and not hasattr(builtins, n) and not _HISTORY.match(n))


class CellHooks:
    """The tests' kernel's hooks around a test cell: IPython gives `visit` the cell's syntax tree (an AST
    transformer, InteractiveShell.ast_transformers), which puts first a call that binds the names the cell reads
    that the notebook defines (`names`; `course`: the course's imports, see Peer.bind); after the cell
    (post_run_cell), `after` restores what it rebound and releases the student's kernel (Peer.done)."""

    def __init__(self, peer: Peer, names, course: dict):
        self.peer, self.names, self.course = peer, frozenset(names), course
        self.armed = True  # once per cell: %time and its kind parse the code they run again

    def visit(self, tree):
        if self.armed and isinstance(tree, ast.Module):
            self.armed = False
            wanted = sorted(names_loaded(tree) & self.names)
            tree.body.insert(0, ast.parse(f"__import__('sys').modules[{MODULE!r}].before_cell({wanted!r})").body[0])
        return tree

    def after(self, result=None) -> None:
        self.armed = True
        try:
            self.peer.done()
        except (Exception, KeyboardInterrupt):  # noqa: BLE001 -- the student's kernel is gone: the grader finds it
            pass


class NotebookUnreachable(RuntimeError):
    """The test cell could not take its names from the student's kernel (the channel broke)."""


def connect(fd: int, side: str, namespace: dict) -> None:
    """Called once in each kernel, right after it starts: `fd` is this kernel's end of the socket pair."""
    global PEER
    _np()
    PEER = Peer(socket.socket(fileno=fd), side, namespace)


def watch_test_cells(shell, names, course: dict) -> None:
    """Called once in the tests' kernel, after connect: frame every cell it runs from now on (CellHooks)."""
    global HOOKS
    HOOKS = CellHooks(PEER, names, course)
    shell.ast_transformers.append(HOOKS)
    shell.events.register("post_run_cell", HOOKS.after)


def before_cell(names: list[str]) -> None:
    """A test cell's first statement (CellHooks.visit): bind the names it reads that the notebook defines."""
    __tracebackhide__ = True  # noqa: F841 -- IPython leaves this frame out of the traceback
    try:
        PEER.bind(names, HOOKS.course)
    except (ProtocolError, PeerGone) as exc:
        raise NotebookUnreachable(f"the test could not reach the notebook's names ({exc})") from None


def serve() -> None:
    PEER.serve()
