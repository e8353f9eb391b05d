"""Fine-pruning (Liu, Dolan-Gavitt and Garg, RAID 2018): prune the channels dormant on clean data, then fine-tune.

Paper: "Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural Networks"; used against watermarks by
MEA-Defender (Lv et al., "MEA-Defender: A Robust Watermark against Model Extraction Attack", IEEE S&P 2024), ref.
[29], §5.5 and Appendix E.

1. Run the thief's clean inputs through the model and record the mean activation of every
   channel (output unit) of one layer: by default the last convolution of the feature extractor
   (Liu et al.'s choice), or the last linear layer of the features for MLPs. Activations are
   measured after ReLU (the layers here all feed one).
2. Prune the channels in increasing order of mean activation — the ones clean data leave dormant,
   where a backdoor or watermark can hide — until a share ``rate`` of them is gone. With
   ``max_drop`` set, stop earlier if accuracy on the thief's data would fall by more than
   ``max_drop`` (Liu et al. stop at a validation-accuracy drop of 4 %).
3. A pruned channel has its weights and bias (and the scale and shift of a BatchNorm directly
   after it) set to zero through ``torch.nn.utils.prune`` masks, which stay in place while the
   model is fine-tuned on the thief's data, then are made permanent (``prune.remove``), so the
   state dict keeps its keys and the channel stays silent.

Parameters (defaults):
    rate (0.5): share of the layer's channels pruned at most.
    layer (""): module name of the layer (see ``model.named_modules()``); "" picks automatically.
    max_drop (None): stop pruning before accuracy on the thief's data drops by more than this
        (e.g. 0.04); None prunes exactly ``round(rate · channels)``.
    epochs (None): fine-tuning epochs after pruning; None uses the training configuration's, 0 skips.
    lr (None): fine-tuning learning rate; None uses the training configuration's.
    labels ("data"): labels for fine-tuning and ``max_drop``, "data" or "self" (see fine-tune).

Deviations: Liu et al. prune by a fixed accuracy-drop rule only; we also offer a fixed share
(``rate``), which is what benchmarks over pruning rates need. The accuracy check for ``max_drop``
uses at most 2,000 of the thief's examples.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn.utils import prune

from ...core.errors import InvalidArgument
from ...models.train import fit
from .base import (
    LabelSource,
    RemovalAttack,
    TrainingParams,
    finetune_config,
    hard_labels,
    register_removal,
    thief_targets,
)

_CHANNEL_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def target_layer(model: nn.Module, name: str = "") -> tuple[str, nn.Module]:
    """The layer to fine-prune: ``name``, else the last convolution of the features, else their last linear layer."""
    modules = dict(model.named_modules())
    if name:
        if name not in modules:
            raise InvalidArgument(
                f"fine-prune layer {name!r} is not in the model; layers: "
                f"{', '.join(n for n, m in modules.items() if isinstance(m, _CHANNEL_LAYERS))}"
            )
        if not isinstance(modules[name], _CHANNEL_LAYERS):
            raise InvalidArgument(
                f"fine-prune layer {name!r} is a {type(modules[name]).__name__}, not a conv/linear layer"
            )
        return name, modules[name]
    features = model.net.features
    prefix = "net.features."
    for kinds in ((nn.Conv1d, nn.Conv2d, nn.Conv3d), (nn.Linear,)):
        found = [(n, m) for n, m in features.named_modules() if isinstance(m, kinds)]
        if found:
            return prefix + found[-1][0], found[-1][1]
    raise InvalidArgument("the model's features have no conv or linear layer to fine-prune; name one with layer=")


def following_norm(model: nn.Module, layer: nn.Module) -> nn.Module | None:
    """A BatchNorm registered right after ``layer`` over the same channels (it would re-bias a silenced channel)."""
    modules = list(model.modules())
    i = next(k for k, m in enumerate(modules) if m is layer)
    nxt = modules[i + 1] if i + 1 < len(modules) else None
    width = layer.out_channels if hasattr(layer, "out_channels") else layer.out_features
    return nxt if isinstance(nxt, _NORMS) and nxt.num_features == width else None


@torch.no_grad()
def mean_activations(model: nn.Module, layer: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Mean post-ReLU activation of every output channel of ``layer`` over the inputs ``x``."""
    sums: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        act = torch.relu(output.float())
        sums.append(act.transpose(0, 1).reshape(act.shape[1], -1).mean(1) * len(output))

    handle = layer.register_forward_hook(hook)
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size].to(device))
    finally:
        handle.remove()
        model.train(was)
    return (torch.stack(sums).sum(0) / max(len(x), 1)).cpu()


@torch.no_grad()
def _accuracy_with_silenced(model, layer, channels: torch.Tensor, x, y) -> float:
    def hook(_module, _inputs, output):
        output = output.clone()
        output[:, channels] = 0
        return output

    handle = layer.register_forward_hook(hook)
    device = next(model.parameters()).device
    try:
        model.eval()
        return (model(x.to(device)).argmax(1).cpu() == y).float().mean().item()
    finally:
        handle.remove()


@register_removal
class FinePruning(RemovalAttack):
    """Fine-pruning (Liu et al. 2018): prune the last conv layer's channels dormant on clean data, then fine-tune."""

    name = "fine-prune"

    @dataclasses.dataclass(frozen=True)
    class Params(TrainingParams):
        rate: float = 0.5
        layer: str = ""
        max_drop: float | None = None
        labels: LabelSource = "data"

        def validate(self) -> None:
            if not 0.0 <= self.rate < 1.0:
                raise InvalidArgument(f"fine-prune rate must be in [0, 1), got rate={self.rate}")
            if self.max_drop is not None and not 0.0 <= self.max_drop <= 1.0:
                raise InvalidArgument(f"max_drop must be in [0, 1], got max_drop={self.max_drop}")
            super().validate()

    def apply(self, model, data, *, train, progress=None):
        p = self.params
        name, layer = target_layer(model, p.layer)
        activation = mean_activations(model, layer, data.x)
        channels = len(activation)
        order = torch.argsort(activation, stable=True)  # most dormant first
        k = round(p.rate * channels)
        targets = thief_targets(model, data, p.labels)
        if p.max_drop is not None and k:
            order_check = torch.randperm(len(targets), generator=torch.Generator().manual_seed(train.seed))
            check = targets.subset(order_check[:2000])
            check_x, y = check.x, hard_labels(check.y)
            base = _accuracy_with_silenced(model, layer, order[:0], check_x, y)
            allowed = 0
            for n in range(1, k + 1):
                if base - _accuracy_with_silenced(model, layer, order[:n], check_x, y) > p.max_drop:
                    break
                allowed = n
            k = allowed
        pruned = order[:k]
        keep = torch.ones(channels)
        keep[pruned] = 0
        masked = [(layer, "weight", keep.view(-1, *[1] * (layer.weight.ndim - 1)).expand_as(layer.weight))]
        if layer.bias is not None:
            masked.append((layer, "bias", keep))
        norm = following_norm(model, layer)
        if norm is not None and norm.affine:
            masked += [(norm, "weight", keep), (norm, "bias", keep)]
        for module, param, mask in masked:
            prune.custom_from_mask(module, param, mask.to(getattr(module, param).device).clone())
        info = {
            "layer": name,
            "channels": channels,
            "pruned": sorted(pruned.tolist()),
            "mean_activation": activation.tolist(),
        }
        config = finetune_config(train, epochs=p.epochs, lr=p.lr)
        if config.epochs:
            info["training"] = fit(model, targets, config, progress=progress, desc="fine-tune pruned").to_dict()
        for module, param, _ in masked:
            prune.remove(module, param)
        info["summary"] = f"pruned {k}/{channels} dormant channels of {name}" + (
            f", then {config.epochs} epochs of fine-tuning" if config.epochs else ""
        )
        return info
