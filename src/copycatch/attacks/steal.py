"""Stealing as a workflow: the thief's query set, the API it sees, the surrogate it trains, the record it keeps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..core.errors import InvalidArgument
from ..data.base import Splits, TensorData, load_dataset
from ..models.base import create_model
from ..models.train import TrainConfig
from ..oracles.base import Oracle
from .extraction.base import ExtractionResult, create_extraction_attack

SPLIT_PARTS = ("attacker_pool", "owner_train", "owner_holdout")


def unlabelled(x: torch.Tensor) -> TensorData:
    """Inputs without the victim's labels: -1, so attacks that need true labels refuse instead of using zeros."""
    return TensorData(x, torch.full((len(x),), -1, dtype=torch.long))


def query_set(name: str, splits: Splits, *, data_dir: str | None = None) -> TensorData:
    """The thief's queries: a part of the split, or another data set's training images (out of distribution),
    whose labels name another task's classes and are therefore withheld."""
    if name in SPLIT_PARTS:
        return getattr(splits, name)
    other = load_dataset(name, data_dir=data_dir)
    if tuple(other.input_shape) != tuple(splits.input_shape):
        raise InvalidArgument(
            f"query set {name!r} has inputs shaped {tuple(other.input_shape)} but the victim takes "
            f"{tuple(splits.input_shape)}"
        )
    return unlabelled(other.x)


def steal(
    oracle: Oracle,
    pool: TensorData,
    *,
    attack: str = "soft-label",
    arch: str = "mlp",
    params: dict[str, Any] | None = None,
    budget: int | None = None,
    config: TrainConfig | None = None,
    postprocess: Sequence[Any] = (),
    class_names: Sequence[str] | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    progress: bool | None = None,
) -> ExtractionResult:
    """Extract a surrogate of ``arch`` from ``oracle`` with ``attack``, querying ``pool``.

    ``postprocess`` adds output post-processors (top-k, hard-label, rounding …) between the API and the thief;
    ``budget`` caps the queries; the surrogate's provenance records the attack, its parameters and the spend.
    """
    config = config or TrainConfig()
    if postprocess:
        oracle = oracle.postprocess(*postprocess)
    if budget is not None:
        params = {**(params or {}), "budget": budget}
    atk = create_extraction_attack(attack, **(params or {}))
    shape = tuple(oracle.input_shape or pool.input_shape)
    names = tuple(class_names) if class_names else getattr(getattr(oracle, "model", None), "class_names", None)
    surrogate = create_model(
        arch, shape, oracle.num_classes, class_names=names, seed=config.seed, **(arch_kwargs or {})
    )
    result = atk.run(oracle, pool, surrogate, train=config, progress=progress)
    result.surrogate.provenance.update(
        {
            "stolen_with": attack,
            "attack_params": atk.params.to_dict(),
            "queries": result.queries,
            "train": config.to_dict(),
        }
    )
    return result
