"""Train a tiny byte-level language model with a dense FFN or MoE FFNs, and log what the MoE
chapter reads: validation loss, load balance, dropped tokens, expert specialisation, routing traces.

Chapter: book/fast/moe

Corpus: the Python language reference shipped with CPython (``pydoc_data.topics``, PSF licence),
topics joined in sorted order and encoded as UTF-8 bytes (vocabulary 256); the last 10 % is the
validation split. Model: ``ctx``-byte context, learned positions, ``n_layers`` pre-norm blocks
``x ← x + Attn(LN x)``, ``x ← x + FFN(LN x)``, where FFN is a ReLU MLP or a
:class:`~course_lib.moe.MoE` with the same **active** hidden width.

    python -m course_lib.moe_train --out book/fast/data/moe     # all variants, 1 thread, ~20 min
                                                                # on a shared 2-core machine
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .moe import MoE
from .moe_routing import balance_stats, expert_load, router_z_loss

D_MODEL, CTX, N_LAYERS, N_HEADS, D_DENSE = 64, 64, 2, 4, 256

#: the variants of the chapter: every MoE stores 2048 hidden units per layer and uses 256 per token
#: (expert choice: 256 on average), as many as the dense FFN "dense"; "dense_1024" is a wider dense
#: baseline. Top-1 routing uses the Switch gate (the router probability), which gives the router a
#: gradient from the task loss.
VARIANTS = {
    "dense": dict(dense=D_DENSE),
    "dense_1024": dict(dense=1024),
    "top1_none": dict(n_experts=8, k=1, d_hidden=256, alpha=0.0),
    "top1_aux": dict(n_experts=8, k=1, d_hidden=256, alpha=0.01),
    "top1_bias": dict(n_experts=8, k=1, d_hidden=256, alpha=0.0, bias_rate=0.01),
    "fine_shared_bias": dict(n_experts=32, n_shared=1, k=3, d_hidden=64, alpha=0.0, bias_rate=0.01),
    "expert_choice": dict(n_experts=8, k=1, d_hidden=256, alpha=0.0, routing="expert_choice",
                          capacity_factor=1.0),
}
#: byte classes for the specialisation table
CLASSES = ("lower", "upper", "digit", "space", "newline", "punct")


def corpus_bytes() -> np.ndarray:
    """The language reference as uint8: ``pydoc_data.topics.topics`` values in sorted key order."""
    from pydoc_data.topics import topics
    text = "\n\n".join(topics[k] for k in sorted(topics))
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


def split(data: np.ndarray, val_share: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    cut = int(len(data) * (1 - val_share))
    return data[:cut], data[cut:]


def byte_class(b: np.ndarray) -> np.ndarray:
    """Index into :data:`CLASSES` for every byte (non-ASCII bytes count as punctuation)."""
    b = np.asarray(b)
    out = np.full(b.shape, CLASSES.index("punct"))
    out[(b >= ord("a")) & (b <= ord("z"))] = CLASSES.index("lower")
    out[(b >= ord("A")) & (b <= ord("Z"))] = CLASSES.index("upper")
    out[(b >= ord("0")) & (b <= ord("9"))] = CLASSES.index("digit")
    out[b == ord(" ")] = CLASSES.index("space")
    out[b == ord("\n")] = CLASSES.index("newline")
    return out


class Block(nn.Module):
    def __init__(self, ffn: nn.Module):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D_MODEL), nn.LayerNorm(D_MODEL)
        self.qkv, self.proj = nn.Linear(D_MODEL, 3 * D_MODEL), nn.Linear(D_MODEL, D_MODEL)
        self.ffn = ffn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, N_HEADS, d // N_HEADS).permute(2, 0, 3, 1, 4)
        a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(B, L, d))
        return x + self.ffn(self.ln2(x).reshape(B * L, d)).view(B, L, d)


class TinyLM(nn.Module):
    """Byte LM; ``moe={"dense": h}`` gives dense ReLU FFNs of width ``h``, else MoE FFNs."""

    def __init__(self, moe: dict, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb, self.pos = nn.Embedding(256, D_MODEL), nn.Parameter(0.02 * torch.randn(CTX, D_MODEL))
        def ffn(layer):
            if "dense" in moe:
                h = moe["dense"]
                return nn.Sequential(nn.Linear(D_MODEL, h), nn.ReLU(), nn.Linear(h, D_MODEL))
            return MoE(D_MODEL, D_MODEL, noisy=False, seed=seed + layer, **moe)
        self.blocks = nn.ModuleList(Block(ffn(i)) for i in range(N_LAYERS))
        self.ln, self.head = nn.LayerNorm(D_MODEL), nn.Linear(D_MODEL, 256)

    def moes(self) -> list[MoE]:
        return [b.ffn for b in self.blocks if isinstance(b.ffn, MoE)]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx) + self.pos[:idx.shape[1]]
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln(x))


def active_ffn_params(model: TinyLM) -> int:
    """FFN weights a token uses (router included): dense ``2·d·h``; MoE ``(k + shared)·2·d·h + d·N_routed``."""
    if not model.moes():
        return sum(2 * b.ffn[0].weight.numel() for b in model.blocks)
    return sum(m.flops_per_token() // 2 for m in model.moes())


def batches(data: np.ndarray, batch: int, rng: np.random.Generator):
    """Endless random windows of ``CTX + 1`` bytes → (inputs, targets)."""
    while True:
        starts = rng.integers(0, len(data) - CTX - 1, size=batch)
        w = torch.as_tensor(np.stack([data[s:s + CTX + 1] for s in starts]).astype(np.int64))
        yield w[:, :-1], w[:, 1:]


def val_windows(val: np.ndarray, n: int, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random windows of the validation split (seeded): batches mixed like training's."""
    return next(batches(val, n, np.random.default_rng(seed)))


def trace_windows(val: np.ndarray, tokens: int = 4096) -> torch.Tensor:
    """Consecutive non-overlapping windows from the start of the validation split: one running
    text, in order, as a decoder would meet it."""
    return torch.as_tensor(val[:tokens].astype(np.int64)).view(-1, CTX)


@torch.no_grad()
def routing_trace(model: TinyLM, X: torch.Tensor, batch: int = 16) -> list[list]:
    """Per MoE layer (token choice only), the experts each token of ``X`` (in order) asks for:
    ``idx (T, k)`` before capacity, as a nested list."""
    model.eval()
    traces: list[list] = [[] for _ in model.moes()]
    for lo in range(0, len(X), batch):
        model(X[lo:lo + batch])
        for m, tr in zip(model.moes(), traces):
            tr.extend(m.last_routing.idx.tolist())
    model.train()
    return traces if all(m.routing == "token_choice" for m in model.moes()) else []


@torch.no_grad()
def evaluate(model: TinyLM, X: torch.Tensor, Y: torch.Tensor, batch: int = 16) -> dict:
    """Validation loss (nats and bits per byte) and, for MoE, per layer: demand load and its
    balance, share of assignments dropped at the layer's capacity factor, z statistic, the
    (experts × byte classes) assignment counts."""
    model.eval()
    losses, layers = [], [dict(load=0, dropped=0, total=0, z=0.0, spec=0) for _ in model.moes()]
    for lo in range(0, len(X), batch):
        x, y = X[lo:lo + batch], Y[lo:lo + batch]
        losses.append(nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum").item())
        cls = torch.as_tensor(byte_class(x.flatten().numpy()))
        for m, acc in zip(model.moes(), layers):
            r = m.last_routing
            acc["load"] = acc["load"] + expert_load(r.idx, r.keep if m.routing == "expert_choice" else None,
                                                    m.n_routed)
            acc["dropped"] += int((~r.keep).sum()) if m.routing == "token_choice" else 0
            acc["total"] += r.idx.numel() if m.routing == "token_choice" else len(r.idx) * m.k
            acc["z"] += router_z_loss(r.H).item() * len(r.H)
            onehot = torch.zeros(len(cls), len(CLASSES)).index_put_((torch.arange(len(cls)), cls), torch.tensor(1.0))
            routed = torch.zeros(len(cls), m.n_routed).scatter_add_(1, r.idx, r.keep.float())
            acc["spec"] = acc["spec"] + routed.T @ onehot
    n = Y.numel()
    out = {"val_loss": sum(losses) / n, "val_bpb": sum(losses) / n / math.log(2), "layers": []}
    for acc in layers:
        load = acc["load"]
        out["layers"].append({
            "load": load.tolist(), **balance_stats(load),
            "dropped_share": acc["dropped"] / max(acc["total"], 1), "z": acc["z"] / n,
            "specialisation": acc["spec"].round().int().tolist()})
    model.train()
    return out


def train(name: str, steps: int, batch: int, lr: float, train_data: np.ndarray,
          Xv: torch.Tensor, Yv: torch.Tensor, Xt: torch.Tensor, capacity_factor: float,
          log_every: int = 25) -> tuple[TinyLM, dict]:
    cfg = VARIANTS[name]
    model = TinyLM(cfg if "dense" in cfg else {"capacity_factor": capacity_factor, **cfg})
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    data = batches(train_data, batch, np.random.default_rng(1))
    log = []
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        x, y = next(data)
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        aux = sum((m.aux_loss for m in model.moes()), torch.zeros(()))
        opt.zero_grad()
        (loss + aux).backward()
        opt.step()
        sched.step()
        for m in model.moes():
            m.update_bias()
        if step % log_every == 0 or step == 1:
            row = {"step": step, "train_loss": loss.item()}
            for i, m in enumerate(model.moes()):
                r = m.last_routing
                load = expert_load(r.idx, r.keep if m.routing == "expert_choice" else None, m.n_routed)
                row[f"cv_l{i}"] = balance_stats(load)["cv"]
                row[f"maxmean_l{i}"] = balance_stats(load)["max_over_mean"]
                if m.routing == "token_choice":
                    row[f"dropped_l{i}"] = float((~r.keep).float().mean())
            log.append(row)
    seconds = time.perf_counter() - t0
    result = {"name": name, "config": cfg, "steps": steps, "batch": batch, "lr": lr,
              "capacity_factor": None if "dense" in cfg else cfg.get("capacity_factor", capacity_factor),
              "active_ffn_params": active_ffn_params(model),
              "total_params": sum(p.numel() for p in model.parameters()),
              "train_seconds_under_load": seconds, "log": log,
              **evaluate(model, Xv, Yv), "trace": routing_trace(model, Xt)}
    return model, result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("book/fast/data/moe"))
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--capacity-factor", type=float, default=1.25)
    ap.add_argument("--val-windows", type=int, default=256)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--checkpoint", nargs="*", default=["top1_bias"],
                    help="variants whose weights are saved (fp16 state dict)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    train_data, val = split(corpus_bytes())
    Xv, Yv = val_windows(val, args.val_windows)
    Xt = trace_windows(val)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.variants:
        model, result = train(name, args.steps, args.batch, args.lr, train_data, Xv, Yv, Xt,
                              args.capacity_factor)
        (args.out / f"{name}.json").write_text(json.dumps(result))
        if name in args.checkpoint:
            torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()},
                       args.out / f"{name}.pt")
        print(f"{name:18s} val {result['val_bpb']:.3f} bits/byte, "
              + " ".join(f"cv {l['cv']:.2f} drop {l['dropped_share']:.3f}" for l in result["layers"])
              + f"  ({result['train_seconds_under_load']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
