"""train + data: determinism, learning on digits, activity penalty hook, synthetic sets."""

import pytest
import torch

from course_lib import data
from course_lib.layers import MLP
from course_lib.train import accuracy, fit


def _run(seed, **kw):
    Xtr, ytr, Xte, yte = data.load_digits_split()
    torch.manual_seed(seed)
    model = MLP([64, 32, 10], "relu")
    hist = fit(model, Xtr, ytr, Xte, yte, epochs=3, lr=1e-2, seed=seed, **kw)
    return model, hist


def test_fit_is_deterministic_and_learns():
    m1, h1 = _run(0)
    m2, h2 = _run(0)
    assert h1.loss == h2.loss and h1.test_acc == h2.test_acc
    assert h1.loss[-1] < h1.loss[0] and h1.test_acc[-1] > 0.8
    assert len(h1.train_acc) == 3 and h1.train_acc[-1] > h1.train_acc[0]


def test_activity_penalty_and_on_epoch():
    _, base = _run(0)
    _, pen = _run(0, extra_loss=lambda m: 1.0 * sum(h.abs().mean() for h in m.hidden),
                  on_epoch=lambda m, e: {"epoch": e})
    assert pen.extra == [{"epoch": 0}, {"epoch": 1}, {"epoch": 2}]
    assert pen.loss != base.loss


def test_accuracy():
    model = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert accuracy(model, X, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)


def test_synthetic_sets_shapes_and_determinism():
    a = data.make_sequence_task(n=100, length=5, channels=3, seed=1)
    b = data.make_sequence_task(n=100, length=5, channels=3, seed=1)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert a[0].shape == (75, 5, 3) and a[2].shape == (25, 5, 3)
    torch.testing.assert_close(a[1], a[0].sum(1).argmax(1))
    A_hat, X, y, mask = data.make_block_graph(n_nodes=60, seed=0)
    assert A_hat.shape == (60, 60) and torch.allclose(A_hat, A_hat.T)
    assert X.shape == (60, 16) and y.max() == 2 and mask.dtype == torch.bool
    ev = torch.linalg.eigvalsh(A_hat)                       # normalised: spectrum in [-1, 1]
    assert ev.max() <= 1 + 1e-5 and ev.min() >= -1 - 1e-5
    ptr, ytr, pte, yte = data.make_recsys(n_users=10, n_items=20, n=400, seed=0)
    assert ptr.shape == (300, 2) and pte.shape == (100, 2)
    assert ptr[:, 0].max() < 10 and ptr[:, 1].max() < 20 and set(ytr.tolist()) <= {0, 1}


def test_autoencoder_step_matches_manual_sgd_and_fit_decreases():
    from course_lib.layers import KSparseAutoencoder
    from course_lib.train import autoencoder_step, fit_autoencoder
    torch.manual_seed(0)
    ae = KSparseAutoencoder(5, 8, k=2)
    x = torch.randn(6, 5)
    params = {n: p.detach().clone() for n, p in ae.named_parameters()}
    loss_ref = ((ae(x) - x) ** 2).sum(1).mean()
    grads = dict(zip(params, torch.autograd.grad(loss_ref, list(ae.parameters()))))
    loss = autoencoder_step(ae, x, torch.optim.SGD(ae.parameters(), lr=0.1))
    assert loss == pytest.approx(loss_ref.item())
    for n, p in ae.named_parameters():
        torch.testing.assert_close(p.detach(), params[n] - 0.1 * grads[n])
    X = data.load_digits_split()[0]
    losses = fit_autoencoder(KSparseAutoencoder(64, 32, k=4), X, epochs=3, lr=1e-2, seed=0)
    assert len(losses) == 3 and losses[-1] < losses[0]
