"""MEA-Defender's adaptive attack: fine-tune on randomly mixed two-class samples labelled with a third class.

Paper: MEA-Defender (Lv et al., "MEA-Defender: A Robust Watermark against Model Extraction Attack", IEEE S&P 2024),
§5.5 "Mislabelling randomly mixed samples": the thief, knowing that the watermark maps mixtures of two source
classes to a target class but not which classes or how they are mixed, fine-tunes the stolen model on random
mixtures whose labels differ from both mixed classes, so that no mixture keeps a consistent label — the watermark's
included.

Each mixed sample combines two inputs of different classes a ≠ b (classes from the thief's
labels, or the model's own predictions with ``labels=self``) with one of the mixers below,
chosen at random (either image may take either role), and gets a label drawn uniformly from the
classes other than a and b. The mixers are the combining rules of the authors' released code,
written for any H×W:

* ``half``: top rows of one image, bottom rows of the other, seam at H/2 ± H/10;
* ``side``: left/right halves, seam at W/2 ± W/10;
* ``diag``: pixels above the anti-diagonal from one image, the rest from the other;
* ``donut``: a centre square (the middle 60 %) from one image, the frame from the other;
* ``hotdog``: the middle horizontal band (rows H/4 to 3H/4) from one image, the rest from the other.

The fine-tuning set is the thief's clean data (its labels, or self-labels) plus
``round(mix_rate · len(data))`` mixed samples.

Parameters (defaults):
    mix_rate (0.25): mixed samples per clean sample.
    mixers ("half,side,diag,donut,hotdog"): which mixers to draw from.
    labels ("data"): "data" or "self" (see fine-tune).
    seed (0): seeds the pairs, mixers and wrong labels.
    epochs (None), lr (None): None uses the training configuration's.

Deviations: the paper gives no sizes or schedule for this attack; mixtures are drawn once (the
authors' code re-mixes evasion samples every epoch during *embedding*). Mixing happens on [0, 1]
inputs, not on normalised tensors as in the authors' code (same thing up to the filled colour).
Needs at least 3 classes.
"""

from __future__ import annotations

import dataclasses

import torch

from ...core.errors import InvalidArgument
from ...data.base import TensorData
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

MIXERS = ("half", "side", "diag", "donut", "hotdog")


def mixer_masks(name: str, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    """An H×W boolean mask: True where the first image's pixels are kept."""
    rows = torch.arange(h).view(-1, 1).expand(h, w)
    cols = torch.arange(w).view(1, -1).expand(h, w)
    if name in ("half", "side"):
        size = h if name == "half" else w
        jitter = max(1, size // 10)
        seam = size // 2 + int(torch.randint(-jitter, jitter + 1, (1,), generator=generator))
        return (rows if name == "half" else cols) < seam
    if name == "diag":
        return rows * w + cols * h < h * w
    if name == "donut":
        top, left = round(0.2 * h), round(0.2 * w)
        return (rows >= top) & (rows < h - top) & (cols >= left) & (cols < w - left)
    if name == "hotdog":
        return (rows >= h // 4) & (rows < h - h // 4)
    raise InvalidArgument(f"unknown mixer {name!r}; mixers: {', '.join(MIXERS)}")


def mislabelled_mixtures(
    x: torch.Tensor, y: torch.Tensor, n: int, num_classes: int, mixers: tuple[str, ...], generator: torch.Generator
) -> TensorData:
    """``n`` mixtures of two inputs of different classes, each labelled uniformly with a third class."""
    if len(torch.unique(y)) < 2:
        raise InvalidArgument("mixing needs inputs of at least two classes")
    first = torch.randint(len(x), (n,), generator=generator)
    second = torch.randint(len(x), (n,), generator=generator)
    for _ in range(1000):  # redraw partners of the same class; a handful of rounds suffice
        same = y[first] == y[second]
        if not same.any():
            break
        second[same] = torch.randint(len(x), (int(same.sum()),), generator=generator)
    else:  # pragma: no cover - needs an absurdly unbalanced pool
        raise InvalidArgument("could not pair inputs of different classes; the data are almost all one class")
    h, w = x.shape[-2:]
    choice = torch.randint(len(mixers), (n,), generator=generator)
    keep = torch.stack([mixer_masks(mixers[int(c)], h, w, generator) for c in choice])
    mixed_x = torch.where(keep.unsqueeze(1), x[first], x[second])
    # a label uniform over the classes other than both sources: skip the smaller, then the larger
    lo = torch.minimum(y[first], y[second])
    hi = torch.maximum(y[first], y[second])
    label = torch.randint(num_classes - 2, (n,), generator=generator)
    label = label + (label >= lo).long()
    label = label + (label >= hi).long()
    return TensorData(mixed_x, label)


@register_removal
class MislabelledMixtures(RemovalAttack):
    """MEA-Defender's adaptive attack: fine-tune on random two-class mixtures labelled with a third class."""

    name = "mislabel-mix"

    @dataclasses.dataclass(frozen=True)
    class Params(TrainingParams):
        mix_rate: float = 0.25
        mixers: tuple[str, ...] = MIXERS
        labels: LabelSource = "data"
        seed: int = 0

        def validate(self) -> None:
            if not 0 < self.mix_rate <= 10:
                raise InvalidArgument(f"mix_rate must be in (0, 10], got mix_rate={self.mix_rate}")
            if not self.mixers:
                raise InvalidArgument("mixers must name at least one mixer")
            bad = [m for m in self.mixers if m not in MIXERS]
            if bad:
                raise InvalidArgument(f"unknown mixer {bad[0]!r}; mixers: {', '.join(MIXERS)}")
            if self.seed < 0:
                raise InvalidArgument(f"seed must be >= 0, got {self.seed}")
            super().validate()

    def apply(self, model, data, *, train, progress=None):
        p = self.params
        if model.num_classes < 3:
            raise InvalidArgument(
                f"mislabel-mix needs at least 3 classes (a label other than both mixed ones); "
                f"the model has {model.num_classes}"
            )
        clean = thief_targets(model, data, p.labels)
        y = hard_labels(clean.y)
        n = max(1, round(p.mix_rate * len(clean)))
        mixed = mislabelled_mixtures(clean.x, y, n, model.num_classes, p.mixers, torch.Generator().manual_seed(p.seed))
        if clean.y.dtype.is_floating_point:  # soft oracle answers: give the mixtures one-hot rows to match
            mixed = TensorData(mixed.x, torch.nn.functional.one_hot(mixed.y, model.num_classes).to(clean.y.dtype))
        config = finetune_config(train, epochs=p.epochs, lr=p.lr)
        result = fit(model, TensorData.concat([clean, mixed]), config, progress=progress, desc="mislabel-mix")
        return {
            "mixed": n,
            "clean": len(clean),
            "training": result.to_dict(),
            "summary": f"fine-tuned {config.epochs} epochs on {len(clean)} clean + {n} mislabelled mixtures",
        }
