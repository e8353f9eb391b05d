"""Adversarial forgery of a margin key: the target's targeted adversarial examples, labelled with their class.

Attack class: the ambiguity attack of Fan, Ng and Chan (NeurIPS 2019; see :mod:`.base`), here against the key
format of margin-based watermarking (Kim et al., ICML 2023; :mod:`copycatch.schemes.margin`), whose triggers are
inputs with secret wrong labels.

Method (white box: the target's gradients). Draw, for each of the forger's inputs that the target classifies
correctly, an adversarial class uniformly from the other classes and move the input towards it by a targeted L∞
PGD (:func:`~copycatch.attacks.forgery.base.targeted_adversaries`); keep ``n_triggers`` inputs that the target,
asked about their uint8 quantisation, assigns to that class. Each becomes a trigger whose true label is the data's
and whose secret label is the adversarial class. Against this target every trigger is misclassified onto its secret
label, so the p-value is (1/(C−1))^n_triggers. A real margin key's triggers are held-out inputs the victim was
*trained* to mislabel; these are inputs the target was *pushed* to mislabel, which the test cannot tell apart.
"""

from __future__ import annotations

import torch

from ...core.errors import InvalidArgument
from ...core.key import Key
from ...data.base import TensorData
from ...models.base import Classifier
from ...oracles.base import Oracle
from ...schemes.margin import MarginWatermark
from .base import check_data, register_forgery, target_meta, targeted_adversaries, white_box


@register_forgery("adversarial-margin")
def forge_margin_key(
    target: Classifier | Oracle,
    data: TensorData,
    *,
    n_triggers: int = 100,
    eps: float = 0.2,
    steps: int = 40,
    step_size: float = 0.01,
    seed: int = 0,
) -> Key:
    """Margin-key forgery: targeted adversarial examples of the target, labelled with the adversarial class."""
    model = white_box(target, "adversarial-margin")
    if not isinstance(n_triggers, int) or n_triggers < 1:
        raise InvalidArgument(f"n_triggers must be an integer >= 1, got n_triggers={n_triggers!r}")
    check_data(data, model.num_classes)
    generator = torch.Generator().manual_seed(seed)
    x_u8, true, goal = targeted_adversaries(
        model, data, n_triggers, generator, eps=eps, steps=steps, step_size=step_size
    )
    return Key(
        scheme=MarginWatermark.name,
        params=MarginWatermark.Params(n_triggers=n_triggers).to_dict(),
        tensors={"trigger_x": x_u8, "trigger_true": true, "trigger_label": goal},
        meta=target_meta(model),
    )
