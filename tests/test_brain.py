"""brain: energy arithmetic, the match probability of sparse codes against scipy's
hypergeometric distribution and a Monte-Carlo simulation, and the duty-cycle update."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from scipy.stats import hypergeom

from course_lib import brain


# ---------------------------------------------------------------- energy

def test_attwell_laughlin_specific_energy_usage_is_reproduced():
    """3.29e9 ATP/s/neuron × 9.2e7 neurons/g = 30 µmol ATP/g/min (A&L 2001, p. 1139)."""
    mol_per_g_min = 3.29e9 * 9.2e7 / brain.AVOGADRO * 60
    assert mol_per_g_min * 1e6 == pytest.approx(30, rel=0.01)


def test_power_rate_and_fraction_are_consistent():
    j = brain.joules_per_atp(50.0)
    assert j == pytest.approx(50e3 / 6.02214076e23)
    p = brain.spiking_power(1e10, 2.0, 1e9, j)
    assert p == pytest.approx(1e10 * 2 * 1e9 * j)
    assert brain.affordable_mean_rate(p, 1e10, 1e9, j) == pytest.approx(2.0)
    assert brain.spiking_power(1e10, 0.0, 1e9, j) == 0.0
    assert brain.active_fraction_bound(4.0, 20.0) == pytest.approx(0.2)
    assert brain.active_fraction_bound(40.0, 20.0) == 1.0


@pytest.mark.parametrize("call", [
    lambda: brain.joules_per_atp(0),
    lambda: brain.spiking_power(-1, 1, 1, 1),
    lambda: brain.spiking_power(1, -1, 1, 1),
    lambda: brain.spiking_power(1, float("inf"), 1, 1),
    lambda: brain.affordable_mean_rate(0, 1, 1, 1),
    lambda: brain.active_fraction_bound(1, 0),
    lambda: brain.active_fraction_bound(-1, 1),
    lambda: brain.spiking_power("1", 1, 1, 1),
])
def test_energy_rejects_bad_input(call):
    with pytest.raises(ValueError):
        call()


# ---------------------------------------------------------------- match probability

@given(st.integers(1, 300), st.data())
def test_match_probability_is_the_hypergeometric_tail(n, data):
    a = data.draw(st.integers(0, n))
    a_x = data.draw(st.integers(0, n))
    theta = data.draw(st.integers(0, n + 1))
    # population n, a_x "marked" bits, draw a: P(overlap ≥ θ) = sf(θ − 1)
    ref = hypergeom.sf(theta - 1, n, a_x, a)
    assert brain.match_probability(n, a, theta, a_x) == pytest.approx(ref, rel=1e-9, abs=1e-300)


def test_match_probability_edge_values_and_tiny_tails():
    assert brain.match_probability(10, 3, 0) == 1.0
    assert brain.match_probability(10, 3, 4) == 0.0
    assert brain.match_probability(10, 10, 10) == 1.0  # only one vector with all bits on
    assert brain.match_probability(5, 0, 0) == 1.0
    # exactly one vector equals x: P(θ = a) = 1 / C(n, a)
    assert brain.match_probability(64, 8, 8) == pytest.approx(1 / math.comb(64, 8))
    # tiny tails stay exact where floating-point sums would underflow relative precision
    p = brain.match_probability(2000, 64, 32)
    assert 0 < p < 1e-30
    assert p == pytest.approx(hypergeom.sf(31, 2000, 64, 64), rel=1e-6)


@pytest.mark.parametrize("n, a, theta", [(64, 8, 2), (128, 16, 4), (256, 24, 4), (40, 20, 12)])
def test_simulation_agrees_with_formula(n, a, theta):
    p = brain.match_probability(n, a, theta)
    trials = 20_000
    est = brain.simulate_match_probability(n, a, theta, n_trials=trials, seed=1)
    se = math.sqrt(p * (1 - p) / trials)
    assert abs(est - p) <= 5 * se + 1e-4


def test_simulation_is_seeded_and_handles_small_chunks():
    a = brain.simulate_match_probability(3000, 10, 1, n_trials=2000, seed=3)
    assert a == brain.simulate_match_probability(3000, 10, 1, n_trials=2000, seed=3)
    assert brain.simulate_match_probability(10, 10, 10, n_trials=5) == 1.0


@pytest.mark.parametrize("args, err, match", [
    ((0, 0, 0), ValueError, "dimension"),
    ((10, 11, 1), ValueError, "active counts"),
    ((10, 3, -1), ValueError, "theta"),
    ((10.0, 3, 1), TypeError, "n must be an int"),
    ((10, 3, True), TypeError, "theta"),
])
def test_match_probability_rejects_bad_input(args, err, match):
    with pytest.raises(err, match=match):
        brain.match_probability(*args)
    with pytest.raises(err, match=match):
        brain.simulate_match_probability(*args, n_trials=10)


# ---------------------------------------------------------------- duty cycles

def test_duty_cycle_update_matches_nupic_formula_and_converges():
    g = torch.Generator().manual_seed(0)
    n, B, P = 6, 4, 40
    rates = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
    d = torch.zeros(n)
    for step in range(400):
        active = torch.rand(B, n, generator=g) < rates
        new = brain.update_duty_cycles(d, active, P)
        torch.testing.assert_close(new, (d * (P - B) + active.float().sum(0)) / P)
        d = new
    torch.testing.assert_close(d, rates, atol=0.2, rtol=0)
    assert d[0] == 0 and d[-1] == pytest.approx(1.0)


def test_duty_cycle_accepts_bool_and_float_and_keeps_dtype():
    d = torch.full((3,), 0.5, dtype=torch.float64)
    out = brain.update_duty_cycles(d, torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64), 2)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, torch.tensor([0.75, 0.25, 0.75], dtype=torch.float64))
    torch.testing.assert_close(brain.update_duty_cycles(d, torch.tensor([[True, False, True]]), 2), out)


@pytest.mark.parametrize("d, active, period, err, match", [
    (torch.zeros(3), torch.zeros(2, 4), 10, ValueError, "duty_cycles"),
    (torch.zeros(3), torch.zeros(3), 10, ValueError, "batch"),
    (torch.zeros(3), torch.zeros(5, 3), 4, ValueError, "period"),
    (np.zeros(3), torch.zeros(5, 3), 10, TypeError, "torch"),
])
def test_duty_cycle_rejects_bad_input(d, active, period, err, match):
    with pytest.raises(err, match=match):
        brain.update_duty_cycles(d, active, period)


@given(st.integers(1, 200), st.data())
def test_match_probability_is_a_decreasing_tail_of_a_distribution(n, data):
    a = data.draw(st.integers(0, n))
    tail = [brain.match_probability(n, a, t) for t in range(a + 2)]
    assert tail[0] == 1.0 and tail[-1] == 0.0
    assert all(x >= y for x, y in zip(tail, tail[1:]))
    exact = [tail[t] - tail[t + 1] for t in range(a + 1)]  # P(|x ∩ y| = t)
    assert sum(exact) == pytest.approx(1.0)


@given(st.integers(1, 6), st.integers(1, 8), st.integers(0, 30), st.integers(0, 1000))
def test_duty_cycles_stay_in_unit_interval(B, n, extra, seed):
    """The update is a convex combination of the old average and the batch win rate."""
    g = torch.Generator().manual_seed(seed)
    d = torch.rand(n, generator=g, dtype=torch.float64)
    active = torch.rand(B, n, generator=g) < 0.5
    new = brain.update_duty_cycles(d, active, B + extra)
    assert torch.all((0 <= new) & (new <= 1))
    batch_rate = active.double().mean(0)
    assert torch.all(new >= torch.minimum(d, batch_rate) - 1e-12)
    assert torch.all(new <= torch.maximum(d, batch_rate) + 1e-12)
