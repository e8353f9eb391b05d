"""A tiny, seeded, learnable image set for tests: no files at all."""

from __future__ import annotations

import torch

from ..core.errors import InvalidArgument
from .base import Dataset, register_dataset


@register_dataset("synthetic")
def synthetic(
    n: int = 2000, num_classes: int = 4, size: int = 8, channels: int = 1, noise: float = 0.15, seed: int = 0
) -> Dataset:
    """Tiny seeded set for tests: one random prototype image per class plus pixel noise."""
    if n < 4 * num_classes or num_classes < 2 or size < 4 or channels < 1:
        raise InvalidArgument(
            f"synthetic data needs n>=4*classes, classes>=2, size>=4 (got n={n}, classes={num_classes}, size={size})"
        )
    gen = torch.Generator().manual_seed(seed)
    protos = torch.rand(num_classes, channels, size, size, generator=gen)
    y = torch.arange(n) % num_classes
    y = y[torch.randperm(n, generator=gen)]
    x = (protos[y] + noise * torch.randn(n, channels, size, size, generator=gen)).clamp(0, 1)
    # quantise to 1/255 like real image data, so keys and files round-trip exactly; kept as uint8 pixels like an
    # image file's (the floats, made per batch, are the k/255 they always were)
    x = (x * 255).round().to(torch.uint8)
    return Dataset(
        "synthetic",
        x,
        y.long(),
        num_classes,
        tuple(f"class-{i}" for i in range(num_classes)),
        source=f"synthetic(seed={seed})",
    )
