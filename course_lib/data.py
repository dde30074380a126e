"""Offline datasets: scikit-learn's bundled digits and small synthetic sets (no downloads).

Chapter: book/foundations/metrics, book/fast/spmm_cpu
"""

from __future__ import annotations

import numpy as np
import torch


def load_digits_split(seed: int = 0, test_size: float = 0.25, dtype: torch.dtype = torch.float32):
    """The 8×8 digits (1797 images, 10 classes), pixels scaled to [0, 1], split stratified.

    Returns ``(X_train, y_train, X_test, y_test)`` as torch tensors (X: ``dtype``, y: int64).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    X = digits.data.astype(np.float64) / 16.0
    y = digits.target.astype(np.int64)
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=test_size, random_state=seed, stratify=y
    )
    as_x = lambda a: torch.as_tensor(a, dtype=dtype)  # noqa: E731
    return as_x(X_tr), torch.as_tensor(y_tr), as_x(X_te), torch.as_tensor(y_te)


def make_sparse_matrix(m: int, n: int, density: float, seed: int = 0,
                       dtype=np.float32, index_dtype=np.int32):
    """A random m×n ``formats.CSR`` with about ``density·m·n`` nonzeros (uniform positions, N(0,1) values)."""
    import scipy.sparse as sp

    from .formats import CSR

    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    rng = np.random.default_rng(seed)
    A = sp.random(m, n, density=density, format="csr", dtype=np.float64, random_state=rng,
                  data_rvs=rng.standard_normal)
    A.sort_indices()
    return CSR(A.indptr.astype(index_dtype), A.indices.astype(index_dtype),
               A.data.astype(dtype), (m, n))


def _split(n: int, test_size: float, gen: torch.Generator):
    perm = torch.randperm(n, generator=gen)
    n_test = int(round(n * test_size))
    return perm[n_test:], perm[:n_test]


def make_sequence_task(n: int = 1200, length: int = 20, channels: int = 4, seed: int = 0,
                       test_size: float = 0.25):
    """Sequences x ∈ R^{length×channels} of N(0, 1) noise; the label is the channel with the largest
    sum over time, y = argmax_c Σ_t x[t, c] (needs memory across the whole sequence).

    Returns ``(X_train, y_train, X_test, y_test)``, X of shape (n, length, channels), float32.
    """
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, length, channels, generator=gen)
    y = X.sum(dim=1).argmax(dim=1)
    tr, te = _split(n, test_size, gen)
    return X[tr], y[tr], X[te], y[te]


def make_block_graph(n_nodes: int = 300, n_classes: int = 3, p_in: float = 0.05,
                     p_out: float = 0.005, n_features: int = 16, noise: float = 2.0, seed: int = 0,
                     train_fraction: float = 0.3):
    """A stochastic block model: edge probability p_in inside a class, p_out across; node features
    are a class-specific mean plus N(0, noise²) noise.

    Returns ``(A_hat, X, y, train_mask)`` with the GCN propagation matrix
    Â = D^{-1/2}(A + I)D^{-1/2} (dense, float32), X (n_nodes, n_features), y int64, a bool mask.
    """
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n_nodes) % n_classes
    same = y[:, None] == y[None, :]
    p = torch.where(same, torch.tensor(p_in), torch.tensor(p_out))
    upper = torch.triu(torch.rand(n_nodes, n_nodes, generator=gen) < p, diagonal=1)
    A = (upper | upper.T).float() + torch.eye(n_nodes)
    d = A.sum(1).rsqrt()
    A_hat = d[:, None] * A * d[None, :]
    means = torch.randn(n_classes, n_features, generator=gen)
    X = means[y] + noise * torch.randn(n_nodes, n_features, generator=gen)
    train_mask = torch.rand(n_nodes, generator=gen) < train_fraction
    return A_hat, X, y, train_mask


def make_recsys(n_users: int = 50, n_items: int = 100, n: int = 8000, rank: int = 4,
                seed: int = 0, test_size: float = 0.25):
    """Implicit-feedback clicks from a low-rank model: click = [u_user · v_item + noise > 0].

    Returns ``(pairs_train, y_train, pairs_test, y_test)``; ``pairs`` is (m, 2) int64
    (user id, item id), y is int64 in {0, 1}.
    """
    gen = torch.Generator().manual_seed(seed)
    U = torch.randn(n_users, rank, generator=gen)
    V = torch.randn(n_items, rank, generator=gen)
    pairs = torch.stack([torch.randint(n_users, (n,), generator=gen),
                         torch.randint(n_items, (n,), generator=gen)], dim=1)
    score = (U[pairs[:, 0]] * V[pairs[:, 1]]).sum(1) + 0.5 * torch.randn(n, generator=gen)
    y = (score > 0).long()
    tr, te = _split(n, test_size, gen)
    return pairs[tr], y[tr], pairs[te], y[te]
