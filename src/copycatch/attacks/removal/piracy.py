"""Piracy: after stealing, the thief embeds its own watermark to claim the model as its own.

Paper: MEA-Defender (Lv et al., "MEA-Defender: A Robust Watermark against Model Extraction Attack", IEEE S&P 2024),
§6.3 "Piracy Attack": the attacker follows a watermark embedding algorithm to insert a pirated watermark into the
extracted model. Ownership then hinges on which marks a model carries: the owner's model has only the owner's, the
pirate's has both (if the owner's survives).

The thief runs a registered watermarking scheme (``copycatch embed``'s, default ``margin``) on
the stolen model with its own secret: the scheme's training goes over the thief's data, the
trigger candidates are a held-out share of that data, and the key comes from the thief's seed.
The pirate's key is returned in the result's ``info["key"]`` (the CLI writes it to a file), so a
rehearsal can verify both marks on the laundered model.

Parameters (defaults):
    scheme ("margin"): a registered scheme that acts at training time.
    scheme_params (""): the scheme's parameters as ``name=value`` pairs separated by ``;``
        (e.g. ``n_triggers=50;trigger_batch=10``; quote the spec in a shell) or a JSON object.
    holdout (0.1): share of the thief's data set aside as trigger candidates (at least what the
        scheme needs, e.g. n_triggers).
    seed (1): the thief's seed: trigger choice and secret labels, and the training order.
    labels ("data"): training labels, "data" or "self" (see fine-tune).
    epochs (None), lr (None): None uses the training configuration's.

Deviations: the paper's pirate uses MEA-Defender's own scheme; any registered training-time
scheme works here and margin is the default because it embeds by fine-tuning from the current
weights. The scheme trains on the thief's data only (never on owner data).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import torch

from ...core.errors import InvalidArgument
from ...core.params import parse_assignments
from ...data.base import SplitFractions, Splits, TensorData
from .base import LabelSource, RemovalAttack, TrainingParams, finetune_config, register_removal, thief_targets


def parse_scheme_params(text: str) -> dict[str, Any]:
    """``"a=1;b=2"`` or a JSON object → dict (values stay strings in the first form; Params coerce them)."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"scheme_params is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise InvalidArgument(f"scheme_params must be a JSON object, got {text!r}")
        return value
    return parse_assignments([part for part in text.split(";") if part.strip()])


@register_removal
class Piracy(RemovalAttack):
    """Piracy: the thief embeds its own watermark (any registered scheme, its own key) into the stolen model."""

    name = "piracy"

    @dataclasses.dataclass(frozen=True)
    class Params(TrainingParams):
        scheme: str = "margin"
        scheme_params: str = ""
        holdout: float = 0.1
        seed: int = 1
        labels: LabelSource = "data"

        def validate(self) -> None:
            if not 0 < self.holdout < 1:
                raise InvalidArgument(f"holdout must be in (0, 1), got holdout={self.holdout}")
            if self.seed < 0:
                raise InvalidArgument(f"seed must be >= 0, got {self.seed}")
            super().validate()
            parse_scheme_params(self.scheme_params)

    def thief_splits(self, model, data: TensorData) -> Splits:
        """The thief's data arranged as a split: its training part and its trigger holdout."""
        p = self.params
        targets = thief_targets(model, data, p.labels)
        if targets.y.dtype.is_floating_point:
            targets = TensorData(targets.x, targets.y.argmax(1))
        order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(p.seed))
        n_hold = round(p.holdout * len(targets))
        if n_hold < 1 or n_hold >= len(targets):
            raise InvalidArgument(
                f"piracy holdout={p.holdout} of {len(targets)} examples leaves no trigger candidates "
                "or no training data"
            )
        hold, rest = order[:n_hold], order[n_hold:]
        empty = targets.subset(order[:0])
        return Splits(
            dataset="thief",
            num_classes=model.num_classes,
            class_names=tuple(model.class_names),
            input_shape=tuple(model.input_shape),
            owner_train=targets.subset(rest),
            owner_holdout=targets.subset(hold),
            attacker_pool=empty,
            test=empty,
            seed=p.seed,
            fractions=SplitFractions(owner_train=1 - p.holdout, owner_holdout=p.holdout, attacker_pool=0.0),
            indices={"owner_train": rest, "owner_holdout": hold},
        )

    def apply(self, model, data, *, train, progress=None):
        from ...schemes import create_scheme

        p = self.params
        scheme = create_scheme(p.scheme, **parse_scheme_params(p.scheme_params))
        if scheme.acts_at != "training":
            raise InvalidArgument(f"piracy needs a training-time scheme; {p.scheme!r} acts at {scheme.acts_at}")
        splits = self.thief_splits(model, data)
        config = finetune_config(train, epochs=p.epochs, lr=p.lr).replace(seed=p.seed)
        embedding = scheme.embed(model, splits, train=config, progress=progress)
        if embedding.victim is not model:  # a scheme may return a new object; keep the attack in place
            model.load_state_dict(embedding.victim.state_dict())
        key = embedding.key
        return {
            "key": key,
            "scheme": p.scheme,
            "key_digest": key.digest,
            "summary": f"embedded the thief's own {p.scheme} watermark (key {key.digest[:12]}…)",
        }
