"""Offline datasets: scikit-learn's bundled digits and small synthetic sets (no downloads)."""

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
