"""Self-supervised image encoders: the model kind ``encoder`` (MEA-Defender's SSL victims, StolenEncoder's targets).

An encoder is registered like every architecture (``f(input_shape, num_classes, **kw) -> Backbone``) so that model
files, ONNX export, oracles and removal attacks take it unchanged: ``features`` is the encoder (its output, ``dim``
wide, is the embedding an encoder API serves) and ``classifier`` is the downstream head (the embedding standardised,
then one ``Linear(dim, num_classes)``) that :func:`copycatch.models.simclr.attach_linear_probe` fills in. What makes
an architecture an encoder is declared on its factory (``kind = "encoder"``), never detected: :func:`is_encoder`,
:func:`list_encoders`.

Architectures:

* ``encoder-cnn9``: the nine-layer CNN MEA-Defender trains with SimCLR on Fashion-MNIST (Lv et al., "MEA-Defender: A
  Robust Watermark against Model Extraction Attack", IEEE S&P 2024, §5.1). The paper gives only the depth; we read
  it as six 3×3 convolutions (widths w, w, 2w, 2w, 4w, 4w, batch norm, max-pool after each pair) and three linear
  layers (4w → 8w → 8w → ``dim``) whose output is batch-normalised (it keeps the embedding's scale, which the
  cosine-based NT-Xent leaves free, near 1). Defaults ``width`` 16, ``dim`` 64 (CPU-sized; the paper gives no widths).
* ``encoder-resnet``: a small ResNet (He et al., CVPR 2016) with the CIFAR stem and one basic block per stage
  (widths w, 2w, 4w), global average pooling and a batch-normalised linear layer to ``dim``. Defaults ``width`` 16,
  ``dim`` 64; the paper's CIFAR-10 encoder is a full ResNet-18 (``resnet18`` here), too slow for two CPU cores.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .base import MODELS, Backbone, Classifier, list_models, register_model
from .resnet import _BasicBlock

ENCODER = "encoder"


def register_encoder(name: str) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    """:func:`register_model` for an image encoder, declaring ``kind = "encoder"`` on the factory."""

    def decorator(factory: Callable[..., Backbone]) -> Callable[..., Backbone]:
        factory.kind = ENCODER  # type: ignore[attr-defined]
        return register_model(name)(factory)

    return decorator


def is_encoder(arch: str) -> bool:
    """Whether the registered architecture ``arch`` is declared an encoder."""
    return getattr(MODELS.get(arch).factory, "kind", "classifier") == ENCODER


def list_encoders(pattern: str = "*") -> list[str]:
    """Registered encoder architectures matching ``pattern``."""
    return [name for name in list_models(pattern) if is_encoder(name)]


def embedding_dim(model: Classifier) -> int:
    """Width of ``model``'s embedding (its ``features`` output): the input width of its downstream head."""
    head = [m for m in model.classifier.modules() if isinstance(m, nn.Linear)]
    return head[0].in_features


def downstream_head(dim: int, num_classes: int) -> nn.Sequential:
    """The downstream head a linear probe becomes: standardisation of the embedding (a batch norm without affine
    parameters, whose statistics the probe sets) and one linear layer. Keeping the standardisation out of the linear
    weights keeps them in the range weight-level attacks (pruning, quantisation) expect."""
    return nn.Sequential(nn.BatchNorm1d(dim, eps=1e-12, affine=False), nn.Linear(dim, num_classes))


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


@register_encoder("encoder-cnn9")
def encoder_cnn9(input_shape, num_classes, width: int = 16, dim: int = 64) -> Backbone:
    """MEA-Defender's nine-layer SimCLR encoder: six 3×3 convs (w, w, 2w, 2w, 4w, 4w) and three linear layers."""
    c = input_shape[0]
    w1, w2, w3 = width, 2 * width, 4 * width
    layers: list[nn.Module] = [*_conv(c, w1), *_conv(w1, w1), nn.MaxPool2d(2)]
    layers += [*_conv(w1, w2), *_conv(w2, w2), nn.MaxPool2d(2)]
    layers += [*_conv(w2, w3), *_conv(w3, w3), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    layers += [
        nn.Linear(w3, 2 * w3),
        nn.ReLU(),
        nn.Linear(2 * w3, 2 * w3),
        nn.ReLU(),
        nn.Linear(2 * w3, dim),
        nn.BatchNorm1d(dim),
    ]
    return Backbone(nn.Sequential(*layers), downstream_head(dim, num_classes))


@register_encoder("encoder-resnet")
def encoder_resnet(input_shape, num_classes, width: int = 16, dim: int = 64) -> Backbone:
    """A small ResNet encoder: CIFAR stem, one basic block per stage (w, 2w, 4w), average pool, linear to dim."""
    c = input_shape[0]
    layers: list[nn.Module] = [nn.Conv2d(c, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    cin = width
    for i, cout in enumerate((width, 2 * width, 4 * width)):
        layers.append(_BasicBlock(cin, cout, 1 if i == 0 else 2))
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, dim), nn.BatchNorm1d(dim)]
    return Backbone(nn.Sequential(*layers), downstream_head(dim, num_classes))
