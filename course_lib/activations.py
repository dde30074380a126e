"""Activation functions, dense and sparse, written to read like their formulas.

Dense (no exact zeros except on a measure-zero set): ``leaky_relu``, ``elu``, ``gelu``.
Exactly sparse: ``relu``, ``threshold_relu``, ``topk``, ``kwinners``, ``sparsemax``.

Every function rejects non-finite inputs with ``ValueError``: a single NaN makes ``x > 0`` false
and would silently be counted as an "inactive" unit by the sparsity metrics.

Chapter: book/foundations/activations
"""

from __future__ import annotations

import math

import torch

__all__ = ["relu", "leaky_relu", "elu", "gelu", "threshold_relu", "topk_mask", "topk",
           "boost_factors", "update_duty_cycles", "kwinners", "sparsemax", "SparsemaxFunction"]


def _check_input(x, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        bad = torch.nonzero(~torch.isfinite(x))[0].tolist()
        raise ValueError(f"{name} must be finite; first non-finite entry at index {bad}")


def _check_k(k, width: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= width:
        raise ValueError(f"k must satisfy 1 <= k <= width = {width}, got k = {k}")
    return k


def relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU(x) = max(x, 0): exact zeros for every x <= 0."""
    _check_input(x)
    return torch.clamp(x, min=0)


def leaky_relu(x: torch.Tensor, slope: float = 0.01) -> torch.Tensor:
    """LeakyReLU(x) = x if x > 0 else slope·x (Maas et al. 2013): nonzero wherever x != 0."""
    _check_input(x)
    return torch.where(x > 0, x, slope * x)


def elu(x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """ELU(x) = x if x > 0 else alpha·(exp(x) − 1) (Clevert et al. 2016): negative, not zero."""
    _check_input(x)
    return torch.where(x > 0, x, alpha * torch.expm1(x))


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU(x) = x·Φ(x) with Φ the standard normal CDF (exact erf form): zero only at x = 0."""
    _check_input(x)
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def threshold_relu(x: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Thresholded ReLU: x if x > threshold else 0 (keeps the value, unlike the shift max(x − θ, 0))."""
    _check_input(x)
    return torch.where(x > threshold, x, torch.zeros_like(x))


def topk_mask(scores: torch.Tensor, k: int, dim: int = -1) -> torch.Tensor:
    """Boolean mask of the k largest entries of ``scores`` along ``dim`` (exactly k per slice;
    ties broken by ``torch.topk``)."""
    _check_input(scores, "scores")
    if scores.dim() == 0:
        raise ValueError("scores must have at least one dimension")
    _check_k(k, scores.shape[dim])
    idx = scores.topk(k, dim=dim).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(dim, idx, True)


def topk(x: torch.Tensor, k: int, dim: int = -1, straight_through: bool = False) -> torch.Tensor:
    """Top-k activation: y = x ⊙ m, m = 1 on the k largest entries of x along ``dim``, else 0.

    Gradient: the mask is piecewise constant, so the exact gradient is ∂L/∂x = m ⊙ ∂L/∂y
    (losers get none).  With ``straight_through=True`` the backward pass is the identity,
    ∂L/∂x = ∂L/∂y (a straight-through estimator that also trains the losers).
    """
    y = torch.where(topk_mask(x.detach(), k, dim), x, torch.zeros_like(x))
    if straight_through:
        return x + (y - x).detach()
    return y


def boost_factors(duty_cycles: torch.Tensor, k: int, boost_strength: float) -> torch.Tensor:
    """b_i = exp(β·(k/n − d_i)): units active less often than the target density k/n get b_i > 1."""
    n = duty_cycles.shape[-1]
    _check_k(k, n)
    if boost_strength < 0:
        raise ValueError(f"boost_strength must be >= 0, got {boost_strength}")
    return torch.exp(boost_strength * (k / n - duty_cycles))


def update_duty_cycles(duty_cycles: torch.Tensor, active: torch.Tensor, period: int) -> torch.Tensor:
    """Running average of how often each unit wins, over roughly the last ``period`` samples:

        d ← ((P − B) · d + Σ_batch active) / P,   B = batch size ≤ P = ``period``

    (the update of numenta/nupic.torch's k-winners, which during warm-up passes
    P = min(period, samples seen so far)).  ``active`` is (B, n), 0/1 or bool.  The
    boost factors exp(β(k/n − d)) of :func:`boost_factors` then favour rarely used units.
    """
    if not isinstance(duty_cycles, torch.Tensor) or not isinstance(active, torch.Tensor):
        raise TypeError("duty_cycles and active must be torch.Tensors")
    if active.dim() != 2 or duty_cycles.shape != active.shape[1:]:
        raise ValueError(f"active must be (batch, n) and duty_cycles (n,), got "
                         f"{tuple(active.shape)} and {tuple(duty_cycles.shape)}")
    if not isinstance(period, int) or period < active.shape[0]:
        raise ValueError(f"period must be an int >= batch size {active.shape[0]}, got {period!r}")
    B = active.shape[0]
    return ((period - B) * duty_cycles + active.to(duty_cycles.dtype).sum(dim=0)) / period


def kwinners(x: torch.Tensor, k: int, duty_cycles: torch.Tensor | None = None,
             boost_strength: float = 0.0) -> torch.Tensor:
    """k-winners-take-all over the last dim (Ahmad & Scheinkman 2019).

    Winners are the k largest *boosted* scores x_i·b_i (``boost_factors``), but the output keeps
    the unboosted values: y = x ⊙ topk_mask(x ⊙ b, k).  Gradient flows to the winners only.
    With ``boost_strength = 0`` (or no duty cycles) this is ``topk(x, k)``.
    """
    _check_input(x)
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension")
    if duty_cycles is None or boost_strength == 0:
        return topk(x, k)
    if duty_cycles.shape != x.shape[-1:]:
        raise ValueError(f"duty_cycles must have shape {tuple(x.shape[-1:])} (one per unit), "
                         f"got {tuple(duty_cycles.shape)}")
    scores = x.detach() * boost_factors(duty_cycles, k, boost_strength)
    return torch.where(topk_mask(scores, k), x, torch.zeros_like(x))


def _sparsemax_lastdim(z: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of z onto the simplex: p = max(z − τ, 0), Σp = 1.

    Sort z descending; the support size is k* = max{k : 1 + k·z_(k) > Σ_{j≤k} z_(j)} and
    τ = (Σ_{j≤k*} z_(j) − 1) / k*  (Martins & Astudillo 2016, Prop. 1).
    """
    z_sorted = z.sort(dim=-1, descending=True).values
    ks = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype, device=z.device)
    cumsum = z_sorted.cumsum(dim=-1)
    in_support = 1 + ks * z_sorted > cumsum
    k_star = in_support.sum(dim=-1, keepdim=True)            # support is a prefix of the sort
    tau = (cumsum.gather(-1, k_star - 1) - 1) / k_star.to(z.dtype)
    return torch.clamp(z - tau, min=0)


class SparsemaxFunction(torch.autograd.Function):
    """sparsemax along the last dim with the closed-form backward.

    Jacobian J = diag(s) − s sᵀ/|S| with s the support indicator, so for an upstream gradient v:
    ∂L/∂z = s ⊙ (v − Σ_{j∈S} v_j / |S|).
    """

    @staticmethod
    def forward(ctx, z):
        p = _sparsemax_lastdim(z)
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, grad_p):
        (p,) = ctx.saved_tensors
        support = (p > 0).to(grad_p.dtype)
        v_hat = (grad_p * support).sum(dim=-1, keepdim=True) / support.sum(dim=-1, keepdim=True)
        return support * (grad_p - v_hat)


def sparsemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """sparsemax(x) = argmin_{p ∈ simplex} ‖p − x‖² along ``dim``: a probability vector with exact zeros."""
    _check_input(x)
    if x.dim() == 0 or x.shape[dim] == 0:
        raise ValueError(f"sparsemax needs a non-empty dimension {dim}, got shape {tuple(x.shape)}")
    return SparsemaxFunction.apply(x.movedim(dim, -1)).movedim(-1, dim)
