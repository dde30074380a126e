"""course_lib.ffn: gather/row GEMV kernels against torch, SparseFFN modes against the dense layer."""

import functools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from course_lib import ffn, numba_dtypes
from course_lib.numba_team import numba

TIERS = list(ffn.IMPLEMENTATIONS)
FAST_TIERS = [t for t in TIERS if t != "ref"]  # checked against the reference
CPU_TIERS = [t for t in TIERS if t != "triton"]  # the Triton interpreter is slow: tiny cases only


def _problem(rows, cols, k, dtype=torch.float64, index_dtype=torch.int64, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g, dtype=dtype)
    v = torch.randn(rows, generator=g, dtype=dtype)
    x = torch.randn(cols, generator=g, dtype=dtype)
    idx = torch.randperm(rows, generator=g)[:k].sort().values.to(index_dtype)
    return W, v, x, idx


@given(rows=st.integers(1, 40), cols=st.integers(1, 70), frac=st.floats(0, 1),
       seed=st.integers(0, 2**16), dtype=st.sampled_from([torch.float32, torch.float64]),
       index_dtype=st.sampled_from([torch.int32, torch.int64]))
def test_cpu_kernels_match_dense_oracle(rows, cols, frac, seed, dtype, index_dtype):
    W, v, x, idx = _problem(rows, cols, int(frac * rows), dtype, index_dtype, seed)
    mask = torch.zeros(rows, dtype=dtype)
    mask[idx.long()] = 1
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    # oracle: the dense product with the inactive entries of v zeroed
    torch.testing.assert_close(ffn.gather_gemv(W, v, idx, impl="cpu_fast"), W.t() @ (v * mask), **tol)
    torch.testing.assert_close(ffn.row_gemv(W, x, idx, impl="cpu_fast"), (W @ x)[idx.long()], **tol)
    torch.testing.assert_close(ffn.gather_gemv_ref(W, v, idx), W.t() @ (v * mask), **tol)


def test_unsorted_and_repeated_indices_follow_the_sum_definition():
    W, v, _, _ = _problem(10, 7, 0)
    idx = torch.tensor([3, 1, 3, 9, 0, 5])
    expected = sum(v[j] * W[j] for j in idx.tolist())
    torch.testing.assert_close(ffn.gather_gemv(W, v, idx), expected)


def test_inputs_that_require_grad_are_read_not_differentiated():
    W, v, x, idx = _problem(8, 5, 3)
    got = ffn.gather_gemv(W.requires_grad_(), v, idx, impl="cpu_fast")
    torch.testing.assert_close(got, ffn.gather_gemv_ref(W.detach(), v, idx))


def test_empty_active_set_gives_zero():
    W, v, x, _ = _problem(8, 5, 0)
    idx = torch.empty(0, dtype=torch.int64)
    assert torch.equal(ffn.gather_gemv(W, v, idx), torch.zeros(5, dtype=W.dtype))
    assert ffn.row_gemv(W, x, idx).shape == (0,)
    W0 = torch.zeros(8, 0)  # d_model = 0
    assert torch.equal(ffn.row_gemv(W0, torch.zeros(0), torch.tensor([1, 2])), torch.zeros(2))
    assert ffn.gather_gemv(W0, v.float(), torch.tensor([1, 2])).shape == (0,)


@pytest.mark.parametrize("fn", [ffn.gather_gemv, ffn.row_gemv])
def test_triton_interpreter_matches_cpu(fn):
    W, v, x, idx = _problem(48, 40, 20, dtype=torch.float32)
    vec = v if fn is ffn.gather_gemv else x
    torch.testing.assert_close(fn(W, vec, idx, impl="triton"), fn(W, vec, idx, impl="cpu_fast"),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", FAST_TIERS)
@pytest.mark.parametrize("fn", [ffn.gather_gemv, ffn.row_gemv])
def test_bf16_accumulates_in_fp32(fn, impl):
    W, v, x, idx = _problem(48, 40, 21, dtype=torch.float32)
    vec = v if fn is ffn.gather_gemv else x
    got = fn(W.bfloat16(), vec.bfloat16(), idx, impl=impl)
    assert got.dtype == torch.bfloat16
    expected = fn(W.bfloat16().float(), vec.bfloat16().float(), idx, impl="ref")
    torch.testing.assert_close(got.float(), expected, rtol=1e-2, atol=2e-2)  # one bf16 rounding


def _fused_problem(d_ff, d_model, d_out, k, dtype=torch.float64, index_dtype=torch.int64, seed=0):
    g = torch.Generator().manual_seed(seed)
    W1, b1 = torch.randn(d_ff, d_model, generator=g, dtype=dtype), torch.randn(d_ff, generator=g, dtype=dtype)
    W2t, x = torch.randn(d_ff, d_out, generator=g, dtype=dtype), torch.randn(d_model, generator=g, dtype=dtype)
    idx = torch.randperm(d_ff, generator=g)[:k].sort().values.to(index_dtype)
    return W1, b1, W2t, x, idx


@given(d_ff=st.integers(1, 40), d_model=st.integers(1, 50), d_out=st.integers(1, 30),
       frac=st.floats(0, 1), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([torch.float32, torch.float64]),
       index_dtype=st.sampled_from([torch.int32, torch.int64]),
       activation=st.sampled_from(["relu", "gelu"]))
def test_fused_ffn_matches_the_dense_ffn_on_the_active_neurons(d_ff, d_model, d_out, frac, seed,
                                                              dtype, index_dtype, activation):
    W1, b1, W2t, x, idx = _fused_problem(d_ff, d_model, d_out, int(frac * d_ff), dtype, index_dtype, seed)
    mask = torch.zeros(d_ff, dtype=dtype)
    mask[idx.long()] = 1
    act = torch.relu if activation == "relu" else torch.nn.functional.gelu
    expected = (act(W1 @ x + b1) * mask) @ W2t  # oracle: the dense FFN with inactive units zeroed
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for impl in CPU_TIERS:
        torch.testing.assert_close(ffn.fused_ffn(W1, b1, W2t, x, idx, activation, impl=impl),
                                   expected, **tol)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_fused_ffn_triton_interpreter_and_bf16(activation):
    W1, b1, W2t, x, idx = _fused_problem(48, 40, 24, 21, dtype=torch.float32)
    cpu = ffn.fused_ffn(W1, b1, W2t, x, idx, activation, impl="cpu_fast")
    torch.testing.assert_close(ffn.fused_ffn(W1, b1, W2t, x, idx, activation, impl="triton"), cpu,
                               rtol=1e-5, atol=1e-5)
    bf = [t.bfloat16() for t in (W1, b1, W2t, x)]
    expected = ffn.fused_ffn_ref(*(t.float() for t in bf), idx, activation)
    for impl in FAST_TIERS:  # bf16 in, fp32 accumulation, one bf16 rounding out
        got = ffn.fused_ffn(*bf, idx, activation, impl=impl)
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), expected, rtol=1e-2, atol=5e-2)


@pytest.mark.parametrize("impl", TIERS)
def test_fused_ffn_edge_shapes(impl):
    b1 = torch.arange(6.0) - 2  # relu(b1) at the active neurons 0, 3, 5: 0, 1, 3
    idx = torch.tensor([0, 3, 5])
    got = ffn.fused_ffn(torch.zeros(6, 0), b1, torch.ones(6, 3), torch.zeros(0), idx, impl=impl)
    torch.testing.assert_close(got, torch.full((3,), 4.0))  # d_model = 0: h = act(b1)
    assert ffn.fused_ffn(torch.ones(6, 2), b1, torch.ones(6, 0), torch.ones(2), idx,
                         impl=impl).shape == (0,)  # d_out = 0
    empty = torch.empty(0, dtype=torch.int32)
    torch.testing.assert_close(ffn.fused_ffn(torch.ones(6, 2), b1, torch.ones(6, 3), torch.ones(2),
                                             empty, impl=impl), torch.zeros(3))


def test_fused_ffn_bad_inputs_name_the_invariant():
    W1, b1, W2t, x, idx = _fused_problem(8, 5, 3, 3)
    with pytest.raises(ValueError, match="W2t must be"):
        ffn.fused_ffn(W1, b1, W2t[:7], x, idx)
    with pytest.raises(ValueError, match="b1 must have shape"):
        ffn.fused_ffn(W1, b1[:7], W2t, x, idx)
    with pytest.raises(TypeError, match="share a floating dtype"):
        ffn.fused_ffn(W1, b1, W2t.float(), x, idx)
    with pytest.raises(ValueError, match="activation"):
        ffn.fused_ffn(W1, b1, W2t, x, idx, "tanh")
    with pytest.raises(ValueError, match="out of range"):
        ffn.fused_ffn(W1, b1, W2t, x, torch.tensor([8]))
    with pytest.raises(ValueError, match="length 5"):
        ffn.fused_ffn(W1, b1, W2t, x[:4], idx)
    with pytest.raises(TypeError, match="torch.Tensor"):
        ffn.fused_ffn(W1, b1, W2t.numpy(), x, idx)


def _stack_problem(layers, d_ff, d_model, sizes, dtype=torch.float64, index_dtypes=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    W1 = torch.randn(layers, d_ff, d_model, generator=g, dtype=dtype)
    b1 = torch.randn(layers, d_ff, generator=g, dtype=dtype)
    W2t = torch.randn(layers, d_ff, d_model, generator=g, dtype=dtype)
    x = torch.randn(d_model, generator=g, dtype=dtype)
    index_dtypes = index_dtypes or [torch.int64] * layers
    idx = [torch.randperm(d_ff, generator=g)[:k].sort().values.to(it)
           for k, it in zip(sizes, index_dtypes)]
    return W1, b1, W2t, x, idx


def _dense_stack(W1, b1, W2t, x, idx, activation, eps=1e-6):
    # oracle: per layer, the dense FFN on the normalized input with inactive units zeroed
    act = torch.relu if activation == "relu" else torch.nn.functional.gelu
    for layer, i in enumerate(idx):
        u = x / torch.sqrt((x * x).mean() + eps)
        mask = torch.zeros(W1.shape[1], dtype=x.dtype)
        mask[i.long()] = 1
        x = x + (act(W1[layer] @ u + b1[layer]) * mask) @ W2t[layer]
    return x


@given(layers=st.integers(0, 4), d_ff=st.integers(1, 40), d_model=st.integers(1, 30),
       data=st.data(), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([torch.float32, torch.float64]),
       activation=st.sampled_from(["relu", "gelu"]))
def test_fused_ffn_stack_matches_the_dense_residual_stack(layers, d_ff, d_model, data, seed, dtype,
                                                         activation):
    sizes = data.draw(st.lists(st.integers(0, d_ff), min_size=layers, max_size=layers))
    index_dtypes = data.draw(st.lists(st.sampled_from([torch.int32, torch.int64]),
                                      min_size=layers, max_size=layers))
    W1, b1, W2t, x, idx = _stack_problem(layers, d_ff, d_model, sizes, dtype, index_dtypes, seed)
    expected = _dense_stack(W1, b1, W2t, x, idx, activation)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    x_before = x.clone()
    forms = [idx]
    if layers and len(set(sizes)) == 1:  # every layer keeps k neurons: also as one (layers, k) tensor
        forms.append(torch.stack([i.to(index_dtypes[0]) for i in idx]))
    unpacked = ffn.FusedFFNStack(W1, b1, W2t, activation, packed=False)  # reads W1, W2t as given
    for step in [*(functools.partial(ffn.fused_ffn_stack, W1, b1, W2t, activation=activation,
                                     impl=impl) for impl in CPU_TIERS), unpacked]:
        for sets in forms:
            got = step(x, sets)
            assert got.dtype == dtype
            torch.testing.assert_close(got, expected, **tol)
    assert torch.equal(x, x_before)  # the residual stream is the kernel's own copy


@pytest.mark.parametrize("huge_pages", [True, False])
def test_a_prepared_stack_serves_many_steps_from_its_own_packed_copy(huge_pages):
    W1, b1, W2t, x, idx = _stack_problem(3, 16, 8, (5, 16, 0), dtype=torch.float32)
    stack = ffn.FusedFFNStack(W1, b1, W2t, "gelu", huge_pages=huge_pages)
    # each neuron's W1 and W2t rows side by side in one copy, which stack.W1 / stack.W2t view
    assert torch.equal(stack.W1, W1) and torch.equal(stack.W2t, W2t)
    assert stack.W1.data_ptr() + W1.shape[2] * W1.element_size() == stack.W2t.data_ptr()
    steps = [(x * step, [i[step:] for i in idx]) for step in range(3)]  # nothing carried over
    expected = [_dense_stack(W1, b1, W2t, xs, sets, "gelu") for xs, sets in steps]
    W1.zero_(), W2t.zero_()  # the caller's tensors may change or go: the stack has its copy
    for (xs, sets), want in zip(steps, expected):
        torch.testing.assert_close(stack(xs, sets), want)


def test_a_prepared_stack_follows_the_team_size_and_serves_several_threads():
    from concurrent.futures import ThreadPoolExecutor
    W1, b1, W2t, x, idx = _stack_problem(2, 64, 16, (40, 64))
    stack, expected = ffn.FusedFFNStack(W1, b1, W2t), _dense_stack(W1, b1, W2t, x, idx, "relu")
    threads = numba.get_num_threads()
    try:  # its reused buffers follow numba's thread count
        for n in sorted({1, threads}):
            numba.set_num_threads(n)
            torch.testing.assert_close(stack(x, idx), expected)
    finally:
        numba.set_num_threads(threads)
    with ThreadPoolExecutor(4) as pool:  # and concurrent steps take turns
        for got in pool.map(lambda _: stack(x, idx), range(8)):
            torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_fused_ffn_stack_triton_interpreter_and_bf16(activation):
    W1, b1, W2t, x, idx = _stack_problem(3, 48, 40, (21, 0, 48), dtype=torch.float32)
    cpu = ffn.fused_ffn_stack(W1, b1, W2t, x, idx, activation, impl="cpu_fast")
    torch.testing.assert_close(ffn.fused_ffn_stack(W1, b1, W2t, x, idx, activation, impl="triton"),
                               cpu, rtol=1e-5, atol=1e-5)
    bf = [t.bfloat16() for t in (W1, b1, W2t, x)]
    expected = _dense_stack(*(t.float() for t in bf), idx, activation)
    for impl, tol in (("cpu_fast", 5e-3), ("triton", 1e-2)):  # Triton rounds u to bf16 per layer
        got = ffn.fused_ffn_stack(*bf, idx, activation, impl=impl)
        assert got.dtype == torch.bfloat16  # bf16 weights, a float32 residual stream, bf16 out
        error = torch.linalg.vector_norm(got.float() - expected) / torch.linalg.vector_norm(expected)
        assert error < tol, (impl, float(error))


@pytest.mark.parametrize("impl", CPU_TIERS)
def test_fused_ffn_stack_edge_cases(impl):
    x = torch.tensor([3.0, -4.0])
    none = torch.zeros(0, 4, 2)
    assert torch.equal(ffn.fused_ffn_stack(none, torch.zeros(0, 4), none, x, [], impl=impl), x)
    W1, b1, W2t, _, _ = _stack_problem(2, 4, 2, (), dtype=torch.float32)
    empty = [torch.empty(0, dtype=torch.int64)] * 2
    assert torch.equal(ffn.fused_ffn_stack(W1, b1, W2t, x, empty, impl=impl), x)
    zero = torch.zeros(2)  # u = 0 / √eps: the layers add act(b1) · W2t
    expected = _dense_stack(W1, b1, W2t, zero, [torch.arange(4)] * 2, "relu")
    torch.testing.assert_close(ffn.fused_ffn_stack(W1, b1, W2t, zero, [torch.arange(4)] * 2,
                                                   impl=impl), expected)


def test_fused_ffn_stack_bad_inputs_name_the_invariant():
    W1, b1, W2t, x, idx = _stack_problem(2, 8, 5, (3, 4))
    with pytest.raises(ValueError, match=r"\(layers, d_ff, d_model\)"):
        ffn.fused_ffn_stack(W1[0], b1[0], W2t[0], x, idx[:1])
    with pytest.raises(ValueError, match=r"\(layers, d_ff, d_model\)"):
        ffn.fused_ffn_stack(W1, b1, W2t[:, :, :4], x, idx)
    with pytest.raises(ValueError, match="list of 2 index tensors"):
        ffn.fused_ffn_stack(W1, b1, W2t, x, idx[:1])
    with pytest.raises(ValueError, match=r"list of 2 index tensors .* or one \(2, k\) tensor"):
        ffn.fused_ffn_stack(W1, b1, W2t, x, torch.stack(idx[:1]))
    with pytest.raises(TypeError, match="int32 or int64"):
        ffn.fused_ffn_stack(W1, b1, W2t, x, torch.stack(idx[:1] * 2).float())
    with pytest.raises(ValueError, match="out of range"):
        ffn.fused_ffn_stack(W1, b1, W2t, x, torch.stack([idx[0], idx[0] - 1]))
    with pytest.raises(ValueError, match="out of range"):
        ffn.fused_ffn_stack(W1, b1, W2t, x, [idx[0], torch.tensor([8])])
    with pytest.raises(TypeError, match="share a floating dtype"):
        ffn.fused_ffn_stack(W1, b1, W2t.float(), x, idx)
    with pytest.raises(TypeError, match="x must share the weights' dtype"):
        ffn.fused_ffn_stack(W1, b1, W2t, x.float(), idx)
    with pytest.raises(TypeError, match="int32 or int64"):
        ffn.fused_ffn_stack(W1, b1, W2t, x, [idx[0], idx[1].float()])
    with pytest.raises(ValueError, match="length 5"):
        ffn.fused_ffn_stack(W1, b1, W2t, x[:4], idx)
    with pytest.raises(ValueError, match="activation"):
        ffn.fused_ffn_stack(W1, b1, W2t, x, idx, "tanh")


@numba.njit
def _stored_all(values, out):
    for j in range(values.shape[0]):
        out[j] = numba_dtypes.stored(values[j], out)


@given(st.lists(st.integers(0, 2**32 - 1), max_size=50))
def test_the_cpu_kernels_round_to_bf16_as_torch_does(bit_patterns):
    # every float32 (as bits), with ties at both parities, infinities, NaN, subnormals and -0
    special = [0x3F808000, 0x3F818000, 0xBF808000, 0x7F7FFFFF, 0x7F800000, 0xFF800000,
               0x7FC00001, 0x00008000, 0x80000000, 0x00000001]
    values = np.array(bit_patterns + special, dtype=np.uint32).view(np.float32)
    bits = np.empty(values.shape[0], dtype=np.uint16)
    _stored_all(values, bits)
    expected = torch.from_numpy(values).bfloat16().view(torch.int16).numpy().view(np.uint16)
    nan = np.isnan(values)
    np.testing.assert_array_equal(bits[~nan], expected[~nan])
    assert np.isnan(torch.from_numpy(bits[nan].view(np.int16)).view(torch.bfloat16).float().numpy()).all()


def test_row_kernel_accumulates_in_the_values_dtype_not_float64():
    # numba types a literal 0 as int64 and float32 * int64 as float64: an accumulator started at
    # it would halve the vector width of the fp32 and bf16 kernels, so the zero keeps the dtype.
    zero = numba.njit(lambda a: numba_dtypes.zero(a))
    for stored, acc in (("uint16", "float32"), ("float32", "float32"), ("float64", "float64")):
        zero(np.zeros(1, stored))
        assert str(zero.nopython_signatures[-1].return_type) == acc, stored


@given(d_model=st.integers(1, 24), d_ff=st.integers(1, 48), n=st.integers(1, 4),
       seed=st.integers(0, 2**16))
def test_exact_mode_property(d_model, d_ff, n, seed):
    torch.manual_seed(seed)
    up, down = torch.nn.Linear(d_model, d_ff).double(), torch.nn.Linear(d_ff, d_model).double()
    layer = ffn.SparseFFN.from_linear(up, down, "relu")
    X = torch.randn(n, d_model, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(X, "exact"), down(torch.relu(up(X))))


def test_bad_inputs_name_the_invariant():
    W, v, x, idx = _problem(8, 5, 3)
    with pytest.raises(ValueError, match="out of range"):
        ffn.gather_gemv(W, v, torch.tensor([0, 8]))
    with pytest.raises(ValueError, match="out of range"):
        ffn.row_gemv(W, x, torch.tensor([-1]))
    with pytest.raises(ValueError, match="length 8"):
        ffn.gather_gemv(W, x, idx)
    with pytest.raises(TypeError, match="int32 or int64"):
        ffn.gather_gemv(W, v, idx.float())
    with pytest.raises(TypeError, match="share a floating dtype"):
        ffn.gather_gemv(W, v.float(), idx)
    with pytest.raises(TypeError, match="float32/float64/bfloat16"):
        ffn.gather_gemv(W.half(), v.half(), idx, impl="cpu_fast")
    with pytest.raises(ValueError, match="unknown impl 'gpu'"):
        ffn.gather_gemv(W, v, idx, impl="gpu")
    meta = [t.to("meta") for t in (W, v, idx)]  # a non-CPU device that needs no GPU
    with pytest.raises(ValueError, match="device mismatch: impl 'cpu_fast' runs on the CPU"):
        ffn.gather_gemv(*meta)
    with pytest.raises(ValueError, match="device mismatch"):
        ffn.FusedFFNStack(W[None].to("meta"), v[None, :8].to("meta"), W[None].to("meta"),
                          impl="cpu_fast")
    with pytest.raises(TypeError, match="torch.Tensor"):
        ffn.gather_gemv(W.numpy(), v, idx)


@given(n=st.integers(1, 500), sparsity=st.floats(0, 0.99), seed=st.integers(0, 2**16))
def test_calibrated_threshold_removes_the_target_share(n, sparsity, seed):
    h = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    t = ffn.calibrate_threshold(h, sparsity)
    removed = (h.abs() <= t).float().mean().item()
    assert removed == pytest.approx(int(sparsity * n) / n)  # continuous values: no ties


def test_calibrate_threshold_rejects_bad_input():
    with pytest.raises(ValueError, match="sparsity"):
        ffn.calibrate_threshold(torch.randn(4), 1.0)
    with pytest.raises(ValueError, match="at least one"):
        ffn.calibrate_threshold(torch.empty(0), 0.5)


def _layer(d_model=16, d_ff=64, activation="relu", seed=0):
    torch.manual_seed(seed)
    up, down = torch.nn.Linear(d_model, d_ff), torch.nn.Linear(d_ff, d_model)
    return up, down, ffn.SparseFFN.from_linear(up, down, activation)


def test_exact_mode_equals_the_dense_layer():
    up, down, layer = _layer()
    X = torch.randn(10, 16)
    dense = down(torch.relu(up(X))).detach()
    torch.testing.assert_close(layer(X, "exact"), dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer(X, "dense"), dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer(X[0], "exact"), dense[0], rtol=1e-5, atol=1e-5)


def test_threshold_mode_equals_the_dense_layer_on_thresholded_hidden():
    _, _, layer = _layer(activation="gelu")
    X = torch.randn(50, 16)
    t = layer.calibrate(X, 0.5)
    h = layer.hidden(X)
    expected = torch.where(h.abs() > t, h, 0) @ layer.W2t + layer.b2
    torch.testing.assert_close(layer(X, "threshold"), expected, rtol=1e-5, atol=1e-5)
    assert (h.abs() > t).float().mean().item() == pytest.approx(0.5, abs=1e-3)


def test_predicted_mode_with_a_perfect_active_set_is_exact():
    _, _, layer = _layer()
    X = torch.randn(200, 16)
    layer.fit_predictor(X, rank=16, steps=300)
    stats = layer.recall(X)
    assert stats["recall"] > 0.9
    # on one token, predicted mode equals the dense layer restricted to the predicted set
    x = X[0]
    idx = layer.active_set(x, "predicted")
    h = torch.zeros(layer.d_ff)
    h[idx] = layer.hidden(x)[idx]
    torch.testing.assert_close(layer(x, "predicted"), h @ layer.W2t + layer.b2, rtol=1e-5, atol=1e-5)


def test_sparse_ffn_rejects_bad_configuration():
    up, down, layer = _layer()
    with pytest.raises(ValueError, match="calibrate"):
        layer(torch.randn(16), "threshold")
    with pytest.raises(ValueError, match="fit_predictor"):
        layer(torch.randn(16), "predicted")
    with pytest.raises(ValueError, match="mode"):
        layer(torch.randn(16), "fast")
    with pytest.raises(ValueError, match="d_model=16"):
        layer(torch.randn(3), "exact")
    with pytest.raises(ValueError, match="W1 \\(d_ff, d_model\\)"):
        ffn.SparseFFN(up.weight, up.bias, up.weight, down.bias)
    with pytest.raises(ValueError, match="b2"):
        ffn.SparseFFN(up.weight, up.bias, down.weight, up.bias)
    with pytest.raises(ValueError, match="activation"):
        ffn.SparseFFN.from_linear(up, down, "tanh")


def test_gemv_bytes():
    assert ffn.gemv_bytes(10, 4, 4, 8) == 10 * 4 * 4 + 10 * 8
    assert np.isclose(ffn.gemv_bytes(8192, 4096, 4) / 2**20, 128.0)
