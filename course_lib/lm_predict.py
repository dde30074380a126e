"""Predicting a ReLU FFN's active neurons before computing them (Deja Vu, PowerInfer).

Chapter: ``book/fast/llm_sparsity``.

An FFN that reads only its active neurons' weights must know them *before* the up-projection,
or it has read ``W_up`` whole to find them (the ``"exact"`` decode mode). A predictor guesses
them from the FFN's input ``x`` at a fraction of the cost: per layer a low-rank map

    ``s = (x·A)·B + c``,  ``A (d_model, r)``, ``B (r, d_ff)``,

trained with a logistic loss on the labels ``[ReLU(x·W_up)_i > 0]`` of the model's own
activations, and neuron ``i`` is predicted active if ``s_i > τ``. The threshold ``τ`` is
calibrated on held-out text for a target **recall** (the share of truly active neurons that are
predicted): a missed neuron changes the output, a false alarm only costs its bytes. The predictor
reads ``r·(d_model + d_ff)`` weights per layer, a share ``r·(d + d_ff) / (2·d·d_ff)`` of the
FFN's.
"""

from __future__ import annotations

import torch
from torch import nn

from course_lib import lm

__all__ = ["Predictor", "ffn_inputs", "train_predictor", "calibrate_recall", "fit",
           "thresholds_for_density", "predicted_masks", "evaluate"]


class Predictor(nn.Module):
    """Low-rank scores ``s = (x·A)·B + c`` of one layer's ``d_ff`` neurons."""

    def __init__(self, d_model: int, d_ff: int, rank: int):
        super().__init__()
        if not 1 <= rank <= min(d_model, d_ff):
            raise ValueError(f"rank must be in [1, {min(d_model, d_ff)}], got {rank}")
        self.a = nn.Linear(d_model, rank, bias=False)
        self.b = nn.Linear(rank, d_ff)
        self.rank = rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))

    def overhead(self) -> float:
        """Weights read per token, as a share of the (two-matrix) FFN's ``2·d·d_ff``."""
        d, r = self.a.in_features, self.rank
        d_ff = self.b.out_features
        return r * (d + d_ff) / (2 * d * d_ff)


def _check_relu(model: lm.DecoderLM) -> None:
    if model.cfg.ffn != "relu":
        raise ValueError(f"the predictor learns ReLU(x·W_up) > 0: needs a relu model, "
                         f"got ffn={model.cfg.ffn!r}")


def ffn_inputs(model: lm.DecoderLM, w: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the FFN inputs ``x (tokens, d_model)`` on windows ``w`` and the labels
    ``h > 0 (tokens, d_ff)`` of the model's own ReLU FFN."""
    _check_relu(model)
    xs = lm.recorded(model, [b.ffn.in_site for b in model.blocks], w)
    with torch.no_grad():
        return [(x, b.ffn.hidden(x) > 0) for x, b in zip(xs, model.blocks)]


def train_predictor(x: torch.Tensor, active: torch.Tensor, rank: int, steps: int = 300,
                    lr: float = 1e-2, seed: int = 0) -> Predictor:
    """Fit a :class:`Predictor` to ``active (tokens, d_ff)`` from ``x (tokens, d)`` by Adam on
    the mean logistic loss over all tokens (full batch; seeded)."""
    if x.shape[0] != active.shape[0]:
        raise ValueError(f"{x.shape[0]} inputs but {active.shape[0]} label rows")
    torch.manual_seed(seed)
    p = Predictor(x.shape[1], active.shape[1], rank)
    opt = torch.optim.Adam(p.parameters(), lr=lr)
    y = active.float()
    for _ in range(steps):
        loss = nn.functional.binary_cross_entropy_with_logits(p(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return p.eval()


@torch.no_grad()
def calibrate_recall(p: Predictor, x: torch.Tensor, active: torch.Tensor,
                     recall: float) -> float:
    """The threshold ``τ`` at which a share ``recall`` of the active (token, neuron) pairs of the
    calibration data score above ``τ``."""
    if not 0 < recall <= 1:
        raise ValueError(f"recall must be in (0, 1], got {recall}")
    scores = p(x)[active].sort().values
    # just below the quantile score: membership is s > τ, and that score must count as predicted
    return scores[int((1 - recall) * (len(scores) - 1))].item() - 1e-6


def fit(model: lm.DecoderLM, rank: int, recall: float, train_w: torch.Tensor,
        calib_w: torch.Tensor, steps: int = 300) -> tuple[list[Predictor], list[float]]:
    """One predictor per layer trained on windows ``train_w`` and its threshold for ``recall``
    calibrated on ``calib_w``."""
    predictors = [train_predictor(x, a, rank, steps) for x, a in ffn_inputs(model, train_w)]
    taus = [calibrate_recall(p, x, a, recall)
            for p, (x, a) in zip(predictors, ffn_inputs(model, calib_w))]
    return predictors, taus


@torch.no_grad()
def thresholds_for_density(predictors: list[Predictor], xs: list[torch.Tensor],
                           densities: list[float]) -> list[float]:
    """Per layer, the threshold above which a share ``density`` of the scores of inputs ``xs``
    lie: how a predictor of known cost but no training (the benchmark's wide model) is made to
    keep as many neurons as a trained one does."""
    return [torch.quantile(p(x).flatten(), 1 - d).item()
            for p, x, d in zip(predictors, xs, densities)]


def predicted_masks(model: lm.DecoderLM, predictors: list[Predictor],
                    taus: list[float]) -> None:
    """Make every FFN compute only its predicted neurons: ``h ⊙ [s(x) > τ]``, set through the
    :class:`lm.Site` transforms of the FFN's input and hidden activation (cleared by
    ``lm.clear_thresholds``)."""
    if not len(predictors) == len(taus) == len(model.blocks):
        raise ValueError(f"{len(model.blocks)} layers, {len(predictors)} predictors, "
                         f"{len(taus)} thresholds")
    for b, p, tau in zip(model.blocks, predictors, taus):
        seen = {}

        def observe(x, seen=seen, p=p, tau=tau):
            seen["mask"] = p(x) > tau
            return x

        b.ffn.in_site.transform = observe
        b.ffn.hidden_site.transform = lambda h, seen=seen: h * seen["mask"]


@torch.no_grad()
def evaluate(model: lm.DecoderLM, predictors: list[Predictor], taus: list[float],
             w: torch.Tensor) -> dict:
    """On windows ``w``: the recall and the predicted density (share of neurons predicted
    active, what a masked FFN reads) per layer, the true density, and the perplexity of the
    model whose FFNs compute only the predicted neurons."""
    data = ffn_inputs(model, w)
    recall, predicted, true = [], [], []
    for (x, active), p, tau in zip(data, predictors, taus):
        guess = p(x) > tau
        recall.append((guess & active).sum().item() / max(1, active.sum().item()))
        predicted.append(guess.float().mean().item())
        true.append(active.float().mean().item())
    predicted_masks(model, predictors, taus)
    try:
        ppl = lm.windows_perplexity(model, w)
    finally:
        lm.clear_thresholds(model)
    return {"recall": recall, "predicted_density": predicted, "true_density": true, "ppl": ppl}
