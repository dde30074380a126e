"""Small formulas the brain chapter computes with: an energy back-of-envelope, the match
probability of sparse binary codes (Ahmad & Scheinkman 2019), and the duty-cycle update that
drives k-WTA boosting.  The k-WTA itself lives in ``course_lib.activations.kwinners``.

Chapter: book/brain/brain
"""

from __future__ import annotations

from fractions import Fraction
from math import comb, isfinite

import numpy as np
import torch

# homeostasis: the duty-cycle update lives with the k-WTA mechanism it serves (used by
# ``layers.KWinners``); the brain chapter and its exercise use it under this name
from .activations import update_duty_cycles

__all__ = [
    "AVOGADRO", "joules_per_atp", "spiking_power", "affordable_mean_rate", "active_fraction_bound",
    "match_probability", "simulate_match_probability", "update_duty_cycles",
]

AVOGADRO = 6.02214076e23  # exact (SI definition), 1/mol


def _positive(**kw) -> None:
    for name, v in kw.items():
        if not (isinstance(v, (int, float, np.integer, np.floating)) and isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")


# ---------------------------------------------------------------- energy back-of-envelope

def joules_per_atp(kj_per_mol: float) -> float:
    """Energy released by hydrolysing one ATP: |ΔG| (kJ/mol) · 10³ / N_A."""
    _positive(kj_per_mol=kj_per_mol)
    return kj_per_mol * 1e3 / AVOGADRO


def spiking_power(n_neurons: float, rate_hz: float, atp_per_spike: float, j_per_atp: float) -> float:
    """P = N · r · (ATP per spike) · (J per ATP), in watts: the power that spiking alone costs."""
    _positive(n_neurons=n_neurons, atp_per_spike=atp_per_spike, j_per_atp=j_per_atp)
    if not (isfinite(rate_hz) and rate_hz >= 0):
        raise ValueError(f"rate_hz must be a finite number >= 0, got {rate_hz!r}")
    return n_neurons * rate_hz * atp_per_spike * j_per_atp


def affordable_mean_rate(budget_w: float, n_neurons: float, atp_per_spike: float,
                         j_per_atp: float) -> float:
    """r̄ = P / (N · ATP per spike · J per ATP): the mean rate a power budget P can pay for."""
    _positive(budget_w=budget_w)
    return budget_w / spiking_power(n_neurons, 1.0, atp_per_spike, j_per_atp)


def active_fraction_bound(mean_rate_hz: float, active_rate_hz: float) -> float:
    """f ≤ r̄ / r_active: if a fraction f of neurons fires at r_active and the rest are silent,
    the mean rate is f·r_active, so a budget that pays for r̄ allows at most this fraction (≤ 1)."""
    _positive(active_rate_hz=active_rate_hz)
    if not (isfinite(mean_rate_hz) and mean_rate_hz >= 0):
        raise ValueError(f"mean_rate_hz must be a finite number >= 0, got {mean_rate_hz!r}")
    return min(1.0, mean_rate_hz / active_rate_hz)


# ---------------------------------------------------------------- capacity of sparse codes

def _check_code(n: int, a: int, theta: int, a_x: int) -> None:
    for name, v in (("n", n), ("a", a), ("theta", theta), ("a_x", a_x)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if n < 1:
        raise ValueError(f"n (dimension) must be >= 1, got {n}")
    if not (0 <= a <= n and 0 <= a_x <= n):
        raise ValueError(f"active counts must satisfy 0 <= a, a_x <= n={n}, got a={a}, a_x={a_x}")
    if theta < 0:
        raise ValueError(f"theta (match threshold) must be >= 0, got {theta}")


def match_probability(n: int, a: int, theta: int, a_x: int | None = None) -> float:
    """P(|x ∩ y| ≥ θ) for a fixed x with a_x active bits and y uniform over the C(n, a) binary
    vectors with a active bits (Ahmad & Scheinkman 2019):

        P = Σ_{b=θ}^{min(a, a_x)} C(a_x, b) · C(n − a_x, a − b) / C(n, a)

    (a hypergeometric tail).  Computed exactly with integers, so tiny probabilities such as
    1e-30 are not lost to rounding.  ``a_x`` defaults to ``a``.
    """
    a_x = a if a_x is None else a_x
    _check_code(n, a, theta, a_x)
    hits = sum(comb(a_x, b) * comb(n - a_x, a - b) for b in range(theta, min(a, a_x) + 1))
    return float(Fraction(hits, comb(n, a)))


def simulate_match_probability(n: int, a: int, theta: int, n_trials: int = 100_000,
                               a_x: int | None = None, seed: int = 0) -> float:
    """Monte-Carlo estimate of ``match_probability``: draw ``n_trials`` random a-subsets of
    {0..n−1} and count how often they share ≥ θ elements with x = {0..a_x−1}."""
    a_x = a if a_x is None else a_x
    _check_code(n, a, theta, a_x)
    if not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials must be a positive int, got {n_trials!r}")
    rng = np.random.default_rng(seed)
    hits, chunk = 0, max(1, 2_000_000 // n)  # bound memory to ~16 MB per chunk
    for start in range(0, n_trials, chunk):
        m = min(chunk, n_trials - start)
        # the positions of the a smallest of n i.i.d. uniforms form a uniform a-subset
        subset = rng.random((m, n)).argpartition(a - 1, axis=1)[:, :a] if a else np.zeros((m, 0), int)
        hits += int(((subset < a_x).sum(axis=1) >= theta).sum())
    return hits / n_trials
