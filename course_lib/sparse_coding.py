"""Sparse coding of natural images (Olshausen & Field 1996), small enough to learn at build time.

Model: a whitened patch x ∈ R^p is explained by a code a ∈ R^k over a dictionary D ∈ R^{k×p}
(rows = unit-norm atoms), x ≈ a D.  The codes solve the lasso (one problem per row of X)

    min_A  ½ ||X − A D||²_F + λ ||A||₁ ,

and the dictionary follows by a projected gradient step on the same objective.  Row-major
conventions (samples in rows, atoms in rows) match scikit-learn's ``sparse_encode``, whose
``alpha`` is exactly our λ (it divides by n_features internally to match ``Lasso``'s scaling).

Chapter: book/brain/sparse_coding
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "load_gray_images", "extract_patches", "zca_whiten", "natural_patches",
    "soft_threshold", "lasso_objective", "lipschitz_constant", "ista_step", "sparse_encode",
    "update_dictionary", "learn_dictionary", "relative_error",
]


# ---------------------------------------------------------------- data: patches and whitening

def load_gray_images(downsample: int = 1) -> list[np.ndarray]:
    """scikit-learn's two bundled photographs (china, flower) as float64 grey images in [0, 1].

    Grey = mean of the RGB channels; ``downsample`` = s averages s×s pixel blocks, which damps
    JPEG artifacts and puts more image structure into a small patch.  Offline: the JPEGs ship
    with scikit-learn.
    """
    from sklearn.datasets import load_sample_images

    if not isinstance(downsample, int) or downsample < 1:
        raise ValueError(f"downsample must be a positive int, got {downsample!r}")
    s = downsample
    out = []
    for img in load_sample_images().images:
        g = img.astype(np.float64).mean(axis=2) / 255.0
        h, w = g.shape[0] // s, g.shape[1] // s
        out.append(g[:h * s, :w * s].reshape(h, s, w, s).mean(axis=(1, 3)))
    return out


def extract_patches(images, patch_size: int, n_patches: int, seed: int = 0) -> np.ndarray:
    """``n_patches`` random ``patch_size``×``patch_size`` patches, flattened row-major, shape (n, p²).

    Patches are drawn uniformly over images (round-robin) and positions, with each patch's mean
    (its DC component) removed.
    """
    if not isinstance(patch_size, (int, np.integer)) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    if not isinstance(n_patches, (int, np.integer)) or n_patches < 1:
        raise ValueError(f"n_patches must be a positive int, got {n_patches!r}")
    images = list(images)
    if not images:
        raise ValueError("images must contain at least one image")
    for i, img in enumerate(images):
        if np.ndim(img) != 2:
            raise ValueError(f"images[{i}] must be 2-D (grey), got shape {np.shape(img)}")
        if min(img.shape) < patch_size:
            raise ValueError(f"images[{i}] of shape {img.shape} is smaller than patch_size={patch_size}")
    rng = np.random.default_rng(seed)
    out = np.empty((n_patches, patch_size * patch_size))
    for j in range(n_patches):
        img = images[j % len(images)]
        r = rng.integers(0, img.shape[0] - patch_size + 1)
        c = rng.integers(0, img.shape[1] - patch_size + 1)
        out[j] = img[r:r + patch_size, c:c + patch_size].ravel()
    return out - out.mean(axis=1, keepdims=True)


def zca_whiten(X: np.ndarray, eps_rel: float = 0.1):
    """ZCA whitening: X_w = (X − μ) W with W = U diag((s + ε)^−½) Uᵀ, C = U diag(s) Uᵀ.

    C is the feature covariance of X and ε = ``eps_rel`` · mean(s).  The ε keeps the weakest
    (high-frequency, mostly noise) directions from being amplified: a low-pass roll-off in the
    spirit of Olshausen & Field's whitening filter.  Returns ``(X_w, W, μ)``.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 2:
        raise ValueError(f"X must be 2-D with at least 2 rows (samples), got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("X must be finite (found NaN or inf)")
    if not eps_rel > 0:
        raise ValueError(f"eps_rel must be > 0, got {eps_rel}")
    mu = X.mean(axis=0)
    Xc = X - mu
    s, U = np.linalg.eigh(Xc.T @ Xc / Xc.shape[0])
    s = np.clip(s, 0.0, None)
    W = (U / np.sqrt(s + eps_rel * s.mean())) @ U.T
    return Xc @ W, W, mu


def natural_patches(patch_size: int = 8, n_patches: int = 20000, eps_rel: float = 1.0,
                    downsample: int = 2, seed: int = 0, dtype: torch.dtype = torch.float32):
    """Whitened patches of the bundled photographs as a torch tensor (n, p²), plus the raw patches.

    Returns ``(X_white, X_raw)``; ``X_raw`` (DC removed, not whitened) is what PCA is shown on.
    """
    raw = extract_patches(load_gray_images(downsample), patch_size, n_patches, seed)
    white, _, _ = zca_whiten(raw, eps_rel)
    return torch.as_tensor(white, dtype=dtype), torch.as_tensor(raw, dtype=dtype)


# ---------------------------------------------------------------- codes: ISTA / FISTA

def _check_problem(X, D, lam=None, A=None):
    for name, t in (("X", X), ("D", D)) + ((("A", A),) if A is not None else ()):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {t.dtype}")
    if X.dtype != D.dtype or (A is not None and A.dtype != X.dtype):
        raise TypeError(f"X, D (and A) must share a dtype, got X {X.dtype}, D {D.dtype}"
                        + (f", A {A.dtype}" if A is not None else ""))
    if X.shape[1] != D.shape[1]:
        raise ValueError(f"X has {X.shape[1]} features but the atoms of D (rows) have {D.shape[1]}")
    if A is not None and A.shape != (X.shape[0], D.shape[0]):
        raise ValueError(f"A must have shape (n_samples, n_atoms) = {(X.shape[0], D.shape[0])}, "
                         f"got {tuple(A.shape)}")
    if lam is not None and not (np.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a finite number >= 0, got {lam}")


def soft_threshold(x: torch.Tensor, t: float) -> torch.Tensor:
    """S_t(x) = sign(x)·max(|x| − t, 0), the proximal map of t·|·|₁ (elementwise)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not t >= 0:
        raise ValueError(f"threshold t must be >= 0, got {t}")
    return torch.sign(x) * torch.clamp(x.abs() - t, min=0)


def lasso_objective(X: torch.Tensor, D: torch.Tensor, A: torch.Tensor, lam: float) -> torch.Tensor:
    """Mean over samples of ½||x_i − a_i D||² + λ||a_i||₁ (a scalar tensor)."""
    _check_problem(X, D, lam, A)
    return (0.5 * ((X - A @ D) ** 2).sum() + lam * A.abs().sum()) / X.shape[0]


def lipschitz_constant(D: torch.Tensor) -> float:
    """L = ||D Dᵀ||₂ = σ_max(D)², the Lipschitz constant of ∇_A ½||X − A D||² = (A D − X) Dᵀ."""
    return float(torch.linalg.matrix_norm(D, ord=2) ** 2)


def ista_step(A: torch.Tensor, X: torch.Tensor, D: torch.Tensor, lam: float, L: float) -> torch.Tensor:
    """One proximal-gradient (ISTA) step: A ← S_{λ/L}(A − (A D − X) Dᵀ / L)."""
    _check_problem(X, D, lam, A)
    if not L > 0:
        raise ValueError(f"step constant L must be > 0, got {L}")
    return soft_threshold(A - (A @ D - X) @ D.T / L, lam / L)


def sparse_encode(X: torch.Tensor, D: torch.Tensor, lam: float, n_iter: int = 100,
                  method: str = "fista", A0: torch.Tensor | None = None) -> torch.Tensor:
    """Codes A ≈ argmin ½||X − A D||² + λ||A||₁ by ``n_iter`` batched ISTA or FISTA steps.

    FISTA (Beck & Teboulle) takes each ISTA step from the extrapolated point
    Y = A_k + ((t_k − 1)/t_{k+1})(A_k − A_{k−1}), t_{k+1} = (1 + √(1 + 4t_k²))/2, which improves
    the worst-case rate from O(1/k) to O(1/k²).  The Gram matrix D Dᵀ and X Dᵀ are computed once,
    so each step costs one (n×k)·(k×k) product.
    """
    _check_problem(X, D, lam, A0)
    if method not in ("ista", "fista"):
        raise ValueError(f"method must be 'ista' or 'fista', got {method!r}")
    if not isinstance(n_iter, int) or n_iter < 1:
        raise ValueError(f"n_iter must be a positive int, got {n_iter!r}")
    L = lipschitz_constant(D)
    if L == 0:  # all atoms zero: A = 0 is a minimizer (the only one when λ > 0)
        return torch.zeros(X.shape[0], D.shape[0], dtype=X.dtype)
    G, XDt = D @ D.T, X @ D.T
    A = torch.zeros(X.shape[0], D.shape[0], dtype=X.dtype) if A0 is None else A0.clone()
    Y, t = A, 1.0
    for _ in range(n_iter):
        A_next = soft_threshold(Y - (Y @ G - XDt) / L, lam / L)  # = ista_step(Y, X, D, lam, L)
        if method == "fista":
            t_next = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0
            Y = A_next + ((t - 1.0) / t_next) * (A_next - A)
            t = t_next
        else:
            Y = A_next
        A = A_next
    return A


# ---------------------------------------------------------------- dictionary learning

def _normalize_rows(D: torch.Tensor) -> torch.Tensor:
    return D / D.norm(dim=1, keepdim=True).clamp_min(torch.finfo(D.dtype).tiny)


def update_dictionary(D: torch.Tensor, X: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Projected gradient step on ½||X − A D||² over D, then atoms back to unit norm:

    D ← normalize_rows(D + Aᵀ(X − A D) / ||AᵀA||₂).  Atoms no code uses (zero column of A) are
    left unchanged.  The unit-norm constraint stops the trivial escape D → ∞, A → 0.
    """
    _check_problem(X, D, None, A)
    L = lipschitz_constant(A.T)
    if L == 0:
        return D.clone()
    return _normalize_rows(D + A.T @ (X - A @ D) / L)


def learn_dictionary(X: torch.Tensor, n_atoms: int, lam: float, n_steps: int = 300,
                     batch_size: int = 256, n_iter: int = 50, seed: int = 0):
    """Alternate minimization on mini-batches: codes by FISTA, then one dictionary step.

    Start: ``n_atoms`` random unit-norm Gaussian atoms.  Each step draws ``batch_size`` rows of X
    (with a seeded generator), encodes them, records the batch objective, updates D.
    Returns ``(D, objectives)`` with ``objectives`` the per-step batch lasso objectives.
    """
    if not isinstance(X, torch.Tensor) or X.dim() != 2 or not X.is_floating_point():
        raise TypeError("X must be a 2-D floating-point torch.Tensor (samples in rows)")
    for name, v in (("n_atoms", n_atoms), ("n_steps", n_steps), ("batch_size", batch_size)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if batch_size > X.shape[0]:
        raise ValueError(f"batch_size={batch_size} exceeds the number of samples {X.shape[0]}")
    g = torch.Generator().manual_seed(seed)
    D = _normalize_rows(torch.randn(n_atoms, X.shape[1], generator=g, dtype=X.dtype))
    objectives = []
    for _ in range(n_steps):
        Xb = X[torch.randperm(X.shape[0], generator=g)[:batch_size]]
        A = sparse_encode(Xb, D, lam, n_iter=n_iter)
        objectives.append(float(lasso_objective(Xb, D, A, lam)))
        D = update_dictionary(D, Xb, A)
    return D, objectives


def relative_error(X: torch.Tensor, A: torch.Tensor, D: torch.Tensor) -> float:
    """||X − A D||²_F / ||X||²_F: the share of the signal's energy the code fails to explain."""
    _check_problem(X, D, None, A)
    return float(((X - A @ D) ** 2).sum() / (X ** 2).sum())
