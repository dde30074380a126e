"""metrics: sparsity measures against numpy formulas, and the ActivationRecorder on real modules."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from course_lib import metrics as M
from course_lib.layers import MLP

vals = st.sampled_from([0.0, 0.0, 1e-4, -2.0, 0.5, 3.0])


@given(arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(2, 8)), elements=vals))
def test_measures_match_numpy(a):
    x = torch.from_numpy(a)
    assert M.fraction_zeros(x) == pytest.approx(np.mean(a == 0))
    assert M.fraction_below(x, 1e-3) == pytest.approx(np.mean(np.abs(a) <= 1e-3))
    assert M.fraction_below(x, 0.0) == M.fraction_zeros(x)
    assert M.dead_units(x) == pytest.approx(np.mean(np.all(a == 0, axis=0)))
    n = a.shape[1]
    l1, l2 = np.abs(a).sum(1), np.sqrt((a ** 2).sum(1))
    ratio = np.divide(l1, l2, out=np.ones_like(l1), where=l2 > 0)
    np.testing.assert_allclose(M.hoyer(x, dim=1).numpy(), (math.sqrt(n) - ratio) / (math.sqrt(n) - 1),
                               atol=1e-12)


def test_hoyer_extremes_and_scale_invariance():
    assert M.hoyer(torch.tensor([0.0, 0.0, 5.0])).item() == pytest.approx(1.0)
    assert M.hoyer(torch.ones(10)).item() == pytest.approx(0.0)
    x = torch.randn(20, generator=torch.Generator().manual_seed(0))
    assert M.hoyer(7 * x).item() == pytest.approx(M.hoyer(x).item())
    assert M.hoyer(torch.zeros(4)).item() == 1.0


def test_int_input_and_errors():
    assert M.fraction_zeros(torch.tensor([0, 1, 0, 2], dtype=torch.int32)) == 0.5
    with pytest.raises(ValueError, match="empty"):
        M.fraction_zeros(torch.zeros(0))
    with pytest.raises(ValueError, match="eps"):
        M.fraction_below(torch.zeros(3), -1.0)
    with pytest.raises(ValueError, match="length >= 2"):
        M.hoyer(torch.ones(1))
    with pytest.raises(ValueError, match="batch, units"):
        M.dead_units(torch.ones(3))
    with pytest.raises(ValueError, match="finite"):
        M.fraction_zeros(torch.tensor([float("nan")]))
    with pytest.raises(TypeError, match="torch.Tensor"):
        M.fraction_zeros(np.zeros(3))


def test_recorder_matches_direct_measurement_across_batches():
    torch.manual_seed(0)
    mlp = MLP([6, 32, 16, 3], "relu")
    X = torch.randn(50, 6)
    with M.ActivationRecorder(mlp, eps=0.0) as rec:
        mlp(X[:20])
        mlp(X[20:])
    summ = rec.summary()
    assert set(summ) == {"linears.0", "linears.1", "linears.2", "acts.0", "acts.1"}
    mlp(X)                                                     # hooks removed: nothing recorded
    assert summ["acts.0"]["samples"] == 50
    for i, h in enumerate(mlp.hidden):
        s = summ[f"acts.{i}"]
        assert s["zeros"] == pytest.approx(M.fraction_zeros(h))
        assert s["dead"] == pytest.approx(M.dead_units(h))
        assert s["hoyer"] == pytest.approx(M.hoyer(h, dim=1).mean().item())
    assert summ["linears.0"]["zeros"] == 0.0


def test_recorder_conv_gru_named_layers_and_reset():
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2))
    gru = nn.ModuleDict({"rnn": nn.GRU(3, 5, batch_first=True)})
    with M.ActivationRecorder(cnn, layers=["1"]) as rec:
        out = cnn[1](cnn[0](torch.randn(2, 1, 8, 8)))
        s = rec.summary()["1"]
        assert s["zeros"] == pytest.approx(M.fraction_zeros(out))
        rec.reset()
        assert rec.summary() == {}
    with M.ActivationRecorder(gru) as rec:                   # GRU returns (output, h_n)
        y, _ = gru["rnn"](torch.randn(4, 7, 3))
    assert rec.summary()["rnn"]["samples"] == 4
    assert rec.summary()["rnn"]["zeros"] == M.fraction_zeros(y) == 0.0   # tanh state: dense
    with pytest.raises(ValueError, match="no submodule"):
        M.ActivationRecorder(cnn, layers=["nope"])
    with pytest.raises(TypeError, match="nn.Module"):
        M.ActivationRecorder(lambda x: x)


def test_recorder_rejects_shared_module_with_changing_shape():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(4, 8), relu, nn.Linear(8, 3), relu)
    with M.ActivationRecorder(model, layers=["1"]) as rec:
        with pytest.raises(ValueError, match="units per sample"):
            model(torch.randn(2, 4))
