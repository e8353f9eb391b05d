"""The model registry and :class:`Classifier`, the wrapper every architecture trains and ships in.

Every architecture is a factory ``f(input_shape, num_classes, **kwargs) -> nn.Module``, registered with the
modality of the inputs it reads (``register_model(name, modality=...)``, ``"image"`` unless said otherwise; see
:data:`~copycatch.data.base.MODALITIES` for what each modality's inputs are):

* ``image``: ``input_shape`` is (channels, height, width);
* ``text``: ``input_shape`` is (length,), the vocabulary's length cap, and the factory takes ``vocab_size``;
  ``<pad>`` (id 0) is masked, never read as a word;
* ``audio``: ``input_shape`` is (channels, samples) and the factory takes ``sample_rate``.

:func:`create_for` passes what the data say (shape, classes, ``vocab_size`` from the split's vocabulary,
``sample_rate``) and refuses an architecture of another modality.

The factory's module has two parts: ``features`` (everything up to the penultimate
representation, flattened) and ``classifier`` (the decision layers, ending in a
``Linear`` to the classes). Schemes rely on that split: feature-sharing fine-tunes
only ``classifier``; fine-pruning looks at the last convolution in ``features``.

:class:`Classifier` wraps an architecture with the input normalisation, so every
model takes raw inputs (images in [0, 1], audio in [-1, 1), token ids) and the statistics travel with the weights.

Architectures live one family per file (:mod:`.mlp`, :mod:`.cnn`, :mod:`.resnet`, :mod:`.text`, :mod:`.audio`);
model files are :mod:`.io`'s business.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..core.errors import InvalidArgument
from ..core.registry import Registry
from ..data.base import MODALITIES

MODELS: Registry[Callable[..., nn.Module]] = Registry("architecture")

FORMAT = "copycatch.model/1"

# what input_shape is, per modality: its rank (create_model checks it) and its parts
SHAPES = {"image": (3, "(channels, height, width)"), "text": (1, "(length,)"), "audio": (2, "(channels, samples)")}
# default input normalisation (mean, std): images [0, 1] -> [-1, 1]; audio samples are already centred in [-1, 1);
# text is token ids, which are never normalised
NORMALISATION = {"image": (0.5, 0.5), "audio": (0.0, 1.0)}
# what a modality's factories take about their inputs beyond the shape (create_for fills them in from the data)
INPUT_KWARGS = {"image": (), "text": ("vocab_size",), "audio": ("sample_rate",)}


def register_model(
    name: str | None = None, *, modality: str = "image", summary: str | None = None
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering an architecture's factory under ``name``, declaring the modality of what it reads."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; valid modalities: {', '.join(MODALITIES)}")

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        factory.modality = modality  # type: ignore[attr-defined]
        return MODELS.register(name, summary=summary)(factory)

    return decorator


def model_modality(arch: str) -> str:
    """The modality a registered architecture reads (``image`` for a factory registered straight on :data:`MODELS`)."""
    return getattr(MODELS.get(arch).factory, "modality", "image")


def list_models(pattern: str = "*", exclude: str | None = None, modality: str | None = None) -> list[str]:
    """Registered architectures matching ``pattern`` (and not ``exclude``), only those of ``modality`` when given."""
    if modality is not None and modality not in MODALITIES:
        raise InvalidArgument(f"unknown modality {modality!r}; valid modalities: {', '.join(MODALITIES)}")
    return [n for n in MODELS.list(pattern, exclude) if modality is None or model_modality(n) == modality]


class Classifier(nn.Module):
    """An architecture plus the normalisation of its inputs (per channel; none for text, whose inputs are ids)."""

    def __init__(
        self,
        arch: str,
        net: nn.Module,
        input_shape: tuple[int, ...],
        num_classes: int,
        mean: list[float] | float | None,
        std: list[float] | float | None,
        arch_kwargs: dict[str, Any] | None = None,
        class_names: tuple[str, ...] | None = None,
        modality: str = "image",
    ):
        super().__init__()
        self.arch = arch
        self.modality = modality
        self.arch_kwargs = dict(arch_kwargs or {})
        self.input_shape = tuple(int(v) for v in input_shape)
        self.num_classes = int(num_classes)
        self.class_names = tuple(class_names) if class_names else tuple(str(i) for i in range(num_classes))
        self.net = net
        if modality == "text":
            # a model file of a text model stores empty statistics, which is what load_model passes back
            if any(v not in (None, []) for v in (mean, std)):
                raise InvalidArgument(f"text architecture {arch!r} reads token ids, which take no mean or std")
            self.register_buffer("mean", None)
            self.register_buffer("std", None)
        else:
            c = self.input_shape[0]
            view = (1, c) + (1,) * (len(self.input_shape) - 1)
            self.register_buffer("mean", torch.tensor(_per_channel(mean, c, "mean")).view(view))
            self.register_buffer("std", torch.tensor(_per_channel(std, c, "std")).view(view))
        self.provenance: dict[str, Any] = {}

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.mean is None else (x - self.mean) / self.std

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
            "modality": self.modality,
            "arch_kwargs": self.arch_kwargs,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "mean": [] if self.mean is None else self.mean.flatten().tolist(),
            "std": [] if self.std is None else self.std.flatten().tolist(),
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
    mean: Any = None,
    std: Any = None,
    class_names: tuple[str, ...] | None = None,
    seed: int | None = None,
    **arch_kwargs: Any,
) -> Classifier:
    """Build ``arch`` for inputs of ``input_shape`` (see the module docstring per modality) and ``num_classes``.

    ``mean`` and ``std`` default to the modality's (:data:`NORMALISATION`). ``seed`` makes the initial weights
    reproducible without touching the global random state.
    """
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return create_model(
                arch, input_shape, num_classes, mean=mean, std=std, class_names=class_names, **arch_kwargs
            )
    entry = MODELS.get(arch)
    modality = model_modality(arch)
    shape = tuple(int(v) for v in input_shape)
    rank, parts = SHAPES[modality]
    if len(shape) != rank or min(shape) < 1:
        raise InvalidArgument(
            f"{modality} architecture {arch!r}: input_shape must be {parts}, got {tuple(input_shape)}"
        )
    if num_classes < 2:
        raise InvalidArgument(f"num_classes must be at least 2, got {num_classes}")
    if modality in NORMALISATION:
        mean = NORMALISATION[modality][0] if mean is None else mean
        std = NORMALISATION[modality][1] if std is None else std
    arch_kwargs = {k: v for k, v in arch_kwargs.items() if v is not None}
    try:
        net = entry.factory(shape, num_classes, **arch_kwargs)
    except TypeError as exc:
        raise InvalidArgument(f"architecture {arch!r}: {exc}") from None
    return Classifier(arch, net, shape, num_classes, mean, std, arch_kwargs, class_names, modality)


def create_for(arch: str, splits_or_model: Any, *, seed: int | None = None, **arch_kwargs: Any) -> Classifier:
    """Build ``arch`` shaped like a :class:`~copycatch.data.base.Splits` or another :class:`Classifier`.

    Refuses an architecture of another modality than the data's (or the model's); passes a text architecture the
    vocabulary's size and an audio one the sample rate (over any given in ``arch_kwargs``: the data decide them).
    """
    src = splits_or_model
    modality, wanted = model_modality(arch), src.modality
    if modality != wanted:
        what = f"model {src.arch!r}" if isinstance(src, Classifier) else f"data set {src.dataset!r}"
        raise InvalidArgument(
            f"architecture {arch!r} reads {modality} inputs but {what} is {wanted}; "
            f"{wanted} architectures: {', '.join(list_models(modality=wanted)) or 'none'}"
        )
    return create_model(
        arch,
        src.input_shape,
        src.num_classes,
        class_names=tuple(src.class_names),
        seed=seed,
        **{**arch_kwargs, **_input_kwargs(src, modality)},
    )


def _input_kwargs(src: Any, modality: str) -> dict[str, Any]:
    """What an architecture of ``modality`` is told about its inputs beyond their shape, from splits or a model."""
    if isinstance(src, Classifier):
        return {k: src.arch_kwargs[k] for k in INPUT_KWARGS[modality] if k in src.arch_kwargs}
    if modality == "text":
        return {"vocab_size": len(src.vocabulary)}
    if modality == "audio":
        return {"sample_rate": src.sample_rate}
    return {}


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
