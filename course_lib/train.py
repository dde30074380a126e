"""A small, deterministic full-batch/mini-batch training loop shared by the chapters.

Chapter: book/foundations/training
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn


@dataclass
class History:
    """Per-epoch records: training loss and accuracy (running means over the epoch's batches, as
    Keras reports them), test accuracy, and whatever ``on_epoch`` returned."""

    loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    extra: list[dict] = field(default_factory=list)


@torch.no_grad()
def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows whose arg-max logit equals the label."""
    model.eval()
    return (model(X).argmax(dim=1) == y).float().mean().item()


def fit(model: nn.Module, X: torch.Tensor, y: torch.Tensor, X_test=None, y_test=None, *,
        epochs: int = 20, lr: float = 1e-2, batch_size: int = 64, weight_decay: float = 0.0,
        seed: int = 0, optimizer: str = "adam",
        extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
        on_epoch: Callable[[nn.Module, int], dict] | None = None) -> History:
    """Minimise cross-entropy (+ ``extra_loss(model)``, e.g. an activity penalty) with Adam or SGD.

    Shuffling uses a generator seeded with ``seed``, so two runs give identical results.
    """
    gen = torch.Generator().manual_seed(seed)
    opt_cls = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[optimizer]
    opt = opt_cls(model.parameters(), lr=lr, weight_decay=weight_decay)
    hist = History()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(X), generator=gen)
        total, correct = 0.0, 0
        for start in range(0, len(X), batch_size):
            idx = perm[start:start + batch_size]
            logits = model(X[idx])
            loss = nn.functional.cross_entropy(logits, y[idx])
            if extra_loss is not None:
                loss = loss + extra_loss(model)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            correct += int((logits.argmax(dim=1) == y[idx]).sum())
        hist.loss.append(total / len(X))
        hist.train_acc.append(correct / len(X))
        if X_test is not None:
            hist.test_acc.append(accuracy(model, X_test, y_test))
        if on_epoch is not None:
            hist.extra.append(on_epoch(model, epoch))
    return hist


def autoencoder_step(model: nn.Module, x: torch.Tensor, optimizer: torch.optim.Optimizer) -> float:
    """One step on the reconstruction loss L = mean over the batch of ‖x − model(x)‖²; returns L."""
    optimizer.zero_grad()
    loss = ((model(x) - x) ** 2).sum(dim=1).mean()
    loss.backward()
    optimizer.step()
    return loss.item()


def fit_autoencoder(model: nn.Module, X: torch.Tensor, *, epochs: int = 20, lr: float = 1e-3,
                    batch_size: int = 64, seed: int = 0) -> list[float]:
    """Adam on ``autoencoder_step`` over shuffled mini-batches; returns the mean loss per epoch."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(X), generator=gen)
        total = sum(autoencoder_step(model, X[idx], opt) * len(idx)
                    for idx in perm.split(batch_size))
        losses.append(total / len(X))
    return losses
