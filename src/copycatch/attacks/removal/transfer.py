"""Transfer learning: reuse the stolen model for another task by retraining its head on a new label set.

Papers: MEA-Defender (Lv et al., "MEA-Defender: A Robust Watermark against Model Extraction Attack", IEEE S&P 2024),
Appendix E "Transfer Learning" (CIFAR-10 → STL-10); frontier stitching (Le Merrer, Pérez and Trédan, "Adversarial
frontier stitching for remote neural network watermarking", Neural Computing and Applications 2020), §5, names
transfer to another task as an open threat.

The final linear layer is replaced by a fresh one with as many outputs as the new task has
classes; then the new head alone (``layers=head``) or the whole network (``layers=all``) is
trained on the data given, whose labels define the new task. The model keeps its architecture
name (the file still loads), with ``num_classes`` and ``class_names`` of the new task. Give the
new task's test set as ``test`` to see its accuracy (the accuracy *before* is the old head on
the new labels, i.e. about chance).

Parameters (defaults):
    num_classes (None): classes of the new task; None reads them from the labels (max + 1, or
        the width of soft targets).
    layers ("head"): "head" trains only the new decision layer (features frozen), "all" fine-tunes
        everything.
    epochs (None), lr (None): None uses the training configuration's.

Deviations: MEA-Defender fine-tunes the whole network on STL-10 (``layers=all``); we default to
the classic "retrain the head" reading of transfer and offer both.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import nn

from ...core.errors import InvalidArgument
from ...models.train import fit
from .base import RemovalAttack, TrainingParams, finetune_config, register_removal
from .fine_tune import last_linear


def replace_head(model: nn.Module, num_classes: int) -> nn.Linear:
    """Swap the classifier's final linear layer for a fresh one with ``num_classes`` outputs."""
    old = last_linear(model)
    for name, module in model.classifier.named_modules():
        if module is old:
            parent = model.classifier.get_submodule(name.rpartition(".")[0]) if "." in name else model.classifier
            new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None).to(old.weight.device)
            setattr(parent, name.rpartition(".")[2], new)
            return new
    raise InvalidArgument("cannot find the decision layer to replace")  # pragma: no cover - last_linear found it


@register_removal
class TransferLearning(RemovalAttack):
    """Transfer to another task: replace the head with one for the data's label set and retrain it (or all layers)."""

    name = "transfer"
    modalities = ("image", "text", "audio")  # trains on the thief's inputs as they are: nothing image-specific

    @dataclasses.dataclass(frozen=True)
    class Params(TrainingParams):
        num_classes: int | None = None
        layers: Literal["head", "all"] = "head"

        def validate(self) -> None:
            if self.num_classes is not None and self.num_classes < 2:
                raise InvalidArgument(f"num_classes must be >= 2, got {self.num_classes}")
            super().validate()

    def apply(self, model, data, *, train, progress=None):
        p = self.params
        y = data.y
        soft = y.dtype.is_floating_point and y.ndim == 2
        found = int(y.shape[1]) if soft else int(y.max()) + 1
        classes = p.num_classes if p.num_classes is not None else found
        if classes < found:
            raise InvalidArgument(f"transfer num_classes={classes} but the new task's labels go up to {found - 1}")
        if classes < 2:
            raise InvalidArgument(f"the new task needs at least 2 classes, its labels give {classes}")
        old_classes = model.num_classes
        config = finetune_config(train, epochs=p.epochs, lr=p.lr)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            head = replace_head(model, classes)
        model.num_classes = classes
        model.class_names = tuple(str(i) for i in range(classes))
        parameters = head.parameters() if p.layers == "head" else model.parameters()
        result = fit(model, data, config, parameters=parameters, progress=progress, desc="transfer")
        return {
            "old_classes": old_classes,
            "new_classes": classes,
            "training": result.to_dict(),
            "summary": f"new {classes}-class head (was {old_classes}), {p.layers} trained for {config.epochs} "
            f"epochs on {len(data)} examples",
        }
