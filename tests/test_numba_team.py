"""The shared CPU threading of course_lib.numba_team: atomics, the chunk protocol, the team."""

import numpy as np
import pytest

from course_lib.numba_team import (TEAM, Team, chunk_count, chunk_done, claim, fetch_add,
                                   load_acquire, next_chunk, numba, prefetch, wait_done)


@numba.njit(nogil=True)
def _count_chunks(counts, owner, tid, state):
    # every chunk claimed exactly once, by somebody; the caller returns after all are done
    nchunks = counts.shape[0]
    c = claim(state, nchunks)
    while c >= 0:
        counts[c] += 1
        owner[c] = tid
        chunk_done(state)
        c = claim(state, nchunks)
    if tid == 0:
        wait_done(state, nchunks)


@numba.njit(nogil=True)
def _count_items(counts, per_chunk, tid, state):
    # next_chunk's ranges cover every item exactly once
    n = counts.shape[0]
    lo, hi = next_chunk(state, n, per_chunk)
    while lo >= 0:
        for i in range(lo, hi):
            counts[i] += 1
        chunk_done(state)
        lo, hi = next_chunk(state, n, per_chunk)
    if tid == 0:
        wait_done(state, chunk_count(n, per_chunk))


@numba.njit
def _atomics(a):
    old = fetch_add(a, 1, 5)
    return old, a[1], load_acquire(a, 1)


@numba.njit
def _sum_with_prefetch(x):
    s = 0.0
    for i in range(x.shape[0]):
        prefetch(x, min(i + 64, x.shape[0] - 1))
        s += x[i]
    return s


def test_fetch_add_returns_the_old_value_and_adds():
    a = np.array([0, 7, 0], dtype=np.int64)
    assert _atomics(a) == (7, 12, 12)
    assert a.tolist() == [0, 12, 0]


def test_prefetch_is_only_a_hint():
    x = np.arange(1000, dtype=np.float64)
    assert _sum_with_prefetch(x) == x.sum()


@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("nchunks", [0, 1, 7, 500])
def test_every_chunk_runs_exactly_once(size, nchunks):
    team = Team()
    for _ in range(20):  # repeated calls: a late helper must never touch a finished call's chunks
        counts, owner = np.zeros(nchunks, np.int64), np.full(nchunks, -1, np.int64)
        team.run(_count_chunks, counts, owner, size=size)
        assert (counts == 1).all()
        assert set(owner.tolist()) <= set(range(size))


def test_team_size_follows_numba_threads():
    n = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        assert TEAM.size() == 1
        counts, owner = np.zeros(50, np.int64), np.full(50, -1, np.int64)
        TEAM.run(_count_chunks, counts, owner)
        assert (counts == 1).all() and (owner == 0).all()  # no helper with one thread
    finally:
        numba.set_num_threads(n)


@pytest.mark.parametrize("n, per_chunk", [(0, 4), (1, 4), (7, 4), (8, 4), (1000, 32)])
def test_next_chunk_ranges_cover_every_item_once(n, per_chunk):
    for size in (1, 2, 3):
        counts = np.zeros(n, np.int64)
        Team().run(_count_items, counts, per_chunk, size=size)
        assert (counts == 1).all()
