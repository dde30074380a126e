"""Sparse matrix formats: COO, CSR, BSR and N:M masks, as small immutable classes over NumPy.

Storage conventions (the same as scipy.sparse):

* index arrays (``row``/``col``, ``indptr``/``indices``) have a signed integer dtype, int32 or
  int64 in practice; both arrays of one matrix share a dtype;
* ``data`` has any numeric dtype (float32 and float64 in this course);
* every array is a read-only view: a format object never changes after it is built, and building
  one never changes the caller's arrays.

Constructors validate the structure and raise ``ValueError`` naming the broken invariant and the
offending position, or ``TypeError`` for a wrong dtype. Memory formulas (bytes, ``b_i`` bytes per
index, ``b_v`` per value, ``m`` rows, ``nnz`` stored values):

* dense  ``m·n·b_v``
* COO    ``nnz·(2·b_i + b_v)``
* CSR    ``(m+1)·b_i + nnz·(b_i + b_v)``
* BSR    ``(m/R+1)·b_i + nnzb·(b_i + R·C·b_v)`` with R×C blocks

Chapter: book/fast/formats
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "COO", "CSR", "BSR", "nm_mask", "nm_compress", "dense_nbytes", "coo_nbytes", "csr_nbytes",
    "bsr_nbytes", "nm_nbytes", "csr_crossover_density", "dense_to_csr_ref", "csr_to_dense_ref",
    "coo_to_csr_ref",
]


# --------------------------------------------------------------------------- validation helpers

def _frozen(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.flags.writeable = False
    return view


def _shape(shape) -> tuple[int, int]:
    try:
        m, n = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be a pair of integers, got {shape!r}") from None
    if m < 0 or n < 0:
        raise ValueError(f"shape must be non-negative, got {(m, n)}")
    return m, n


def _index_array(name: str, a) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size == 0 and a.dtype.kind == "f":  # an empty list becomes float64: accept it as int64
        a = a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must have an integer dtype, got {a.dtype}")
    return a


def _data_array(a, ndim: int = 1) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != ndim:
        raise ValueError(f"data must be {ndim}-D, got shape {a.shape}")
    if a.dtype.kind not in "biufc":
        raise TypeError(f"data must be numeric, got dtype {a.dtype}")
    return a


def _check_in_range(name: str, idx: np.ndarray, bound: int) -> None:
    bad = np.flatnonzero((idx < 0) | (idx >= bound))
    if bad.size:
        p = int(bad[0])
        raise ValueError(f"{name}[{p}] = {int(idx[p])} is out of range [0, {bound})")


def _check_indptr(indptr: np.ndarray, rows: int, nnz: int) -> None:
    """indptr has rows+1 entries, starts at 0, never decreases and ends at nnz."""
    if len(indptr) != rows + 1:
        raise ValueError(f"indptr must have rows + 1 = {rows + 1} entries, got {len(indptr)}")
    if indptr[0] != 0:
        raise ValueError(f"indptr[0] must be 0, got {int(indptr[0])}")
    drops = np.flatnonzero(np.diff(indptr) < 0)
    if drops.size:
        p = int(drops[0])
        raise ValueError(f"indptr must be non-decreasing: indptr[{p}] = {int(indptr[p])} > "
                         f"indptr[{p + 1}] = {int(indptr[p + 1])}")
    if indptr[-1] != nnz:
        raise ValueError(f"indptr[-1] must equal nnz = {nnz} (the length of indices and data), "
                         f"got {int(indptr[-1])}")


def _same_index_dtype(**arrays: np.ndarray) -> None:
    dtypes = {name: a.dtype for name, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        raise TypeError(f"index arrays must share one dtype, got {dtypes}")


def _same_length(**arrays: np.ndarray) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{', '.join(lengths)} must have one length (the number of stored "
                         f"entries), got {lengths}")


class _Stored:
    """What the formats share: read-only array fields, their size in bytes, the density."""

    _arrays: tuple[str, ...] = ()

    def _store(self, shape: tuple[int, int], **arrays: np.ndarray) -> None:
        for name, a in arrays.items():
            object.__setattr__(self, name, _frozen(a))
        object.__setattr__(self, "shape", shape)

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in self._arrays)

    @property
    def density(self) -> float:
        """Stored values / (rows × columns)."""
        size = self.shape[0] * self.shape[1]
        return self.nnz / size if size else 0.0


def _as_dense(A) -> np.ndarray:
    A = np.asarray(A)
    if A.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {A.shape}")
    return A


# --------------------------------------------------------------------------------------- COO

@dataclass(frozen=True, eq=False)
class COO(_Stored):
    """Coordinate format: ``A[row[k], col[k]] += data[k]`` for every k (duplicates add up)."""

    row: np.ndarray
    col: np.ndarray
    data: np.ndarray
    shape: tuple[int, int]
    _arrays = ("row", "col", "data")

    def __post_init__(self):
        m, n = _shape(self.shape)
        row, col = _index_array("row", self.row), _index_array("col", self.col)
        data = _data_array(self.data)
        _same_length(row=row, col=col, data=data)
        _same_index_dtype(row=row, col=col)
        _check_in_range("row", row, m)
        _check_in_range("col", col, n)
        self._store((m, n), row=row, col=col, data=data)

    nnz = property(lambda self: len(self.data), doc="Number of stored entries (duplicates count).")

    @classmethod
    def from_dense(cls, A, index_dtype=np.int64) -> "COO":
        A = _as_dense(A)
        r, c = np.nonzero(A)
        return cls(r.astype(index_dtype), c.astype(index_dtype), A[r, c], A.shape)

    def to_dense(self) -> np.ndarray:
        out = np.zeros(self.shape, dtype=self.data.dtype)
        np.add.at(out, (self.row, self.col), self.data)
        return out

    def to_csr(self) -> "CSR":
        """Sort by (row, col) and sum duplicates; explicit zeros that result are kept."""
        m, n = self.shape
        key = self.row.astype(np.int64) * n + self.col
        order = np.argsort(key, kind="stable")
        key = key[order]
        first = np.ones(len(key), dtype=bool)
        first[1:] = key[1:] != key[:-1]
        starts = np.flatnonzero(first)
        data = np.add.reduceat(self.data[order], starts) if len(starts) else self.data[:0]
        rows, cols = self.row[order][starts], self.col[order][starts]
        indptr = np.zeros(m + 1, dtype=self.row.dtype)
        np.cumsum(np.bincount(rows, minlength=m), out=indptr[1:])
        return CSR(indptr, cols.copy(), data, self.shape)

    def to_scipy(self):
        import scipy.sparse as sp
        return sp.coo_matrix((self.data, (self.row, self.col)), shape=self.shape)


# --------------------------------------------------------------------------------------- CSR

@dataclass(frozen=True, eq=False)
class CSR(_Stored):
    """Compressed sparse rows: row i holds ``data[indptr[i]:indptr[i+1]]`` at columns
    ``indices[indptr[i]:indptr[i+1]]``."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    shape: tuple[int, int]
    _arrays = ("indptr", "indices", "data")

    def __post_init__(self):
        m, n = _shape(self.shape)
        indptr, indices = _index_array("indptr", self.indptr), _index_array("indices", self.indices)
        data = _data_array(self.data)
        _same_length(indices=indices, data=data)
        _same_index_dtype(indptr=indptr, indices=indices)
        _check_indptr(indptr, m, len(data))
        _check_in_range("indices", indices, n)
        self._store((m, n), indptr=indptr, indices=indices, data=data)

    nnz = property(lambda self: len(self.data), doc="Number of stored entries.")
    dtype = property(lambda self: self.data.dtype)

    def row_lengths(self) -> np.ndarray:
        """Stored entries per row: ``indptr[i+1] - indptr[i]``."""
        return np.diff(self.indptr)

    @classmethod
    def from_dense(cls, A, index_dtype=np.int64) -> "CSR":
        """Keep the nonzeros of a 2-D array, row by row, columns ascending."""
        A = _as_dense(A)
        rows, cols = np.nonzero(A)
        indptr = np.zeros(A.shape[0] + 1, dtype=index_dtype)
        np.cumsum(np.bincount(rows, minlength=A.shape[0]), out=indptr[1:])
        return cls(indptr, cols.astype(index_dtype), A[rows, cols], A.shape)

    def to_dense(self) -> np.ndarray:
        out = np.zeros(self.shape, dtype=self.data.dtype)
        rows = np.repeat(np.arange(self.shape[0]), self.row_lengths())
        np.add.at(out, (rows, self.indices), self.data)
        return out

    def to_coo(self) -> COO:
        rows = np.repeat(np.arange(self.shape[0], dtype=self.indptr.dtype), self.row_lengths())
        return COO(rows, self.indices.copy(), self.data.copy(), self.shape)

    @classmethod
    def from_scipy(cls, S) -> "CSR":
        """From any scipy.sparse matrix or array (converted to CSR, index dtype kept)."""
        S = S.tocsr()
        return cls(S.indptr.copy(), S.indices.copy(), S.data.copy(), S.shape)

    def to_scipy(self):
        import scipy.sparse as sp
        return sp.csr_matrix((self.data, self.indices, self.indptr), shape=self.shape)

    @classmethod
    def from_torch(cls, t) -> "CSR":
        """From a torch tensor with layout ``sparse_csr``, ``sparse_coo`` or strided (dense)."""
        import torch
        if t.layout == torch.strided:
            return cls.from_dense(t.detach().cpu().numpy())
        if t.layout == torch.sparse_coo:
            t = t.coalesce().to_sparse_csr()
        if t.layout != torch.sparse_csr:
            raise TypeError(f"unsupported torch layout {t.layout}")
        return cls(t.crow_indices().cpu().numpy(), t.col_indices().cpu().numpy(),
                   t.values().detach().cpu().numpy(), tuple(t.shape))

    def to_torch(self, device=None):
        """A ``torch.sparse_csr_tensor`` sharing nothing with this object."""
        import warnings

        import torch
        with warnings.catch_warnings():  # torch flags its CSR support as "beta" on every call
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(torch.tensor(self.indptr), torch.tensor(self.indices),
                                           torch.tensor(self.data), size=self.shape,
                                           device=device, check_invariants=False)  # validated

    def to_bsr(self, blocksize: tuple[int, int]) -> "BSR":
        """Group entries into R×C blocks; a block is stored if any entry of it is stored."""
        return BSR.from_scipy(self.to_scipy().tobsr(blocksize=_blocksize(blocksize, self.shape)))


# --------------------------------------------------------------------------------------- BSR

@dataclass(frozen=True, eq=False)
class BSR(_Stored):
    """Block CSR with R×C blocks: block row I holds blocks ``data[indptr[I]:indptr[I+1]]``
    (each R×C, dense) at block columns ``indices[...]``. ``data`` has shape (nnzb, R, C)."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    shape: tuple[int, int]
    _arrays = ("indptr", "indices", "data")

    def __post_init__(self):
        m, n = _shape(self.shape)
        indptr, indices = _index_array("indptr", self.indptr), _index_array("indices", self.indices)
        data = _data_array(self.data, ndim=3)
        R, C = _blocksize(data.shape[1:], (m, n))
        _same_length(indices=indices, data=data)
        _same_index_dtype(indptr=indptr, indices=indices)
        _check_indptr(indptr, m // R, len(data))
        _check_in_range("indices", indices, n // C)
        self._store((m, n), indptr=indptr, indices=indices, data=data)

    blocksize = property(lambda self: tuple(self.data.shape[1:]))
    nnzb = property(lambda self: len(self.data), doc="Number of stored blocks.")
    nnz = property(lambda self: self.data.size, doc="Stored values, zeros inside blocks included.")
    dtype = property(lambda self: self.data.dtype)

    @classmethod
    def from_dense(cls, A, blocksize: tuple[int, int], index_dtype=np.int64) -> "BSR":
        """Keep every R×C block of A that has at least one nonzero."""
        A = _as_dense(A)
        R, C = _blocksize(blocksize, A.shape)
        blocks = A.reshape(A.shape[0] // R, R, A.shape[1] // C, C).swapaxes(1, 2)
        brow, bcol = np.nonzero(np.any(blocks != 0, axis=(2, 3)))
        indptr = np.zeros(blocks.shape[0] + 1, dtype=index_dtype)
        np.cumsum(np.bincount(brow, minlength=blocks.shape[0]), out=indptr[1:])
        data = blocks[brow, bcol].reshape(len(brow), R, C)
        return cls(indptr, bcol.astype(index_dtype), data, A.shape)

    def to_dense(self) -> np.ndarray:
        (m, n), (R, C) = self.shape, self.blocksize
        out = np.zeros((m // R, n // C, R, C), dtype=self.data.dtype)
        brow = np.repeat(np.arange(m // R), np.diff(self.indptr))
        np.add.at(out, (brow, self.indices), self.data)
        return out.swapaxes(1, 2).reshape(m, n)

    @classmethod
    def from_scipy(cls, S) -> "BSR":
        return cls(S.indptr.copy(), S.indices.copy(), S.data.copy(), S.shape)

    def to_scipy(self):
        import scipy.sparse as sp
        return sp.bsr_matrix((self.data, self.indices, self.indptr), shape=self.shape)

    def to_csr(self) -> CSR:
        return CSR.from_scipy(self.to_scipy().tocsr())


def _blocksize(blocksize, shape) -> tuple[int, int]:
    R, C = (int(b) for b in blocksize)
    if R <= 0 or C <= 0:
        raise ValueError(f"block size must be positive, got {(R, C)}")
    if shape[0] % R or shape[1] % C:
        raise ValueError(f"block size {(R, C)} must divide the shape {tuple(shape)}")
    return R, C


# ------------------------------------------------------------------------------ N:M sparsity

def nm_mask(W, n: int = 2, m: int = 4) -> np.ndarray:
    """Boolean mask keeping the ``n`` largest-magnitude entries in every group of ``m``
    consecutive entries along the last axis (2:4 is the pattern of sparse tensor cores)."""
    W = np.asarray(W)
    if not 0 < n <= m:
        raise ValueError(f"need 0 < n <= m, got n={n}, m={m}")
    if W.shape[-1] % m:
        raise ValueError(f"last dimension {W.shape[-1]} must be a multiple of m = {m}")
    groups = np.abs(W).reshape(*W.shape[:-1], -1, m)
    keep = np.argsort(-groups, axis=-1, kind="stable")[..., :n]
    mask = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(mask, keep, True, axis=-1)
    return mask.reshape(W.shape)


def nm_compress(W, n: int = 2, m: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Compressed N:M storage: ``values`` (…, k·n/m) and the position of each kept value inside
    its group of m (``meta``, uint8; the hardware packs it into log2(m) bits)."""
    W = np.asarray(W)
    mask = nm_mask(W, n, m)
    groups_mask = mask.reshape(*W.shape[:-1], -1, m)
    pos = np.nonzero(groups_mask)[-1].reshape(*groups_mask.shape[:-1], n)
    values = W[mask].reshape(*W.shape[:-1], -1)
    return values, pos.reshape(*W.shape[:-1], -1).astype(np.uint8)


# ---------------------------------------------------------------------------- memory formulas

def dense_nbytes(m: int, n: int, value_bytes: int = 4) -> int:
    return m * n * value_bytes


def coo_nbytes(nnz: int, index_bytes: int = 4, value_bytes: int = 4) -> int:
    return nnz * (2 * index_bytes + value_bytes)


def csr_nbytes(m: int, nnz: int, index_bytes: int = 4, value_bytes: int = 4) -> int:
    return (m + 1) * index_bytes + nnz * (index_bytes + value_bytes)


def bsr_nbytes(m: int, nnzb: int, blocksize: tuple[int, int], index_bytes: int = 4,
               value_bytes: int = 4) -> int:
    R, C = blocksize
    return (m // R + 1) * index_bytes + nnzb * (index_bytes + R * C * value_bytes)


def nm_nbytes(m: int, n: int, N: int = 2, M: int = 4, value_bits: int = 16) -> float:
    """Bytes of an m×n N:M matrix: N/M of the values plus log2(M) metadata bits per kept value."""
    kept = m * n * N // M
    return kept * (value_bits + np.log2(M)) / 8


def csr_crossover_density(m: int, n: int, index_bytes: int = 4, value_bytes: int = 4) -> float:
    """Density below which CSR takes fewer bytes than dense: solve csr_nbytes = dense_nbytes."""
    return (m * n * value_bytes - (m + 1) * index_bytes) / (m * n * (index_bytes + value_bytes))


# ------------------------------------------------------ reference tier (the exercises' oracles)

def dense_to_csr_ref(A) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row by row: append (column, value) of every nonzero; ``indptr[i+1]`` = entries so far."""
    A = _as_dense(A)
    indptr, indices, data = [0], [], []
    for i in range(A.shape[0]):
        for j in range(A.shape[1]):
            if A[i, j] != 0:
                indices.append(j)
                data.append(A[i, j])
        indptr.append(len(indices))
    return (np.array(indptr, dtype=np.int64), np.array(indices, dtype=np.int64),
            np.array(data, dtype=A.dtype))


def csr_to_dense_ref(indptr, indices, data, shape) -> np.ndarray:
    """``A[i, indices[k]] += data[k]`` for k in ``indptr[i]:indptr[i+1]``."""
    A = np.zeros(shape, dtype=np.asarray(data).dtype)
    for i in range(shape[0]):
        for k in range(indptr[i], indptr[i + 1]):
            A[i, indices[k]] += data[k]
    return A


def coo_to_csr_ref(row, col, data, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort entries by (row, col), sum duplicates, then build indptr from the row counts."""
    c = COO(np.asarray(row, dtype=np.int64), np.asarray(col, dtype=np.int64), data, shape).to_csr()
    return c.indptr, c.indices, c.data
