"""A tiny copycatch MLP as numpy arrays, so that a serving stack's own Python (without torch) can run it.

``save_mlp`` (run where torch is) writes the model's normalisation and Linear layers to an ``.npz``; ``forward`` is
the model's forward pass in numpy, softmax included: what every server in this folder answers.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def save_mlp(model: Any, path: str) -> str:
    """Write a copycatch ``mlp`` Classifier to ``path`` (.npz)."""
    import torch

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    arrays = {"input_shape": np.asarray(model.input_shape)}
    if model.mean is not None:
        arrays["mean"], arrays["std"] = model.mean.numpy(), model.std.numpy()
    for i, layer in enumerate(linears):
        arrays[f"w{i}"], arrays[f"b{i}"] = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    np.savez(path, layers=np.asarray(len(linears)), **arrays)
    return path


def load(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def forward(net: dict[str, np.ndarray], x: Any) -> np.ndarray:
    """N×C probabilities for N inputs shaped as the model's input (N×C×H×W), nested lists or an array."""
    x = np.asarray(x, dtype=np.float32).reshape(-1, *net["input_shape"])
    if "mean" in net:
        x = (x - net["mean"]) / net["std"]
    h = x.reshape(len(x), -1)
    layers = int(net["layers"])
    for i in range(layers):
        h = h @ net[f"w{i}"].T + net[f"b{i}"]
        if i < layers - 1:
            h = np.maximum(h, 0)
    e = np.exp(h - h.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
