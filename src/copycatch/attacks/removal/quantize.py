"""Weight quantisation: round every weight tensor to k bits (simulated, any layer).

Context: compression as a removal attack (frontier stitching (Le Merrer, Pérez and Trédan, "Adversarial frontier
stitching for remote neural network watermarking", Neural Computing and Applications 2020), §4.4, studies pruning
and SVD; quantisation is the third classic compression, as in the Watermark-Robustness-Toolbox's
``weight_quantization``). ``torch.ao.quantization`` is deprecated and only converts linear layers, so we simulate
uniform quantisation in float.

Each tensor t is mapped onto the 2^k evenly spaced levels between its own min and max:
t ← min + round((t − min) / Δ) · Δ with Δ = (max − min) / (2^k − 1). So every tensor holds at most
2^k distinct values (exactly 2^k when it has enough spread-out entries), min and max included.
A constant tensor is left as it is.

Parameters (defaults):
    bits (8): k, between 1 and 16.
    tensors ("weights"): "weights" quantises the weights of every linear and convolution layer (a text model's
        embedding table and LSTM weights are not among them); "all" every floating-point parameter (biases,
        normalisation parameters, embeddings and recurrent weights too).

Deviations: per-tensor asymmetric (min/max) levels; no per-channel scales, no zero-point
alignment (a real int8 deployment aligns 0 to a level; simulated rounding need not).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

from ...core.errors import InvalidArgument
from .base import RemovalAttack, register_removal, weight_layers


def quantize_tensor(t: torch.Tensor, bits: int) -> torch.Tensor:
    """``t`` on 2**bits evenly spaced levels between its min and max (computed in float64)."""
    lo, hi = t.min().double(), t.max().double()
    if not hi > lo:
        return t.clone()
    step = (hi - lo) / (2**bits - 1)
    return (lo + torch.round((t.double() - lo) / step) * step).to(t.dtype)


@register_removal
class WeightQuantization(RemovalAttack):
    """Weight quantisation: round every weight tensor to 2^bits evenly spaced levels (simulated k-bit, any layer)."""

    name = "quantize"
    modalities = ("image", "text", "audio")  # acts on the weights alone

    @dataclasses.dataclass(frozen=True)
    class Params(RemovalAttack.Params):
        bits: int = 8
        tensors: Literal["weights", "all"] = "weights"

        def validate(self) -> None:
            if not 1 <= self.bits <= 16:
                raise InvalidArgument(f"quantisation bits must be between 1 and 16, got bits={self.bits}")

    @torch.no_grad()
    def apply(self, model, data, *, train, progress=None):
        p = self.params
        if p.tensors == "weights":
            named = [(f"{n}.weight", m.weight) for n, m in weight_layers(model)]
        else:
            named = [(n, t) for n, t in model.named_parameters() if t.is_floating_point()]
        levels = {}
        for name, t in named:
            t.copy_(quantize_tensor(t, p.bits))
            levels[name] = int(torch.unique(t).numel())
        return {
            "bits": p.bits,
            "levels": levels,
            "summary": f"{len(named)} tensors quantised to {2**p.bits} levels each",
        }
