"""Training-free activation sparsifiers of 2025 on the course's LM, and two measurements.

Chapter: ``book/fast/llm_sparsity``.

TEAL zeroes the entries of a linear layer's input ``x`` whose magnitude is below a calibrated
threshold; a zero in ``x_i`` lets a kernel skip row ``i`` of the weight ``W`` (``y = x·W``,
``W`` of shape ``(d_in, d_out)``). The methods here change *which* entries are dropped, or *in
which basis*, at the same sites (:func:`course_lib.lm.sites` with ``"teal"``):

=========  ================================================================================
``teal``   keep ``x_i`` if ``|x_i| > t`` (the baseline, :mod:`course_lib.lm`)
``wina``   keep ``x_i`` if ``|x_i|·‖W[i, :]‖ > t``: the weight row it would multiply counts (WINA)
``topk``   keep the ``k`` largest ``|x_i|`` of each token (a fixed count, no threshold)
``larosa`` at the sites fed by an RMSNorm of the residual stream, rotate ``z = x·Q`` (``Q``
           orthogonal, from the calibration inputs), keep the ``k`` largest ``|z_j|`` per token,
           multiply by ``Qᵀ·W`` (precomputed); elsewhere ``topk`` (LaRoSA)
``rsparse``the ``wina`` mask ``m`` for the sparse part, and the dropped rest through a rank-``r``
           factor of ``W``: ``y = (m⊙x)·W + ((1−m)⊙x)·U_r Σ_r V_rᵀ`` (R-Sparse)
=========  ================================================================================

A sparsifier is a callable set as a :class:`course_lib.lm.Site`'s ``transform``; each has
``keep(x)``, the boolean mask of the input channels a kernel still reads, and ``overhead``, the
share of the site's weight bytes it reads besides (R-Sparse's low-rank factors, LaRoSA's
``Q``, counted as a ``d_in × d_in`` matrix read per token though a deployment may fold part of
it into the residual stream). The
**sparsity** of a setting is the share of the site's weight bytes *not* read, averaged over the
sites: ``1 − mean(keep) − overhead``.

Two measurements for the papers that are about hardware rather than perplexity:
:func:`statistical_topk_keep` (Spark Transformer's linear-time top-k: a threshold from each
token's mean and standard deviation, assuming a Gaussian) and :func:`hot_neuron_coverage` (how
much of the activity a fixed set of frequently active neurons covers, the premise of
PowerInfer's hot/cold split and of PowerInfer-2's neuron cache).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

from course_lib import lm

__all__ = ["METHODS", "consumers", "Threshold", "TopK", "RankAware", "pca_rotation",
           "residual_fed", "factor_overhead", "sparsifiers", "evaluate", "sweep", "statistical_topk_keep", "hot_neuron_coverage"]

METHODS = ("teal", "wina", "topk", "larosa", "rsparse")


def consumers(model: lm.DecoderLM) -> list[torch.Tensor]:
    """Per TEAL site (in the order of ``lm.sites(model, "teal")``), the weight ``W (d_in, d_out)``
    its input multiplies; linears that share an input are concatenated along ``d_out``
    (``W_q, W_k, W_v`` already are one matrix; ``W_gate, W_up`` are joined)."""
    out = []
    for b in model.blocks:
        ffn_in = [b.ffn.gate.weight, b.ffn.up.weight] if b.ffn.gated else [b.ffn.up.weight]
        for lins in ([b.attn.qkv.weight], [b.attn.out.weight], ffn_in, [b.ffn.down.weight]):
            out.append(torch.cat(lins).detach().T)  # nn.Linear stores (d_out, d_in)
    return out


class Threshold:
    """Keep ``x_i`` if ``|x_i|·s_i > t`` (``s = 1``: TEAL; ``s_i = ‖W[i, :]‖``: WINA)."""

    overhead = 0.0

    def __init__(self, t: float, scale: torch.Tensor | None = None):
        self.t, self.scale = t, scale

    def keep(self, x: torch.Tensor) -> torch.Tensor:
        return (x.abs() if self.scale is None else x.abs() * self.scale) > self.t

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.keep(x)


class TopK:
    """Keep the ``k`` largest ``|z_j|`` of each token, ``z = x·Q`` (``Q = None``: ``z = x``), and
    return ``z_kept·Qᵀ`` (LaRoSA with a rotation; without one, a per-token top-k). ``overhead``:
    the share of the site's weights that reading ``Q`` adds."""

    def __init__(self, k: int, rotation: torch.Tensor | None = None, overhead: float = 0.0):
        self.k, self.q, self.overhead = k, rotation, overhead

    def _rotated(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.q is None else x @ self.q

    def _top(self, z: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros_like(z, dtype=torch.bool)
        return mask.scatter_(-1, z.abs().topk(self.k, dim=-1).indices, True)

    def keep(self, x: torch.Tensor) -> torch.Tensor:
        return self._top(self._rotated(x))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        z = self._rotated(x)
        z = z * self._top(z)
        return z if self.q is None else z @ self.q.T


def factor_overhead(w: torch.Tensor, rank: int) -> float:
    """Share of ``W (d_in, d_out)``'s weights that rank-``r`` factors read: ``r·(d_in + d_out) /
    (d_in·d_out)``."""
    return rank * (w.shape[0] + w.shape[1]) / w.numel()


class RankAware:
    """R-Sparse: ``x ↦ m⊙x + ((1−m)⊙x)·P`` with ``m`` a :class:`Threshold` mask and
    ``P = U_r U_rᵀ`` the projection on the top ``r`` left singular vectors of ``W``, so that the
    layer computes ``(m⊙x)·W + ((1−m)⊙x)·U_r Σ_r V_rᵀ``. Reading the factors costs
    ``r·(d_in + d_out)`` weights, a share ``overhead`` of ``W``'s ``d_in·d_out``."""

    def __init__(self, mask: Threshold, w: torch.Tensor, rank: int):
        d_in, d_out = w.shape
        if not 0 <= rank <= min(d_in, d_out):
            raise ValueError(f"rank must be in [0, {min(d_in, d_out)}], got {rank}")
        self.mask = mask
        self.basis = torch.linalg.svd(w, full_matrices=False).U[:, :rank]
        self.overhead = factor_overhead(w, rank)

    def keep(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask.keep(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        kept = x * self.keep(x)
        return kept + ((x - kept) @ self.basis) @ self.basis.T


def pca_rotation(x: torch.Tensor) -> torch.Tensor:
    """Orthogonal ``Q (d, d)`` whose columns are the eigenvectors of ``xᵀx`` (largest first):
    in ``z = x·Q`` the energy of the calibration inputs ``x (tokens, d)`` is concentrated in few
    coordinates, which a per-token top-k then keeps."""
    evals, evecs = torch.linalg.eigh(x.double().T @ x.double())
    return evecs.flip(-1).to(x.dtype)


def residual_fed(model: lm.DecoderLM) -> list[bool]:
    """Per TEAL site, whether its input is an RMSNorm of the residual stream (the input of
    ``W_q, W_k, W_v`` and of ``W_gate, W_up``), where LaRoSA rotates."""
    rotated = {id(s) for b in model.blocks for s in (b.attn.in_site, b.ffn.in_site)}
    return [id(s) in rotated for s in lm.sites(model, "teal")]


def sparsifiers(method: str, level: float, calib: list[torch.Tensor], ws: list[torch.Tensor],
                rank: int = 0, rotate: list[bool] | None = None) -> list:
    """One sparsifier per site for a target sparsity ``level`` in ``[0, 1)``, calibrated on the
    dense model's site inputs ``calib`` (one ``(tokens, d_in)`` tensor per site, weights ``ws``
    from :func:`consumers`). Threshold methods take the ``level``-quantile of their score; top-k
    methods keep ``round((1 − level)·d_in)`` per token, ``larosa`` rotating where ``rotate`` says
    (:func:`residual_fed`); ``rsparse`` spends ``rank`` on the low-rank part and raises its
    channel sparsity by the factors' overhead."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not 0 <= level < 1:
        raise ValueError(f"sparsity level must be in [0, 1), got {level}")
    if rank and method != "rsparse":
        raise ValueError(f"only rsparse has a rank; got rank={rank} for {method!r}")
    if method == "larosa" and rotate is None:
        raise ValueError("larosa needs rotate: which sites to rotate (see residual_fed)")
    out = []
    for i, (x, w) in enumerate(zip(calib, ws)):
        d_in = x.shape[-1]
        if method in ("topk", "larosa"):
            k = max(1, round((1 - level) * d_in))
            if method == "larosa" and rotate[i] and level > 0:
                out.append(TopK(k, pca_rotation(x), overhead=d_in / w.shape[1]))
            else:
                out.append(TopK(k))
            continue
        scale = None if method == "teal" else w.norm(dim=1)
        score = x.abs() if scale is None else x.abs() * scale
        # R-Sparse reads its factors too, so it must drop more channels to save as much
        extra = factor_overhead(w, rank)
        if level + extra >= 1:
            raise ValueError(f"rank {rank} reads {extra:.2f} of a ({d_in}, {w.shape[1]}) weight: "
                             f"more than the sparsity budget {1 - level:.2f} leaves")
        # level 0 keeps everything, even the smallest entry a quantile would put at t
        t = lm.magnitude_threshold(score, level + extra) if level + extra > 0 else -math.inf
        mask = Threshold(t, scale)
        out.append(RankAware(mask, w, rank) if method == "rsparse" else mask)
    return out


def evaluate(model: lm.DecoderLM, at: list[lm.Site], sps: list, eval_w: torch.Tensor) -> dict:
    """Perplexity on ``eval_w`` with ``sps`` set at the sites ``at``, and the achieved sparsity
    (mean over sites of ``1 − mean(keep) − overhead``, ``keep`` on what reaches each site)."""
    lm.clear_thresholds(model)
    try:
        for s, sp in zip(at, sps):
            s.transform, s.record = sp, []
        ppl = lm.windows_perplexity(model, eval_w)
        saved = [1 - sp.keep(torch.cat(s.record)).float().mean().item() - sp.overhead
                 for s, sp in zip(at, sps)]
    finally:
        lm.clear_thresholds(model)
        for s in at:
            s.record = None
    return {"ppl": ppl, "sparsity": sum(saved) / len(saved)}


def sweep(model: lm.DecoderLM, method: str, levels: list[float], calib_w: torch.Tensor,
          eval_w: torch.Tensor, ranks: tuple[int, ...] = (0, 2, 4, 8, 16)) -> list[dict]:
    """Each of ``levels`` with ``method`` at TEAL's sites, calibrated on ``calib_w`` and scored
    on ``eval_w`` (rows: method, target, sparsity, ppl, rank). For ``rsparse`` the rank is the
    one of ``ranks`` with the lowest perplexity on ``calib_w`` (a one-number version of the
    paper's per-layer search of the split between sparse and low-rank parts)."""
    at = lm.sites(model, "teal")
    lm.clear_thresholds(model)
    calib = lm.recorded(model, at, calib_w)
    ws, rotate = consumers(model), residual_fed(model)
    rows = []
    for level in levels:
        rank = 0
        if method == "rsparse" and level > 0:
            fits = [r for r in ranks if all(level + factor_overhead(w, r) < 1 for w in ws)]
            rank = min(fits, key=lambda r: evaluate(
                model, at, sparsifiers(method, level, calib, ws, r), calib_w)["ppl"])
        row = evaluate(model, at, sparsifiers(method, level, calib, ws, rank, rotate), eval_w)
        rows.append({"method": method, "target": level, "rank": rank, **row})
    return rows


def statistical_topk_keep(z: torch.Tensor, share: float) -> torch.Tensor:
    """Per row of ``z``, the share of entries above Spark Transformer's statistical top-k
    threshold ``θ = mean + std·Φ⁻¹(1 − share)``: exactly ``share`` if each row were Gaussian."""
    if not 0 < share < 1:
        raise ValueError(f"share kept must be in (0, 1), got {share}")
    theta = z.mean(-1, keepdim=True) + z.std(-1, keepdim=True) * NormalDist().inv_cdf(1 - share)
    return (z > theta).float().mean(-1)


def hot_neuron_coverage(h_calib: torch.Tensor, h_eval: torch.Tensor, share: float) -> float:
    """Share of the nonzero activations of ``h_eval (tokens, d_ff)`` that fall on the ``share``
    of neurons most often nonzero on ``h_calib``: the hit rate of a static neuron cache of that
    size (PowerInfer's "hot" neurons)."""
    if not 0 < share <= 1:
        raise ValueError(f"share of neurons must be in (0, 1], got {share}")
    n_hot = max(1, round(share * h_calib.shape[-1]))
    hot = (h_calib != 0).float().mean(0).topk(n_hot).indices
    active = h_eval != 0
    return (active[:, hot].sum() / active.sum().clamp(min=1)).item()
