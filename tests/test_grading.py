"""course_lib.grading: checks give useful messages and catch wrong answers."""

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
    assert "dtype" in grading.compare_outputs(np.array([1, 2]), np.array([1, 2], np.int32),
                                              check_dtype=True)


def test_check_value_and_check_true():
    grading.check_value("t.6", 0.1 + 0.2, 0.3)
    with pytest.raises(AssertionError, match=r"\[t.6\].*got 0.5, expected 0.25"):
        grading.check_value("t.6", 0.5, 0.25)
    with pytest.raises(AssertionError, match=r"\[t.7\] must be sparse\nHint: use relu"):
        grading.check_true("t.7", False, "must be sparse", hint="use relu")
