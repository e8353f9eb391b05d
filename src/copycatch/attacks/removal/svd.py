"""SVD compression: replace every weight matrix by its best low-rank approximation.

Paper: frontier stitching (Le Merrer, Pérez and Trédan, "Adversarial frontier stitching for remote neural network
watermarking", Neural Computing and Applications 2020), §4.4 "Compression attack via Singular Value Decomposition"
(Table 2: 25 %–90 % compression with the keras_compressor library).

Each linear weight (out × in), and each convolution kernel reshaped to out × (in·k·k), is
replaced by U_r Σ_r V_rᵀ, its truncated SVD: the closest rank-r matrix (Eckart–Young). The kept
rank is ``rank`` when given (capped at the matrix's full rank), else ``(1 − rate)`` of the full
rank, rounded, at least 1.

Parameters (defaults):
    rate (0.5): share of each matrix's singular values dropped, in [0, 1).
    rank (None): keep exactly this rank (capped at full rank); overrides ``rate``.
    layers ("all"): "all" linear and convolution layers, "linear" or "conv".
    include_last (true): also compress the final decision layer.

Deviations: keras_compressor replaces a layer by two factor layers (fewer parameters); we keep
the layer and store the rank-r product, which computes the same function and keeps the model
file's architecture (it loads like any other). Its exact compression schedule is not in the
paper; ``rate`` here is the share of singular values removed per matrix.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

from ...core.errors import InvalidArgument
from .base import RemovalAttack, register_removal, weight_layers
from .fine_tune import last_linear


def low_rank(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    """The best rank-``rank`` approximation of a 2-D tensor (truncated SVD, computed in float64)."""
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    return ((u[:, :rank] * s[:rank]) @ vh[:rank]).to(matrix.dtype)


@register_removal
class SVDCompression(RemovalAttack):
    """SVD compression: keep only the top singular values of every linear/conv weight (rate or exact rank)."""

    name = "svd"
    modalities = ("image", "text", "audio")  # acts on the weights alone

    @dataclasses.dataclass(frozen=True)
    class Params(RemovalAttack.Params):
        rate: float = 0.5
        rank: int | None = None
        layers: Literal["all", "linear", "conv"] = "all"
        include_last: bool = True

        def validate(self) -> None:
            if not 0.0 <= self.rate < 1.0:
                raise InvalidArgument(f"SVD rate must be in [0, 1), got rate={self.rate}")
            if self.rank is not None and self.rank < 1:
                raise InvalidArgument(f"SVD rank must be >= 1, got rank={self.rank}")

    def target_rank(self, full: int) -> int:
        if self.params.rank is not None:
            return min(self.params.rank, full)
        return max(1, min(full, round((1.0 - self.params.rate) * full)))

    @torch.no_grad()
    def apply(self, model, data, *, train, progress=None):
        p = self.params
        layers = weight_layers(model, p.layers)
        if not p.include_last:
            head = last_linear(model)
            layers = [(n, m) for n, m in layers if m is not head]
        ranks = {}
        for name, layer in layers:
            w = layer.weight
            matrix = w.reshape(w.shape[0], -1)
            full = min(matrix.shape)
            r = self.target_rank(full)
            if r < full:
                w.copy_(low_rank(matrix, r).reshape(w.shape))
            ranks[name] = {"rank": r, "full_rank": full}
        kept = sum(v["rank"] for v in ranks.values()) / max(sum(v["full_rank"] for v in ranks.values()), 1)
        return {
            "ranks": ranks,
            "summary": f"{len(ranks)} layers reduced to low rank, {kept:.1%} of singular values kept",
        }
