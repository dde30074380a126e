"""Measuring activation sparsity: exact zeros, near-zeros, Hoyer sparseness, dead units, and an
``ActivationRecorder`` that collects these per layer of any ``nn.Module`` with forward hooks.

Convention: dim 0 is the batch; a *unit* is any coordinate of the remaining dims (a hidden neuron of
a linear layer, a (channel, row, col) neuron of a convolution, a (time, feature) of a sequence).

Chapter: book/foundations/metrics
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["fraction_zeros", "fraction_below", "hoyer", "dead_units", "LayerStats",
           "ActivationRecorder"]


def _check(x, name="x"):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): sparsity is undefined")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite")


def fraction_zeros(x: torch.Tensor) -> float:
    """#{x_i = 0} / n: exact zeros, the ones a sparse kernel can skip."""
    _check(x)
    return (x == 0).double().mean().item()


def fraction_below(x: torch.Tensor, eps: float) -> float:
    """#{|x_i| <= eps} / n (eps = 0 gives ``fraction_zeros``): near-zeros, skippable only approximately."""
    _check(x)
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return (x.abs() <= eps).double().mean().item()


def hoyer(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Hoyer sparseness (√n − ‖x‖₁/‖x‖₂) / (√n − 1) ∈ [0, 1]: 0 for equal magnitudes, 1 for one nonzero.

    ``dim=None`` treats x as one vector, otherwise one value per slice along ``dim``.
    It is scale invariant and counts near-zeros as sparse, unlike ``fraction_zeros``.
    An all-zero vector has no active entry and gets 1 by convention.
    """
    _check(x)
    v = x.reshape(-1) if dim is None else x.movedim(dim, -1)
    n = v.shape[-1]
    if n < 2:
        raise ValueError(f"Hoyer sparseness needs vectors of length >= 2, got {n}")
    l1 = v.abs().sum(-1, dtype=torch.float64)
    l2 = v.double().norm(dim=-1)
    ratio = torch.where(l2 > 0, l1 / torch.where(l2 > 0, l2, 1.0), torch.ones_like(l1))
    return (math.sqrt(n) - ratio) / (math.sqrt(n) - 1)


def dead_units(x: torch.Tensor, eps: float = 0.0) -> float:
    """Fraction of units (non-batch coordinates) with |x| <= eps on every sample of the batch."""
    _check(x)
    if x.dim() < 2:
        raise ValueError(f"x must be (batch, units...), got shape {tuple(x.shape)}")
    return (x.abs() <= eps).all(dim=0).double().mean().item()


@dataclass
class LayerStats:
    """Running per-layer totals; ``summary()`` turns them into fractions."""

    elements: int = 0
    zeros: int = 0
    below_eps: int = 0
    hoyer_sum: float = 0.0
    samples: int = 0
    ever_active: torch.Tensor | None = None   # per unit: |x| > eps on some sample


class ActivationRecorder:
    """Record per-layer activation sparsity of any ``nn.Module`` with forward hooks.

    ``layers``: names from ``model.named_modules()`` (default: every leaf module whose output is a
    tensor).  Only running counts are kept, never the activations, so it can watch a whole dataset.
    For modules returning tuples (``nn.GRU``) the first tensor is recorded.

    >>> with ActivationRecorder(model, eps=1e-3) as rec:   # doctest: +SKIP
    ...     model(X)
    >>> rec.summary()["act1"]["zeros"]                     # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, layers=None, eps: float = 1e-3):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        modules = dict(model.named_modules())
        if layers is None:
            layers = [n for n, m in modules.items() if n and not any(True for _ in m.children())]
        missing = [n for n in layers if n not in modules]
        if missing:
            raise ValueError(f"no submodule named {missing}; available: {[n for n in modules if n]}")
        self.eps = eps
        self.layers = list(layers)
        self.stats = {n: LayerStats() for n in self.layers}
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in self.layers]

    def _hook(self, name):
        def hook(module, inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                self._update(name, out.detach())
        return hook

    def _update(self, name, x):
        s = self.stats[name]
        x2 = x.reshape(x.shape[0], -1) if x.dim() >= 2 else x.reshape(1, -1)
        active = x2.abs() > self.eps
        s.elements += x2.numel()
        s.zeros += int((x2 == 0).sum())
        s.below_eps += int((~active).sum())
        s.hoyer_sum += float(hoyer(x2, dim=-1).sum()) if x2.shape[1] >= 2 else math.nan
        s.samples += x2.shape[0]
        ever = active.any(dim=0)
        if s.ever_active is not None and s.ever_active.shape != ever.shape:
            raise ValueError(f"layer {name!r} produced {ever.numel()} units per sample after "
                             f"{s.ever_active.numel()} before; give each use of a module its own "
                             "instance (or fixed shapes) so units are well defined")
        s.ever_active = ever if s.ever_active is None else s.ever_active | ever

    def reset(self):
        """Forget everything recorded so far (hooks stay in place)."""
        self.stats = {n: LayerStats() for n in self.layers}

    def summary(self) -> dict[str, dict[str, float]]:
        """Per recorded layer: fraction of exact ``zeros``, of ``below_eps``, mean per-sample
        ``hoyer``, fraction of ``dead`` units (|x| <= eps on every recorded sample), ``samples``."""
        out = {}
        for n, s in self.stats.items():
            if s.elements == 0:
                continue
            out[n] = {"zeros": s.zeros / s.elements, "below_eps": s.below_eps / s.elements,
                      "hoyer": s.hoyer_sum / s.samples,
                      "dead": 1.0 - s.ever_active.double().mean().item(), "samples": s.samples}
        return out

    def remove(self):
        """Detach the hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False
