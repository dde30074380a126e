"""course_lib.diagrams: the numbers behind each drawing, checked against independent computations,
and every drawing function builds a figure and rejects bad input."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from course_lib import diagrams  # noqa: E402


@given(st.integers(1, 40), st.integers(1, 12), st.data())
def test_gather_reads_matches_a_loop_over_neurons(d_ff, d_model, data):
    active = np.array(data.draw(st.lists(st.integers(0, d_ff - 1), max_size=d_ff)), dtype=np.int64)
    w1, w2t = diagrams.gather_reads(d_ff, d_model, active)
    expected = np.zeros((d_ff, d_model), dtype=bool)
    for j in set(active.tolist()):
        expected[j, :] = True          # neuron j: its input row of W1 and output row of W2ᵀ
    assert np.array_equal(w1, expected) and np.array_equal(w2t, expected)
    assert w1.sum() == len(set(active.tolist())) * d_model


@pytest.mark.parametrize(("args", "error"), [
    ((0, 4, [0]), ValueError),
    ((4, True, [0]), ValueError),
    ((4, 4, [4]), ValueError),
    ((4, 4, [-1]), ValueError),
    ((4, 4, [0.5]), TypeError),
    ((4, 4, [[0]]), TypeError),
])
def test_gather_reads_rejects_bad_input(args, error):
    with pytest.raises(error):
        diagrams.gather_reads(*args)


@given(st.floats(1e-3, 1e4), st.floats(0.1, 1e3), st.floats(0.1, 1e5))
def test_roofline_is_the_minimum_of_the_two_roofs(intensity, bandwidth, peak):
    got = float(diagrams.roofline(intensity, bandwidth, peak))
    assert got == pytest.approx(peak if intensity * bandwidth > peak else intensity * bandwidth)


def test_roofline_at_gemv_intensities():
    # fp32 GEMV: 2 FLOPs per 4-byte weight = 0.5 FLOP/B; 16-bit: 1 FLOP/B
    assert diagrams.roofline([0.5, 1.0], 20.0, 100.0).tolist() == [10.0, 20.0]


@pytest.mark.parametrize("args", [(0.5, 0.0, 1.0), (0.5, 1.0, -1.0), (0.0, 1.0, 1.0), ([1, -1], 1.0, 1.0)])
def test_roofline_rejects_non_positive_values(args):
    with pytest.raises(ValueError):
        diagrams.roofline(*args)


@pytest.mark.parametrize("make", [
    lambda: diagrams.sparse_layouts(),
    lambda: diagrams.sparse_layouts(np.eye(4, 8), blocksize=(4, 4)),
    lambda: diagrams.gather_gemv_reads(),
    lambda: diagrams.gather_gemv_reads(8, 4, [0, 7]),
    lambda: diagrams.ffn_block(),
    lambda: diagrams.ffn_block(("swiglu",)),
    lambda: diagrams.decode_roofline(10.0, 50.0, [("GEMV", 0.5, 4.0)]),
])
def test_every_diagram_draws_a_figure(make):
    fig = make()
    assert isinstance(fig, plt.Figure) and fig.axes
    plt.close(fig)


def test_sparse_layouts_titles_count_blocks_and_fill_in():
    A = np.zeros((4, 8))
    A[0, 0] = A[3, 7] = 1.0
    fig = diagrams.sparse_layouts(A, blocksize=(2, 2))
    titles = [ax.get_title() for ax in fig.axes]
    assert any("2 of 8 blocks stored" in t and "6 stored zeros" in t for t in titles), titles
    plt.close(fig)


@pytest.mark.parametrize(("call", "error"), [
    (lambda: diagrams.sparse_layouts(np.zeros(8)), ValueError),
    (lambda: diagrams.sparse_layouts(np.zeros((4, 6)), blocksize=(2, 2)), ValueError),
    (lambda: diagrams.sparse_layouts(np.zeros((3, 8)), blocksize=(2, 2)), ValueError),
    (lambda: diagrams.sparse_layouts(np.array([["a"] * 8] * 4)), TypeError),
    (lambda: diagrams.ffn_block(("gelu",)), ValueError),
    (lambda: diagrams.ffn_block(()), ValueError),
])
def test_diagrams_reject_bad_input(call, error):
    with pytest.raises(error):
        call()
