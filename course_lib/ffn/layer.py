"""A sparse FFN layer for decode (``SparseFFN``), its low-rank predictor of the active set and
the calibration of a TEAL-style threshold.

Chapter: book/fast/sparse_ffn, book/fast/transformer

:class:`SparseFFN` has the modes ``dense``, ``exact`` (the exact zeros of ReLU), ``threshold``
(TEAL-style ``|h| > t`` with ``t`` calibrated to a target sparsity) and ``predicted`` (a low-rank
Deja Vu-style predictor of the active set); a sparse mode reads only the active neurons' weights
through ``ffn.dispatch`` (tier ``impl``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .dispatch import fused_ffn, gather_gemv
from .ref import ACTIVATIONS

__all__ = ["calibrate_threshold", "LowRankPredictor", "SparseFFN"]


# --------------------------------------------------------------------------- calibration

def calibrate_threshold(h: torch.Tensor, sparsity: float) -> float:
    """TEAL-style threshold: the ``sparsity``-quantile of ``|h|`` over calibration activations.

    ``t`` is the k-th smallest ``|h|`` with ``k = ⌊sparsity·n⌋``: zeroing every entry with
    ``|h| <= t`` removes ``k/n ≈ sparsity`` of the entries (more if there are ties at ``t``).
    """
    if not isinstance(h, torch.Tensor):
        raise TypeError(f"h must be a torch.Tensor, got {type(h).__name__}")
    if h.numel() == 0:
        raise ValueError("h must contain at least one activation to calibrate on")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    k = int(sparsity * h.numel())  # entries to zero
    if k == 0:
        return -1.0  # nothing is below a negative threshold: keep everything
    a = h.detach().abs().flatten().double().cpu().numpy()
    return float(np.partition(a, k - 1)[k - 1])  # the k-th smallest |h|


# --------------------------------------------------------------------------- predictor

class LowRankPredictor(nn.Module):
    """Deja Vu-style predictor: ``logits = B · (A · x)``; neuron ``j`` predicted active if ``logit_j > 0``."""

    def __init__(self, d_model: int, d_ff: int, rank: int):
        super().__init__()
        if rank <= 0:
            raise ValueError(f"rank must be positive, got {rank}")
        self.A = nn.Linear(d_model, rank, bias=False)
        self.B = nn.Linear(rank, d_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.B(self.A(x))

    def fit(self, X: torch.Tensor, active: torch.Tensor, *, steps: int = 300, lr: float = 1e-2,
            pos_weight: float = 2.0, seed: int = 0) -> list[float]:
        """Train on recorded (input, active-mask) pairs with weighted BCE (``pos_weight`` favours recall)."""
        if X.ndim != 2 or active.shape != (X.shape[0], self.B.out_features):
            raise ValueError(f"need X (n, d_model) and active (n, d_ff); got {tuple(X.shape)}, "
                             f"{tuple(active.shape)}")
        torch.manual_seed(seed)
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight, device=X.device))
        target = active.float()
        losses = []
        for _ in range(steps):
            loss = loss_fn(self(X), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses


# --------------------------------------------------------------------------- the layer

class SparseFFN:
    """Inference-only FFN ``y = W2 · act(W1 · x + b1) + b2`` that reads only active neurons' weights.

    Stores ``W1`` as ``(d_ff, d_model)`` and ``W2t = W2ᵀ`` as ``(d_ff, d_out)`` (``d_out = d_model``
    in a transformer): the weights of neuron ``j`` are the contiguous rows ``W1[j]`` and ``W2t[j]``.
    """

    MODES = ("dense", "exact", "threshold", "predicted")

    def __init__(self, W1: torch.Tensor, b1: torch.Tensor, W2: torch.Tensor, b2: torch.Tensor,
                 activation: str = "relu", impl: str = "auto"):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if W1.ndim != 2 or W2.ndim != 2 or W2.shape[1] != W1.shape[0]:
            raise ValueError(f"need W1 (d_ff, d_model) and W2 (d_out, d_ff), got "
                             f"{tuple(W1.shape)} and {tuple(W2.shape)}")
        if b1.shape != (W1.shape[0],) or b2.shape != (W2.shape[0],):
            raise ValueError(f"need b1 ({W1.shape[0]},) and b2 ({W2.shape[0]},), got "
                             f"{tuple(b1.shape)} and {tuple(b2.shape)}")
        self.W1 = W1.detach().contiguous()
        self.b1 = b1.detach()
        self.W2t = W2.detach().t().contiguous()
        self.b2 = b2.detach()
        self.act = ACTIVATIONS[activation]
        self.activation = activation
        self.impl = impl
        self.threshold: float | None = None
        self.predictor: LowRankPredictor | None = None

    @classmethod
    def from_linear(cls, up: nn.Linear, down: nn.Linear, activation: str = "relu",
                    impl: str = "auto") -> "SparseFFN":
        """Wrap the two ``nn.Linear`` of an FFN (``up: d_model→d_ff``, ``down: d_ff→d_out``)."""
        zeros = lambda n, ref: torch.zeros(n, dtype=ref.dtype)  # noqa: E731
        b1 = up.bias if up.bias is not None else zeros(up.out_features, up.weight)
        b2 = down.bias if down.bias is not None else zeros(down.out_features, down.weight)
        return cls(up.weight, b1, down.weight, b2, activation, impl)

    @property
    def d_model(self) -> int:
        return self.W1.shape[1]

    @property
    def d_ff(self) -> int:
        return self.W1.shape[0]

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The dense hidden activations ``act(W1 · x + b1)`` (any leading batch shape)."""
        return self.act(x @ self.W1.t() + self.b1)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """The dense reference ``W2 · act(W1 · x + b1) + b2``."""
        return self.hidden(x) @ self.W2t + self.b2

    def calibrate(self, X: torch.Tensor, sparsity: float) -> float:
        """Set the threshold so that a ``sparsity`` share of ``|h|`` over ``X`` falls below it."""
        self.threshold = calibrate_threshold(self.hidden(X), sparsity)
        return self.threshold

    def fit_predictor(self, X: torch.Tensor, rank: int = 32, **fit_kwargs) -> list[float]:
        """Train a low-rank predictor of the active set ``{j : h_j ≠ 0}`` (or ``|h_j| > t``) on ``X``."""
        with torch.no_grad():
            active = self._mask(self.hidden(X))
        self.predictor = LowRankPredictor(self.d_model, self.d_ff, rank)
        self.predictor.to(device=self.W1.device, dtype=self.W1.dtype)
        return self.predictor.fit(X, active, **fit_kwargs)

    def _mask(self, h: torch.Tensor) -> torch.Tensor:
        return h.abs() > self.threshold if self.threshold is not None else h != 0

    def active_set(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        """Indices of the neurons ``mode`` computes for one token ``x``."""
        if mode == "predicted":
            if self.predictor is None:
                raise ValueError("mode 'predicted' needs fit_predictor() first")
            with torch.no_grad():
                return torch.nonzero(self.predictor(x) > 0).flatten()
        if mode == "threshold" and self.threshold is None:
            raise ValueError("mode 'threshold' needs calibrate() first")
        h = self.hidden(x)
        return torch.nonzero(h != 0 if mode == "exact" else h.abs() > self.threshold).flatten()

    @torch.no_grad()
    def recall(self, X: torch.Tensor) -> dict:
        """Predictor quality on ``X``: recall = |pred ∩ true| / |true|, plus precision and density."""
        if self.predictor is None:
            raise ValueError("recall needs fit_predictor() first")
        true = self._mask(self.hidden(X))
        pred = self.predictor(X) > 0
        hit = (true & pred).sum().item()
        return {"recall": hit / max(1, true.sum().item()),
                "precision": hit / max(1, pred.sum().item()),
                "true_density": true.float().mean().item(),
                "predicted_density": pred.float().mean().item()}

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, mode: str = "exact") -> torch.Tensor:
        """Forward one token ``(d_model,)`` or a batch ``(n, d_model)`` (token by token, as in decode)."""
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        if x.shape[-1] != self.d_model or x.ndim not in (1, 2):
            raise ValueError(f"x must be (d_model,) or (n, d_model) with d_model={self.d_model}, "
                             f"got {tuple(x.shape)}")
        if mode == "dense":
            return self.dense(x)
        if x.ndim == 2:
            return torch.stack([self(row, mode) for row in x]) if len(x) else self.dense(x)
        idx = self.active_set(x, mode)
        if mode == "predicted":  # one pass over the predicted neurons: W1 rows, act, W2t rows
            return fused_ffn(self.W1, self.b1, self.W2t, x, idx, self.activation,
                             impl=self.impl) + self.b2
        return gather_gemv(self.W2t, self.hidden(x), idx, impl=self.impl) + self.b2
