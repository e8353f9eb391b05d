"""Multi-layer perceptron on flattened inputs: the thief's cheapest surrogate."""

from __future__ import annotations

from torch import nn

from .base import Backbone, register_model


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
