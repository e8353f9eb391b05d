"""The model registry and :class:`Classifier`, the wrapper every architecture trains and ships in.

Every architecture is a factory ``f(input_shape, num_classes, **kwargs) -> nn.Module``
whose module has two parts: ``features`` (everything up to the penultimate
representation, flattened) and ``classifier`` (the decision layers, ending in a
``Linear`` to the classes). Schemes rely on that split: feature-sharing fine-tunes
only ``classifier``; fine-pruning looks at the last convolution in ``features``.

:class:`Classifier` wraps an architecture with the input normalisation, so every
model takes raw [0, 1] inputs and the statistics travel with the weights.

Architectures live one family per file (:mod:`.mlp`, :mod:`.cnn`, :mod:`.resnet`); model files are
:mod:`.io`'s business.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..core.errors import InvalidArgument
from ..core.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("architecture")
register_model = MODELS.register

FORMAT = "copycatch.model/1"


def list_models(pattern: str = "*", exclude: str | None = None) -> list[str]:
    return MODELS.list(pattern, exclude)


class Classifier(nn.Module):
    """An architecture plus the normalisation of its [0, 1] inputs."""

    def __init__(
        self,
        arch: str,
        net: nn.Module,
        input_shape: tuple[int, int, int],
        num_classes: int,
        mean: list[float],
        std: list[float],
        arch_kwargs: dict[str, Any] | None = None,
        class_names: tuple[str, ...] | None = None,
    ):
        super().__init__()
        self.arch = arch
        self.arch_kwargs = dict(arch_kwargs or {})
        self.input_shape = tuple(int(v) for v in input_shape)
        self.num_classes = int(num_classes)
        self.class_names = tuple(class_names) if class_names else tuple(str(i) for i in range(num_classes))
        self.net = net
        c = self.input_shape[0]
        self.register_buffer("mean", torch.tensor(_per_channel(mean, c, "mean")).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(_per_channel(std, c, "std")).view(1, c, 1, 1))
        self.provenance: dict[str, Any] = {}

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate representation (flattened), used by feature-level schemes and defences."""
        return self.net.features(self.normalize(x))

    @property
    def classifier(self) -> nn.Module:
        return self.net.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    def describe(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "arch": self.arch,
            "arch_kwargs": self.arch_kwargs,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
            "parameters": sum(p.numel() for p in self.parameters()),
            "provenance": self.provenance,
        }


def _per_channel(values: list[float] | float, channels: int, what: str) -> list[float]:
    values = [float(values)] if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise InvalidArgument(f"normalisation {what} has {len(values)} values for {channels} channels")
    if what == "std" and min(values) <= 0:
        raise InvalidArgument(f"normalisation std must be positive, got {values}")
    return values


def create_model(
    arch: str,
    input_shape: tuple[int, ...] | list[int],
    num_classes: int,
    *,
    mean: Any = 0.5,
    std: Any = 0.5,
    class_names: tuple[str, ...] | None = None,
    seed: int | None = None,
    **arch_kwargs: Any,
) -> Classifier:
    """Build ``arch`` for inputs of ``input_shape`` (C, H, W) and ``num_classes`` classes.

    ``seed`` makes the initial weights reproducible without touching the global random state.
    """
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return create_model(
                arch, input_shape, num_classes, mean=mean, std=std, class_names=class_names, **arch_kwargs
            )
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InvalidArgument(f"input_shape must be (channels, height, width), got {tuple(input_shape)}")
    if num_classes < 2:
        raise InvalidArgument(f"num_classes must be at least 2, got {num_classes}")
    arch_kwargs = {k: v for k, v in arch_kwargs.items() if v is not None}
    entry = MODELS.get(arch)
    try:
        net = entry.factory(shape, num_classes, **arch_kwargs)
    except TypeError as exc:
        raise InvalidArgument(f"architecture {arch!r}: {exc}") from None
    return Classifier(arch, net, shape, num_classes, mean, std, arch_kwargs, class_names)


def create_for(arch: str, splits_or_model: Any, *, seed: int | None = None, **arch_kwargs: Any) -> Classifier:
    """Build ``arch`` shaped like a :class:`~copycatch.data.base.Splits` or another :class:`Classifier`."""
    src = splits_or_model
    return create_model(
        arch, src.input_shape, src.num_classes, class_names=tuple(src.class_names), seed=seed, **arch_kwargs
    )


class Backbone(nn.Module):
    """``features`` then ``classifier``; every registered architecture returns one."""

    def __init__(self, features: nn.Module, classifier: nn.Module):
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def flat_size(features: nn.Module, input_shape: tuple[int, int, int]) -> int:
    with torch.no_grad():
        out = features(torch.zeros(1, *input_shape))
    if out.numel() == 0:
        raise InvalidArgument(f"input shape {input_shape} is too small for this architecture")
    return out.shape[1]


def fit_padding(size: int, kernel: int, minimum: int) -> int:
    """Pad a convolution only when the input is too small to survive it (adapts to 8×8 digits)."""
    return 0 if size - kernel + 1 >= minimum else kernel // 2
