"""Batch-1 decode of the course's language models with a KV cache: dense against sparse FFNs.

Chapter: ``book/fast/llm_sparsity``.

A decode step feeds one token through every layer: attention of its query over the cached keys
and values of the earlier positions, then the FFN. At batch 1 each weight matrix is read once
per token, so an FFN that reads only the rows of its active neurons saves bytes in proportion
to its sparsity. :class:`KVDecoder` runs the step with the FFN

* ``"dense"``:  ``W_down · act(W_up · x)``;
* ``"exact"``:  the same up-projection, then only the rows of ``W_downᵀ`` whose activation is
  nonzero (``ffn.gather_gemv``): exact for ReLU-family FFNs, it reads ``(1 + density)/2`` of the
  FFN's bytes;
* ``"masked"``: ``ffn.fused_ffn`` on given active sets (one per layer and step), reading the
  ``W_up`` and ``W_downᵀ`` rows of those neurons only: the regime of a predictor, here with sets
  drawn at a measured density (random sets, not a trained predictor; the output is not the
  model's);
* ``"predicted"``: a :class:`course_lib.lm_predict.Predictor` per layer scores the neurons from
  the FFN's input, those above the layer's threshold form the active set, then
  ``ffn.fused_ffn`` as in ``"masked"``: the predictor's own cost is in the step time;
* ``"none"``:   no FFN, to measure the FFN's share of the step time.

The benchmark (``python -m course_lib.bench decode [--quick|--tiny] [--out DIR]``) times the course's
ReLU model, with a predictor trained on its activations, and a wide ReLU model of the same
architecture at LLM widths (random weights) whose active sets are drawn at the per-layer
density measured on the course's model and whose (untrained) predictor of the same relative
rank keeps the share of neurons the trained one predicts; it compares each sparse speed-up with
the Amdahl bound ``1 / ((1 − f) + f·b)``, ``f`` the FFN's measured share of the dense step and
``b`` the share of the FFN's bytes the sparse mode reads (for ``"predicted"``, the predicted
neurons' plus the predictor's).
"""

from __future__ import annotations

import math
import os
import random
import sys
import time

import torch

from . import lm, lm_predict
from .ffn import fused_ffn, gather_gemv

__all__ = ["MODES", "KVDecoder", "draw_active_sets", "time_decode", "bench_decode", "main"]

MODES = ("dense", "exact", "masked", "predicted", "none")


class KVDecoder:
    """One token at a time through a :class:`lm.DecoderLM`, keys and values cached per layer.

    ``ffn`` is one of :data:`MODES`; ``"exact"``, ``"masked"`` and ``"predicted"`` need an
    ungated ReLU or ReLU² FFN (``"masked"`` and ``"predicted"`` compute ReLU, the activation
    ``ffn.fused_ffn`` offers for this form); ``"predicted"`` needs one predictor and one threshold
    per layer.
    """

    def __init__(self, model: lm.DecoderLM, ffn: str = "dense",
                 predictors: list[lm_predict.Predictor] | None = None,
                 taus: list[float] | None = None):
        if ffn not in MODES:
            raise ValueError(f"ffn mode must be one of {MODES}, got {ffn!r}")
        if ffn in ("exact", "masked", "predicted") and model.cfg.ffn not in ("relu", "relu2"):
            raise ValueError(f"the {ffn!r} FFN needs an ungated ReLU-family model, "
                             f"got ffn={model.cfg.ffn!r}")
        if ffn in ("masked", "predicted") and model.cfg.ffn != "relu":
            raise ValueError(f"the {ffn!r} FFN computes ReLU (ffn.fused_ffn): use a relu model")
        if (ffn == "predicted") != (predictors is not None and taus is not None):
            raise ValueError("predictors and thresholds are given exactly when the mode is "
                             "'predicted'")
        if ffn == "predicted" and not len(predictors) == len(taus) == model.cfg.n_layers:
            raise ValueError(f"{model.cfg.n_layers} layers need as many predictors and "
                             f"thresholds; got {len(predictors)} and {len(taus)}")
        self.predictors, self.taus = predictors, taus
        self.model, self.mode, cfg = model.eval(), ffn, model.cfg
        self.heads, self.dh = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.K = torch.zeros(cfg.n_layers, cfg.context, self.heads, self.dh)
        self.V = torch.zeros_like(self.K)
        # prepared once per model (per-call work costs more than a small GEMV): W_down transposed
        # so that an active neuron's column is one contiguous row, and a zero bias for fused_ffn
        self.w2t = [b.ffn.down.weight.detach().T.contiguous() for b in model.blocks]
        self.b1 = torch.zeros(cfg.d_ff)
        self.pos = 0

    def reset(self) -> None:
        self.pos = 0

    @torch.no_grad()
    def step(self, token: int, active: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Logits ``(256,)`` after ``token`` at the next position; ``active`` (mode
        ``"masked"``): one int64 tensor of active neurons per layer."""
        cfg, p = self.model.cfg, self.pos
        if p >= cfg.context:
            raise ValueError(f"the cache holds context={cfg.context} positions; reset() first")
        if (self.mode == "masked") != (active is not None):
            raise ValueError("active sets are given exactly when the mode is 'masked'")
        x = self.model.tok.weight[token] + self.model.pos.weight[p]
        for L, b in enumerate(self.model.blocks):
            q, k, v = (b.attn.qkv.weight @ b.norm1(x)).view(3, self.heads, self.dh)
            self.K[L, p], self.V[L, p] = k, v
            scores = torch.einsum("hd,phd->hp", q, self.K[L, :p + 1]) / math.sqrt(self.dh)
            y = torch.einsum("hp,phd->hd", scores.softmax(dim=-1), self.V[L, :p + 1])
            x = x + b.attn.out.weight @ y.reshape(-1)
            x = x + self._ffn(L, b, b.norm2(x), None if active is None else active[L])
        self.pos = p + 1
        return self.model.head.weight @ self.model.norm(x)

    def _ffn(self, L: int, b: lm.Block, x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        if self.mode == "none":
            return torch.zeros_like(x)
        if self.mode == "predicted":
            idx = (self.predictors[L](x) > self.taus[L]).nonzero().squeeze(-1)
        if self.mode in ("masked", "predicted"):
            return fused_ffn(b.ffn.up.weight, self.b1, self.w2t[L], x, idx, "relu")
        h = b.ffn.hidden(x)
        if self.mode == "dense":
            return b.ffn.down.weight @ h
        return gather_gemv(self.w2t[L], h, h.nonzero().squeeze(-1))


def draw_active_sets(d_ff: int, densities: list[float], steps: int,
                     seed: int = 0) -> list[list[torch.Tensor]]:
    """For each step, one random set of ``round(density·d_ff)`` neurons per layer (sorted)."""
    if not all(0 < d <= 1 for d in densities):
        raise ValueError(f"densities must be in (0, 1], got {densities}")
    g = torch.Generator().manual_seed(seed)
    return [[torch.randperm(d_ff, generator=g)[:max(1, round(d * d_ff))].sort().values
             for d in densities] for _ in range(steps)]


def time_decode(decoders: dict[str, KVDecoder], tokens: list[int],
                active: list[list[torch.Tensor]] | None = None, rounds: int = 3,
                seed: int = 0) -> dict[str, float]:
    """Median seconds per decode step of each decoder over ``tokens``, the decoders run in
    shuffled order in each of ``rounds`` rounds (a slow stretch of a shared machine then
    spreads over all of them); the first step of each sequence is a warm-up."""
    order, times = list(decoders), {k: [] for k in decoders}
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            dec = decoders[name]
            dec.reset()
            for i, t in enumerate(tokens):
                sets = active[i] if dec.mode == "masked" else None
                t0 = time.perf_counter()
                dec.step(t, sets)
                if i:
                    times[name].append(time.perf_counter() - t0)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def _rows(label: str, model: lm.DecoderLM, densities: list[float], steps: int,
          modes: tuple[str, ...], predicted: tuple[list, list[float], float] | None = None
          ) -> list[dict]:
    """Time ``dense``, ``none`` and ``modes``; ``predicted`` = (predictors, thresholds, share of
    the FFN's bytes the mode reads) for the ``"predicted"`` mode."""
    tokens = lm.encode(lm.corpus_text()[:steps]).tolist()[:steps]
    decoders = {m: KVDecoder(model, m) for m in ("dense", "none", *modes) if m != "predicted"}
    if "predicted" in modes:
        decoders["predicted"] = KVDecoder(model, "predicted", *predicted[:2])
    active = draw_active_sets(model.cfg.d_ff, densities, len(tokens)) if "masked" in modes else None
    t = time_decode(decoders, tokens, active)
    f = max(0.0, 1 - t["none"] / t["dense"])
    density = sum(densities) / len(densities)
    rows = []
    for m in ("dense", *modes):
        reads = {"dense": 1.0, "exact": (1 + density) / 2, "masked": density,
                 "predicted": predicted[2] if predicted else None}[m]
        bound = 1 / ((1 - f) + f * reads)
        rows.append({"model": label, "d_model": model.cfg.d_model, "d_ff": model.cfg.d_ff,
                     "layers": model.cfg.n_layers, "mode": m, "ffn_density": round(density, 4),
                     "ffn_bytes_read": round(reads, 4), "step_ms": round(1e3 * t[m], 4),
                     "tokens_per_s": round(1 / t[m], 2), "ffn_share": round(f, 4),
                     "amdahl_bound": round(bound, 4), "speedup": round(t["dense"] / t[m], 4),
                     "share_of_bound": round(t["dense"] / t[m] / bound, 4)})
    return rows


#: the wide model, the number of decode steps and the predictor's training steps per size
SIZES = {"full": dict(d_model=2048, n_layers=12, steps=64, fit_steps=300),  # 2.4 GB of fp32
         "quick": dict(d_model=1024, n_layers=2, steps=24, fit_steps=100),
         "tiny": dict(d_model=256, n_layers=1, steps=4, fit_steps=5)}
#: the predictor: rank d_model/8 (a share 5/64 ≈ 7.8 % of a d_ff = 4·d FFN's bytes), recall
PREDICTOR_RANK_SHARE, PREDICTOR_RECALL = 1 / 8, 0.95


def bench_decode(size: str = "full") -> list[dict]:
    """The course's ReLU model (exact sparse FFN; a trained predictor) and a wide ReLU model at
    LLM widths (active sets drawn at the course model's measured per-layer density; a predictor
    of the same relative rank keeping the share of neurons the trained one keeps), against
    dense."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    small, record = lm.load("relu")
    densities = [1 - z for z in record["snapshots"][-1]["zero_share"]]
    d_model, n_layers, steps, fit_steps = (SIZES[size][k] for k in
                                           ("d_model", "n_layers", "steps", "fit_steps"))
    parts, ctx = lm.splits(), small.cfg.context
    calib_w = lm.windows(parts["calib"], ctx, 16)
    preds, taus = lm_predict.fit(small, round(PREDICTOR_RANK_SHARE * small.cfg.d_model),
                                 PREDICTOR_RECALL, lm.windows(parts["train"], ctx, 32), calib_w,
                                 fit_steps)
    kept = lm_predict.evaluate(small, preds, taus, calib_w)["predicted_density"]
    reads = sum(kept) / len(kept) + preds[0].overhead()
    rows = _rows("course relu", small, densities, steps, ("exact", "predicted"),
                 (preds, taus, reads))
    torch.manual_seed(0)
    wide_cfg = lm.LMConfig(name="wide", ffn="relu", d_model=d_model, n_layers=n_layers,
                           n_heads=16, context=128)
    wide = lm.DecoderLM(wide_cfg)
    layers = [densities[i % len(densities)] for i in range(wide_cfg.n_layers)]
    wide_kept = [kept[i % len(kept)] for i in range(wide_cfg.n_layers)]
    wide_preds = [lm_predict.Predictor(d_model, wide_cfg.d_ff,
                                       round(PREDICTOR_RANK_SHARE * d_model)).eval()
                  for _ in range(n_layers)]
    xs = lm.recorded(wide, [b.ffn.in_site for b in wide.blocks], lm.windows(parts["calib"], 32, 1))
    wide_taus = lm_predict.thresholds_for_density(wide_preds, xs, wide_kept)
    wide_reads = sum(wide_kept) / len(wide_kept) + wide_preds[0].overhead()
    rows += _rows("wide relu, masks at measured density", wide, layers, max(2, steps // 2),
                  ("exact", "masked", "predicted"), (wide_preds, wide_taus, wide_reads))
    return rows


def main(argv=None) -> int:
    """``python -m course_lib.bench decode [--quick|--tiny] [--out DIR]``: CPU only."""
    from . import bench
    args = bench.parse_suite_args("decode", __doc__.split("\n")[0], argv)
    if args.device != "cpu" or args.interpret:
        print("the decode suite runs on the CPU only (its KV-cache decoder is CPU code)",
              file=sys.stderr)
        return 2
    load_at_start = os.getloadavg()[0]
    bandwidth = bench.memory_bandwidth()
    rows = bench_decode(args.size)
    for r in rows:
        print(f"{r['model']:38} {r['mode']:7} {r['step_ms']:9.3f} ms  {r['tokens_per_s']:9.1f} tok/s"
              f"  speed-up {r['speedup']:.3f}  bound {r['amdahl_bound']:.3f}  "
              f"({r['share_of_bound']:.0%} of it)")
    path = bench.write_csv(rows, args.out / bench.csv_name(args),
                           bench.run_metadata(args, bandwidth, load_at_start))
    print(f"wrote {path}")
    return 0
