"""Graded checks for the exercise notebooks. Chapter: every ``solutions/<stem>`` exercises page.

A check compares the learner's function with a reference on fixed cases and random ones:
``check_function(id, fn, reference, cases, random_cases=...)``. It runs in one of three modes:

* **interactive** (a learner running the notebook in Jupyter): everything happens in the
  learner's kernel, and a failure raises ``AssertionError`` with the exercise id, the smallest
  failing input, expected vs got and a hint;
* **judge** (inside ``python -m course_lib.grade``, in a process the learner's code never runs
  in): the cases are drawn — the fixed and seeded ones plus *hidden* ones from a seed drawn at
  grade time — and the reference is evaluated on them; nothing is compared yet;
* **record** (the learner's kernel while the grader runs it): ``fn`` is called on the inputs the
  judge sent and its outputs are written back as plain data (:func:`encode`). The judge then
  compares them (:func:`verdict`). Nothing the learner's code patches in its own process can
  reach the expected values or the comparison.

A case on which the reference raises an exception requires the learner to raise the same type
(how a check asks for a ``ValueError`` on bad input).
"""

from __future__ import annotations

import base64
import copy
import io
import json
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

__all__ = ["check_function", "check_value", "compare_outputs", "describe", "encode", "decode",
           "Raised"]

_PRINT = dict(threshold=40, edgeitems=3, precision=4, max_line_width=100)
#: hidden cases per check with random cases: at least 3, or half the seeded ones
MIN_HIDDEN = 3


def _is_tensor(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _to_numpy(x):
    if _is_tensor(x):
        x = x.detach().cpu()
        if x.is_floating_point() and x.element_size() < 4:  # bf16/fp16: NumPy has no bf16
            x = x.float()
        return x.numpy()
    return np.asarray(x)


@dataclass(frozen=True)
class Raised:
    """An exception as data: its class and base-class names (most derived first), its message."""

    types: tuple[str, ...]
    message: str

    @classmethod
    def of(cls, exc: BaseException) -> "Raised":
        names = tuple(k.__name__ for k in type(exc).__mro__ if k not in (object, BaseException))
        return cls(names, str(exc)[:2000])

    @property
    def name(self) -> str:
        return self.types[0]


@dataclass(frozen=True)
class Opaque:
    """A returned object the grader does not compare by value (only its type and repr)."""

    type_name: str
    text: str

    def __repr__(self) -> str:
        return f"<{self.type_name} {self.text}>"


def describe(x) -> str:
    """One readable line (or a few) for a value: kind, shape, dtype and values."""
    if isinstance(x, Raised):
        return f"raised {x.name}: {x.message}"
    if isinstance(x, BaseException):
        return f"raised {type(x).__name__}: {x}"
    if isinstance(x, (tuple, list)):
        inner = ",\n  ".join(describe(v) for v in x)
        return f"{type(x).__name__} of {len(x)}:\n  {inner}"
    if _is_tensor(x) or isinstance(x, np.ndarray):
        arr = _to_numpy(x)
        kind = "tensor" if _is_tensor(x) else "array"
        return (f"{kind}(shape={tuple(arr.shape)}, dtype={x.dtype}) "
                f"{np.array2string(arr, **_PRINT)}")
    text = repr(x)
    return text if len(text) <= 400 else text[:400] + " …"


def _compare_raised(expected, got) -> str | None:
    if isinstance(expected, Raised):
        if isinstance(got, Raised):
            return None if expected.name in got.types else (
                f"raised {got.name}, expected {expected.name}")
        return f"expected {expected.name} to be raised, got {describe(got)}"
    if isinstance(got, Raised):
        return f"raised {got.name}: {got.message}"
    return ""


def compare_outputs(expected, got, rtol: float = 1e-5, atol: float = 1e-8,
                    check_dtype: bool = False) -> str | None:
    """Why ``got`` differs from ``expected`` (None if it matches).

    Tuples/lists compare element-wise, dicts by keys then values, arrays and tensors by kind,
    shape, dtype (with ``check_dtype``: see :func:`_dtype_mismatch`) and values with ``|got - expected| <= atol + rtol·|expected|``;
    an expected :class:`Raised` needs the same exception type; other values by ``==``.
    """
    why = _compare_raised(expected, got)
    if why != "":
        return why
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"expected a {type(expected).__name__} of {len(expected)} items, got {describe(got)}"
        for i, (e, g) in enumerate(zip(expected, got)):
            why = compare_outputs(e, g, rtol, atol, check_dtype)
            if why:
                return f"item {i}: {why}"
        return None
    if isinstance(expected, dict):
        if not isinstance(got, dict) or set(got) != set(expected):
            keys = sorted(map(repr, expected))
            return f"expected a dict with keys {keys}, got {describe(got)}"
        for key in expected:
            why = compare_outputs(expected[key], got[key], rtol, atol, check_dtype)
            if why:
                return f"key {key!r}: {why}"
        return None
    if _is_tensor(expected) and not _is_tensor(got):
        return f"expected a torch tensor, got {type(got).__name__}"
    if isinstance(expected, np.ndarray) and _is_tensor(got):
        return "expected a NumPy array, got a torch tensor"
    numeric = isinstance(expected, (bool, int, float, complex, np.number))
    if isinstance(expected, np.ndarray) or _is_tensor(expected) or numeric:
        if numeric and got is None:
            return "got None (did you forget to return?)"
        if isinstance(got, Opaque):
            return f"could not read the result as an array: {describe(got)}"
        try:
            e, g = _to_numpy(expected), _to_numpy(got)
        except Exception as exc:  # noqa: BLE001 - anything unconvertible is a mismatch
            return f"could not read the result as an array: {exc}"
        if e.shape != g.shape:
            return f"shape {g.shape} != expected {e.shape}"
        if check_dtype:
            why = _dtype_mismatch(expected, got, e, g)
            if why:
                return why
        if e.dtype.kind in "biu" and g.dtype.kind in "biu":
            bad = e != g
        else:
            if g.dtype.kind not in "biufc":
                return f"dtype {g.dtype} is not numeric"
            bad = ~np.isclose(g, e, rtol=rtol, atol=atol, equal_nan=True)
        if bad.ndim == 0 and bad:
            return f"got {g.item()!r}, expected {e.item()!r}"
        if np.any(bad):
            pos = tuple(int(p) for p in np.argwhere(bad)[0])
            return (f"{int(np.sum(bad))} of {bad.size} values differ; first at index {pos}: "
                    f"got {g[pos].item()!r}, expected {e[pos].item()!r}")
        return None
    return None if got == expected else f"got {describe(got)}, expected {describe(expected)}"


def _dtype_mismatch(expected, got, e: np.ndarray, g: np.ndarray) -> str | None:
    """Floating and complex results must have the expected dtype exactly; integer results
    any integer dtype (index arrays may be int32 or int64); booleans must be booleans."""
    want, have = getattr(expected, "dtype", e.dtype), getattr(got, "dtype", g.dtype)
    if e.dtype.kind in "iu":
        ok = g.dtype.kind in "iu"
        need = "an integer dtype"
    else:
        ok = str(want) == str(have)
        need = f"dtype {want}"
    return None if ok else f"dtype {have}, expected {need}"


def _size(args) -> int:
    """How big an input is (for picking the smallest failing case): total number of elements."""
    total = 0
    for a in args if isinstance(args, (tuple, list)) else (args,):
        if isinstance(a, (tuple, list)):
            total += _size(a)
        elif isinstance(a, np.ndarray) or _is_tensor(a):
            total += int(np.prod(a.shape)) if len(a.shape) else 1
        else:
            total += 1
    return total


def _run(fn: Callable, args: tuple):
    """fn(*args) on copies (an in-place function cannot corrupt the next case); an exception
    becomes a :class:`Raised` value."""
    try:
        return fn(*copy.deepcopy(args))
    except Exception as exc:  # noqa: BLE001 - the exception is the outcome being compared
        return Raised.of(exc)


# ---------------------------------------------------------------------------------------------
# Plain-data transport of the learner's outputs (record → judge)


def _npy(a: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, np.array(a, order="C"), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _from_npy(text: str) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False)


def encode(x, depth: int = 0):
    """A JSON-able description of a value, made of plain data only.

    Arrays and tensors travel as ``.npy`` bytes (no pickle), containers element by element,
    exceptions as :class:`Raised`; any other object only as its type name and ``repr``, so an
    object whose ``__eq__`` claims equality with anything compares as what it is: opaque.
    """
    if depth > 20:
        return {"t": "other", "type": type(x).__name__, "repr": "nested too deeply"}
    if x is None or isinstance(x, (bool, str)):
        return {"t": "py", "v": x if not isinstance(x, str) else x[:10000]}
    if type(x) in (int, float):
        return {"t": "py", "v": x if type(x) is float or abs(x) < 2**63 else float(x)}
    if isinstance(x, (BaseException, Raised)):
        r = x if isinstance(x, Raised) else Raised.of(x)
        return {"t": "raised", "types": list(r.types), "msg": r.message}
    if isinstance(x, np.generic) and x.dtype.kind in "biufc":
        return {"t": "npscalar", "npy": _npy(np.asarray(x))}
    if isinstance(x, np.ndarray) and x.dtype.kind in "biufc":
        return {"t": "nd", "npy": _npy(x)}
    if _is_tensor(x):
        import torch
        t = x.detach().cpu()
        if t.layout is not torch.strided:  # sparse results travel as their dense values
            t = t.to_dense()
        return {"t": "tensor", "dtype": str(t.dtype).replace("torch.", ""), "npy": _npy(_to_numpy(t))}
    if isinstance(x, (tuple, list)):
        return {"t": "tuple" if isinstance(x, tuple) else "list",
                "v": [encode(v, depth + 1) for v in x]}
    if isinstance(x, dict):
        return {"t": "dict", "k": [encode(k, depth + 1) for k in x],
                "v": [encode(v, depth + 1) for v in x.values()]}
    try:
        text = repr(x)[:300]
    except Exception:  # noqa: BLE001 - a failing repr is still an answer to report
        text = "(repr failed)"
    return {"t": "other", "type": type(x).__qualname__, "repr": text}


def decode(d):
    """Inverse of :func:`encode`; anything malformed becomes an :class:`Opaque` value."""
    import torch
    try:
        t = d["t"]
        if t == "py":
            v = d["v"]
            return v if v is None or isinstance(v, (bool, int, float, str)) else Opaque("?", repr(v))
        if t == "raised":
            return Raised(tuple(str(n) for n in d["types"]), str(d["msg"]))
        if t == "npscalar":
            return _from_npy(d["npy"])[()]
        if t == "nd":
            return _from_npy(d["npy"])
        if t == "tensor":
            out = torch.from_numpy(_from_npy(d["npy"]).copy())
            dtype = getattr(torch, str(d["dtype"]), None)
            return out.to(dtype) if isinstance(dtype, torch.dtype) else out
        if t in ("tuple", "list"):
            items = [decode(v) for v in d["v"]]
            return tuple(items) if t == "tuple" else items
        if t == "dict":
            keys = [decode(k) for k in d["k"]]
            return {(tuple(k) if isinstance(k, list) else k): decode(v)
                    for k, v in zip(keys, d["v"])}
        if t == "other":
            return Opaque(str(d["type"]), str(d["repr"]))
    except Exception as exc:  # noqa: BLE001 - malformed data from the learner's process
        return Opaque("malformed", str(exc)[:200])
    return Opaque("malformed", str(d)[:200])


# ---------------------------------------------------------------------------------------------
# Modes


@dataclass
class CheckSpec:
    """One graded call as the judge prepared it."""

    exercise: str
    cases: list[tuple]
    hidden: list[bool]
    expected: list[Any]
    compare: Callable[[Any, Any], str | None]
    hint: str


@dataclass
class _Judge:
    hidden_seed: int
    cell: str = ""
    calls: int = 0
    specs: dict[str, CheckSpec] = field(default_factory=dict)


@dataclass
class _Recorder:
    channel: Path
    inputs: dict | None = None
    cell: str = ""
    calls: int = 0


_STATE: _Judge | _Recorder | None = None


def start_judge(hidden_seed: int) -> _Judge:
    """Judge mode for this process (the grader's clean process)."""
    global _STATE
    _STATE = _Judge(hidden_seed)
    return _STATE


def stop_judge() -> None:
    global _STATE
    _STATE = None


def record_to(channel: str) -> None:
    """Record mode (called by the grader's first cell in the learner's kernel)."""
    global _STATE
    _STATE = _Recorder(Path(channel))


def begin_check(cell: str) -> None:
    """The grader calls this before each check cell, in both the judge and the kernel."""
    if _STATE is not None:
        _STATE.cell, _STATE.calls = cell, 0


def _next_key() -> str:
    key = f"{_STATE.cell}#{_STATE.calls}"
    _STATE.calls += 1
    return key


def _as_case(c) -> tuple:
    return c if isinstance(c, tuple) else (c,)


def _hidden_rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, *key.encode()])


def _fail(exercise_id: str, message: str, hint: str = "") -> None:
    text = f"[{exercise_id}] {message}"
    if hint:
        text += f"\nHint: {hint}"
    raise AssertionError(text)


def check_function(exercise_id: str, fn: Callable, reference: Callable, cases: Iterable,
                   random_cases: Callable[[np.random.Generator], Any] | None = None,
                   n_random: int = 25, seed: int = 0,
                   compare: Callable[[Any, Any], str | None] | None = None,
                   hint: str = "") -> None:
    """Compare ``fn`` with ``reference`` on fixed ``cases`` and ``n_random`` generated ones.

    A case is a tuple of positional arguments (a non-tuple is one argument).
    ``random_cases(rng)`` returns one case. ``compare(expected, got)`` returns a reason string
    on mismatch (default: :func:`compare_outputs`). Interactive mode raises ``AssertionError``
    reporting the smallest failing case; see the module docstring for the grader's modes.
    """
    compare = compare or compare_outputs
    if isinstance(_STATE, _Recorder):
        _record(fn)
        return
    key = _next_key() if isinstance(_STATE, _Judge) else None
    all_cases = [_as_case(c) for c in cases]
    hidden = [False] * len(all_cases)
    if random_cases is not None:
        draws = [(np.random.default_rng(seed), n_random, False)]
        if key is not None:  # the judge also draws cases nobody has seen
            draws.append((_hidden_rng(_STATE.hidden_seed, key), max(MIN_HIDDEN, n_random // 2),
                          True))
        for rng, n, is_hidden in draws:
            all_cases += [_as_case(random_cases(rng)) for _ in range(n)]
            hidden += [is_hidden] * n
    spec = CheckSpec(exercise_id, all_cases, hidden, [_run(reference, a) for a in all_cases],
                     compare, hint)
    _conclude(spec, key, lambda args: _run(fn, args))


def check_value(exercise_id: str, name: str, rtol: float = 1e-6, atol: float = 1e-9,
                hint: str = "") -> None:
    """The learner's variable ``name`` equals the course solution's value of it.

    The expected value never appears in the check: the judge reads it from the course's
    solution, and an interactive run computes it by running the course's solution cells
    (from the package's check bundle) in a scratch namespace.
    """
    caller = sys._getframe(1).f_globals
    value = lambda: caller[name]  # noqa: E731
    if isinstance(_STATE, _Recorder):
        _record(value)
        return
    key = _next_key() if isinstance(_STATE, _Judge) else None
    if key is not None:  # the judge ran the course's solution: its value is the expected one
        expected = _run(value, ())
    else:
        from course_lib.exercises import solution_value
        expected = solution_value(exercise_id, name)
    spec = CheckSpec(exercise_id, [()], [False], [expected], _tolerance(rtol, atol), hint)

    def got(args):
        out = _run(value, args)
        missing = isinstance(out, Raised) and "KeyError" in out.types
        return Raised(("NameError",), f"name {name!r} is not defined") if missing else out

    _conclude(spec, key, got)


def _conclude(spec: CheckSpec, key: str | None, learner: Callable[[tuple], Any]) -> None:
    """Judge mode keeps ``spec`` for the comparison after the learner's kernel ran; an
    interactive run calls the learner's code on the cases now and raises on a mismatch."""
    if key is not None:
        _STATE.specs[key] = spec
        return
    why = verdict(spec, [learner(args) for args in spec.cases])
    if why:
        _fail(spec.exercise, why, spec.hint)


def _tolerance(rtol: float, atol: float) -> Callable:
    return lambda e, g: compare_outputs(e, g, rtol=rtol, atol=atol)


def _record(fn: Callable) -> None:
    """Record mode: call ``fn`` on the judge's inputs for this call and append the outputs."""
    state = _STATE
    key = _next_key()
    if state.inputs is None:
        with open(state.channel / "inputs.pkl", "rb") as f:
            state.inputs = pickle.load(f)
    cases = state.inputs.get(key)
    if cases is None:  # a call the judge does not know: the course's checks were not run as is
        outputs = None
    else:
        outputs = [encode(_run(fn, args)) for args in cases]
    with open(state.channel / "outputs.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"key": key, "outputs": outputs}) + "\n")


def verdict(spec: CheckSpec, got: list) -> str | None:
    """Why the outputs ``got`` fail ``spec`` (None when every case matches)."""
    if any(isinstance(g, Raised) and "NotImplementedError" in g.types
           and not (isinstance(e, Raised) and "NotImplementedError" in e.types)
           for e, g in zip(spec.expected, got)):
        return "not implemented yet: the function still raises NotImplementedError"
    failures = []
    for i, (args, expected, g) in enumerate(zip(spec.cases, spec.expected, got)):
        why = spec.compare(expected, g)
        if why:
            failures.append((i, why))
    if not failures:
        return None
    i, why = min(failures, key=lambda f: _size(spec.cases[f[0]]))
    n_hidden = sum(spec.hidden[j] for j, _ in failures)
    inputs = "\n  ".join(describe(a) for a in spec.cases[i]) or "(no arguments)"
    kind = " (a hidden case drawn at grade time)" if spec.hidden[i] else ""
    counts = f"{len(failures)} of {len(spec.cases)} cases failed"
    if n_hidden:
        counts += f" ({n_hidden} of them hidden)"
    return (f"{counts}: {why}\nSmallest failing input{kind}:\n  {inputs}\n"
            f"Expected: {describe(spec.expected[i])}\nGot:      {describe(got[i])}")
