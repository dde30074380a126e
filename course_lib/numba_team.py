"""The one process-wide numba set-up shared by the CPU kernels (``spmm``'s and ``ffn``'s ``cpu_fast`` tiers).

Chapter: book/fast/spmm_cpu, book/fast/sparse_ffn

**Threading: a team of the caller plus helper threads, not numba's ``prange``.** A ``prange``
launch wakes numba's sleeping worker pool and then puts the caller to sleep until the last worker
is done. On the course VM an empty ``prange`` costs ≈ 0.08 ms (the chapter "SpMM on the CPU"
measures it), because waking an idle virtual CPU goes through the hypervisor; a 5 %-dense FFN
gather moves 13 MB in ≈ 0.4 ms, so that wake-up alone would cost a fifth of it. A :class:`Team`
call instead starts working in the calling thread at once; helper threads (``numba.get_num_threads()
- 1`` of them, started once) join when they wake. Work is cut into chunks that every thread claims
with an atomic counter (:func:`claim`), so a late helper simply takes fewer chunks, and the caller
waits (spinning, :func:`wait_done`) only for chunks a helper actually claimed.

numba's own pool keeps the ``workqueue`` layer: its ``omp`` layer loads a ``libgomp.so.1`` that
clashes with the OpenMP runtime bundled with torch (a 13 MB gather took 12 ms under ``omp`` and
0.8 ms under ``workqueue``). The layer is fixed at the first parallel launch in a process, so it is
chosen here, before any kernel compiles, unless the user set ``NUMBA_THREADING_LAYER``.

Kernels run by a team have the signature ``kernel(*args, tid, state)`` and follow the protocol
(:func:`next_chunk` cuts ``n`` items into chunks and claims one, as :func:`claim` does by number)::

    lo, hi = next_chunk(state, n, per_chunk)
    while lo >= 0:                             # items [lo, hi) are this thread's alone
        ...work on them...
        chunk_done(state)
        lo, hi = next_chunk(state, n, per_chunk)
    if tid == 0:
        wait_done(state, chunk_count(n, per_chunk))  # the caller returns when every chunk is done
"""

from __future__ import annotations

import os
import queue
import threading

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"


# --------------------------------------------------------------------------- intrinsics

def _element_pointer(context, builder, aryty, array, index):
    ary = context.make_array(aryty)(context, builder, array)
    return cgutils.get_item_pointer(context, builder, aryty, ary, [index], wraparound=False)


@intrinsic
def prefetch(typingctx, arr, i):
    """Hint the CPU to start loading the cache line of ``arr[i]`` (``llvm.prefetch``, read, keep)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]), "llvm.prefetch.p0")
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.void(arr, i), codegen


@intrinsic
def fetch_add(typingctx, arr, i, value):
    """Atomically ``old = arr[i]; arr[i] += value``; returns ``old`` (sequentially consistent)."""
    if not (isinstance(arr, types.Array) and isinstance(arr.dtype, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        val = context.cast(builder, args[2], sig.args[2], sig.args[0].dtype)
        return builder.atomic_rmw("add", ptr, val, "seq_cst")
    return arr.dtype(arr, i, value), codegen


@intrinsic
def load_acquire(typingctx, arr, i):
    """``arr[i]`` read atomically (acquire), so a spin loop sees other threads' stores."""
    if not (isinstance(arr, types.Array) and isinstance(arr.dtype, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "acquire", sig.args[0].dtype.bitwidth // 8)
    return arr.dtype(arr, i), codegen


# --------------------------------------------------------------------------- the chunk protocol

@numba.njit(inline="always")
def claim(state, nchunks):  # pragma: no cover - compiled
    """The next unclaimed chunk (``state[0]`` counts claims), or -1 when all are taken."""
    c = fetch_add(state, 0, 1)
    return c if c < nchunks else -1


@numba.njit(inline="always")
def chunk_count(n, per_chunk):  # pragma: no cover - compiled
    """Chunks of ``per_chunk`` items that cover ``n`` items."""
    return (n + per_chunk - 1) // per_chunk


@numba.njit(inline="always")
def next_chunk(state, n, per_chunk):  # pragma: no cover - compiled
    """The items ``[lo, hi)`` of the next chunk this thread claims out of ``n`` items cut into
    chunks of ``per_chunk``, or ``(-1, -1)`` when every chunk is taken."""
    c = claim(state, chunk_count(n, per_chunk))
    return (c * per_chunk, min(n, (c + 1) * per_chunk)) if c >= 0 else (-1, -1)


@numba.njit(inline="always")
def chunk_done(state):  # pragma: no cover - compiled
    """Count one finished chunk in ``state[1]``."""
    fetch_add(state, 1, 1)


@numba.njit(inline="always")
def wait_done(state, nchunks):  # pragma: no cover - compiled
    """Spin until every chunk is finished (only chunks a helper claimed can still be running)."""
    while load_acquire(state, 1) < nchunks:
        pass


# --------------------------------------------------------------------------- the team

class Team:
    """The calling thread plus ``numba.get_num_threads() - 1`` helper threads running one kernel."""

    def __init__(self) -> None:
        self._queues: list[queue.SimpleQueue] = []
        self._lock = threading.Lock()

    def _helper(self, tasks: queue.SimpleQueue) -> None:
        while True:
            kernel, args = tasks.get()
            kernel(*args)  # a kernel past its last chunk returns at once

    def _ensure_helpers(self, n: int) -> None:
        with self._lock:
            while len(self._queues) < n:
                tasks = queue.SimpleQueue()
                threading.Thread(target=self._helper, args=(tasks,), daemon=True,
                                 name=f"course_lib-team-{len(self._queues) + 1}").start()
                self._queues.append(tasks)

    def size(self) -> int:
        """Threads a call uses: numba's thread count (``numba.set_num_threads`` sets it)."""
        return numba.get_num_threads()

    def run(self, kernel, *args, size: int | None = None, slots: int = 2) -> None:
        """``kernel(*args, tid, state)`` on every team thread; returns when all chunks are done.

        ``state`` is ``slots`` zeroed int64 counters: ``[chunks claimed, chunks finished]`` for
        one piece of work, more for a kernel that runs several in turn (a pair per piece).
        ``kernel`` must be compiled with ``nogil=True`` so that the threads run at once."""
        size = self.size() if size is None else size
        state = np.zeros(slots, dtype=np.int64)
        self._ensure_helpers(size - 1)
        for tid in range(1, size):
            self._queues[tid - 1].put((kernel, (*args, tid, state)))
        kernel(*args, 0, state)


TEAM = Team()

__all__ = ["numba", "prefetch", "fetch_add", "load_acquire", "claim", "chunk_count", "next_chunk",
           "chunk_done", "wait_done", "Team", "TEAM"]
