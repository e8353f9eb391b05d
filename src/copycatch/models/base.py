"""Model registry and model files.

Every architecture is a factory ``f(input_shape, num_classes, **kwargs) -> nn.Module``
whose module has two parts: ``features`` (everything up to the penultimate
representation, flattened) and ``classifier`` (the decision layers, ending in a
``Linear`` to the classes). Schemes rely on that split: feature-sharing fine-tunes
only ``classifier``; fine-pruning looks at the last convolution in ``features``.

:class:`Classifier` wraps an architecture with the input normalisation, so every
model takes raw [0, 1] inputs and the statistics travel with the weights.

Model files are safetensors with a JSON ``copycatch`` entry in the header metadata
(architecture, its keyword arguments, input shape, classes, normalisation,
provenance). Loading never unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._version import __version__
from ..core.errors import CorruptFile, InvalidArgument
from ..core.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("architecture")
register_model = MODELS.register

FORMAT = "copycatch.model/1"


def list_models(pattern: str = "*", exclude: str | None = None) -> list[str]:
    return MODELS.list(pattern, exclude)


class Classifier(nn.Module):
    """An architecture plus the normalisation of its [0, 1] inputs."""

    def __init__(self, arch: str, net: nn.Module, input_shape: tuple[int, int, int], num_classes: int,
                 mean: list[float], std: list[float], arch_kwargs: dict[str, Any] | None = None,
                 class_names: tuple[str, ...] | None = None):
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


def create_model(arch: str, input_shape: tuple[int, ...] | list[int], num_classes: int, *, mean: Any = 0.5, std: Any = 0.5,
                 class_names: tuple[str, ...] | None = None, seed: int | None = None, **arch_kwargs: Any) -> Classifier:
    """Build ``arch`` for inputs of ``input_shape`` (C, H, W) and ``num_classes`` classes.

    ``seed`` makes the initial weights reproducible without touching the global random state.
    """
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return create_model(arch, input_shape, num_classes, mean=mean, std=std, class_names=class_names, **arch_kwargs)
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
    return create_model(arch, src.input_shape, src.num_classes, class_names=tuple(src.class_names), seed=seed,
                        **arch_kwargs)


class Backbone(nn.Module):
    """``features`` then ``classifier``; every registered architecture returns one."""

    def __init__(self, features: nn.Module, classifier: nn.Module):
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _flat_size(features: nn.Module, input_shape: tuple[int, int, int]) -> int:
    with torch.no_grad():
        out = features(torch.zeros(1, *input_shape))
    if out.numel() == 0:
        raise InvalidArgument(f"input shape {input_shape} is too small for this architecture")
    return out.shape[1]


def _fit_padding(size: int, kernel: int, minimum: int) -> int:
    """Pad a convolution only when the input is too small to survive it (adapts to 8×8 digits)."""
    return 0 if size - kernel + 1 >= minimum else kernel // 2


@register_model("mlp")
def mlp(input_shape, num_classes, hidden: int = 512, depth: int = 2) -> Backbone:
    """Multi-layer perceptron, 2 hidden layers of 512 ReLU units."""
    c, h, w = input_shape
    layers: list[nn.Module] = [nn.Flatten()]
    width = c * h * w
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return Backbone(nn.Sequential(*layers), nn.Sequential(nn.Linear(width, num_classes)))


@register_model("cnn")
def cnn(input_shape, num_classes, width: int = 32, hidden: int = 128) -> Backbone:
    """The Keras MNIST CNN: conv 32 → conv 64 (3×3) → max-pool → dropout → FC 128 → dropout → classes."""
    c, h, _ = input_shape
    pad = _fit_padding(h, 3, 6)
    features = nn.Sequential(
        nn.Conv2d(c, width, 3, padding=pad), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=pad), nn.ReLU(),
        nn.MaxPool2d(2), nn.Dropout(0.25), nn.Flatten(),
    )
    flat = _flat_size(features, input_shape)
    classifier = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(), nn.Dropout(0.5), nn.Linear(hidden, num_classes))
    return Backbone(features, classifier)


@register_model("lenet")
def lenet(input_shape, num_classes) -> Backbone:
    """LeNet-5: conv 6@5×5 → pool → conv 16@5×5 → pool → FC 120 → FC 84 → classes."""
    c, h, _ = input_shape
    pad2 = _fit_padding(h // 2, 5, 2)
    features = nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=pad2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
    )
    flat = _flat_size(features, input_shape)
    classifier = nn.Sequential(nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes))
    return Backbone(features, classifier)


@register_model("cnn-small")
def cnn_small(input_shape, num_classes, hidden: int = 128) -> Backbone:
    """DynaMarks' Fashion-MNIST net: conv 16@5×5 → pool → conv 32@5×5 → pool → FC 128 → classes."""
    c, _, _ = input_shape
    features = nn.Sequential(
        nn.Conv2d(c, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
    )
    flat = _flat_size(features, input_shape)
    classifier = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
    return Backbone(features, classifier)


@register_model("vgg-like")
def vgg_like(input_shape, num_classes, width: int = 64) -> Backbone:
    """MEA-Defender's CIFAR net: conv 64-64-pool-128-128-pool, avg-pool 5×5, dropout, FC 256-256 → classes."""
    c, h, _ = input_shape
    pad = 0 if h >= 28 else 1
    w1, w2 = width, 2 * width
    features = nn.Sequential(
        nn.Conv2d(c, w1, 3, padding=pad), nn.ReLU(), nn.Conv2d(w1, w1, 3, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(w1, w2, 3, padding=pad), nn.ReLU(), nn.Conv2d(w2, w2, 3, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(5), nn.Flatten(),
    )
    classifier = nn.Sequential(
        nn.Dropout(0.5), nn.Linear(w2 * 25, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, num_classes),
    )
    return Backbone(features, classifier)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


@register_model("resnet18")
def resnet18(input_shape, num_classes, width: int = 64) -> Backbone:
    """ResNet-18 with the CIFAR stem (3×3 conv, stride 1, no max-pool); ``width`` scales every stage."""
    c = input_shape[0]
    layers: list[nn.Module] = [nn.Conv2d(c, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    cin = width
    for i, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
        stride = 1 if i == 0 else 2
        layers += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return Backbone(nn.Sequential(*layers), nn.Sequential(nn.Linear(cin, num_classes)))


# ---------------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------------


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over the state dict (names, dtypes, shapes, bytes) in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_model(model: Classifier, path: str | os.PathLike, *, provenance: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as safetensors with its description in the header. Writes atomically."""
    from safetensors.torch import save_file

    if not isinstance(model, Classifier):
        raise InvalidArgument(f"save_model needs a copycatch Classifier, got {type(model).__name__}")
    if provenance:
        model.provenance.update(provenance)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = model.describe()
    meta["package_version"] = __version__
    meta["weights_sha256"] = weights_digest(model)
    tmp = path.with_name(path.name + ".part")
    save_file(state, str(tmp), metadata={"copycatch": json.dumps(meta, sort_keys=True)})
    os.replace(tmp, path)
    return path


def read_model_info(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON description stored in a model file, without loading the weights."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InvalidArgument(f"{path}: no such model file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises several error types for damaged headers
        raise CorruptFile(f"{path}: not a readable safetensors model file ({exc})") from None
    if "copycatch" not in meta:
        raise CorruptFile(f"{path}: safetensors file without copycatch metadata (not a copycatch model file)")
    try:
        info = json.loads(meta["copycatch"])
    except json.JSONDecodeError:
        raise CorruptFile(f"{path}: model metadata is not valid JSON") from None
    if info.get("format") != FORMAT:
        raise CorruptFile(f"{path}: unsupported model format {info.get('format')!r} (expected {FORMAT})")
    return info


def load_model(path: str | os.PathLike, *, device: str | torch.device = "cpu", verify_digest: bool = True) -> Classifier:
    """Load a model file written by :func:`save_model` (no pickle involved)."""
    from safetensors.torch import load_file

    path = Path(path)
    info = read_model_info(path)
    try:
        model = create_model(info["arch"], info["input_shape"], info["num_classes"], mean=info["mean"], std=info["std"],
                             class_names=tuple(info.get("class_names") or ()) or None, **info.get("arch_kwargs", {}))
    except KeyError as exc:
        raise CorruptFile(f"{path}: model metadata lacks {exc}") from None
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise CorruptFile(f"{path}: cannot read weights ({exc})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CorruptFile(f"{path}: weights do not fit architecture {info['arch']!r} ({str(exc).splitlines()[0]})") from None
    if verify_digest and info.get("weights_sha256") and weights_digest(model) != info["weights_sha256"]:
        raise CorruptFile(f"{path}: weights do not match the digest in the file (modified or damaged)")
    model.provenance = dict(info.get("provenance") or {})
    return model.to(device).eval()
