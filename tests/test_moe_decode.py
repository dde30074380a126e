"""course_lib.moe_decode (bytes, experts touched, cache hit rates) and course_lib.moe_train pieces."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from course_lib import moe_decode, moe_train


def test_ffn_bytes():
    assert moe_decode.ffn_bytes(4, 8, 1, 2) == 2 * 4 * 8 * 2
    assert moe_decode.ffn_bytes(4, 8, 2, 4, router_experts=8) == (2 * 2 * 4 * 8 + 4 * 8) * 4
    with pytest.raises(ValueError, match="positive d, h"):
        moe_decode.ffn_bytes(0, 8, 1)


@given(N=st.integers(1, 8), k=st.integers(1, 8), B=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_expected_touched_matches_simulation(N, k, B, seed):
    k = min(k, N)
    rng = np.random.default_rng(seed)
    sims = [len({e for _ in range(B) for e in rng.choice(N, k, replace=False)}) for _ in range(4000)]
    assert np.mean(sims) == pytest.approx(moe_decode.expected_experts_touched(B, N, k), abs=0.15)


def test_expected_touched_edges():
    assert moe_decode.expected_experts_touched(1, 8, 2) == pytest.approx(2)
    assert moe_decode.expected_experts_touched(0, 8, 2) == 0
    with pytest.raises(ValueError, match="k <= n_experts"):
        moe_decode.expected_experts_touched(4, 8, 9)


def test_touched_in_batches_uses_separate_streams():
    trace = np.array([[0], [0], [1], [1]])  # streams [0, 0] and [1, 1] for B = 2
    assert moe_decode.touched_in_batches(trace, 1, 2) == 1.0
    assert moe_decode.touched_in_batches(trace, 2, 2) == 2.0
    with pytest.raises(ValueError, match="T >= B"):
        moe_decode.touched_in_batches(trace, 5, 2)
    with pytest.raises(ValueError, match="n_experts"):
        moe_decode.touched_in_batches(trace, 1, 1)


def _lru_oracle(trace, slots, warm):
    cache, hits, reads = [], 0, 0
    for t, row in enumerate(trace):
        for e in row:
            if t >= warm:
                reads += 1
                hits += e in cache
            if e in cache:
                cache.remove(e)
            cache.append(e)
            cache = cache[-slots:] if slots else []
    return hits / reads


@given(T=st.integers(2, 40), N=st.integers(1, 6), slots=st.integers(0, 6), seed=st.integers(0, 2**16))
def test_lru_hit_rate_matches_list_oracle(T, N, slots, seed):
    trace = np.random.default_rng(seed).integers(0, N, size=(T, 2))
    warm = T // 2
    assert moe_decode.cache_hit_rate(trace, slots, "lru", warm) == pytest.approx(_lru_oracle(trace.tolist(), slots, warm))


def test_static_cache_and_bad_policy():
    trace = np.array([[0], [0], [1], [0], [2], [0]])
    assert moe_decode.cache_hit_rate(trace, 1, "static", warm=2) == 0.5  # keeps expert 0
    assert moe_decode.cache_hit_rate(trace, 3, "lru") == 1 - 3 / 6      # only cold misses
    with pytest.raises(ValueError, match="policy"):
        moe_decode.cache_hit_rate(trace, 1, "fifo", warm=1)


def test_expert_rows():
    assert moe_decode.expert_rows([2, 0], 3).tolist() == [6, 7, 8, 0, 1, 2]


def test_tiny_lm_shapes_and_active_params():
    dense = moe_train.TinyLM(dict(dense=32))
    sparse = moe_train.TinyLM(dict(n_experts=4, n_shared=1, k=1, d_hidden=16, capacity_factor=None))
    x = torch.randint(0, 256, (2, 10))
    assert dense(x).shape == sparse(x).shape == (2, 10, 256)
    d = moe_train.D_MODEL
    assert moe_train.active_ffn_params(dense) == moe_train.N_LAYERS * 2 * d * 32
    assert moe_train.active_ffn_params(sparse) == moe_train.N_LAYERS * (2 * 2 * d * 16 + d * 3)


def test_corpus_and_byte_classes():
    data = moe_train.corpus_bytes()
    assert len(data) > 400_000 and data.dtype == np.uint8
    train, val = moe_train.split(data)
    assert len(train) + len(val) == len(data)
    cls = moe_train.byte_class(np.frombuffer(b"aZ9 \n(", dtype=np.uint8))
    assert [moe_train.CLASSES[c] for c in cls] == ["lower", "upper", "digit", "space", "newline", "punct"]
