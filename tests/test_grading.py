"""course_lib.grading: checks give useful messages and catch wrong answers."""

import json

import numpy as np
import pytest
import torch

from course_lib import grading


def ref_square(x):
    return x * x


def test_check_function_passes_on_reference():
    grading.check_function("t.1", ref_square, ref_square, cases=[np.arange(3.0)],
                           random_cases=lambda rng: rng.standard_normal(rng.integers(1, 5)))


def test_reports_smallest_failing_input_expected_and_got():
    def wrong(x):
        return x * x if len(x) < 3 else x * x + 1

    with pytest.raises(AssertionError) as err:
        grading.check_function("t.2", wrong, ref_square,
                               cases=[np.arange(5.0), np.arange(3.0), np.arange(9.0)],
                               hint="square every entry")
    msg = str(err.value)
    assert msg.startswith("[t.2] 3 of 3 cases failed")
    assert "shape=(3,)" in msg and "Expected:" in msg and "Got:" in msg
    assert "Hint: square every entry" in msg


def test_not_implemented_and_exceptions_are_reported():
    def stub(x):
        raise NotImplementedError("Exercise t.3: your code here")

    with pytest.raises(AssertionError, match=r"\[t.3\] not implemented yet"):
        grading.check_function("t.3", stub, ref_square, cases=[np.ones(2)])

    def crashes(x):
        return x[10]

    with pytest.raises(AssertionError, match="raised IndexError"):
        grading.check_function("t.4", crashes, ref_square, cases=[np.ones(2)])


def test_learner_cannot_corrupt_inputs_of_later_cases():
    def inplace(x):
        x *= x
        return x

    grading.check_function("t.5", inplace, ref_square, cases=[np.arange(4.0)])


@pytest.mark.parametrize("expected, got, fragment", [
    (np.ones(3), np.ones(4), "shape (4,) != expected (3,)"),
    (np.ones(3), np.array([1.0, 2.0, 1.0]), "1 of 3 values differ; first at index (1,)"),
    ((np.ones(2), np.zeros(2)), (np.ones(2),), "a tuple of 2 items"),
    (torch.ones(2), np.ones(2), "expected a torch tensor"),
    (3.0, None, "did you forget to return"),
    ("a", "b", "got 'b', expected 'a'"),
])
def test_compare_outputs_explains_mismatch(expected, got, fragment):
    assert fragment in grading.compare_outputs(expected, got)


def test_compare_outputs_accepts_close_values_and_tensors():
    assert grading.compare_outputs(np.ones(3), np.ones(3) + 1e-9) is None
    assert grading.compare_outputs(torch.ones(2, 2), torch.ones(2, 2)) is None
    assert grading.compare_outputs(np.array([1, 2]), np.array([1, 2], dtype=np.int32)) is None
    # integer results may use any integer dtype; floating ones must match exactly
    assert grading.compare_outputs(np.array([1, 2]), np.array([1, 2], np.int32),
                                   check_dtype=True) is None
    assert "expected an integer dtype" in grading.compare_outputs(
        np.array([1, 2]), np.array([1.0, 2.0]), check_dtype=True)
    assert "dtype float64, expected dtype float32" in grading.compare_outputs(
        np.ones(2, np.float32), np.ones(2), check_dtype=True)
    assert "dtype torch.float32, expected dtype torch.float64" in grading.compare_outputs(
        torch.ones(2, dtype=torch.float64), torch.ones(2), check_dtype=True)


def test_compare_outputs_dicts_and_exceptions():
    assert grading.compare_outputs({"a": 1.0}, {"a": 1.0 + 1e-9}) is None
    assert "key 'a'" in grading.compare_outputs({"a": 1.0}, {"a": 2.0})
    assert "keys" in grading.compare_outputs({"a": 1.0}, {"b": 1.0})
    value_error = grading.Raised.of(ValueError("bad k"))
    assert grading.compare_outputs(value_error, grading.Raised.of(ValueError("other"))) is None
    assert "expected ValueError to be raised" in grading.compare_outputs(value_error, 3)
    assert "raised TypeError, expected ValueError" in grading.compare_outputs(
        value_error, grading.Raised.of(TypeError("x")))
    assert "raised KeyError" in grading.compare_outputs(1.0, grading.Raised.of(KeyError("x")))


def test_a_case_on_which_the_reference_raises_requires_the_same_exception():
    def reference(k):
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        return 2 * k

    def forgets_the_check(k):
        return 2 * k

    grading.check_function("t.8", reference, reference, cases=[0, 3])
    with pytest.raises(AssertionError, match="expected ValueError to be raised"):
        grading.check_function("t.8", forgets_the_check, reference, cases=[0, 3])


def test_check_value_reads_the_variable_and_the_course_solution():
    globals()["speedup_bound"] = 1.5
    grading.check_value("sparse_ffn.3", "speedup_bound")
    globals()["speedup_bound"] = 2.0
    with pytest.raises(AssertionError, match=r"\[sparse_ffn.3\].*got 2.0, expected 1.4999"):
        grading.check_value("sparse_ffn.3", "speedup_bound", hint="Amdahl")
    del globals()["speedup_bound"]
    with pytest.raises(AssertionError, match="NameError"):
        grading.check_value("sparse_ffn.3", "speedup_bound")


# --- the learner → judge transport: plain data only --------------------------------------

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

_arrays = hnp.arrays(dtype=st.sampled_from([np.float32, np.float64, np.int32, np.int64, np.bool_]),
                     shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4))
_leaves = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(),
                    st.text(max_size=5), _arrays, _arrays.map(lambda a: torch.from_numpy(a.copy())))
_values = st.recursive(_leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.lists(inner, max_size=3).map(tuple),
    st.dictionaries(st.text(max_size=3), inner, max_size=3)), max_leaves=8)


@given(_values)
def test_encode_decode_round_trip(value):
    back = grading.decode(json.loads(json.dumps(grading.encode(value))))
    assert grading.compare_outputs(value, back, rtol=0, atol=0, check_dtype=True) is None \
        or _has_nan(value)
    assert type(back) is type(value) or (isinstance(value, np.ndarray) and isinstance(back, np.ndarray))


def _has_nan(v):
    if isinstance(v, float):
        return v != v
    if isinstance(v, (list, tuple)):
        return any(map(_has_nan, v))
    if isinstance(v, dict):
        return any(map(_has_nan, v.values()))
    return False


def test_bf16_tensors_and_exceptions_travel():
    t = torch.tensor([1.5, -2.0], dtype=torch.bfloat16)
    back = grading.decode(grading.encode(t))
    assert back.dtype == torch.bfloat16 and torch.equal(back, t)
    r = grading.decode(grading.encode(ValueError("k must be positive")))
    assert r == grading.Raised(("ValueError", "Exception"), "k must be positive")


def test_an_object_claiming_equality_with_everything_stays_opaque():
    class Liar:
        def __eq__(self, other):
            return True

        def __array__(self, dtype=None, copy=None):
            return np.ones(3)

    back = grading.decode(grading.encode(Liar()))
    assert isinstance(back, grading.Opaque)
    assert grading.compare_outputs(np.ones(3), back) is not None
    assert grading.compare_outputs("answer", back) is not None
    assert isinstance(grading.decode({"t": "nd", "npy": "not base64"}), grading.Opaque)
    assert isinstance(grading.decode({"t": "py", "v": [1]}), grading.Opaque)
    assert isinstance(grading.decode("nonsense"), grading.Opaque)
