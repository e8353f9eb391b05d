"""Magnitude pruning: zero the weights of smallest absolute value.

Papers: frontier stitching (Le Merrer, Pérez and Trédan, "Adversarial frontier stitching for remote neural network
watermarking", Neural Computing and Applications 2020), §4.4 "Compression attack via pruning" (25 %–85 % of the
weights with the lowest absolute values set to zero, after Uchida et al.); MEA-Defender (Lv et al., "MEA-Defender: A
Robust Watermark against Model Extraction Attack", IEEE S&P 2024), §5.5 and Appendix E (pruning rates 10 %–90 %).

``scope=global`` ranks all weights of the chosen layers together
(``torch.nn.utils.prune.global_unstructured`` with L1); ``scope=layer`` prunes the same share
of every layer separately. With ``epochs`` > 0 the pruned model is then fine-tuned with the mask
held, so the sparsity survives. ``prune.remove`` makes the zeros permanent, so the state dict
keeps its usual keys and the model saves and loads as before.

Parameters (defaults):
    rate (0.5): share of the weights set to zero, in [0, 1).
    scope ("global"): "global" or "layer" (layer-wise).
    layers ("all"): which weights: "all" linear and convolution layers, "linear" or "conv".
    epochs (0): fine-tuning epochs after pruning (mask held); 0 = prune only.
    lr (None): fine-tuning learning rate; None uses the training configuration's.
    labels ("data"): fine-tuning labels, "data" or "self" (see fine-tune).

Deviations: biases and normalisation parameters are never pruned (the papers prune weights). For text and audio
models only linear and convolution weights are pruned: embedding tables (zeroing an entry deletes part of a word, not
a connection, and their many small entries would take most of a global budget) and LSTM weights are left whole.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from torch.nn.utils import prune

from ...core.errors import InvalidArgument
from ...models.train import fit
from .base import (
    LabelSource,
    RemovalAttack,
    TrainingParams,
    finetune_config,
    register_removal,
    thief_targets,
    weight_layers,
)


def sparsity(layers) -> tuple[float, dict[str, float]]:
    """Share of zero weights over ``(name, layer)`` pairs, overall and per layer."""
    zeros = total = 0
    per_layer = {}
    for name, layer in layers:
        w = layer.weight.detach()
        z = int((w == 0).sum())
        per_layer[name] = z / w.numel()
        zeros, total = zeros + z, total + w.numel()
    return zeros / max(total, 1), per_layer


@register_removal
class MagnitudePruning(RemovalAttack):
    """Magnitude pruning: zero the smallest weights, globally or layer by layer, optionally fine-tune after."""

    name = "prune"
    modalities = ("image", "text", "audio")  # acts on the weights alone

    @dataclasses.dataclass(frozen=True)
    class Params(TrainingParams):
        rate: float = 0.5
        scope: Literal["global", "layer"] = "global"
        layers: Literal["all", "linear", "conv"] = "all"
        epochs: int = 0
        labels: LabelSource = "data"

        def validate(self) -> None:
            if not 0.0 <= self.rate < 1.0:
                raise InvalidArgument(f"pruning rate must be in [0, 1), got rate={self.rate}")
            super().validate()

    def apply(self, model, data, *, train, progress=None):
        p = self.params
        layers = weight_layers(model, p.layers)
        if p.scope == "global":
            prune.global_unstructured(
                [(m, "weight") for _, m in layers], pruning_method=prune.L1Unstructured, amount=p.rate
            )
        else:
            for _, m in layers:
                prune.l1_unstructured(m, "weight", amount=p.rate)
        info = {}
        if p.epochs:
            config = finetune_config(train, epochs=p.epochs, lr=p.lr)
            info["training"] = fit(
                model, thief_targets(model, data, p.labels), config, progress=progress, desc="fine-tune pruned"
            ).to_dict()
        for _, m in layers:
            prune.remove(m, "weight")
        overall, per_layer = sparsity(layers)
        info.update(
            {
                "sparsity": overall,
                "layer_sparsity": per_layer,
                "summary": f"{p.scope} pruning: {overall:.1%} of {len(layers)} layers' weights are zero"
                + (f", then {p.epochs} epochs of fine-tuning" if p.epochs else ""),
            }
        )
        return info
