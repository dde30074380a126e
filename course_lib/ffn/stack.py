"""The FFN blocks of all layers of a decode step as one prepared object, called once per step.

Chapter: book/fast/sparse_ffn
"""

from __future__ import annotations

import torch

from .dispatch import IMPLEMENTATIONS, resolve_impl
from .ref import check_stack_inputs, check_stack_weights

__all__ = ["FusedFFNStack", "fused_ffn_stack"]


class FusedFFNStack:
    """The FFN blocks of a decode step, computed layer after layer in **one call** per step: for
    each layer ``l``, ``x ← x + Σ_p act(W1[l, i_p] · u + b1[l, i_p]) · W2t[l, i_p]`` with
    ``u = x / √(mean(x²) + eps)`` (pre-norm residual blocks, RMSNorm without gain) and
    ``i = idx[l]`` the layer's active neurons.

    ``W1``, ``W2t`` are ``(layers, d_ff, d_model)`` and ``b1`` ``(layers, d_ff)``; a call takes
    ``x`` ``(d_model,)`` and ``idx``, the active sets known before the step (a benchmark's random
    sets, or predictions made ahead: Deja Vu predicts a layer's set while the layer before it
    runs): a list of ``layers`` index tensors, or one ``(layers, k)`` tensor when every layer
    keeps ``k`` neurons (top-k), which a call uses as it is. The residual stream stays in float32
    (float64 for float64 weights) and is returned in the weights' dtype.

    The weights are checked, and on the CPU **packed**, once, here, as an inference engine
    prepares them at load time: a copy in which each neuron's ``W1`` row and ``W2t`` row lie side
    by side, ``bundle[l, j] = (W1[l, j], W2t[l, j])`` (the row-column bundling of "LLM in a
    flash", there for reads from flash), so that an active neuron is one contiguous run of
    ``2·d_model`` values instead of two runs at unrelated addresses (measured: about 2 points of
    the bandwidth bound in 4 KiB pages, within the noise in 2 MiB pages). The copy lies in 2 MiB
    pages unless ``huge_pages`` is false (``hugepages.empty_huge_pages``); ``self.W1``, ``self.W2t``
    are then views of it, and the caller may drop its own tensors. ``packed=False`` reads the
    given tensors instead (to measure what the packing is worth).

    ``impl`` picks the tier once, here (``ffn.dispatch``); a call checks its inputs once and
    runs the tier's prepared step. On the CPU (``cpu_fast``, ``ffn.cpu_fast.StackStep``) the
    whole step is one compiled call: ``x`` is copied into the residual stream's buffer, the
    kernel reads the sets where they are and writes the result (rounded to bf16 there) into a
    buffer of which the caller gets a copy, and the thread team meets at a spin barrier between
    layers, so the fixed cost of a call is paid once per step instead of once per layer. Threads
    claim chunks of rows as they come, so the summation order, and the last bits of the result,
    can differ from call to call. The Triton tier launches its fused-FFN kernel per layer (``u``
    rounded to the weights' dtype).
    """

    def __init__(self, W1: torch.Tensor, b1: torch.Tensor, W2t: torch.Tensor,
                 activation: str = "relu", *, eps: float = 1e-6, impl: str = "auto",
                 packed: bool = True, huge_pages: bool = True):
        check_stack_weights("FusedFFNStack", W1, b1, W2t, activation)
        self.b1, self.activation, self.eps = b1, activation, eps
        self.impl = resolve_impl(impl, W1)
        self._step = IMPLEMENTATIONS[self.impl]["stack_step"](W1, b1, W2t, activation, eps, packed=packed, huge_pages=huge_pages)
        # the weights the step reads: on the CPU views of its packed copy, else the given tensors
        self.W1, self.W2t = getattr(self._step, "W1", W1), getattr(self._step, "W2t", W2t)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, idx) -> torch.Tensor:
        check_stack_inputs("FusedFFNStack", self.W1, x, idx)
        return self._step(x, idx)


def fused_ffn_stack(W1: torch.Tensor, b1: torch.Tensor, W2t: torch.Tensor, x: torch.Tensor,
                    idx, activation: str = "relu", *, eps: float = 1e-6,
                    impl: str = "auto") -> torch.Tensor:
    """:class:`FusedFFNStack` ``(W1, b1, W2t, activation)`` applied once to ``x`` with the active
    sets ``idx`` (a decode loop should build the stack once and call it every step)."""
    return FusedFFNStack(W1, b1, W2t, activation, eps=eps, impl=impl)(x, idx)
