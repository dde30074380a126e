"""Graded checks for the exercise notebooks.

Every check raises ``AssertionError`` with: the exercise id, the smallest failing input,
expected vs got (shape, dtype, values) and a hint. A stub that still raises
``NotImplementedError`` is reported as "not implemented yet". Never a bare ``assert False``.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterable

import numpy as np

__all__ = ["check_function", "check_close", "check_value", "check_true", "compare_outputs",
           "describe"]

_PRINT = dict(threshold=40, edgeitems=3, precision=4, max_line_width=100)


def _is_tensor(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _to_numpy(x):
    if _is_tensor(x):
        return x.detach().cpu().numpy()
    if hasattr(x, "to_dense") and not isinstance(x, np.ndarray):
        return np.asarray(x.to_dense())
    return np.asarray(x)


def describe(x) -> str:
    """One readable line (or a few) for a value: kind, shape, dtype and values."""
    if isinstance(x, (tuple, list)) and not np.isscalar(x):
        inner = ",\n  ".join(describe(v) for v in x)
        return f"{type(x).__name__} of {len(x)}:\n  {inner}"
    if isinstance(x, BaseException):
        return f"raised {type(x).__name__}: {x}"
    if _is_tensor(x) or isinstance(x, np.ndarray):
        arr = _to_numpy(x)
        kind = "tensor" if _is_tensor(x) else "array"
        return (f"{kind}(shape={tuple(arr.shape)}, dtype={x.dtype}) "
                f"{np.array2string(arr, **_PRINT)}")
    return repr(x)


def compare_outputs(expected, got, rtol: float = 1e-5, atol: float = 1e-8,
                    check_dtype: bool = False) -> str | None:
    """Why ``got`` differs from ``expected`` (None if it matches).

    Tuples/lists compare element-wise, arrays and tensors by kind, shape, (optionally) dtype
    and values with ``|got - expected| <= atol + rtol·|expected|``; other values by ``==``.
    """
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"expected a {type(expected).__name__} of {len(expected)} items, got {describe(got)}"
        for i, (e, g) in enumerate(zip(expected, got)):
            why = compare_outputs(e, g, rtol, atol, check_dtype)
            if why:
                return f"item {i}: {why}"
        return None
    if _is_tensor(expected) and not _is_tensor(got):
        return f"expected a torch tensor, got {type(got).__name__}"
    numeric = isinstance(expected, (bool, int, float, complex, np.number))
    if isinstance(expected, np.ndarray) or _is_tensor(expected) or numeric:
        if numeric and got is None:
            return "got None (did you forget to return?)"
        try:
            e, g = _to_numpy(expected), _to_numpy(got)
        except Exception as exc:  # noqa: BLE001 - anything unconvertible is a mismatch
            return f"could not read the result as an array: {exc}"
        if e.shape != g.shape:
            return f"shape {g.shape} != expected {e.shape}"
        if check_dtype and e.dtype != g.dtype:
            return f"dtype {g.dtype} != expected {e.dtype}"
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
    return None if got == expected else f"got {got!r}, expected {expected!r}"


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


def _fail(exercise_id: str, message: str, hint: str = "") -> None:
    text = f"[{exercise_id}] {message}"
    if hint:
        text += f"\nHint: {hint}"
    raise AssertionError(text)


def _call(fn: Callable, args: tuple):
    """fn(*args) on copies, so an in-place learner function cannot corrupt the next case."""
    return fn(*copy.deepcopy(args))


def check_function(exercise_id: str, fn: Callable, reference: Callable, cases: Iterable,
                   random_cases: Callable[[np.random.Generator], Any] | None = None,
                   n_random: int = 25, seed: int = 0,
                   compare: Callable[[Any, Any], str | None] | None = None,
                   hint: str = "") -> None:
    """Compare ``fn`` with ``reference`` on fixed ``cases`` and ``n_random`` generated ones.

    A case is a tuple of positional arguments (a non-tuple is one argument).
    ``random_cases(rng)`` returns one case. ``compare(expected, got)`` returns a reason string
    on mismatch (default: :func:`compare_outputs`). Raises ``AssertionError`` reporting the
    smallest failing case.
    """
    compare = compare or compare_outputs
    all_cases = [c if isinstance(c, tuple) else (c,) for c in cases]
    if random_cases is not None:
        rng = np.random.default_rng(seed)
        for _ in range(n_random):
            c = random_cases(rng)
            all_cases.append(c if isinstance(c, tuple) else (c,))
    failures = []
    for args in all_cases:
        expected = _call(reference, args)
        try:
            got = _call(fn, args)
        except NotImplementedError as exc:
            _fail(exercise_id, "not implemented yet: the function still raises "
                               "NotImplementedError", hint)
        except Exception as exc:  # noqa: BLE001 - the learner's error is the feedback
            failures.append((args, expected, exc, f"raised {type(exc).__name__}: {exc}"))
            continue
        why = compare(expected, got)
        if why:
            failures.append((args, expected, got, why))
    if failures:
        args, expected, got, why = min(failures, key=lambda f: _size(f[0]))
        inputs = "\n  ".join(describe(a) for a in args)
        _fail(exercise_id,
              f"{len(failures)} of {len(all_cases)} cases failed: {why}\n"
              f"Smallest failing input:\n  {inputs}\n"
              f"Expected: {describe(expected)}\nGot:      {describe(got)}", hint)


def check_close(exercise_id: str, got, expected, rtol: float = 1e-5, atol: float = 1e-8,
                hint: str = "") -> None:
    """``got`` equals ``expected`` within ``atol + rtol·|expected|`` (scalars, arrays, tensors)."""
    why = compare_outputs(expected, got, rtol=rtol, atol=atol)
    if why:
        _fail(exercise_id, f"{why}\nExpected: {describe(expected)}\nGot:      {describe(got)}",
              hint)


#: Numeric answers (derivations) use the same comparison as arrays.
check_value = check_close


def check_true(exercise_id: str, condition: bool, message: str, hint: str = "") -> None:
    """Fail with ``message`` unless ``condition`` holds (for properties, not values)."""
    if not condition:
        _fail(exercise_id, message, hint)
