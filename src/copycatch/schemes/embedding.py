"""Embedding as a workflow: pick the starting model (fresh, given, or trained clean first), embed, record provenance."""

from __future__ import annotations

from typing import Any

from ..core.errors import InvalidArgument
from ..data.base import Splits
from ..models.base import Classifier, create_for
from ..models.train import TrainConfig, train_model
from .base import Embedding, create_scheme


def embed_scheme(
    scheme: str,
    splits: Splits,
    *,
    arch: str | None = None,
    model: Classifier | None = None,
    params: dict[str, Any] | None = None,
    config: TrainConfig | None = None,
    progress: bool | None = None,
) -> Embedding:
    """Watermark a model with ``scheme``: a fresh ``arch`` (default: the scheme's), or ``model`` as given.

    A scheme that fine-tunes a trained model (``pretrain``) handed an architecture name gets a clean model
    trained first with the same ``config``; its provenance goes in ``info["pretrained_clean"]``.
    """
    sch = create_scheme(scheme, **(params or {}))
    if model is not None and arch is not None:
        raise InvalidArgument("give either arch (train a new model) or model (start from it), not both")
    config = config or TrainConfig()
    info: dict[str, Any] = {}
    if model is not None:
        base = model
    elif sch.pretrain:  # the scheme fine-tunes a trained model: train a clean one first, the same way
        base = train_model(arch or sch.default_arch, splits, config=config, progress=progress)
        info["pretrained_clean"] = dict(base.provenance)
    else:
        base = create_for(arch or sch.default_arch, splits, seed=config.seed)
    if tuple(base.input_shape) != tuple(splits.input_shape) or base.num_classes != splits.num_classes:
        raise InvalidArgument(
            f"model takes {base.input_shape} with {base.num_classes} classes but the data are "
            f"{splits.input_shape} with {splits.num_classes} classes"
        )
    result = sch.embed(base, splits, train=config, progress=progress)
    result.info.update(info)
    result.victim.provenance.update({**splits.provenance(), "trained_on": "owner_train", "train": config.to_dict()})
    return result
