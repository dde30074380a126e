"""A small decoder-only language model family the course trains itself, and what its FFNs do.

Chapter: ``book/fast/llm_sparsity``.

Corpus: ``pydoc_data.topics.topics``, the Python language reference that ships with CPython's
standard library (PSF licence; ~465 k characters on Python 3.11), joined in sorted key order and
read as UTF-8 **bytes** (vocabulary 256: no tokenizer to train, nothing to download). The bytes
are cut into three contiguous pieces: train (first 85 %), calibration (next 5 %, held out for
choosing sparsification thresholds) and validation (last 10 %).

Model: a pre-norm decoder, ``x ← x + Attn(RMSNorm(x))``, ``x ← x + FFN(RMSNorm(x))``, with learned
positions, causal multi-head attention and one of four FFNs (``h`` is the hidden activation,
``y = h·W_down``):

==========  ==========================================  =================
``ffn``     hidden activation ``h``                     width ``d_ff``
==========  ==========================================  =================
``swiglu``  ``SiLU(x·W_gate) ⊙ (x·W_up)``                ``gated_width``
``drelu``   ``ReLU(x·W_gate) ⊙ ReLU(x·W_up)``            ``gated_width``
``relu``    ``ReLU(x·W_up)``                            ``4·d_model``
``relu2``   ``ReLU(x·W_up)²``                           ``4·d_model``
``reglu``   ``ReLU(x·W_gate) ⊙ (x·W_up)``                ``gated_width``
==========  ==========================================  =================

A gated FFN has three matrices, an ungated one two, so the gated width is ``8/3·d_model`` rounded
up to a multiple of 8 and every variant has (within 1 %) the same number of parameters.

Two training variants go beyond the activation function: ``topk`` keeps only the largest share
``topk`` of ``|h|`` per token, with a straight-through gradient (Q-Sparse), and ``init_from`` +
``l1`` fine-tune an existing checkpoint after swapping its activation (ReLUfication, ProSparse
style) with an L1 penalty on ``h`` whose weight rises along sine ramps in ``l1_stages`` stages; a
ReLUfied log also records the threshold shift (FATReLU) that follows.

Every linear layer reads its input through a :class:`Site`: a magnitude threshold that is off
by default. Training-free sparsification sets thresholds at sites: TEAL (every linear's input)
and CATS (the gate activation ``SiLU(x·W_gate)``), each calibrated by :func:`calibrate` so that a
chosen share of the entries at each site falls below it on the calibration text.

``python -m course_lib.lm train --config NAME`` trains one configuration of :data:`CONFIGS`
(single-threaded, deterministic) and writes ``NAME.safetensors`` and ``NAME.json`` (the log,
including the command) into ``book/fast/data/lm/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LMConfig", "CONFIGS", "CHECKPOINT_DIR", "get_config", "corpus_text", "corpus_sha256",
           "encode", "decode", "splits", "windows", "Site", "nm_mask", "nm_share", "FFN",
           "topk_ste", "Attention", "Block", "DecoderLM", "generate", "n_params", "batch_loss",
           "windows_perplexity", "perplexity", "sites", "recorded", "hidden_activations",
           "zero_share", "cett", "cett_threshold", "cett_sparsity", "calibrate",
           "magnitude_threshold", "amdahl_bound", "set_thresholds", "clear_thresholds", "sweep",
           "cett_thresholds", "ppl_p_sparsity", "l1_weight", "train", "save", "load", "main"]

CHECKPOINT_DIR = Path(__file__).resolve().parents[1] / "book" / "fast" / "data" / "lm"
FFN_KINDS = ("swiglu", "drelu", "relu", "relu2", "reglu")
GATED = ("swiglu", "drelu", "reglu")
SPLIT = (0.85, 0.05, 0.10)  # train, calibration, validation
SHIFT_LEVELS = (0.0, 0.8, 0.85, 0.9, 0.95)  # gate zero shares a ReLUfied log records


# --------------------------------------------------------------------------- data

def corpus_text() -> str:
    """The Python language reference shipped with CPython (``pydoc_data.topics``), keys sorted."""
    from pydoc_data.topics import topics
    return "\n\n".join(topics[k] for k in sorted(topics))


def corpus_sha256() -> str:
    """SHA-256 of the corpus bytes: another Python version ships another text (and checkpoints
    trained on it would not reproduce their recorded perplexity)."""
    return hashlib.sha256(corpus_text().encode("utf-8")).hexdigest()


def encode(text: str) -> torch.Tensor:
    """UTF-8 bytes of ``text`` as an int64 tensor of token ids in [0, 256)."""
    if not isinstance(text, str):
        raise ValueError(f"encode needs a str, got {type(text).__name__}")
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.int64)


def decode(ids: torch.Tensor) -> str:
    """Token ids back to text (invalid UTF-8, e.g. a cut multi-byte character, becomes U+FFFD)."""
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def splits() -> dict[str, torch.Tensor]:
    """Contiguous train / calib / valid byte streams (85 / 5 / 10 % of the corpus)."""
    ids = encode(corpus_text())
    a = int(SPLIT[0] * len(ids))
    b = int((SPLIT[0] + SPLIT[1]) * len(ids))
    return {"train": ids[:a], "calib": ids[a:b], "valid": ids[b:]}


# --------------------------------------------------------------------------- configurations

@dataclass(frozen=True)
class LMConfig:
    """Model shape and training schedule of one family member."""

    name: str
    ffn: str = "swiglu"
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    context: int = 128
    batch: int = 16
    steps: int = 1000
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.1
    seed: int = 0
    eval_every: int = 100
    eval_windows: int = 16  # validation windows for the log's loss and sparsity curves
    topk: float = 0.0       # share of h kept per token by a top-k mask (0: no mask)
    init_from: str = ""     # a checkpoint to start from (its weights must fit this shape)
    l1: float = 0.0         # final weight of the L1 penalty mean|h| summed over layers
    l1_stages: int = 1      # the penalty's weight rises in this many equal stages (ProSparse)

    @property
    def d_ff(self) -> int:
        """Hidden width: ``4·d`` ungated, ``⌈8/3·d / 8⌉·8`` gated (same parameter count)."""
        if self.ffn in GATED:
            return 8 * math.ceil(8 * self.d_model / 3 / 8)
        return 4 * self.d_model

    def check(self) -> "LMConfig":
        if self.ffn not in FFN_KINDS:
            raise ValueError(f"ffn must be one of {FFN_KINDS}, got {self.ffn!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        for field_ in ("d_model", "n_layers", "n_heads", "context", "batch", "eval_windows"):
            if getattr(self, field_) < 1:
                raise ValueError(f"{field_} must be >= 1, got {getattr(self, field_)}")
        if not 0 <= self.topk < 1:
            raise ValueError(f"topk (share of h kept) must be in [0, 1), got {self.topk}")
        if self.l1 < 0:
            raise ValueError(f"l1 must be >= 0, got {self.l1}")
        if self.l1_stages < 1:
            raise ValueError(f"l1_stages must be >= 1, got {self.l1_stages}")
        return self


_BASE = LMConfig(name="base")
CONFIGS: dict[str, LMConfig] = {
    # for tests: trains in about a second
    "tiny": LMConfig(name="tiny", ffn="relu", d_model=32, n_layers=1, n_heads=2, context=32,
                     batch=4, steps=4, warmup=2, eval_every=2, eval_windows=2),
    **{k: replace(_BASE, name=k, ffn=k) for k in ("swiglu", "drelu", "relu", "relu2")},
    # Q-Sparse-style: SwiGLU whose hidden activation keeps its top 25 % per token
    "swiglu_topk": replace(_BASE, name="swiglu_topk", topk=0.25),
    # ProSparse-style ReLUfication of the SwiGLU checkpoint: SiLU -> ReLU on the gate, then a
    # short fine-tune with an L1 penalty on h that rises along a sine ramp
    "relufied": replace(_BASE, name="relufied", ffn="reglu", init_from="swiglu", steps=300,
                        lr=1e-3, warmup=30, l1=0.1, eval_every=50),
    # ProSparse's progressive schedule: the L1 weight rises in three stages (see l1_weight);
    # three final weights trace how much perplexity each level of sparsity costs
    **{f"prosparse_l{tag}": replace(_BASE, name=f"prosparse_l{tag}", ffn="reglu",
                                   init_from="swiglu", steps=300, lr=1e-3, warmup=30, l1=l1,
                                   l1_stages=3, eval_every=50)
       for tag, l1 in (("03", 0.3), ("1", 1.0), ("3", 3.0))},
    # the control of every ReLUfication: the same fine-tune without the swap and the penalty
    "swiglu_continued": replace(_BASE, name="swiglu_continued", init_from="swiglu", steps=300,
                                lr=1e-3, warmup=30, eval_every=50),
}


def get_config(name: str) -> LMConfig:
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; known: {sorted(CONFIGS)}")
    return CONFIGS[name]


# --------------------------------------------------------------------------- model

class Site(nn.Module):
    """Where a tensor enters a linear layer; identity until a sparsifier is set.

    * ``threshold`` ``t`` (a float, or a tensor broadcast over the last axis for per-feature
      thresholds): ``x ↦ x·[|x| > t]``;
    * ``nm = (n, m)``: keep the ``n`` largest ``|x|`` in every group of ``m`` consecutive entries
      of the last axis (2:4 is the pattern of sparse tensor cores);
    * ``transform``: any function of ``x`` applied last (the sparsifiers of
      :mod:`course_lib.lm_sparsify` that are not a threshold: rotations, top-k, low rank).

    ``record`` (a list, or None) collects detached copies of what arrives, before any masking,
    for calibration and for measuring activations without changing the model.
    """

    def __init__(self):
        super().__init__()
        self.threshold: float | torch.Tensor | None = None
        self.nm: tuple[int, int] | None = None
        self.transform = None
        self.record: list[torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.record is not None:
            self.record.append(x.detach())
        if self.threshold is not None:
            x = x.masked_fill(x.abs() <= self.threshold, 0.0)
        if self.nm is not None:
            x = x * nm_mask(x, *self.nm)
        if self.transform is not None:
            x = self.transform(x)
        return x


def nm_mask(x: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Boolean mask of the ``n`` largest ``|x|`` in each group of ``m`` along the last axis."""
    if not 0 < n <= m or x.shape[-1] % m:
        raise ValueError(f"need 0 < n <= m and the last axis ({x.shape[-1]}) a multiple of m; "
                         f"got n={n}, m={m}")
    groups = x.abs().reshape(*x.shape[:-1], -1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, groups.topk(n, dim=-1).indices, True)
    return keep.reshape(x.shape)


def nm_share(x: torch.Tensor, n: int = 2, m: int = 4) -> float:
    """Share of the groups of ``m`` consecutive entries (last axis) with at most ``n`` nonzeros:
    the groups an ``n:m`` mask would leave unchanged."""
    if x.shape[-1] % m:
        raise ValueError(f"last axis ({x.shape[-1]}) must be a multiple of m={m}")
    nnz = (x != 0).reshape(*x.shape[:-1], -1, m).sum(-1)
    return (nnz <= n).float().mean().item()


class FFN(nn.Module):
    """``y = h(x)·W_down`` with the hidden activation ``h`` of the module docstring's table."""

    def __init__(self, d_model: int, d_ff: int, kind: str, keep: int = 0):
        super().__init__()
        if kind not in FFN_KINDS:
            raise ValueError(f"ffn must be one of {FFN_KINDS}, got {kind!r}")
        self.kind = kind
        self.keep = keep  # > 0: top-k mask on h with k = keep
        self.gated = kind in GATED
        if self.gated:
            self.gate = nn.Linear(d_model, d_ff, bias=False)
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)
        self.in_site = Site()      # TEAL: the input of W_gate and W_up
        self.gate_site = Site()    # CATS: SiLU(x·W_gate), gated variants only
        self.hidden_site = Site()  # the input of W_down: h itself

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_site(x)
        if self.kind == "swiglu":
            return self.gate_site(F.silu(self.gate(x))) * self.up(x)
        if self.kind == "drelu":
            return self.gate_site(F.relu(self.gate(x))) * F.relu(self.up(x))
        if self.kind == "reglu":
            return self.gate_site(F.relu(self.gate(x))) * self.up(x)
        if self.kind == "relu":
            return F.relu(self.up(x))
        return F.relu(self.up(x)).square()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden(x)
        if self.keep:
            h = topk_ste(h, self.keep)
        return self.down(self.hidden_site(h))


def topk_ste(h: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest ``|h|`` of each row (last axis), zero the rest; the backward pass
    treats the mask as the identity (straight-through estimator), so dropped entries still get
    gradient and can re-enter the top k (Q-Sparse)."""
    if not 1 <= k <= h.shape[-1]:
        raise ValueError(f"k must be in [1, {h.shape[-1]}], got {k}")
    keep = torch.zeros_like(h, dtype=torch.bool)
    keep.scatter_(-1, h.detach().abs().topk(k, dim=-1).indices, True)
    return h + (h * keep - h).detach()


class Attention(nn.Module):
    """Causal multi-head self-attention, ``softmax(QKᵀ/√d_head + mask)·V`` then ``W_o``."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.in_site = Site()   # TEAL: the input of W_q, W_k, W_v
        self.out_site = Site()  # TEAL: the input of W_o

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.in_site(x)).view(B, T, 3, self.n_heads, D // self.n_heads).unbind(2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=True)
        return self.out(self.out_site(y.transpose(1, 2).reshape(B, T, D)))


class Block(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.d_model)
        self.attn = Attention(cfg.d_model, cfg.n_heads)
        self.norm2 = nn.RMSNorm(cfg.d_model)
        self.ffn = FFN(cfg.d_model, cfg.d_ff, cfg.ffn, keep=round(cfg.topk * cfg.d_ff))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class DecoderLM(nn.Module):
    """Byte-level decoder: token + position embeddings, ``n_layers`` blocks, RMSNorm, logits."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg.check()
        self.tok = nn.Embedding(256, cfg.d_model)
        self.pos = nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, 256, bias=False)
        # residual-branch outputs scaled by 1/√(2L) so the stream's variance stays O(1)
        branch_out = ("down.weight", "out.weight")
        for name, p in self.named_parameters():
            if p.ndim == 2:
                scale = (2 * cfg.n_layers) ** -0.5 if name.endswith(branch_out) else 1.0
                nn.init.normal_(p, std=0.02 * scale)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, T, 256)`` for int64 token ids ``idx (B, T)``, ``T ≤ context``."""
        if idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"token ids must be int64 or int32, got dtype {idx.dtype}")
        if idx.ndim != 2 or not 1 <= idx.shape[1] <= self.cfg.context:
            raise ValueError(f"token ids must be (batch, T) with 1 <= T <= context="
                             f"{self.cfg.context}, got shape {tuple(idx.shape)}")
        pos = torch.arange(idx.shape[1])
        x = self.tok(idx) + self.pos(pos)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


@torch.no_grad()
def generate(model: DecoderLM, prompt: str, n: int) -> str:
    """Greedy continuation of ``prompt`` by ``n`` bytes (the last ``context`` bytes are the
    input of each step; no KV cache: this is for reading samples, not for timing)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    ids = encode(prompt)
    if len(ids) == 0:
        raise ValueError("the prompt must not be empty")
    model.eval()
    for _ in range(n):
        logits = model(ids[-model.cfg.context:].unsqueeze(0))
        ids = torch.cat([ids, logits[0, -1].argmax().reshape(1)])
    return decode(ids[len(encode(prompt)):])


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- evaluation

def windows(ids: torch.Tensor, context: int, n: int | None = None) -> torch.Tensor:
    """Non-overlapping windows of ``context + 1`` tokens (inputs + next-token targets)."""
    m = (len(ids) - 1) // context
    if n is not None:
        m = min(m, n)
    return torch.stack([ids[i * context: i * context + context + 1] for i in range(m)])


def batch_loss(model: DecoderLM, w: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) over windows ``w (B, T+1)``."""
    logits = model(w[:, :-1])
    return F.cross_entropy(logits.reshape(-1, 256), w[:, 1:].reshape(-1))


@torch.no_grad()
def windows_perplexity(model: DecoderLM, w: torch.Tensor, batch: int = 32) -> float:
    """``exp(mean NLL)`` of the next-token predictions in windows ``w (n, T+1)``."""
    model.eval()
    total = 0.0
    for s in range(0, len(w), batch):
        total += batch_loss(model, w[s:s + batch]).item() * len(w[s:s + batch])
    return math.exp(total / len(w))


def perplexity(model: DecoderLM, ids: torch.Tensor | None = None,
               n_windows: int | None = None) -> float:
    """Perplexity over non-overlapping context windows of ``ids`` (default: the validation
    split, all of it: the number each checkpoint's log records)."""
    ids = splits()["valid"] if ids is None else ids
    return windows_perplexity(model, windows(ids, model.cfg.context, n_windows))


def sites(model: DecoderLM, kind: str) -> list[Site]:
    """The sites a method thresholds: ``"teal"`` every linear's input (4 per block), ``"cats"``
    the gate activation, ``"hidden"`` the FFN hidden activation ``h`` (W_down's input)."""
    if kind == "teal":
        return [s for b in model.blocks
                for s in (b.attn.in_site, b.attn.out_site, b.ffn.in_site, b.ffn.hidden_site)]
    if kind == "cats":
        if not all(b.ffn.gated for b in model.blocks):
            raise ValueError(f"CATS thresholds a gate: the {model.cfg.ffn!r} FFN has none")
        return [b.ffn.gate_site for b in model.blocks]
    if kind == "hidden":
        return [b.ffn.hidden_site for b in model.blocks]
    raise ValueError(f"site kind must be 'teal', 'cats' or 'hidden', got {kind!r}")


@torch.no_grad()
def recorded(model: DecoderLM, at: list[Site], w: torch.Tensor) -> list[torch.Tensor]:
    """Run windows ``w`` and return, per site, what passed it as ``(tokens, features)``."""
    model.eval()
    for s in at:
        s.record = []
    try:
        model(w[:, :-1])
        return [torch.cat([r.reshape(-1, r.shape[-1]) for r in s.record]) for s in at]
    finally:
        for s in at:
            s.record = None


def hidden_activations(model: DecoderLM, w: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, the FFN hidden activations ``h (tokens, d_ff)`` on windows ``w``."""
    return recorded(model, sites(model, "hidden"), w)


def zero_share(h: torch.Tensor, eps: float | torch.Tensor = 0.0) -> float:
    """Share of entries with ``|h| ≤ eps`` (``eps = 0``: exact zeros; a tensor ``eps`` is
    broadcast over the last axis, one threshold per feature)."""
    return (h.abs() <= eps).float().mean().item()


def cett(h: torch.Tensor, w_down: torch.Tensor, eps: float) -> torch.Tensor:
    """CETT of threshold ``eps`` per token (Luo et al., 2024, Sparsing Law).

    Neuron ``i`` contributes ``n_i = h_i·W_down[:, i]`` to the FFN output ``y = Σ_i n_i``; a neuron
    is inactive if ``‖n_i‖ = |h_i|·‖W_down[:, i]‖ < eps``, and
    ``CETT(eps) = ‖Σ_{inactive} n_i‖ / ‖y‖``: the relative error of dropping the inactive ones
    (NaN for a token with ``y = 0``).
    ``h (tokens, d_ff)``, ``w_down (d_model, d_ff)`` (``nn.Linear`` layout).
    """
    norms = h.abs() * w_down.norm(dim=0)
    dropped = (h * (norms < eps)) @ w_down.T
    return dropped.norm(dim=1) / (h @ w_down.T).norm(dim=1)


def cett_threshold(h: torch.Tensor, w_down: torch.Tensor, target: float = 0.2,
                   iters: int = 40) -> float:
    """The largest ``eps`` whose mean CETT over the tokens is ≤ ``target`` (bisection; CETT need
    not be monotone in ``eps``, as dropped contributions can cancel, so this finds a crossing).
    Tokens whose FFN output is exactly zero (every ``h_i = 0``, which ReLU-family layers
    produce) have CETT 0/0 and are left out of the mean."""
    if not 0 <= target < 1:
        raise ValueError(f"CETT target must be in [0, 1), got {target}")
    norms = h.abs() * w_down.norm(dim=0)
    y_norm = (h @ w_down.T).norm(dim=1)
    lo, hi = 0.0, norms.max().item()
    for _ in range(iters):
        mid = (lo + hi) / 2
        err = ((h * (norms < mid)) @ w_down.T).norm(dim=1) / y_norm
        lo, hi = (mid, hi) if err.nanmean().item() <= target else (lo, mid)
    return lo


def cett_sparsity(h: torch.Tensor, w_down: torch.Tensor, target: float = 0.2) -> float:
    """Activation sparsity at a CETT budget: the share of neurons with ``‖n_i‖ < eps`` for
    ``eps = cett_threshold(h, w_down, target)``."""
    eps = cett_threshold(h, w_down, target)
    return (h.abs() * w_down.norm(dim=0) < eps).float().mean().item()


# --------------------------------------------------------------------------- sparsification

def calibrate(model: DecoderLM, at: list[Site], sparsity: float,
              w: torch.Tensor) -> list[float | None]:
    """Per site, the threshold ``t`` with a share ``sparsity`` of ``|x|`` at or below it on the
    calibration windows ``w`` (the empirical ``sparsity``-quantile of ``|x|``; None for 0)."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    clear_thresholds(model)
    return [magnitude_threshold(x, sparsity) if sparsity > 0 else None
            for x in recorded(model, at, w)]


def magnitude_threshold(x: torch.Tensor, sparsity: float) -> float:
    """The threshold ``t`` that zeroes a share ``sparsity`` of ``x`` under ``|x| ≤ t``: the
    sorted ``|x|`` at index ``⌊sparsity·(n − 1)⌋`` (CATS and TEAL calibrate this way)."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if x.numel() == 0:
        raise ValueError("cannot calibrate a threshold on an empty tensor")
    a = x.detach().abs().flatten().sort().values
    return a[int(sparsity * (len(a) - 1))].item()


def amdahl_bound(ffn_share: float, density: float) -> float:
    """Decode speed-up bound when only the FFN (a share ``f`` of the step time) is sparsified
    and reads a share ``d`` of its weights: ``1 / ((1 − f) + f·d)``."""
    if not 0 <= ffn_share <= 1:
        raise ValueError(f"ffn_share must be in [0, 1], got {ffn_share}")
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    return 1.0 / ((1.0 - ffn_share) + ffn_share * density)


def set_thresholds(at: list[Site], thresholds: list[float | None]) -> None:
    if len(at) != len(thresholds):
        raise ValueError(f"{len(at)} sites but {len(thresholds)} thresholds")
    for s, t in zip(at, thresholds):
        s.threshold = t


def clear_thresholds(model: DecoderLM) -> None:
    """Switch every site's sparsifier off."""
    for m in model.modules():
        if isinstance(m, Site):
            m.threshold, m.nm, m.transform = None, None, None


def sweep(model: DecoderLM, kind: str, levels: list[float], calib_w: torch.Tensor,
          eval_w: torch.Tensor) -> list[dict]:
    """Training-free sparsification at each target share in ``levels``: thresholds calibrated
    at the sites of ``kind`` (``"teal"``/``"cats"``/``"hidden"``) on the dense model's inputs on
    ``calib_w``; on ``eval_w``, the perplexity and the share of site inputs actually zeroed
    (mean over sites; upstream thresholds shift what later sites receive)."""
    at = sites(model, kind)
    clear_thresholds(model)
    calib = recorded(model, at, calib_w)
    rows = []
    try:
        for level in levels:
            ts = [magnitude_threshold(x, level) if level > 0 else None for x in calib]
            set_thresholds(at, ts)
            for s in at:
                s.record = []
            ppl = windows_perplexity(model, eval_w)
            zeroed = [zero_share(torch.cat(s.record), 0.0 if t is None else t)
                      for s, t in zip(at, ts)]
            for s in at:
                s.record = None
            rows.append({"method": kind, "target": level, "sparsity": sum(zeroed) / len(zeroed),
                         "ppl": ppl})
    finally:
        clear_thresholds(model)
        for s in at:
            s.record = None
    return rows


def cett_thresholds(model: DecoderLM, hs: list[torch.Tensor], target: float) -> list[torch.Tensor]:
    """Per layer, per-neuron thresholds on ``|h_i|`` that drop the neurons with
    ``|h_i|·‖W_down[:, i]‖ < eps``, ``eps`` the layer's CETT threshold for ``target`` on the
    dense hidden activations ``hs`` (one ``(tokens, d_ff)`` tensor per layer)."""
    out = []
    for h, b in zip(hs, model.blocks):
        w_down = b.ffn.down.weight.detach()
        out.append(cett_threshold(h, w_down, target, iters=20) / w_down.norm(dim=0))
    return out


def ppl_p_sparsity(model: DecoderLM, p: float, calib_w: torch.Tensor, eval_w: torch.Tensor,
                   iters: int = 8, tokens: int = 512) -> dict:
    """PPL-p% sparsity (Sparsing Law): the largest CETT target whose thresholds raise the
    perplexity on ``calib_w`` by at most a factor ``1 + p`` (bisection on the target), and the
    FFN hidden sparsity and perplexity those thresholds give on ``eval_w``. The CETT thresholds
    are computed on at most ``tokens`` evenly spaced calibration tokens of the dense model."""
    if not 0 <= p < 1:
        raise ValueError(f"p must be in [0, 1), got {p}")
    at = sites(model, "hidden")
    clear_thresholds(model)
    hs = [h[:: max(1, len(h) // tokens)] for h in hidden_activations(model, calib_w)]
    budget = (1 + p) * windows_perplexity(model, calib_w)
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        set_thresholds(at, cett_thresholds(model, hs, mid))
        ok = windows_perplexity(model, calib_w) <= budget
        lo, hi = (mid, hi) if ok else (lo, mid)
    ts = cett_thresholds(model, hs, lo)
    set_thresholds(at, ts)
    zeroed = [zero_share(x, t) for x, t in zip(recorded(model, at, eval_w), ts)]
    row = {"cett": lo, "sparsity": sum(zeroed) / len(zeroed), "per_layer": zeroed,
           "ppl": windows_perplexity(model, eval_w)}
    clear_thresholds(model)
    return row


# --------------------------------------------------------------------------- training

def l1_weight(cfg: LMConfig, step: int) -> float:
    """Weight of the L1 penalty at ``step`` (ProSparse's progressive regularization): in each of
    ``S = l1_stages`` equal stages it rises along a quarter sine period by ``l1/S``, so stage
    ``s`` ends at ``l1·s/S``: ``l1·(s + sin(π/2·(u − s)))/S`` with ``u = S·(step + 1)/steps``."""
    u = cfg.l1_stages * (step + 1) / cfg.steps
    s = min(int(u), cfg.l1_stages - 1)
    return cfg.l1 * (s + math.sin(0.5 * math.pi * (u - s))) / cfg.l1_stages


def _lr(cfg: LMConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 10 % of ``lr``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * p)))


@torch.no_grad()
def _snapshot(model: DecoderLM, w: torch.Tensor) -> dict:
    """Validation loss and per-layer sparsity of ``h`` on the log's fixed windows."""
    model.eval()
    hs = hidden_activations(model, w)
    downs = [b.ffn.down.weight for b in model.blocks]
    return {"valid_loss": batch_loss(model, w).item(),
            "zero_share": [zero_share(h) for h in hs],
            "cett_sparsity": [cett_sparsity(h, d) for h, d in zip(hs, downs)]}


def train(cfg: LMConfig, log=print) -> tuple[DecoderLM, dict]:
    """AdamW on random training windows (seeded), with a snapshot every ``eval_every`` steps.

    Returns the model and its log: the config, the corpus hash, per-step training loss,
    the snapshots, the validation perplexity and the wall time.
    """
    cfg.check()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    data = splits()
    train_ids, eval_w = data["train"], windows(data["valid"], cfg.context, cfg.eval_windows)
    model = DecoderLM(cfg)
    if cfg.init_from:
        model.load_state_dict(load(cfg.init_from)[0].state_dict())
    hidden = []  # the FFN hidden activations of the current step, for the L1 penalty
    if cfg.l1 > 0:
        for b in model.blocks:
            b.ffn.hidden_site.register_forward_hook(lambda mod, inp, out: hidden.append(inp[0]))
    decay = [p for p in model.parameters() if p.ndim == 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    record = {"config": asdict(cfg), "d_ff": cfg.d_ff, "n_params": n_params(model),
              "corpus_sha256": corpus_sha256(), "torch": torch.__version__,
              "train_loss": [], "snapshots": []}
    t0 = time.perf_counter()
    for step in range(cfg.steps + 1):
        if step % cfg.eval_every == 0 or step == cfg.steps:
            snap = {"step": step, **_snapshot(model, eval_w)}
            record["snapshots"].append(snap)
            log(f"step {step:5d}  valid loss {snap['valid_loss']:.4f}  zeros "
                f"{[round(z, 3) for z in snap['zero_share']]}  "
                f"({time.perf_counter() - t0:.0f} s)")
        if step == cfg.steps:
            break
        model.train()
        starts = torch.randint(len(train_ids) - cfg.context - 1, (cfg.batch,), generator=gen)
        w = torch.stack([train_ids[s:s + cfg.context + 1] for s in starts])
        for g in opt.param_groups:
            g["lr"] = _lr(cfg, step)
        hidden.clear()
        loss = batch_loss(model, w)
        if cfg.l1 > 0:
            loss = loss + l1_weight(cfg, step) * sum(h.abs().mean() for h in hidden)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        record["train_loss"].append(round(loss.item(), 5))  # including the L1 term
    record["train_seconds"] = round(time.perf_counter() - t0, 1)
    record["valid_ppl"] = perplexity(model, data["valid"])
    log(f"validation perplexity {record['valid_ppl']:.4f}")
    if cfg.ffn == "reglu":
        # ProSparse's last step, activation threshold shifting: ReLU(z) -> z·[z > t] on the gate
        # (FATReLU), t calibrated for a total share of zeros; training-free, so logged here
        record["threshold_shift"] = sweep(model, "cats", list(SHIFT_LEVELS),
                                          windows(data["calib"], cfg.context, cfg.eval_windows),
                                          eval_w)
    return model, record


# --------------------------------------------------------------------------- checkpoints

def save(model: DecoderLM, record: dict, out_dir: Path = CHECKPOINT_DIR) -> Path:
    """Write ``<name>.safetensors`` (weights; the config in its metadata) and ``<name>.json``."""
    from safetensors.torch import save_file
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = model.cfg.name
    path = out_dir / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"config": json.dumps(asdict(model.cfg))})
    (out_dir / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    return path


def load(name_or_path: str | Path, directory: Path = CHECKPOINT_DIR) -> tuple[DecoderLM, dict]:
    """The model stored under a config name (or a ``.safetensors`` path) and its training log.

    Every tensor must match the config's shape and be float32; otherwise a ValueError names it.
    """
    from safetensors import safe_open
    path = Path(name_or_path)
    if path.suffix != ".safetensors":
        get_config(str(name_or_path))
        path = Path(directory) / f"{name_or_path}.safetensors"
    if not path.exists():
        raise ValueError(f"no checkpoint at {path}: train it with "
                         f"python -m course_lib.lm train --config {path.stem}")
    with safe_open(str(path), framework="pt") as f:
        cfg = LMConfig(**json.loads(f.metadata()["config"]))
        state = {k: f.get_tensor(k) for k in f.keys()}
    model = DecoderLM(cfg)
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(f"checkpoint {path.name} does not fit config {cfg.name!r}: "
                         f"missing {missing}, unexpected {extra}")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise ValueError(f"checkpoint {path.name}: {k} has shape {tuple(v.shape)}, "
                             f"config {cfg.name!r} needs {tuple(expected[k].shape)}")
        if v.dtype != torch.float32:
            raise ValueError(f"checkpoint {path.name}: {k} has dtype {v.dtype}, needs float32")
    model.load_state_dict(state)
    model.eval()
    log_path = path.with_suffix(".json")
    record = json.loads(log_path.read_text()) if log_path.exists() else {}
    return model, record


# --------------------------------------------------------------------------- command line

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib.lm",
                                description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train one configuration and save it (one CPU thread)")
    t.add_argument("--config", required=True, help=f"one of {sorted(CONFIGS)}")
    t.add_argument("--out", type=Path, default=CHECKPOINT_DIR, help="output directory")
    t.add_argument("--seed", type=int, default=None,
                   help="another seed (initialisation and batches); saved as NAME_seedN")
    e = sub.add_parser("eval", help="validation perplexity of a saved checkpoint")
    e.add_argument("--config", required=True)
    e.add_argument("--dir", type=Path, default=CHECKPOINT_DIR)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.cmd == "train":
        cfg = get_config(args.config)
        command = f"python -m course_lib.lm train --config {args.config}"
        if args.seed is not None:
            cfg = replace(cfg, name=f"{cfg.name}_seed{args.seed}", seed=args.seed)
            command += f" --seed {args.seed} --out {args.out}"
        model, record = train(cfg)
        record["command"] = command
        print(save(model, record, args.out))
    else:
        model, record = load(args.config, args.dir)
        print(f"{args.config}: validation perplexity {perplexity(model):.4f} "
              f"(recorded {record.get('valid_ppl')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
