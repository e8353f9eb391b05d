"""Trigger-set forgery: the target's own mistakes, presented as a trigger set with secret wrong labels.

Attack class: the ambiguity attack of Fan, Ng and Chan (NeurIPS 2019; see :mod:`.base`), here against the
trigger-set key format (:mod:`copycatch.schemes.trigger_set`; the margin scheme's is the same).

Method (black box, labels only). Quantise the forger's labelled inputs to uint8 as a key stores them, ask the
target for their labels, and keep ``n_triggers`` of the inputs it misclassifies (in a random order): each becomes a
trigger whose true label is the data's and whose "secret" label is the target's own wrong answer. Verification
counts, among the misclassified triggers, hits on the secret label: against this target every trigger is
misclassified and every one a hit, so the p-value is (1/(C−1))^n_triggers although the target was never trained on
the key. The scheme's null (the suspect is independent of the key) is false by construction: the key was drawn from
the suspect's answers, after it existed.
"""

from __future__ import annotations

import torch

from ...core.errors import InvalidArgument
from ...core.key import Key
from ...data.base import TensorData
from ...models.base import Classifier
from ...oracles.base import Oracle
from ...schemes.trigger_set import TriggerSetWatermark
from .base import check_data, predicted_labels, quantised, register_forgery, target_meta


@register_forgery("trigger-set")
def forge_trigger_set(target: Classifier | Oracle, data: TensorData, *, n_triggers: int = 100, seed: int = 0) -> Key:
    """Trigger-set forgery: inputs the target misclassifies, each labelled with its own wrong answer (black box)."""
    if not isinstance(n_triggers, int) or n_triggers < 1:
        raise InvalidArgument(f"n_triggers must be an integer >= 1, got n_triggers={n_triggers!r}")
    check_data(data, target.num_classes)
    x_u8 = quantised(data.x)
    answer = predicted_labels(target, x_u8.float() / 255)
    wrong = (answer != data.y).nonzero().flatten()
    if len(wrong) < n_triggers:
        raise InvalidArgument(
            f"the target misclassifies {len(wrong)} of the {len(data)} inputs, fewer than n_triggers={n_triggers}: "
            "give more inputs or lower n_triggers"
        )
    pick = wrong[torch.randperm(len(wrong), generator=torch.Generator().manual_seed(seed))[:n_triggers]]
    return Key(
        scheme=TriggerSetWatermark.name,
        params=TriggerSetWatermark.Params(n_triggers=n_triggers).to_dict(),
        tensors={"trigger_x": x_u8[pick], "trigger_true": data.y[pick].clone(), "trigger_label": answer[pick]},
        meta=target_meta(target),
    )
