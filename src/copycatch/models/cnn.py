"""Plain convolutional networks: LeNet, the small CNNs the benchmarks use, and a VGG-like stack."""

from __future__ import annotations

from torch import nn

from .base import Backbone, fit_padding, flat_size, register_model


@register_model("cnn")
def cnn(input_shape, num_classes, width: int = 32, hidden: int = 128) -> Backbone:
    """The Keras MNIST CNN: conv 32 → conv 64 (3×3) → max-pool → dropout → FC 128 → dropout → classes."""
    c, h, _ = input_shape
    pad = fit_padding(h, 3, 6)
    features = nn.Sequential(
        nn.Conv2d(c, width, 3, padding=pad),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=pad),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout(0.25),
        nn.Flatten(),
    )
    flat = flat_size(features, input_shape)
    classifier = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(), nn.Dropout(0.5), nn.Linear(hidden, num_classes))
    return Backbone(features, classifier)


@register_model("lenet")
def lenet(input_shape, num_classes) -> Backbone:
    """LeNet-5: conv 6@5×5 → pool → conv 16@5×5 → pool → FC 120 → FC 84 → classes."""
    c, h, _ = input_shape
    pad2 = fit_padding(h // 2, 5, 2)
    features = nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=pad2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    flat = flat_size(features, input_shape)
    classifier = nn.Sequential(
        nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes)
    )
    return Backbone(features, classifier)


@register_model("cnn-small")
def cnn_small(input_shape, num_classes, hidden: int = 128) -> Backbone:
    """DynaMarks' Fashion-MNIST net: conv 16@5×5 → pool → conv 32@5×5 → pool → FC 128 → classes."""
    c, _, _ = input_shape
    features = nn.Sequential(
        nn.Conv2d(c, 16, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    flat = flat_size(features, input_shape)
    classifier = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
    return Backbone(features, classifier)


@register_model("vgg-like")
def vgg_like(input_shape, num_classes, width: int = 64) -> Backbone:
    """MEA-Defender's CIFAR net: conv 64-64-pool-128-128-pool, avg-pool 5×5, dropout, FC 256-256 → classes."""
    c, h, _ = input_shape
    pad = 0 if h >= 28 else 1
    w1, w2 = width, 2 * width
    features = nn.Sequential(
        nn.Conv2d(c, w1, 3, padding=pad),
        nn.ReLU(),
        nn.Conv2d(w1, w1, 3, padding=pad),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(w1, w2, 3, padding=pad),
        nn.ReLU(),
        nn.Conv2d(w2, w2, 3, padding=pad),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(5),
        nn.Flatten(),
    )
    classifier = nn.Sequential(
        nn.Dropout(0.5),
        nn.Linear(w2 * 25, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, num_classes),
    )
    return Backbone(features, classifier)
