"""Adversarial forgery of a frontier-stitching key: the target's adversarial examples, as stitched keys and controls.

Attack class: the ambiguity attack of Fan, Ng and Chan (NeurIPS 2019; see :mod:`.base`), here against the key
format of adversarial frontier stitching (Le Merrer, Pérez and Trédan, Neural Computing and Applications 2020;
:mod:`copycatch.schemes.frontier_stitching`), whose exact test compares how often the suspect matches the labels of
the secretly *stitched* true adversaries with how often it matches those of unstitched *controls*.

Method (white box: the target's gradients). Make ℓ/2 + ``n_control`` targeted adversarial examples of the target
(:func:`~copycatch.attacks.forgery.base.targeted_adversaries`: each answered by the target with its adversarial
class). The first ℓ/2 become the "stitched" true adversaries, labelled with their adversarial class, which the
target answers; the rest become the controls, labelled with their original class, which it does not. ℓ/2 inputs the
target classifies correctly, labelled as it answers, are the false adversaries (they carry no evidence). Roles and
order are shuffled. Against this target every stitched input matches and no control does, so the p-value is the
test's smallest, 1 / C(ℓ/2 + n_control, ℓ/2), although nothing was stitched into it.
"""

from __future__ import annotations

import torch

from ...core.errors import InvalidArgument
from ...core.key import Key
from ...data.base import TensorData
from ...models.base import Classifier
from ...oracles.base import Oracle
from ...schemes.frontier_stitching import CONTROL, FALSE_ADVERSARY, TRUE_ADVERSARY, FrontierStitching
from .base import (
    check_data,
    predicted_labels,
    quantised,
    register_forgery,
    target_meta,
    targeted_adversaries,
    white_box,
)


@register_forgery("adversarial-frontier")
def forge_frontier_key(
    target: Classifier | Oracle,
    data: TensorData,
    *,
    key_length: int = 100,
    n_control: int = 50,
    eps: float = 0.2,
    steps: int = 40,
    step_size: float = 0.01,
    seed: int = 0,
) -> Key:
    """Frontier-stitching key forgery: adversarial examples of the target as stitched keys (their adversarial
    class) and controls (their original class)."""
    model = white_box(target, "adversarial-frontier")
    if not isinstance(key_length, int) or key_length < 2 or key_length % 2:
        raise InvalidArgument(f"key_length must be an even integer >= 2, got key_length={key_length!r}")
    if not isinstance(n_control, int) or n_control < 1:
        raise InvalidArgument(f"n_control must be an integer >= 1 (the exact test needs controls), got {n_control!r}")
    check_data(data, model.num_classes)
    half = key_length // 2
    generator = torch.Generator().manual_seed(seed)
    adv_x, adv_true, adv_goal = targeted_adversaries(
        model, data, half + n_control, generator, eps=eps, steps=steps, step_size=step_size
    )
    clean_u8 = quantised(data.x)
    answer = predicted_labels(model, clean_u8.float() / 255)
    right = (answer == data.y).nonzero().flatten()
    if len(right) < half:
        raise InvalidArgument(f"the target classifies {len(right)} inputs correctly, fewer than key_length/2={half}")
    false_pick = right[torch.randperm(len(right), generator=generator)[:half]]
    x = torch.cat([adv_x, clean_u8[false_pick]])
    labels = torch.cat([adv_goal[:half], adv_true[half:], answer[false_pick]])
    roles = torch.cat(
        [
            torch.full((half,), TRUE_ADVERSARY, dtype=torch.long),
            torch.full((n_control,), CONTROL, dtype=torch.long),
            torch.full((half,), FALSE_ADVERSARY, dtype=torch.long),
        ]
    )
    shuffle = torch.randperm(len(x), generator=generator)
    params = FrontierStitching.Params(key_length=key_length, n_control=n_control, eps=eps)
    return Key(
        scheme=FrontierStitching.name,
        params=params.to_dict(),
        tensors={"key_x": x[shuffle], "key_label": labels[shuffle], "key_role": roles[shuffle]},
        meta=target_meta(model),
    )
